"""SynthFaces: the procedural, deterministic face generator that is the package's embedded default dataset.
Owns identity/image factor sampling, the vectorised 3-D-posed renderer, the four domains, labels and the sample grid."""
from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    image_size: int = 64            # square, RGB uint8
    seed: int = 0                   # dataset seed
    n_train_identities: int = 1000  # identity pool "train"  -> ids 0 .. n_train-1
    n_heldout_identities: int = 300  # identity pool "heldout" -> ids n_train .. n_train+n_heldout-1
    difficulty: float = 1.0         # scales nuisance (pose range, noise, clutter, occluders); 0 = clean frontal

    def __post_init__(self):
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"SynthConfig.seed must be a non-negative int, got {self.seed!r}")
        if not isinstance(self.image_size, (int, np.integer)) or not 16 <= self.image_size <= 512:
            raise ValueError(f"SynthConfig.image_size must be an int in [16, 512], got {self.image_size!r}")
        if self.n_train_identities < 1 or self.n_heldout_identities < 1:
            raise ValueError("SynthConfig.n_train_identities and n_heldout_identities must be >= 1, got "
                             f"{self.n_train_identities}, {self.n_heldout_identities}")
        if not 0.0 <= self.difficulty <= 2.0:
            raise ValueError(f"SynthConfig.difficulty must be in [0, 2], got {self.difficulty!r}")


DOMAINS = ("photo", "infrared", "sketch", "lowres")
EXPRESSIONS = ("neutral", "happy", "sad", "surprise", "angry", "disgust", "fear")
HAIR_COLORS = ("black", "brown", "blond", "red", "gray")
HAIR_STYLES = ("bald", "short", "long", "bun")
LANDMARK_NAMES = ("left_eye", "right_eye", "nose_tip", "mouth_left", "mouth_right")  # left = image left
POOLS = ("train", "heldout")

# Per-identity label keys (subset of identity_factors) copied into the image labels.
IDENTITY_LABELS = ("identity", "gender", "age", "skin_tone", "hair_color", "hair_style", "beard", "face_shape")
# Every key render_faces returns (per-image ones after the identity ones). Camera/lighting extras are float32.
LABEL_KEYS = IDENTITY_LABELS + (
    "expression", "expression_intensity", "smile", "mouth_open", "eyes_closed", "gaze_x", "gaze_y",
    "yaw", "pitch", "roll", "glasses", "sunglasses", "hat", "mask", "occluded",
    "light_azimuth", "light_elevation", "light_color", "scale", "shift_x", "shift_y", "blur", "noise", "jpeg",
    "domain", "landmarks", "clutter")

_F32 = np.float32
_HEAD_SCALE = 0.8   # head semi-height in units of the image half-width
_SCALE_RANGE = 0.12  # relative camera zoom range at difficulty 1
_RENDER_CHUNK = 128  # images per vectorised pass: measured best at 64x64 (numpy call overhead vs L2/L3 size)

# ----------------------------------------------------------------------------------------------------------
# Counter-based randomness: every draw is a hash of (key, salt), so an image never depends on its batch.

_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def _mix(x):
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _C1
        x = (x ^ (x >> np.uint64(27))) * _C2
    return x ^ (x >> np.uint64(31))


def _str_key(s: str) -> np.uint64:
    return np.uint64(zlib.crc32(s.encode("utf-8")) | (zlib.adler32(s.encode("utf-8")) << 32))


def _combine(*parts) -> np.ndarray:
    key = np.zeros((), np.uint64)
    for p in parts:
        with np.errstate(over="ignore"):
            key = _mix(key ^ _mix(np.asarray(p, dtype=np.uint64)) + _GOLD)
    return key


def _erf(x):
    """Vectorised error function (float32 in, float32 out)."""
    from scipy.special import erf
    return erf(np.asarray(x, np.float64)).astype(_F32)


class _Draws:
    """Uniform draws for a batch of keys; each call uses a fresh salt so draws are independent."""

    def __init__(self, keys: np.ndarray):
        self.keys = np.asarray(keys, np.uint64)
        self.salt = 0

    def u(self, k: int = 1) -> np.ndarray:
        salts = _mix(np.arange(self.salt, self.salt + k, dtype=np.uint64) * _GOLD + np.uint64(12345))
        self.salt += k
        x = _mix(self.keys[:, None] ^ salts[None, :])
        u = ((x >> np.uint64(40)).astype(np.float32) + 0.5) * _F32(1.0 / (1 << 24))
        return u if k > 1 else u[:, 0]

    def uniform(self, lo, hi, k: int = 1):
        return _F32(lo) + (_F32(hi) - _F32(lo)) * self.u(k)

    def normal(self, k: int = 1):
        u1, u2 = self.u(2).T if k == 1 else (self.u(k), self.u(k))
        return (np.sqrt(-2.0 * np.log(u1)) * np.cos(_F32(2 * np.pi) * u2)).astype(_F32)

    def bern(self, p):
        return (self.u() < p).astype(np.int64)

    def choice(self, probs):
        """probs: [K] or [N,K] (rows need not be normalised)."""
        probs = np.asarray(probs, _F32)
        if probs.ndim == 1:
            probs = np.broadcast_to(probs, (len(self.keys), probs.shape[0]))
        cdf = np.cumsum(probs, axis=1)
        cdf /= cdf[:, -1:]
        return np.minimum((self.u()[:, None] > cdf).sum(axis=1), probs.shape[1] - 1).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------
# Factors

_SKIN_LIGHT = np.array([0.97, 0.80, 0.68], _F32)
_SKIN_DARK = np.array([0.30, 0.19, 0.13], _F32)
_HAIR_RGB = np.array([[0.07, 0.06, 0.06], [0.30, 0.18, 0.10], [0.86, 0.70, 0.42],
                      [0.62, 0.25, 0.10], [0.74, 0.73, 0.72]], _F32)
_EYE_RGB = np.array([[0.36, 0.21, 0.10], [0.18, 0.11, 0.06], [0.30, 0.52, 0.78],
                     [0.32, 0.52, 0.30], [0.50, 0.56, 0.62], [0.52, 0.40, 0.18]], _F32)

# Expression -> facial action parameters at intensity 1. Magnitudes are chosen so that each class reads at
# 48x48 grayscale (a head is ~20 px high there): mouth-corner moves of 2-4 px, brow moves of 2-3 px.
_EXPR_NAMES = ("brow_raise", "brow_inner", "brow_squeeze", "eye_open", "corner", "mouth_width", "mouth_round",
               "upper_lip", "nose_wrinkle", "cheek", "lip_press", "asym")
_EXPR_TABLE = np.array([
    # raise inner squeeze eye  corner width round  upper wrink cheek press asym
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],        # neutral
    [0.15, 0.0, 0.0, -0.35, 0.3, 0.30, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0],    # happy (+ smile)
    [-0.15, 1.0, 0.4, -0.35, -1.3, -0.05, 0.0, 0.0, 0.0, 0.0, 0.3, 0.0],  # sad
    [1.0, 0.2, 0.0, 1.0, 0.0, -0.40, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],      # surprise
    [-0.7, -1.0, 1.0, -0.45, -0.4, -0.15, 0.0, 0.0, 0.3, 0.0, 1.0, 0.0],  # angry
    [-0.35, -0.5, 0.4, -0.45, -0.6, 0.0, 0.0, 1.0, 1.0, 0.3, 0.0, 1.0],  # disgust
    [0.75, 1.0, 0.9, 0.85, -0.5, 0.40, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],    # fear
], _F32)


def _expression_factors(expr, iu, xu):
    """Intensity, smile, mouth opening and blink from the expression and its uniforms (iu [n], xu [n,4]).
    A function of its own so that overriding the expression re-derives what follows from it."""
    inten = np.where(expr == 0, _F32(0), 0.5 + 0.5 * iu).astype(_F32)
    smile = np.where(expr == 1, np.clip(inten * (0.8 + 0.35 * xu[:, 0]), 0, 1),
                     np.where(expr == 0, 0.25 * xu[:, 0], 0.06 * xu[:, 0])).astype(_F32)
    mo = xu[:, 1]
    mouth_open = np.select(
        [expr == 3, expr == 6, expr == 1, expr == 4],
        [inten * (0.7 + 0.3 * mo), inten * (0.55 + 0.35 * mo), inten * (0.4 + 0.6 * mo), 0.02 * mo],
        0.15 * mo * mo).astype(_F32)
    # closed eyes in ~18% of faces (not with surprise or fear): at 10% the probes' test splits held ~20 closed
    # faces, and eyes_closed's balanced accuracy swung by +-6 points between seeds
    blink = (xu[:, 2] < 0.25) & (expr != 3) & (expr != 6)
    return inten, smile, np.clip(mouth_open, 0, 1), blink.astype(np.int64)


def _check_ids(name, ids):
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) or (ids.size and ids.min() < 0):
        raise ValueError(f"{name} must be a 1-D array of non-negative integers, got shape {ids.shape} "
                         f"dtype {ids.dtype}")
    return ids.astype(np.int64)


