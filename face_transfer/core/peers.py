"""Work split across processes that share one directory (multi-worker runs): each worker records itself and,
when it fails, a failure marker, so that a peer waiting for its part learns at once instead of at a timeout.

Records live in `<dir>/.workers/worker-<k>.json` ({"worker", "host", "pid", "state", "time", "error"}); state is
"running", "done" or "failed". A waiter stops with PeerFailedError, naming the worker and the file, when a peer
has failed or when a running peer's process is gone on this host. A record older than the waiter's own (from
an earlier attempt, or a peer that failed before this worker started) counts only after `stale_grace_s`, the
time a restarted peer has to replace it.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Callable

from face_transfer.core.fileio import read_json, write_json

WORKERS_DIR = ".workers"


class PeerFailedError(RuntimeError):
    """A worker this one waits for failed or exited without finishing its part; the message names it."""


def record_path(shared_dir: str, k: int) -> str:
    return os.path.join(shared_dir, WORKERS_DIR, f"worker-{k}.json")


def _record(shared_dir: str, worker: tuple[int, int], state: str, error: str = "") -> None:
    write_json(record_path(shared_dir, worker[0]), {
        "worker": worker[0], "workers": worker[1], "host": socket.gethostname(), "pid": os.getpid(),
        "state": state, "time": time.time(), **({"error": error[-2000:]} if error else {})})


@contextlib.contextmanager
def worker_part(shared_dir: str, worker: tuple[int, int]):
    """Record this worker as running for the block, then done, or failed (with the error) if the block raises.
    A single worker (W = 1) records nothing."""
    if worker[1] <= 1:
        yield
        return
    _record(shared_dir, worker, "running")
    try:
        yield
    except BaseException as e:
        with contextlib.suppress(OSError):
            _record(shared_dir, worker, "failed", f"{type(e).__name__}: {e}")
        raise
    _record(shared_dir, worker, "done")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def check_peers(shared_dir: str, worker: tuple[int, int], waiting_for: str, since: float,
                stale_grace_s: float = 60.0) -> None:
    """Raise PeerFailedError if a peer of `worker` failed or died while this worker waits for `waiting_for`."""
    host, now = socket.gethostname(), time.time()
    for k in range(worker[1]):
        if k == worker[0]:
            continue
        path = record_path(shared_dir, k)
        try:
            rec = read_json(path)
        except (FileNotFoundError, ValueError):
            continue
        if rec.get("time", 0) < since and now - since < stale_grace_s:
            continue  # maybe a record of an earlier attempt, which the restarted peer has yet to replace
        where = f"worker {k} (pid {rec.get('pid')} on {rec.get('host')}; {path})"
        if rec.get("state") == "failed":
            raise PeerFailedError(f"{where} failed: {rec.get('error', '?')}; this worker ({worker[0]}) stops waiting "
                                  f"for {waiting_for}. Fix the cause and rerun the same command on every worker: "
                                  "it resumes")
        if rec.get("state") == "running" and rec.get("host") == host and not _pid_alive(int(rec.get("pid", -1))):
            raise PeerFailedError(f"{where} exited without finishing its part; this worker ({worker[0]}) stops "
                                  f"waiting for {waiting_for}. Rerun the same command on every worker: it resumes")


def wait_for(ready: Callable[[], object], shared_dir: str, worker: tuple[int, int], waiting_for: str,
             timeout_s: float, poll_s: float = 1.0, stale_grace_s: float = 60.0):
    """Poll `ready()` until it returns something other than None/False and return that; between polls, check
    the peers (PeerFailedError) and the timeout (TimeoutError naming `waiting_for`)."""
    t0 = time.time()
    try:  # this worker's own start (worker_part), else the wait's
        since = min(t0, float(read_json(record_path(shared_dir, worker[0]))["time"]))
    except (FileNotFoundError, ValueError, KeyError):
        since = t0
    while True:
        got = ready()
        if got is not None and got is not False:
            return got
        check_peers(shared_dir, worker, waiting_for, since, stale_grace_s)
        if time.time() - t0 > timeout_s:
            raise TimeoutError(f"worker {worker[0]} of {worker[1]}: {waiting_for} did not appear within "
                               f"{timeout_s:.0f} s (a worker stopped?); rerun the same command, it resumes")
        time.sleep(poll_s)
