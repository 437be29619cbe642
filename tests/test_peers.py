"""Writes into shared directories: unique temp names, first-writer-wins claims, peers that fail or die are
noticed at once, and processes that claim and fill one shard directory together (face_transfer.core.fileio,
face_transfer.core.peers, benchmarks.stress_claim)."""
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from face_transfer.core import fileio, peers
from face_transfer.data.pipelines import claim_shard_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_temp_names_are_unique_per_writer_and_keep_the_suffix(tmp_path):
    p = str(tmp_path / "x.npz")
    names = {fileio.temp_name(p, ".npz") for _ in range(200)}
    assert len(names) == 200
    assert all(n.endswith(".npz") and ".tmp-" in n and str(os.getpid()) in n for n in names)


def test_atomic_output_leaves_nothing_when_the_writer_fails(tmp_path):
    p = tmp_path / "out.json"
    fileio.write_json(str(p), {"a": 1})
    with pytest.raises(RuntimeError):
        with fileio.atomic_output(str(p)) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("killed")
    assert json.load(open(p)) == {"a": 1}
    assert os.listdir(tmp_path) == ["out.json"]


def test_claim_json_first_writer_wins_and_loser_gets_the_winners_content(tmp_path):
    p = str(tmp_path / "d" / "spec.json")
    assert fileio.claim_json(p, {"n": 1}) is None
    assert fileio.claim_json(p, {"n": 2}) == {"n": 1}
    assert json.load(open(p)) == {"n": 1}
    assert sorted(os.listdir(tmp_path / "d")) == ["spec.json"]


