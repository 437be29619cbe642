"""A run directory, its configuration (its paths: `run.paths`, core.runpaths) and the one completeness protocol.
A stage is complete when its record `metrics/stages/<stage>.json` exists and every output it lists is on disk.
"""
from __future__ import annotations

import os
import shutil
import sys
import time

from face_transfer.configs import ExperimentConfig, same_experiment
from face_transfer.core.errors import CorruptArtifactError
from face_transfer.core.fileio import dict_differences, read_json, write_json, write_text
from face_transfer.core.runpaths import RunPaths


class RunConfigError(ValueError):
    """The run directory holds a run with another configuration."""


class RunLockedError(RuntimeError):
    """Another live invocation holds the run directory."""


class RunLock:
    """An exclusive `fcntl.flock` on <run_dir>/.lock for a whole invocation, holding its PID, host and start.

    The kernel drops the lock when its holder dies, so a lock file that still names a process but is not
    locked was left by a run that crashed or was killed: it is taken over, with a notice.
    """

    def __init__(self, run_dir: str):
        self.run_dir, self.path, self.fd = run_dir, RunPaths(run_dir).lock, None

    def __enter__(self):
        import fcntl
        import json
        import socket
        os.makedirs(self.run_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunLockedError(f"run_dir {self.run_dir} is in use by PID {holder.get('pid', '?')} on "
                                 f"{holder.get('host', '?')} since {holder.get('since', '?')}; wait for it to "
                                 "finish or use another --run_dir") from None
        stale = _holder(fd)
        if stale.get("pid"):
            from face_transfer.integrity import notice
            notice(f"taking over the lock of {self.run_dir} left by PID {stale['pid']} on {stale.get('host', '?')} "
                   f"(since {stale.get('since', '?')}), which is no longer running")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc):
        import fcntl
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # released cleanly: nothing stale left behind
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        return False


def _holder(fd) -> dict:
    import json
    try:
        text = os.pread(fd, 4096, 0).decode()
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}


def header(title: str):
    print(f"\n=== {title} " + "=" * max(3, 70 - len(title)), file=sys.stderr, flush=True)


def summary(line: str):
    print(f"  -> {line}", file=sys.stderr, flush=True)


