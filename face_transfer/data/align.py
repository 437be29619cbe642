"""Face detection (MTCNN, weights shipped in the `mtcnn` wheel) and 5-point similarity alignment.

Owns CANONICAL_LANDMARKS, the crop layout every real photo is warped to, matching the synthetic faces.

Landmark order everywhere: left eye, right eye, nose tip, mouth left, mouth right, as (x, y)
pixel coordinates, where "left" is the image's left (the viewer's left, i.e. the person's
right eye), which is what MTCNN reports as ``left_eye``.
"""
from __future__ import annotations

import os
import threading
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image

from face_transfer.data.imageio import DataError, ItemErrors, NoFaceError, ReadReport, error_kind, load_image

# (x, y) in [0, 1] units of the crop side; the synthetic face generator draws its faces
# with landmarks near these positions, so real and synthetic crops share one geometry.
# The mean frontal layout of SynthFaces (measured on 500 photo-domain faces at the default camera),
# so that aligned real photos and synthetic faces share one crop.
CANONICAL_LANDMARKS = np.array(
    [[0.38, 0.477], [0.62, 0.477], [0.50, 0.595], [0.427, 0.698], [0.573, 0.698]], dtype=np.float64
)
DEFAULT_MIN_SCORE = 0.9
MAX_DETECT_SIDE = 1024  # photos are detected at most this large (bounded memory); crops come from the original


def _shrink(image: np.ndarray, factor: float) -> np.ndarray:
    """The image reduced by `factor` (antialiased), as uint8."""
    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((max(1, round(w / factor)), max(1, round(h / factor))),
                                                    Image.Resampling.BOX), np.uint8)


