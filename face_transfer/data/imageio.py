"""Image decoding and the errors and read reports every data module shares (readers, alignment, face sets).
Owns DataError/NoFaceError, ReadReport and the raise-or-skip policy readers follow for a bad item.
"""
from __future__ import annotations

import dataclasses
import io
import os
import warnings
from collections import Counter

import numpy as np
from PIL import Image, UnidentifiedImageError

DEFAULT_IMAGE_SIZE = 64
ON_ERROR_CHOICES = ("raise", "skip")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


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


class ItemErrors:
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

    def finish(self, warn: bool = True) -> None:
        """Raises if nothing was kept; warns once about the skips unless the caller reports them itself."""
        if warn and self.report.skipped:
            warnings.warn(f"skipped bad items: {self.report.summary()}", stacklevel=3)
        if not self.report.kept_sources:
            raise DataError(f"{self.report.source}: no usable items were found ({self.report.summary()})")


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


def error_kind(error: DataError) -> str:
    return "no_face" if isinstance(error, NoFaceError) else "unreadable_image"


def check_image_size(image_size: int) -> None:
    if not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")


def stack_images(images: list[np.ndarray], image_size: int) -> np.ndarray:
    if not images:
        return np.zeros((0, image_size, image_size, 3), np.uint8)
    return np.stack(images).astype(np.uint8, copy=False)
