"""ONNX export (deploy/onnx_export.py): tf2onnx from the SavedModels, parity with TensorFlow in onnxruntime."""
import json

import numpy as np
import onnx
import pytest

from face_transfer.deploy.onnx_export import OnnxParityError, export_onnx, run_onnx, validate_onnx
from face_transfer.deploy.savedmodel import build_analyzer, export_savedmodel, load_and_check
from face_transfer.deploy.tflite import TFLiteValidationError, write_validation_report

from tests.deploy_models import CFG, calibrated_student, smooth_images





@pytest.fixture(scope="module")
def models(tmp_path_factory):
    student = calibrated_student(CFG, seed=0)
    rng = np.random.default_rng(0)
    analyzer = build_analyzer(student, {
        "expression": {"kind": "classification", "coef": rng.normal(size=(16, 3)), "intercept": np.zeros(3)},
        "yaw": {"kind": "regression", "coef": rng.normal(size=(16, 1)), "intercept": [1.0], "target_scale": 30.0},
        "landmarks": {"kind": "landmarks", "coef": 0.01 * rng.normal(size=(16, 10)), "intercept": np.full(10, 0.5)}})
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for name, model in (("student", student), ("analyzer", analyzer)):
        sm = export_savedmodel(model, str(root / f"{name}_savedmodel"))
        out[name] = (model, sm, export_onnx(sm, str(root / f"{name}.onnx")))
    return out


def keras_ref(model):
    def ref(images):
        y = model.predict(images.astype(np.float32), verbose=0)
        return {k: np.asarray(v) for k, v in y.items()} if isinstance(y, dict) else {"embedding": np.asarray(y)}
    return ref


@pytest.mark.parametrize("name", ["student", "analyzer"])
def test_onnx_matches_tensorflow(models, name):
    model, sm, conv = models[name]
    proto = onnx.load(conv["path"])
    assert conv["opset"] == 17 and {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {17}
    assert [i.name for i in proto.graph.input] == ["image"]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    want_names = {"embedding"} if name == "student" else {"embedding", "expression", "yaw", "landmarks"}
    assert set(conv["outputs"]) == want_names
    images = smooth_images(12, seed=3)
    report = validate_onnx(conv["path"], keras_ref(model), images)
    assert report["format"] == "onnx" and report["opset"] == 17 and report["input_dtype"] == "uint8"
    assert set(report["outputs"]) == want_names
    assert report["max_abs_diff"] < 1e-3 and report["embedding_cosine_mean"] > 0.99999
    # the ONNX file and the SavedModel's serving_default (what it was converted from) agree output by output
    got, sig = run_onnx(conv["path"], images), load_and_check(sm, images)
    for k in want_names:
        assert got[k].shape == sig[k].shape and np.allclose(got[k], sig[k], atol=1e-4, rtol=1e-4), k


def test_parity_failure_names_the_file_and_reports_figures(models, tmp_path):
    model, _, conv = models["analyzer"]

    def off(images):  # a reference the file does not reproduce: one head drifted
        ref = keras_ref(model)(images)
        ref["yaw"] = ref["yaw"] + 5.0
        return ref

    with pytest.raises(OnnxParityError, match=r"analyzer\.onnx: output 'yaw' differs from TensorFlow") as err:
        validate_onnx(conv["path"], off, smooth_images(6, seed=4))
    assert isinstance(err.value, TFLiteValidationError)  # exit code 6 at the CLI boundary, like TFLite parity
    assert err.value.report["outputs"]["yaw"]["max_abs_diff"] > 4.9
    assert err.value.report["outputs"]["embedding"]["max_abs_diff"] < 1e-3
    # the parity report has a row per ONNX output next to the TFLite ones
    json_path, md_path = write_validation_report({"analyzer_onnx": err.value.report}, tmp_path)
    assert "| analyzer_onnx |" in open(md_path).read()
    assert json.load(open(json_path))["analyzer_onnx"]["format"] == "onnx"


def test_export_checks_its_arguments(models, tmp_path):
    _, sm, _ = models["student"]
    with pytest.raises(ValueError, match="opset=13; expected >= 17"):
        export_onnx(sm, str(tmp_path / "x.onnx"), opset=13)
    with pytest.raises(ValueError, match="not a SavedModel directory"):
        export_onnx(str(tmp_path), str(tmp_path / "x.onnx"))
    with pytest.raises(ValueError, match=r"takes images \[N,32,32,3\]"):
        run_onnx(models["student"][2]["path"], smooth_images(2, size=16))
