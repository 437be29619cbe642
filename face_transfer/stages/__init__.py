"""The pipeline's stages, one module each, in order: data -> teachers -> cache -> fusion -> student ->
evaluate -> export -> report. Every stage is `run(run, ctx) -> record` (a dict; its "outputs" are the files
that must exist for the stage to count as complete), and `face_transfer.pipeline` loops over `STAGES`.
"""
from __future__ import annotations

import dataclasses
import time

from face_transfer.stages import cache, data, evaluate, export, fusion, report, student, teachers
from face_transfer.stages.rundir import Run, header, summary

STAGES = (data, teachers, cache, fusion, student, evaluate, export, report)
STAGE_NAMES = tuple(s.NAME for s in STAGES)
# Stages that run every time: the report is cheap and states this invocation's wall time.
ALWAYS_RUN = ("report",)


@dataclasses.dataclass
class StageContext:
    """What a stage receives besides the run: the tf.distribute strategy and the invocation's clock."""

    strategy: object = None
    t_start: float = dataclasses.field(default_factory=time.time)

    def wall_s(self) -> float:
        return time.time() - self.t_start

    @property
    def worker(self) -> tuple[int, int]:
        """(this worker, workers) for work split by hand across a multi-worker run; (0, 1) otherwise."""
        from face_transfer import distribute
        return distribute.worker_index(self.strategy) if self.strategy is not None else (0, 1)


__all__ = ["STAGES", "STAGE_NAMES", "ALWAYS_RUN", "StageContext", "Run", "header", "summary"]