class Face(NamedTuple):
    """One detection: box (x1, y1, x2, y2) in pixels, score in [0, 1], landmarks [5, 2] (x, y)."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0))


_DETECTOR = None
_DETECTOR_LOCK = threading.Lock()


def get_detector():
    """The process-wide MTCNN detector, built on first use (building it takes a few seconds)."""
    global _DETECTOR
    if _DETECTOR is None:
        with _DETECTOR_LOCK:
            if _DETECTOR is None:
                import importlib.resources

                from mtcnn import MTCNN
                from mtcnn.stages import StageONet, StagePNet, StageRNet

                # mtcnn looks for "pnet.lz4" etc. in the current directory before its own
                # assets (and joblib-unpickles whatever it finds): pass the shipped files.
                weights = importlib.resources.files("mtcnn.assets.weights")
                stages = [
                    StagePNet(weights=str(weights / "pnet.lz4")),
                    StageRNet(weights=str(weights / "rnet.lz4")),
                    StageONet(weights=str(weights / "onet.lz4")),
                ]
                _DETECTOR = MTCNN(stages=stages, device="CPU:0")
    return _DETECTOR


def _check_image(image: np.ndarray, where: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise DataError(f"{where}: expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] in (1, 3, 4):
        image = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[:, :, :3]
    else:
        raise DataError(f"{where}: expected an image [H, W, 3] (or gray [H, W]), got shape {image.shape}")
    return np.ascontiguousarray(image)


def detect_faces(image: np.ndarray, min_score: float = DEFAULT_MIN_SCORE, min_face_size: int = 20) -> list[Face]:
    """Detects faces in a uint8 RGB image; returns them most confident first.

    ``min_face_size`` is in pixels (MTCNN's image pyramid starts there); images smaller
    than that simply have no face.
    """
    image = _check_image(image, "detect_faces")
    if min(image.shape[:2]) < 12:
        return []
    # MTCNN's image pyramid on a phone photo costs gigabytes (6.6 GB peak for 8000 px); a face that matters
    # for a 64 px crop is still 20+ px after shrinking the photo to MAX_DETECT_SIDE, so detect there.
    factor = max(image.shape[:2]) / MAX_DETECT_SIDE
    small = _shrink(image, factor) if factor > 1 else image
    rows = get_detector().detect_faces(
        small, output_type="numpy", box_format="xyxy", min_face_size=min_face_size
    )
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 16)
    if factor > 1:
        sy, sx = image.shape[0] / small.shape[0], image.shape[1] / small.shape[1]
        rows[:, [1, 3]] *= sx
        rows[:, [2, 4]] *= sy
        rows[:, 6:11] *= sx
        rows[:, 11:16] *= sy
    # MTCNN's numpy rows: [image_id, x1, y1, x2, y2, score, x of the 5 points, y of the 5 points]
    # (its docstring says interleaved; the code and its own parse_landmarks say x then y).
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 16)
    faces = [
        Face(box=row[1:5].copy(), score=float(row[5]), landmarks=np.stack([row[6:11], row[11:16]], axis=1))
        for row in rows
        if row[5] >= min_score
    ]
    return sorted(faces, key=lambda f: -f.score)


def template_points(size: int) -> np.ndarray:
    """CANONICAL_LANDMARKS in pixel-index coordinates of a size x size crop (pixel i centred at i)."""
    return CANONICAL_LANDMARKS * size - 0.5


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) taking src points to dst.

    Umeyama (1991) with the reflection guard; returns a 2x3 matrix M with dst ~ M @ [x, y, 1].
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two matching [K>=2, 2] point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s < 1e-12:
        raise ValueError("source points are all at one place; no similarity transform exists")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1.0
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(sig) @ sign) / var_s)
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_d - scale * rot @ mu_s
    return matrix


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def alignment_residual(landmarks5: np.ndarray, size: int) -> float:
    """RMS distance (in crop pixels) between the transformed landmarks and the template: a pose/quality cue."""
    dst = template_points(size)
    moved = apply_transform(similarity_transform(landmarks5, dst), landmarks5)
    return float(np.sqrt(((moved - dst) ** 2).sum(1).mean()))


def _warp_bilinear(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Samples image at M^-1 of each output pixel (bilinear); outside the photo is black."""
    a, t = matrix[:, :2], matrix[:, 2]
    inv = np.linalg.inv(a)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    out_pts = np.stack([xs.ravel(), ys.ravel()], axis=1) - t
    src = out_pts @ inv.T
    sx, sy = src[:, 0], src[:, 1]
    h, w = image.shape[:2]
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = (sx - x0)[:, None], (sy - y0)[:, None]

    def tap(yy, xx):  # gather the size*size taps first: never a float copy of a whole 100-megapixel photo
        inside = ((xx >= 0) & (xx < w) & (yy >= 0) & (yy < h))[:, None]
        return image[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)].astype(np.float64) * inside

    out = (
        tap(y0, x0) * (1 - fx) * (1 - fy)
        + tap(y0, x0 + 1) * fx * (1 - fy)
        + tap(y0 + 1, x0) * (1 - fx) * fy
        + tap(y0 + 1, x0 + 1) * fx * fy
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(size, size, image.shape[2])


def align_face(image: np.ndarray, landmarks5: np.ndarray, size: int = 64) -> np.ndarray:
    """Warps a face so its 5 landmarks land on CANONICAL_LANDMARKS; uint8 [size, size, 3].

    Least-squares similarity transform (Umeyama) + bilinear sampling. When the face is much
    larger than the crop, the photo is first shrunk with an antialiasing filter, since
    bilinear sampling alone would alias.
    """
    image = _check_image(image, "align_face")
    landmarks5 = np.asarray(landmarks5, np.float64)
    if landmarks5.shape != (5, 2) or not np.isfinite(landmarks5).all():
        raise ValueError(f"landmarks5 must be finite [5, 2] (x, y) points, got shape {landmarks5.shape}")
    matrix = similarity_transform(landmarks5, template_points(size))
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < 0.5:
        factor = 2.0 * scale
        h, w = image.shape[:2]
        new_w, new_h = max(1, round(w * factor)), max(1, round(h * factor))
        image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
        # Pixel centres: x' + 0.5 = (x + 0.5) * (new / old).
        landmarks5 = (landmarks5 + 0.5) * np.array([new_w / w, new_h / h]) - 0.5
        matrix = similarity_transform(landmarks5, template_points(size))
    return _warp_bilinear(image, matrix, size)


def _pick(faces: Sequence[Face]) -> Face:
    # The largest face is the photo's subject; score breaks ties between equal boxes.
    return max(faces, key=lambda f: (f.area, f.score))


def align_largest_face(
    image: np.ndarray, size: int = 64, where: str = "image", min_score: float = DEFAULT_MIN_SCORE
) -> np.ndarray:
    """Detects faces and aligns the largest one; NoFaceError (a DataError) naming ``where`` if none."""
    image = _check_image(image, where)
    faces = detect_faces(image, min_score=min_score)
    if not faces:
        raise NoFaceError(
            f"{where}: no face found (expected a photo with a face of at least 20 px "
            f"and detector score >= {min_score})"
        )
    return align_face(image, _pick(faces).landmarks, size=size)


def align_photos(
    paths_or_arrays: Sequence[str | os.PathLike | np.ndarray],
    size: int = 64,
    on_error: str = "raise",
    min_score: float = DEFAULT_MIN_SCORE,
) -> tuple[np.ndarray, ReadReport]:
    """Aligns the largest face of each photo (file path or uint8 array) to the canonical crop.

    Returns ``(images uint8 [N, size, size, 3], report)``; ``report.kept_sources`` says which
    inputs the rows came from (arrays are named ``photo[i]``). A photo with no face, or an
    unreadable file, raises DataError naming it, or with ``on_error="skip"`` is counted.
    """
    items = list(paths_or_arrays)
    report = ReadReport(source=f"align_photos({len(items)} photos)")
    errors = ItemErrors(report, on_error)
    if not items:
        raise DataError("align_photos: no photos were given")
    crops = []
    for i, item in enumerate(items):
        where = os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"photo[{i}]"
        try:
            image = load_image(where) if isinstance(item, (str, os.PathLike)) else item
            crops.append(align_largest_face(image, size=size, where=where, min_score=min_score))
        except DataError as e:
            errors.bad(where, error_kind(e), str(e))
            continue
        report.kept_sources.append(where)
    errors.finish()
    return np.stack(crops), report
