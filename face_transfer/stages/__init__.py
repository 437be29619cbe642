"""The pipeline's stages, one module each, registered with `@register_stage` on their `run(run, ctx) -> record`
(a dict; its "outputs" are the files that must exist for the stage to count as complete). Their order comes from
each module's DEPENDS_ON (and AFTER); `face_transfer.pipeline` loops over `ordered_stages()`.

A stage module holds NAME, WORKERS ("all" or "chief"), DEPENDS_ON (stages whose rebuild makes it stale, or
EVERY_STAGE), optionally AFTER (stages it must follow without depending on them) and ALWAYS_RUN (run on every
invocation). Adding a stage is one new module here.
"""
from __future__ import annotations

import dataclasses
import sys
import time

from face_transfer.core.registry import Registry
from face_transfer.stages.rundir import Run, header, summary

STAGE_REGISTRY = Registry("stage", package="face_transfer.stages")
# DEPENDS_ON of a stage that reads what every other stage wrote (the report): it runs last.
EVERY_STAGE = "*"


def register_stage(run_fn):
    """`@register_stage` on a stage module's `run`: registers the module under its NAME."""
    module = sys.modules[run_fn.__module__]
    STAGE_REGISTRY.register(module.NAME, module)
    return run_fn


def depends_on(stage) -> tuple[str, ...]:
    """The stages whose rebuild makes `stage` stale."""
    if stage.DEPENDS_ON == EVERY_STAGE:
        return tuple(n for n in STAGE_REGISTRY.names() if n != stage.NAME)
    return tuple(stage.DEPENDS_ON)


def ordered_stages() -> tuple:
    """Every registered stage, each after the ones it depends on or follows; ties in name order, so the order
    (and with it every seeded number) is the same on every machine."""
    stages = dict(STAGE_REGISTRY.items())
    before = {}
    for name, s in stages.items():
        after = set(getattr(s, "AFTER", ()))
        if s.DEPENDS_ON == EVERY_STAGE:  # last: after everything that does not itself come last
            after |= {n for n, o in stages.items() if o.DEPENDS_ON != EVERY_STAGE}
        else:
            after |= set(s.DEPENDS_ON)
        unknown = after - set(stages)
        if unknown:
            raise ValueError(f"stage {name!r} depends on unknown stage(s) {sorted(unknown)}; "
                             f"registered: {', '.join(sorted(stages))}")
        before[name] = after
    order: list[str] = []
    while len(order) < len(stages):
        ready = sorted(n for n in stages if n not in order and before[n] <= set(order))
        if not ready:
            raise ValueError("stages depend on each other in a cycle: "
                             + ", ".join(sorted(n for n in stages if n not in order)))
        order.append(ready[0])
    return tuple(stages[n] for n in order)


def stage_names() -> tuple[str, ...]:
    return tuple(s.NAME for s in ordered_stages())


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


__all__ = ["STAGE_REGISTRY", "EVERY_STAGE", "register_stage", "depends_on", "ordered_stages", "stage_names",
           "StageContext", "Run", "header", "summary"]
