"""The main job end to end (smoke preset), killed mid-stage and resumed; bad flags fail at start-up."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}


def _cmd(run_dir, *extra):
    return [sys.executable, "-m", "trainers.pipeline", "--preset=smoke", f"--run_dir={run_dir}", *extra]


def _wait_for(path, proc, timeout):
    t0 = time.time()
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"pipeline exited ({proc.returncode}) before {path} appeared")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One smoke run, SIGKILLed mid-stage and resumed; shared by the tests below (the fault tests copy it)."""
    tmp_path = tmp_path_factory.mktemp("smoke")
    run_dir = str(tmp_path / "run")
    # 1) start, and SIGKILL it in the middle of the teacher stage: after the first teacher is done and
    #    the second one has written a checkpoint.
    proc = subprocess.Popen(_cmd(run_dir), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = os.path.join(run_dir, "teachers", "recognition_resnet", "teacher.json")
    second_ckpt = os.path.join(run_dir, "teachers", "expression_vgg", "ckpt", "state.json")
    _wait_for(second_ckpt, proc, timeout=400)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert os.path.exists(first)
    assert not os.path.exists(os.path.join(run_dir, "teachers", "expression_vgg", "teacher.json"))
    kept = {p: os.path.getmtime(p) for p in [first, os.path.join(run_dir, "data", "photo", "manifest.json"),
                                             os.path.join(run_dir, "config.json")]}
    epochs_done = json.load(open(second_ckpt))["epochs_done"]

    # 2) the same command again: resumes, finishes, recomputes nothing that was complete.
    out = subprocess.run(_cmd(run_dir), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=800)
    return run_dir, out, kept, epochs_done


@pytest.mark.timeout(900)
def test_smoke_pipeline_killed_mid_stage_resumes_and_finishes(smoke_run):
    run_dir, out, kept, epochs_done = smoke_run
    assert out.returncode == 0, out.stderr[-3000:]
    # the killed run's lock was released by the kernel and taken over, with a notice
    assert "taking over the lock" in out.stderr and "no longer running" in out.stderr
    for p, t in kept.items():
        if not p.endswith("config.json"):
            assert os.path.getmtime(p) == t, f"{p} was rewritten on resume"
    rec = json.load(open(os.path.join(run_dir, "teachers", "expression_vgg", "teacher.json")))
    assert rec["train_seconds_this_run"] >= 0 and epochs_done >= 1

    # 3) what the run leaves behind
    report = open(os.path.join(run_dir, "report.md")).read()
    for heading in ("## Teachers", "## Fusion auto-encoder", "## Student", "## Transfer", "## Export",
                    "## The paper's claims on this run"):
        assert heading in report
    assert "report:" in out.stdout and "parameter ratio" in out.stdout and "int8 TFLite student" in out.stdout
    table = json.load(open(os.path.join(run_dir, "metrics", "transfer.json")))
    from face_transfer.data.tasks import TASKS
    for rep in ("pixels", "random_student", "concat", "pca", "random_projection", "ae", "student",
                "supervised_student"):
        assert rep in table["groups"], rep
    head = json.load(open(os.path.join(run_dir, "metrics", "headline.json")))
    assert head["tasks.count"] == len(TASKS)
    for key in ("params_ratio", "student.params", "tflite.int8_ptq.bytes", "tflite.int8_ptq.cosine_mean",
                "latency.int8_ms_per_face", "fusion.retained_fraction"):
        assert key in head, key
    # what the student holds of every teacher, next to the code it imitates (a fraction of variance)
    imit = table["imitation_r2"]
    assert set(imit["student"]) == set(imit["ae"]) == {k[len("fusion.val_r2."):] for k in head
                                                        if k.startswith("fusion.val_r2.")}
    assert all(head[f"student.imitation_r2.{t}"] <= 1.0 for t in imit["student"])
    assert "How much of each teacher the student holds" in report
    for f in ("student_int8_ptq.tflite", "student_float32.tflite", "analyzer_int8.tflite", "parity.json",
              "student_savedmodel/saved_model.pb", "analyzer_savedmodel/saved_model.pb"):
        assert os.path.exists(os.path.join(run_dir, "export", f)), f
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--all", "--dir", os.path.join(run_dir, "export", "analyzer_savedmodel")],
                           capture_output=True, text=True, env=ENV, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for name in ("serving_default", "inputs['image']", "outputs['expression']", "outputs['yaw']",
                 "outputs['landmarks']", "outputs['embedding']"):
        assert name in shown.stdout, name
    parity = json.load(open(os.path.join(run_dir, "export", "parity.json")))
    assert parity["student_int8_ptq"]["int8_only"] is True
    # issue 22: every student file gives the code and the probed (ladder) view, by name, checked against Keras
    for name in ("student_float32", "student_int8_ptq", "student_int8_qat", "student_onnx"):
        assert sorted(parity[name]["outputs"]) == ["embedding", "features"], name
    export = json.load(open(os.path.join(run_dir, "export", "export.json")))
    assert export["student_outputs"]["view"] == "ladder" and export["student_outputs"]["drops_measured_on"] == "features"
    assert export["student_outputs"]["dims"]["features"] > export["student_outputs"]["dims"]["embedding"]
    assert "has two outputs: `features`" in report
    for png in ("task_bars.png", "compression_curve.png", "student_embedding_2d.png"):
        assert os.path.getsize(os.path.join(run_dir, "metrics", png)) > 1000

    # 4) a third run finds everything complete and changes nothing
    before = os.path.getmtime(os.path.join(run_dir, "export", "student_int8_ptq.tflite"))
    again = subprocess.run(_cmd(run_dir, "--until=export"), cwd=ROOT, env=ENV, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert os.path.getmtime(os.path.join(run_dir, "export", "student_int8_ptq.tflite")) == before


def test_bad_flag_exits_nonzero_before_any_work(tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run(_cmd(str(run_dir), "--code_dim=100000"), cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0
    assert "--code_dim=100000: expected 1 <= d <" in out.stderr
    assert not run_dir.exists()


@pytest.mark.parametrize("argv, error, needle", [
    (["--preset=nope"], "IllegalFlagValueError", "preset"),
    (["--preset=smoke", "--strategy=quantum"], "IllegalFlagValueError", "strategy"),
    (["--preset=smoke", "--code_dim=100000"], "ValidationError", "--code_dim"),
    (["--preset=smoke", "--distill_steps=0"], "ValidationError", "--distill_steps"),
    (["--preset=smoke", "--student_width=-1"], "ValidationError", "--student_width"),
    (["--preset=smoke", "--config_json=/nonexistent.json"], "ValidationError", "--config_json"),
    (["--preset=smoke", "--config_json="], "ValidationError", "--config_json is empty"),
    (["--preset=smoke", "--distill_noise=2"], "ValidationError", "--distill_noise"),
    (["--preset=smoke", "--distill_loss=huber"], "IllegalFlagValueError", "distill_loss"),
    (["--preset=smoke", "--distill_relational_weight=-1"], "ValidationError", "--distill_"),
    (["--preset=smoke", "--distill_batch_size=0"], "ValidationError", "--distill_batch_size"),
    (["--preset=smoke", "--student_workers=-1"], "ValidationError", "--student_workers"),
    (["--preset=smoke", "--fusion_relational_weight=-1"], "ValidationError", "--fusion_relational_weight"),
    (["--preset=smoke", "--distill_loss=l2", "--distill_ladder_residual"], "ValidationError", "ladder_residual"),
    (["--preset=smoke", "--distill_learning_rate=0"], "ValidationError", "--distill_learning_rate"),
    (["--preset=smoke", "--distill_mixup=1.5"], "ValidationError", "mixup"),
    (["--preset=smoke", "--distill_consistent_noise"], "ValidationError", "consistent_noise"),
    (["--preset=smoke", "--distill_loss=l2", "--distill_teacher_drop=0.5"], "ValidationError", "teacher_drop"),
    (["--preset=smoke", "--student_head_channels=-2"], "ValidationError", "--student_head_channels"),
    (["--preset=smoke", "--distill_proxy_width=0.5"], "ValidationError", "--distill_proxy_width"),
    (["--preset=smoke", "--distill_echo=0"], "ValidationError", "--distill_echo"),
])
def test_bad_flags_are_named(tmp_path, argv, error, needle):
    from absl import flags
    from absl.testing import flagsaver
    import trainers.pipeline  # noqa: F401  (defines the flags)
    from trainers import common
    with flagsaver.flagsaver():
        with pytest.raises(Exception) as info:
            flags.FLAGS.unparse_flags()
            flags.FLAGS(["pipeline", f"--run_dir={tmp_path / 'run'}", *argv])
            common.config_from_flags()
    assert type(info.value).__name__ == error
    assert needle in str(info.value)
    assert not (tmp_path / "run").exists()


def test_unwritable_run_dir_is_named(tmp_path):
    from absl import flags
    from absl.testing import flagsaver
    import trainers.pipeline  # noqa: F401
    from trainers import common
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["pipeline", "--preset=smoke", f"--run_dir={blocker / 'run'}"])
        with pytest.raises(flags.ValidationError, match="--run_dir=.*not a writable directory"):
            common.config_from_flags()


def test_other_config_in_run_dir_is_refused(tmp_path):
    from face_transfer import stages
    from face_transfer.configs import preset_config
    run_dir = str(tmp_path / "run")
    stages.Run.open(run_dir, preset_config("smoke"))
    with pytest.raises(ValueError, match="--overwrite"):
        stages.Run.open(run_dir, preset_config("demo"))


# ---- a finished run directory is never silently corrupted ---------------------------------------------------

def _copy_run(smoke_run, tmp_path):
    import shutil
    run_dir = str(tmp_path / "run")
    shutil.copytree(smoke_run[0], run_dir, symlinks=True)
    return run_dir


def _damage(path, how):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write({"truncate": data[: len(data) // 2], "zero": b"", "garbage": os.urandom(max(64, len(data) // 4))}[how])


@pytest.mark.timeout(900)
def test_truncated_tflite_in_a_finished_run_is_named_and_rebuilt(smoke_run, tmp_path):
    run_dir = _copy_run(smoke_run, tmp_path)
    path = os.path.join(run_dir, "export", "student_int8_ptq.tflite")
    size = os.path.getsize(path)
    _damage(path, "truncate")
    out = subprocess.run(_cmd(run_dir), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=800)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{path}: {size // 2:,} bytes, recorded {size:,}" in out.stderr
    assert "recomputing stage export" in out.stderr
    assert os.path.getsize(path) == size
    from face_transfer.core.interpreter import load_interpreter
    load_interpreter(path)  # loads again
    parity = json.load(open(os.path.join(run_dir, "export", "parity.json")))
    assert parity["student_int8_ptq"]["int8_only"] is True


@pytest.mark.parametrize("how", ["truncate", "zero", "garbage"])
def test_damaged_config_json_exits_naming_the_file(smoke_run, tmp_path, how):
    run_dir = _copy_run(smoke_run, tmp_path)
    path = os.path.join(run_dir, "config.json")
    _damage(path, how)
    out = subprocess.run(_cmd(run_dir), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 4, out.stderr[-2000:]
    assert f"error (corrupt file): {path}" in out.stderr and "Traceback" not in out.stderr


def test_second_invocation_on_a_busy_run_dir_is_refused(smoke_run, tmp_path):
    from face_transfer.stages.rundir import RunLock
    run_dir = _copy_run(smoke_run, tmp_path)
    with RunLock(run_dir):
        out = subprocess.run(_cmd(run_dir, "--until=evaluate"), cwd=ROOT, env=ENV, capture_output=True, text=True,
                             timeout=300)
    assert out.returncode == 5, out.stderr[-2000:]
    assert f"run_dir {run_dir} is in use by PID {os.getpid()} on " in out.stderr and "Traceback" not in out.stderr


KINDS = {  # artifact kind -> path in a finished smoke run
    "teacher_model": "teachers/expression_vgg/model.keras",
    "student_checkpoint": None,  # the newest checkpoint file of the student
    "cache_shard": "cache/shard-00000.npz",
    "cache_manifest": "cache/manifest.json",
    "fusion": "fusion/encoder.keras",
    "student_model": "student/model.keras",
    "export_tflite": "export/analyzer_int8.tflite",
    "config": "config.json",
}


@pytest.mark.slow
@pytest.mark.timeout(3000)
@pytest.mark.parametrize("how", ["truncate", "zero", "garbage"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fault_injection_never_reports_a_corrupt_run_as_done(smoke_run, tmp_path, kind, how):
    """Each kind of artifact damaged three ways: the re-run recomputes and ends healthy (same metrics within
    tolerance), or exits non-zero naming the file. Never exit 0 with the damaged file in place."""
    import glob
    run_dir = _copy_run(smoke_run, tmp_path)
    rel = KINDS[kind] or os.path.relpath(sorted(glob.glob(os.path.join(run_dir, "student", "ckpt", "ckpt-*.data*")))[-1],
                                         run_dir)
    path = os.path.join(run_dir, rel)
    before = json.load(open(os.path.join(run_dir, "metrics", "headline.json")))
    _damage(path, how)
    damaged = open(path, "rb").read()
    out = subprocess.run(_cmd(run_dir), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=2500)
    if out.returncode != 0:
        assert path in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
        return
    if kind != "student_checkpoint":  # a finished run never reads its checkpoints again
        assert open(path, "rb").read() != damaged, f"{path} is still damaged after an exit-0 re-run"
        assert path in out.stderr, out.stderr[-2000:]
    after = json.load(open(os.path.join(run_dir, "metrics", "headline.json")))
    assert abs(after["transfer.mean_novel.student"] - before["transfer.mean_novel.student"]) < 5.0
    assert after["tflite.int8_ptq.bytes"] > 0


def test_run_dir_that_is_a_file_is_named_as_a_file(tmp_path):
    from absl import flags
    from absl.testing import flagsaver
    import trainers.pipeline  # noqa: F401
    from trainers import common
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["pipeline", "--preset=smoke", f"--run_dir={blocker}"])
        with pytest.raises(flags.ValidationError, match="--run_dir=.*a_file: is a file, not a directory"):
            common.config_from_flags()


@pytest.mark.parametrize("text, needle", [
    ("", "empty file"),
    ("{\"preset\": \"smoke\"}", "missing field(s) ['compression_dims'"),
    ("{\"data\": ", "not valid JSON"),
])
def test_config_json_errors_name_the_file_and_fields(tmp_path, text, needle):
    from absl import flags
    from absl.testing import flagsaver
    import trainers.pipeline  # noqa: F401
    from trainers import common
    path = tmp_path / "config.json"
    path.write_text(text)
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["pipeline", f"--config_json={path}", f"--run_dir={tmp_path / 'run'}"])
        with pytest.raises(flags.ValidationError) as info:
            common.config_from_flags()
    assert f"--config_json={path}: {path}: " in str(info.value) and needle in str(info.value)


def test_distillation_levers_reach_the_config(tmp_path):
    from absl import flags
    from absl.testing import flagsaver
    import trainers.pipeline  # noqa: F401
    from trainers import common
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["pipeline", "--preset=smoke", f"--run_dir={tmp_path / 'run'}", "--distill_loss=cos_sl1",
                     "--distill_heads", "--distill_noise=0.25", "--distill_code_weight=0.5"])
        cfg = common.config_from_flags()
    assert (cfg.distill.loss, cfg.distill.heads, cfg.distill.noise, cfg.distill.code_weight) == ("cos_sl1", True, 0.25, 0.5)


def test_a_stage_rerun_after_its_record_was_deleted_refreshes_its_dependants(tmp_path, monkeypatch):
    """Fake three-stage pipeline: deleting the middle stage's record (to force it) recomputes the last one
    too, since its earlier result came from the old middle stage; the first stage stays untouched."""
    from face_transfer.configs import preset_config

    calls = []
    pipeline = _fake_stages(monkeypatch, {"data": (), "student": ("data",), "report": ("student",)}, calls)
    cfg = preset_config("smoke")
    run_dir = str(tmp_path / "run")
    pipeline.run_pipeline(cfg, run_dir, until="report")
    assert calls == ["data", "student", "report"]
    pipeline.run_pipeline(cfg, run_dir, until="report")  # complete: nothing runs
    assert calls == ["data", "student", "report"]
    os.remove(os.path.join(run_dir, "metrics", "stages", "student.json"))
    os.remove(os.path.join(run_dir, "student.txt"))
    pipeline.run_pipeline(cfg, run_dir, until="report")
    assert calls == ["data", "student", "report", "student", "report"]


def test_distillation_lever_flags_reach_the_config(tmp_path):
    from absl import flags
    from absl.testing import flagsaver
    import trainers.pipeline  # noqa: F401
    from trainers import common
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["pipeline", "--preset=demo", f"--run_dir={tmp_path / 'run'}", "--batch_size=48",
                     "--distill_batch_size=24", "--distill_learning_rate=0.002", "--distill_relational_weight=0.5",
                     "--distill_heads", "--distill_heads_view=ladder"])
        cfg = common.config_from_flags()
    d = cfg.distill
    assert (d.batch_size, d.learning_rate, d.relational_weight, d.heads, d.heads_view) == (24, 0.002, 0.5, True, "ladder")
    assert cfg.teacher_train.batch_size == 48  # --batch_size still sets the teachers'
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["pipeline", "--preset=demo", f"--run_dir={tmp_path / 'run'}", "--distill_ladder_residual",
                     "--fusion_relational_weight=0"])
        cfg = common.config_from_flags()
    assert cfg.distill.ladder_residual and cfg.fusion.relational_weight == 0.0
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["pipeline", "--preset=demo", f"--run_dir={tmp_path / 'run'}", "--fusion_pca_init",
                     "--distill_loss=balanced_angle", "--distill_proxy_width=3.4"])
        cfg = common.config_from_flags()
    assert (cfg.fusion.pca_init, cfg.distill.loss, cfg.distill.proxy_width) == (True, "balanced_angle", 3.4)
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["pipeline", "--preset=demo", f"--run_dir={tmp_path / 'run'}", "--distill_mixup=0.5",
                     "--distill_teacher_drop=0.3", "--distill_noise=0.2", "--distill_consistent_noise",
                     "--student_head_channels=384"])
        cfg = common.config_from_flags()
    d = cfg.distill
    assert (d.mixup, d.teacher_drop, d.noise, d.consistent_noise) == (0.5, 0.3, 0.2, True)
    assert cfg.student.head_channels == 384


def test_student_view_and_ceiling_flags_reach_the_config(tmp_path):
    from absl import flags
    from absl.testing import flagsaver
    import trainers.pipeline  # noqa: F401
    from trainers import common
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["pipeline", "--preset=demo", f"--run_dir={tmp_path / 'run'}", "--student_view=embedding",
                     "--noceiling", "--ceiling_budget=2.5", "--ceiling_batch_size=64"])
        cfg = common.config_from_flags()
    assert (cfg.student_view, cfg.ceiling, cfg.ceiling_budget, cfg.ceiling_batch_size) == ("embedding", False, 2.5, 64)
    from face_transfer.stages.student import ceiling_distill_config
    c = ceiling_distill_config(cfg)  # the budget in faces, in batches of 64
    faces = cfg.distill.steps * cfg.distill.batch_size
    assert c.steps * c.batch_size == round(2.5 * faces) and c.batch_size == 64
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["pipeline", "--preset=demo", f"--run_dir={tmp_path / 'run'}", "--ceiling_batch_size=0",
                     "--ceiling_budget=2.5"])
        cfg = common.config_from_flags()
    c = ceiling_distill_config(cfg)  # the student's batch: the steps and the checkpoints scale with the budget
    assert (c.steps, c.batch_size, c.checkpoint_every) == \
        (round(2.5 * cfg.distill.steps), cfg.distill.batch_size, round(2.5 * cfg.distill.checkpoint_every))
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["pipeline", "--preset=demo", f"--run_dir={tmp_path / 'run'}", "--distill_echo=3",
                     "--ceiling_budget=1"])
        cfg = common.config_from_flags()
    # echo: the labelled networks make as many updates as the student, each on fresh faces, and echo nothing
    from face_transfer.stages.student import labelled_distill_config
    d, c, sup = cfg.distill, ceiling_distill_config(cfg), labelled_distill_config(cfg.distill)
    assert d.echo == 3 and (sup.steps, sup.echo, c.steps, c.echo) == (3 * d.steps, 1, 3 * d.steps, 1)
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["pipeline", "--preset=demo", f"--run_dir={tmp_path / 'run'}", "--ceiling_batch_size=-8"])
        with pytest.raises(flags.ValidationError, match=r"--ceiling_batch_size=-8"):
            common.config_from_flags()
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["pipeline", "--preset=demo", f"--run_dir={tmp_path / 'run'}", "--ceiling_budget=0.5"])
        with pytest.raises(flags.ValidationError, match=r"--ceiling_budget=0.5: .*expected a multiple >= 1"):
            common.config_from_flags()
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["pipeline", "--preset=demo", f"--run_dir={tmp_path / 'run'}", f"--teacher_pretrained={tmp_path}"])
        with pytest.raises(flags.ValidationError, match=rf"--teacher_pretrained={tmp_path}: no manifest.json in"):
            common.config_from_flags()
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["pipeline", "--preset=demo", f"--run_dir={tmp_path / 'run'}", "--teacher_pretrained="])
        assert common.config_from_flags().teacher_train.pretrained == ""
        # warm start: from a built zoo (the demo preset's own default of using it as it is is dropped), never both
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["pipeline", "--preset=demo", f"--run_dir={tmp_path / 'run'}", "--teacher_warm_start=package"])
        tt = common.config_from_flags().teacher_train
        assert (tt.warm_start, tt.pretrained) == ("package", "")
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["pipeline", "--preset=demo", f"--run_dir={tmp_path / 'run'}", f"--teacher_warm_start={tmp_path}"])
        with pytest.raises(flags.ValidationError, match=rf"--teacher_warm_start={tmp_path}: no manifest.json in"):
            common.config_from_flags()
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["pipeline", "--preset=demo", f"--run_dir={tmp_path / 'run'}", "--teacher_warm_start=package",
                     "--teacher_pretrained=package"])
        with pytest.raises(flags.ValidationError, match="give one of the two"):
            common.config_from_flags()
    from face_transfer.configs import preset_config
    assert (preset_config("demo").student_view, preset_config("demo").ceiling) == ("ladder", True)
    with pytest.raises(ValueError, match="student_view='pyramid'"):
        import dataclasses
        dataclasses.replace(preset_config("demo"), student_view="pyramid")


