"""A user's labelled face datasets as task sets of the transfer suite: read, infer label kinds, store.
Owns TaskSetConfig and its flag syntax, read_task_set (a registered format's reader, then the kinds) and the Tasks.

A task set is one dataset on disk (CelebA, FER2013, UTKFace, an image folder + CSV, TFRecords, or any format
registered in `face_transfer.data.readers`). Each labelled column becomes one probe task; what kind of task is
inferred from the values (rules below, in data/kinds.py), and a JSON task file (data/taskfile.py) overrides any
of it:

* an identity column (named like identity/id/person/subject, or named in the task file) groups the images
  by person: probe splits go by person, and it yields a verification task, never a classification task;
* int or text columns with 2..MAX_CLASSES distinct values, each seen >= MIN_PER_CLASS times -> classification;
* float columns, and int columns with more than MAX_CLASSES values -> regression (metric "mae");
  [N, k] numeric arrays -> multi-output regression; [N, 5, 2] arrays -> landmarks (metric "nme");
* text with many values that is not an identity, constant columns (a probe cannot learn them) and
  per-format non-tasks (FER2013's Usage split) are left out, each with a note in the meta.

Whether a task is *source* is not decided here: `tasks.with_sources` computes it from the run's teachers
(a task file's "source" mark wins). `taskset_store.write_task_set` stores a set in the eval-set shard format,
so `pipelines.load_eval_set` reads it like a synthetic set, plus `taskset.json` (the meta).
"""
from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections import Counter

import numpy as np

from face_transfer.data.imageio import DataError
from face_transfer.data.kinds import as_float, class_counts, encode_classes, plan
from face_transfer.data.readers import RowIssues, drop_rows, format_names, get_reader
from face_transfer.data.taskfile import METRICS, check_columns_exist, load_task_file
from face_transfer.data.tasks import EVAL_SETS, EvalSet, Task
from face_transfer.integrity import notice

FLAG_KEYS = ("name", "task_file", "max_images", "drop_bad_rows", "align", "seed")
SET_DOMAIN, SET_POOL = "real", "user"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class TaskSetConfig:
    """One user dataset to turn into tasks. `path` by format:

    celeba: the folder holding list_attr_celeba.txt and img_align_celeba/ (or the attribute file; an
    identity_CelebA.txt next to it adds an identity column); fer2013: the CSV; utkface: the folder;
    folder_csv: a folder holding labels.csv, or the CSV (image paths relative to its folder);
    tfrecord: a file or a glob. `max_images` caps the images read (None: all); which ones is per format,
    see its reader's `selection` (data/readers/). `drop_bad_rows`: a bad label or image is dropped, counted
    and listed in the meta instead of raising DataError naming its file, row and column.
    """

    format: str
    path: str
    name: str = ""  # default: the format name (see resolve_names when two sets share a format)
    task_file: str | None = None
    max_images: int | None = 2000
    drop_bad_rows: bool = False
    align: bool = False
    seed: int = 0  # picks the subset of formats that subsample (utkface, folder_csv)

    def __post_init__(self):
        if self.format not in format_names():
            raise ValueError(f"task set format {self.format!r}; expected one of {format_names()}")
        if not self.path:
            raise ValueError(f"task set {self.format}: empty path")
        if self.name and (not _NAME.match(self.name) or self.name in EVAL_SETS):
            raise ValueError(f"task set name {self.name!r}: expected letters, digits, '_', '.', '-' (it names "
                             f"the eval set and prefixes clashing task names), not one of {sorted(EVAL_SETS)}")
        if self.max_images is not None and (not isinstance(self.max_images, (int, np.integer))
                                            or self.max_images < 1):
            raise ValueError(f"task set {self.set_name}: max_images={self.max_images!r}; expected an int >= 1 "
                             "or None (all images)")
        no_align = get_reader(self.format).no_align
        if self.align and no_align:
            raise ValueError(f"task set {self.format}: align=True is not supported; {no_align}")
        if not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"task set {self.set_name}: seed={self.seed!r}; expected an int")

    @property
    def set_name(self) -> str:
        return self.name or self.format


def _flag_error(text: str, why: str) -> ValueError:
    return ValueError(f"task set flag {text!r}: {why}. Expected FORMAT:PATH[,key=value...] with FORMAT one "
                      f"of {', '.join(format_names())} and keys {', '.join(FLAG_KEYS)}, e.g. "
                      "'folder_csv:data/faces,task_file=tasks.json,max_images=500,drop_bad_rows=1,name=mine'")