def identity_factors(cfg: SynthConfig, identity_ids) -> dict[str, np.ndarray]:
    """The persistent per-identity factors; depend only on (cfg.seed, identity id)."""
    ids = _check_ids("identity_ids", identity_ids)
    total = cfg.n_train_identities + cfg.n_heldout_identities
    if ids.size and ids.max() >= total:
        raise ValueError(f"identity_ids must be < n_train+n_heldout = {total}, got max {ids.max()}")
    d = _Draws(_mix(_combine(cfg.seed, _str_key("identity")) ^ _mix(ids.astype(np.uint64))))
    n = len(ids)
    gender = d.bern(0.5)
    male = gender.astype(_F32)
    age = d.uniform(18, 80)
    skin = np.clip(d.u() ** 0.9, 0, 1).astype(_F32)
    old = np.clip((age - 38) / 40, 0, 1)
    p_hair = np.stack([0.35 + 0.4 * skin, np.full(n, 0.35, _F32), 0.2 * (1 - skin), 0.1 * (1 - skin),
                       np.zeros(n, _F32)], 1) * (1 - 0.85 * old[:, None])
    p_hair[:, 4] = 0.02 + 0.9 * old
    hair_color = d.choice(p_hair)
    p_style = np.stack([0.02 + male * (0.10 + 0.25 * old), 0.20 + 0.55 * male, 0.55 - 0.47 * male,
                        0.23 - 0.20 * male], 1)
    hair_style = d.choice(p_style)
    beard = (d.u() < 0.35).astype(np.int64) * gender
    face_shape = (d.uniform(0.74, 0.86) + 0.04 * male).astype(_F32)
    tone = skin[:, None]
    skin_rgb = (_SKIN_LIGHT * (1 - tone) + _SKIN_DARK * tone) * (1 + 0.05 * (d.u(3) - 0.5))
    hair_rgb = _HAIR_RGB[hair_color] * (1 + 0.25 * (d.u(3) - 0.5).mean(1, keepdims=True)) \
        * (1 + 0.08 * (d.u(3) - 0.5))
    lip_rgb = skin_rgb * np.array([0.85, 0.55, 0.55], _F32) + np.array([0.12, 0.02, 0.02], _F32) \
        + (1 - male[:, None]) * d.u()[:, None] * np.array([0.15, -0.05, -0.03], _F32)
    eye_p = np.stack([0.35 + 0.5 * skin, 0.25 + 0.5 * skin, 0.3 * (1 - skin), 0.15 * (1 - skin),
                      0.1 * (1 - skin), 0.15 * np.ones(n, _F32)], 1)
    eye_rgb = _EYE_RGB[d.choice(eye_p)] * (1 + 0.2 * (d.u(3) - 0.5))
    return {
        "identity": ids,
        "gender": gender,
        "age": age.astype(_F32),
        "skin_tone": skin,
        "hair_color": hair_color,
        "hair_style": hair_style,
        "beard": beard,
        "face_shape": face_shape,
        # appearance-only factors (persistent, not task labels)
        "skin_rgb": np.clip(skin_rgb, 0, 1).astype(_F32),
        "hair_rgb": np.clip(hair_rgb, 0, 1).astype(_F32),
        "lip_rgb": np.clip(lip_rgb, 0, 1).astype(_F32),
        "eye_rgb": np.clip(eye_rgb, 0, 1).astype(_F32),
        "head_depth": d.uniform(0.85, 1.0),
        "jaw_taper": (d.uniform(0.10, 0.30) - 0.06 * male).astype(_F32),
        "eye_sep": d.uniform(0.30, 0.38),
        "eye_y": d.uniform(-0.02, 0.08),
        "eye_w": d.uniform(0.12, 0.155),
        "eye_h": d.uniform(0.05, 0.07),
        "eye_tilt": d.uniform(-0.15, 0.15),
        "brow_thick": (d.uniform(0.030, 0.040) + 0.010 * male).astype(_F32),
        "brow_arch": d.uniform(0.0, 0.04),
        "brow_gap": d.uniform(0.13, 0.19),
        "nose_len": d.uniform(0.22, 0.34),
        "nose_w": (d.uniform(0.07, 0.10) + 0.015 * male).astype(_F32),
        "nose_prot": d.uniform(0.10, 0.18),
        "mouth_y": d.uniform(-0.60, -0.50),
        "mouth_w": d.uniform(0.17, 0.24),
        "lip_thick": (d.uniform(0.038, 0.06) - 0.008 * male).astype(_F32),
        "hairline": (d.uniform(0.42, 0.58) + 0.12 * male * old).astype(_F32),
        "hair_part": d.uniform(-1, 1),
        "hair_wave": d.uniform(0.0, 1.0),
        "wrinkle": (np.clip((age - 35) / 40, 0, 1) * d.uniform(0.6, 1.0)).astype(_F32),
        "ear_size": d.uniform(0.9, 1.15),
        "hair_len": d.uniform(1.1, 1.8),
        "beard_density": d.uniform(0.6, 0.95),
    }


def _image_factors(cfg: SynthConfig, keys: np.ndarray) -> dict[str, np.ndarray]:
    d = _Draws(keys)
    n = len(keys)
    k = _F32(cfg.difficulty)
    expr = d.choice(np.ones(7, _F32))
    iu, xu = d.u(), d.u(4)
    inten, smile, mouth_open, blink = _expression_factors(expr, iu, xu)
    # gaze uniform in (-1, 1) (the CDF of the same normal draws: every other factor keeps its draws)
    gaze = _erf(d.normal(2) / _F32(np.sqrt(2.0))).astype(_F32)
    yaw = d.uniform(-45, 45) * k
    pitch = d.uniform(-25, 25) * k
    roll = np.clip(d.normal() * 8, -20, 20) * k
    glasses = d.bern(0.20)
    sun = d.bern(0.10)
    glasses = glasses * (1 - sun)
    hat = d.bern(0.15)
    mask = d.bern(0.10)
    occluded = (d.u() < 0.15 * min(float(k), 1.0)).astype(np.int64)
    az = d.uniform(-90, 90)
    el = d.uniform(-10, 45)
    # colour temperature (warm tungsten .. cool daylight) plus a small random cast
    temp = (2 * d.u() - 1) * (0.2 + 0.8 * min(float(k), 1.0))
    warm, cool = np.array([1.0, 0.86, 0.68], _F32), np.array([0.80, 0.88, 1.0], _F32)
    light_color = np.where(temp[:, None] > 0, 1 + temp[:, None] * (warm - 1), 1 - temp[:, None] * (cool - 1))
    light_color = light_color * (1 - 0.12 * min(float(k), 1.0) * d.u(3))
    light_color = (light_color / light_color.max(1, keepdims=True)).astype(_F32)
    return {
        "expression": expr, "expression_intensity": inten, "smile": smile, "mouth_open": mouth_open,
        "eyes_closed": blink, "gaze_x": gaze[:, 0], "gaze_y": gaze[:, 1],
        "yaw": yaw.astype(_F32), "pitch": pitch.astype(_F32), "roll": roll.astype(_F32),
        "glasses": glasses, "sunglasses": sun, "hat": hat, "mask": mask, "occluded": occluded,
        "light_azimuth": az.astype(_F32), "light_elevation": el.astype(_F32), "light_color": light_color,
        "scale": (_HEAD_SCALE * (1 + _SCALE_RANGE * k * (2 * d.u() - 1))).astype(_F32),
        "shift_x": (0.10 * k * (2 * d.u() - 1)).astype(_F32),
        "shift_y": (0.08 * k * (2 * d.u() - 1) + 0.02).astype(_F32),
        "blur": (k * np.clip(2 * d.u() - 1, 0, 1)).astype(_F32),
        "noise": (0.004 + 0.035 * k * d.u() ** 2).astype(_F32),
        "jpeg": (0.5 * k * np.clip((d.u() - 0.55) / 0.45, 0, 1) ** 1.5).astype(_F32),
        "clutter": (min(float(k), 1.0) * (0.3 + 0.7 * d.u())).astype(_F32),
        "ambient": d.uniform(0.35, 0.6),
        "_iu": iu, "_xu": xu,
        # nuisance seeds for appearance-only per-image variation
        "_bg": d.u(24).reshape(n, 24),
        "_occ": d.u(8).reshape(n, 8),
        "_acc": d.u(6).reshape(n, 6),
        "_tile": (d.u() * 4096).astype(np.int64),
    }


# ----------------------------------------------------------------------------------------------------------
# Geometry helpers (head frame: x right, y up, z towards camera; head semi-height 1)

def _rotation(yaw, pitch, roll):
    y, p, r = (np.deg2rad(a).astype(_F32) for a in (yaw, pitch, roll))
    cy, sy, cp, sp, cr, sr = np.cos(y), np.sin(y), np.cos(p), np.sin(p), np.cos(r), np.sin(r)
    n = len(y)
    o, z = np.ones(n, _F32), np.zeros(n, _F32)
    ry = np.stack([np.stack([cy, z, sy], 1), np.stack([z, o, z], 1), np.stack([-sy, z, cy], 1)], 1)
    # positive pitch tilts the face up
    rx = np.stack([np.stack([o, z, z], 1), np.stack([z, cp, sp], 1), np.stack([z, -sp, cp], 1)], 1)
    rz = np.stack([np.stack([cr, -sr, z], 1), np.stack([sr, cr, z], 1), np.stack([z, z, o], 1)], 1)
    ryp = ry @ rx
    return ryp.astype(_F32), (rz @ ryp).astype(_F32), cr, sr


class _Geo:
    """Per-chunk geometry: head ellipsoid, pose, camera and pixel grids."""

    def __init__(self, idf, imf, S, difficulty):
        self.S = S
        # window sizes follow the largest scale the config can produce, never the batch's own maximum:
        # a batch-dependent size would clip features differently and break per-index determinism
        self.s_max = _HEAD_SCALE * (1 + _SCALE_RANGE * difficulty)
        self.n = n = len(imf["yaw"])
        self.ax = idf["face_shape"]
        self.ay = np.ones(n, _F32)
        self.az = idf["head_depth"]
        self.ryp, self.R, self.cr, self.sr = _rotation(imf["yaw"], imf["pitch"], imf["roll"])
        self.s = imf["scale"]
        self.cx = imf["shift_x"]
        self.cy = imf["shift_y"]
        g = ((np.arange(S, dtype=_F32) + 0.5) / S * 2 - 1)
        self.gu = g[None, None, :]           # [1,1,S] normalised x
        self.gv = -g[None, :, None]          # [1,S,1] normalised y (up)

    def _rot(self, p):
        R = self.R
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        return (R[:, 0, 0] * x + R[:, 0, 1] * y + R[:, 0, 2] * z, R[:, 1, 0] * x + R[:, 1, 1] * y + R[:, 1, 2] * z,
                R[:, 2, 0] * x + R[:, 2, 1] * y + R[:, 2, 2] * z)

    def project(self, p):
        """p [N,3] head-frame -> (u, v) normalised image coords [N], camera z [N]."""
        qx, qy, qz = self._rot(p)
        return self.cx + self.s * qx, self.cy + self.s * qy, qz

    def surface_point(self, x, y):
        zz = 1 - (x / self.ax) ** 2 - (y / self.ay) ** 2
        return np.stack([x, y, self.az * np.sqrt(np.maximum(zz, 0.02))], 1).astype(_F32)

    def frame(self, p):
        """Tangent frame at a surface point: centre (u,v), inverse projected Jacobian [N,2,2], visibility,
        and the projected normal (for protruding features). Written column-wise: these are [N]-sized
        arrays, where per-call overhead (einsum, cross, norm) would dominate."""
        nx, ny, nz = p[:, 0] / self.ax ** 2, p[:, 1] / self.ay ** 2, p[:, 2] / self.az ** 2
        inv = 1 / np.sqrt(nx * nx + ny * ny + nz * nz)
        nx, ny, nz = nx * inv, ny * inv, nz * inv
        inv = 1 / np.sqrt(nz * nz + nx * nx)
        tux, tuz = nz * inv, -nx * inv          # horizontal tangent (tu_y = 0)
        tvx, tvy, tvz = ny * tuz, nz * tux - nx * tuz, -ny * tux  # n x tu
        R, s = self.R, self.s
        j00 = s * (R[:, 0, 0] * tux + R[:, 0, 2] * tuz)
        j10 = s * (R[:, 1, 0] * tux + R[:, 1, 2] * tuz)
        j01 = s * (R[:, 0, 0] * tvx + R[:, 0, 1] * tvy + R[:, 0, 2] * tvz)
        j11 = s * (R[:, 1, 0] * tvx + R[:, 1, 1] * tvy + R[:, 1, 2] * tvz)
        det = j00 * j11 - j01 * j10
        det = np.where(np.abs(det) < 1e-4, np.where(det < 0, -1e-4, 1e-4), det)
        Ji = np.empty((len(s), 2, 2), _F32)
        Ji[:, 0, 0], Ji[:, 0, 1], Ji[:, 1, 0], Ji[:, 1, 1] = j11 / det, -j01 / det, -j10 / det, j00 / det
        rnx, rny, rnz = self._rot(np.stack([nx, ny, nz], 1))
        u, v, _ = self.project(p)
        return u, v, Ji, rnz.astype(_F32), np.stack([s * rnx, s * rny], 1).astype(_F32)


