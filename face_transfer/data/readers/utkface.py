"""UTKFace: a folder of face crops whose file names hold the labels (age_gender_race_date.jpg), and the
task-set format "utkface". Owns the name pattern and the gender convention (0 = female, 1 = male).
"""
from __future__ import annotations

import os
import re
import tempfile

import numpy as np

from face_transfer.data.imageio import (DEFAULT_IMAGE_SIZE, IMAGE_SUFFIXES, DataError, ItemErrors, ReadReport,
                                        check_image_size, error_kind, stack_images)
from face_transfer.data.readers import (RawSet, call_reader, on_error_of, read_canonical, register_reader,
                                        translated_report)

# UTKFace race codes (from the dataset's README); gender is converted, see read_utkface_folder.
UTK_RACES = ("white", "black", "asian", "indian", "others")
AGE_RANGE = (0, 120)  # years: anything outside is a typo in a label, not a person
_UTK_NAME = re.compile(
    r"^(?P<age>\d{1,3})_(?P<gender>[01])_(?P<race>[0-4])_(?P<date>\d+)"
    r"\.(?:jpg|jpeg|png)(?:\.chip\.jpg)?$",
    re.IGNORECASE,
)

def parse_utkface_name(name: str) -> dict[str, float | int] | None:
    """Labels from a UTKFace file name ``age_gender_race_date.jpg[.chip.jpg]``, or None if it does not match.

    Gender is converted to the package's convention 0 = female, 1 = male (UTKFace uses 0 = male, 1 = female).
    """
    match = _UTK_NAME.match(os.path.basename(name))
    if match is None:
        return None
    return {
        "age": float(match["age"]),
        "gender": 1 - int(match["gender"]),
        "race": int(match["race"]),
    }


def read_utkface_folder(
    folder: str | os.PathLike,
    image_size: int = DEFAULT_IMAGE_SIZE,
    on_error: str = "raise",
    align: bool = False,
    recursive: bool = False,
    limit: int | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], ReadReport]:
    """Reads a UTKFace folder; labels come from file names ``age_gender_race_date.jpg(.chip.jpg)``.

    Labels: ``age`` float32 (years), ``gender`` int64 in the package's convention
    **0 = female, 1 = male** (UTKFace's own names use 0 = male, 1 = female; we flip it),
    ``race`` int64 (UTK_RACES: 0 white, 1 black, 2 asian, 3 indian, 4 others). Files with an
    image suffix whose name does not match the pattern are bad items; hidden and non-image
    files are ignored. Files are read in sorted order.
    """
    check_image_size(image_size)
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: not a directory (expected a UTKFace image folder)")
    report = ReadReport(source=folder)
    errors = ItemErrors(report, on_error)
    if recursive:
        candidates = [os.path.join(d, n) for d, _, files in os.walk(folder) for n in files]
    else:
        candidates = [os.path.join(folder, n) for n in os.listdir(folder)]
    paths = sorted(
        p for p in candidates
        if os.path.isfile(p) and not os.path.basename(p).startswith(".")
        and os.path.basename(p).lower().endswith(IMAGE_SUFFIXES)
    )
    if not paths:
        raise DataError(f"{folder}: no image files found (expected UTKFace files like '25_0_2_20170116174525125.jpg.chip.jpg')")
    images, ages, genders, races = [], [], [], []
    for path in paths:
        if limit is not None and len(images) >= limit:
            break
        parsed = parse_utkface_name(path)
        if parsed is None:
            errors.bad(
                path, "bad_name",
                "file name does not match UTKFace's 'age_gender_race_date.jpg[.chip.jpg]' "
                "(age int, gender 0/1, race 0..4)",
            )
            continue
        if not AGE_RANGE[0] <= parsed["age"] <= AGE_RANGE[1]:
            errors.bad(path, "bad_label", f"age {parsed['age']:.0f} in the file name is outside "
                                          f"{AGE_RANGE[0]}..{AGE_RANGE[1]} years")
            continue
        try:
            image = read_canonical(path, image_size, align)
        except DataError as e:
            errors.bad(path, error_kind(e), str(e))
            continue
        images.append(image)
        ages.append(parsed["age"])
        genders.append(parsed["gender"])
        races.append(parsed["race"])
        report.kept_sources.append(path)
    errors.finish()
    labels = {
        "age": np.asarray(ages, np.float32),
        "gender": np.asarray(genders, np.int64),
        "race": np.asarray(races, np.int64),
    }
    return stack_images(images, image_size), labels, report


def _image_files(folder: str) -> list[str]:
    # The same files read_utkface_folder considers (it lists the folder, non-recursively).
    return sorted(n for n in os.listdir(folder)
                  if not n.startswith(".") and os.path.isfile(os.path.join(folder, n))
                  and n.lower().endswith(IMAGE_SUFFIXES))


# gender's names follow the reader's convention, flipped from UTKFace's own
@register_reader("utkface", class_names={"gender": ("female", "male"), "race": UTK_RACES},
                 selection="a seeded random subset of max_images files, chosen before decoding: the reader "
                           "orders UTKFace's files by name, which sorts them by age, so the first N would all be "
                           "children")
def read(cfg, size: int, drop: bool, spec: dict) -> RawSet:
    folder = cfg.path
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: not a directory (expected a UTKFace image folder)")
    names = _image_files(folder)
    if cfg.max_images is None or len(names) <= cfg.max_images:
        images, labels, report = call_reader(read_utkface_folder, folder, image_size=size,
                                             on_error=on_error_of(drop), align=cfg.align)
        return RawSet(images, dict(labels), list(report.kept_sources), report)
    pick = np.sort(np.random.default_rng([cfg.seed, len(names)]).choice(len(names), cfg.max_images,
                                                                        replace=False))
    with tempfile.TemporaryDirectory(prefix="taskset_utk_") as view:
        # A folder of links to the chosen files: the reader reads exactly those, in name order.
        for i in pick:
            os.symlink(os.path.abspath(os.path.join(folder, names[i])), os.path.join(view, names[i]))

        def translate(text: str) -> str:
            return text.replace(view, os.path.normpath(folder))

        images, labels, report = call_reader(read_utkface_folder, view, image_size=size,
                                             on_error=on_error_of(drop), align=cfg.align, translate=translate)
        report = translated_report(report, folder, translate)
    return RawSet(images, dict(labels), list(report.kept_sources), report, capped=True)
