"""The run's three inputs as the stages receive them: its teachers, its unlabelled face source, its tasks.
No stage calls SynthFaces or a reader directly; they ask here, and here the config decides.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

from face_transfer.core.fileio import read_json
from face_transfer.data import tasks as task_registry
from face_transfer.stages.rundir import Run


# ---- teachers -----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TeacherSource:
    """One teacher of the run, whatever it came from (a zoo teacher trained in the run, a built-in pretrained
    model, a user's file): its name, how to load it frozen, and the tasks it was trained on."""

    name: str
    load: Callable[[], object]  # -> teachers.adapters.Teacher
    source_tasks: tuple[str, ...]


def teacher_sources(run: Run) -> list[TeacherSource]:
    """Every teacher of the run, in the config's order: the zoo, then the built-in models, then the user's files.
    A user's file is checked against the size and SHA-256 recorded in config.json when it is loaded."""
    from face_transfer.teachers.real import REAL_TEACHERS, load_real_teacher
    from face_transfer.teachers.refs import load_teacher_ref
    from face_transfer.teachers.train import load_zoo_teacher
    cfg = run.cfg
    return ([TeacherSource(s.name, functools.partial(load_zoo_teacher, run.paths.teacher_dir(s.name)),
                           tuple(task_registry.ZOO_SOURCE_TASKS.get(s.source_task, (s.source_task,))))
             for s in cfg.teachers]
            + [TeacherSource(n, functools.partial(load_real_teacher, n),
                             tuple(REAL_TEACHERS[n].get("source_tasks", ()))) for n in cfg.real_teachers]
            + [TeacherSource(r.name, functools.partial(load_teacher_ref, r), tuple(r.source_tasks))
               for r in cfg.teacher_files])


def teacher_names(run: Run) -> list[str]:
    return [t.name for t in teacher_sources(run)]


def load_teachers(run: Run):
    """Every frozen teacher of the run (teacher_sources), loaded once per invocation."""
    if "teachers" not in run._cache:
        run._cache["teachers"] = [t.load() for t in teacher_sources(run)]
    return run._cache["teachers"]


def declared_source_tasks(run: Run) -> set[str]:
    """Task (or label) names some teacher of this run was trained on: those tasks are *source*, the rest novel."""
    return {task.lower() for t in teacher_sources(run) for task in t.source_tasks}


# ---- unlabelled faces ------------------------------------------------------------------------------------

def uses_user_faces(run: Run) -> bool:
    return bool(run.cfg.data.faces.sources)


def image_source(run: Run, purpose: str = "cache"):
    """The run's unlabelled face source: SynthFaces, the prepared user faces, or their mix.

    `purpose="distill"` renders SynthFaces in the distillation's domain (`distill.domain`, e.g. "mixed").
    """
    key = f"source:{purpose}"
    if key not in run._cache:
        from face_transfer.data.sources import FaceSetSource, MixedSource, SynthSource
        dcfg = run.cfg.data
        domain = run.cfg.distill.domain if purpose == "distill" else dcfg.cache_domain
        synth_src = SynthSource(dcfg.synth, domain=domain)
        if not uses_user_faces(run):
            src = synth_src
        else:
            from face_transfer.data.faces import FaceSet
            real = FaceSetSource(FaceSet.open(run.paths.faces_dir), seed=run.cfg.seed)
            f = dcfg.faces.real_fraction
            src = real if f >= 1.0 else MixedSource(real, synth_src, f)
        run._cache[key] = src
    return run._cache[key]


# ---- labelled tasks --------------------------------------------------------------------------------------

def task_set_name(run: Run, i: int) -> str:
    """The eval-set name of the i-th user dataset (names were made unique when the config was built)."""
    return run.cfg.data.task_sets[i].set_name


def eval_set_names(run: Run) -> list[str]:
    """Every labelled image set the probes read: the SynthFaces sets and the user's datasets."""
    names = list(task_registry.EVAL_SETS) if run.cfg.data.synth_tasks else []
    return names + [task_set_name(run, i) for i in range(len(run.cfg.data.task_sets))]


def run_tasks(run: Run) -> list:
    """This run's transfer tasks, with *source* computed from its teachers' declared source tasks."""
    if "tasks" not in run._cache:
        from face_transfer.data.tasksets import tasks_of_set
        tasks = list(task_registry.TASKS.values()) if run.cfg.data.synth_tasks else []
        for i in range(len(run.cfg.data.task_sets)):
            name = task_set_name(run, i)
            meta = read_json(run.paths.taskset_json(name))
            tasks += tasks_of_set(name, meta, taken_names={t.name for t in tasks})
        run._cache["tasks"] = task_registry.with_sources(tasks, declared_source_tasks(run))
    return run._cache["tasks"]


def novel_tasks(run: Run) -> list:
    return [t for t in run_tasks(run) if not t.source]


def load_eval_data(run: Run):
    """({set: images}, {set: labels}) of every eval set of the run (loaded once per process)."""
    if "eval" not in run._cache:
        from face_transfer.data.pipelines import load_eval_set
        images, labels = {}, {}
        for name in eval_set_names(run):
            images[name], labels[name] = load_eval_set(run.paths.eval_set_dir(name))
        run._cache["eval"] = (images, labels)
    return run._cache["eval"]


def class_names(run: Run, task) -> list[str] | None:
    """Readable class names of a classification task (None when the labels are their own names)."""
    from face_transfer.data import synth
    from face_transfer.data.vocab import EXPRESSIONS
    if getattr(task, "class_names", None):
        return list(task.class_names)
    if task.eval_set in task_registry.EVAL_SETS:
        named = {"expression": EXPRESSIONS, "hair_color": synth.HAIR_COLORS, "hair_style": synth.HAIR_STYLES,
                 "gender": ("female", "male")}
        key = task.labels[0]
        return list(named[key]) if key in named else None
    return None