class _Patch:
    """A rectangular pixel window around a point, inside the image or inside a (square) parent window, with
    normalised image coordinates (gu, gv) and, given the inverse projected Jacobian Ji, local tangent
    coordinates (a, b). Window maps are flattened to [n, Ph*Pw]."""

    def __init__(self, geo: _Geo, u, v, Ji, half_extent, parent: "_Patch | None" = None, centre=None):
        """half_extent: head units, a scalar or (horizontal, vertical); centre: optional window centre (u, v)
        when the window should not be centred on the origin (u, v) of the tangent coordinates."""
        S = geo.S
        C = S if parent is None else parent.P
        hx, hy = (half_extent, half_extent) if np.isscalar(half_extent) else half_extent
        self.Pw = Pw = min(int(np.ceil(hx * geo.s_max * S)) + 3, C)
        self.Ph = Ph = min(int(np.ceil(hy * geo.s_max * S)) + 3, C)
        self.P = Pw  # the side of a square window
        self.C = C
        oc = 0 if parent is None else parent.c0
        orr = 0 if parent is None else parent.r0
        wu, wv = (u, v) if centre is None else centre
        col = (wu + 1) / 2 * S - 0.5
        row = (1 - wv) / 2 * S - 0.5
        self.lc0 = np.clip(np.round(col).astype(np.intp) - oc - Pw // 2, 0, C - Pw)
        self.lr0 = np.clip(np.round(row).astype(np.intp) - orr - Ph // 2, 0, C - Ph)
        self.c0, self.r0 = self.lc0 + oc, self.lr0 + orr
        self.gu = ((self.c0[:, None] + np.arange(Pw, dtype=_F32)[None, :] + 0.5) * _F32(2.0 / S) - 1
                   ).astype(_F32)[:, None, :]
        self.gv = (1 - (self.r0[:, None] + np.arange(Ph, dtype=_F32)[None, :] + 0.5) * _F32(2.0 / S)
                   ).astype(_F32)[:, :, None]
        self.n = n = len(u)
        self.pix = 2.0 / (S * geo.s[:, None])  # one pixel in head units
        if Ji is not None:
            du = self.gu - u[:, None, None]
            dv = self.gv - v[:, None, None]
            self.a = (Ji[:, 0, 0, None, None] * du + Ji[:, 0, 1, None, None] * dv).reshape(n, -1)
            self.b = (Ji[:, 1, 0, None, None] * du + Ji[:, 1, 1, None, None] * dv).reshape(n, -1)

    @property
    def guf(self):
        return np.broadcast_to(self.gu, (self.n, self.Ph, self.Pw)).reshape(self.n, -1)

    @property
    def gvf(self):
        return np.broadcast_to(self.gv, (self.n, self.Ph, self.Pw)).reshape(self.n, -1)

    def _windows(self, canvas, writeable=False):
        # every (row, col) window of every image as a strided view; one advanced index then picks each
        # image's own window (about twice as fast as a Python loop of slices at 128 images)
        C = self.C
        shape = (self.n, C, C) if canvas.ndim == 2 else (self.n, canvas.shape[1], C, C)
        v = sliding_window_view(canvas.reshape(shape), (self.Ph, self.Pw), axis=(-2, -1), writeable=writeable)
        return v, np.arange(self.n)

    def gather(self, canvas):
        """Parent map [n,ch,C*C] -> [n,ch,Ph*Pw]; scalar map [n,C*C] -> [n,Ph*Pw]."""
        v, i = self._windows(canvas)
        if canvas.ndim == 2:
            return v[i, self.lr0, self.lc0].reshape(self.n, -1)
        return v[i, :, self.lr0, self.lc0].reshape(self.n, canvas.shape[1], -1)

    def scatter(self, canvas, region):
        """Writes [n,ch,Ph*Pw] windows back into the parent map [n,ch,C*C] (windows of one image must not
        overlap each other, which holds: there is one window per image)."""
        v, i = self._windows(canvas, writeable=True)
        v[i, :, self.lr0, self.lc0] = region.reshape(self.n, region.shape[1], self.Ph, self.Pw)

    def gather_slices(self, canvas):
        """Same as gather for a large window: per-image slicing is cheaper than fancy indexing."""
        P = self.P
        return np.stack([canvas[i, :, r:r + P, c:c + P] for i, (r, c) in enumerate(zip(self.r0, self.c0))])

    def scatter_slices(self, canvas, region):
        P = self.P
        for i, (r, c) in enumerate(zip(self.r0, self.c0)):
            canvas[i, :, r:r + P, c:c + P] = region[i]


def _ramp(x, w):
    """Soft step 0->1 over width w centred on 0 (anti-aliased edge)."""
    t = x * (1.0 / w) if np.isscalar(w) else x / w
    t += 0.5
    return np.clip(t, 0, 1, out=t)


def _blend(dst, alpha, color):
    """In-place over-composite on channel-first dst [n,C,H,W] (C = 3 rgb or 4 rgb + heat).
    color: [C'] constant, [n,C'] per image or [n,C',H,W]; extra channels are ignored."""
    color = np.asarray(color, _F32)
    C = dst.shape[1]
    tail = (1,) * (dst.ndim - 2)
    if color.ndim == 1:
        color = color[:C].reshape((C,) + tail)
    elif color.ndim == 2:
        color = color[:, :C].reshape((len(color), C) + tail)
    else:
        color = color[:, :C]
    if math.prod(dst.shape[2:]) < 1024:
        t = color - dst
        t *= alpha[:, None]
        dst += t
        return
    # large windows: per-channel passes avoid numpy's slow broadcast of alpha over a middle axis (~1.6x)
    for c in range(C):
        d = dst[:, c]
        t = color[:, c] - d if color.ndim == dst.ndim else color[c] - d
        t *= alpha
        d += t


def _col4(rgb, heat):
    return np.concatenate([rgb, np.broadcast_to(np.asarray(heat, _F32).reshape(-1, 1), (rgb.shape[0], 1))],
                          1).astype(_F32)


# ----------------------------------------------------------------------------------------------------------
# Renderer

def _upsample_matrix(h, S):
    """[h, S] bilinear interpolation weights (edge-clamped) from h to S samples."""
    pos = np.clip((np.arange(S) + 0.5) * h / S - 0.5, 0, h - 1)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, h - 1)
    w = pos - i0
    U = np.zeros((h, S), _F32)
    U[i0, np.arange(S)] += 1 - w
    U[i1, np.arange(S)] += w
    return U


def _bump(d2):
    """Cheap smooth bump of a squared distance: (1 - d2)^2 inside the unit ball (exp is ~5x slower)."""
    t = np.clip(1 - d2, 0, 1)
    return t * t


def _flat_grid(h):
    """Pixel-centre grids of an h x h image in normalised coordinates, flattened to [1, h*h]."""
    g = ((np.arange(h, dtype=_F32) + 0.5) / h * 2 - 1)
    return np.tile(g, h)[None, :], np.repeat(-g, h)[None, :]


def _backdrop(geo, idf, imf, h, C=4):
    """Everything behind the head at reduced resolution h: gradient and clutter (at h/2: an out-of-focus
    background), then torso, neck, long hair, bun."""
    n = geo.n
    r = imf["_bg"]
    hq = h // 2 if h % 2 == 0 and h >= 24 else h
    gu, gv = _flat_grid(hq)
    c1 = 0.15 + 0.75 * r[:, 0:3]
    c2 = np.clip(c1 * (0.5 + 0.8 * r[:, 3:4]) + 0.2 * (r[:, 4:7] - 0.5), 0, 1)
    ang = r[:, 7] * 2 * np.pi
    t = (np.cos(ang)[:, None] * gu + np.sin(ang)[:, None] * gv) * 0.5 + 0.5
    bg = np.empty((n, C, hq * hq), _F32)
    bg[:, :3] = c1[:, :, None] + t[:, None] * (c2 - c1)[:, :, None]
    if C == 4:
        bg[:, 3] = 0.08 + 0.1 * t
    clutter = imf["clutter"]
    px_ = 2.0 / hq
    for k in range(3):
        q = r[:, 20 + k]
        on = (q < clutter).astype(_F32) * clutter
        px, py = (2 * r[:, 8 + k] - 1)[:, None], (2 * r[:, 11 + k] - 1)[:, None]
        rad = (0.12 + 0.35 * r[:, 14 + k])[:, None]
        col = np.clip(np.stack([r[:, 17 + k], r[:, (3 * k + 5) % 24], r[:, (7 * k + 2) % 24]], 1) * 1.1, 0, 1)
        dx, dy = np.abs(gu - px), np.abs(gv - py)
        dist = np.maximum(dx, dy) if k % 2 else np.sqrt(dx * dx + dy * dy)
        a = _ramp(rad - dist, 2 * px_) * on[:, None]
        _blend(bg, a, _col4(col, 0.1 + 0.2 * r[:, 23 - k]))
    if hq != h:
        bg = _Upsampler(hq, h)(bg.reshape(n * C, hq * hq)).reshape(n, C, h * h)
        gu, gv = _flat_grid(h)
    # body, in roll-free head units
    X0 = (gu - geo.cx[:, None]) / geo.s[:, None]
    Y0 = (gv - geo.cy[:, None]) / geo.s[:, None]
    cr, sr = geo.cr[:, None], geo.sr[:, None]
    X = cr * X0 + sr * Y0
    Y = -sr * X0 + cr * Y0
    pixb = (px_ / geo.s)[:, None]
    ax = geo.ax[:, None]
    lc = imf["light_color"]
    amb = imf["ambient"]
    style = idf["hair_style"]
    hair4 = _col4(idf["hair_rgb"] * lc * (amb + 0.15)[:, None], 0.3)
    # long hair curtain behind the head and shoulders
    lsel = np.nonzero(style == 2)[0]
    if lsel.size:
        Xl, Yl, axl = X[lsel], Y[lsel], ax[lsel]
        hl = idf["hair_len"][lsel][:, None]
        w = axl * (1.16 + 0.08 * np.clip(-Yl, 0, 2))
        top = np.sqrt(np.maximum(1 - (Xl / (axl * 1.18)) ** 2, 0)) * 1.12
        a = _ramp(w - np.abs(Xl), pixb[lsel]) * _ramp(top - Yl, pixb[lsel]) \
            * _ramp(Yl + hl - 0.25 * (Xl / axl) ** 2, 2 * pixb[lsel])
        sub = bg[lsel]
        _blend(sub, a, hair4[lsel] * np.array([0.85, 0.85, 0.85, 1], _F32))
        bg[lsel] = sub
    cloth = np.clip(r[:, 9:12] * 0.8 + 0.1, 0, 1)
    torso = _ramp(1 - np.sqrt((X / (2.0 * ax)) ** 2 + ((Y + 1.95) / 0.8) ** 2), 2 * pixb / (1.5 * ax))
    _blend(bg, torso, _col4(cloth * lc * (amb + 0.3)[:, None], 0.35))
    neck = _ramp(0.45 * ax - np.abs(X), pixb) * _ramp(-0.3 - Y, pixb)
    _blend(bg, neck, _col4(idf["skin_rgb"] * 0.62 * lc, 0.8))
    bsel = np.nonzero(style == 3)[0]
    if bsel.size:
        pb = np.stack([np.zeros(n, _F32), np.full(n, 0.95, _F32), -0.35 * geo.az], 1)
        bu, bv, _ = geo.project(pb)
        bu, bv = bu[bsel, None], bv[bsel, None]
        dd = np.sqrt((gu - bu) ** 2 + (gv - bv) ** 2) / geo.s[bsel, None]
        sub = bg[bsel]
        _blend(sub, _ramp(0.36 - dd, pixb[bsel]), hair4[bsel])
        bg[bsel] = sub
    return bg.reshape(n, C, h, h)


def _render_chunk(cfg, idf, imf, domains):
    S = cfg.image_size
    geo = _Geo(idf, imf, S, cfg.difficulty)
    n = geo.n
    h = S // 2 if S % 2 == 0 and S >= 48 else S
    half = S >= 48  # head surface at half resolution
    # the heat channel (for the infrared domain) is carried only when some image needs it
    C = 4 if (domains == 1).any() else 3
    bg = _backdrop(geo, idf, imf, h, C)
    if h != S:  # bilinear upsampling as two small matmuls
        U = _upsample_matrix(h, S)
        canvas = np.matmul(U.T, (bg.reshape(-1, h) @ U).reshape(n, C, h, S))
    else:
        canvas = bg
    skin = idf["skin_rgb"]
    lc = imf["light_color"]
    # light direction in camera frame, then in the roll-free frame the head solve uses
    az, el = np.deg2rad(imf["light_azimuth"]), np.deg2rad(imf["light_elevation"])
    L = np.stack([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)], 1).astype(_F32)
    Lr = np.stack([geo.cr * L[:, 0] + geo.sr * L[:, 1], -geo.sr * L[:, 0] + geo.cr * L[:, 1], L[:, 2]], 1)
    amb = imf["ambient"]

    bc = _bc

    # the head box: the head, hair, hat and ears live within 1.18 head units of the centre (hat shell 1.14)
    box = _Patch(geo, geo.cx, geo.cy, None, 1.18)
    B = box.P
    hb = (B + 1) // 2 if half else B
    # box maps are flattened to [n, B*B]: long inner loops, per-image scalars broadcast as [n, 1]
    taper = bc(idf["jaw_taper"])
    _, Y, Xt = _head_plane(geo, box.gu, box.gv, taper)
    pix = 2.0 / (S * geo.s)  # head units per pixel
    pixb = bc(pix)
    # at the default framing the head box is the whole image: work on the canvas itself
    full = B == S
    region = canvas.reshape(n, C, -1) if full else box.gather_slices(canvas).reshape(n, C, -1)

    # ears, behind the head silhouette (small windows inside the head box)
    for side in (-1.0, 1.0):
        pe = np.stack([side * geo.ax * 0.97, np.full(n, 0.02, _F32), -0.05 * geo.az], 1)
        eu, ev, _ = geo.project(pe)
        ep = _Patch(geo, eu, ev, None, 0.2 * float(idf["ear_size"].max()), box)
        rx_ = 0.09 * idf["ear_size"] * np.clip(np.abs(geo.R[:, 0, 0]), 0.3, 1)
        er = ((ep.guf - bc(eu)) / bc(geo.s * rx_)) ** 2 + ((ep.gvf - bc(ev)) / bc(geo.s * 0.17 * idf["ear_size"])) ** 2
        reg = ep.gather(region)
        _blend(reg, _ramp(1 - er, 0.3), _col4(skin * lc * (amb + 0.25)[:, None], 0.8))
        ep.scatter(region, reg)

    # ---- head ellipsoid: silhouette, depth, normals (orthographic, roll-free frame) ----
    M = geo.ryp @ (np.stack([1 / geo.ax ** 2, 1 / geo.ay ** 2, 1 / geo.az ** 2], 1)[:, :, None]
                   * geo.ryp.transpose(0, 2, 1))
    M = M.astype(_F32)
    m = {k: bc(M[:, i, j]) for k, (i, j) in dict(xx=(0, 0), xy=(0, 1), xz=(0, 2), yy=(1, 1), yz=(1, 2),
                                                   zz=(2, 2)).items()}
    head = _Head(Xt, Y, m, geo.ryp, pixb, surface=not half)
    head_a = head.alpha
    if half:
        # surface coordinates and shading are smooth inside the head: solve them on a half-resolution grid
        # and upsample (two small matmuls per map); silhouettes (head, hair shell, hat) stay at full res
        kpos = (np.arange(hb, dtype=_F32) + 0.5) * _F32(B / hb)
        gul = ((box.c0[:, None] + kpos[None, :]) * _F32(2.0 / S) - 1).astype(_F32)[:, None, :]
        gvl = (1 - (box.r0[:, None] + kpos[None, :]) * _F32(2.0 / S)).astype(_F32)[:, :, None]
        _, Yl, Xtl = _head_plane(geo, gul, gvl, taper)
        surf = _Head(Xtl, Yl, m, geo.ryp, pixb)
        up = _Upsampler(hb, B)
    else:
        surf, up = head, _Upsampler(B, B)
    lam = surf.lambert(Lr, np.stack([1 / geo.ax ** 2, 1 / geo.ay ** 2, 1 / geo.az ** 2], 1).astype(_F32))
    shade = up(bc(amb * 1.1) + (1.15 - bc(amb)) * lam)

    # albedo (rgb + heat) of the head surface
    alb = np.empty((n, C, B * B), _F32)
    alb[:, :3] = skin[:, :, None]
    if C == 4:
        alb[:, 3] = 0.72
    # beard (subset)
    bsel = np.nonzero(idf["beard"])[0]
    if bsel.size:
        my = bc(idf["mouth_y"][bsel])
        xb, yb, zb = (up(c[bsel]) for c in (surf.xh, surf.yh, surf.zh))
        dens = 0.8 + 0.2 * np.sin(xb * 90 + yb * 37)
        area = _ramp(my + 0.16 - yb, 0.05) * _ramp(zb + 0.05, 0.1)
        mous = _ramp(0.05 - np.abs(yb - my - 0.1), 0.03) * _ramp(0.2 - np.abs(xb), 0.05)
        ba = np.maximum(area, mous) * dens * bc(idf["beard_density"][bsel])
        sub = alb[bsel]
        _blend(sub, ba, _col4(idf["hair_rgb"][bsel] * 0.8, 0.5))
        alb[bsel] = sub

    # ---- facial features in local patches of the box ----
    ex = _expression_params(imf)
    landmarks = np.zeros((n, 5, 2), _F32)
    _draw_eyes_brows(geo, box, idf, imf, ex, alb, head_a, landmarks)
    _draw_nose(geo, box, idf, imf, ex, alb, head_a, L, landmarks)
    _draw_mouth(geo, box, idf, imf, ex, alb, head_a, landmarks)

    # mask (subset): covers nose and mouth on the head surface
    msel = np.nonzero(imf["mask"])[0]
    if msel.size:
        ym, zm = up(surf.yh[msel]), up(surf.zh[msel])
        ny_ = bc(-idf["nose_len"][msel] + 0.08)
        area = _ramp(ny_ - ym, 0.03) * _ramp(ym + 0.9, 0.05) * _ramp(zm - 0.1, 0.1)
        pleat = 1 - 0.12 * (np.sin(ym * 60) > 0.6)
        mc = np.where(imf["_acc"][msel, 0:1] < 0.6, np.array([[0.62, 0.78, 0.9]], _F32),
                      np.array([[0.93, 0.93, 0.92]], _F32))
        sub = alb[msel]
        mcol = _col4(mc, 0.55)[:, :C, None] * pleat[:, None]
        if C == 4:
            mcol[:, 3] = 0.55
        _blend(sub, area, mcol)
        alb[msel] = sub

    # shade the head and composite
    alb[:, :3] *= shade[:, None] * lc[:, :, None]
    _blend(region, head_a, alb)

    # ---- hair shell: a slightly larger ellipsoid, cut by the hairline in head coordinates ----
    _hair_shell(geo, idf, imf, head, surf, up, shade, region)
    # ---- hat (subset): beanie on a larger shell over the top of the head ----
    tsel = np.nonzero(imf["hat"])[0]
    if tsel.size:
        _hat(geo, idf, imf, tsel, head, surf, up, shade, region)
    if not full:
        box.scatter_slices(canvas, region.reshape(n, C, B, B))

    # ---- occluders (subset): hand, bar or blob over part of the face ----
    osel = np.nonzero(imf["occluded"])[0]
    if osel.size:
        _occluder(geo, idf, imf, osel, canvas, pix)
    return canvas, landmarks


