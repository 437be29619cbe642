"""The main job: every stage in order into one run directory (resumable; nothing recomputed)."""
from __future__ import annotations

import time

from face_transfer import stages
from face_transfer.configs import ExperimentConfig

STAGES = ("data", "teachers", "cache", "fusion", "student", "evaluate", "export", "report")


def run_pipeline(cfg: ExperimentConfig, run_dir: str, overwrite: bool = False, strategy=None,
                 until: str = "report", flags_text: str = "") -> dict:
    """Run the stages up to and including `until`; returns {stage: summary}."""
    if until not in STAGES:
        raise ValueError(f"until={until!r}; expected one of {STAGES}")
    run = stages.Run.open(run_dir, cfg, overwrite=overwrite, flags_text=flags_text)
    import keras
    keras.utils.set_random_seed(cfg.seed)  # python, numpy and TF seeds; the data itself is seeded per index
    last = STAGES.index(until)
    out, times, t_start = {}, {}, time.time()
    teachers = None
    for i, name in enumerate(STAGES[:last + 1]):
        t0 = time.time()
        if name == "data":
            out[name] = stages.stage_data(run)
        elif name == "teachers":
            out[name] = stages.stage_teachers(run, strategy)
        elif name == "cache":
            teachers = stages.load_teachers(run)
            out[name] = stages.stage_cache(run, teachers)
        elif name == "fusion":
            out[name] = stages.stage_fusion(run)
        elif name == "student":
            out[name] = stages.stage_student(run, strategy)
        elif name == "evaluate":
            out[name] = stages.stage_evaluate(run, teachers)
        elif name == "export":
            out[name] = stages.stage_export(run)
        elif name == "report":
            out[name] = stages.write_report(run, wall_s=time.time() - t_start)
        times[name] = round(time.time() - t0, 1)
    stages._write_json(run.p("metrics", "stage_times.json"), times)
    out["stage_seconds"] = times
    return out
