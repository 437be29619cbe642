"""face_transfer.adapt and face-transfer-adapt: new heads on a student bundle (linear and fine-tuned), the
adapted analyser's files, and the inputs it must refuse. Tiny student, tiny datasets."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from face_transfer import adapt
from face_transfer.deploy import bundle
from face_transfer.data import synth
from face_transfer.data.imageio import DataError
from face_transfer.data.synth_datasets import write_folder_csv
from face_transfer.data.tasksets import parse_task_flag

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTH = synth.SynthConfig(image_size=32)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    """A student folder as the export stage writes it: tiny student, ladder view, one SynthFaces head."""
    import keras

    from face_transfer.data.tasks import get_task
    from face_transfer.evaluation.heads import fit_heads
    from face_transfer.student.config import StudentConfig
    from face_transfer.student.model import build_student
    keras.utils.set_random_seed(0)
    student = build_student(StudentConfig(input_size=32, width=0.25, embedding_dim=8))
    images, labels = synth.render_faces(SYNTH, np.arange(160), stream="bundle")
    from face_transfer.student.training import recalibrate_batchnorm
    recalibrate_batchnorm(student, [images[i:i + 40] for i in range(0, 160, 40)])  # as after a distillation
    feats = bundle.StudentBundle(student, "ladder", {}, {}, "").features(images)
    heads = fit_heads(["glasses"], feats, labels, {"glasses": get_task("glasses")})
    heads["glasses"]["task"] = "glasses"
    meta = {"glasses": {"kind": "classification", "classes": ["no", "yes"], "task": "glasses",
                        "trained_on": {"dataset": "SynthFaces photo", "images": 160, "domain": bundle.SYNTHETIC_DOMAIN,
                                       "synthetic": True}}}
    out = str(tmp_path_factory.mktemp("bundle") / "export")
    bundle.save_bundle(out, student, "ladder", heads, meta)
    return out


@pytest.fixture(scope="module")
def shape_csv(tmp_path_factory):
    """A labelled folder of a factor outside the task registry: face_shape (regression), plus the identity."""
    return write_folder_csv(SYNTH, str(tmp_path_factory.mktemp("shape")), 120, columns=("face_shape", "glasses"))


def test_bundle_round_trip(bundle_dir):
    b = bundle.load_bundle(bundle_dir)
    assert b.view == "ladder" and b.image_size == 32
    assert b.heads["glasses"]["kind"] == "classification" and b.heads["glasses"]["coef"].ndim == 2
    assert b.heads_meta["glasses"]["trained_on"]["synthetic"] is True


def test_linear_adapt_adds_heads_keeps_old_ones_and_exports_an_analyser(bundle_dir, shape_csv, tmp_path):
    from face_transfer.deploy import infer, metadata
    from face_transfer.core.interpreter import load_interpreter
    b = bundle.load_bundle(bundle_dir)
    ts = [parse_task_flag(f"folder_csv:{shape_csv},name=shape")]
    with pytest.raises(adapt.AdaptUsageError, match="'glasses'.*existing head.*--replace_heads"):
        adapt.adapt(b, ts, adapt.AdaptConfig(), progress=False)
    r = adapt.adapt(b, ts, adapt.AdaptConfig(replace_heads=True), progress=False)
    assert set(r.heads) == {"glasses", "face_shape"}
    assert r.heads_meta["face_shape"]["trained_on"] == {
        "dataset": "shape", "path": shape_csv, "images": len(r.new_tasks[0].train), "domain": "real", "synthetic": False}
    assert 0 <= r.scores["new"]["face_shape"]["linear"] <= 100
    # the new heads never saw the held-out test images
    nt = r.new_tasks[0]
    assert not set(nt.train) & set(nt.test) and len(nt.train) + len(nt.test) == 120
    out = str(tmp_path / "adapted")
    faces = adapt.calibration_faces(r.new_tasks, 32)
    info = adapt.export_analyzer(r, out, faces, faces[:16], web_page=False)
    path = os.path.join(out, "analyzer_int8.tflite")
    got = infer.run_tflite(load_interpreter(path), faces[:4])
    assert {"embedding", "face_shape", "glasses"} <= set(got)
    desc = metadata.read_metadata(path)
    assert "face_shape" in json.dumps(desc) and "fitted on" in json.dumps(desc)
    assert info["cosine"]["analyzer_int8_ptq"] > 0.9
    # the adapted folder is itself a student folder
    again = bundle.load_bundle(out)
    assert set(again.heads) == {"glasses", "face_shape"}


def test_finetune_moves_the_student_and_resumes_from_its_checkpoint(bundle_dir, shape_csv, tmp_path):
    b = bundle.load_bundle(bundle_dir)
    ts = [parse_task_flag(f"folder_csv:{shape_csv},name=shape")]
    cfg = adapt.AdaptConfig(mode="finetune", finetune_steps=6, batch_size=8, checkpoint_every=3, replace_heads=True)
    ckpt = str(tmp_path / "ckpt")
    r = adapt.adapt(b, ts, cfg, ckpt_dir=ckpt, progress=False)
    moved = [np.abs(a - c).max() for a, c in zip(r.student.get_weights(), b.student.get_weights())]
    assert max(moved) > 0
    assert "finetune" in r.scores["new"]["face_shape"]
    assert json.load(open(os.path.join(ckpt, "finetune_state.json")))["step"] == 6
    # resuming a finished fine-tune redoes no step and gives the same weights
    r2 = adapt.adapt(b, ts, cfg, ckpt_dir=ckpt, progress=False)
    for a, c in zip(r.student.get_weights(), r2.student.get_weights()):
        np.testing.assert_allclose(a, c)
    assert r.forgetting_max is None  # no run data at hand: old heads not scored


def test_bad_student_folders_are_named(bundle_dir, tmp_path):
    with pytest.raises(bundle.BundleError, match="bundle.json: missing"):
        bundle.load_bundle(str(tmp_path))
    import shutil
    d = str(tmp_path / "copy")
    shutil.copytree(bundle_dir, d)
    info = json.load(open(os.path.join(d, "bundle.json")))
    json.dump({**info, "format": 99}, open(os.path.join(d, "bundle.json"), "w"))
    with pytest.raises(bundle.BundleError, match="format 99"):
        bundle.load_bundle(d)
    json.dump(info, open(os.path.join(d, "bundle.json"), "w"))
    os.remove(os.path.join(d, "analyzer_heads.npz"))
    with pytest.raises(bundle.BundleError, match="analyzer_heads.npz: missing"):
        bundle.load_bundle(d)


def test_out_folder_rules(bundle_dir):
    for bad in ("", "  "):
        with pytest.raises(adapt.AdaptUsageError, match="--out is empty"):
            adapt.check_out_dir(bad, bundle_dir)
    with pytest.raises(adapt.AdaptUsageError, match="inside.*never"):
        adapt.check_out_dir(bundle_dir, bundle_dir)
    with pytest.raises(adapt.AdaptUsageError, match="inside"):
        adapt.check_out_dir(os.path.join(bundle_dir, "sub"), bundle_dir)


def test_unreadable_dataset_is_a_data_error(bundle_dir, tmp_path):
    d = tmp_path / "broken"
    (d / "images").mkdir(parents=True)
    for i in range(12):
        (d / "images" / f"{i}.jpg").write_bytes(b"not a jpeg")
    (d / "labels.csv").write_text("image,score\n" + "".join(f"images/{i}.jpg,{i}\n" for i in range(12)))
    with pytest.raises(DataError, match="labels.csv|.jpg"):
        adapt.adapt(bundle.load_bundle(bundle_dir), [parse_task_flag(f"folder_csv:{d / 'labels.csv'}")],
                    progress=False)


def test_cli_adapts_into_a_new_folder_and_refuses_the_source(bundle_dir, shape_csv, tmp_path):
    out = str(tmp_path / "cli_out")
    env = {**os.environ, "FACE_TRANSFER_NO_WEB": "1"}
    cmd = [sys.executable, "-m", "trainers.adapt", f"--student={bundle_dir}",
           f"--tasks=folder_csv:{shape_csv},name=shape", "--replace_heads"]
    p = subprocess.run(cmd + [f"--out={bundle_dir}"], cwd=ROOT, capture_output=True, text=True, env=env)
    ours = [line for line in p.stderr.splitlines() if not line.startswith(("I0000", "E0000", "W0000", "WARNING: All"))]
    assert p.returncode == 2 and ours[0].startswith("error (usage): --out=") and "--help" in ours[1], p.stderr
    assert len(ours) == 2, ours
    p = subprocess.run(cmd + [f"--out={out}"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    rec = json.load(open(os.path.join(out, "adapt.json")))
    assert rec["new_heads"] == ["face_shape", "glasses"] and os.path.exists(os.path.join(out, "analyzer.onnx"))
    assert "new head face_shape" in p.stdout
    before = sorted(os.listdir(bundle_dir))
    # again: complete and verified, nothing redone; the source is untouched
    p = subprocess.run(cmd + [f"--out={out}"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert p.returncode == 0 and "nothing to do" in p.stderr
    assert sorted(os.listdir(bundle_dir)) == before


def test_cli_finetune_takes_its_flags_into_the_adaptation(bundle_dir, shape_csv, tmp_path):
    out = str(tmp_path / "cli_ft")
    env = {**os.environ, "FACE_TRANSFER_NO_WEB": "1"}
    p = subprocess.run([sys.executable, "-m", "trainers.adapt", f"--student={bundle_dir}",
                        f"--tasks=folder_csv:{shape_csv},name=shape", "--replace_heads", f"--out={out}",
                        "--mode=finetune", "--finetune_steps=4", "--finetune_learning_rate=0.01", "--keep_weight=2",
                        "--replay_faces=0", "--tune_stages=1"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    rec = json.load(open(os.path.join(out, "adapt.json")))
    assert rec["mode"] == "finetune" and "finetune" in rec["scores"]["new"]["face_shape"]
    assert {k: rec["config"][k] for k in ("finetune_steps", "learning_rate", "keep_weight", "replay_faces",
                                          "tune_stages")} == {"finetune_steps": 4, "learning_rate": 0.01,
                                                              "keep_weight": 2.0, "replay_faces": 0, "tune_stages": 1}
    assert "old heads: not scored" in p.stdout  # a student folder without its run: no forgetting measured
