"""Concurrency stress: W processes claim and fill one shard directory together, R times, with random start delays.

  python -m benchmarks.stress_claim                    # 4 processes x 50 repetitions; writes results.json
  python -m benchmarks.stress_claim --repetitions=5    # the default suite's short version (tests/test_peers.py)

Each repetition is a fresh directory that every process fills with `build_embedding_cache(worker=(k, W))`, the
multi-worker teacher pass: all claim it (spec.json, first writer wins), each writes its shards, worker 0 waits for
the others' and writes the manifest, the others wait for it. A repetition passes when every process returns
without an exception, all returned manifests are identical to the file, and the cache holds every image once.
Figures: `concurrency.claim_stress.runs` and `concurrency.claim_stress.failures`.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import sys
import tempfile
import time
import traceback

import numpy as np

N_IMAGES, SHARD_SIZE, DIMS = 24, 4, {"a": 3, "b": 5}


def _images(idx: np.ndarray) -> np.ndarray:
    """Tiny deterministic 'images': the embedding is a fixed function of the index."""
    return np.asarray(idx, np.float32)[:, None]


class _Teacher:
    """Duck-typed teacher (name + embed): the cache needs nothing else, and the workers need no model."""

    def __init__(self, name: str, dim: int, rng: np.random.Generator):
        self.name, self.dim, self.rng = name, dim, rng

    def embed(self, images, batch_size=256):
        time.sleep(float(self.rng.uniform(0, 0.003)))  # shuffles the interleaving of the workers' writes
        x = np.asarray(images, np.float32)
        return np.sin(x * (1.0 + np.arange(self.dim, dtype=np.float32)) + len(self.name))


def expected_embeddings() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = _images(np.arange(N_IMAGES))
    return {n: _Teacher(n, d, rng).embed(x) for n, d in DIMS.items()}


def _worker(k: int, n_workers: int, repetitions: int, root: str, barrier, queue, seed: int, max_delay_s: float):
    try:
        from face_transfer.teachers.cache import build_embedding_cache
    except Exception:  # noqa: BLE001 - reported to the parent, which counts it
        queue.put((-1, k, "error", traceback.format_exc()))
        return
    rng = np.random.default_rng(seed * 1000 + k)
    teachers = [_Teacher(n, d, rng) for n, d in DIMS.items()]
    for r in range(repetitions):
        try:
            barrier.wait(timeout=120)
        except Exception:  # noqa: BLE001 - a peer died or hung: stop, the parent counts the missing results
            queue.put((r, k, "error", "barrier broken (a peer process stopped)"))
            return
        time.sleep(float(rng.uniform(0, max_delay_s)))
        try:
            man = build_embedding_cache(teachers, _images, N_IMAGES, os.path.join(root, f"rep-{r:03d}"),
                                        shard_size=SHARD_SIZE, progress=False, worker=(k, n_workers),
                                        wait_timeout_s=60, poll_s=0.01)
            queue.put((r, k, "ok", json.dumps(man, sort_keys=True)))
        except Exception as e:  # noqa: BLE001
            queue.put((r, k, "error", f"{type(e).__name__}: {e}"))


def _check_repetition(out_dir: str, returned: dict[int, str], n_workers: int) -> str | None:
    """None if the repetition is right, else what is wrong."""
    from face_transfer.teachers.cache import load_embedding_cache
    if len(returned) != n_workers:
        return f"{n_workers - len(returned)} process(es) returned nothing"
    with open(os.path.join(out_dir, "manifest.json")) as f:
        on_disk = json.dumps(json.load(f), sort_keys=True)
    if any(m != on_disk for m in returned.values()):
        return "the returned manifests differ from manifest.json"
    index, embs = load_embedding_cache(out_dir)
    if not np.array_equal(index, np.arange(N_IMAGES)):
        return f"the cache's index is {index.tolist()}"
    for name, want in expected_embeddings().items():
        if not np.allclose(embs[name], want, atol=1e-6):
            return f"teacher {name}'s embeddings differ from a direct computation"
    return None


def run_stress(processes: int = 4, repetitions: int = 50, seed: int = 0, max_delay_s: float = 0.05,
               root: str | None = None) -> dict:
    """{"runs", "failures", "errors": [first messages], "seconds"}: `processes` spawned processes run
    `repetitions` rounds together."""
    root = root or tempfile.mkdtemp(prefix="claim_stress_")
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no state shared through fork
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    t0 = time.time()
    procs = [ctx.Process(target=_worker, args=(k, processes, repetitions, root, barrier, queue, seed, max_delay_s))
             for k in range(processes)]
    for p in procs:
        p.start()
    results: dict[int, dict[int, str]] = {r: {} for r in range(repetitions)}
    errors: dict[int, list[str]] = {}
    expected = processes * repetitions
    got = 0
    deadline = time.time() + 120 + 60 * repetitions
    while got < expected and time.time() < deadline:
        try:
            r, k, status, payload = queue.get(timeout=5)
        except Exception:  # noqa: BLE001 - queue.Empty: check that someone is still alive
            if not any(p.is_alive() for p in procs):
                break
            continue
        got += 1
        if status == "ok":
            results[r][k] = payload
        else:
            errors.setdefault(r, []).append(f"process {k}: {payload}")
            if r < 0:
                got += repetitions - 1  # that process ran nothing
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    failures = 0
    for r in range(repetitions):
        problem = "; ".join(errors.get(r, [])) or _check_repetition(
            os.path.join(root, f"rep-{r:03d}"), results[r], processes)
        if problem:
            failures += 1
            errors.setdefault(r, [problem] if problem not in errors.get(r, []) else [])
    return {"runs": repetitions, "processes": processes, "failures": failures,
            "errors": [f"repetition {r}: {'; '.join(v)}"[:500] for r, v in sorted(errors.items()) if v][:10],
            "seconds": round(time.time() - t0, 1), "root": root}


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--repetitions", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nosave", action="store_true", help="do not write benchmarks/results.json")
    args = parser.parse_args(argv)
    out = run_stress(args.processes, args.repetitions, args.seed)
    print(json.dumps({k: v for k, v in out.items() if k != "root"}, indent=1))
    if not args.nosave:
        from benchmarks.run import load_results, machine, save_results
        res = load_results()
        res.update({"concurrency.claim_stress.runs": out["runs"], "concurrency.claim_stress.failures": out["failures"],
                    "concurrency.claim_stress.processes": out["processes"],
                    "concurrency.claim_stress.seconds": out["seconds"], "concurrency.machine": machine()})
        save_results(res)
    return 1 if out["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
