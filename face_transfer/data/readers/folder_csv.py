"""An image folder with a CSV of relative image paths and label columns: the reader, and the task-set format
"folder_csv", which types each column (int, float or text) from its values and decodes only the chosen rows.
"""
from __future__ import annotations

import csv
import dataclasses
import os
from typing import Mapping, Sequence

import numpy as np

from face_transfer.data.imageio import (DEFAULT_IMAGE_SIZE, DataError, ItemErrors, ReadReport, check_image_size,
                                        error_kind, stack_images)
from face_transfer.data.kinds import plan
from face_transfer.data.readers import (RawSet, RowIssues, on_error_of, parse_float, parse_int, read_canonical,
                                        register_reader)
from face_transfer.data.taskfile import check_columns_exist

# Share of a CSV column's values that must parse as numbers for it to be numeric; the other values are
# then bad labels (a typo in an age column), not a hint that the column is text.
NUMERIC_SHARE = 0.9


def read_csv_rows(csv_path: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """(header, [(line number, row dict)]) of a CSV with a header row; DataError naming the file if unreadable."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            return header, [(reader.line_num, row) for row in reader]
    except OSError as e:
        raise DataError(f"{csv_path}: cannot open CSV file ({e.strerror or e})") from e
    except (csv.Error, UnicodeDecodeError) as e:
        raise DataError(f"{csv_path}: not a readable CSV file ({e})") from e


def _infer_column_kinds(rows: list[tuple[int, dict]], columns: Sequence[str]) -> dict[str, str]:
    """Per column: "int" if every value parses as int, else "float" (bad values are caught later)."""
    kinds = {}
    for col in columns:
        values = [row.get(col) for _, row in rows]
        present = [v for v in values if v not in (None, "") and parse_float(v) is not None]
        kinds[col] = "int" if present and all(parse_int(v) is not None for v in present) else "float"
    return kinds


def read_image_folder_csv(
    root: str | os.PathLike,
    csv_path: str | os.PathLike,
    image_column: str = "image",
    label_columns: Sequence[str] | Mapping[str, str] | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    on_error: str = "raise",
    align: bool = False,
    limit: int | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], ReadReport]:
    """Reads images listed by relative path (under ``root``) in a CSV with a header row.

    ``label_columns``: ``None`` takes every column but ``image_column``; a list of names has
    each column's type inferred (all values integers -> int64 classification labels,
    otherwise float32); a dict ``{name: "int" | "float"}`` fixes the types. A value that
    does not parse as its column's type is a bad row (never coerced). ``align=True`` runs
    face detection + alignment on every image instead of a centre crop. ``limit`` keeps
    the first ``limit`` good rows.
    """
    check_image_size(image_size)
    root, csv_path = os.fspath(root), os.fspath(csv_path)
    report = ReadReport(source=csv_path)
    errors = ItemErrors(report, on_error)
    header, rows = read_csv_rows(csv_path)
    if not header:
        raise DataError(f"{csv_path}: empty CSV, expected a header row with an {image_column!r} column")

    if isinstance(label_columns, Mapping):
        kinds = dict(label_columns)
        for col, kind in kinds.items():
            if kind not in ("int", "float"):
                raise ValueError(f"label_columns[{col!r}] must be 'int' or 'float', got {kind!r}")
    else:
        names = [c for c in header if c != image_column] if label_columns is None else list(label_columns)
        kinds = None
    wanted = [image_column] + (list(kinds) if kinds is not None else names)
    missing = [c for c in wanted if c not in header]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {missing}; the header has {header}")
    if kinds is None:
        kinds = _infer_column_kinds(rows, names)

    images: list[np.ndarray] = []
    values: dict[str, list] = {col: [] for col in kinds}
    for line, row in rows:
        if limit is not None and len(images) >= limit:
            break
        where = f"{csv_path} line {line}"
        if None in row:
            errors.bad(where, "malformed_row", f"expected {len(header)} fields, found more")
            continue
        path = _image_path(root, row, image_column, where, errors)
        if path is None:
            continue
        parsed, problem = {}, None
        for col, kind in kinds.items():
            text = row.get(col)
            if text is None or text.strip() == "":
                problem = ("missing_value", f"column {col!r} is empty (expected {kind})")
                break
            value = parse_int(text) if kind == "int" else parse_float(text)
            if value is None:
                problem = ("bad_label", f"column {col!r} has {text!r}, expected {'an int' if kind == 'int' else 'a finite float'}")
                break
            parsed[col] = value
        if problem:
            errors.bad(where, *problem)
            continue
        image = _read_image(path, where, image_size, align, errors)
        if image is None:
            continue
        images.append(image)
        for col, value in parsed.items():
            values[col].append(value)
        report.kept_sources.append(path)
    errors.finish()
    labels = {
        col: np.asarray(vals, dtype=np.int64 if kinds[col] == "int" else np.float32)
        for col, vals in values.items()
    }
    return stack_images(images, image_size), labels, report


def _image_path(root: str, row: dict, image_column: str, where: str, errors: ItemErrors) -> str | None:
    rel = (row.get(image_column) or "").strip()
    if not rel:
        errors.bad(where, "missing_value", f"empty {image_column!r} (expected a relative image path)")
        return None
    return os.path.join(root, rel)


def _read_image(path: str, where: str, image_size: int, align: bool, errors: ItemErrors) -> np.ndarray | None:
    try:
        return read_canonical(path, image_size, align)
    except DataError as e:
        errors.bad(where, error_kind(e), str(e))
        return None


# --------------------------------------------------------------------------- the task-set format


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
    issues: RowIssues
    capped: bool = False
    columns: list[str] = dataclasses.field(default_factory=list)  # every column but the image's


def _parse_folder_csv(cfg, drop: bool, spec: dict) -> _CsvTable:
    """Labels parsed here: the reader knows ints and floats only, user CSVs also hold text classes and
    person ids. A column is numeric when >= NUMERIC_SHARE of its values are numbers (or the task file says
    regression); then the other values are bad labels, reported only if the column turns out to be a task."""
    root, csv_path = _csv_paths(cfg.path)
    image_column = spec.get("image_column", "image")
    header, rows = read_csv_rows(csv_path)
    if image_column not in header:
        raise DataError(f"{csv_path}: no {image_column!r} column (the relative image paths); the header has "
                        f"{header}" + ("" if cfg.task_file else "; name it with a task file's 'image_column'"))
    check_columns_exist(spec, [c for c in header if c != image_column], cfg.task_file)
    if not rows:
        raise DataError(f"{csv_path}: no data rows under the header")
    capped = cfg.max_images is not None and len(rows) > cfg.max_images
    if capped:
        pick = np.random.default_rng([cfg.seed, len(rows)]).choice(len(rows), cfg.max_images, replace=False)
        rows = [rows[i] for i in np.sort(pick)]
    cols_spec = spec.get("columns", {})
    columns = [c for c in header if c != image_column and not cols_spec.get(c, {}).get("ignore", False)]
    t = _CsvTable(csv_path, root, image_column, rows, [f"{csv_path} line {line}" for line, _ in rows],
                  {}, {}, {}, {}, {}, RowIssues(drop), capped, [c for c in header if c != image_column])
    for i, (_, row) in enumerate(rows):
        if None in row:  # more fields than the header
            t.issues.bad(i, t.wheres[i], "malformed_row", f"expected {len(header)} fields, found more")
    for c in columns:
        values = [(row.get(c) or "").strip() for _, row in rows]
        empty = np.array([v == "" for v in values])
        numbers = [parse_float(v) for v in values]
        present = [x for x, e in zip(numbers, empty) if not e]
        share = float(np.mean([x is not None for x in present])) if present else 0.0
        forced = cols_spec.get(c, {}).get("kind")
        numeric = forced in ("regression", "landmarks") or (forced is None and share >= NUMERIC_SHARE)
        bad = np.array([not e and x is None for x, e in zip(numbers, empty)]) if numeric \
            else np.zeros(len(values), bool)
        ints = all(parse_int(v) is not None for v, e, b in zip(values, empty, bad) if not e and not b)
        if ints and (numeric or present):
            arr = np.array([parse_int(v) if not (e or b) else 0 for v, e, b in zip(values, empty, bad)],
                           np.int64)
        elif numeric:
            arr = np.array([x if x is not None else np.nan for x in numbers], np.float64)
        else:
            arr = np.array(values, dtype=str)
        t.labels[c], t.empty[c], t.bad[c], t.is_int[c], t.text[c] = arr, empty, bad, bool(ints), values
    return t


def _decode(t: _CsvTable, keep: np.ndarray, size: int, cfg, drop: bool) -> RawSet:
    """Decodes the images of the kept rows (a row whose image is unreadable is bad, or dropped)."""
    check_image_size(size)
    report = ReadReport(source=t.csv_path)
    errors = ItemErrors(report, on_error_of(drop))
    images, kept = [], []
    for i in keep:
        row, where = t.rows[i][1], t.wheres[i]
        path = _image_path(t.root, row, t.image_column, where, errors)
        image = None if path is None else _read_image(path, where, size, cfg.align, errors)
        if image is None:
            continue
        images.append(image)
        kept.append(i)
        report.kept_sources.append(where)
    errors.finish(warn=False)  # read_task_set warns once for the whole set
    kept = np.asarray(kept, np.int64)
    # Cells of ignored columns may be empty: the plan on the decoded rows looks at present values only.
    return RawSet(stack_images(images, size), {c: v[kept] for c, v in t.labels.items()}, list(report.kept_sources),
                  report, {c: (t.empty[c] | t.bad[c])[kept] for c in t.labels}, t.capped, source=t.csv_path,
                  columns=t.columns)


@register_reader("folder_csv", image_column=True,
                 selection="a seeded random subset of max_images rows, chosen before decoding: user CSVs are "
                           "often sorted by class or person, so the first N could hold a single class")
def read(cfg, size: int, drop: bool, spec: dict) -> RawSet:
    t = _parse_folder_csv(cfg, drop, spec)
    # Plan on the parsed labels first: an empty cell or a stray non-number fails a row only in a column
    # that is a task (a free-text notes column with gaps must not), and only chosen rows get decoded.
    pre = RawSet(np.zeros((0,), np.uint8), dict(t.labels), t.wheres, ReadReport(source=t.csv_path),
                 {c: t.empty[c] | t.bad[c] for c in t.labels})
    kinds, _, _ = plan(pre, {}, spec, cfg.task_file)
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
    raw = _decode(t, keep, size, cfg, drop)
    raw.report.skipped = skipped + raw.report.skipped
    return raw