def _expression_params(imf):
    t = _EXPR_TABLE[imf["expression"]] * imf["expression_intensity"][:, None]
    return {k: t[:, i] for i, k in enumerate(_EXPR_NAMES)}


def _draw_eyes_brows(geo, box, idf, imf, ex, alb, head_a, landmarks):
    open_ = np.where(imf["eyes_closed"] == 1, _F32(0.06), 1 + ex["eye_open"]).astype(_F32)
    sun, gl = imf["sunglasses"].astype(_F32), imf["glasses"].astype(_F32)
    frame_rgb = np.array([[0.08, 0.07, 0.07], [0.45, 0.30, 0.15], [0.78, 0.78, 0.80], [0.80, 0.65, 0.30]],
                         _F32)[np.minimum((imf["_acc"][:, 1] * 4).astype(np.int64), 3)]
    brow_rgb = idf["hair_rgb"] * 0.45 + 0.03
    ew, eh = idf["eye_w"], idf["eye_h"]
    for li, side in ((0, -1.0), (1, 1.0)):
        x = side * idf["eye_sep"]
        p = geo.surface_point(x, idf["eye_y"])
        u, v, Ji, vis, _ = geo.frame(p)
        landmarks[:, li] = np.stack([(u + 1) / 2, (1 - v) / 2], 1)
        # the window reaches up to raised brows: centred 0.1 above the eye, the offset projected by the
        # tangent frame's forward Jacobian (the inverse of Ji)
        J = np.linalg.inv(Ji)
        pt = _Patch(geo, u, v, Ji, 0.30, box, centre=(u + 0.1 * J[:, 0, 1], v + 0.1 * J[:, 1, 1]))
        a, b = pt.a * side, pt.b  # a > 0 points outwards for both eyes
        pix = pt.pix
        reg = pt.gather(alb)
        hm = pt.gather(head_a) * np.clip(vis * 4, 0, 1)[:, None]
        # eye socket shading
        sock = _bump(((a / (ew[:, None] * 2.0)) ** 2 + ((b + 0.01) / 0.13) ** 2)) * 0.14
        reg[:, :3] *= (1 - sock)[:, None]
        if reg.shape[1] == 4:  # thermal: the orbits (inner canthus) are the warmest skin of a face
            reg[:, 3] += sock * 1.2
        W = ew[:, None]
        H = (eh * open_ * (1 + 0.35 * imf["gaze_y"]))[:, None]  # the upper lid follows a vertical gaze
        tilt = (idf["eye_tilt"])[:, None] * a
        q = np.clip(1 - (a / W) ** 2, 0, 1)
        rq = np.sqrt(q)  # fractional powers are ~50x slower than sqrt in numpy
        upper = H * rq + tilt
        lower = -0.7 * H * rq * np.sqrt(rq) + tilt + 0.004
        inside = _ramp(upper - b, pix) * _ramp(b - lower, pix) * _ramp(W - np.abs(a), pix)
        _blend(reg, inside * hm, np.array([0.92, 0.90, 0.88, 0.97], _F32))
        # gaze_x > 0 looks to image right; the iris travels most of the eye's half-width (a 64 px face's
        # eye is ~6 px wide: a smaller travel moves the pupil by less than a pixel and no network can see it)
        gx = (imf["gaze_x"] * side)[:, None] * W * 0.75
        gy = imf["gaze_y"][:, None] * eh[:, None] * 0.6
        rr = np.sqrt((a - gx) ** 2 + (b - gy) ** 2)
        ir = eh[:, None] * 1.05
        iris = _ramp(ir - rr, pix) * inside
        _blend(reg, iris * hm, _col4(idf["eye_rgb"], 0.97))
        pupil = _ramp(ir * 0.45 - rr, pix) * inside
        _blend(reg, pupil * hm, np.array([0.03, 0.03, 0.03, 0.97], _F32))
        spec = _ramp(ir * 0.22 - np.sqrt((a - gx - ir * 0.3) ** 2 + (b - gy - ir * 0.35) ** 2), pix) * inside
        _blend(reg, spec * hm * 0.8, np.array([1, 1, 1, 0.9], _F32))
        # lash line (thicker at the outer corner) and lid crease
        lash_t = (0.010 + 0.008 * np.clip(a / W, 0, 1)) + pix * 0.3
        lash = _ramp(lash_t - np.abs(b - upper - 0.004), pix) * _ramp(W * 1.08 - np.abs(a), pix)
        _blend(reg, lash * hm * 0.9, np.array([0.08, 0.05, 0.04, 0.45], _F32))
        crease = _ramp(0.006 - np.abs(b - (H * 0.6 + eh[:, None] * 0.9) * rq - tilt), pix)
        _blend(reg, crease * hm * 0.25 * _ramp(W - np.abs(a), pix), np.array([0.3, 0.18, 0.12, 0.9], _F32))
        # brows: raise moves the whole brow, inner tilts its inner end (up: sad/fear, down: the angry V),
        # squeeze draws the brows together
        by = (idf["brow_gap"] + 0.14 * ex["brow_raise"])[:, None] + tilt * 0.5
        bw = (ew * 1.35)[:, None]
        ac = a + 0.02 + (0.05 * ex["brow_squeeze"])[:, None]
        arch = idf["brow_arch"][:, None] * (1 - (ac / bw) ** 2)
        bi = ex["brow_inner"]
        inner = (0.12 * bi)[:, None] * np.clip(-ac / bw, 0, 1.3) \
            - (0.05 * bi * (bi > 0))[:, None] * np.clip(ac / bw, 0, 1)
        curve = by + arch + inner
        bt = idf["brow_thick"][:, None] * (1.2 - 0.5 * np.clip((ac / bw + 1) / 2, 0, 1))
        brow = _ramp(bt - np.abs(b - curve), pix) * _ramp(bw - np.abs(ac), pix * 2)
        _blend(reg, brow * hm * 0.95, _col4(brow_rgb, 0.3))
        # forehead lines when the brows go up (surprise, fear)
        fl = np.clip(ex["brow_raise"] - 0.3, 0, 1)
        fsel = np.nonzero(fl > 0)[0]
        if fsel.size:
            bf = b[fsel] - curve[fsel] - 0.07
            lines = _ramp(0.006 - np.minimum(np.abs(bf), np.abs(bf - 0.05)), pix[fsel]) \
                * _ramp(bw[fsel] * 1.1 - np.abs(ac[fsel]), pix[fsel] * 3)
            rs = reg[fsel]
            _blend(rs, lines * hm[fsel] * fl[fsel, None] * 0.5, np.array([0.3, 0.17, 0.12, 0.6], _F32))
            reg[fsel] = rs
        # crow's feet with age and smiling (subset that has them)
        cf = np.clip(idf["wrinkle"] + 0.5 * ex["cheek"], 0, 1)
        csel = np.nonzero(cf > 0.05)[0]
        if csel.size:
            ac_, bc_, W_, pix_ = a[csel], b[csel], W[csel], pix[csel]
            crow = _ramp(0.004 - np.abs(np.abs(bc_ + 0.25 * (ac_ - W_)) - 0.02), pix_) \
                * _ramp(0.07 - np.abs(ac_ - W_ - 0.05), pix_)
            rs = reg[csel]
            _blend(rs, crow * hm[csel] * cf[csel, None] * 0.3, np.array([0.25, 0.15, 0.1, 0.9], _F32))
            reg[csel] = rs
        # glasses and sunglasses (subset): lens outline around the eye
        gsel = np.nonzero(sun + gl)[0]
        if gsel.size:
            rs = reg[gsel]
            _draw_glasses(rs, a[gsel], b[gsel], W[gsel], pix[gsel], hm[gsel], sun[gsel][:, None],
                          gl[gsel][:, None], idf["eye_sep"][gsel][:, None], frame_rgb[gsel])
            reg[gsel] = rs
        pt.scatter(alb, reg)


