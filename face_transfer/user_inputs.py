"""The user's own inputs into a run's configuration: teachers (zoo, built-in, model files), unlabelled face
folders and labelled datasets, checked before any work. Shared by the command line (trainers/common.py) and the
Python API (face_transfer.api)."""
from __future__ import annotations

import dataclasses
import os


def with_user_inputs(cfg, teachers=(), teachers_json: str | None = None, faces=(), align_faces: bool = False,
                     real_fraction: float | None = None, max_faces: int | None = None, tasks=(),
                     synth_tasks: bool | None = None, cache_size: int | None = None, keep_real_teachers: bool = False):
    """`cfg` with the user's own teachers, unlabelled faces and labelled datasets, each checked before any work
    (ValueError naming the flag-style input and what was expected). `teachers`: "zoo:NAME", a built-in pretrained
    name, or "NAME=PATH[,key=value...]" (see README); `tasks`: "FORMAT:PATH[,key=value...]"."""
    from face_transfer.core.errors import TeacherLoadError
    from face_transfer.data.config import FacesConfig
    from face_transfer.data.tasks import EVAL_SETS
    from face_transfer.data.tasksets import parse_task_flag
    from face_transfer.teachers.config import ZOO_PRESETS
    from face_transfer.teachers.real import REAL_TEACHERS, available_real_teachers
    from face_transfer.teachers.refs import parse_teacher_flag, resolve_ref, teacher_refs_from_json
    r = dataclasses.replace
    refs = list(teachers or [])
    if refs or teachers_json:
        zoo = {s.name: s for p in (cfg.preset, *ZOO_PRESETS) if p in ZOO_PRESETS for s in reversed(ZOO_PRESETS[p])}
        zoo.update({s.name: s for s in cfg.teachers})
        zoo_specs, builtin, files = [], [], []
        for text in refs:
            if text.startswith("zoo:"):
                if text[4:] not in zoo:
                    raise ValueError(f"--teacher={text}: no zoo teacher {text[4:]!r}; known: {sorted(zoo)}")
                zoo_specs.append(zoo[text[4:]])
            elif "=" not in text:
                if text not in REAL_TEACHERS:
                    raise ValueError(
                        f"--teacher={text}: not a built-in teacher ({', '.join(sorted(REAL_TEACHERS))}) and not "
                        "NAME=PATH[,key=value...] (a model file) or zoo:NAME")
                if text not in available_real_teachers():
                    raise ValueError(f"--teacher={text}: not installed; {REAL_TEACHERS[text]['pip']}")
                builtin.append(text)
            else:
                try:
                    files.append(parse_teacher_flag(text))
                except ValueError as e:
                    raise ValueError(f"--teacher: {e}") from None
        if teachers_json:
            try:
                files += list(teacher_refs_from_json(teachers_json))
            except (OSError, ValueError) as e:
                raise ValueError(f"--teachers_json={teachers_json}: {e}") from None
        try:
            files = [resolve_ref(f) for f in files]
        except TeacherLoadError as e:
            raise ValueError(f"--teacher: {e}") from None
        names = [s.name for s in zoo_specs] + builtin + [f.name for f in files]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"--teacher: teacher name(s) {dup} given twice; names must be unique")
        # --real_teachers given too: its names join the --teacher ones.
        extra = list(cfg.real_teachers) if keep_real_teachers else []
        cfg = r(cfg, teachers=tuple(zoo_specs), real_teachers=tuple(dict.fromkeys(builtin + extra)),
                teacher_files=tuple(files))
    data = cfg.data
    if faces:
        for src in faces:
            import glob as globlib
            if not os.path.exists(src) and not globlib.glob(src):
                raise ValueError(f"--faces={src}: no such folder or file, and no file matches it as a glob")
        fraction = 1.0 if real_fraction is None else real_fraction
        try:
            faces = FacesConfig(sources=tuple(os.path.abspath(p) if os.path.exists(p) else p for p in faces),
                                align=align_faces, real_fraction=fraction,
                                image_size=data.synth.image_size, max_images=max_faces)
        except ValueError as e:
            raise ValueError(f"--faces/--real_fraction: {e}") from None
        data = r(data, faces=faces)
    elif real_fraction is not None or align_faces or max_faces is not None:
        raise ValueError("--real_fraction, --align_faces and --max_faces need --faces")
    if tasks:
        sets = []
        for text in tasks:
            try:
                sets.append(parse_task_flag(text))
            except ValueError as e:
                raise ValueError(f"--tasks={text}: {e}") from None
            if not os.path.exists(sets[-1].path) and not __import__("glob").glob(sets[-1].path):
                raise ValueError(f"--tasks={text}: {sets[-1].path} does not exist")
            if sets[-1].set_name in EVAL_SETS:
                raise ValueError(f"--tasks={text}: name {sets[-1].set_name!r} is a SynthFaces eval set; "
                                            "give it another with ,name=...")
        sets = [r(t, path=os.path.abspath(t.path)) if os.path.exists(t.path) else t for t in sets]
        from face_transfer.data.tasksets import resolve_names
        try:
            sets = resolve_names(sets)
        except ValueError as e:
            raise ValueError(f"--tasks: {e}") from None
        data = r(data, task_sets=tuple(sets))
    if synth_tasks is not None:
        data = r(data, synth_tasks=bool(synth_tasks))
    if not data.synth_tasks and not data.task_sets:
        raise ValueError("--nosynth_tasks with no --tasks leaves no task to evaluate on")
    if cache_size is not None:
        if cache_size < 2:
            raise ValueError(f"--cache_size={cache_size}: expected >= 2")
        data = r(data, cache_size=cache_size)
    return r(cfg, data=data)


