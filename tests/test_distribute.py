"""Tests for face_transfer.distribute: replica parity, a two-process multi-worker run, SIGKILL resume, errors."""
import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from face_transfer import distribute

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "mw_worker.py")
TIMEOUT = 120


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1", PYTHONPATH=ROOT)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _start(out, *args, env=None):
    cmd = [sys.executable, WORKER, "--out", str(out), *map(str, args)]
    return subprocess.Popen(cmd, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait(procs, expect_rc=0):
    """Wait for every process within TIMEOUT overall; kill all of them on timeout."""
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=TIMEOUT)
            outputs.append(out)
    except subprocess.TimeoutExpired:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        pytest.fail(f"worker processes did not finish within {TIMEOUT}s")
    for proc, out in zip(procs, outputs):
        assert proc.returncode == expect_rc, out[-4000:]
    return outputs


def _load(out):
    with np.load(str(out) + ".npz") as data:
        weights = [data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))]
    with open(str(out) + ".json") as f:
        return weights, json.load(f)


def test_two_cpu_replicas_match_one(tmp_path):
    # Same global batch of 8, 6 SGD steps: the only difference is where the float sums happen (and the two
    # replicas run 4 steps per graph call, then 2).
    one = _start(tmp_path / "one", "--strategy", "mirrored", "--num_cpu_replicas", 1)
    two = _start(tmp_path / "two", "--strategy", "mirrored", "--num_cpu_replicas", 2, "--steps_per_execution", 4)
    _wait([one, two])
    w1, s1 = _load(tmp_path / "one")
    w2, s2 = _load(tmp_path / "two")
    assert (s1["replicas"], s2["replicas"]) == (1, 2)
    np.testing.assert_allclose(s1["loss"], s2["loss"], rtol=1e-5, atol=1e-6)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert s1["loss"][-1] < s1["loss"][0]  # it trained


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_multi_worker_two_processes(tmp_path):
    ckpt = tmp_path / "ckpt"
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(_start(tmp_path / f"w{index}", "--strategy", "multi_worker", "--steps", 4, "--ckpt_dir", ckpt,
                            "--checkpoint_every", 2, "--steps_per_execution", 3, env=_env(TF_CONFIG=tf_config)))
    _wait(procs)
    (w0, s0), (w1, s1) = _load(tmp_path / "w0"), _load(tmp_path / "w1")
    assert s0["replicas"] == s1["replicas"] == 2
    assert s0["is_chief"] and not s1["is_chief"]
    for a, b in zip(w0, w1):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(s0["loss"], s1["loss"], rtol=1e-6)
    # Only the chief wrote into the checkpoint dir; worker 1 wrote to its own temp dir and removed it.
    assert s0["worker_dir"] == str(ckpt)
    assert not s1["worker_dir"].startswith(str(ckpt)) and not os.path.exists(s1["worker_dir"])
    assert tf.train.latest_checkpoint(str(ckpt)).endswith("ckpt-4")
    assert sorted(f for f in os.listdir(ckpt) if f.endswith(".index")) == ["ckpt-2.index", "ckpt-4.index"]


def test_sigkill_resume_matches_uninterrupted_run(tmp_path):
    # Adam (so the optimizer slots must be restored too), 12 steps, checkpoints every 5.
    common = ["--steps", 12, "--optimizer", "adam", "--checkpoint_every", 5]
    full = _start(tmp_path / "full", *common, "--ckpt_dir", tmp_path / "full_ckpt")
    command = [*common, "--ckpt_dir", tmp_path / "ckpt", "--kill_at_step", 7]
    killed = _start(tmp_path / "resumed", *command)
    _wait([full])
    _wait([killed], expect_rc=-signal.SIGKILL)
    assert not os.path.exists(str(tmp_path / "resumed") + ".npz")
    assert tf.train.latest_checkpoint(str(tmp_path / "ckpt")).endswith("ckpt-5")
    _wait([_start(tmp_path / "resumed", *command)])  # the same command again
    wf, sf = _load(tmp_path / "full")
    wr, sr = _load(tmp_path / "resumed")
    assert sf["start_step"] == 0 and sr["start_step"] == 5 and sr["steps"] == list(range(6, 13))
    # Same ops on the same data in the same order with op determinism: bit-identical is expected;
    # the tolerance only absorbs a possible last-ulp difference.
    np.testing.assert_allclose(sr["loss"], sf["loss"][5:], rtol=1e-6)
    for a, b in zip(wf, wr):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_step_index_dataset_is_a_function_of_the_step():
    class Ctx:
        num_replicas_in_sync, num_input_pipelines, input_pipeline_id = 2, 1, 0

        def get_per_replica_batch_size(self, global_batch):
            return global_batch // 2

    first = [b.numpy() for b in distribute.make_step_index_dataset(Ctx(), 4, 0, num_examples=10, seed=3).take(10)]
    later = [b.numpy() for b in distribute.make_step_index_dataset(Ctx(), 4, 3, num_examples=10, seed=3).take(4)]
    for a, b in zip(first[6:], later):
        np.testing.assert_array_equal(a, b)
    # Each epoch (10 examples) is a permutation, and epochs differ.
    flat = np.concatenate(first)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert not np.array_equal(flat[:10], flat[10:20])
    plain = [b.numpy() for b in distribute.make_step_index_dataset(Ctx(), 4, 1).take(2)]
    np.testing.assert_array_equal(plain, [[4, 5], [6, 7]])


