"""Run-directory integrity: artifact digests, corrupt Keras files named as corrupt, checkpoint fallback, the run
lock and the completeness protocol's recompute-on-damage."""
import json
import os
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from face_transfer.integrity import (
    CorruptArtifactError,
    check_keras_file,
    digest_artifacts,
    load_keras_model,
    restore_newest_intact,
    verify_artifacts,
)


def _tiny_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    return keras.Model(inp, keras.layers.Dense(3)(inp))


def test_truncated_keras_file_is_reported_corrupt_not_missing(tmp_path):
    path = str(tmp_path / "m.keras")
    _tiny_model().save(path)
    load_keras_model(path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(CorruptArtifactError, match=r"m\.keras: corrupt Keras model file"):
        check_keras_file(path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        check_keras_file(str(tmp_path / "absent.keras"))


def test_digests_find_changed_truncated_and_missing_files(tmp_path):
    (tmp_path / "d").mkdir()
    for i in range(3):
        (tmp_path / "d" / f"f{i}.bin").write_bytes(os.urandom(1000))
    (tmp_path / "d" / "x.tmp123").write_bytes(b"temp")  # temp files are not artifacts
    art = digest_artifacts(str(tmp_path), ["d"])
    assert sorted(art) == ["d/f0.bin", "d/f1.bin", "d/f2.bin"]
    assert verify_artifacts(str(tmp_path), art) == []
    (tmp_path / "d" / "f0.bin").write_bytes(os.urandom(1000))
    (tmp_path / "d" / "f1.bin").write_bytes(b"short")
    os.remove(tmp_path / "d" / "f2.bin")
    bad = dict(verify_artifacts(str(tmp_path), art))
    assert "SHA-256 differs" in bad["d/f0.bin"] and "5 bytes, recorded 1,000" in bad["d/f1.bin"]
    assert bad["d/f2.bin"] == "missing"


def test_hashing_a_large_run_dir_takes_seconds_not_minutes(tmp_path):
    (tmp_path / "big").mkdir()
    for i in range(4):
        (tmp_path / "big" / f"shard-{i}.npz").write_bytes(os.urandom(16 * 2**20))
    t0 = time.perf_counter()
    art = digest_artifacts(str(tmp_path), ["big"])
    verify_artifacts(str(tmp_path), art)
    assert len(art) == 4 and time.perf_counter() - t0 < 30  # 128 MB hashed twice; a bound, not a benchmark


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    v = tf.Variable(0.0)
    ckpt = tf.train.Checkpoint(v=v)
    manager = tf.train.CheckpointManager(ckpt, str(tmp_path), max_to_keep=3)
    for value in (1.0, 2.0, 3.0):
        v.assign(value)
        manager.save()
    newest = manager.latest_checkpoint
    for f in os.listdir(tmp_path):
        if f.startswith(os.path.basename(newest)) and ".data" in f:
            data = open(tmp_path / f, "rb").read()
            open(tmp_path / f, "wb").write(data[:2])
    v.assign(0.0)
    got = restore_newest_intact(ckpt, str(tmp_path))
    assert got != newest and float(v.numpy()) == 2.0
    err = capsys.readouterr().err
    assert f"checkpoint {newest} is corrupt" in err and f"resumed from {got}" in err


def test_teacher_checkpoint_falls_back_to_prev_keras(tmp_path, capsys):
    from face_transfer.teachers.train import resume_from_checkpoint
    m = _tiny_model()
    m.compile(optimizer="adam", loss="mse")
    m.save(tmp_path / "prev.keras")
    json.dump({"epochs_done": 1}, open(tmp_path / "prev_state.json", "w"))
    m.save(tmp_path / "last.keras")
    json.dump({"epochs_done": 2}, open(tmp_path / "state.json", "w"))
    open(tmp_path / "last.keras", "wb").write(open(tmp_path / "last.keras", "rb").read()[:100])
    model, epochs = resume_from_checkpoint(str(tmp_path))
    assert model is not None and epochs == 1
    assert "last.keras is corrupt; resumed from" in capsys.readouterr().err


def test_run_lock_refuses_a_second_holder_and_takes_over_a_stale_one(tmp_path):
    from face_transfer.core.runpaths import RunPaths
    from face_transfer.stages.rundir import RunLock, RunLockedError
    run_dir = str(tmp_path / "run")
    with RunLock(run_dir):
        with pytest.raises(RunLockedError, match=rf"in use by PID {os.getpid()} on "):
            RunLock(run_dir).__enter__()
    assert open(RunPaths(run_dir).lock).read() == ""  # released cleanly
    # a lock file naming a process that is gone (the kernel released its flock)
    open(RunPaths(run_dir).lock, "w").write(json.dumps({"pid": 999999, "host": "h", "since": "t"}))
    with RunLock(run_dir):
        assert json.load(open(RunPaths(run_dir).lock))["pid"] == os.getpid()


def test_damaged_artifact_resets_its_stage(tmp_path, capsys):
    from face_transfer.configs import preset_config
    from face_transfer.stages.rundir import Run
    run = Run.open(str(tmp_path / "run"), preset_config("smoke"))
    os.makedirs(run.paths.cache_dir)
    for i in range(2):
        np.savez(os.path.join(run.paths.cache_dir, f"shard-{i:05d}.npz"), a=np.arange(10 + i))
    json.dump({"n": 2}, open(run.paths.cache_manifest, "w"))
    run.mark_done("cache", {"n": 2}, outputs=[run.paths.cache_manifest], artifacts=[run.paths.cache_dir])
    assert run.stage_done("cache")["record"] == {"n": 2}
    open(os.path.join(run.paths.cache_dir, "shard-00001.npz"), "wb").write(b"garbage")
    assert run.stage_done("cache") is None
    err = capsys.readouterr().err
    assert "shard-00001.npz: 7 bytes, recorded" in err and "recomputing stage cache" in err
    # the damaged shard and the stage's completion marker are gone, the intact shard stays for the rerun
    assert not os.path.exists(os.path.join(run.paths.cache_dir, "shard-00001.npz"))
    assert not os.path.exists(run.paths.cache_manifest)
    assert os.path.exists(os.path.join(run.paths.cache_dir, "shard-00000.npz"))
