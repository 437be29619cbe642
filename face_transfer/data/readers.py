"""Readers that turn a user's face dataset on disk into the package's common form.

Owns the formats (image folder + CSV, FER2013 CSV, CelebA attributes, UTKFace names, TFRecord), DataError and ReadReport.

Every reader returns ``(images, labels, report)``: ``images`` is uint8 ``[N, S, S, 3]``,
``labels`` maps a label name to an array with N rows, and ``report`` says what was read and
what was skipped and why. Bad input raises :class:`DataError` naming the file and the
row/line/record; with ``on_error="skip"`` the item is left out, counted in the report and a
warning summarises the count. No reader ever guesses a label.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
import warnings
from collections import Counter
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

DEFAULT_IMAGE_SIZE = 64
ON_ERROR_CHOICES = ("raise", "skip")

# FER2013's own class order, as in its `emotion` column.
FER_EXPRESSIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# The package's expression order (the synthetic faces and the task registry use it).
EXPRESSIONS = ("neutral", "happy", "sad", "surprise", "angry", "disgust", "fear")
# FER_TO_OURS[fer_label] == our label for the same expression.
FER_TO_OURS = np.array([EXPRESSIONS.index(name) for name in FER_EXPRESSIONS], dtype=np.int64)
FER_USAGES = ("Training", "PublicTest", "PrivateTest")
FER_SIDE = 48

# UTKFace race codes (from the dataset's README); gender is converted, see read_utkface_folder.
UTK_RACES = ("white", "black", "asian", "indian", "others")
AGE_RANGE = (0, 120)  # years: anything outside is a typo in a label, not a person
_UTK_NAME = re.compile(
    r"^(?P<age>\d{1,3})_(?P<gender>[01])_(?P<race>[0-4])_(?P<date>\d+)"
    r"\.(?:jpg|jpeg|png)(?:\.chip\.jpg)?$",
    re.IGNORECASE,
)
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Feature-name suffix under which write_tfrecord stores the per-example shape of a label
# with more than one dimension (e.g. landmarks [5, 2]); tf.train.Example lists are flat.
_SHAPE_SUFFIX = "/shape"


class DataError(ValueError):
    """Input data that cannot be read as the expected format; the message names where."""


class NoFaceError(DataError):
    """A photo in which face detection found no face (raised by face_transfer.data.align)."""


@dataclasses.dataclass(frozen=True)
class SkippedItem:
    """One item left out by ``on_error="skip"``: where it is, a short kind, and the full reason."""

    where: str
    kind: str
    message: str


@dataclasses.dataclass
class ReadReport:
    """What a reader read: the kept items' sources (aligned with the returned rows) and the skips.

    Mutable on purpose: a reader fills it while it reads.
    """

    source: str
    kept_sources: list[str] = dataclasses.field(default_factory=list)
    skipped: list[SkippedItem] = dataclasses.field(default_factory=list)

    @property
    def n_kept(self) -> int:
        return len(self.kept_sources)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def skipped_by_kind(self) -> dict[str, int]:
        return dict(Counter(item.kind for item in self.skipped))

    def summary(self) -> str:
        text = f"{self.source}: kept {self.n_kept}, skipped {self.n_skipped}"
        if self.skipped:
            kinds = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped_by_kind().items()))
            text += f" ({kinds}; first: {self.skipped[0].message})"
        return text


class _Errors:
    """Raises or records a bad item according to on_error, so each reader has one code path."""

    def __init__(self, report: ReadReport, on_error: str):
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
        self.report = report
        self.on_error = on_error

    def bad(self, where: str, kind: str, expected: str) -> None:
        # Errors from image decoding already start with the file name.
        message = expected if expected.startswith(where) else f"{where}: {expected}"
        if self.on_error == "raise":
            raise (NoFaceError if kind == "no_face" else DataError)(message)
        self.report.skipped.append(SkippedItem(where=where, kind=kind, message=message))

    def finish(self) -> None:
        if self.report.skipped:
            warnings.warn(f"skipped bad items: {self.report.summary()}", stacklevel=3)
        if not self.report.kept_sources:
            raise DataError(f"{self.report.source}: no usable items were found ({self.report.summary()})")


# --------------------------------------------------------------------------- images


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decodes an image file fully into uint8 [H, W, 3] RGB; DataError names the file if it cannot."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot open image file ({e.strerror or e})") from e
    return decode_image_bytes(data, where=path)


def decode_image_bytes(data: bytes, where: str) -> np.ndarray:
    """Decodes encoded image bytes (JPEG, PNG, ...) into uint8 [H, W, 3] RGB."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            # load() forces the full decode: Image.open only reads the header, so a
            # truncated JPEG would otherwise pass here and fail (or be padded) later.
            img.load()
            if img.mode not in ("RGB", "L"):
                if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                    # 16-bit grays: PIL's convert("L") clips instead of scaling.
                    arr = np.asarray(img, dtype=np.float64)
                    img = Image.fromarray((arr / max(arr.max(), 1.0) * 255.0).astype(np.uint8))
                else:
                    img = img.convert("RGB")
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(
            f"{where}: not a readable image (expected a complete JPEG/PNG file; {type(e).__name__}: {e})"
        ) from e
    return _as_rgb(arr)


