"""FER2013: one CSV of 48x48 gray faces (emotion,pixels,Usage), and the task-set format "fer2013".
Owns FER's class order and its mapping to the package's EXPRESSIONS.
"""
from __future__ import annotations

import csv
import os
from typing import Sequence

import numpy as np

from face_transfer.data.imageio import (DEFAULT_IMAGE_SIZE, DataError, ItemErrors, ReadReport, center_square_resize,
                                        check_image_size, stack_images)
from face_transfer.data.readers import RawSet, call_reader, is_capped, on_error_of, parse_int, register_reader
from face_transfer.data.vocab import EXPRESSIONS

# FER2013's own class order, as in its `emotion` column.
FER_EXPRESSIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# FER_TO_OURS[fer_label] == our label for the same expression.
FER_TO_OURS = np.array([EXPRESSIONS.index(name) for name in FER_EXPRESSIONS], dtype=np.int64)
FER_USAGES = ("Training", "PublicTest", "PrivateTest")
FER_SIDE = 48


def fer_to_our_expression(labels: np.ndarray) -> np.ndarray:
    """Maps FER2013 expression labels (FER_EXPRESSIONS order) to the package's EXPRESSIONS order."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(FER_EXPRESSIONS)):
        raise ValueError(f"FER2013 expression labels must be in 0..6, got range {labels.min()}..{labels.max()}")
    return FER_TO_OURS[labels.astype(np.int64)]


def read_fer2013_csv(
    path: str | os.PathLike,
    usage: str | Sequence[str] | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    on_error: str = "raise",
    limit: int | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], ReadReport]:
    """Reads the FER2013 CSV (``emotion,pixels,Usage``; pixels = 2304 gray values of a 48x48 face).

    Images are resized to ``image_size`` and made RGB by repeating the gray channel. Labels:
    ``expression`` int64 in FER order (0 angry, 1 disgust, 2 fear, 3 happy, 4 sad,
    5 surprise, 6 neutral; map with :func:`fer_to_our_expression`) and ``usage`` (str; empty
    if the file has no Usage column). ``usage`` keeps only rows of those Usage values.
    """
    check_image_size(image_size)
    path = os.fspath(path)
    if isinstance(usage, str):
        usage = (usage,)
    if usage is not None:
        unknown = [u for u in usage if u not in FER_USAGES]
        if unknown:
            raise ValueError(f"usage must be among {FER_USAGES}, got {unknown}")
    report = ReadReport(source=path)
    errors = ItemErrors(report, on_error)
    images, expressions, usages = [], [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            missing = [c for c in ("emotion", "pixels") if c not in header]
            if missing:
                raise DataError(
                    f"{path}: missing column(s) {missing}; expected the FER2013 header "
                    f"'emotion,pixels,Usage', found {header}"
                )
            if usage is not None and "Usage" not in header:
                raise DataError(f"{path}: usage={list(usage)} was asked but the file has no 'Usage' column")
            for row in reader:
                if limit is not None and len(images) >= limit:
                    break
                where = f"{path} line {reader.line_num}"
                row_usage = (row.get("Usage") or "").strip()
                if usage is not None and row_usage not in usage:
                    continue
                emotion = parse_int(row.get("emotion") or "")
                if emotion is None or not 0 <= emotion < len(FER_EXPRESSIONS):
                    errors.bad(where, "bad_label", f"emotion {row.get('emotion')!r}, expected an int in 0..6")
                    continue
                fields = (row.get("pixels") or "").split()
                if len(fields) != FER_SIDE * FER_SIDE:
                    errors.bad(
                        where, "bad_pixels",
                        f"pixels has {len(fields)} values, expected {FER_SIDE * FER_SIDE} (48x48 gray)",
                    )
                    continue
                try:
                    pixels = np.array([int(v) for v in fields], dtype=np.int64)
                except ValueError:
                    errors.bad(where, "bad_pixels", "pixels must be space-separated integers 0..255")
                    continue
                if pixels.min() < 0 or pixels.max() > 255:
                    errors.bad(where, "bad_pixels", f"pixel values in {pixels.min()}..{pixels.max()}, expected 0..255")
                    continue
                gray = pixels.astype(np.uint8).reshape(FER_SIDE, FER_SIDE)
                images.append(center_square_resize(gray, image_size))
                expressions.append(emotion)
                usages.append(row_usage)
                report.kept_sources.append(where)
    except OSError as e:
        raise DataError(f"{path}: cannot open FER2013 CSV ({e.strerror or e})") from e
    except (csv.Error, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from e
    errors.finish()
    labels = {"expression": np.asarray(expressions, np.int64), "usage": np.asarray(usages, dtype=str)}
    return stack_images(images, image_size), labels, report


@register_reader("fer2013", class_names={"expression": FER_EXPRESSIONS},
                 not_tasks={"usage": "FER2013's Usage column is the dataset's own train/test split, not a facial "
                                     "attribute"},
                 no_align="FER2013 faces are already 48x48 crops with no room for a detector",
                 selection="the first max_images rows: FER2013's rows are shuffled within its Usage blocks, "
                           "and reading stops there")
def read(cfg, size: int, drop: bool, spec: dict) -> RawSet:
    images, labels, report = call_reader(read_fer2013_csv, cfg.path, image_size=size,
                                         on_error=on_error_of(drop), limit=cfg.max_images)
    return RawSet(images, dict(labels), list(report.kept_sources), report, capped=is_capped(cfg, report))
