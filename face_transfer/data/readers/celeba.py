"""CelebA: list_attr_celeba.txt (40 attributes of 1/-1) and the images it names; identity_CelebA.txt adds ids.
Owns the attribute file reader and the task-set format "celeba" (every attribute a no/yes class).
"""
from __future__ import annotations

import os
import warnings
from typing import Sequence

import numpy as np

from face_transfer.data.imageio import (DEFAULT_IMAGE_SIZE, DataError, ItemErrors, ReadReport, check_image_size,
                                        error_kind, stack_images)
from face_transfer.data.readers import (RawSet, RowIssues, call_reader, drop_rows, is_capped, on_error_of,
                                        parse_int, read_canonical, register_reader)


def read_celeba_attributes(
    attr_path: str | os.PathLike,
    image_dir: str | os.PathLike,
    attributes: Sequence[str] | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    on_error: str = "raise",
    align: bool = False,
    limit: int | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], ReadReport]:
    """Reads CelebA's ``list_attr_celeba.txt`` and the images it names in ``image_dir``.

    File layout: line 1 the image count, line 2 the 40 attribute names, then one line per
    image: ``000001.jpg -1 1 ...`` with values 1 / -1. Labels: ``{attribute.lower(): int64 0/1}``;
    ``attributes`` (case-insensitive) keeps a subset. The count on line 1 must match the lines.
    """
    check_image_size(image_size)
    attr_path, image_dir = os.fspath(attr_path), os.fspath(image_dir)
    report = ReadReport(source=attr_path)
    errors = ItemErrors(report, on_error)
    try:
        with open(attr_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise DataError(f"{attr_path}: cannot open CelebA attribute file ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{attr_path}: not a text file ({e})") from e
    if len(lines) < 2:
        raise DataError(f"{attr_path}: expected an image count on line 1 and attribute names on line 2")
    count = parse_int(lines[0])
    if count is None or count < 0:
        raise DataError(f"{attr_path} line 1: {lines[0]!r}, expected the number of images")
    names = lines[1].split()
    if not names or any(parse_int(n) is not None or n.lower().endswith((".jpg", ".png")) for n in names):
        raise DataError(f"{attr_path} line 2: expected attribute names (e.g. '5_o_Clock_Shadow Arched_Eyebrows ...')")
    lower = [n.lower() for n in names]
    if attributes is None:
        keep = list(range(len(names)))
    else:
        wanted = [a.lower() for a in attributes]
        unknown = [a for a in wanted if a not in lower]
        if unknown:
            raise ValueError(f"unknown CelebA attribute(s) {unknown}; {attr_path} has {names}")
        keep = [lower.index(a) for a in wanted]

    images, rows = [], []
    data_lines = [(i + 1, line) for i, line in enumerate(lines) if i >= 2 and line.strip()]
    if len(data_lines) != count:
        message = f"line 1 says {count} images but {len(data_lines)} image lines follow (truncated file?)"
        if on_error == "raise":
            raise DataError(f"{attr_path}: {message}")
        warnings.warn(f"{attr_path}: {message}", stacklevel=2)
    for line_no, line in data_lines:
        if limit is not None and len(images) >= limit:
            break
        where = f"{attr_path} line {line_no}"
        parts = line.split()
        values = [parse_int(v) for v in parts[1:]]
        if len(parts) != len(names) + 1 or any(v not in (1, -1) for v in values):
            errors.bad(
                where, "malformed_line",
                f"expected an image file name and {len(names)} values of 1/-1, found {line.strip()[:80]!r}",
            )
            continue
        path = os.path.join(image_dir, parts[0])
        try:
            image = read_canonical(path, image_size, align)
        except DataError as e:
            errors.bad(where, error_kind(e), str(e))
            continue
        images.append(image)
        rows.append([values[j] for j in keep])
        report.kept_sources.append(path)
    errors.finish()
    table = (np.asarray(rows, np.int64).reshape(-1, len(keep)) > 0).astype(np.int64)
    labels = {lower[j]: table[:, k] for k, j in enumerate(keep)}
    return stack_images(images, image_size), labels, report


@register_reader("celeba", default_class_names=("no", "yes"),
                 selection="the first max_images lines of list_attr_celeba.txt: its order is the image id, "
                           "unrelated to the labels, and reading stops there, so a 200k-image CelebA costs "
                           "max_images decodes")
def read(cfg, size: int, drop: bool, spec: dict) -> RawSet:
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
    images, labels, report = call_reader(read_celeba_attributes, attr, image_dir, image_size=size,
                                         on_error=on_error_of(drop), align=cfg.align, limit=cfg.max_images)
    raw = RawSet(images, dict(labels), list(report.kept_sources), report, capped=is_capped(cfg, report))
    id_path = os.path.join(folder, "identity_CelebA.txt")
    if os.path.isfile(id_path):
        _celeba_identities(id_path, raw, drop)
    return raw


def _celeba_identities(id_path: str, raw: RawSet, drop: bool):
    """Adds CelebA's person ids (identity_CelebA.txt: '000001.jpg 2880' per line) as the `identity` column."""
    ids = {}
    with open(id_path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parse_int(parts[1]) is None:
                raise DataError(f"{id_path} line {line_no}: expected '<image file> <person id>', "
                                f"found {line.strip()[:80]!r}")
            ids[parts[0]] = int(parts[1])
    issues = RowIssues(drop)
    out = np.zeros(len(raw.wheres), np.int64)
    for i, where in enumerate(raw.wheres):
        name = os.path.basename(where)
        if name in ids:
            out[i] = ids[name]
        else:
            issues.bad(i, where, "missing_value", f"no line for {name} in {id_path} (expected its person id)")
    raw.labels["identity"] = out
    drop_rows(raw, issues)
