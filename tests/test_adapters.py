"""Teacher adapters: InputSpec, preprocess, and loading Keras / SavedModel / ONNX / callable teachers."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from face_transfer.teachers.adapters import (
    InputSpec,
    Teacher,
    TeacherLoadError,
    callable_teacher,
    keras_model_teacher,
    load_keras_teacher,
    load_onnx_teacher,
    load_savedmodel_teacher,
    preprocess,
)

RNG = np.random.default_rng(1)
SPEC = InputSpec(size=16, channels=3)


def _images(n=5, size=24, channels=3):
    return RNG.integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def _tiny_model():
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="feat")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inp, out, name="tiny")


@pytest.fixture(scope="module")
def tiny():
    return _tiny_model()


def test_input_spec_json_round_trip_and_validation():
    spec = InputSpec(size=32, channels=3, color_order="bgr", scale=(0.1, 0.2, 0.3), offset=(-1, 0, 1), layout="nchw")
    again = InputSpec.from_json(spec.to_json())
    assert again == spec and isinstance(again.scale, tuple)
    assert InputSpec.from_json(InputSpec().to_json()) == InputSpec()
    with pytest.raises(ValueError, match="channels"):
        InputSpec(channels=2)
    with pytest.raises(ValueError, match="one per channel"):
        InputSpec(channels=1, scale=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="color_order"):
        InputSpec(color_order="hsv")


def test_preprocess_colour_scale_layout_and_resize():
    img = np.zeros((1, 4, 4, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 200, 100, 50
    gray = np.asarray(preprocess(img, InputSpec(size=4, channels=1, scale=1.0, offset=0.0)))
    assert gray.shape == (1, 4, 4, 1)
    np.testing.assert_allclose(gray, 0.299 * 200 + 0.587 * 100 + 0.114 * 50, rtol=1e-6)
    bgr = np.asarray(preprocess(img, InputSpec(size=4, color_order="bgr", scale=1.0, offset=0.0)))
    np.testing.assert_allclose(bgr[0, 0, 0], [50, 100, 200])
    per_channel = np.asarray(preprocess(img, InputSpec(size=4, scale=(1.0, 0.5, 2.0), offset=(0.0, 1.0, -100.0))))
    np.testing.assert_allclose(per_channel[0, 0, 0], [200, 51, 0])
    default = np.asarray(preprocess(img, InputSpec(size=4)))
    np.testing.assert_allclose(default[0, 0, 0], [200 / 127.5 - 1, 100 / 127.5 - 1, 50 / 127.5 - 1], rtol=1e-6)
    nchw = np.asarray(preprocess(_images(2, 10), InputSpec(size=7, layout="nchw")))
    assert nchw.shape == (2, 3, 7, 7)
    # a constant image stays constant through the antialiased resize
    assert np.allclose(np.asarray(preprocess(img, InputSpec(size=9, channels=1, scale=1.0, offset=0.0))), gray[0, 0, 0, 0], atol=1e-3)
    # graph-safe: unknown image size inside a tf.function
    fn = tf.function(lambda x: preprocess(x, SPEC), input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    assert tuple(fn(_images(2, 30)).shape) == (2, 16, 16, 3)
    with pytest.raises(ValueError, match="N, H, W"):
        preprocess(np.zeros((4, 4, 3), np.uint8), SPEC)


def test_keras_model_teacher_embed_layer_and_freezing(tiny):
    teacher = keras_model_teacher(tiny, "feat", name="tiny", spec=SPEC, pool="avg")
    assert teacher.dim == 4 and teacher.metadata["feature_layer"] == "feat"
    images = _images(7, 24)
    emb = teacher.embed(images, batch_size=3)
    assert emb.shape == (7, 4) and emb.dtype == np.float32 and np.isfinite(emb).all()
    # Same numbers as running the model by hand on the preprocessed images.
    feat = keras.Model(tiny.inputs, tiny.get_layer("feat").output)
    manual = np.asarray(feat(preprocess(images, SPEC), training=False)).mean(axis=(1, 2))
    np.testing.assert_allclose(emb, manual, atol=1e-5)
    # A student model built around the layer: teacher weights not trainable, outputs equal embed().
    layer = teacher.as_keras_layer()
    inp = keras.Input((None, None, 3), dtype="uint8")
    outer = keras.Model(inp, keras.layers.Dense(2)(layer(inp)))
    assert len(outer.trainable_weights) == 2  # only the new Dense kernel + bias
    np.testing.assert_allclose(np.asarray(layer(images)), emb, atol=1e-5)
    # Whole output when no feature layer is named.
    head = keras_model_teacher(tiny, None, name="head", spec=SPEC)
    assert head.embed(images).shape == (7, 3)
    with pytest.raises(TeacherLoadError, match="no layer named 'nope'; available layers:.*conv.*bn.*feat"):
        keras_model_teacher(tiny, "nope", name="x", spec=SPEC)
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        teacher.embed(np.zeros((16, 16, 3), np.uint8))
    assert teacher.embed(images[:0]).shape == (0, 4)


def test_teacher_layer_survives_keras_save(tiny, tmp_path):
    teacher = keras_model_teacher(tiny, "feat", name="tiny", spec=SPEC, pool="max")
    inp = keras.Input((20, 20, 3))
    outer = keras.Model(inp, teacher.as_keras_layer()(inp))
    outer.save(tmp_path / "outer.keras")
    reloaded = keras.models.load_model(tmp_path / "outer.keras", compile=False)
    images = _images(3, 20)
    np.testing.assert_allclose(np.asarray(reloaded(images.astype("float32"))), teacher.embed(images), atol=1e-5)


def test_load_keras_teacher_from_keras_and_h5(tiny, tmp_path):
    images = RNG.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    reference = keras_model_teacher(tiny, "feat", name="ref", spec=SPEC, pool="avg").embed(images)
    for ext in (".keras", ".h5"):
        path = tmp_path / f"tiny{ext}"
        tiny.save(path)
        teacher = load_keras_teacher(path, "feat", spec=SPEC)
        assert teacher.name == "tiny" and teacher.metadata["path"].endswith(ext)
        assert teacher.metadata["params"] == tiny.count_params()
        assert not teacher.feature_model.trainable_weights
        np.testing.assert_allclose(teacher.embed(images), reference, atol=1e-5)
    with pytest.raises(TeacherLoadError, match="inputs of shape"):
        load_keras_teacher(tmp_path / "tiny.keras", "feat", spec=InputSpec(size=32))


def test_load_keras_teacher_bad_files(tiny, tmp_path):
    with pytest.raises(TeacherLoadError, match="missing.keras: no such file"):
        load_keras_teacher(tmp_path / "missing.keras", "feat")
    text = tmp_path / "text.keras"
    text.write_text("not a model\n")
    with pytest.raises(TeacherLoadError, match="text.keras: not a valid .keras archive"):
        load_keras_teacher(text, "feat")
    tiny.save(tmp_path / "good.keras")
    data = (tmp_path / "good.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(TeacherLoadError, match="cut.keras"):
        load_keras_teacher(tmp_path / "cut.keras", "feat", spec=SPEC)
    tiny.save(tmp_path / "good.h5")
    data = (tmp_path / "good.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(TeacherLoadError, match="cut.h5: could not load"):
        load_keras_teacher(tmp_path / "cut.h5", "feat", spec=SPEC)
    (tmp_path / "fake.h5").write_text("hello")
    with pytest.raises(TeacherLoadError, match="fake.h5: not an HDF5 file"):
        load_keras_teacher(tmp_path / "fake.h5", "feat")
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(TeacherLoadError, match="unknown extension"):
        load_keras_teacher(tmp_path / "model.pt", "feat")


def test_load_savedmodel_teacher(tiny, tmp_path):
    export_dir = tmp_path / "sm"
    tiny.export(str(export_dir), verbose=False)
    teacher = load_savedmodel_teacher(export_dir, spec=SPEC)
    images = _images(3, 40)
    assert teacher.dim == 3
    np.testing.assert_allclose(teacher.embed(images), np.asarray(tiny(preprocess(images, SPEC))), atol=1e-5)
    layer = teacher.as_keras_layer()
    np.testing.assert_allclose(np.asarray(layer(images)), teacher.embed(images), atol=1e-5)
    with pytest.raises(TeacherLoadError, match="output_key"):
        load_savedmodel_teacher(export_dir, output_key="nope", spec=SPEC)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherLoadError, match="empty: no saved_model.pb inside"):
        load_savedmodel_teacher(tmp_path / "empty")
    with pytest.raises(TeacherLoadError, match="no such directory"):
        load_savedmodel_teacher(tmp_path / "absent")


def _write_tiny_onnx(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = (RNG.normal(size=(8, 3, 3, 3)) * 0.3).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
            helper.make_node("Flatten", ["g"], ["feat"], name="flat"),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["N", 8])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def test_load_onnx_teacher(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "tiny.onnx"
    _write_tiny_onnx(path)
    teacher = load_onnx_teacher(path, "feat", spec=SPEC)
    images = _images(4, 16)
    x = np.asarray(preprocess(images, SPEC)).transpose(0, 3, 1, 2)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["feat"], {"x": x})[0]
    assert teacher.dim == 8
    np.testing.assert_allclose(teacher.embed(images), ref, atol=1e-4)
    pooled = load_onnx_teacher(path, "r", spec=SPEC, pool="avg")  # 4-D NCHW map, pooled over space
    np.testing.assert_allclose(pooled.embed(images), ref, atol=1e-4)
    with pytest.raises(TeacherLoadError, match="tiny.onnx: no tensor named 'nope'"):
        load_onnx_teacher(path, "nope", spec=SPEC)
    bogus = tmp_path / "bogus.onnx"
    bogus.write_text("definitely not onnx\n" * 10)
    with pytest.raises(TeacherLoadError, match="bogus.onnx"):
        load_onnx_teacher(bogus, "feat", spec=SPEC)
    with pytest.raises(TeacherLoadError, match="absent.onnx: no such file"):
        load_onnx_teacher(tmp_path / "absent.onnx", "feat")


def test_callable_teacher():
    seen = {}

    def fn(x):
        seen["shape"], seen["range"] = x.shape, (x.min(), x.max())
        return x.reshape(len(x), -1)[:, :5] * 2

    spec = InputSpec(size=8, channels=1, scale=1.0, offset=0.0)
    teacher = callable_teacher(fn, 5, "fn", spec)
    images = _images(6, 20)
    emb = teacher.embed(images, batch_size=4)
    assert emb.shape == (6, 5) and seen["shape"] == (2, 8, 8, 1)
    assert seen["range"][1] > 1.0  # scale=1 keeps byte values
    assert teacher.as_keras_layer() is None
    bad = callable_teacher(lambda x: np.zeros((len(x), 4)), 5, "bad", spec)
    with pytest.raises(ValueError, match="expected \\[6, 5\\]"):
        bad.embed(images)
    with pytest.raises(ValueError, match="exactly one"):
        Teacher("x", spec, 3)
