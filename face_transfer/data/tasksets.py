"""A user's labelled face datasets as task sets of the transfer suite: read, infer label kinds, store.
Owns TaskSetConfig and its flag syntax, the task file, label-kind inference, taskset.json and the Tasks a set yields.

A task set is one dataset on disk (CelebA, FER2013, UTKFace, an image folder + CSV, or TFRecords) read by
`face_transfer.data.readers`. Each labelled column becomes one probe task; what kind of task is inferred
from the values (rules below), and a JSON task file overrides any of it:

* an identity column (named like identity/id/person/subject, or named in the task file) groups the images
  by person: probe splits go by person, and it yields a verification task, never a classification task;
* int or text columns with 2..MAX_CLASSES distinct values, each seen >= MIN_PER_CLASS times -> classification;
* float columns, and int columns with more than MAX_CLASSES values -> regression (metric "mae");
  [N, k] numeric arrays -> multi-output regression; [N, 5, 2] arrays -> landmarks (metric "nme");
* text with many values that is not an identity, constant columns (a probe cannot learn them) and
  per-format non-tasks (FER2013's Usage split) are left out, each with a note in the meta.

Whether a task is *source* is not decided here: `tasks.with_sources` computes it from the run's teachers
(a task file's "source" mark wins). `write_task_set` stores a set in the eval-set shard format, so
`pipelines.load_eval_set` reads it like a synthetic set, plus `taskset.json` (the meta).
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import json
import os
import re
import tempfile
import warnings
from collections import Counter

import numpy as np

from face_transfer.data import readers
from face_transfer.data.readers import DataError, ReadReport, SkippedItem
from face_transfer.data.tasks import EVAL_SETS, KINDS, EvalSet, Task

FORMATS = ("celeba", "fer2013", "utkface", "folder_csv", "tfrecord")
FLAG_KEYS = ("name", "task_file", "max_images", "drop_bad_rows", "align", "seed")
TASK_FILE_KEYS = ("columns", "identity", "image_column", "drop_bad_rows")
COLUMN_KEYS = ("kind", "metric", "source", "ignore", "class_names")
# Metrics each kind may report (the ones evaluation/tables.py knows how to show); the first is the default.
METRICS = {"classification": ("accuracy",), "verification": ("accuracy",),
           "regression": ("mae", "mae_deg", "mae_years"), "landmarks": ("nme",)}
MAX_CLASSES = 20  # more distinct values than this: a number is a quantity, a text is not a class label
MIN_PER_CLASS = 2  # a class seen once cannot be in both a probe's train split and its test split
# Share of a CSV column's values that must parse as numbers for it to be numeric; the other values are
# then bad labels (a typo in an age column), not a hint that the column is text.
NUMERIC_SHARE = 0.9
TASKSET_META = "taskset.json"
SET_DOMAIN, SET_POOL = "real", "user"
ROW_KEY = "__row"  # column of the temporary CSV that carries each row's line in the user's CSV

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_IDENTITY_WORDS = {"identity", "id", "person", "subject", "pid", "celeb", "celebrity", "individual", "people"}
# Words that make an "..._id" column an id of something other than a person.
_NOT_PERSON_WORDS = {"image", "img", "file", "filename", "photo", "picture", "frame", "row", "index", "sample",
                     "record", "video", "clip", "path", "session", "shot", "sequence"}
# A column named like a record id or a path (image_id, row_index, file) that is not a person: a key, not a
# label; left out (an int image id would otherwise pass for a regression target).
_ID_WORDS = {"id", "idx", "index", "uuid", "path", "file", "filename", "url"}
# Class names a format documents (label value i -> name i); CelebA's attributes are all no/yes.
_FORMAT_CLASS_NAMES = {
    ("fer2013", "expression"): readers.FER_EXPRESSIONS,
    ("utkface", "gender"): ("female", "male"),  # the reader's convention, flipped from UTKFace's own
    ("utkface", "race"): readers.UTK_RACES,
}
_FORMAT_NOT_TASKS = {("fer2013", "usage"): "FER2013's Usage column is the dataset's own train/test split, "
                                           "not a facial attribute"}
_SELECTION = {
    "celeba": "the first max_images lines of list_attr_celeba.txt: its order is the image id, unrelated to "
              "the labels, and reading stops there, so a 200k-image CelebA costs max_images decodes",
    "fer2013": "the first max_images rows: FER2013's rows are shuffled within its Usage blocks, and reading "
               "stops there",
    "tfrecord": "the first max_images records: TFRecords are read in order (no random access) and are "
                "usually written shuffled",
    "utkface": "a seeded random subset of max_images files, chosen before decoding: the reader orders "
               "UTKFace's files by name, which sorts them by age, so the first N would all be children",
    "folder_csv": "a seeded random subset of max_images rows, chosen before decoding: user CSVs are often "
                  "sorted by class or person, so the first N could hold a single class",
}


# --------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class TaskSetConfig:
    """One user dataset to turn into tasks. `path` by format:

    celeba: the folder holding list_attr_celeba.txt and img_align_celeba/ (or the attribute file; an
    identity_CelebA.txt next to it adds an identity column); fer2013: the CSV; utkface: the folder;
    folder_csv: a folder holding labels.csv, or the CSV (image paths relative to its folder);
    tfrecord: a file or a glob. `max_images` caps the images read (None: all); which ones is per format,
    see _SELECTION. `drop_bad_rows`: a bad label or image is dropped, counted and listed in the meta
    instead of raising DataError naming its file, row and column.
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
        if self.format not in FORMATS:
            raise ValueError(f"task set format {self.format!r}; expected one of {FORMATS}")
        if not self.path:
            raise ValueError(f"task set {self.format}: empty path")
        if self.name and (not _NAME.match(self.name) or self.name in EVAL_SETS):
            raise ValueError(f"task set name {self.name!r}: expected letters, digits, '_', '.', '-' (it names "
                             f"the eval set and prefixes clashing task names), not one of {sorted(EVAL_SETS)}")
        if self.max_images is not None and (not isinstance(self.max_images, (int, np.integer))
                                            or self.max_images < 1):
            raise ValueError(f"task set {self.set_name}: max_images={self.max_images!r}; expected an int >= 1 "
                             "or None (all images)")
        if self.align and self.format == "fer2013":
            raise ValueError("task set fer2013: align=True is not supported; FER2013 faces are already "
                             "48x48 crops with no room for a detector")
        if not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"task set {self.set_name}: seed={self.seed!r}; expected an int")

    @property
    def set_name(self) -> str:
        return self.name or self.format