def test_a_relative_run_dir_resumes_without_recomputing(tmp_path, monkeypatch):
    """`make demo` passes runs/demo: the stage records must verify on resume (they were once written as
    runs/demo/runs/demo/..., so every stage looked damaged and ran again)."""
    from face_transfer.configs import preset_config

    calls = []
    pipeline = _fake_stages(monkeypatch, {"data": (), "report": ("data",)}, calls)
    monkeypatch.chdir(tmp_path)
    cfg = preset_config("smoke")
    pipeline.run_pipeline(cfg, os.path.join("runs", "demo"), until="report")
    pipeline.run_pipeline(cfg, os.path.join("runs", "demo"), until="report")
    assert calls == ["data", "report"]
    rec = json.load(open(tmp_path / "runs" / "demo" / "metrics" / "stages" / "data.json"))
    assert "data.txt" in json.dumps(rec) and "runs/demo/data.txt" not in json.dumps(rec)


def _fake_stages(monkeypatch, spec, calls):
    """Replace the pipeline's stages by fakes {name: depends_on} that log their runs into `calls` and write
    one output file each (recorded as the stage's artifact)."""
    import types

    from face_transfer import pipeline

    def stage(name, depends):
        def run(run, ctx):
            calls.append(name)
            out = run.p(f"{name}.txt")
            with open(out, "w") as f:
                f.write(str(len(calls)))
            return {"outputs": [out], "artifacts": [out]}
        return types.SimpleNamespace(NAME=name, WORKERS="all", DEPENDS_ON=depends, run=run)

    fake = tuple(stage(n, d) for n, d in spec.items())
    monkeypatch.setattr(pipeline, "ordered_stages", lambda: fake)
    return pipeline