def _draw_glasses(reg, a, b, W, pix, hm, sg, gl, sep, frame_rgb):
    la = (a - 0.01) / (W * (1.45 + 0.2 * sg))
    lb = (b + 0.01 * sg) / (W * (1.1 + 0.2 * sg))
    # rounded-rectangle lens: blend of the max-norm and the euclidean norm
    lr = np.maximum(np.abs(la), np.abs(lb)) * 0.55 + np.sqrt(la * la + lb * lb) * 0.45
    lens = _ramp(1 - lr, 2 * pix / W)
    rim = _ramp(0.012 + pix * 0.4 - np.abs(lr - 1) * W * 1.2, pix)
    # bridge towards the nose, temple arm outwards
    bridge = _ramp(0.01 + pix * 0.3 - np.abs(b - 0.02 - 0.02 * (a + sep) ** 2), pix) \
        * _ramp(-a - W * 1.35, pix) * _ramp(sep + a + 0.01, pix)
    temple = _ramp(0.008 + pix * 0.3 - np.abs(b - 0.03), pix) * _ramp(a - W * 1.4, pix)
    _blend(reg, lens * sg * 0.94 * hm, np.array([0.03, 0.03, 0.05, 0.25], _F32))
    frame = np.maximum(np.maximum(rim, bridge), temple)
    _blend(reg, frame * 0.95 * np.clip(hm + bridge, 0, 1), _col4(frame_rgb, 0.3))
    if reg.shape[1] == 4:  # glass is opaque to thermal infrared: lenses look cold
        reg[:, 3] += lens * hm * gl * 0.85 * (0.25 - reg[:, 3])
    glint = _ramp(0.02 - np.abs(la + lb - 0.5) * W, pix) * lens * gl * 0.25
    _blend(reg, glint * hm, np.array([1, 1, 1, 0.3], _F32))


