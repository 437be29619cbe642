"""Dataset formats a task set can be read from, one module each (celeba.py, fer2013.py, ...), in one registry.
Owns the reader contract (DatasetReader, RawSet), register_reader, and the row helpers every format shares.

A format is one new module in this package: a function `read(cfg, image_size, drop, spec) -> RawSet`
decorated with `@register_reader("name", selection=...)`. `cfg` is the data.tasksets.TaskSetConfig (path,
max_images, seed, align), `drop` says whether bad rows are dropped (else DataError naming the file and row)
and `spec` is the task file's content. data/tasksets.py finds the format by name; nothing else changes.
"""
from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Callable, Mapping

import numpy as np

from face_transfer.core.registry import Registry
from face_transfer.data import align as align_lib
from face_transfer.data.imageio import DataError, ReadReport, SkippedItem, center_square_resize, load_image

READERS = Registry("dataset format", package="face_transfer.data.readers")


@dataclasses.dataclass(frozen=True)
class DatasetReader:
    """A registered dataset format: its reader and what the format itself says about its columns."""

    name: str
    read: Callable  # (cfg, image_size, drop, spec) -> RawSet
    # How max_images picks the rows (stored in taskset.json's "selection").
    selection: str
    # Class names the format documents for a column (label value i -> name i).
    class_names: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    # Class names of every other classification column (CelebA: all attributes are no/yes).
    default_class_names: tuple[str, ...] | None = None
    # Columns that are not facial attributes, with why (left out unless a task file names them).
    not_tasks: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Whether a task file's "image_column" applies (the format names its image column).
    image_column: bool = False
    # Why align=True is refused (None: alignment is supported).
    no_align: str | None = None

    def class_names_for(self, col: str) -> tuple[str, ...] | None:
        if col in self.class_names:
            return tuple(self.class_names[col])
        return self.default_class_names if col != "identity" else None


def register_reader(name: str, *, selection: str, class_names=None, default_class_names=None, not_tasks=None,
                    image_column: bool = False, no_align: str | None = None):
    """`@register_reader("name", selection=...)` on a `read(cfg, image_size, drop, spec) -> RawSet` function."""

    def add(fn):
        READERS.register(name, DatasetReader(name, fn, selection, dict(class_names or {}), default_class_names,
                                             dict(not_tasks or {}), image_column, no_align))
        return fn

    return add


def get_reader(name: str) -> DatasetReader:
    return READERS.get(name)


def format_names() -> tuple[str, ...]:
    return READERS.names()


@dataclasses.dataclass
class RawSet:
    """What a format reader produced, before inference: rows aligned across images, labels and wheres."""

    images: np.ndarray
    labels: dict[str, np.ndarray]
    wheres: list[str]  # where each kept row came from (file + line/record, or the image path)
    report: ReadReport
    missing: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # col -> bool [N]: no value
    capped: bool = False  # max_images left some of the dataset unread
    source: str | None = None  # the file the rows came from, for messages and the meta (None: cfg.path)
    # The columns a task file may name (None: the labels' keys); a reader that leaves some out lists them all.
    columns: list[str] | None = None


class RowIssues:
    """Bad rows found after a reader ran: raise DataError at once, or (drop_bad_rows) collect them."""

    def __init__(self, drop: bool):
        self.drop = drop
        self.items: dict[int, SkippedItem] = {}

    def bad(self, row: int, where: str, kind: str, message: str):
        message = message if message.startswith(where) else f"{where}: {message}"
        if not self.drop:
            raise DataError(message)
        self.items.setdefault(row, SkippedItem(where=where, kind=kind, message=message))


def drop_rows(raw: RawSet, issues: RowIssues):
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


def call_reader(fn, *args, translate=None, **kwargs):
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


def translated_report(report: ReadReport, source: str, translate) -> ReadReport:
    out = ReadReport(source=source, kept_sources=[translate(s) for s in report.kept_sources])
    out.skipped = [SkippedItem(translate(s.where), s.kind, translate(s.message)) for s in report.skipped]
    return out


def on_error_of(drop: bool) -> str:
    return "skip" if drop else "raise"


def is_capped(cfg, report: ReadReport) -> bool:
    # A reader with `limit` stops once it kept that many rows: then more may follow unread.
    return cfg.max_images is not None and report.n_kept >= cfg.max_images


# --------------------------------------------------------------------------- cells and images


_INT_TEXT = re.compile(r"^[+-]?\d+$")


def parse_int(text: str) -> int | None:
    text = text.strip()
    return int(text) if _INT_TEXT.match(text) else None


def parse_float(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def canonical_crop(image: np.ndarray, image_size: int, align: bool, where: str) -> np.ndarray:
    """The face crop of a decoded image: detected and aligned, or (already a face crop) centre-cropped."""
    if align:
        return align_lib.align_largest_face(image, size=image_size, where=where)
    return center_square_resize(image, image_size)


def read_canonical(path: str, image_size: int, align: bool) -> np.ndarray:
    return canonical_crop(load_image(path), image_size, align, where=path)
