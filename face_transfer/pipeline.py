"""The main job: every stage in order into one run directory (resumable; nothing complete is recomputed)."""
from __future__ import annotations

import contextlib
import os
import time

from face_transfer import distribute
from face_transfer.configs import ExperimentConfig
from face_transfer.core import peers
from face_transfer.core.fileio import write_json
from face_transfer.stages import Run, StageContext, depends_on, ordered_stages, summary
from face_transfer.stages.rundir import RunLock

def _wait_for_record(run: Run, name: str, worker: tuple[int, int], timeout_s: float = 7 * 24 * 3600,
                     poll_s: float = 2.0) -> dict:
    rec = peers.wait_for(lambda: run.stage_done(name), run.dir, worker,
                         f"the chief's record of stage {name} ({run.paths.stage_record(name)})", timeout_s, poll_s)
    return rec["record"]


def run_pipeline(cfg: ExperimentConfig, run_dir: str, overwrite: bool = False, strategy=None,
                 until: str = "report", flags_text: str = "") -> dict:
    """Run the stages up to and including `until`; returns {stage: record}."""
    names = [s.NAME for s in ordered_stages()]
    if until not in names:
        raise ValueError(f"until={until!r}; expected one of {tuple(names)}")
    chief = distribute.is_chief(strategy) if strategy is not None else True
    # The chief holds the run directory for the whole invocation; other workers of a multi-worker run share it.
    worker = distribute.worker_index(strategy) if strategy is not None else (0, 1)
    with (RunLock(run_dir) if chief else contextlib.nullcontext()):
        # Every worker records itself, and its failure, in the run directory: the others then stop waiting
        # for its part at once (face_transfer.peers) instead of at a timeout.
        with peers.worker_part(run_dir, worker):
            return _run_stages(cfg, run_dir, overwrite, strategy, until, flags_text, chief, worker)


def _run_stages(cfg, run_dir, overwrite, strategy, until, flags_text, chief, worker) -> dict:
    run = Run.open(run_dir, cfg, overwrite=overwrite, flags_text=flags_text)
    import keras
    keras.utils.set_random_seed(cfg.seed)  # python, numpy and TF seeds; the data itself is seeded per index
    ctx = StageContext(strategy=strategy)
    rebuilt: set[str] = set()  # stages that ran in this invocation: a dependant's earlier record is stale
    out, times = {}, {}
    stages = ordered_stages()
    todo = stages[:[s.NAME for s in stages].index(until) + 1]
    for i, stage in enumerate(todo):
        t0 = time.time()
        if not chief and stage.WORKERS == "chief":
            # A worker's part ends with the last stage it shares; before that it waits for the chief's record.
            if not any(s.WORKERS == "all" for s in todo[i + 1:]):
                break
            out[stage.NAME] = _wait_for_record(run, stage.NAME, worker)
            continue
        had_record = os.path.exists(run.paths.stage_record(stage.NAME))
        stale_because = rebuilt & set(depends_on(stage))
        if had_record and stale_because:
            summary(f"{stage.NAME}: recomputed, because {', '.join(sorted(stale_because))} was")
            run.reset_stage(stage.NAME, cascade=True)
        always = getattr(stage, "ALWAYS_RUN", False)
        done = None if always else run.stage_done(stage.NAME)
        if done is not None:
            summary(f"{stage.NAME}: complete, artifacts verified ({run.paths.stage_record(stage.NAME)}), skipped")
            out[stage.NAME] = done["record"]
        else:
            if not always:  # ran (again, or with its record deleted): dependants are stale
                rebuilt.add(stage.NAME)
            record = dict(stage.run(run, ctx))
            outputs, artifacts, reset = (record.pop(k, []) for k in ("outputs", "artifacts", "reset"))
            if chief:
                run.mark_done(stage.NAME, record, outputs, artifacts, reset)
            out[stage.NAME] = record
        times[stage.NAME] = round(time.time() - t0, 1)
    if chief:
        write_json(run.paths.stage_times_json, times)
    out["stage_seconds"] = times
    return out