def _flag_bool(text: str, key: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise _flag_error(text, f"{key}={value!r} is not a boolean (1/0, true/false, yes/no)")


def parse_task_flag(text: str) -> TaskSetConfig:
    """A TaskSetConfig from the CLI syntax "FORMAT:PATH[,key=value...]".

    Commas may appear inside PATH: only trailing pieces of the form `key=value` with a known key are options.
    """
    fmt, sep, rest = str(text).partition(":")
    fmt = fmt.strip()
    if not sep or fmt not in format_names():
        raise _flag_error(text, f"unknown format {fmt!r}" if sep else "no ':' after the format")
    pieces = rest.split(",")
    first_option = len(pieces)
    for i in range(1, len(pieces)):
        key = re.match(r"^\s*([A-Za-z_]\w*)\s*=", pieces[i])
        if key:
            if key[1] not in FLAG_KEYS:
                raise _flag_error(text, f"unknown key {key[1]!r}")
            first_option = i
            break
    path = ",".join(pieces[:first_option]).strip()
    if not path:
        raise _flag_error(text, "empty PATH")
    options: dict = {}
    for piece in pieces[first_option:]:
        key, eq, value = piece.partition("=")
        key = key.strip()
        if not eq or key not in FLAG_KEYS:
            raise _flag_error(text, f"{piece!r} is not key=value with a known key")
        if key in options:
            raise _flag_error(text, f"key {key!r} given twice")
        value = value.strip()
        if key in ("drop_bad_rows", "align"):
            options[key] = _flag_bool(text, key, value)
        elif key == "max_images":
            if value.lower() in ("all", "none"):
                options[key] = None
            elif re.fullmatch(r"\d+", value) and int(value) >= 1:
                options[key] = int(value)
            else:
                raise _flag_error(text, f"max_images={value!r} is not an int >= 1 (or 'all')")
        elif key == "seed":
            if not re.fullmatch(r"-?\d+", value):
                raise _flag_error(text, f"seed={value!r} is not an int")
            options[key] = int(value)
        elif not value:
            raise _flag_error(text, f"{key}= is empty")
        else:
            options[key] = value
    try:
        return TaskSetConfig(fmt, path, **options)
    except ValueError as e:
        raise _flag_error(text, str(e)) from e


def resolve_names(cfgs) -> list[TaskSetConfig]:
    """Configs with every name set: the format, or the path's base name when two sets share a format."""
    cfgs = list(cfgs)
    per_format = Counter(c.format for c in cfgs)
    out = []
    for c in cfgs:
        if not c.name:
            name = c.format
            if per_format[c.format] > 1:
                base = os.path.basename(os.path.normpath(c.path.replace("*", "")))
                name = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(base)[0]).strip("_.-") or c.format
            if name in EVAL_SETS:
                name = f"{c.format}_{name}"
            c = dataclasses.replace(c, name=name)
        out.append(c)
    names = Counter(c.name for c in out)
    clash = sorted(n for n, k in names.items() if k > 1)
    if clash:
        raise ValueError(f"task sets share the name(s) {clash}; give each a distinct name=... "
                         f"({[(c.format, c.path) for c in out if c.name in clash]})")
    return out


# --------------------------------------------------------------------------- reading