def test_make_strategy_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown strategy 'horovod'.*'default', 'mirrored'"):
        distribute.make_strategy("horovod")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG environment variable is not set"):
        distribute.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        distribute.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1"]}, "task": {"type": "ps"}}))
    with pytest.raises(ValueError, match="'task' with a 'type'"):
        distribute.make_strategy("multi_worker")
    with pytest.raises(ValueError, match="num_cpu_replicas"):
        distribute.make_strategy("mirrored", num_cpu_replicas=0)


def test_default_strategy_is_chief_and_writes_base_dir(tmp_path):
    strategy = distribute.make_strategy("default")
    assert distribute.is_chief(strategy)
    assert distribute.worker_dir(str(tmp_path), strategy) == str(tmp_path)


def test_cpu_split_after_initialisation_is_a_clear_error():
    tf.constant(1.0)  # devices are initialised now in this process
    if len(tf.config.list_logical_devices("CPU")) == 3:
        pytest.skip("this process already has 3 logical CPUs")
    with pytest.raises(RuntimeError, match="already initialised its devices"):
        distribute.make_strategy("mirrored", num_cpu_replicas=3)


def test_train_loop_in_process_and_argument_errors(tmp_path):
    import keras

    strategy = distribute.make_strategy("default")

    def build():
        return (keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]),
                keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, trainable=False)]))

    def dataset_fn(ctx, start):
        idx = distribute.make_step_index_dataset(ctx, 4, start)
        return idx.map(lambda i: tf.cast(tf.stack([i, i * 2, i * 3], 1), tf.float32) / 100.0)

    def loss_fn(models, x):
        student, frozen = models
        return tf.reduce_mean(tf.square(student(x) - frozen(x)), axis=1)

    logged = []
    history = distribute.train_loop(strategy, build, loss_fn, dataset_fn, lambda: keras.optimizers.SGD(0.5), steps=3,
                                    global_batch_size=4, checkpoint_dir=str(tmp_path), checkpoint_every=2,
                                    on_step=lambda s, logs: logged.append(s))
    assert logged == history["step"] == [1, 2, 3] and len(history["loss"]) == 3
    assert history["checkpoint"].endswith("ckpt-3")
    frozen = history["models"][1]
    assert len(frozen.trainable_variables) == 0
    # A finished run resumes into nothing.
    again = distribute.train_loop(strategy, build, loss_fn, dataset_fn, lambda: keras.optimizers.SGD(0.5), steps=3,
                                  global_batch_size=4, checkpoint_dir=str(tmp_path))
    assert again["start_step"] == 3 and again["step"] == []
    with pytest.raises(ValueError, match="no trainable variables"):
        distribute.train_loop(strategy, lambda: build()[1], loss_fn, dataset_fn, lambda: keras.optimizers.SGD(0.5),
                              steps=1, global_batch_size=4)
    with pytest.raises(ValueError, match="build_model_fn returned no model"):
        distribute.train_loop(strategy, lambda: 3, loss_fn, dataset_fn, lambda: keras.optimizers.SGD(0.5),
                              steps=1, global_batch_size=4)


def _seeded_dense(seed: int, units: int):
    tf.keras.utils.set_random_seed(seed)
    return tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(units)])


def _index_batches(ctx, start):
    """Batches of 4 whose content is a function of the global step (exact resumes)."""
    idx = distribute.make_step_index_dataset(ctx, 4, start)
    return idx.map(lambda i: tf.cast(tf.stack([i % 7, i * 2 % 5, i * 3 % 11], 1), tf.float32) / 10.0)


