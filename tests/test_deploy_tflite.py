"""TFLite conversion (int8 PTQ, float16, dynamic), op-set inspection, validation failures and inference."""
import json

import keras
import numpy as np
import pytest

from face_transfer.deploy import infer
from face_transfer.deploy.savedmodel import export_savedmodel
from face_transfer.deploy.tflite import (
    QuantizationConfig,
    TFLiteValidationError,
    convert_to_tflite,
    tflite_op_set,
    validate_tflite,
    write_validation_report,
)
from face_transfer.student.model import StudentConfig, build_student

CFG = StudentConfig(input_size=32, width=0.25, embedding_dim=16)


def smooth_images(n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(n, 4, 4, 3))
    fine = np.repeat(np.repeat(coarse, size // 4, axis=1), size // 4, axis=2)
    return np.clip(128 + 60 * fine + rng.normal(0, 8, fine.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    model = build_student(CFG)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0  # one training pass sets BN statistics to the data's: realistic output scale
    model(smooth_images(32, seed=1).astype(np.float32), training=True)
    for layer in bns:
        layer.momentum = 0.99
    out_dir = export_savedmodel(model, str(tmp_path_factory.mktemp("sm") / "student"))
    return model, out_dir


@pytest.fixture(scope="module")
def int8_bytes(student_dir):
    _, out_dir = student_dir
    return convert_to_tflite(out_dir, QuantizationConfig.for_int8(smooth_images(48, seed=4), steps=48))


def reference(model):
    return lambda images: {"embedding": model.predict(images.astype(np.float32), verbose=0)}


def test_int8_is_integer_only_with_uint8_input(student_dir, int8_bytes):
    model, _ = student_dir
    ops = tflite_op_set(int8_bytes)
    assert ops["has_float_ops"] is False, ops["float_ops"]
    assert ops["input_dtypes"] == ["uint8"] and ops["input_quantization"] == [[1.0, 0.0]]
    assert ops["output_dtypes"] == ["float32"]
    assert "CONV_2D" in ops["ops"] and "int8" in ops["tensor_dtypes"]
    report = validate_tflite(int8_bytes, reference(model), smooth_images(16, seed=5), min_cosine=0.95)
    assert report["int8_only"] is True and report["input_dtype"] == "uint8"
    assert report["cosine_mean"] >= 0.95 and report["cosine_min"] <= report["cosine_mean"]


def test_validation_fails_loudly(student_dir, int8_bytes):
    model, _ = student_dir
    with pytest.raises(TFLiteValidationError, match="cosine") as err:
        validate_tflite(int8_bytes, reference(model), smooth_images(4, seed=6), min_cosine=1.01)
    assert err.value.report["outputs"]["embedding"]["cosine_mean"] <= 1.0
    # A float file claimed to be int8 is rejected for its float compute ops.
    float_bytes = convert_to_tflite(student_dir[1], QuantizationConfig.for_float32())
    with pytest.raises(TFLiteValidationError, match="float"):
        validate_tflite(float_bytes, reference(model), smooth_images(4, seed=6), min_cosine=0.0, expect_int8=True)


@pytest.mark.parametrize("mode", ["float16", "dynamic"])
def test_float16_and_dynamic_convert(student_dir, mode, tmp_path):
    model, out_dir = student_dir
    data = convert_to_tflite(out_dir, getattr(QuantizationConfig, f"for_{mode}")())
    report = validate_tflite(data, reference(model), smooth_images(8, seed=7), min_cosine=0.99)
    assert report["int8"] is False and report["int8_only"] is None and report["input_dtype"] == "uint8"
    json_path, md_path = write_validation_report({f"student_{mode}.tflite": report}, tmp_path)
    assert json.load(open(json_path))[f"student_{mode}.tflite"]["size_bytes"] == len(data)
    assert f"student_{mode}.tflite" in open(md_path).read()


def test_run_tflite_named_outputs_and_backend(student_dir, int8_bytes, tmp_path):
    assert infer.interpreter_backend() == "ai_edge_litert"
    path = tmp_path / "student_int8.tflite"
    path.write_bytes(int8_bytes)
    interpreter = infer.load_interpreter(str(path))
    images = smooth_images(5, seed=8)
    out = infer.run_tflite(interpreter, images, batch_size=2)  # 3 batches incl. a ragged one
    assert list(out) == ["embedding"] and out["embedding"].shape == (5, 16)
    one = infer.run_tflite(interpreter, images[3:4])
    np.testing.assert_allclose(one["embedding"][0], out["embedding"][3], atol=1e-6)
    ms = infer.benchmark_latency(lambda x: infer.run_tflite(interpreter, x), images, warmup=1, runs=3)
    assert 0 < ms < 1000
    with pytest.raises(ValueError, match="32,32,3"):
        infer.run_tflite(interpreter, smooth_images(1, size=16))
    with pytest.raises(FileNotFoundError, match="missing.tflite"):
        infer.load_interpreter(str(tmp_path / "missing.tflite"))


def test_quantization_config_checks_its_inputs(tmp_path):
    with pytest.raises(ValueError, match="representative_images"):
        QuantizationConfig("int8")
    with pytest.raises(ValueError, match="uint8"):
        QuantizationConfig.for_int8(np.zeros((4, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="mode"):
        QuantizationConfig("int4")
    with pytest.raises(ValueError, match="saved_model.pb"):
        convert_to_tflite(str(tmp_path), QuantizationConfig.for_float32())