def _draw_nose(geo, box, idf, imf, ex, alb, head_a, L, landmarks):
    n = geo.n
    nl = idf["nose_len"]
    base = geo.surface_point(np.zeros(n, _F32), -nl)
    u, v, Ji, vis, rn2 = geo.frame(base)
    prot = idf["nose_prot"]
    tip3 = base.copy()
    tip3[:, 2] += prot
    tu, tv, _ = geo.project(tip3)
    landmarks[:, 2] = np.stack([(tu + 1) / 2, (1 - tv) / 2], 1)
    # the tip offset in local tangent coordinates (protrusion seen under pose)
    off = np.einsum("nij,nj->ni", Ji, np.stack([tu - u, tv - v], 1))
    pt = _Patch(geo, u, v, Ji, 0.30, box)
    a, b, pix = pt.a, pt.b, pt.pix
    reg = pt.gather(alb)
    hm = pt.gather(head_a)
    ox, oy = off[:, 0, None], off[:, 1, None]
    nw = idf["nose_w"][:, None]
    # bridge side shadow on the side away from the key light
    side = np.where(L[:, 0] > 0, -1.0, 1.0).astype(_F32)[:, None]
    t = np.clip(b / (nl[:, None] * 0.9), 0, 1)  # 0 at tip level, 1 at eye level
    line_x = ox * (1 - t) + side * nw * (0.55 - 0.25 * t)
    sh = _ramp(0.018 - np.abs(a - line_x), pix) * _ramp(nl[:, None] * 0.85 - b, pix * 3) * _ramp(b + 0.01, pix)
    _blend(reg, sh * hm * 0.35, np.array([0.25, 0.13, 0.09, 0.9], _F32))
    # alae (nose wings) and nostrils around the projected tip
    for s_ in (-1.0, 1.0):
        cxn = ox + s_ * nw * 0.62
        d = np.sqrt(((a - cxn) / (nw * 0.48)) ** 2 + ((b - oy + 0.012) / 0.04) ** 2)
        wing = _ramp(0.13 - np.abs(d - 1) * 0.1, pix) * _ramp(b - oy + 0.03, pix)
        _blend(reg, wing * hm * 0.45, np.array([0.3, 0.16, 0.11, 0.9], _F32))
        dn = np.sqrt(((a - ox - s_ * nw * 0.38) / (nw * 0.28)) ** 2 + ((b - oy + 0.025) / 0.017) ** 2)
        _blend(reg, _ramp(1 - dn, 0.5) * hm * 0.75, np.array([0.12, 0.05, 0.04, 0.95], _F32))
    # tip highlight
    hl = _bump((((a - ox) / (nw * 0.7)) ** 2 + ((b - oy - 0.02) / 0.05) ** 2)) * 0.12
    reg[:, :3] += (hl * hm)[:, None]
    if reg.shape[1] == 4:  # the nose tip is the coldest part of a face
        reg[:, 3] -= hl * hm * 1.6
    # disgust: wrinkles across the bridge
    nwk = ex["nose_wrinkle"][:, None]
    if (nwk > 0).any():
        bb = b - nl[:, None] * 0.6
        wr = _ramp(0.004 - np.minimum(np.minimum(np.abs(bb), np.abs(bb - 0.035)), np.abs(bb + 0.035)), pix) \
            * _ramp(nw * 0.8 - np.abs(a), pix) * _ramp(nl[:, None] * 0.85 - b, pix) \
            * _ramp(b - nl[:, None] * 0.4, pix)
        _blend(reg, wr * hm * nwk * 0.6, np.array([0.3, 0.16, 0.11, 0.9], _F32))
    pt.scatter(alb, reg)


def _draw_mouth(geo, box, idf, imf, ex, alb, head_a, landmarks):
    n = geo.n
    my = idf["mouth_y"]
    smile = imf["smile"]
    # corner lift: the lip line is lift * ((a/W)^2 - 0.3), a U for smiles and an arch for sad/fear/disgust
    lift = (0.17 * smile + 0.10 * ex["corner"]).astype(_F32)
    asym = (0.06 * ex["asym"]).astype(_F32)
    mw = (idf["mouth_w"] * (1 + ex["mouth_width"] + 0.2 * smile)).astype(_F32)
    rnd_ = ex["mouth_round"]
    opn = (imf["mouth_open"] * (0.15 + 0.10 * rnd_ + 0.05 * smile)).astype(_F32)
    for li, s_ in ((3, -1.0), (4, 1.0)):
        pc = geo.surface_point(s_ * mw * 0.95, my + lift * 0.6 + s_ * asym * 0.95)
        cu, cv, _ = geo.project(pc)
        landmarks[:, li] = np.stack([(cu + 1) / 2, (1 - cv) / 2], 1)
    p = geo.surface_point(np.zeros(n, _F32), my)
    u, v, Ji, vis, _ = geo.frame(p)
    # wide and short: blush and folds reach |a| < 0.45, b in -0.22 .. 0.30
    J = np.linalg.inv(Ji)
    pt = _Patch(geo, u, v, Ji, (0.46, 0.27), box, centre=(u + 0.04 * J[:, 0, 1], v + 0.04 * J[:, 1, 1]))
    a, b, pix = pt.a, pt.b, pt.pix
    reg = pt.gather(alb)
    hm = pt.gather(head_a)
    W = mw[:, None]
    an = a / W
    an2 = an * an
    q = np.clip(1 - an2, 0, 1)
    rnd = rnd_[:, None]
    sm = smile[:, None]
    cl = lift[:, None] * (an2 - 0.3) + asym[:, None] * an
    # disgust: the upper lip rises on one side, baring a dark gap there
    ul = ex["upper_lip"][:, None] * 0.07 * np.clip(0.3 + an, 0, 1)
    rq = np.sqrt(q)
    oh = opn[:, None] * (q * (1 - rnd) + rq * rnd) + ul * 0.8 * q
    # a grin opens mostly downwards (D shape), a round mouth symmetrically
    o_up, o_dn = oh * (0.5 - 0.25 * sm), oh * (0.5 + 0.25 * sm)
    press = ex["lip_press"][:, None]
    lt = idf["lip_thick"][:, None] * (1 - 0.35 * np.clip(-ex["corner"][:, None], 0, 1) * (1 - rnd)) \
        * (1 - 0.65 * press)
    bow = 0.008 * _bump((np.abs(a) - 0.035) ** 2 / 0.0012) - 0.006 * _bump(a * a / 0.0008)
    top = cl + o_up + ul + lt * 0.85 * rq + bow
    bot = cl - o_dn - lt * 1.05 * rq
    lips = _ramp(top - b, pix) * _ramp(b - bot, pix) * _ramp(W - np.abs(a), pix)
    # cheeks: nasolabial folds (age, smiling, disgust) and blush when happy
    cheek = ex["cheek"][:, None]
    fold_x = W + 0.04 + 0.12 * np.clip(b - cl, 0, 0.3)
    fold = _ramp(0.005 - np.abs(np.abs(a) - fold_x), pix) * _ramp(b - cl + 0.04, pix) * _ramp(0.22 - b, pix)
    fs = np.clip(idf["wrinkle"][:, None] * 0.6 + 0.6 * sm + 0.5 * ex["upper_lip"][:, None], 0, 1)
    _blend(reg, fold * hm * fs * 0.5, np.array([0.35, 0.2, 0.15, 0.6], _F32))
    blush = _bump((((np.abs(a) - 0.3) / 0.13) ** 2 + ((b - 0.2) / 0.1) ** 2)) * cheek * 0.25
    _blend(reg, blush * hm, np.array([0.9, 0.45, 0.4, 0.95], _F32))
    _blend(reg, lips * hm * 0.85, _col4(idf["lip_rgb"], 0.88))
    mid = b - cl - ul * 0.5 + (o_dn - o_up) * 0.5  # 0 along the middle of the opening
    inner = _ramp(oh * 0.5 - np.abs(mid), pix) * _ramp(W * 0.92 - np.abs(a), pix)
    # the mouth cavity is dark in light and the hottest region of a face in thermal infrared
    _blend(reg, inner * hm, np.array([0.10, 0.02, 0.03, 1.0], _F32))
    # upper teeth: a band under the upper lip, shown by grins, fear and the disgust sneer
    tb = np.clip(oh * 0.45, 0, 0.035)
    teeth = inner * _ramp(mid - oh * 0.5 + tb, pix) * _ramp(0.6 - rnd, 0.2) \
        * np.clip(sm * 2 + 0.5 + 0.5 * ex["upper_lip"][:, None], 0, 1)
    _blend(reg, teeth * hm * 0.95, np.array([0.95, 0.93, 0.88, 0.6], _F32))
    seam = _ramp(0.006 + 0.3 * pix + 0.006 * press - np.abs(b - cl - ul * 0.5), pix) \
        * _ramp(W - np.abs(a), pix) * _ramp(0.02 - oh, 0.02)
    _blend(reg, seam * hm * 0.8, np.array([0.22, 0.08, 0.07, 0.95], _F32))
    corners = _bump(((np.abs(a) - W) ** 2 + (b - cl) ** 2) / 0.0012) * 0.35
    _blend(reg, corners * hm, np.array([0.3, 0.15, 0.12, 0.9], _F32))
    pt.scatter(alb, reg)


class _Head:
    """Shared per-pixel head-ellipsoid quantities in the head box; shells are the same ellipsoid scaled by k."""

    def __init__(self, Xt, Y, m, rt, pixb, surface=True):
        """surface=False: only the silhouette (alpha and the quadratic's discriminant), no surface point."""
        self.m, self.rt, self.pixb = m, rt, pixb
        self.bh = m["xz"] * Xt + m["yz"] * Y  # half b of the quadratic in z
        quad = m["xx"] * Xt * Xt + 2 * m["xy"] * Xt * Y + m["yy"] * Y * Y
        self.disc = self.bh * self.bh - m["zz"] * (quad - 1)
        # np.clip, not np.maximum(x, 0): numpy 2.4's scalar maximum/minimum loops are ~3x slower than clip
        self.sq = np.sqrt(np.clip(self.disc, 0, np.inf))
        # inside: sqrt(disc) grows ~linearly with the distance to the silhouette; outside: disc itself
        self.alpha = _ramp(self.sq + np.clip(self.disc, -np.inf, 0), 1.5 * pixb)
        if not surface:
            return
        self.Z = (self.sq - self.bh) / m["zz"]
        b = _bc
        self.xh = b(rt[:, 0, 0]) * Xt + b(rt[:, 1, 0]) * Y + b(rt[:, 2, 0]) * self.Z
        self.yh = b(rt[:, 0, 1]) * Xt + b(rt[:, 1, 1]) * Y + b(rt[:, 2, 1]) * self.Z
        self.zh = b(rt[:, 0, 2]) * Xt + b(rt[:, 1, 2]) * Y + b(rt[:, 2, 2]) * self.Z

    def lambert(self, Lr, inv_axes2):
        """max(0, n.L) with the ellipsoid normal n = diag(1/a^2) p taken in head coordinates, where the light
        is 3 numbers per image (cheaper than rotating normals per pixel)."""
        Lh = np.einsum("nji,nj->ni", self.rt, Lr) * inv_axes2  # R^T L, scaled by the normal's diag(1/a^2)
        dot = _bc(Lh[:, 0]) * self.xh + _bc(Lh[:, 1]) * self.yh + _bc(Lh[:, 2]) * self.zh
        ux, uy, uz = (self.xh * _bc(inv_axes2[:, 0]), self.yh * _bc(inv_axes2[:, 1]),
                      self.zh * _bc(inv_axes2[:, 2]))
        return np.clip(dot / np.sqrt(ux * ux + uy * uy + uz * uz + 1e-6), 0, np.inf)

    def shell_alpha(self, k, sel=None):
        """Silhouette alpha of the ellipsoid scaled by k [n] (optionally for a subset of images)."""
        def s_(x):
            return x if sel is None else x[sel]
        kb = _bc(k)
        disc = s_(self.disc) + s_(self.m["zz"]) * (kb * kb - 1)
        sq = np.sqrt(np.clip(disc, 0, np.inf))
        return _ramp(sq + np.clip(disc, -np.inf, 0), 1.5 * kb * s_(self.pixb))