def test_many_threads_claim_one_file_exactly_one_wins(tmp_path):
    p = str(tmp_path / "spec.json")
    out, start = [], threading.Barrier(16)

    def claim(i):
        start.wait()
        out.append(fileio.claim_json(p, {"spec": "same"}))
    threads = [threading.Thread(target=claim, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out.count(None) == 1 and all(o == {"spec": "same"} for o in out if o is not None)
    assert os.listdir(tmp_path) == ["spec.json"]


def test_a_differing_spec_names_both_and_an_unused_claim_is_replaced(tmp_path):
    d = str(tmp_path / "shards")
    os.makedirs(d)
    claim_shard_dir(d, {"teachers": ["nan_teacher"], "n": 8})
    # nothing was written under that claim (say its teacher gave NaN): a fixed run takes the directory over
    claim_shard_dir(d, {"teachers": ["fixed_teacher"], "n": 8})
    assert json.load(open(os.path.join(d, "spec.json")))["teachers"] == ["fixed_teacher"]
    open(os.path.join(d, "shard-00000.npz"), "wb").close()
    with pytest.raises(ValueError, match=r"fixed_teacher.*expected.*other_teacher"):
        claim_shard_dir(d, {"teachers": ["other_teacher"], "n": 8})


def test_cache_after_a_nan_teacher_error_builds_with_the_fixed_teacher(tmp_path):
    from face_transfer.teachers.adapters import callable_teacher
    from face_transfer.teachers.cache import build_embedding_cache, load_embedding_cache
    from face_transfer.teachers.config import InputSpec

    def images(idx):
        return (np.asarray(idx)[:, None, None, None] * np.ones((1, 8, 8, 3)) % 256).astype(np.uint8)
    out = str(tmp_path / "cache")
    bad = callable_teacher(lambda x: np.full((len(x), 2), np.nan, np.float32), 2, "t", InputSpec(size=8))
    for name in ("t", "t_fixed"):  # the same teacher fixed, or the fix under a new name
        shutil.rmtree(out, ignore_errors=True)
        with pytest.raises(FloatingPointError, match="'t'"):
            build_embedding_cache([bad], images, 8, out, shard_size=4, progress=False)
        assert sorted(os.listdir(out)) == ["spec.json"]
        fixed = callable_teacher(lambda x: x.mean(axis=(1, 2))[:, :2], 2, name, InputSpec(size=8))
        man = build_embedding_cache([fixed], images, 8, out, shard_size=4, progress=False)
        assert man["teachers"] == [name] and man["shards"] == 2
        index, embs = load_embedding_cache(out)
        assert index.tolist() == list(range(8)) and np.all(np.isfinite(embs[name]))


def test_a_failed_peer_is_reported_in_seconds_naming_worker_and_file(tmp_path):
    """Worker 0's teacher fails: worker 1, waiting for the manifest, stops at once (not at its timeout)."""
    from face_transfer.teachers.adapters import callable_teacher
    from face_transfer.teachers.cache import build_embedding_cache
    from face_transfer.teachers.config import InputSpec

    def images(idx):
        return (np.asarray(idx)[:, None, None, None] * np.ones((1, 8, 8, 3)) % 256).astype(np.uint8)

    def broken(x):
        raise RuntimeError("teacher file is corrupt")
    good = callable_teacher(lambda x: x.mean(axis=(1, 2)), 3, "t", InputSpec(size=8))
    bad = callable_teacher(broken, 3, "t", InputSpec(size=8))
    out = str(tmp_path / "cache")
    errors = {}

    def work(k, teacher):
        try:
            build_embedding_cache([teacher], images, 16, out, shard_size=4, progress=False, worker=(k, 2),
                                  wait_timeout_s=600, poll_s=0.05)
        except Exception as e:  # noqa: BLE001
            errors[k] = e
    t0 = time.time()
    threads = [threading.Thread(target=work, args=(1, good)), threading.Thread(target=work, args=(0, bad))]
    threads[0].start()
    while not os.path.exists(peers.record_path(out, 1)):  # both workers of this attempt are up
        time.sleep(0.01)
    threads[1].start()
    for t in threads:
        t.join(timeout=60)
    assert time.time() - t0 < 30
    assert isinstance(errors[0], RuntimeError)
    assert isinstance(errors[1], peers.PeerFailedError)
    msg = str(errors[1])
    assert "worker 0" in msg and "teacher file is corrupt" in msg and os.path.join(out, ".workers") in msg


def test_a_peer_whose_process_is_gone_is_reported(tmp_path):
    d = str(tmp_path)
    fileio.write_json(peers.record_path(d, 0), {"worker": 0, "pid": os.getpid(), "state": "running",
                                                "time": time.time() - 1})  # this worker started first
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    t0 = time.time()
    fileio.write_json(peers.record_path(d, 1), {"worker": 1, "host": __import__("socket").gethostname(),
                                                "pid": dead.pid, "state": "running", "time": time.time()})
    with pytest.raises(peers.PeerFailedError, match=rf"worker 1 \(pid {dead.pid}.*exited without finishing"):
        peers.wait_for(lambda: None, d, (0, 2), "its shards", timeout_s=30, poll_s=0.05)
    assert time.time() - t0 < 10
    # a live peer is waited for, up to the timeout
    fileio.write_json(peers.record_path(d, 1), {"worker": 1, "host": __import__("socket").gethostname(),
                                                "pid": os.getpid(), "state": "running", "time": time.time()})
    with pytest.raises(TimeoutError, match="worker 0 of 2: its shards did not appear within 0 s"):
        peers.wait_for(lambda: None, d, (0, 2), "its shards", timeout_s=0.2, poll_s=0.05)


def test_a_record_older_than_the_wait_counts_only_after_the_grace(tmp_path):
    """A failure marker of an earlier attempt: the restarted peer has `stale_grace_s` to replace it."""
    d = str(tmp_path)
    fileio.write_json(peers.record_path(d, 1), {"worker": 1, "host": "h", "pid": 1, "state": "failed",
                                                "time": time.time() - 3600, "error": "old"})
    peers.check_peers(d, (0, 2), "x", since=time.time(), stale_grace_s=60)  # within the grace: ignored
    with pytest.raises(peers.PeerFailedError, match="worker 1.*failed: old"):
        peers.check_peers(d, (0, 2), "x", since=time.time() - 120, stale_grace_s=60)


def test_no_fixed_temporary_names_outside_fileio():
    """Every write into a shared directory goes through fileio's unique temp names (issue 21)."""
    pattern = re.compile(r"""\.tmp(["'{]|\.\w+["'])""")
    allowed = re.compile(r"""["']\.tmp["']\s+(not\s+)?in\b|_SKIP_SUFFIXES""")
    hits = []
    for top in ("face_transfer", "trainers", "export", "benchmarks"):
        for d, _, names in os.walk(os.path.join(ROOT, top)):
            for n in names:
                if not n.endswith(".py") or n == "fileio.py":
                    continue
                path = os.path.join(d, n)
                for i, line in enumerate(open(path), 1):
                    if pattern.search(line) and not allowed.search(line):
                        hits.append(f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()}")
    assert not hits, "fixed temporary names:\n" + "\n".join(hits)


def test_processes_claim_and_fill_one_directory_short():
    from benchmarks.stress_claim import run_stress
    out = run_stress(processes=4, repetitions=3, seed=1)
    assert out["failures"] == 0, out["errors"]
    assert out["runs"] == 3


@pytest.mark.slow
def test_processes_claim_and_fill_one_directory_50_times():
    from benchmarks.stress_claim import run_stress
    out = run_stress(processes=4, repetitions=50, seed=2)
    assert out["failures"] == 0, out["errors"]