def _flag_error(text: str, why: str) -> ValueError:
    return ValueError(f"task set flag {text!r}: {why}. Expected FORMAT:PATH[,key=value...] with FORMAT one "
                      f"of {', '.join(FORMATS)} and keys {', '.join(FLAG_KEYS)}, e.g. "
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
    if not sep or fmt not in FORMATS:
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


# --------------------------------------------------------------------------- task file


def load_task_file(path: str | None) -> dict:
    """A task file's content, checked for shape (columns are checked against the data later)."""
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except OSError as e:
        raise DataError(f"{path}: cannot open task file ({e.strerror or e})") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {e.lineno} column {e.colno}: not valid JSON ({e.msg})") from e
    if not isinstance(spec, dict):
        raise DataError(f"{path}: expected a JSON object with keys {TASK_FILE_KEYS}")
    unknown = sorted(set(spec) - set(TASK_FILE_KEYS))
    if unknown:
        raise DataError(f"{path}: unknown key(s) {unknown}; expected {TASK_FILE_KEYS}")
    columns = spec.get("columns", {})
    if not isinstance(columns, dict):
        raise DataError(f"{path}: 'columns' must be an object {{column: {{kind, metric, ...}}}}")
    for key in ("identity", "image_column"):
        if key in spec and not (isinstance(spec[key], str) and spec[key]):
            raise DataError(f"{path}: {key!r} must be a column name, got {spec[key]!r}")
    if "drop_bad_rows" in spec and not isinstance(spec["drop_bad_rows"], bool):
        raise DataError(f"{path}: 'drop_bad_rows' must be true or false, got {spec['drop_bad_rows']!r}")
    for col, c in columns.items():
        where = f"{path}: column {col!r}"
        if not isinstance(c, dict):
            raise DataError(f"{where}: expected an object with keys {COLUMN_KEYS}, got {c!r}")
        unknown = sorted(set(c) - set(COLUMN_KEYS))
        if unknown:
            raise DataError(f"{where}: unknown key(s) {unknown}; expected {COLUMN_KEYS}")
        kind = c.get("kind")
        if kind is not None and kind not in KINDS:
            raise DataError(f"{where}: kind {kind!r}; expected one of {KINDS}")
        if "metric" in c:
            if kind is None:
                raise DataError(f"{where}: a metric needs a kind next to it")
            if c["metric"] not in METRICS[kind]:
                raise DataError(f"{where}: metric {c['metric']!r} for {kind}; expected one of {METRICS[kind]}")
        for key in ("source", "ignore"):
            if key in c and not isinstance(c[key], bool):
                raise DataError(f"{where}: {key!r} must be true or false, got {c[key]!r}")
        if "class_names" in c:
            names = c["class_names"]
            if kind not in (None, "classification"):
                raise DataError(f"{where}: class_names only apply to classification, not {kind}")
            if (not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names)
                    or len(set(names)) != len(names)):
                raise DataError(f"{where}: class_names must be a list of >= 2 distinct strings, got {names!r}")
        if kind == "verification" and spec.get("identity", col) != col:
            raise DataError(f"{where}: kind verification makes it the identity column, but 'identity' is "
                            f"{spec['identity']!r}; a set has one identity column")
    return spec


def _check_columns_exist(spec: dict, available, task_file: str | None):
    available = list(available)
    named = list(spec.get("columns", {})) + ([spec["identity"]] if "identity" in spec else [])
    for col in named:
        if col not in available:
            raise DataError(f"{task_file}: column {col!r} is not in the data; its columns are {available}")


