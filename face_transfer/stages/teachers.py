"""Stage `teachers`: train the zoo's source-task teachers, and record every imported teacher
(built-in pretrained models and the user's own model files) in `teachers/<name>/teacher.json`.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

from face_transfer.core.fileio import read_json, write_json
from face_transfer.stages import register_stage
from face_transfer.stages.inputs import teacher_names
from face_transfer.stages.rundir import Run, header, summary

NAME = "teachers"
WORKERS = "all"  # under multi-worker training every worker runs it (its share, or collectively)
DEPENDS_ON = ()  # rebuilt upstream stages make this one stale
AFTER = ("data",)  # the order runs have always had (the seeded numbers follow it), not a dependency


@register_stage
def run(run: Run, ctx) -> dict:
    from face_transfer.teachers.train import train_teacher
    cfg = run.cfg
    imported = list(cfg.real_teachers) + [r.name for r in cfg.teacher_files]
    pre = cfg.teacher_train.pretrained
    header((f"teachers: the zoo's {len(cfg.teachers)} pretrained source-task teachers "
            f"({'shipped with face-transfer' if pre == 'package' else pre})" if pre else
            f"teachers: train the zoo ({len(cfg.teachers)} source-task teachers)")
           + (f" + import {', '.join(imported)}" if imported else ""))
    records = {}
    for spec in cfg.teachers:
        t0 = time.time()
        if not pre:
            print(f"  teacher {spec.name} ({spec.arch}, source task {spec.source_task})", file=sys.stderr)
        rec = train_teacher(spec, cfg.data.synth, cfg.teacher_train, run.paths.teacher_dir(spec.name), ctx.strategy)
        records[spec.name] = rec
        summary(f"{spec.name}: {rec['params_total']:,} params, {rec['metrics']} "
                + (f"(pretrained, {rec.get('steps_total', rec['steps'])} steps)" if "pretrained" in rec else f"({time.time() - t0:.0f} s)"))
    from face_transfer import distribute
    if ctx.strategy is not None and not distribute.is_chief(ctx.strategy):
        return {"teachers": records, "outputs": []}  # the chief records the imported teachers
    for name, rec in imported_teacher_records(run).items():
        records[name] = rec
        summary(f"{name} (imported {rec['arch']}, source tasks {rec['source_task'] or 'none declared'}): "
                f"{rec['params_embedding']:,} params, {rec['embedding_dim']}-d")
    return {"teachers": records, "outputs": [run.paths.teacher_json(n) for n in teacher_names(run)],
            "artifacts": [run.paths.teacher_model(s.name) for s in cfg.teachers]}


def _record(teacher, arch: str, source_tasks, extra: dict) -> dict:
    fm = teacher.feature_model
    params = int(fm.count_params()) if fm is not None else int(teacher.metadata.get("params", 0) or 0)
    return {"name": teacher.name, "arch": arch, "source_task": ", ".join(source_tasks),
            "source_tasks": list(source_tasks), "input_spec": dataclasses.asdict(teacher.spec),
            "embedding_dim": teacher.dim, "params_embedding": params, "params_total": params, "metrics": {},
            "metadata": {k: str(v) for k, v in teacher.metadata.items()}, **extra}


def imported_teacher_records(run: Run) -> dict:
    """What the report says about each imported teacher (written once into teachers/<name>/teacher.json)."""
    from face_transfer.teachers.real import REAL_TEACHERS, load_real_teacher
    from face_transfer.teachers.refs import load_teacher_ref
    out = {}
    for name in run.cfg.real_teachers:
        path = run.paths.teacher_json(name)
        if not os.path.exists(path):
            t = load_real_teacher(name)
            write_json(path, _record(t, "imported", REAL_TEACHERS[name].get("source_tasks", ()),
                                     {"description": t.metadata.get("task", "?")}))
        out[name] = read_json(path)
    for ref in run.cfg.teacher_files:
        path = run.paths.teacher_json(ref.name)
        if not os.path.exists(path):
            t = load_teacher_ref(ref)
            write_json(path, _record(t, f"file ({ref.format})", ref.source_tasks,
                                     {"path": ref.path, "sha256": ref.sha256, "bytes": ref.bytes,
                                      "output": ref.output}))
        out[ref.name] = read_json(path)
    return out


def teacher_records(run: Run) -> dict:
    return {n: read_json(run.paths.teacher_json(n)) for n in teacher_names(run)}