class Run:
    """A run directory, its config and its paths (`paths`: every file a stage reads or writes)."""

    def __init__(self, run_dir: str, cfg: ExperimentConfig):
        # absolute: stage records store paths relative to it, and a relative --run_dir (make demo's runs/demo)
        # would otherwise be recorded twice over (runs/demo/runs/demo/...) and never verify on resume
        self.dir, self.cfg = os.path.abspath(run_dir), cfg
        self.paths = RunPaths(self.dir)
        self._cache: dict = {}  # things loaded once per process (teachers, image source, eval data)

    def p(self, rel: str) -> str:
        """A path a stage record holds (relative to the run directory), made absolute."""
        return os.path.join(self.dir, rel)

    @classmethod
    def open(cls, run_dir: str, cfg: ExperimentConfig, overwrite: bool = False, flags_text: str = ""):
        """Create or resume a run. A run dir made with a different config is never silently reused."""
        import json
        paths = RunPaths(run_dir)
        path = paths.config_json
        if os.path.exists(path):
            from face_transfer.configs import ConfigError
            try:
                have = ExperimentConfig.from_file(path)
            except ConfigError as e:  # the run's own record of its configuration is damaged
                raise CorruptArtifactError(f"{e}; this run directory's configuration is damaged: restore "
                                           f"{path} (a copy of the flags is in flags.txt) or use another --run_dir") from None
            have_dict = read_json(path)
            if not same_experiment(have, cfg) and not overwrite:
                want_dict = json.loads(cfg.to_json())
                diff = [k for k, _, _ in dict_differences({**want_dict, **have_dict}, {**have_dict, **want_dict})]
                teacher_diff = _teacher_file_changes(have, cfg)
                raise RunConfigError(
                    f"{run_dir} holds a run with a different configuration ({path}; differs in "
                    f"{', '.join(diff[:8]) or '?'}{' ...' if len(diff) > 8 else ''})"
                    + (f". {teacher_diff}" if teacher_diff else "")
                    + "; pass --overwrite to replace it, or use another --run_dir")
            if overwrite:
                for entry in os.listdir(run_dir):  # everything but the lock this invocation holds
                    if os.path.join(run_dir, entry) != paths.lock:
                        _remove(os.path.join(run_dir, entry))
        os.makedirs(run_dir, exist_ok=True)
        if not os.access(run_dir, os.W_OK):
            raise PermissionError(f"--run_dir={run_dir} is not writable")
        for path, text in ((paths.config_json, cfg.to_json()), (paths.flags_txt, flags_text)):
            if text:
                write_text(path, text)  # workers of one run open it together
        return cls(run_dir, cfg)

    # ---- the completeness protocol -----------------------------------------------------------------

    def stage_done(self, name: str) -> dict | None:
        """The stage's record if it finished and every artifact it recorded is intact, else None.

        A damaged or missing artifact is named in a one-line notice, deleted together with the stage's
        completion markers (its `outputs`), and the stage runs again: it rebuilds what is gone.
        """
        from face_transfer.integrity import notice, verify_artifacts
        path = self.paths.stage_record(name)
        if not os.path.exists(path):
            return None
        try:
            rec = read_json(path)
        except ValueError as e:
            notice(f"{e}; running stage {name} again")
            os.remove(path)
            return None
        bad = verify_artifacts(self.dir, rec.get("artifacts", {}))
        missing = [o for o in rec.get("outputs", []) if not os.path.exists(self.p(o))]
        if not bad and not missing:
            return rec
        for rel, why in bad:
            notice(f"{self.p(rel)}: {why}; recomputing stage {name} and what depends on it")
        for rel in missing:
            notice(f"{self.p(rel)}: missing; recomputing stage {name} and what depends on it")
        self.reset_stage(name, [rel for rel, _ in bad] + missing, rec)
        return None

    def reset_stage(self, name: str, bad=(), rec: dict | None = None, cascade: bool = False):
        """Delete a stage's record, its completion markers and the given damaged files, so it runs again.

        `cascade`: an upstream stage was rebuilt, so the stage's derived state (its `reset` list: checkpoints,
        caches) is stale too and goes; after its own damage the stage keeps it and resumes from it."""
        if rec is None:
            path = self.paths.stage_record(name)
            try:
                rec = read_json(path) if os.path.exists(path) else {}
            except ValueError:
                rec = {}
        for rel in list(bad) + rec.get("outputs", []) + (rec.get("reset", []) if cascade else []):
            _remove(self.p(rel))
            stem, ext = os.path.splitext(self.p(rel))
            if ext in (".tfrecord", ".npz"):  # a shard's own sidecar record says it is done: it goes too
                _remove(stem + ".json")
        _remove(self.paths.stage_record(name))

    def mark_done(self, name: str, record: dict, outputs=(), artifacts=(), reset=()):
        """Write the stage's record last. `outputs`: completion markers (files whose presence makes the stage's
        own code skip work); `artifacts`: files or directories whose every file is recorded with its size and
        SHA-256 and verified on resume; `reset`: derived caches to delete when the stage must run again."""
        from face_transfer.integrity import digest_artifacts
        rel = lambda paths: [os.path.relpath(o, self.dir) if os.path.isabs(o) else o for o in paths]  # noqa: E731
        write_json(self.paths.stage_record(name), {
            "stage": name, "record": record, "outputs": rel(outputs), "reset": rel(reset),
            "artifacts": digest_artifacts(self.dir, list(outputs) + list(artifacts)), "finished": time.time()})


def _remove(path: str):
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _teacher_file_changes(have: ExperimentConfig, want: ExperimentConfig) -> str:
    """A sentence naming teacher files whose content changed between the two configs."""
    old = {r.name: r for r in getattr(have, "teacher_files", ())}
    out = []
    for r in getattr(want, "teacher_files", ()):
        o = old.get(r.name)
        if o is not None and o.sha256 and r.sha256 and o.sha256 != r.sha256:
            out.append(f"teacher {r.name!r} file {r.path} changed (sha256 {o.sha256[:12]}.. -> {r.sha256[:12]}.., "
                       f"{o.bytes:,} -> {r.bytes:,} bytes)")
    return "; ".join(out)
