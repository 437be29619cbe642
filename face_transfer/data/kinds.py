"""Label-kind inference: which columns of a user dataset are tasks, of what kind, and which is the person id.
Owns the rules (see data/tasksets.py's docstring), class encoding and the reasons stored for each column.
"""
from __future__ import annotations

import re
import warnings

import numpy as np

from face_transfer.data.imageio import DataError
from face_transfer.data.readers import RawSet, RowIssues, parse_float

MAX_CLASSES = 20  # more distinct values than this: a number is a quantity, a text is not a class label
MIN_PER_CLASS = 2  # a class seen once cannot be in both a probe's train split and its test split
# Words of a column name that make it a person id.
_IDENTITY_WORDS = {"identity", "id", "person", "subject", "pid", "celeb", "celebrity", "individual", "people"}
# Words that make an "..._id" column an id of something other than a person.
_NOT_PERSON_WORDS = {"image", "img", "file", "filename", "photo", "picture", "frame", "row", "index", "sample",
                     "record", "video", "clip", "path", "session", "shot", "sequence"}
# A column named like a record id or a path (image_id, row_index, file) that is not a person: a key, not a
# label; left out (an int image id would otherwise pass for a regression target).
_ID_WORDS = {"id", "idx", "index", "uuid", "path", "file", "filename", "url"}


def plan(raw: RawSet, not_tasks: dict, spec: dict, task_file: str | None) -> tuple[dict, str | None, dict]:
    """({column: kind or None}, identity column, {column: why}) from the values present in `raw`."""
    cols_spec = spec.get("columns", {})
    kinds, why = {}, {}
    candidates = list(raw.labels)
    ignored = {c for c in candidates if cols_spec.get(c, {}).get("ignore")}
    for c in cols_spec:
        if cols_spec[c].get("ignore"):  # also those a reader was told to skip
            why[c] = "ignored by the task file"
    for c in candidates:
        if c in not_tasks and c not in cols_spec:
            ignored.add(c)
            why[c] = not_tasks[c]

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


def _words(name: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower())) - {""}


def looks_like_identity(name: str) -> bool:
    """A column named like a person id: identity, id, person, subject_id, personId (not image_id, file_id)."""
    words = _words(name)
    return bool(words & _IDENTITY_WORDS) and not words & _NOT_PERSON_WORDS


def class_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.unique(values, return_counts=True)


def _identity_problem(values: np.ndarray) -> str | None:
    ids, counts = class_counts(values)
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
    classes, counts = class_counts(finite)
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


def encode_classes(col: str, values: np.ndarray, names: tuple[str, ...] | None, wheres, issues: RowIssues,
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


def as_float(col: str, values: np.ndarray, wheres, issues: RowIssues) -> np.ndarray:
    """A regression column as float32; a cell that is not a number is a bad row (NaN if dropped)."""
    if np.issubdtype(values.dtype, np.number) or values.dtype == bool:
        return values.astype(np.float32)
    out = np.full(values.shape, np.nan, np.float32)
    for i, v in enumerate(values.tolist()):
        x = parse_float(str(v))
        if x is None:
            issues.bad(i, wheres[i], "bad_label", f"column {col!r} has {v!r}, expected a number (regression)")
        else:
            out[i] = x
    return out
