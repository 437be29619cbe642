"""The task registry: every synthetic facial task the transfer suite probes, and the image sets they use.
Owns Task/EvalSet, the one task-name vocabulary teachers declare sources in, and source/novel derivation.

A plain dict, explicit and greppable. Whether a task is *source* (a teacher of the run was trained on it)
or *novel* (no teacher saw its labels: the paper's transfer question) is computed from the run's
teachers by `with_sources`; the registry's own `source` flags are what the default zoo declares
(tests/test_tasks.py checks that the two agree). User task sets (data/tasksets.py) build Tasks that
carry their own EvalSet, since they are not in EVAL_SETS.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

KINDS = ("classification", "regression", "verification", "landmarks")


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """A fixed set of faces shared by all tasks that read it (pre-rendered synthetic, or a user's dataset)."""

    name: str
    domain: str  # one of synth.DOMAINS for synthetic sets; "real" for a user's photos
    pool: str  # identity pool: "train" (people the teachers saw), "heldout" (unseen people), "user"
    # Why this set tests transfer even for a label a teacher learned ("" = it does not). The registry's
    # domain-shifted and held-out sets share label keys with source tasks (expression, identity) but
    # are novel by construction, so a declared label makes a task source only on a set without a shift.
    shift: str = ""
    # Label key whose values group images (a person): probe splits then keep each group in one split.
    # None = image-level split (every synthetic set; their scores stay exactly as before).
    group_key: str | None = None


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    labels: tuple[str, ...]  # label keys of the eval set (several = multi-output regression)
    kind: str  # one of KINDS
    metric: str  # the raw metric reported next to the 0-100 score
    eval_set: str  # key of EVAL_SETS, or the name of `user_set`
    source: bool  # a teacher of the run is trained on this task (see with_sources)
    num_classes: int | None = None
    description: str = ""
    # The EvalSet of a user task set (not in EVAL_SETS); registry tasks leave it None.
    user_set: EvalSet | None = None
    class_names: tuple[str, ...] = ()  # label i of a classification task is class_names[i] (if given)
    # An explicit source/novel mark from a user's task file: it wins over the teachers' declarations.
    source_override: bool | None = None

    @property
    def eval_set_spec(self) -> EvalSet:
        if self.user_set is not None:
            return self.user_set
        if self.eval_set not in EVAL_SETS:
            raise KeyError(f"task {self.name!r}: eval set {self.eval_set!r} is neither in EVAL_SETS "
                           f"({sorted(EVAL_SETS)}) nor given as the task's user_set")
        return EVAL_SETS[self.eval_set]

    @property
    def domain(self) -> str:
        return self.eval_set_spec.domain

    @property
    def group_key(self) -> str | None:
        """The eval set's grouping label for probe splits (None: image-level split or unknown set)."""
        if self.user_set is not None:
            return self.user_set.group_key
        spec = EVAL_SETS.get(self.eval_set)
        return spec.group_key if spec is not None else None


EVAL_SETS: dict[str, EvalSet] = {
    "photo": EvalSet("photo", "photo", "train"),
    "photo_heldout": EvalSet("photo_heldout", "photo", "heldout", shift="held-out identities"),
    "sketch": EvalSet("sketch", "sketch", "train", shift="sketch domain"),
    "infrared": EvalSet("infrared", "infrared", "train", shift="infrared domain"),
    "lowres": EvalSet("lowres", "lowres", "train", shift="16x16 effective resolution"),
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
    _t("hair_style", "hair_style", "classification", "accuracy", "photo", False, 4,
       "bald, short, long or bun (CelebA's Bald / Bangs / Wavy_Hair kind of attribute)"),
    _t("eyes_closed", "eyes_closed", "classification", "accuracy", "photo", False, 2),
    _t("mouth_open", "mouth_open", "regression", "mae", "photo", False),
    _t("smile", "smile", "regression", "mae", "photo", False, description="smile intensity"),
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

# Zoo source task (teachers.zoo.SOURCE_TASKS) -> the task names its teacher is trained on. Teachers of
# every origin (zoo, real, imported) declare their sources in these task names: one vocabulary.
ZOO_SOURCE_TASKS: dict[str, tuple[str, ...]] = {
    "recognition": ("identity",),
    "expression": ("expression",),
    "pose": ("head_pose",),
    "age_gender": ("age", "gender"),
}
# What the default zoo (every teachers.config.ZOO_PRESETS preset: one teacher per zoo source task) declares.
DEFAULT_DECLARED: frozenset[str] = frozenset(n for names in ZOO_SOURCE_TASKS.values() for n in names)


def declared_from_zoo(zoo_source_tasks: Iterable[str]) -> set[str]:
    """The task names declared by teachers trained on these zoo source tasks (e.g. spec.source_task)."""
    out = set()
    for s in zoo_source_tasks:
        if s not in ZOO_SOURCE_TASKS:
            raise ValueError(f"unknown zoo source task {s!r}; expected one of {sorted(ZOO_SOURCE_TASKS)}")
        out.update(ZOO_SOURCE_TASKS[s])
    return out


def _declared_labels(declared: Iterable[str]) -> set[str]:
    """Declared names plus the label keys of registry tasks of those names (lower case).

    So a teacher declaring "head_pose" makes a user's "yaw" column source, not only a task named head_pose.
    """
    names = {d.lower() for d in declared}
    out = set(names)
    for t in TASKS.values():
        if t.name.lower() in names:
            out.update(k.lower() for k in t.labels)
    return out


def is_source(task: Task, declared: Iterable[str]) -> bool:
    """Source iff a task file says so, or its name is declared, or (on a set without a shift) a label is.

    Names and labels compare case-insensitively; a declared registry task also declares its label keys
    (head_pose -> yaw, pitch, roll), and a verification task's label counts as "identity".
    """
    if task.source_override is not None:
        return bool(task.source_override)
    declared = set(declared)
    names = {d.lower() for d in declared}
    if task.name.lower() in names:
        return True
    spec = task.user_set or EVAL_SETS.get(task.eval_set)
    if spec is not None and spec.shift:
        return False
    # A verification task's label is a person id whatever its column is called (subject, person_id):
    # in the vocabulary that is "identity", what a recognition teacher declares.
    keys = {k.lower() for k in task.labels} | ({"identity"} if task.kind == "verification" else set())
    return bool(keys & _declared_labels(declared))


def with_sources(tasks: Iterable[Task], declared: Iterable[str]) -> list[Task]:
    """Copies of `tasks` with `source` computed from the task names the run's teachers declare."""
    declared = set(declared)
    return [dataclasses.replace(t, source=is_source(t, declared)) for t in tasks]


def source_tasks(tasks: Iterable[Task] | None = None, declared: Iterable[str] | None = None) -> list[Task]:
    """Source tasks of `tasks` (default: the registry); with `declared`, recomputed from it first."""
    tasks = list(TASKS.values()) if tasks is None else list(tasks)
    if declared is not None:
        tasks = with_sources(tasks, declared)
    return [t for t in tasks if t.source]


def novel_tasks(tasks: Iterable[Task] | None = None, declared: Iterable[str] | None = None) -> list[Task]:
    """Novel tasks of `tasks` (default: the registry); with `declared`, recomputed from it first."""
    tasks = list(TASKS.values()) if tasks is None else list(tasks)
    if declared is not None:
        tasks = with_sources(tasks, declared)
    return [t for t in tasks if not t.source]


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name]


def tasks_markdown_table(tasks: Iterable[Task] | None = None) -> str:
    """The tasks (default: the registry) as a Markdown table (README, report)."""
    rows = ["| task | kind | labels | metric | domain | identities | group |",
            "|---|---|---|---|---|---|---|"]
    for t in (TASKS.values() if tasks is None else tasks):
        es = t.eval_set_spec
        rows.append(f"| {t.name} | {t.kind}{f' ({t.num_classes})' if t.num_classes else ''} | "
                    f"{', '.join(t.labels)} | {t.metric} | {es.domain} | {es.pool} | "
                    f"{'source' if t.source else 'novel'} |")
    return "\n".join(rows)