@pytest.mark.timeout(900)
def test_student_stage_in_parallel_processes_matches_the_sequential_one(smoke_run, tmp_path):
    """The student stage's networks trained side by side in spawned processes (--student_workers=2) give the
    sequential stage's records (same networks, losses equal up to thread rounding), and a speed-only option
    does not make the run directory 'another configuration'."""
    run_dir = _copy_run(smoke_run, tmp_path)
    stage = json.load(open(os.path.join(run_dir, "metrics", "stages", "student.json")))["record"]["students"]
    import shutil
    for rep in stage:
        shutil.rmtree(os.path.join(run_dir, {"student": "student", "supervised_student": "student_supervised",
                                             "ceiling": "student_ceiling"}.get(rep, rep)))
    os.remove(os.path.join(run_dir, "metrics", "stages", "student.json"))
    out = subprocess.run(_cmd(run_dir, "--until=student", "--student_workers=2"), cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=800)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "in 2 processes of" in out.stdout + out.stderr, out.stderr[-2000:]
    again = json.load(open(os.path.join(run_dir, "metrics", "stages", "student.json")))["record"]["students"]
    assert list(again) == list(stage)
    for rep, rec in stage.items():
        assert again[rep]["params"] == rec["params"] and again[rep]["kind"] == rec["kind"]
        numpy.testing.assert_allclose(again[rep]["final_loss"], rec["final_loss"], rtol=0.1)
    assert json.load(open(os.path.join(run_dir, "config.json")))["student_workers"] == 2


