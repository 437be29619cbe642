"""The task registry: every facial task the transfer suite probes, and the image sets they use.

A plain dict, explicit and greppable. `source` tasks are those a default zoo teacher is trained on;
every other task is *novel*: no teacher saw its labels, which is the paper's transfer question.
"""
from __future__ import annotations

import dataclasses

KINDS = ("classification", "regression", "verification", "landmarks")


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """A fixed, pre-rendered set of synthetic faces shared by all tasks that read it."""

    name: str
    domain: str  # one of synth.DOMAINS
    pool: str  # identity pool: "train" (people the teachers saw) or "heldout" (unseen people)


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    labels: tuple[str, ...]  # label keys from synth.render_faces (several = multi-output regression)
    kind: str  # one of KINDS
    metric: str  # the raw metric reported next to the 0-100 score
    eval_set: str  # key of EVAL_SETS
    source: bool  # a default zoo teacher is trained on this task
    num_classes: int | None = None
    description: str = ""

    @property
    def domain(self) -> str:
        return EVAL_SETS[self.eval_set].domain


EVAL_SETS: dict[str, EvalSet] = {
    "photo": EvalSet("photo", "photo", "train"),
    "photo_heldout": EvalSet("photo_heldout", "photo", "heldout"),
    "sketch": EvalSet("sketch", "sketch", "train"),
    "infrared": EvalSet("infrared", "infrared", "train"),
    "lowres": EvalSet("lowres", "lowres", "train"),
}


def _t(name, labels, kind, metric, eval_set, source, num_classes=None, description=""):
    if isinstance(labels, str):
        labels = (labels,)
    return Task(name, tuple(labels), kind, metric, eval_set, source, num_classes, description)


TASKS: dict[str, Task] = {t.name: t for t in [
    # --- source tasks: the default zoo trains one teacher on each family -----------------------
    _t("identity", "identity", "verification", "accuracy", "photo", True,
       description="same/different person on identities the recognition teacher was trained on"),
    _t("expression", "expression", "classification", "accuracy", "photo", True, 7,
       "7 basic expressions, photo domain"),
    _t("head_pose", ("yaw", "pitch", "roll"), "regression", "mae_deg", "photo", True,
       description="3-D head pose in degrees"),
    _t("age", "age", "regression", "mae_years", "photo", True, description="apparent age in years"),
    _t("gender", "gender", "classification", "accuracy", "photo", True, 2),
    # --- novel tasks: no teacher saw these labels -------------------------------------------------
    _t("verification", "identity", "verification", "accuracy", "photo_heldout", False,
       description="same/different person on held-out identities (unseen people)"),
    _t("expression_sketch", "expression", "classification", "accuracy", "sketch", False, 7,
       "expressions in the sketch/edge domain"),
    _t("expression_infrared", "expression", "classification", "accuracy", "infrared", False, 7,
       "expressions in the grayscale/infrared domain"),
    _t("expression_lowres", "expression", "classification", "accuracy", "lowres", False, 7,
       "expressions at 16x16 effective resolution"),
    _t("glasses", "glasses", "classification", "accuracy", "photo", False, 2),
    _t("sunglasses", "sunglasses", "classification", "accuracy", "photo", False, 2),
    _t("beard", "beard", "classification", "accuracy", "photo", False, 2),
    _t("hair_color", "hair_color", "classification", "accuracy", "photo", False, 5),
    _t("eyes_closed", "eyes_closed", "classification", "accuracy", "photo", False, 2),
    _t("mouth_open", "mouth_open", "regression", "mae", "photo", False),
    _t("smile", "smile", "regression", "mae", "photo", False, description="smile intensity"),
    _t("gaze", ("gaze_x", "gaze_y"), "regression", "mae", "photo", False),
    _t("landmarks", "landmarks", "landmarks", "nme", "photo", False,
       description="5 landmarks, NME normalised by inter-ocular distance"),
    _t("illumination", "light_azimuth", "regression", "mae_deg", "photo", False,
       description="direction of the key light"),
    _t("mask", "mask", "classification", "accuracy", "photo", False, 2),
    _t("hat", "hat", "classification", "accuracy", "photo", False, 2),
    _t("occlusion", "occluded", "classification", "accuracy", "photo", False, 2),
]}

for _task in TASKS.values():
    assert _task.kind in KINDS, _task
    assert _task.eval_set in EVAL_SETS, _task


def source_tasks() -> list[Task]:
    return [t for t in TASKS.values() if t.source]


def novel_tasks() -> list[Task]:
    return [t for t in TASKS.values() if not t.source]


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name]


def tasks_markdown_table() -> str:
    """The registry as a Markdown table (README, report)."""
    rows = ["| task | kind | labels | metric | domain | identities | group |",
            "|---|---|---|---|---|---|---|"]
    for t in TASKS.values():
        es = EVAL_SETS[t.eval_set]
        rows.append(f"| {t.name} | {t.kind}{f' ({t.num_classes})' if t.num_classes else ''} | "
                    f"{', '.join(t.labels)} | {t.metric} | {es.domain} | {es.pool} | "
                    f"{'source' if t.source else 'novel'} |")
    return "\n".join(rows)