def _head_plane(geo, gu, gv, taper):
    """Pixel grid [n,1,W], [n,H,1] -> roll-free head-plane coordinates X, Y and the jaw-tapered Xt, [n, H*W]."""
    n = geo.n
    X0 = (gu - geo.cx[:, None, None]) / geo.s[:, None, None]
    Y0 = (gv - geo.cy[:, None, None]) / geo.s[:, None, None]
    cr, sr = geo.cr[:, None, None], geo.sr[:, None, None]
    X = (cr * X0 + sr * Y0).reshape(n, -1)
    Y = (-sr * X0 + cr * Y0).reshape(n, -1)
    t = np.clip(-Y, 0, 1)
    t *= t
    t *= taper
    t += 1
    return X, Y, t * X


class _Upsampler:
    """Bilinear upsampling of flattened square maps [m, h*h] -> [m, B*B] (identity when h == B)."""

    def __init__(self, h, B):
        self.h, self.B = h, B
        self.U = _upsample_matrix(h, B) if h != B else None

    def __call__(self, x):
        if self.U is None:
            return x
        h, B, m = self.h, self.B, x.shape[0]
        return np.matmul(self.U.T, (np.ascontiguousarray(x).reshape(m * h, h) @ self.U).reshape(m, h, B)
                         ).reshape(m, B * B)


def _bc(x):
    """Per-image scalar [n] -> broadcastable to a flattened window map [n, K]."""
    return x[:, None]


def _hair_shell(geo, idf, imf, head, surf, up, shade, canvas):
    """Hair on a slightly larger ellipsoid: its silhouette, cut by a hairline. Region and shading reuse the
    head surface: inside the head they match the shell closely, and on the thin rim outside it the clamped
    head solution is the silhouette point, whose normal is what a rim of hair would have. The hairline cut
    and the strand texture are smooth: they are evaluated on surf's grid and upsampled with `up`."""
    style = idf["hair_style"]
    k = np.where(style == 2, 1.09, np.where(style == 1, 1.06, 1.05)).astype(_F32)
    inside = head.shell_alpha(k)
    xh, yh, zh = surf.xh, surf.yh, surf.zh
    b_ = _bc
    ax = b_(geo.ax)
    part = b_(idf["hair_part"]) * 0.3 * ax
    wave = b_(idf["hair_wave"])
    axh = np.abs(xh) / ax
    axh2 = axh * axh
    hl = b_(idf["hairline"]) + np.abs(xh - part) * (0.10 / ax) - 0.35 * axh2 * axh2
    front = _ramp(yh - hl, 0.04)
    is_long = b_((style == 2).astype(_F32))
    is_bun = b_((style == 3).astype(_F32))
    # per-image offsets are folded into [n,1] constants first: one full-window pass fewer per term
    back = _ramp((0.35 * is_long - 0.05) - zh, 0.06) * _ramp(yh + (0.35 + 0.5 * is_long), 0.05)
    sides = _ramp(axh + (0.06 * is_long - 0.86), 0.04) * _ramp(yh + (0.05 + 0.55 * is_long - 0.2 * is_bun), 0.05)
    cut = np.maximum(np.maximum(front, back), sides)
    cut *= b_((style != 0).astype(_F32))
    # faint strands; stronger stripes alias into a knitted look at 64 px
    strands = 0.9 + 0.1 * np.sin(xh * (28 + 14 * wave) + yh * 6 * (1 + wave))
    n = len(style)
    both = up(np.concatenate([cut, strands]))
    a = both[:n]
    a *= inside
    sh = shade * both[n:]
    col = idf["hair_rgb"] * imf["light_color"]
    rgb = _col4(col, 0.35)[:, :canvas.shape[1], None] * sh[:, None]
    if canvas.shape[1] == 4:
        rgb[:, 3] = 0.35
    _blend(canvas, a, rgb)


def _hat(geo, idf, imf, sel, head, surf, up, shade, canvas):
    """Beanie over the top of the head, on a larger shell (region and shading from the head, as for hair)."""
    inside = head.shell_alpha(np.full(len(sel), 1.14, _F32), sel)
    yh = surf.yh[sel]
    b_ = _bc
    r = imf["_acc"][sel]
    level = b_(0.38 + 0.12 * r[:, 2])
    m = len(sel)
    both = up(np.concatenate([_ramp(yh - level, 0.03), _ramp(0.07 - (yh - level), 0.02)]))
    a = inside * both[:m]
    sh = shade[sel] * (1 - 0.25 * both[m:])
    hue = np.stack([r[:, 3], r[:, 4], r[:, 5]], 1)
    col = np.clip(0.1 + 0.8 * hue * np.sqrt(hue), 0, 1) * imf["light_color"][sel]
    rgb = _col4(col, 0.3)[:, :canvas.shape[1], None] * sh[:, None]
    if canvas.shape[1] == 4:
        rgb[:, 3] = 0.3
    sub_c = canvas[sel]
    _blend(sub_c, a, rgb)
    canvas[sel] = sub_c


def _occluder(geo, idf, imf, sel, canvas, pix):
    r = imf["_occ"][sel]
    kind = (r[:, 0] * 3).astype(np.int64)  # 0 hand, 1 bar, 2 blob
    cx = geo.cx[sel] + geo.s[sel] * (r[:, 1] - 0.5) * 1.2
    cy = geo.cy[sel] + geo.s[sel] * (r[:, 2] - 0.6) * 1.4
    ang = (r[:, 3] - 0.5) * np.pi
    ca, sa = np.cos(ang)[:, None, None], np.sin(ang)[:, None, None]
    du = (geo.gu - cx[:, None, None]) / geo.s[sel][:, None, None]
    dv = (geo.gv - cy[:, None, None]) / geo.s[sel][:, None, None]
    p = ca * du + sa * dv
    q = -sa * du + ca * dv
    pixb = pix[sel][:, None, None]
    sz = (0.3 + 0.25 * r[:, 4])[:, None, None]
    a = np.empty(p.shape, _F32)
    # each image evaluates only its own kind of occluder
    for k in range(3):
        ks = np.nonzero(kind == k)[0]
        if not ks.size:
            continue
        pk, qk, szk, pxk = p[ks], q[ks], sz[ks], pixb[ks]
        if k == 0:  # hand: palm and three fingers
            palm = _ramp(1 - np.sqrt((pk / szk) ** 2 + (qk / (szk * 0.8)) ** 2), 2 * pxk / szk)
            fq = np.minimum(np.minimum(np.abs(qk + szk * 0.4), np.abs(qk)), np.abs(qk - szk * 0.4))
            fingers = _ramp(0.055 - fq, pxk) * _ramp(pk - szk * 0.5, pxk) * _ramp(szk * 1.9 - pk, pxk) \
                * _ramp(szk * 0.8 - np.abs(qk), pxk)
            a[ks] = np.maximum(palm, fingers)
        elif k == 1:  # bar
            a[ks] = _ramp(szk * 0.35 - np.abs(qk), pxk) * _ramp(2.5 - np.abs(pk), pxk)
        else:  # blob
            a[ks] = _ramp(1 - np.sqrt((pk / (szk * 1.1)) ** 2 + (qk / (szk * 0.75)) ** 2), 2 * pxk / szk)
    other = idf["skin_rgb"][sel][:, ::-1] * 0.3 + 0.7 * np.stack([r[:, 5], r[:, 6], r[:, 7]], 1)
    col = np.where((kind == 0)[:, None], np.clip(idf["skin_rgb"][sel] * 1.02, 0, 1), other)
    shade = 0.85 + 0.15 * np.clip(q / sz, -1, 1)
    rgb = (col * imf["light_color"][sel])[:, :, None, None] * shade[:, None]
    heat = np.where(kind == 0, 0.85, 0.25).astype(_F32)[:, None, None, None]
    t = np.concatenate([rgb, np.broadcast_to(heat, (rgb.shape[0], 1) + rgb.shape[2:])], 1)
    sub_c = canvas[sel]
    _blend(sub_c, a, t)
    canvas[sel] = sub_c


# ----------------------------------------------------------------------------------------------------------
# Camera, domains, artefacts

_MALLOC_TUNED = False