def _as_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])


def center_square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crops to a square and resizes to size x size (antialiased); uint8 [size, size, 3].

    For datasets whose images are already face crops (CelebA's img_align_celeba, UTKFace chips,
    FER2013); raw photos should go through alignment instead.
    """
    image = _as_rgb(np.asarray(image, dtype=np.uint8))
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(crop)
    resized = Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def _canonical(image: np.ndarray, image_size: int, align: bool, where: str) -> np.ndarray:
    if align:
        # Lazy: align pulls in mtcnn/TensorFlow, which plain readers do not need.
        from face_transfer.data import align as align_lib

        return align_lib.align_largest_face(image, size=image_size, where=where)
    return center_square_resize(image, image_size)


def _read_canonical(path: str, image_size: int, align: bool) -> np.ndarray:
    return _canonical(load_image(path), image_size, align, where=path)


def _kind_of(error: DataError) -> str:
    return "no_face" if isinstance(error, NoFaceError) else "unreadable_image"


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")


def _stack(images: list[np.ndarray], image_size: int) -> np.ndarray:
    if not images:
        return np.zeros((0, image_size, image_size, 3), np.uint8)
    return np.stack(images).astype(np.uint8, copy=False)


# --------------------------------------------------------------------------- labels


_INT_TEXT = re.compile(r"^[+-]?\d+$")


def _parse_int(text: str) -> int | None:
    text = text.strip()
    return int(text) if _INT_TEXT.match(text) else None


def _parse_float(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def _infer_column_kinds(rows: list[tuple[int, dict]], columns: Sequence[str]) -> dict[str, str]:
    """Per column: "int" if every value parses as int, else "float" (bad values are caught later)."""
    kinds = {}
    for col in columns:
        values = [row.get(col) for _, row in rows]
        present = [v for v in values if v not in (None, "") and _parse_float(v) is not None]
        kinds[col] = "int" if present and all(_parse_int(v) is not None for v in present) else "float"
    return kinds


# --------------------------------------------------------------------------- image folder + CSV


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
    _check_size(image_size)
    root, csv_path = os.fspath(root), os.fspath(csv_path)
    report = ReadReport(source=csv_path)
    errors = _Errors(report, on_error)
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
        rel = (row.get(image_column) or "").strip()
        if not rel:
            errors.bad(where, "missing_value", f"empty {image_column!r} (expected a relative image path)")
            continue
        parsed, problem = {}, None
        for col, kind in kinds.items():
            text = row.get(col)
            if text is None or text.strip() == "":
                problem = ("missing_value", f"column {col!r} is empty (expected {kind})")
                break
            value = _parse_int(text) if kind == "int" else _parse_float(text)
            if value is None:
                problem = ("bad_label", f"column {col!r} has {text!r}, expected {'an int' if kind == 'int' else 'a finite float'}")
                break
            parsed[col] = value
        if problem:
            errors.bad(where, *problem)
            continue
        path = os.path.join(root, rel)
        try:
            image = _read_canonical(path, image_size, align)
        except DataError as e:
            errors.bad(where, _kind_of(e), str(e))
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
    return _stack(images, image_size), labels, report


# --------------------------------------------------------------------------- FER2013


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
    _check_size(image_size)
    path = os.fspath(path)
    if isinstance(usage, str):
        usage = (usage,)
    if usage is not None:
        unknown = [u for u in usage if u not in FER_USAGES]
        if unknown:
            raise ValueError(f"usage must be among {FER_USAGES}, got {unknown}")
    report = ReadReport(source=path)
    errors = _Errors(report, on_error)
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
                emotion = _parse_int(row.get("emotion") or "")
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
    return _stack(images, image_size), labels, report


# --------------------------------------------------------------------------- CelebA


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
    _check_size(image_size)
    attr_path, image_dir = os.fspath(attr_path), os.fspath(image_dir)
    report = ReadReport(source=attr_path)
    errors = _Errors(report, on_error)
    try:
        with open(attr_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise DataError(f"{attr_path}: cannot open CelebA attribute file ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{attr_path}: not a text file ({e})") from e
    if len(lines) < 2:
        raise DataError(f"{attr_path}: expected an image count on line 1 and attribute names on line 2")
    count = _parse_int(lines[0])
    if count is None or count < 0:
        raise DataError(f"{attr_path} line 1: {lines[0]!r}, expected the number of images")
    names = lines[1].split()
    if not names or any(_parse_int(n) is not None or n.lower().endswith((".jpg", ".png")) for n in names):
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
        values = [_parse_int(v) for v in parts[1:]]
        if len(parts) != len(names) + 1 or any(v not in (1, -1) for v in values):
            errors.bad(
                where, "malformed_line",
                f"expected an image file name and {len(names)} values of 1/-1, found {line.strip()[:80]!r}",
            )
            continue
        path = os.path.join(image_dir, parts[0])
        try:
            image = _read_canonical(path, image_size, align)
        except DataError as e:
            errors.bad(where, _kind_of(e), str(e))
            continue
        images.append(image)
        rows.append([values[j] for j in keep])
        report.kept_sources.append(path)
    errors.finish()
    table = (np.asarray(rows, np.int64).reshape(-1, len(keep)) > 0).astype(np.int64)
    labels = {lower[j]: table[:, k] for k, j in enumerate(keep)}
    return _stack(images, image_size), labels, report


# --------------------------------------------------------------------------- UTKFace


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
    _check_size(image_size)
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: not a directory (expected a UTKFace image folder)")
    report = ReadReport(source=folder)
    errors = _Errors(report, on_error)
    if recursive:
        candidates = [os.path.join(d, n) for d, _, files in os.walk(folder) for n in files]
    else:
        candidates = [os.path.join(folder, n) for n in os.listdir(folder)]
    paths = sorted(
        p for p in candidates
        if os.path.isfile(p) and not os.path.basename(p).startswith(".")
        and os.path.basename(p).lower().endswith(_IMAGE_SUFFIXES)
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
            image = _read_canonical(path, image_size, align)
        except DataError as e:
            errors.bad(path, _kind_of(e), str(e))
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
    return _stack(images, image_size), labels, report


# --------------------------------------------------------------------------- TFRecord


def write_tfrecord(
    path: str | os.PathLike,
    images: np.ndarray,
    labels: Mapping[str, np.ndarray] | None = None,
    image_key: str = "image",
    image_format: str = "png",
) -> int:
    """Writes images (uint8 [N, H, W, 3]) and labels as tf.train.Example records; returns N.

    Images are stored encoded (PNG is lossless, so a round trip is exact; JPEG is smaller).
    Integer labels become int64 lists, floats float lists, strings bytes lists; a label with
    more than one dimension per example is stored flat plus a ``<key>/shape`` feature that
    :func:`read_tfrecord` uses to restore it.
    """
    import tensorflow as tf

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    if image_format not in ("png", "jpeg"):
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    labels = {k: np.asarray(v) for k, v in (labels or {}).items()}
    for key, value in labels.items():
        if key == image_key or key.endswith(_SHAPE_SUFFIX):
            raise ValueError(f"label name {key!r} clashes with the image key or the {_SHAPE_SUFFIX!r} suffix")
        if len(value) != len(images):
            raise ValueError(f"label {key!r} has {len(value)} rows, images have {len(images)}")
    path = os.fspath(path)
    with tf.io.TFRecordWriter(path) as writer:
        for i, image in enumerate(images):
            buf = io.BytesIO()
            pil = Image.fromarray(image[:, :, 0] if image.shape[-1] == 1 else image)
            pil.save(buf, format="PNG" if image_format == "png" else "JPEG", quality=95)
            feature = {image_key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[buf.getvalue()]))}
            for key, value in labels.items():
                item = np.asarray(value[i])
                feature[key] = _to_feature(tf, item, key)
                if item.ndim > 1:
                    feature[key + _SHAPE_SUFFIX] = tf.train.Feature(
                        int64_list=tf.train.Int64List(value=list(item.shape))
                    )
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())
    return len(images)


def _to_feature(tf, item: np.ndarray, key: str):
    flat = item.reshape(-1)
    if item.dtype.kind in "iub":
        return tf.train.Feature(int64_list=tf.train.Int64List(value=flat.astype(np.int64).tolist()))
    if item.dtype.kind == "f":
        return tf.train.Feature(float_list=tf.train.FloatList(value=flat.astype(np.float32).tolist()))
    if item.dtype.kind in "US":
        data = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in flat.tolist()]
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=data))
    raise ValueError(f"label {key!r} has dtype {item.dtype}; expected int, float or str")


_KIND_DTYPES = {"int64_list": np.int64, "float_list": np.float32, "bytes_list": str}


def read_tfrecord(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    image_key: str = "image",
    label_keys: Sequence[str] | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    on_error: str = "raise",
    align: bool = False,
    compression_type: str | None = None,
    limit: int | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], ReadReport]:
    """Reads tf.train.Example records holding encoded image bytes under ``image_key`` plus labels.

    ``label_keys=None`` takes every other feature. A label's type comes from its feature
    kind (int64_list -> int64, float_list -> float32, bytes_list -> str); one value per
    record gives ``[N]``, k values ``[N, k]``, and a ``<key>/shape`` feature restores more
    dimensions. A record missing a key, or whose feature changes kind or length from the
    first kept record, is a bad item. ``compression_type`` is "" / "GZIP" / "ZLIB"
    (default: GZIP for ``*.gz`` files).
    """
    import tensorflow as tf

    _check_size(image_size)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise DataError("read_tfrecord: no TFRecord paths were given")
    report = ReadReport(source=paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} files)")
    errors = _Errors(report, on_error)
    images: list[np.ndarray] = []
    values: dict[str, list] = {}
    signature: dict[str, tuple[str, int, tuple | None]] | None = None
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such TFRecord file")
        compression = compression_type if compression_type is not None else ("GZIP" if path.endswith(".gz") else "")
        records = iter(tf.data.TFRecordDataset(path, compression_type=compression).as_numpy_iterator())
        index = -1
        while limit is None or len(images) < limit:
            index += 1
            where = f"{path} record {index}"
            try:
                raw = next(records)
            except StopIteration:
                break
            except tf.errors.OpError as e:
                # A corrupt record (bad CRC, truncated) makes the rest of the file unreadable.
                errors.bad(where, "corrupt_file", f"unreadable TFRecord data from here on ({e.message.splitlines()[0]})")
                break
            try:
                example = tf.train.Example.FromString(raw)
            except Exception as e:  # protobuf raises its own DecodeError type
                errors.bad(where, "malformed_record", f"not a tf.train.Example ({e})")
                continue
            features = example.features.feature
            if image_key not in features or features[image_key].WhichOneof("kind") != "bytes_list" \
                    or len(features[image_key].bytes_list.value) != 1:
                errors.bad(where, "missing_value", f"expected one encoded image in bytes feature {image_key!r}; features: {sorted(features)}")
                continue
            if label_keys is not None:
                keys = list(label_keys)
            elif signature is not None:
                # Later records must carry the first kept record's keys, or rows would misalign.
                keys = list(signature)
            else:
                keys = sorted(k for k in features if k != image_key and not k.endswith(_SHAPE_SUFFIX))
            parsed, problem = {}, None
            for key in keys:
                if key not in features:
                    problem = ("missing_value", f"feature {key!r} is missing")
                    break
                kind = features[key].WhichOneof("kind")
                raw_values = list(getattr(features[key], kind).value) if kind else []
                shape = tuple(features[key + _SHAPE_SUFFIX].int64_list.value) if key + _SHAPE_SUFFIX in features else None
                sig = (kind, len(raw_values), shape)
                expected = signature.get(key) if signature is not None else None
                if kind is None or not raw_values:
                    problem = ("missing_value", f"feature {key!r} is empty")
                    break
                if expected is not None and sig != expected:
                    problem = ("bad_label", f"feature {key!r} is {kind} with {len(raw_values)} value(s), "
                               f"expected {expected[0]} with {expected[1]} as in the first record")
                    break
                if shape is not None and int(np.prod(shape)) != len(raw_values):
                    problem = ("bad_label", f"feature {key!r} has {len(raw_values)} values, its shape says {shape}")
                    break
                if kind == "bytes_list":
                    try:
                        raw_values = [v.decode("utf-8") for v in raw_values]
                    except UnicodeDecodeError:
                        problem = ("bad_label", f"feature {key!r} is not UTF-8 text")
                        break
                parsed[key] = (sig, raw_values)
            if problem:
                errors.bad(where, *problem)
                continue
            try:
                image = _canonical(
                    decode_image_bytes(features[image_key].bytes_list.value[0], where=where),
                    image_size, align, where=where,
                )
            except DataError as e:
                errors.bad(where, _kind_of(e), str(e))
                continue
            if signature is None:
                signature = {key: sig for key, (sig, _) in parsed.items()}
                values = {key: [] for key in parsed}
            images.append(image)
            for key, (_, vals) in parsed.items():
                values[key].append(vals)
            report.kept_sources.append(where)
    errors.finish()
    labels = {}
    for key, rows in values.items():
        kind, length, shape = signature[key]
        arr = np.asarray(rows, dtype=_KIND_DTYPES[kind])
        if shape is not None:
            arr = arr.reshape((len(rows),) + shape)
        elif length == 1:
            arr = arr.reshape(len(rows))
        labels[key] = arr
    return _stack(images, image_size), labels, report
