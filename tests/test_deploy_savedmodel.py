"""SavedModel export: fresh-process parity, named uint8 signature, no silent overwrite, the multi-task analyser."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from face_transfer.deploy.savedmodel import ExportError, build_analyzer, export_savedmodel, fold_head, load_and_check

from tests.deploy_models import CFG, calibrated_student, smooth_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))




def tiny_student():
    return calibrated_student(CFG, seed=None)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_student()
    out_dir = str(tmp_path_factory.mktemp("sm") / "student")
    assert export_savedmodel(model, out_dir) == out_dir
    return model, out_dir


def test_fresh_process_reload_matches_keras(exported, tmp_path):
    model, out_dir = exported
    images = smooth_images(6, seed=2)
    np.save(tmp_path / "images.npy", images)
    script = f"""
import json, numpy as np, tensorflow as tf
fn = tf.saved_model.load({out_dir!r}).signatures["serving_default"]
(name, spec), = fn.structured_input_signature[1].items()
out = fn(image=tf.constant(np.load({str(tmp_path / 'images.npy')!r})))
np.save({str(tmp_path / 'out.npy')!r}, out["embedding"].numpy())
print(json.dumps({{"input": name, "dtype": spec.dtype.name, "outputs": sorted(fn.structured_outputs)}}))
"""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info == {"input": "image", "dtype": "uint8", "outputs": ["embedding"]}
    want = model.predict(images.astype(np.float32), verbose=0)
    got = np.load(tmp_path / "out.npy")
    assert np.abs(want).mean() > 1e-2  # a degenerate all-zero model would make parity meaningless
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_refuses_to_overwrite(exported):
    model, out_dir = exported
    with pytest.raises(FileExistsError, match=os.path.basename(out_dir)):
        export_savedmodel(model, out_dir)


def test_rejects_unknown_output_name(exported, tmp_path):
    model, _ = exported
    with pytest.raises(ExportError, match="logits"):
        export_savedmodel(model, str(tmp_path / "x"), output_names={"logits": "y"})


def _heads(rng, dim=16):
    return {
        "expression": {
            "kind": "classification", "mean": rng.normal(size=dim), "scale": 1 + rng.random(dim),
            "coef": rng.normal(size=(dim, 7)), "intercept": rng.normal(size=7),
            "classes": ["neutral", "happy", "sad", "surprise", "angry", "disgust", "fear"],
        },
        # scikit-learn layout: a binary probe has coef [1, D] and one intercept.
        "glasses": {"kind": "classification", "mean": np.zeros(dim), "scale": np.ones(dim),
                    "coef": rng.normal(size=(1, dim)), "intercept": [0.3], "classes": ["no", "yes"]},
        "age": {"kind": "regression", "mean": rng.normal(size=dim), "scale": 1 + rng.random(dim),
                "coef": rng.normal(size=(dim, 1)), "intercept": [0.2], "target_mean": 40.0, "target_scale": 12.0},
        "landmarks": {"kind": "landmarks", "mean": np.zeros(dim), "scale": np.ones(dim),
                      "coef": 0.01 * rng.normal(size=(dim, 10)), "intercept": np.full(10, 0.5)},
    }


def test_analyzer_outputs_match_the_probe_arithmetic(exported, tmp_path):
    model, _ = exported
    heads = _heads(np.random.default_rng(0))
    analyzer = build_analyzer(model, heads)
    images = smooth_images(5, seed=3)
    out = analyzer.predict(images.astype(np.float32), verbose=0)
    code = model.predict(images.astype(np.float32), verbose=0).astype(np.float64)
    assert out["expression"].shape == (5, 7) and out["glasses"].shape == (5, 2)
    assert out["age"].shape == (5, 1) and out["landmarks"].shape == (5, 5, 2)
    np.testing.assert_allclose(out["expression"].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out["embedding"], code, atol=1e-5)
    # Same numbers by hand: standardise, linear probe, undo the target standardisation / sigmoid.
    age = heads["age"]
    z = ((code - age["mean"]) / age["scale"]) @ age["coef"] + age["intercept"]
    np.testing.assert_allclose(out["age"], 40.0 + 12.0 * z, rtol=1e-4, atol=1e-3)
    g = heads["glasses"]
    p_yes = 1 / (1 + np.exp(-(code @ g["coef"][0] + 0.3)))
    np.testing.assert_allclose(out["glasses"][:, 1], p_yes, atol=1e-5)

    sm_dir = export_savedmodel(analyzer, str(tmp_path / "analyzer"))
    reloaded = load_and_check(sm_dir, images)
    assert set(reloaded) == {"embedding", "expression", "glasses", "age", "landmarks"}
    for name, value in out.items():
        np.testing.assert_allclose(reloaded[name], value, atol=1e-4)


def test_bad_head_names_the_problem():
    with pytest.raises(ExportError, match="age.*coef"):
        fold_head("age", {"kind": "regression", "coef": np.zeros((9, 1)), "intercept": [0.0]}, embedding_dim=16)
    with pytest.raises(ExportError, match="kind"):
        fold_head("x", {"kind": "ranking", "coef": np.zeros((16, 1))}, embedding_dim=16)
    with pytest.raises(ExportError, match="landmarks"):
        fold_head("lm", {"kind": "landmarks", "coef": np.zeros((16, 4)), "intercept": np.zeros(4)}, embedding_dim=16)


def test_analyzer_heads_on_the_ladder_view_keep_the_code_as_embedding(tmp_path):
    from face_transfer.student.config import StudentConfig
    from face_transfer.student.model import build_student, feature_model
    student = build_student(StudentConfig(input_size=32, width=0.35, embedding_dim=8))
    view = feature_model(student, "ladder")
    images = smooth_images(4, seed=5).astype(np.float32)
    feats = view.predict(images, verbose=0)["features"].astype(np.float64)
    dim = feats.shape[1]
    rng = np.random.default_rng(1)
    heads = {"age": {"kind": "regression", "mean": rng.normal(size=dim), "scale": 1 + rng.random(dim),
                     "coef": rng.normal(size=(dim, 1)), "intercept": [0.1], "target_mean": 30.0, "target_scale": 5.0}}
    analyzer = build_analyzer(student, heads, features=view)
    out = analyzer.predict(images, verbose=0)
    np.testing.assert_allclose(out["embedding"], student.predict(images, verbose=0), atol=1e-5)
    h = heads["age"]
    z = ((feats - h["mean"]) / h["scale"]) @ h["coef"] + h["intercept"]
    np.testing.assert_allclose(out["age"], 30.0 + 5.0 * z, rtol=1e-4, atol=1e-3)
    with pytest.raises(ExportError, match="age"):  # heads sized for the code do not fit the ladder
        small = {"age": {**h, "mean": h["mean"][:8], "scale": h["scale"][:8], "coef": h["coef"][:8]}}
        build_analyzer(student, small, features=view)


@pytest.mark.parametrize("view", ["ladder", "embedding"])
def test_every_student_file_outputs_the_code_and_the_probed_view(view, tmp_path):
    """Issue 22: the student files carry `features` (the view the run's transfer score is measured on) next to
    `embedding` (the code), each named so in the SavedModel signature, the .tflite signature and metadata, and
    the ONNX graph; both match the Keras feature_model. Same functions as the export stage: build_student_export,
    export_savedmodel, convert_to_tflite, stages.export.student_outputs_metadata, write_metadata, export_onnx.
    In the "embedding" view both outputs are one tensor of the .tflite file, still named twice."""
    from face_transfer.deploy import infer, metadata, onnx_export, tflite
    from face_transfer.core.interpreter import load_interpreter
    from face_transfer.deploy.savedmodel import STUDENT_OUTPUTS, build_student_export
    from face_transfer.stages.export import student_outputs_metadata
    from face_transfer.student.model import feature_model

    student = calibrated_student(CFG, seed=0)
    images = smooth_images(24, seed=8)
    want = {k: np.asarray(v, np.float64)
            for k, v in feature_model(student, view).predict(images.astype(np.float32), verbose=0).items()}
    dims = {k: v.shape[1] for k, v in want.items()}
    assert dims["embedding"] == CFG.embedding_dim
    if view == "ladder":  # stage poolings, then the code
        assert dims["features"] > dims["embedding"]
        np.testing.assert_allclose(want["features"][:, -dims["embedding"]:], want["embedding"], atol=1e-5)
    else:
        assert dims["features"] == dims["embedding"]

    export_model = build_student_export(student, view)
    sm = export_savedmodel(export_model, str(tmp_path / "student_savedmodel"))
    got = {"savedmodel": load_and_check(sm, images)}
    outputs_meta = student_outputs_metadata(view, dims["embedding"], dims["features"])
    modes = {"float32": tflite.QuantizationConfig.for_float32(),
             "int8_ptq": tflite.QuantizationConfig.for_int8(smooth_images(48, seed=4), steps=48)}
    for mode, qcfg in modes.items():
        data = metadata.write_metadata(tflite.convert_to_tflite(sm, qcfg), name=f"student ({mode})",
                                       description="test", outputs=outputs_meta)
        io = metadata.model_io(data)["outputs"]
        assert sorted(o["name"] for o in io) == sorted(STUDENT_OUTPUTS)
        assert {o["name"]: o["shape"][-1] for o in io} == dims
        meta = metadata.read_metadata(data)  # checks the entries against the model's outputs
        assert list(meta["outputs"]) == [o["name"] for o in io]
        described = meta["outputs"]["features"]["description"]
        assert f"{dims['features']} floats" in described and "headline transfer score" in described and view in described
        assert metadata.output_labels(meta)["features"]["kind"] == "embedding"
        got[mode] = infer.run_tflite(load_interpreter(data), images)
        if mode == "int8_ptq":  # the export stage's parity check, with a reference returning both outputs
            report = tflite.validate_tflite(data, lambda x: export_model.predict(x, verbose=0), images, min_cosine=0.95)
            assert sorted(report["outputs"]) == sorted(STUDENT_OUTPUTS) and report["int8_only"] is True
    conv = onnx_export.export_onnx(sm, str(tmp_path / "student.onnx"))
    assert sorted(conv["outputs"]) == sorted(STUDENT_OUTPUTS)
    got["onnx"] = onnx_export.run_onnx(conv["path"], images)

    for fmt, out in got.items():
        assert sorted(out) == sorted(STUDENT_OUTPUTS), fmt
        for name in STUDENT_OUTPUTS:
            a, b = np.asarray(out[name], np.float64), want[name]
            assert a.shape == b.shape, (fmt, name)
            cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            if fmt == "int8_ptq":  # the int8 bar of tests/test_deploy_tflite.py
                assert cos.mean() >= 0.95, (fmt, name, cos.mean())
            else:
                assert cos.min() > 0.9999, (fmt, name, cos.min())
                np.testing.assert_allclose(a, b, atol=1e-3 * (1 + np.abs(b).max()), err_msg=f"{fmt} {name}")
