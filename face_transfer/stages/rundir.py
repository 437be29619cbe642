"""A run directory and its configuration: every path the stages use, and the one completeness protocol.
A stage is complete when `metrics/stages/<stage>.json` exists and every output it lists is on disk.
"""
from __future__ import annotations

import os
import shutil
import sys
import time

from face_transfer.configs import ExperimentConfig
from face_transfer.fileio import read_json, write_json

CONFIG_JSON = "config.json"


def header(title: str):
    print(f"\n=== {title} " + "=" * max(3, 70 - len(title)), file=sys.stderr, flush=True)


def summary(line: str):
    print(f"  -> {line}", file=sys.stderr, flush=True)


def _differences(have: dict, want: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (what a refused resume names)."""
    out = []
    for k in sorted(set(have) | set(want)):
        a, b = have.get(k), want.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


class Run:
    """A run directory and its config; every path the stages use is named here."""

    def __init__(self, run_dir: str, cfg: ExperimentConfig):
        self.dir, self.cfg = run_dir, cfg
        self._cache: dict = {}  # things loaded once per process (teachers, image source, eval data)

    def p(self, *parts) -> str:
        return os.path.join(self.dir, *parts)

    @classmethod
    def open(cls, run_dir: str, cfg: ExperimentConfig, overwrite: bool = False, flags_text: str = ""):
        """Create or resume a run. A run dir made with a different config is never silently reused."""
        import json
        path = os.path.join(run_dir, CONFIG_JSON)
        if os.path.exists(path):
            have_dict = read_json(path)
            have = ExperimentConfig.from_dict(have_dict)
            if have != cfg and not overwrite:
                diff = _differences(have_dict, json.loads(cfg.to_json()))
                teacher_diff = _teacher_file_changes(have, cfg)
                raise ValueError(
                    f"{run_dir} holds a run with a different configuration ({path}; differs in "
                    f"{', '.join(diff[:8]) or '?'}{' ...' if len(diff) > 8 else ''})"
                    + (f". {teacher_diff}" if teacher_diff else "")
                    + "; pass --overwrite to replace it, or use another --run_dir")
            if overwrite:
                shutil.rmtree(run_dir)
        os.makedirs(run_dir, exist_ok=True)
        if not os.access(run_dir, os.W_OK):
            raise PermissionError(f"--run_dir={run_dir} is not writable")
        for name, text in ((CONFIG_JSON, cfg.to_json()), ("flags.txt", flags_text)):
            if text:
                tmp = os.path.join(run_dir, f"{name}.tmp{os.getpid()}")  # workers of one run open it together
                with open(tmp, "w") as f:
                    f.write(text)
                os.replace(tmp, os.path.join(run_dir, name))
        return cls(run_dir, cfg)

    # ---- the completeness protocol -----------------------------------------------------------------

    def stage_record_path(self, name: str) -> str:
        return self.p("metrics", "stages", f"{name}.json")

    def stage_done(self, name: str) -> dict | None:
        """The stage's record if it finished and every output it lists is still there, else None."""
        path = self.stage_record_path(name)
        if not os.path.exists(path):
            return None
        rec = read_json(path)
        missing = [o for o in rec.get("outputs", []) if not os.path.exists(self.p(o))]
        if missing:
            summary(f"stage {name}: {len(missing)} output(s) missing ({missing[0]}); running it again")
            return None
        return rec

    def mark_done(self, name: str, record: dict, outputs=()):
        """Write the stage's record last: outputs are paths relative to the run directory."""
        rel = [os.path.relpath(o, self.dir) if os.path.isabs(o) else o for o in outputs]
        write_json(self.stage_record_path(name), {"stage": name, "record": record, "outputs": rel,
                                                  "finished": time.time()})


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
