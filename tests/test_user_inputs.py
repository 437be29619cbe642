"""The main job driven only by a user's files: teacher models (.keras, .onnx, .tflite), a face folder with bad
files among the good ones, and labelled datasets (CelebA, FER2013) whose columns become the transfer tasks."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import user_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    teachers = user_files.write_teacher_files(str(root / "models"), steps=0)
    user_files.write_face_folder_with_bad_files(str(root / "faces"), 150)
    sets = user_files.write_labelled_sets(str(root / "data"), n_celeba=200, n_fer=160)
    return {"root": root, "teachers": teachers, "sets": sets}


def _argv(user_dir, run_dir, *extra):
    return ["pipeline", "--preset=smoke", f"--run_dir={run_dir}",
            *[f"--teacher={flag}" for _, flag in user_dir["teachers"].values()],
            f"--faces={user_dir['root'] / 'faces'}", f"--tasks=celeba:{user_dir['sets']['celeba']}",
            f"--tasks=fer2013:{user_dir['sets']['fer2013']}", "--nosynth_tasks", "--cache_size=120", *extra]


def _config(argv):
    from absl import flags
    from absl.testing import flagsaver
    import trainers.pipeline  # noqa: F401  (defines the flags)
    from trainers import common
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(argv)
        return common.config_from_flags()


@pytest.mark.timeout(900)
def test_files_only_run_in_process_never_renders_synthfaces(user_dir, tmp_path, monkeypatch):
    """The CLI's flags -> config -> every stage, with SynthFaces forbidden inside the pipeline."""
    from face_transfer.data import synth
    from face_transfer.pipeline import run_pipeline
    run_dir = str(tmp_path / "run")
    cfg = _config(_argv(user_dir, run_dir))
    assert [r.format for r in cfg.teacher_files] == ["keras", "onnx", "tflite"]
    assert all(len(r.sha256) == 64 and r.bytes > 0 for r in cfg.teacher_files)
    assert cfg.teachers == () and cfg.data.faces.sources and not cfg.data.synth_tasks

    def forbidden(*a, **k):
        raise AssertionError("SynthFaces was rendered inside a files-only run")
    monkeypatch.setattr(synth, "render_faces", forbidden)
    out = run_pipeline(cfg, run_dir, until="report")

    # the face folder: 150 good faces kept, the corrupt, truncated and zero-byte files skipped and listed
    faces = json.load(open(os.path.join(run_dir, "faces", "manifest.json")))
    assert faces["report"]["kept"] == 150 and faces["report"]["corrupt"] == 3
    listed = " ".join(json.dumps(x) for x in faces["report"]["skipped"])
    for name in ("corrupt.jpg", "truncated.jpg", "empty.jpg"):
        assert name in listed
    # the transfer tasks are the datasets' columns; source/novel follows the teachers' declared tasks
    table = json.load(open(os.path.join(run_dir, "metrics", "transfer.json")))
    tasks = {t["name"] for t in table["tasks"]}
    assert {"eyeglasses", "wearing_hat", "male", "smiling", "expression", "identity"} <= tasks, tasks
    assert not tasks & {"head_pose", "hair_color", "glasses"}  # no SynthFaces task
    for rep in ("student", "concat", "ae", "face_id", "expr", "pose"):
        assert rep in table["groups"], rep
    head = out["report"]["headline"]
    assert head["tasks.count"] == len(tasks)
    assert head["tasks.novel_count"] == len(tasks) - 2  # expression (expr) and identity (face_id) are source
    # exports: the analyser's heads are the dataset columns, with their class names
    labels = json.load(open(os.path.join(run_dir, "export", "analyzer_int8.labels.json")))
    assert labels["expression"]["classes"] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert labels["eyeglasses"]["classes"] == ["no", "yes"]
    for f in ("student_int8_ptq.tflite", "analyzer_int8.tflite", "student_int8_qat.tflite", "parity.json"):
        assert os.path.getsize(os.path.join(run_dir, "export", f)) > 0, f
    report = open(os.path.join(run_dir, "report.md")).read()
    assert "## Data" in report and "150 kept" in report and "3 corrupt" in report
    assert "file (onnx)" in report and "file (tflite)" in report


def test_changed_teacher_file_is_refused_on_resume(user_dir, tmp_path):
    from face_transfer.stages import Run
    run_dir = str(tmp_path / "run")
    cfg = _config(_argv(user_dir, run_dir))
    Run.open(run_dir, cfg)
    path = user_dir["teachers"]["face_id"][0]
    backup = open(path, "rb").read()
    try:
        with open(path, "ab") as f:
            f.write(b"\0")
        changed = _config(_argv(user_dir, run_dir))
        with pytest.raises(ValueError, match="face_id.*changed"):
            Run.open(run_dir, changed)
        from face_transfer.core.errors import TeacherLoadError
        from face_transfer.teachers.refs import load_teacher_ref
        with pytest.raises(TeacherLoadError, match="changed since the run started"):
            load_teacher_ref(cfg.teacher_files[0])
    finally:
        with open(path, "wb") as f:
            f.write(backup)


