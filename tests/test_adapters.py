"""Teacher adapters: InputSpec, preprocess, and loading Keras / SavedModel / ONNX / TFLite / callable teachers."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from face_transfer.core.errors import TeacherLoadError
from face_transfer.teachers.adapters import Teacher, callable_teacher, keras_model_teacher, preprocess
from face_transfer.teachers.cache import build_ensemble, embed_all
from face_transfer.teachers.config import InputSpec
from face_transfer.teachers.formats.keras import load_keras_teacher
from face_transfer.teachers.formats.onnx import load_onnx_teacher
from face_transfer.teachers.formats.savedmodel import load_savedmodel_teacher
from face_transfer.teachers.formats.tflite import load_tflite_teacher

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
    assert teacher.dim == 8 and not teacher.in_graph_exportable  # onnxruntime, outside the graph
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
    assert not teacher.in_graph_exportable
    layer = teacher.as_keras_layer()
    np.testing.assert_allclose(np.asarray(layer(images)), emb, atol=1e-5)  # eager call of the in-graph form
    assert layer.supports_jit is False and not layer.trainable_weights
    bad = callable_teacher(lambda x: np.zeros((len(x), 4)), 5, "bad", spec)
    with pytest.raises(ValueError, match="expected \\[6, 5\\]"):
        bad.embed(images)
    with pytest.raises(ValueError, match="exactly one"):
        Teacher("x", spec, 3)


def test_ensemble_with_keras_and_callable_teacher_in_tf_function(tiny, tmp_path):
    keras_teacher = keras_model_teacher(tiny, "feat", name="conv", spec=SPEC, pool="avg")
    calls = []

    def stats(x):
        calls.append(x.shape)
        return np.stack([x.mean(axis=(1, 2, 3)), x.std(axis=(1, 2, 3)), x[:, 0, 0, 0]], 1)

    gray = callable_teacher(stats, 3, "gray", InputSpec(size=8, channels=1, scale=1 / 255.0, offset=0.0))
    assert keras_teacher.in_graph_exportable and not gray.in_graph_exportable
    ens = build_ensemble([keras_teacher, gray], image_size=24)
    assert ens.output["gray"].shape[1:] == (3,) and ens.output["conv"].shape[1:] == (4,)
    images = _images(5, 24)
    run = tf.function(lambda x: ens(x), input_signature=[tf.TensorSpec([None, 24, 24, 3], tf.uint8)])
    out = run(tf.constant(images))
    assert out["gray"].shape == (5, 3)  # static [N, dim] survives numpy_function
    assert calls and calls[-1] == (5, 8, 8, 1)  # the callable ran inside the graph on this batch
    want = embed_all([keras_teacher, gray], images)
    for name in ("conv", "gray"):
        np.testing.assert_allclose(np.asarray(out[name]), want[name], atol=1e-5)
    np.testing.assert_allclose(ens.predict(images, verbose=0)["gray"], want["gray"], atol=1e-5)
    with pytest.raises(TypeError, match="teacher 'gray' is a Python callable.*cannot be saved"):
        ens.save(tmp_path / "ens.keras")
    # A callable producing the wrong shape fails inside the graph with the teacher's name.
    bad = callable_teacher(lambda x: np.zeros((len(x), 2)), 3, "bad", InputSpec(size=8))
    bad_ens = build_ensemble([bad], image_size=24)
    with pytest.raises((ValueError, tf.errors.OpError), match="teacher 'bad': produced shape \\(5, 2\\)"):
        bad_ens(images)  # eager: numpy_function re-raises the ValueError
    with pytest.raises(tf.errors.OpError, match="teacher 'bad': produced shape \\(5, 2\\)"):
        tf.function(lambda x: bad_ens(x))(tf.constant(images))


# ----------------------------------------------------------------------------- tflite


def _to_tflite(model, path, calibration=None):
    """Float .tflite, or full int8 (int8 input and output) calibrated on `calibration` (network inputs)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if calibration is not None:
        def representative():
            for x in calibration:
                yield [np.asarray(x[None], np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    path.write_bytes(converter.convert())
    return path


@pytest.fixture(scope="module")
def tiny_tflite(tiny, tmp_path_factory):
    return _to_tflite(tiny, tmp_path_factory.mktemp("tfl") / "tiny.tflite")


def test_load_tflite_teacher_float_matches_keras(tiny, tiny_tflite):
    teacher = load_tflite_teacher(tiny_tflite, spec=SPEC)
    images = _images(7, 24)
    x = preprocess(images, SPEC)
    assert teacher.dim == 3 and teacher.metadata["input_dtype"] == "float32"
    # batch_size=3: whole batches of 3, then a resize to the last 1.
    np.testing.assert_allclose(teacher.embed(images, batch_size=3), np.asarray(tiny(x)), atol=1e-4)
    assert teacher._fn.resizable is True
    # An intermediate tensor by one part of its fused name, pooled like the Keras feature.
    from face_transfer.core.interpreter import load_interpreter

    names = [t["name"] for t in load_interpreter(tiny_tflite).get_tensor_details()]
    fused = next(n for n in names if "feat" in n and "Relu" in n)
    part = next(p for p in fused.split(";") if "feat" in p)
    feat = keras.Model(tiny.inputs, tiny.get_layer("feat").output)(x)
    for pool, want in (("avg", np.mean(feat, axis=(1, 2))), ("max", np.max(feat, axis=(1, 2))),
                       (None, np.reshape(feat, (len(images), -1)))):
        t = load_tflite_teacher(tiny_tflite, part, spec=SPEC, pool=pool)
        assert t.dim == want.shape[1] and t.metadata["output_name"] == fused
        np.testing.assert_allclose(t.embed(images, batch_size=4), want, atol=1e-4)
    # Its in-graph form (numpy callable) agrees.
    np.testing.assert_allclose(np.asarray(teacher.as_keras_layer()(images)), teacher.embed(images), atol=1e-6)


def test_tflite_fixed_batch_model_runs_image_by_image(tmp_path):
    inp = keras.Input(batch_shape=(1, 16, 16, 3))
    x = keras.layers.Conv2D(2, 3, name="conv")(inp)
    out = keras.layers.Reshape((1, -1))(x)[:, 0, :5]  # Reshape/slice pinned to the batch of 1
    model = keras.Model(inp, out)
    path = _to_tflite(model, tmp_path / "fixed.tflite")
    teacher = load_tflite_teacher(path, spec=SPEC)
    images = _images(4, 16)
    want = np.concatenate([np.asarray(model(preprocess(images[i : i + 1], SPEC))) for i in range(4)])
    np.testing.assert_allclose(teacher.embed(images), want, atol=1e-4)
    assert teacher._fn.resizable is False  # the batch-of-4 run did not follow the batch: fell back


def _colour_images(n, rng):
    """Flat random colours with a little noise: features that vary a lot from image to image."""
    colours = rng.integers(0, 256, (n, 1, 1, 3))
    return np.clip(colours + rng.integers(-20, 21, (n, 16, 16, 3)), 0, 255).astype(np.uint8)


def test_tflite_int8_model_quantises_input_and_dequantises_output(tiny, tmp_path):
    rng = np.random.default_rng(0)
    calibration = np.asarray(preprocess(_colour_images(64, rng), SPEC))
    path = _to_tflite(tiny, tmp_path / "int8.tflite", calibration)
    teacher = load_tflite_teacher(path, spec=SPEC)
    assert teacher.metadata["input_dtype"] == "int8"
    images = _colour_images(16, rng)
    got = teacher.embed(images, batch_size=5)
    want = np.asarray(tiny(preprocess(images, SPEC)))
    # int8 resolution: a few quantisation steps off the float model (raw int8 codes would be ~100x off).
    span = float(want.max() - want.min())
    assert np.abs(got - want).max() < 0.05 * span, (np.abs(got - want).max(), span)
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


def test_tflite_teacher_bad_files_and_arguments(tiny_tflite, tmp_path):
    with pytest.raises(TeacherLoadError, match="absent.tflite: no such file"):
        load_tflite_teacher(tmp_path / "absent.tflite")
    (tmp_path / "fake.tflite").write_bytes(b"\x00" * 64)
    with pytest.raises(TeacherLoadError, match="fake.tflite: not a TFLite flatbuffer"):
        load_tflite_teacher(tmp_path / "fake.tflite")
    data = tiny_tflite.read_bytes()
    (tmp_path / "cut.tflite").write_bytes(data[: len(data) // 2])
    with pytest.raises(TeacherLoadError, match="cut.tflite: could not load the TFLite model"):
        load_tflite_teacher(tmp_path / "cut.tflite", spec=SPEC)
    with pytest.raises(TeacherLoadError, match=r"tiny.tflite: no tensor named 'nope'; tensors: .*feat"):
        load_tflite_teacher(tiny_tflite, "nope", spec=SPEC)
    with pytest.raises(TeacherLoadError, match=r"tiny.tflite: the model takes inputs of shape \(N, 16, 16, 3\).*size=32"):
        load_tflite_teacher(tiny_tflite, spec=InputSpec(size=32))
    with pytest.raises(TeacherLoadError, match="pool must be"):
        load_tflite_teacher(tiny_tflite, spec=SPEC, pool="mean")
