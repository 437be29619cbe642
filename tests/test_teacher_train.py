"""Teacher training: a tiny zoo teacher trains, records metrics, skips when done, resumes after a kill."""
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from face_transfer.data import synth
from face_transfer.teachers import train as teacher_train
from face_transfer.teachers.config import TeacherSpec, TeacherTrainConfig
from face_transfer.teachers.train import TEACHER_JSON, load_zoo_teacher, train_teacher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = TeacherSpec("t", "resnet", "expression", (4, 8), 1, 8, input_size=32)
SYNTH = synth.SynthConfig(image_size=32, n_train_identities=20, n_heldout_identities=5)
CFG = TeacherTrainConfig(steps=6, batch_size=8, checkpoint_every=3, eval_images=32, verbose=0)
# The interrupted run: more, shorter epochs so that the kill lands between two checkpoints.
RESUME_CFG = TeacherTrainConfig(steps=12, batch_size=8, checkpoint_every=2, eval_images=32, verbose=0)

_CHILD = """
import sys
sys.path.insert(0, {root!r})
from face_transfer.data.synth import SynthConfig
from face_transfer.teachers.config import TeacherSpec, TeacherTrainConfig
from face_transfer.teachers.train import train_teacher
train_teacher({spec!r}, {synth!r}, {cfg!r}, {out!r})
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("teacher"))
    t0 = time.time()
    record = train_teacher(SPEC, SYNTH, CFG, out)
    return out, record, time.time() - t0


def test_train_teacher_writes_record_and_model(trained):
    out, record, _ = trained
    assert os.path.exists(os.path.join(out, "model.keras"))
    with open(os.path.join(out, TEACHER_JSON)) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(record))
    assert record["name"] == "t" and record["source_task"] == "expression" and record["steps"] == 6
    assert record["embedding_dim"] == 8 and 0 < record["params_embedding"] <= record["params_total"]
    saved_model = keras.models.load_model(os.path.join(out, "model.keras"), compile=False)
    assert all(layer.trainable for layer in saved_model.layers)  # saved trainable: a user may fine-tune it
    acc = record["metrics"]["expression_accuracy"]
    assert 0.0 <= acc <= 100.0 and record["main_score"] == acc
    with open(os.path.join(out, "ckpt", "state.json")) as f:
        assert json.load(f)["epochs_done"] == 2  # 6 steps, a checkpoint (= an epoch) every 3


def test_second_call_returns_record_without_training(trained, monkeypatch):
    out, record, _ = trained

    def no_build(*a, **k):
        raise AssertionError("a finished teacher was rebuilt")
    monkeypatch.setattr(teacher_train.zoo, "build_teacher", no_build)
    monkeypatch.setattr(teacher_train.keras.models, "load_model", no_build)
    t0 = time.time()
    assert train_teacher(SPEC, SYNTH, CFG, out) == json.loads(json.dumps(record))
    assert time.time() - t0 < 1.0


def test_load_zoo_teacher_embeds_uint8(trained):
    out, _, _ = trained
    teacher = load_zoo_teacher(out)
    assert teacher.name == "t" and teacher.dim == 8
    images, _ = synth.render_faces(SYNTH, np.arange(5), stream="test")
    emb = teacher.embed(images, batch_size=2)
    assert emb.shape == (5, 8) and emb.dtype == np.float32 and np.all(np.isfinite(emb))
    assert np.ptp(emb, axis=0).max() > 0  # different faces, different embeddings
    # Same result as the embedding layer of the saved model on manually preprocessed input.
    model = keras.models.load_model(os.path.join(out, "model.keras"), compile=False)
    sub = keras.Model(model.input, model.get_layer("embedding").output)
    np.testing.assert_allclose(emb, sub.predict(images / 127.5 - 1.0, verbose=0), atol=1e-4)
    assert teacher.metadata["record"]["name"] == "t"


def test_load_zoo_teacher_untrained_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match=TEACHER_JSON):
        load_zoo_teacher(str(tmp_path))


def test_resume_after_sigkill(tmp_path, monkeypatch):
    out = str(tmp_path / "teacher")
    script = _CHILD.format(root=ROOT, spec=SPEC, synth=SYNTH, cfg=RESUME_CFG, out=out)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1"}
    state = os.path.join(out, "ckpt", "state.json")
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 180
        while not os.path.exists(state):
            assert proc.poll() is None, f"training child died early: {proc.stderr.read().decode()[-2000:]}"
            assert time.time() < deadline, "no checkpoint within 180 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(out, TEACHER_JSON))
    with open(state) as f:
        killed = json.load(f)
    killed_at, killed_seconds = killed["epochs_done"], killed["seconds"]
    total_epochs = RESUME_CFG.steps // RESUME_CFG.checkpoint_every
    assert 1 <= killed_at < total_epochs

    # The rerun must continue from the checkpoint: no fresh model, fit from the epoch reached.
    def no_build(*a, **k):
        raise AssertionError("resume rebuilt the teacher from scratch")
    monkeypatch.setattr(teacher_train.zoo, "build_teacher", no_build)
    seen = {}
    fit = keras.Model.fit

    def spy_fit(self, *args, **kwargs):
        seen["initial_epoch"] = kwargs.get("initial_epoch")
        seen["iterations"] = int(self.optimizer.iterations.numpy())
        return fit(self, *args, **kwargs)
    monkeypatch.setattr(keras.Model, "fit", spy_fit)
    record = train_teacher(SPEC, SYNTH, RESUME_CFG, out)

    assert seen["initial_epoch"] == killed_at
    # The optimizer state came back with the model (iteration count of the killed run).
    assert seen["iterations"] == killed_at * RESUME_CFG.checkpoint_every
    with open(state) as f:
        assert json.load(f)["epochs_done"] == total_epochs
    assert record["steps"] == RESUME_CFG.steps and "expression_accuracy" in record["metrics"]
    assert os.path.exists(os.path.join(out, TEACHER_JSON))
    # the build time counts the killed invocation's training too (teachers.build_seconds reads it)
    assert record["train_seconds_total"] == pytest.approx(killed_seconds + record["train_seconds_this_run"], abs=0.2)
    assert killed_seconds > 0


def test_pretrained_zoo_is_installed_not_trained_and_checked(trained, tmp_path, monkeypatch):
    """package_pretrained -> install_pretrained: the run gets the same model without training; a different
    architecture, an unknown name or a damaged file is refused with an error naming the file."""
    import dataclasses

    from face_transfer.core.errors import CorruptArtifactError
    out, record, _ = trained
    zoo_dir = str(tmp_path / "zoo")
    manifest = teacher_train.package_pretrained({"t": out}, zoo_dir, SYNTH, note="test")
    assert manifest["teachers"]["t"]["record"]["metrics"] == json.loads(json.dumps(record))["metrics"]

    def no_build(*a, **k):
        raise AssertionError("a pretrained teacher was trained")
    monkeypatch.setattr(teacher_train.zoo, "build_teacher", no_build)
    cfg = dataclasses.replace(CFG, pretrained=zoo_dir)
    run_dir = str(tmp_path / "run_teacher")
    rec = train_teacher(SPEC, SYNTH, cfg, run_dir)
    assert rec["pretrained"]["sha256"] == manifest["teachers"]["t"]["sha256"] and rec["steps"] == 6
    images, _ = synth.render_faces(SYNTH, np.arange(4), stream="test")
    np.testing.assert_array_equal(load_zoo_teacher(run_dir).embed(images), load_zoo_teacher(out).embed(images))

    with pytest.raises(ValueError, match=r"not the teacher the config asks for \(differs in embedding_dim: 8 vs 16"):
        train_teacher(dataclasses.replace(SPEC, embedding_dim=16), SYNTH, cfg, str(tmp_path / "other"))
    with pytest.raises(ValueError, match=r"no pretrained teacher 'u' \(it holds \['t'\]\)"):
        train_teacher(dataclasses.replace(SPEC, name="u"), SYNTH, cfg, str(tmp_path / "u"))
    with pytest.raises(FileNotFoundError, match="manifest.json: no such file"):
        train_teacher(SPEC, SYNTH, dataclasses.replace(CFG, pretrained=str(tmp_path)), str(tmp_path / "none"))
    model = os.path.join(zoo_dir, "t", "model.keras")
    with open(model, "r+b") as f:
        f.truncate(os.path.getsize(model) // 2)
    with pytest.raises(CorruptArtifactError, match=rf"{model}: .* bytes, SHA-256 .*damaged or was replaced"):
        train_teacher(SPEC, SYNTH, cfg, str(tmp_path / "damaged"))
    assert not os.path.exists(str(tmp_path / "damaged" / TEACHER_JSON))


def test_package_update_keeps_the_other_teachers_and_replaces_the_retrained(trained, tmp_path):
    """package_pretrained(base=...): one teacher retrained gives a whole zoo: the base's other teachers are carried
    over byte for byte (checked first), the run's replaces its namesake; a damaged base file, another SynthFaces
    configuration or the base as its own output is refused."""
    import dataclasses
    import shutil

    from face_transfer.core.errors import CorruptArtifactError
    out, record, _ = trained
    base = str(tmp_path / "base")
    teacher_train.package_pretrained({"t": out, "u": out}, base, SYNTH, note="base zoo")
    retrained = str(tmp_path / "retrained")
    shutil.copytree(out, retrained)
    with open(os.path.join(retrained, TEACHER_JSON)) as f:
        rec = json.load(f)
    with open(os.path.join(retrained, TEACHER_JSON), "w") as f:
        json.dump({**rec, "steps_total": 99}, f)
    new = str(tmp_path / "new")
    manifest = teacher_train.package_pretrained({"u": retrained}, new, SYNTH, note="u retrained", base=base)
    old = json.load(open(os.path.join(base, teacher_train.PRETRAINED_MANIFEST)))
    assert manifest["teachers"]["t"] == {**old["teachers"]["t"], "note": "base zoo"}  # keeps its own note
    assert manifest["teachers"]["u"]["note"] == "u retrained"
    assert open(os.path.join(new, "t", "model.keras"), "rb").read() == open(os.path.join(base, "t", "model.keras"),
                                                                           "rb").read()
    assert manifest["teachers"]["u"]["record"]["steps_total"] == 99
    assert manifest["updated_from"]["replaced"] == ["u"] and manifest["updated_from"]["note"] == "base zoo"
    teacher_train.verified_pretrained(SPEC, new)  # the carried-over teacher passes the checks a run makes
    for name in ("t", "u"):  # and every file matches the new manifest
        teacher_train._verified_file(new, name, manifest["teachers"][name], "manifest")

    with pytest.raises(ValueError, match="another SynthFaces configuration.*n_train_identities: 20 vs 21"):
        teacher_train.package_pretrained({"u": retrained}, str(tmp_path / "x"),
                                         dataclasses.replace(SYNTH, n_train_identities=21), base=base)
    with pytest.raises(ValueError, match="also the output"):
        teacher_train.package_pretrained({"u": retrained}, base, SYNTH, base=base)
    with pytest.raises(FileNotFoundError, match="manifest.json: no such file"):
        teacher_train.package_pretrained({"u": retrained}, str(tmp_path / "z"), SYNTH, base=str(tmp_path))
    model = os.path.join(base, "t", "model.keras")
    with open(model, "r+b") as f:
        f.truncate(os.path.getsize(model) // 2)
    with pytest.raises(CorruptArtifactError, match=rf"{model}: .*damaged or was replaced"):
        teacher_train.package_pretrained({"u": retrained}, str(tmp_path / "y"), SYNTH, base=base)
    assert not os.path.exists(tmp_path / "y")  # checked before anything was written


def test_warm_start_trains_a_packaged_teacher_further_on_new_faces(trained, tmp_path, monkeypatch):
    """warm_start: the packaged weights start the run (not random ones), training goes on for `steps` more on the
    faces after the ones the teacher saw, and the record adds up the steps and seconds of both trainings."""
    import dataclasses
    out, record, _ = trained
    zoo_dir = str(tmp_path / "zoo")
    teacher_train.package_pretrained({"t": out}, zoo_dir, SYNTH, note="test")
    starts = []
    real_dataset = teacher_train._dataset

    def spy(spec, synth_cfg, cfg, start_index, stream):
        starts.append(start_index)
        return real_dataset(spec, synth_cfg, cfg, start_index, stream)

    def no_build(*a, **k):
        raise AssertionError("a warm-started teacher was built from random weights")
    monkeypatch.setattr(teacher_train, "_dataset", spy)
    monkeypatch.setattr(teacher_train.zoo, "build_teacher", no_build)
    cfg = dataclasses.replace(CFG, steps=3, warm_start=zoo_dir)
    rec = train_teacher(SPEC, SYNTH, cfg, str(tmp_path / "warm"))
    assert starts == [6 * CFG.batch_size]  # after the 6 steps of 8 faces the packaged teacher trained on
    assert rec["steps"] == 3 and rec["steps_total"] == 9 and rec["warm_start"]["steps_total"] == 6
    assert rec["train_seconds_total"] > record["train_seconds_total"]
    before = load_zoo_teacher(out)
    after = load_zoo_teacher(str(tmp_path / "warm"))
    images, _ = synth.render_faces(SYNTH, np.arange(4), stream="test")
    moved = np.abs(after.embed(images) - before.embed(images)).mean() / np.abs(before.embed(images)).mean()
    assert 0 < moved < 1.0  # trained further from the packaged weights, not replaced by a fresh network
    with pytest.raises(ValueError, match="give one of the two"):
        dataclasses.replace(CFG, pretrained=zoo_dir, warm_start=zoo_dir)


def test_warm_start_onto_a_new_age_head_keeps_the_trained_network(tmp_path):
    """A regression age teacher warm-started as a dldl one: the spec check lets the head differ, the network's
    layers start from the packaged weights, the new head is named in the record, and its metrics read the bins."""
    import dataclasses
    reg = TeacherSpec("ag", "resnet", "age_gender", (4, 8), 1, 8, input_size=32)
    out = str(tmp_path / "reg")
    train_teacher(reg, SYNTH, CFG, out)
    zoo_dir = str(tmp_path / "zoo")
    teacher_train.package_pretrained({"ag": out}, zoo_dir, SYNTH, note="test")
    dldl = dataclasses.replace(reg, age_head="dldl")
    with pytest.raises(ValueError, match=r"differs in age_head: 'regression' vs 'dldl'"):
        train_teacher(dldl, SYNTH, dataclasses.replace(CFG, pretrained=zoo_dir), str(tmp_path / "as_is"))
    cfg = dataclasses.replace(CFG, steps=2, checkpoint_every=2, warm_start=zoo_dir)
    rec = train_teacher(dldl, SYNTH, cfg, str(tmp_path / "warm"))
    assert rec["warm_start"]["head_changed"] == {"age_head": ["regression", "dldl"]}
    assert rec["warm_start"]["new_layers"] == ["age"] and rec["steps_total"] == 8
    assert 0 <= rec["metrics"]["age_mae_years"] < 100
    model = keras.models.load_model(os.path.join(str(tmp_path / "warm"), "model.keras"), compile=False)
    assert model.get_layer("age").output.shape[-1] == 101


def test_the_shipped_zoo_is_the_demo_presets_teachers_and_intact(tmp_path):
    """face_transfer/assets/zoo (`make zoo`) holds every teacher of the demo preset, as that preset specifies
    it, with the recorded checksums: a preset change that forgets to rebuild the zoo fails here."""
    from face_transfer.configs import preset_config
    cfg = preset_config("demo")
    assert cfg.teacher_train.pretrained == "package"
    for spec in cfg.teachers:
        rec = teacher_train.install_pretrained(spec, "package", str(tmp_path / spec.name))
        assert rec["steps"] == cfg.teacher_train.steps and rec["name"] == spec.name
        assert os.path.exists(tmp_path / spec.name / "model.keras")