def test_steps_per_execution_matches_one_step_per_call_and_keeps_checkpoints(tmp_path):
    """Several steps per tf.function call: the same weights and per-step losses as one step per call, a checkpoint
    at every checkpoint_every boundary (a call never crosses one), and an exact resume from the middle."""
    keras = tf.keras
    build, dataset_fn = (lambda: _seeded_dense(3, 2)), _index_batches

    def loss_fn(model, x):
        return tf.reduce_sum(tf.square(model(x) - tf.reduce_sum(x, 1, keepdims=True)), axis=1)

    def run(d, steps, k):
        logged = []
        h = distribute.train_loop(tf.distribute.get_strategy(), build, loss_fn, dataset_fn,
                                  lambda: keras.optimizers.SGD(0.05), steps=steps, global_batch_size=4,
                                  checkpoint_dir=str(d), checkpoint_every=3, on_step=lambda s, logs: logged.append(s),
                                  steps_per_execution=k)
        return h, logged

    one, _ = run(tmp_path / "one", 8, 1)
    multi, logged = run(tmp_path / "multi", 8, 4)
    assert logged == multi["step"] == list(range(1, 9))
    np.testing.assert_allclose(multi["loss"], one["loss"], rtol=1e-5)
    for a, b in zip(multi["models"].get_weights(), one["models"].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert sorted(tf.train.get_checkpoint_state(str(tmp_path / "multi")).all_model_checkpoint_paths)[-1] \
        .endswith("ckpt-8")
    saved = {os.path.basename(p) for p in tf.train.get_checkpoint_state(str(tmp_path / "multi")).all_model_checkpoint_paths}
    assert saved == {"ckpt-3", "ckpt-6", "ckpt-8"}
    # stop at 5 (mid-chunk of a later run), then resume to 8 in chunks of 4: same end point
    run(tmp_path / "resumed", 5, 4)
    resumed, logged = run(tmp_path / "resumed", 8, 4)
    assert resumed["start_step"] == 5 and logged == [6, 7, 8]
    for a, b in zip(resumed["models"].get_weights(), one["models"].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="steps_per_execution"):
        distribute.train_loop(tf.distribute.get_strategy(), build, loss_fn, dataset_fn,
                              lambda: keras.optimizers.SGD(0.05), steps=1, global_batch_size=4, steps_per_execution=0)


def test_echo_trains_each_prepared_batch_several_times_and_prepares_it_once(tmp_path):
    """echo=k (data echoing): prepare_fn (the teachers' pass) runs once per batch, the optimizer makes k updates on
    what it returned, `steps` still counts batches (history, checkpoints), and the weights are those of k plain
    steps on the same batch repeated; the logged loss is the first update's, on the unseen batch."""
    keras = tf.keras
    build, dataset_fn = (lambda: _seeded_dense(5, 1)), _index_batches
    calls = tf.Variable(0, dtype=tf.int64, trainable=False)

    def prepare(model, x):
        calls.assign_add(1)
        return x, tf.reduce_sum(x, 1, keepdims=True)  # the "teacher's" target, computed once

    def loss_fn(model, prepared):
        x, y = prepared
        return tf.reduce_sum(tf.square(model(x) - y), axis=1)

    h = distribute.train_loop(tf.distribute.get_strategy(), build, loss_fn, dataset_fn,
                              lambda: keras.optimizers.SGD(0.05), steps=4, global_batch_size=4,
                              checkpoint_dir=str(tmp_path / "echo"), checkpoint_every=2, prepare_fn=prepare, echo=3)
    assert int(calls.numpy()) == 4 and h["step"] == [1, 2, 3, 4] and int(h["optimizer"].iterations.numpy()) == 12
    assert os.path.basename(h["checkpoint"]) == "ckpt-4"

    # the same as 12 plain steps on every batch repeated 3 times in a row
    def repeated(ctx, start):
        return dataset_fn(ctx, start).flat_map(lambda x: tf.data.Dataset.from_tensors(x).repeat(3))

    plain = distribute.train_loop(tf.distribute.get_strategy(), build,
                                  lambda m, x: loss_fn(m, (x, tf.reduce_sum(x, 1, keepdims=True))), repeated,
                                  lambda: keras.optimizers.SGD(0.05), steps=12, global_batch_size=4)
    for a, b in zip(h["models"].get_weights(), plain["models"].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(h["loss"], plain["loss"][::3], rtol=1e-5)
    with pytest.raises(ValueError, match="echo"):
        distribute.train_loop(tf.distribute.get_strategy(), build, loss_fn, dataset_fn,
                              lambda: keras.optimizers.SGD(0.05), steps=1, global_batch_size=4, echo=0)
