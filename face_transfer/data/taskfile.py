"""The task file: a user's JSON that names a task set's label columns, their kinds and metrics.
Owns its keys, the metrics each kind may report, and the checks that name the file and the column.
"""
from __future__ import annotations

import json

from face_transfer.data.imageio import DataError
from face_transfer.data.tasks import KINDS

TASK_FILE_KEYS = ("columns", "identity", "image_column", "drop_bad_rows")
COLUMN_KEYS = ("kind", "metric", "source", "ignore", "class_names")
# Metrics each kind may report (the ones evaluation/tables.py knows how to show); the first is the default.
METRICS = {"classification": ("accuracy",), "verification": ("accuracy",),
           "regression": ("mae", "mae_deg", "mae_years"), "landmarks": ("nme",)}


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


def check_columns_exist(spec: dict, available, task_file: str | None):
    available = list(available)
    named = list(spec.get("columns", {})) + ([spec["identity"]] if "identity" in spec else [])
    for col in named:
        if col not in available:
            raise DataError(f"{task_file}: column {col!r} is not in the data; its columns are {available}")