def read_task_set(cfg: TaskSetConfig, image_size: int = 64, listed_in: str | None = None):
    """(images uint8 [N,S,S,3], labels {column: array}, meta, report) of one user dataset.

    `labels` hold the task columns (classification as codes 0..K-1 into the meta's class_names,
    regression float32, landmarks float32 [N,5,2]) and the identity column as read. `meta` is what
    taskset.json stores (see write_task_set). Bad rows raise DataError naming the file, row and column,
    or with drop_bad_rows are dropped and listed in meta["report"], with one notice line on stderr (the
    count, the kinds, the first row and where the list is: `listed_in`, the taskset.json path write_task_set
    gives, else the meta's report).
    """
    spec = load_task_file(cfg.task_file)
    drop = cfg.drop_bad_rows or bool(spec.get("drop_bad_rows", False))
    fmt = cfg.format
    reader = get_reader(fmt)
    if "image_column" in spec and not reader.image_column:
        named = " and ".join(n for n in format_names() if get_reader(n).image_column)
        raise DataError(f"{cfg.task_file}: 'image_column' applies to {named}, not {fmt}")
    raw = reader.read(cfg, image_size, drop, spec)
    source = raw.source or cfg.path
    check_columns_exist(spec, raw.labels if raw.columns is None else raw.columns, cfg.task_file)
    kinds, identity, why = plan(raw, reader.not_tasks, spec, cfg.task_file)
    used = [c for c, k in kinds.items() if k is not None]

    issues = RowIssues(drop)
    labels, columns = {}, {}
    cols_spec = spec.get("columns", {})
    for c in used:
        kind, values, c_spec = kinds[c], np.asarray(raw.labels[c]), cols_spec.get(c, {})
        entry = {"kind": kind, "metric": c_spec.get("metric", METRICS[kind][0]), "why": why[c],
                 "source": c_spec.get("source"), "dtype": str(values.dtype)}
        if kind == "classification":
            names = tuple(c_spec["class_names"]) if c_spec.get("class_names") else reader.class_names_for(c)
            origin = cfg.task_file if c_spec.get("class_names") else f"the {fmt} format"
            codes, present = encode_classes(c, values, names, raw.wheres, issues, origin)
            labels[c] = codes
            entry.update(num_classes=len(present), class_names=present)
        elif kind == "regression":
            labels[c] = as_float(c, values, raw.wheres, issues)
        elif kind == "landmarks":
            labels[c] = values.astype(np.float32)
        else:
            labels[c] = values
            ids, counts = class_counts(values)
            entry.update(num_identities=int(ids.size), identities_with_2_images=int((counts >= 2).sum()))
        columns[c] = entry
    raw.labels = labels
    drop_rows(raw, issues)
    meta = {
        "name": cfg.set_name, "format": fmt, "path": cfg.path, "source": source, "task_file": cfg.task_file,
        "n_images": int(raw.images.shape[0]), "image_size": int(image_size), "align": bool(cfg.align),
        "selection": (reader.selection + f" (max_images={cfg.max_images}, seed={cfg.seed})" if raw.capped
                      else f"every row ({raw.report.n_kept + raw.report.n_skipped}, max_images={cfg.max_images})"),
        "identity": identity,
        "columns": columns,
        "ignored": {c: why[c] for c in why if c not in columns},
        "report": {"source": source, "kept": raw.report.n_kept, "skipped": raw.report.n_skipped,
                   "skipped_by_kind": raw.report.skipped_by_kind(),
                   "skipped_items": [dataclasses.asdict(s) for s in raw.report.skipped]},
    }
    if not columns:
        raise DataError(f"{source}: no label column is a usable task ({meta['ignored']}); "
                        "name columns and kinds in a task file")
    if raw.report.skipped:  # the tool's own notice line, not a Python UserWarning echoing this source line
        kinds_text = ", ".join(f"{k}={v}" for k, v in sorted(raw.report.skipped_by_kind().items()))
        where = listed_in or 'the meta\'s report["skipped_items"]'
        notice(f"task set {cfg.set_name!r}: drop_bad_rows dropped {raw.report.n_skipped} bad row(s) ({kinds_text}; "
               f"first: {raw.report.skipped[0].message}); all listed in {where}")
    for c, reason in meta["ignored"].items():
        if reason.startswith("constant") and c in cols_spec and cols_spec[c].get("kind"):
            warnings.warn(f"task set {cfg.set_name!r}: column {c!r} ({cfg.task_file}) is {reason}", stacklevel=2)
    return raw.images, labels, meta, raw.report


# --------------------------------------------------------------------------- tasks


def eval_set_of(set_name: str, meta: dict) -> EvalSet:
    """The EvalSet of a user task set: real photos, its identity column (if any) groups the probe splits."""
    return EvalSet(set_name, SET_DOMAIN, SET_POOL, group_key=meta.get("identity"))


def tasks_of_set(set_name: str, meta: dict, taken_names=()) -> list[Task]:
    """One Task per labelled column of a task set (ignored columns are not in meta["columns"]).

    The task is named after its column, or "<set>_<column>" when that name is taken (registry tasks, other
    sets). The identity column yields a verification task. `source` is the task file's mark or False until
    tasks.with_sources applies the run's teachers.
    """
    if set_name in EVAL_SETS:
        raise ValueError(f"task set name {set_name!r} is a synthetic eval set's name; choose another")
    spec = eval_set_of(set_name, meta)
    taken = set(taken_names)
    out = []
    for col, c in meta["columns"].items():
        name = col if col not in taken else f"{set_name}_{col}"
        if name in taken:
            raise ValueError(f"task set {set_name!r}: column {col!r} gives task name {name!r}, which is taken "
                             "too; rename the set")
        taken.add(name)
        override = c.get("source")
        what = "same/different person" if c["kind"] == "verification" else c["kind"]
        out.append(Task(name, (col,), c["kind"], c["metric"], set_name, bool(override), c.get("num_classes"),
                        f"{meta.get('format', 'user')} set {set_name!r}, column {col!r}: {what}",
                        user_set=spec, class_names=tuple(c.get("class_names") or ()), source_override=override))
    return out