@pytest.mark.timeout(900)
def test_fusion_ablation_and_distill_timing_run_on_a_finished_run(smoke_run, tmp_path):
    """benchmarks.ablate_fusion trains fusion variants on a finished run's cache and probes them next to the
    concatenation, the run's AE and PCA; benchmarks.time_distill times the run's distillation with overrides."""
    run_dir = _copy_run(smoke_run, tmp_path)
    out = subprocess.run([sys.executable, "-m", "benchmarks.ablate_fusion", f"--run_dir={run_dir}",
                          "--variants=plain,relational"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=800)
    assert out.returncode == 0, out.stderr[-3000:]
    saved = json.load(open(os.path.join(run_dir, "ablation_fusion", "ablation.json")))
    assert set(saved["variants"]) == {"plain", "relational"}
    assert {"concat", "ae"} <= set(saved["baselines"]) and any(k.startswith("pca_d") for k in saved["baselines"])
    assert saved["variants"]["relational"]["overrides"]["relational_weight"] > 0
    assert all(0 <= r["mean_novel"] <= 100 for r in {**saved["variants"], **saved["baselines"]}.values())
    assert "| AE: relational |" in open(os.path.join(run_dir, "ablation_fusion", "ablation.md")).read()
    out = subprocess.run([sys.executable, "-m", "benchmarks.time_distill", f"--run_dir={run_dir}",
                          "--set=steps=4,steps_per_execution=2", "--threads=1"], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=800)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[time_distill] steps=4,steps_per_execution=2 threads=1 repeat 0:" in out.stdout, out.stdout[-2000:]
    out = subprocess.run([sys.executable, "-m", "benchmarks.time_distill", f"--run_dir={run_dir}", "--split",
                          "--split_seconds=0.3", "--threads=1"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=800)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("[time_distill] batch"))
    for part in ("teachers_forward", "student_step_stock_bn", "student_step_fused_bn"):
        assert f"{part} " in line and " images/s" in line, line
    # benchmarks.ablate_distill: one lever on top of the run's own distillation, and a student override
    out = subprocess.run([sys.executable, "-m", "benchmarks.ablate_distill", f"--run_dir={run_dir}", "--variants=preset",
                          "--set=loss=teacher_space,teacher_drop=0.5", "--student_set=head_channels=40", "--steps=4",
                          "--views=ladder", "--no_baselines"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=800)
    assert out.returncode == 0, out.stderr[-3000:]
    saved = json.load(open(os.path.join(run_dir, "ablation", "ablation.json")))
    row = saved["variants"]["preset[loss=teacher_space,teacher_drop=0.5]{head_channels=40}+ladder"]
    assert row["overrides"] == {"loss": "teacher_space", "teacher_drop": 0.5}
    assert row["student_overrides"] == {"head_channels": 40} and 0 <= row["mean_novel"] <= 100


def test_teacher_margins_of_a_zoo_are_the_ones_a_run_on_it_reports(smoke_run, tmp_path):
    """benchmarks.teacher_margins probes a zoo folder's teachers on a finished run's source tasks against that
    run's supervised control: a zoo packaged from the run's own teachers gives the run's own margins."""
    run_dir = _copy_run(smoke_run, tmp_path)
    zoo = str(tmp_path / "zoo")
    out = subprocess.run([sys.executable, "-m", "export.package_zoo", f"--run_dir={run_dir}", f"--out={zoo}"],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=800)
    assert out.returncode == 0, out.stderr[-3000:]
    out = subprocess.run([sys.executable, "-m", "benchmarks.teacher_margins", f"--run_dir={run_dir}", f"--zoo={zoo}"],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=800)
    assert out.returncode == 0, out.stderr[-3000:]
    saved = json.load(open(os.path.join(run_dir, "teacher_margins", "zoo.json")))
    head = json.load(open(os.path.join(run_dir, "metrics", "headline.json")))
    want = head["teachers.source_margin_over_supervised"]
    assert set(saved["teachers"]) == set(want)
    for name, margins in want.items():
        assert saved["teachers"][name]["margin"] == pytest.approx(margins, abs=1e-6), name
    assert saved["min_source_margin_over_supervised"] == pytest.approx(head["teachers.min_source_margin_over_supervised"])
    assert "[margins] smallest margin" in out.stdout


def test_package_zoo_update_carries_a_zoo_over(smoke_run, tmp_path):
    """export.package_zoo --update: a run's teachers packaged over an existing zoo into a new folder (the manifest
    names what they replaced); the zoo as its own output is a usage error naming --update, and nothing is written."""
    run_dir = smoke_run[0]
    zoo, zoo2 = str(tmp_path / "zoo"), str(tmp_path / "zoo2")
    cmd = [sys.executable, "-m", "export.package_zoo", f"--run_dir={run_dir}"]
    out = subprocess.run(cmd + [f"--out={zoo}"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=800)
    assert out.returncode == 0, out.stderr[-3000:]
    out = subprocess.run(cmd + [f"--out={zoo2}", f"--update={zoo}"], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=800)
    assert out.returncode == 0, out.stderr[-3000:]
    first, second = (json.load(open(os.path.join(z, "manifest.json"))) for z in (zoo, zoo2))
    assert second["updated_from"]["replaced"] == sorted(first["teachers"]) and not second["updated_from"]["added"]
    assert set(second["teachers"]) == set(first["teachers"])
    before = os.path.getmtime(os.path.join(zoo, "manifest.json"))
    bad = subprocess.run(cmd + [f"--out={zoo}", f"--update={zoo}", "--overwrite"], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=800)
    assert bad.returncode == 2 and f"--update={zoo}" in bad.stderr and "also the output" in bad.stderr, bad.stderr
    assert os.path.getmtime(os.path.join(zoo, "manifest.json")) == before


@pytest.mark.timeout(900)
def test_readme_api_example_runs_on_a_finished_run(smoke_run, tmp_path):
    """The README's Python example (face_transfer.api), run as written on a copy of the smoke run: create resumes
    the finished run, evaluate/export return objects, adapt writes a new analyser that infer runs."""
    import re
    import shutil
    readme = open(os.path.join(ROOT, "README.md")).read()
    code = re.search(r"<!-- api-example:start -->\n```python\n(.*?)```", readme, re.S).group(1)
    os.makedirs(tmp_path / "runs")
    shutil.copytree(smoke_run[0], tmp_path / "runs" / "demo", ignore=shutil.ignore_patterns(".lock"))
    # the same example on the smoke run (the README's preset is the quick start's) with a smaller dataset
    code = code.replace('preset="demo"', 'preset="smoke"').replace('"data/shape", 600', '"data/shape", 150')
    assert 'preset="smoke"' in code and "150" in code
    script = tmp_path / "example.py"
    script.write_text(code + "\nimport json; json.dump({'scores': adapted.scores, 'heads': sorted(adapted.heads), "
                             "'outputs': sorted(analyzer.output), 'feats': list(feats.shape), "
                             "'novel': ft.evaluate().mean_novel('student')}, open('out.json', 'w'))\n")
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                         timeout=800)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.load(open(tmp_path / "out.json"))
    assert "face_shape" in got["scores"] and 0 <= got["scores"]["face_shape"]["linear"] <= 100
    assert "face_shape" in got["heads"] and "face_shape" in got["outputs"] and "embedding" in got["outputs"]
    assert 0 < got["novel"] <= 100 and got["feats"][0] == 8
    assert "student" in out.stdout  # print(ft.evaluate()) shows the table
    # the adapted int8 analyser runs in face-transfer-infer, with the new head
    p = subprocess.run([sys.executable, "-m", "export.infer_tflite", f"--model={tmp_path}/runs/demo_shape/analyzer_int8.tflite",
                        "--synthetic=2"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "face_shape" in p.stdout, p.stderr[-2000:]


@pytest.mark.timeout(600)
def test_finetune_from_a_run_replays_its_faces_scores_forgetting_and_keeps_frozen_stages(smoke_run, tmp_path):
    """Fine-tuning from a run directory: the keep term also sees the run's own faces (replay_faces), every old
    head's task is scored before and after, the old heads are refitted, and with tune_stages the earlier stages'
    weights (so their part of the ladder) are exactly the distilled ones."""
    from face_transfer import adapt
    from face_transfer.data import synth
    from face_transfer.data.synth_datasets import write_folder_csv
    from face_transfer.data.tasksets import parse_task_flag
    from face_transfer.deploy.bundle import load_bundle
    from face_transfer.student.model import stage_outputs

    b = load_bundle(smoke_run[0])
    assert b.run_dir == smoke_run[0]
    faces = adapt.replay_faces(adapt.run_data(b)[0], 16)
    assert faces.shape == (16, b.image_size, b.image_size, 3) and faces.dtype == numpy.uint8
    write_folder_csv(synth.SynthConfig(image_size=b.image_size), str(tmp_path / "shape"), 120,
                     columns=("face_shape",), stream="test_replay")
    ts = [parse_task_flag(f"folder_csv:{tmp_path / 'shape' / 'labels.csv'},name=shape")]
    cfg = adapt.AdaptConfig(mode="finetune", finetune_steps=4, batch_size=8, replay_faces=32, tune_stages=1,
                            learning_rate=1e-2)
    r = adapt.adapt(b, ts, cfg, progress=False)
    assert set(r.scores["old_before"]) == set(r.scores["old_after"]) and r.scores["old_before"]
    assert r.forgetting_max is not None
    ends = stage_outputs(b.student)
    names = [layer.name for layer in b.student.layers]
    frozen = set(names[: names.index(ends[-2]) + 1])
    for layer in b.student.layers:
        before, after = layer.get_weights(), r.student.get_layer(layer.name).get_weights()
        same = all(numpy.array_equal(x, y) for x, y in zip(before, after))
        if layer.name in frozen:
            assert same, layer.name
    assert any(not numpy.array_equal(x, y) for x, y in zip(b.student.get_weights(), r.student.get_weights()))