def _tune_malloc():
    """Keep numpy's large temporaries on the heap instead of a fresh mmap per operation.

    Rendering makes thousands of ~0.5 MB temporaries; with glibc's default thresholds each one is mmapped,
    page-faulted and unmapped, which costs ~30% of the renderer's time. Raising the thresholds (process-wide,
    like MALLOC_MMAP_THRESHOLD_=...) only changes where freed memory goes; no-op off glibc."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 64 << 20)   # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


_TILES: dict[int, np.ndarray] = {}


def _noise_tiles(S):
    if S not in _TILES:
        _TILES[S] = np.random.default_rng(20240501).standard_normal((64, 3, S, S), dtype=np.float32) \
            * np.array([1.0, 0.9, 1.1], _F32)[:, None, None]
    return _TILES[S]


def _block_avg(S, bs):
    A = np.zeros((S, S // bs), _F32)
    A[np.arange(S), np.arange(S) // bs] = 1 / bs
    return A


def _smooth(x):
    """Separable [1,2,1]/4 blur over the last two axes (borders left as they are)."""
    y = x.copy()
    y[..., 1:-1] += y[..., 1:-1]
    y[..., 1:-1] += x[..., :-2]
    y[..., 1:-1] += x[..., 2:]
    y[..., 1:-1] *= 0.25
    z = y.copy()
    z[..., 1:-1, :] += z[..., 1:-1, :]
    z[..., 1:-1, :] += y[..., :-2, :]
    z[..., 1:-1, :] += y[..., 2:, :]
    z[..., 1:-1, :] *= 0.25
    return z


def _blur3(x, w):
    """Separable per-image blur [m,c,H,W] with the 3-tap kernel [v/4, 1 - v/2, v/4], v = 1 - sqrt(1 - w):
    about (1 - w) x + w [1,2,1]/4-smoothed x, in fewer passes. Border rows/columns are left as they are."""
    m, W = x.shape[0], x.shape[-1]
    v = (1 - np.sqrt(1 - np.clip(w, 0, 1))).astype(_F32)[:, None]
    c0, c1 = 1 - 0.5 * v, 0.25 * v
    # shifts along the flattened image (contiguous, unlike slices of the last axis); the pixels where a shift
    # wraps into the next row (or channel) are exactly the border columns (rows), restored afterwards
    xf = x.reshape(m, -1)
    y = xf * c0
    y[:, 1:-1] += c1 * (xf[:, :-2] + xf[:, 2:])
    y4 = y.reshape(x.shape)
    y4[..., 0], y4[..., -1] = x[..., 0], x[..., -1]
    z = y * c0
    z[:, W:-W] += c1 * (y[:, :-2 * W] + y[:, 2 * W:])
    z4 = z.reshape(x.shape)
    z4[..., 0, :], z4[..., -1, :] = y4[..., 0, :], y4[..., -1, :]
    return z4


def _finish(cfg, canvas, imf, domains):
    """Camera blur, domain mapping, noise, JPEG-like blocking -> uint8."""
    S = cfg.image_size
    n = canvas.shape[0]
    blur = imf["blur"]
    bsel = np.nonzero(blur > 0.05)[0]
    if bsel.size:
        canvas[bsel, :3] = _blur3(canvas[bsel, :3], blur[bsel])
    photo = np.nonzero(domains == 0)[0]
    if photo.size == n:
        out = np.ascontiguousarray(canvas[:, :3])
    else:
        out = np.empty((n, 3, S, S), _F32)
        out[photo] = canvas[photo, :3]
    ir = np.nonzero(domains == 1)[0]
    if ir.size:
        # thermal look: skin warm/bright, hair and glass cold/dark, little texture, no colour
        t = canvas[ir, 3] * 0.95 + 0.15 * canvas[ir, :3].mean(1) - 0.04
        t = _smooth(np.clip(t, 0, 1))
        out[ir] = (t * (0.5 * t + 0.5))[:, None]
    sk = np.nonzero(domains == 2)[0]
    if sk.size:
        lum = np.einsum("nchw,c->nhw", canvas[sk, :3], np.array([0.3, 0.55, 0.15], _F32))
        p = np.pad(lum, ((0, 0), (1, 1), (1, 1)), mode="edge")
        gx = p[:, 1:-1, 2:] - p[:, 1:-1, :-2]
        gy = p[:, 2:, 1:-1] - p[:, :-2, 1:-1]
        g = np.sqrt(gx * gx + gy * gy) * _F32(S / 64.0)
        ink = np.clip(g * 4.0 - 0.08, 0, 1)
        ink = 0.6 * ink + 0.4 * np.sqrt(ink)
        tone = 0.12 * np.clip(0.5 - lum, 0, 1)
        paper = np.array([0.97, 0.95, 0.90], _F32)[:, None, None]
        out[sk] = paper * (1 - np.clip(ink + tone, 0, 1))[:, None]
    lr = np.nonzero(domains == 3)[0]
    if lr.size:
        out[lr] = _lowres(canvas[lr, :3], S)
    # sensor noise from a fixed bank of tiles (per-index choice keeps determinism)
    tiles = _noise_tiles(S)
    noise = tiles[imf["_tile"] % len(tiles)]
    mono = np.nonzero((domains == 1) | (domains == 2))[0]
    if mono.size:  # grey domains get grey noise
        noise[mono] = noise[mono, :1]
    noise *= imf["noise"][:, None, None, None]
    out += noise
    # JPEG-like 8x8 block artefacts: pull pixels towards their block mean
    q = imf["jpeg"]
    jsel = np.nonzero(q > 0.03)[0]
    bs = 8 if S >= 64 else 4  # JPEG's 8x8 blocks; smaller for thumbnails so a block is not a quarter face
    if jsel.size and S % bs == 0:
        m = len(jsel)
        sub = out[jsel]
        A = _block_avg(S, bs)  # block means as two small matmuls (7x faster than a strided mean)
        blk = np.matmul(A.T, (sub.reshape(-1, S) @ A).reshape(m, 3, S, S // bs))
        sub = sub.reshape(m, 3, S // bs, bs, S // bs, bs)
        sub += (blk[:, :, :, None, :, None] - sub) * q[jsel][:, None, None, None, None, None]
        out[jsel] = sub.reshape(m, 3, S, S)
    # the channel-last transpose rides along with the scaling pass
    o = np.multiply(out.transpose(0, 2, 3, 1), _F32(255))
    o += 0.5
    return np.clip(o, 0, 255, out=o).astype(np.uint8)


def _lowres(x, S, low=16):
    """Downsample to low x low (area) and back up (bilinear)."""
    src = np.linspace(0, S, low + 1)
    A = np.zeros((low, S), _F32)
    for i in range(low):
        lo, hi = src[i], src[i + 1]
        for j in range(int(np.floor(lo)), int(np.ceil(hi))):
            A[i, j] = min(hi, j + 1) - max(lo, j)
    A /= A.sum(1, keepdims=True)
    pos = np.clip((np.arange(S) + 0.5) * low / S - 0.5, 0, low - 1)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, low - 1)
    w = (pos - i0).astype(_F32)
    B = np.zeros((S, low), _F32)
    B[np.arange(S), i0] += 1 - w
    B[np.arange(S), i1] += w
    T = B @ A  # [S,S] combined down-up operator
    return np.einsum("ij,ncjk,lk->ncil", T, x, T, optimize=True)


# ----------------------------------------------------------------------------------------------------------
# Public API

def _image_keys(cfg, stream, pool, indices):
    base = _combine(cfg.seed, _str_key("image"), _str_key(stream), _str_key(pool))
    return _mix(base ^ _mix(indices.astype(np.uint64) + _GOLD))


def image_identities(cfg: SynthConfig, indices, stream: str = "train", pool: str = "train") -> np.ndarray:
    """Global identity id of each image index (hash of seed, stream, pool, index)."""
    indices = _check_ids("indices", indices)
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    base = _combine(cfg.seed, _str_key("who"), _str_key(stream), _str_key(pool))
    h = _mix(base ^ _mix(indices.astype(np.uint64) * _GOLD + np.uint64(7)))
    if pool == "train":
        return (h % np.uint64(cfg.n_train_identities)).astype(np.int64)
    return (h % np.uint64(cfg.n_heldout_identities)).astype(np.int64) + cfg.n_train_identities


def render_faces(cfg: SynthConfig, indices, stream: str = "train", pool: str = "train",
                 domain: str = "photo", overrides: dict | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """images uint8 [N,S,S,3] and labels {name: array [N,...]} for the given image indices.

    Deterministic per (cfg.seed, stream, pool, domain, index), whatever batch the index is rendered in.
    The scene of an index does not depend on `domain`, so the same index in two domains is a paired view.
    `domain` is one of DOMAINS or "mixed" (a per-image random domain).
    `overrides` optionally fixes per-image factors, e.g. {"yaw": 30.0, "expression": 3} (scalar or [N]);
    the labels then report the overridden values."""
    if not isinstance(stream, str):
        raise ValueError(f"stream must be a string, got {stream!r}")
    if domain not in DOMAINS + ("mixed",):
        raise ValueError(f"domain must be one of {DOMAINS + ('mixed',)}, got {domain!r}")
    indices = _check_ids("indices", indices)
    _tune_malloc()
    ids = image_identities(cfg, indices, stream, pool)
    keys = _image_keys(cfg, stream, pool, indices)
    idf = identity_factors(cfg, ids)
    imf = _image_factors(cfg, keys)
    n = len(indices)
    for name, value in (overrides or {}).items():
        if name not in imf or name.startswith("_"):
            raise ValueError(f"overrides: unknown per-image factor {name!r}; expected one of "
                             f"{sorted(k for k in imf if not k.startswith('_'))}")
        imf[name] = np.ascontiguousarray(np.broadcast_to(np.asarray(value, imf[name].dtype), imf[name].shape))
    if overrides and ("expression" in overrides or "expression_intensity" in overrides):
        # factors that follow from the expression follow the overridden one, unless overridden themselves
        inten, smile, mouth_open, blink = _expression_factors(imf["expression"], imf["_iu"], imf["_xu"])
        derived = {"expression_intensity": inten, "smile": smile, "mouth_open": mouth_open, "eyes_closed": blink}
        imf.update((k, v) for k, v in derived.items() if k not in overrides)
    if domain == "mixed":
        dk = _mix(keys ^ _str_key("mixed-domain"))
        dom = (dk % np.uint64(len(DOMAINS))).astype(np.int64)
    else:
        dom = np.full(n, DOMAINS.index(domain), np.int64)
    S = cfg.image_size
    images = np.empty((n, S, S, 3), np.uint8)
    landmarks = np.empty((n, 5, 2), _F32)
    for start in range(0, n, _RENDER_CHUNK):
        sl = slice(start, min(start + _RENDER_CHUNK, n))
        idc = {k: v[sl] for k, v in idf.items()}
        imc = {k: v[sl] for k, v in imf.items()}
        canvas, lm = _render_chunk(cfg, idc, imc, dom[sl])
        images[sl] = _finish(cfg, canvas, imc, dom[sl])
        landmarks[sl] = lm
    labels = {k: idf[k] for k in IDENTITY_LABELS}
    labels.update((k, v) for k, v in imf.items() if not k.startswith("_") and k != "ambient")
    labels["domain"] = dom
    labels["landmarks"] = landmarks
    return images, labels


def save_sample_grid(path, cfg: SynthConfig = SynthConfig(), n_rows: int = 8, n_cols: int = 8,
                     upscale: int = 2) -> np.ndarray:
    """Write a PNG grid: photo rows on top, then one row per non-photo domain. Returns the grid array."""
    from PIL import Image

    if n_rows < 1 or n_cols < 1:
        raise ValueError(f"n_rows and n_cols must be >= 1, got {n_rows}, {n_cols}")
    n_dom = min(len(DOMAINS) - 1, max(n_rows - 1, 0))
    rows = []
    n_photo = n_rows - n_dom
    imgs, _ = render_faces(cfg, np.arange(n_photo * n_cols), stream="sample_grid", domain="photo")
    rows.extend(imgs.reshape(n_photo, n_cols, *imgs.shape[1:]))
    for d in range(n_dom):
        im, _ = render_faces(cfg, np.arange(n_cols), stream="sample_grid", domain=DOMAINS[1 + d])
        rows.append(im)
    S = cfg.image_size
    pad = 2
    grid = np.full((n_rows * (S + pad) + pad, n_cols * (S + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            grid[pad + r * (S + pad): pad + r * (S + pad) + S, pad + c * (S + pad): pad + c * (S + pad) + S] = row[c]
    img = Image.fromarray(grid)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    img.save(path)
    return grid