@pytest.mark.parametrize("extra, needle", [
    (["--teacher=x=/nonexistent/model.onnx"], "/nonexistent/model.onnx"),
    (["--teacher=x=/tmp"], "/tmp"),
    (["--faces=/nonexistent/photos"], "--faces=/nonexistent/photos"),
    (["--tasks=imagenet:/tmp"], "imagenet"),
    (["--real_fraction=0"], "real_fraction"),
])
def test_bad_user_input_flags_are_named(user_dir, tmp_path, extra, needle):
    from absl import flags
    with pytest.raises((flags.ValidationError, ValueError)) as info:
        _config(_argv(user_dir, str(tmp_path / "run"), *extra))
    assert needle in str(info.value)
    assert not (tmp_path / "run").exists()


def test_folder_with_no_images_is_named(user_dir, tmp_path):
    empty = tmp_path / "empty_photos"
    empty.mkdir()
    (empty / "notes.txt").write_text("no faces here")
    proc = subprocess.run([sys.executable, "-m", "trainers.pipeline", *_argv(user_dir, str(tmp_path / "run"))[1:],
                           f"--faces={empty}", "--until=data"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert f"{empty}: no face images found" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_files_only_run_through_the_cli(tmp_path):
    """The same run as a user types it, with briefly trained teachers, end to end through the console script."""
    root = tmp_path / "user"
    teachers = user_files.write_teacher_files(str(root / "models"), steps=60)
    user_files.write_face_folder_with_bad_files(str(root / "faces"), 1500)
    sets = user_files.write_labelled_sets(str(root / "data"), n_celeba=1200, n_fer=800)
    run_dir = tmp_path / "run"
    cmd = [os.path.join(os.path.dirname(sys.executable), "face-transfer"), "--preset=smoke", f"--run_dir={run_dir}",
           *[f"--teacher={flag}" for _, flag in teachers.values()], f"--faces={root / 'faces'}",
           f"--tasks=celeba:{sets['celeba']}", f"--tasks=fer2013:{sets['fer2013']}", "--nosynth_tasks",
           "--cache_size=1500", "--distill_steps=200"]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=2800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "novel-task score: student" in proc.stdout
    table = json.load(open(run_dir / "metrics" / "transfer.json"))
    names = {t["name"] for t in table["tasks"]}
    assert {"smiling", "expression"} <= names
    assert not (run_dir / "data" / "photo").exists()  # no SynthFaces eval set was rendered
    head = json.load(open(run_dir / "metrics" / "headline.json"))
    assert np.isfinite(head["transfer.mean_novel.student"])


@pytest.mark.parametrize("module, needles", [
    ("trainers.pipeline", ["--teacher", "--teachers_json", "--faces", "--align_faces", "--real_fraction", "--tasks",
                           "--nosynth_tasks", "--preset: <smoke|demo|paper|real>", "--until", "Examples:"]),
    ("trainers.train_student", ["--teacher", "--faces", "--strategy"]),
    ("export.infer_tflite", ["--model", "--images", "python -m export.infer_tflite"]),
])
def test_every_script_help_lists_its_flags_and_an_example(module, needles):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=120)
    text = proc.stdout + proc.stderr
    for needle in needles:
        assert needle in text, (needle, text[-3000:])


def _infer(*args):
    return subprocess.run([sys.executable, "-m", "export.infer_tflite", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, needle", [
    (["--model=MISSING", "--synthetic=1"], "--model=MISSING: expected an existing .tflite file"),  # raised in main
    (["--synthetic=abc"], "--synthetic=abc"),  # rejected by absl's flag parser
])
def test_a_rejected_flag_prints_the_error_and_a_pointer_to_help_not_the_help(tmp_path, args, needle):
    """Issue 21: a rejected flag printed the whole --help (~160 lines for the trainers) before the error."""
    args = [a.replace("MISSING", str(tmp_path / "missing.tflite")) for a in args]
    needle = needle.replace("MISSING", str(tmp_path / "missing.tflite"))
    out = _infer(*args)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and out.stdout == "", (out.returncode, out.stdout[-2000:])
    assert len(lines) < 5, out.stderr[-3000:]
    assert needle in out.stderr and lines[-1] == "Run with --help for the list of flags.", out.stderr
    assert "flags:" not in out.stderr and "--num_threads" not in out.stderr


def test_infer_names_a_truncated_tflite_and_refuses_a_non_image_model(tmp_path):
    import tensorflow as tf
    import keras
    inp = keras.Input((10,))
    model = keras.Model(inp, keras.layers.Dense(2)(inp))
    path = tmp_path / "vector.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    photo = tmp_path / "photo.png"
    from PIL import Image
    Image.fromarray(user_files.rng_images(1, 64)[0]).save(photo)
    out = _infer(f"--model={path}", f"--images={photo}")
    assert out.returncode == 2 and "its input is [[-1, 10]]" in out.stderr and "Traceback" not in out.stderr
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    out = _infer(f"--model={path}", f"--images={photo}")
    assert out.returncode == 4, out.stderr[-2000:]
    assert f"{path}: not a readable .tflite model" in out.stderr and "Traceback" not in out.stderr