# --------------------------------------------------------------------------- reading


class _RowIssues:
    """Bad rows found after a reader ran: raise DataError at once, or (drop_bad_rows) collect them."""

    def __init__(self, drop: bool):
        self.drop = drop
        self.items: dict[int, SkippedItem] = {}

    def bad(self, row: int, where: str, kind: str, message: str):
        message = message if message.startswith(where) else f"{where}: {message}"
        if not self.drop:
            raise DataError(message)
        self.items.setdefault(row, SkippedItem(where=where, kind=kind, message=message))


@dataclasses.dataclass
class _Raw:
    """What a format reader produced, before inference: rows aligned across images, labels and wheres."""

    images: np.ndarray
    labels: dict[str, np.ndarray]
    wheres: list[str]  # where each kept row came from (file + line/record, or the image path)
    report: ReadReport
    missing: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # col -> bool [N]: no value
    capped: bool = False  # max_images left some of the dataset unread


def _call_reader(fn, *args, translate=None, **kwargs):
    """Runs a reader, holding back its skip warning (read_task_set warns once, in the user's file names)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = fn(*args, **kwargs)
        except DataError as e:
            if translate is None:
                raise
            raise type(e)(translate(str(e))) from e
    for w in caught:
        if not str(w.message).startswith("skipped bad items"):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out


def _translated_report(report: ReadReport, source: str, translate) -> ReadReport:
    out = ReadReport(source=source, kept_sources=[translate(s) for s in report.kept_sources])
    out.skipped = [SkippedItem(translate(s.where), s.kind, translate(s.message)) for s in report.skipped]
    return out


def _on_error(drop: bool) -> str:
    return "skip" if drop else "raise"


def _read_celeba(cfg: TaskSetConfig, size: int, drop: bool) -> _Raw:
    if os.path.isdir(cfg.path):
        folder, attr = cfg.path, os.path.join(cfg.path, "list_attr_celeba.txt")
        if not os.path.isfile(attr):
            raise DataError(f"{cfg.path}: no list_attr_celeba.txt (expected CelebA's layout: "
                            "list_attr_celeba.txt and img_align_celeba/)")
    else:
        folder, attr = os.path.dirname(cfg.path) or ".", cfg.path
    image_dir = os.path.join(folder, "img_align_celeba")
    if not os.path.isdir(image_dir):
        image_dir = folder  # images next to the attribute file
    images, labels, report = _call_reader(readers.read_celeba_attributes, attr, image_dir, image_size=size,
                                          on_error=_on_error(drop), align=cfg.align, limit=cfg.max_images)
    raw = _Raw(images, dict(labels), list(report.kept_sources), report, capped=_capped(cfg, report))
    id_path = os.path.join(folder, "identity_CelebA.txt")
    if os.path.isfile(id_path):
        _celeba_identities(id_path, raw, drop)
    return raw


def _celeba_identities(id_path: str, raw: _Raw, drop: bool):
    """Adds CelebA's person ids (identity_CelebA.txt: '000001.jpg 2880' per line) as the `identity` column."""
    ids = {}
    with open(id_path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or readers._parse_int(parts[1]) is None:
                raise DataError(f"{id_path} line {line_no}: expected '<image file> <person id>', "
                                f"found {line.strip()[:80]!r}")
            ids[parts[0]] = int(parts[1])
    issues = _RowIssues(drop)
    out = np.zeros(len(raw.wheres), np.int64)
    for i, where in enumerate(raw.wheres):
        name = os.path.basename(where)
        if name in ids:
            out[i] = ids[name]
        else:
            issues.bad(i, where, "missing_value", f"no line for {name} in {id_path} (expected its person id)")
    raw.labels["identity"] = out
    _drop_rows(raw, issues)


def _capped(cfg: TaskSetConfig, report: ReadReport) -> bool:
    # A reader with `limit` stops once it kept that many rows: then more may follow unread.
    return cfg.max_images is not None and report.n_kept >= cfg.max_images


def _read_fer(cfg: TaskSetConfig, size: int, drop: bool) -> _Raw:
    images, labels, report = _call_reader(readers.read_fer2013_csv, cfg.path, image_size=size,
                                          on_error=_on_error(drop), limit=cfg.max_images)
    return _Raw(images, dict(labels), list(report.kept_sources), report, capped=_capped(cfg, report))


def _image_files(folder: str) -> list[str]:
    # The same files read_utkface_folder considers (it lists the folder, non-recursively).
    return sorted(n for n in os.listdir(folder)
                  if not n.startswith(".") and os.path.isfile(os.path.join(folder, n))
                  and n.lower().endswith(readers._IMAGE_SUFFIXES))


def _read_utkface(cfg: TaskSetConfig, size: int, drop: bool) -> _Raw:
    folder = cfg.path
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: not a directory (expected a UTKFace image folder)")
    names = _image_files(folder)
    if cfg.max_images is None or len(names) <= cfg.max_images:
        images, labels, report = _call_reader(readers.read_utkface_folder, folder, image_size=size,
                                              on_error=_on_error(drop), align=cfg.align)
        return _Raw(images, dict(labels), list(report.kept_sources), report)
    pick = np.sort(np.random.default_rng([cfg.seed, len(names)]).choice(len(names), cfg.max_images,
                                                                        replace=False))
    with tempfile.TemporaryDirectory(prefix="taskset_utk_") as view:
        # A folder of links to the chosen files: the reader reads exactly those, in name order.
        for i in pick:
            os.symlink(os.path.abspath(os.path.join(folder, names[i])), os.path.join(view, names[i]))

        def translate(text: str) -> str:
            return text.replace(view, os.path.normpath(folder))

        images, labels, report = _call_reader(readers.read_utkface_folder, view, image_size=size,
                                              on_error=_on_error(drop), align=cfg.align, translate=translate)
        report = _translated_report(report, folder, translate)
    return _Raw(images, dict(labels), list(report.kept_sources), report, capped=True)


def _read_tfrecord(cfg: TaskSetConfig, size: int, drop: bool, spec: dict) -> _Raw:
    if any(ch in cfg.path for ch in "*?["):
        paths = sorted(glob.glob(cfg.path))
        if not paths:
            raise DataError(f"{cfg.path}: no TFRecord files match this pattern")
    else:
        paths = [cfg.path]
    images, labels, report = _call_reader(readers.read_tfrecord, paths, image_key=spec.get("image_column", "image"),
                                          image_size=size, on_error=_on_error(drop), align=cfg.align,
                                          limit=cfg.max_images)
    return _Raw(images, dict(labels), list(report.kept_sources), report, capped=_capped(cfg, report))


def _csv_paths(path: str) -> tuple[str, str]:
    if os.path.isdir(path):
        csv_path = os.path.join(path, "labels.csv")
        if not os.path.isfile(csv_path):
            found = sorted(n for n in os.listdir(path) if n.lower().endswith(".csv"))
            raise DataError(f"{path}: no labels.csv (found {found or 'no CSV files'}); give the CSV's path "
                            "instead of the folder")
        return path, csv_path
    return os.path.dirname(path) or ".", path


@dataclasses.dataclass
class _CsvTable:
    """A user CSV's chosen rows, labels parsed and typed per column (images not decoded yet)."""

    csv_path: str
    root: str
    image_column: str
    rows: list  # (line number, row dict)
    wheres: list[str]
    labels: dict[str, np.ndarray]  # int64 / float64 / str; a missing cell holds 0, NaN or ""
    empty: dict[str, np.ndarray]  # col -> bool [N]: empty cell
    bad: dict[str, np.ndarray]  # col -> bool [N]: not a number in a numeric column
    is_int: dict[str, bool]
    text: dict[str, list[str]]
    issues: _RowIssues
    capped: bool = False


def _parse_folder_csv(cfg: TaskSetConfig, drop: bool, spec: dict) -> _CsvTable:
    """Labels parsed here: the reader knows ints and floats only, user CSVs also hold text classes and
    person ids. A column is numeric when >= NUMERIC_SHARE of its values are numbers (or the task file says
    regression); then the other values are bad labels, reported only if the column turns out to be a task."""
    root, csv_path = _csv_paths(cfg.path)
    image_column = spec.get("image_column", "image")
    header, rows = readers.read_csv_rows(csv_path)
    if image_column not in header:
        raise DataError(f"{csv_path}: no {image_column!r} column (the relative image paths); the header has "
                        f"{header}" + ("" if cfg.task_file else "; name it with a task file's 'image_column'"))
    if ROW_KEY in header:
        raise DataError(f"{csv_path}: column name {ROW_KEY!r} is reserved")
    _check_columns_exist(spec, [c for c in header if c != image_column], cfg.task_file)
    if not rows:
        raise DataError(f"{csv_path}: no data rows under the header")
    capped = cfg.max_images is not None and len(rows) > cfg.max_images
    if capped:
        pick = np.random.default_rng([cfg.seed, len(rows)]).choice(len(rows), cfg.max_images, replace=False)
        rows = [rows[i] for i in np.sort(pick)]
    cols_spec = spec.get("columns", {})
    columns = [c for c in header if c != image_column and not cols_spec.get(c, {}).get("ignore", False)]
    t = _CsvTable(csv_path, root, image_column, rows, [f"{csv_path} line {line}" for line, _ in rows],
                  {}, {}, {}, {}, {}, _RowIssues(drop), capped)
    for i, (_, row) in enumerate(rows):
        if None in row:  # more fields than the header
            t.issues.bad(i, t.wheres[i], "malformed_row", f"expected {len(header)} fields, found more")
    for c in columns:
        values = [(row.get(c) or "").strip() for _, row in rows]
        empty = np.array([v == "" for v in values])
        numbers = [readers._parse_float(v) for v in values]
        present = [x for x, e in zip(numbers, empty) if not e]
        share = float(np.mean([x is not None for x in present])) if present else 0.0
        forced = cols_spec.get(c, {}).get("kind")
        numeric = forced in ("regression", "landmarks") or (forced is None and share >= NUMERIC_SHARE)
        bad = np.array([not e and x is None for x, e in zip(numbers, empty)]) if numeric \
            else np.zeros(len(values), bool)
        ints = all(readers._parse_int(v) is not None for v, e, b in zip(values, empty, bad) if not e and not b)
        if ints and (numeric or present):
            arr = np.array([readers._parse_int(v) if not (e or b) else 0 for v, e, b in zip(values, empty, bad)],
                           np.int64)
        elif numeric:
            arr = np.array([x if x is not None else np.nan for x in numbers], np.float64)
        else:
            arr = np.array(values, dtype=str)
        t.labels[c], t.empty[c], t.bad[c], t.is_int[c], t.text[c] = arr, empty, bad, bool(ints), values
    return t


def _decode_folder_csv(t: _CsvTable, keep: np.ndarray, size: int, cfg: TaskSetConfig, drop: bool) -> _Raw:
    """Decodes the images of the kept CSV rows through the reader, via a temporary CSV of just those rows."""
    with tempfile.TemporaryDirectory(prefix="taskset_csv_") as tmp:
        sub = os.path.join(tmp, "rows.csv")
        with open(sub, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow([t.image_column, ROW_KEY])
            for i in keep:
                w.writerow([t.rows[i][1].get(t.image_column) or "", int(i)])
        with open(sub, newline="", encoding="utf-8") as f:
            r = csv.DictReader(f)
            line_of = {r.line_num: t.rows[int(row[ROW_KEY])][0] for row in r}

        def translate(text: str) -> str:
            # The reader names the temporary CSV; the user knows their own file and its line numbers.
            text = re.sub(re.escape(sub) + r" line (\d+)",
                          lambda m: f"{t.csv_path} line {line_of.get(int(m[1]), m[1])}", text)
            return text.replace(sub, t.csv_path)

        images, labels, report = _call_reader(readers.read_image_folder_csv, t.root, sub,
                                              image_column=t.image_column, label_columns={ROW_KEY: "int"},
                                              image_size=size, on_error=_on_error(drop), align=cfg.align,
                                              translate=translate)
        report = _translated_report(report, t.csv_path, translate)
    kept = labels[ROW_KEY]  # row positions in `t` of the rows the reader kept (it skips unreadable images)
    report.kept_sources = [t.wheres[i] for i in kept]
    # Cells of ignored columns may be empty: the plan on the decoded rows looks at present values only.
    return _Raw(images, {c: v[kept] for c, v in t.labels.items()}, list(report.kept_sources), report,
                {c: (t.empty[c] | t.bad[c])[kept] for c in t.labels}, t.capped)


# --------------------------------------------------------------------------- inference


def _words(name: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower())) - {""}


def looks_like_identity(name: str) -> bool:
    """A column named like a person id: identity, id, person, subject_id, personId (not image_id, file_id)."""
    words = _words(name)
    return bool(words & _IDENTITY_WORDS) and not words & _NOT_PERSON_WORDS


def _class_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.unique(values, return_counts=True)


def _identity_problem(values: np.ndarray) -> str | None:
    ids, counts = _class_counts(values)
    if ids.size == values.size:
        return "every value is unique: an id per image, not per person"
    if ids.size < 3:
        return f"only {ids.size} person(s): a split by person needs >= 3"
    if not (counts >= 2).any():
        return "no person has >= 2 images"
    return None


def _varies(values: np.ndarray) -> bool:
    """Whether a numeric array takes more than one value anywhere (NaN cells ignored)."""
    v = values.reshape(values.shape[0], -1).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN outputs
        return bool(np.any(np.nanmax(v, axis=0) > np.nanmin(v, axis=0)))


def _infer(col: str, values: np.ndarray, forced: str | None, task_file: str | None) -> tuple[str | None, str]:
    """(kind or None, why) of one label column from its values (present cells only)."""
    values = np.asarray(values)
    numeric = np.issubdtype(values.dtype, np.number) or values.dtype == bool
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    shape = values.shape[1:]
    if forced == "landmarks" and (shape != (5, 2) or not numeric):
        raise DataError(f"{task_file}: column {col!r}: kind landmarks needs [5, 2] numbers per image, the data "
                        f"has {shape or 'one value'} of {values.dtype}")
    if forced in ("classification", "verification") and values.ndim != 1:
        raise DataError(f"{task_file}: column {col!r}: kind {forced} needs one value per image, the data has "
                        f"shape {shape}")
    if values.ndim > 1:
        if not numeric or values.size == 0:
            return None, f"{shape} values of {values.dtype} per image: not a task"
        if not _varies(values):
            return None, "constant: a probe cannot learn it"
        if shape == (5, 2):
            return "landmarks", "[N, 5, 2] array"
        if values.ndim == 2:
            return "regression", f"[N, {shape[0]}] numeric array"
        return None, f"shape {shape} per image: expected one value, [k] values or [5, 2] landmarks"
    if values.dtype == bool:
        values = values.astype(np.int64)
    kind_of_values = values.dtype.kind
    finite = values[np.isfinite(values)] if kind_of_values == "f" else values
    classes, counts = _class_counts(finite)
    if classes.size <= 1:
        return None, "constant: a probe cannot learn it" + (" (the task file's kind is not used)" if forced else "")
    if forced is not None:
        return forced, "task file"
    if kind_of_values == "f":
        return "regression", "floats"
    is_int = kind_of_values in "iu"
    if classes.size <= MAX_CLASSES:
        rare = [str(c) for c, k in zip(classes, counts) if k < MIN_PER_CLASS]
        if not rare:
            return "classification", f"{'int' if is_int else 'text'} with {classes.size} classes"
        return None, (f"{classes.size} classes but {rare[:5]} seen fewer than {MIN_PER_CLASS} times (a class "
                      "must reach train and test); use more images, or force it with a task file kind")
    if is_int:
        return "regression", f"int with {classes.size} distinct values"
    return None, (f"text with {classes.size} distinct values: not a class label (a person id? name the "
                  "column in the task file's 'identity')")


def _class_names_for(fmt: str, col: str, spec_col: dict) -> tuple[str, ...] | None:
    if spec_col.get("class_names"):
        return tuple(spec_col["class_names"])
    if fmt == "celeba" and col != "identity":
        return ("no", "yes")
    return _FORMAT_CLASS_NAMES.get((fmt, col))


def _encode_classes(col: str, values: np.ndarray, names: tuple[str, ...] | None, wheres, issues: _RowIssues,
                    source: str) -> tuple[np.ndarray, list[str]]:
    """Class codes 0..K-1 over the classes present, and their names (label i is class_names[i])."""
    values = np.asarray(values)
    if values.dtype == bool:
        values = values.astype(np.int64)
    if names is None:
        present = np.unique(values)
        key = {v: i for i, v in enumerate(present.tolist())}
        return np.array([key[v] for v in values.tolist()], np.int64), [_class_str(v) for v in present.tolist()]
    if values.dtype.kind in "iu":  # names index the values: value v is names[v]
        lookup = {i: i for i in range(len(names))}
        text = None
    else:
        lookup = {n: i for i, n in enumerate(names)}
        text = values.astype(str)
    idx = np.full(len(values), -1, np.int64)
    for r, v in enumerate(values.tolist() if text is None else text.tolist()):
        if v in lookup:
            idx[r] = lookup[v]
        else:
            expected = f"an int in 0..{len(names) - 1}" if text is None else f"one of {list(names)}"
            issues.bad(r, wheres[r], "bad_label", f"column {col!r} has {v!r}, expected {expected} "
                                                  f"(class_names from {source})")
    ok = idx >= 0
    present = np.unique(idx[ok])
    remap = np.full(len(names), -1, np.int64)
    remap[present] = np.arange(present.size)
    return np.where(ok, remap[np.maximum(idx, 0)], -1), [names[i] for i in present]


def _class_str(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _drop_rows(raw: _Raw, issues: _RowIssues):
    """Removes the rows `issues` collected from `raw` (images, labels, wheres) and records them."""
    if not issues.items:
        return
    keep = np.array([i not in issues.items for i in range(len(raw.wheres))])
    if raw.images.shape[0] == keep.size:
        raw.images = raw.images[keep]
    raw.labels = {k: v[keep] for k, v in raw.labels.items()}
    raw.missing = {k: v[keep] for k, v in raw.missing.items()}
    raw.wheres = [w for w, k in zip(raw.wheres, keep) if k]
    raw.report.kept_sources = list(raw.wheres)
    raw.report.skipped.extend(issues.items[i] for i in sorted(issues.items))
    issues.items = {}


def _plan(raw: _Raw, fmt: str, spec: dict, task_file: str | None) -> tuple[dict, str | None, dict]:
    """({column: kind or None}, identity column, {column: why}) from the values present in `raw`."""
    cols_spec = spec.get("columns", {})
    kinds, why = {}, {}
    candidates = list(raw.labels)
    ignored = {c for c in candidates if cols_spec.get(c, {}).get("ignore")}
    for c in cols_spec:
        if cols_spec[c].get("ignore"):  # also those a reader was told to skip
            why[c] = "ignored by the task file"
    for c in candidates:
        if (fmt, c) in _FORMAT_NOT_TASKS and c not in cols_spec:
            ignored.add(c)
            why[c] = _FORMAT_NOT_TASKS[(fmt, c)]

    def present(c):
        v = raw.labels[c]
        m = raw.missing.get(c)
        return v if m is None else v[~m]

    identity = spec.get("identity") or next((c for c in candidates if cols_spec.get(c, {}).get("kind")
                                            == "verification"), None)
    if identity is not None:
        problem = _identity_problem(present(identity))
        if problem:
            raise DataError(f"{task_file}: identity column {identity!r}: {problem}")
    else:
        named = sorted((c for c in candidates if c not in ignored and c not in cols_spec
                        and looks_like_identity(c) and np.asarray(raw.labels[c]).ndim == 1
                        and np.asarray(raw.labels[c]).dtype.kind in "iuU"),
                       key=lambda c: (c.lower() != "identity", candidates.index(c)))
        for c in named:
            problem = _identity_problem(present(c))
            if identity is None and problem is None:
                identity = c
            else:
                ignored.add(c)
                why[c] = (f"named like a person id but {problem}" if problem else
                          f"named like a person id; {identity!r} is the identity column")
    for c in candidates:
        if c not in ignored and c != identity and c not in cols_spec and _words(c) & _ID_WORDS:
            ignored.add(c)
            why[c] = "named like a record id or a path, not a label (give it a kind in a task file if it is one)"
    for c in candidates:
        if c in ignored:
            continue
        if c == identity:
            kinds[c], why[c] = "verification", "identity column: person-disjoint splits and a verification task"
            continue
        kind, reason = _infer(c, present(c), cols_spec.get(c, {}).get("kind"), task_file)
        kinds[c], why[c] = kind, reason
    return kinds, identity, why


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
    if "image_column" in spec and cfg.format not in ("folder_csv", "tfrecord"):
        raise DataError(f"{cfg.task_file}: 'image_column' applies to folder_csv and tfrecord, not {cfg.format}")
    fmt = cfg.format
    if fmt == "folder_csv":
        raw, source = _read_folder_csv_rows(cfg, image_size, drop, spec)
    else:
        source = cfg.path
        if fmt == "celeba":
            raw = _read_celeba(cfg, image_size, drop)
        elif fmt == "fer2013":
            raw = _read_fer(cfg, image_size, drop)
        elif fmt == "utkface":
            raw = _read_utkface(cfg, image_size, drop)
        else:
            raw = _read_tfrecord(cfg, image_size, drop, spec)
        _check_columns_exist(spec, raw.labels, cfg.task_file)
    kinds, identity, why = _plan(raw, fmt, spec, cfg.task_file)
    used = [c for c, k in kinds.items() if k is not None]

    issues = _RowIssues(drop)
    labels, columns = {}, {}
    cols_spec = spec.get("columns", {})
    for c in used:
        kind, values, c_spec = kinds[c], np.asarray(raw.labels[c]), cols_spec.get(c, {})
        entry = {"kind": kind, "metric": c_spec.get("metric", METRICS[kind][0]), "why": why[c],
                 "source": c_spec.get("source"), "dtype": str(values.dtype)}
        if kind == "classification":
            names = _class_names_for(fmt, c, c_spec)
            origin = cfg.task_file if c_spec.get("class_names") else f"the {fmt} format"
            codes, present = _encode_classes(c, values, names, raw.wheres, issues, origin)
            labels[c] = codes
            entry.update(num_classes=len(present), class_names=present)
        elif kind == "regression":
            labels[c] = _as_float(c, values, raw.wheres, issues)
        elif kind == "landmarks":
            labels[c] = values.astype(np.float32)
        else:
            labels[c] = values
            ids, counts = _class_counts(values)
            entry.update(num_identities=int(ids.size), identities_with_2_images=int((counts >= 2).sum()))
        columns[c] = entry
    raw.labels = labels
    _drop_rows(raw, issues)
    meta = {
        "name": cfg.set_name, "format": fmt, "path": cfg.path, "source": source, "task_file": cfg.task_file,
        "n_images": int(raw.images.shape[0]), "image_size": int(image_size), "align": bool(cfg.align),
        "selection": (_SELECTION[fmt] + f" (max_images={cfg.max_images}, seed={cfg.seed})" if raw.capped
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
        from face_transfer.integrity import notice
        kinds_text = ", ".join(f"{k}={v}" for k, v in sorted(raw.report.skipped_by_kind().items()))
        where = listed_in or 'the meta\'s report["skipped_items"]'
        notice(f"task set {cfg.set_name!r}: drop_bad_rows dropped {raw.report.n_skipped} bad row(s) ({kinds_text}; "
               f"first: {raw.report.skipped[0].message}); all listed in {where}")
    for c, reason in meta["ignored"].items():
        if reason.startswith("constant") and c in cols_spec and cols_spec[c].get("kind"):
            warnings.warn(f"task set {cfg.set_name!r}: column {c!r} ({cfg.task_file}) is {reason}", stacklevel=2)
    return raw.images, labels, meta, raw.report


def _read_folder_csv_rows(cfg: TaskSetConfig, size: int, drop: bool, spec: dict) -> tuple[_Raw, str]:
    t = _parse_folder_csv(cfg, drop, spec)
    # Plan on the parsed labels first: an empty cell or a stray non-number fails a row only in a column
    # that is a task (a free-text notes column with gaps must not), and only chosen rows get decoded.
    pre = _Raw(np.zeros((0,), np.uint8), dict(t.labels), t.wheres, ReadReport(source=t.csv_path),
               {c: t.empty[c] | t.bad[c] for c in t.labels})
    kinds, _, _ = _plan(pre, "folder_csv", spec, cfg.task_file)
    used = [c for c, k in kinds.items() if k is not None]
    for i in range(len(t.rows)):  # row by row: without drop_bad_rows the error is the first bad row
        for c in used:
            if t.bad[c][i]:
                t.issues.bad(i, t.wheres[i], "bad_label", f"column {c!r} has {t.text[c][i]!r}, expected "
                                                          f"{'an int' if t.is_int[c] else 'a number'}")
            elif t.empty[c][i]:
                t.issues.bad(i, t.wheres[i], "missing_value", f"column {c!r} is empty (expected a value)")
    keep = np.array([i for i in range(len(t.rows)) if i not in t.issues.items], np.int64)
    skipped = [t.issues.items[i] for i in sorted(t.issues.items)]
    if keep.size == 0:
        raise DataError(f"{t.csv_path}: no usable rows ({len(skipped)} bad; first: "
                        f"{skipped[0].message if skipped else '-'})")
    raw = _decode_folder_csv(t, keep, size, cfg, drop)
    raw.report.skipped = skipped + raw.report.skipped
    return raw, t.csv_path


def _as_float(col: str, values: np.ndarray, wheres, issues: _RowIssues) -> np.ndarray:
    if np.issubdtype(values.dtype, np.number) or values.dtype == bool:
        return values.astype(np.float32)
    out = np.full(values.shape, np.nan, np.float32)
    for i, v in enumerate(values.tolist()):
        x = readers._parse_float(str(v))
        if x is None:
            issues.bad(i, wheres[i], "bad_label", f"column {col!r} has {v!r}, expected a number (regression)")
        else:
            out[i] = x
    return out


# --------------------------------------------------------------------------- on disk


def _want(cfg: TaskSetConfig, image_size: int, shard_size: int) -> dict:
    spec = load_task_file(cfg.task_file)
    return {"kind": "task_set", "name": cfg.set_name, "format": cfg.format, "path": os.path.abspath(cfg.path),
            "task_file": os.path.abspath(cfg.task_file) if cfg.task_file else None, "task_spec": spec,
            "max_images": cfg.max_images, "drop_bad_rows": bool(cfg.drop_bad_rows), "align": bool(cfg.align),
            "seed": int(cfg.seed), "image_size": int(image_size), "shard_size": int(shard_size)}


def _fingerprint(images: np.ndarray, labels: dict) -> str:
    h = hashlib.sha1(images.tobytes())
    for k in sorted(labels):
        h.update(k.encode())
        h.update(np.ascontiguousarray(labels[k]).tobytes())
    return h.hexdigest()


def write_task_set(cfg: TaskSetConfig, out_dir: str, image_size: int = 64, shard_size: int = 1000) -> dict:
    """Reads a user dataset once and stores it like a pre-rendered eval set (resumable, idempotent).

    `shard-XXXXX.npz` (images, index, label__<column>) + manifest.json, so pipelines.load_eval_set reads it;
    plus taskset.json, the meta: columns with kind/metric/num_classes/class_names/source override, the
    identity column, ignored columns and why, how images were selected, the read report (counts and the
    skipped rows). A complete directory is reused without reading the data; one holding another set (other
    path, format, options or task file) is refused. Returns the meta.
    """
    from face_transfer.data import pipelines  # lazy: it imports TensorFlow, which reading labels does not need

    want = _want(cfg, image_size, shard_size)
    if pipelines.complete_manifest(out_dir, want, "task set") is not None:
        return read_task_meta(out_dir)
    pipelines.claim_shard_dir(out_dir, want)
    meta_path = os.path.join(out_dir, TASKSET_META)
    images, labels, meta, _ = read_task_set(cfg, image_size, listed_in=meta_path)
    meta["fingerprint"] = _fingerprint(images, labels)
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            old = json.load(f).get("fingerprint")
        if old != meta["fingerprint"]:
            raise ValueError(f"{out_dir}: an interrupted write of task set {cfg.set_name!r} holds other data than "
                             f"{cfg.path} gives now (did the dataset change?); delete {out_dir} and run again")
    _write_json(meta_path, meta)
    n = images.shape[0]
    pipelines.write_labelled_shards(out_dir, n, shard_size,
                                    lambda idx: (images[idx], {k: v[idx] for k, v in labels.items()}),
                                    {**want, "n": int(n)})
    return meta


def _write_json(path: str, obj):
    from face_transfer.fileio import write_json
    write_json(path, obj)


def read_task_meta(out_dir: str) -> dict:
    path = os.path.join(out_dir, TASKSET_META)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{out_dir}: no {TASKSET_META}; not a task set written by write_task_set")
    with open(path) as f:
        return json.load(f)


def load_task_set(out_dir: str) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """(images, labels, meta) of a task set directory written by write_task_set."""
    from face_transfer.data import pipelines  # lazy: TensorFlow

    meta = read_task_meta(out_dir)
    images, labels = pipelines.load_eval_set(out_dir)
    return images, labels, meta


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
