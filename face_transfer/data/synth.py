"""SynthFaces: the procedural, deterministic face generator that is the package's embedded default dataset.
Owns identity/image factor sampling, the vectorised 3-D-posed renderer, the four domains, labels and the sample grid."""
from __future__ import annotations

import dataclasses
import zlib

import numpy as np


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    image_size: int = 64            # square, RGB uint8
    seed: int = 0                   # dataset seed
    n_train_identities: int = 1000  # identity pool "train"  -> ids 0 .. n_train-1
    n_heldout_identities: int = 300  # identity pool "heldout" -> ids n_train .. n_train+n_heldout-1
    difficulty: float = 1.0         # scales nuisance (pose range, noise, clutter, occluders); 0 = clean frontal

    def __post_init__(self):
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
LANDMARK_NAMES = ("left_eye", "right_eye", "nose_tip", "mouth_left", "mouth_right")
POOLS = ("train", "heldout")

# Per-identity label keys (subset of identity_factors) copied into the image labels.
IDENTITY_LABELS = ("identity", "gender", "age", "skin_tone", "hair_color", "hair_style", "beard", "face_shape")

_F32 = np.float32
_RENDER_CHUNK = 64  # images per vectorised pass: keeps [chunk,S,S] maps cache-resident at 64x64

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

# Expression -> facial action parameters at intensity 1:
# brow_raise, brow_inner (inner-end raise), eye_open (rel.), corner (mouth-corner lift, smile handled separately),
# mouth_width (rel.), mouth_round, upper_lip (raise), nose_wrinkle, cheek (raise/blush)
_EXPR_TABLE = np.array([
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],      # neutral
    [0.1, 0.0, -0.30, 0.0, 0.15, 0.0, 0.0, 0.0, 1.0],   # happy
    [-0.2, 1.0, -0.20, -1.0, -0.05, 0.0, 0.0, 0.0, 0.0],  # sad
    [1.0, 0.2, 0.55, 0.0, -0.35, 1.0, 0.0, 0.0, 0.0],   # surprise
    [-0.7, -1.0, -0.15, -0.4, -0.10, 0.0, 0.0, 0.3, 0.0],  # angry
    [-0.3, -0.5, -0.35, -0.5, 0.0, 0.0, 1.0, 1.0, 0.3],  # disgust
    [0.8, 0.8, 0.45, -0.5, 0.30, 0.0, 0.0, 0.0, 0.0],   # fear
], _F32)


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
    p_hair = np.stack([0.35 + 0.4 * skin, 0.35 + 0.0 * skin, 0.2 * (1 - skin), 0.1 * (1 - skin),
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
        "eye_w": d.uniform(0.11, 0.15),
        "eye_h": d.uniform(0.045, 0.065),
        "eye_tilt": d.uniform(-0.15, 0.15),
        "brow_thick": (d.uniform(0.016, 0.026) + 0.010 * male).astype(_F32),
        "brow_arch": d.uniform(0.0, 0.04),
        "brow_gap": d.uniform(0.13, 0.19),
        "nose_len": d.uniform(0.22, 0.34),
        "nose_w": (d.uniform(0.07, 0.10) + 0.015 * male).astype(_F32),
        "nose_prot": d.uniform(0.10, 0.18),
        "mouth_y": d.uniform(-0.60, -0.50),
        "mouth_w": d.uniform(0.17, 0.24),
        "lip_thick": (d.uniform(0.028, 0.048) - 0.008 * male).astype(_F32),
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
    inten = np.where(expr == 0, _F32(0), d.uniform(0.35, 1.0)).astype(_F32)
    smile = np.where(expr == 1, np.clip(inten * d.uniform(0.8, 1.15), 0, 1),
                     np.where(expr == 0, d.uniform(0, 0.25), d.uniform(0, 0.06))).astype(_F32)
    mo = d.u()
    mouth_open = np.select(
        [expr == 3, expr == 6, expr == 1],
        [inten * (0.55 + 0.45 * mo), inten * (0.25 + 0.35 * mo), inten * 0.7 * mo],
        0.18 * mo * mo).astype(_F32)
    blink = (d.u() < 0.10) & (expr != 3) & (expr != 6)
    gaze = np.clip(d.normal(2) * 0.45, -1, 1).astype(_F32)
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
    tint = d.u(3)
    light_color = 1 - (0.35 * min(float(k), 1.0) + 0.05) * tint
    light_color = (light_color / light_color.max(1, keepdims=True)).astype(_F32)
    return {
        "expression": expr, "expression_intensity": inten, "smile": smile, "mouth_open": mouth_open,
        "eyes_closed": blink.astype(np.int64), "gaze_x": gaze[:, 0], "gaze_y": gaze[:, 1],
        "yaw": yaw.astype(_F32), "pitch": pitch.astype(_F32), "roll": roll.astype(_F32),
        "glasses": glasses, "sunglasses": sun, "hat": hat, "mask": mask, "occluded": occluded,
        "light_azimuth": az.astype(_F32), "light_elevation": el.astype(_F32), "light_color": light_color,
        "scale": (0.56 * (1 + 0.12 * k * (2 * d.u() - 1))).astype(_F32),
        "shift_x": (0.10 * k * (2 * d.u() - 1)).astype(_F32),
        "shift_y": (0.08 * k * (2 * d.u() - 1) + 0.02).astype(_F32),
        "blur": (k * np.clip(1.6 * d.u() - 0.6, 0, 1)).astype(_F32),
        "noise": (0.004 + 0.035 * k * d.u() ** 2).astype(_F32),
        "jpeg": (0.5 * k * np.clip(1.6 * d.u() - 0.6, 0, 1) ** 1.5).astype(_F32),
        "clutter": (0.3 + 0.7 * min(float(k), 1.0) * d.u()).astype(_F32),
        "ambient": d.uniform(0.35, 0.6),
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

    def __init__(self, idf, imf, S):
        self.S = S
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

    def project(self, p):
        """p [N,3] head-frame -> (u, v) normalised image coords [N], camera z [N]."""
        q = np.einsum("nij,nj->ni", self.R, p)
        return self.cx + self.s * q[:, 0], self.cy + self.s * q[:, 1], q[:, 2]

    def surface_point(self, x, y):
        zz = 1 - (x / self.ax) ** 2 - (y / self.ay) ** 2
        return np.stack([x, y, self.az * np.sqrt(np.maximum(zz, 0.02))], 1).astype(_F32)

    def frame(self, p):
        """Tangent frame at a surface point: centre (u,v), inverse projected Jacobian [N,2,2], visibility,
        and the projected normal (for protruding features)."""
        nrm = p / np.stack([self.ax ** 2, self.ay ** 2, self.az ** 2], 1)
        nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
        tu = np.stack([nrm[:, 2], np.zeros_like(nrm[:, 0]), -nrm[:, 0]], 1)
        tu /= np.linalg.norm(tu, axis=1, keepdims=True)
        tv = np.cross(nrm, tu)
        rtu = np.einsum("nij,nj->ni", self.R, tu)
        rtv = np.einsum("nij,nj->ni", self.R, tv)
        rn = np.einsum("nij,nj->ni", self.R, nrm)
        J = self.s[:, None, None] * np.stack([rtu[:, :2], rtv[:, :2]], 2)  # columns: tangent images
        det = J[:, 0, 0] * J[:, 1, 1] - J[:, 0, 1] * J[:, 1, 0]
        det = np.where(np.abs(det) < 1e-4, np.where(det < 0, -1e-4, 1e-4), det)
        Ji = np.stack([np.stack([J[:, 1, 1], -J[:, 0, 1]], 1), np.stack([-J[:, 1, 0], J[:, 0, 0]], 1)], 1)
        Ji = Ji / det[:, None, None]
        u, v, _ = self.project(p)
        return u, v, Ji.astype(_F32), rn[:, 2].astype(_F32), (self.s[:, None] * rn[:, :2]).astype(_F32)


class _Patch:
    """A square pixel window around a point, inside the image or inside a parent window, with normalised
    image coordinates (gu, gv) and, given the inverse projected Jacobian Ji, local tangent coordinates (a, b)."""

    def __init__(self, geo: _Geo, u, v, Ji, half_extent, parent: "_Patch | None" = None):
        S = geo.S
        C = S if parent is None else parent.P
        P = int(np.ceil(2 * half_extent * float(geo.s.max()) * S / 2)) + 3
        self.P = P = min(P, C)
        oc = 0 if parent is None else parent.c0
        orr = 0 if parent is None else parent.r0
        col = (u + 1) / 2 * S - 0.5
        row = (1 - v) / 2 * S - 0.5
        lc0 = np.clip(np.round(col).astype(np.int64) - oc - P // 2, 0, C - P)
        lr0 = np.clip(np.round(row).astype(np.int64) - orr - P // 2, 0, C - P)
        self.c0, self.r0 = lc0 + oc, lr0 + orr
        j = np.arange(P)
        self.gu = ((self.c0[:, None] + j[None, :] + 0.5) * (2.0 / S) - 1).astype(_F32)[:, None, :]
        self.gv = (1 - (self.r0[:, None] + j[None, :] + 0.5) * (2.0 / S)).astype(_F32)[:, :, None]
        if Ji is not None:
            du = self.gu - u[:, None, None]
            dv = self.gv - v[:, None, None]
            J = Ji[:, :, :, None, None]
            self.a = J[:, 0, 0] * du + J[:, 0, 1] * dv
            self.b = J[:, 1, 0] * du + J[:, 1, 1] * dv
        n = len(u)
        self.idx_hw = (lr0[:, None, None] + j[None, :, None]) * C + lc0[:, None, None] + j[None, None, :]
        self.idx = np.arange(n)[:, None, None] * (C * C) + self.idx_hw
        self._nidx = np.arange(n)[:, None, None]
        self.pix = 2.0 / (S * geo.s[:, None, None])  # one pixel in head units

    def gather(self, canvas):
        """canvas [n,C,H,W] -> [n,C,P,P]; canvas [n,H,W] -> [n,P,P]."""
        if canvas.ndim == 3:
            return canvas.reshape(-1)[self.idx]
        n, C = canvas.shape[:2]
        return canvas.reshape(n, C, -1)[self._nidx, :, self.idx_hw].transpose(0, 3, 1, 2)

    def scatter(self, canvas, region):
        n, C = canvas.shape[:2]
        canvas.reshape(n, C, -1)[self._nidx, :, self.idx_hw] = region.transpose(0, 2, 3, 1)

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
    if color.ndim == 1:
        color = color[:C, None, None]
    elif color.ndim == 2:
        color = color[:, :C, None, None]
    else:
        color = color[:, :C]
    t = color - dst
    t *= alpha[:, None]
    dst += t


def _col4(rgb, heat):
    return np.concatenate([rgb, np.broadcast_to(np.asarray(heat, _F32).reshape(-1, 1), (rgb.shape[0], 1))],
                          1).astype(_F32)


# ----------------------------------------------------------------------------------------------------------
# Renderer

def _backdrop(geo, idf, imf, h):
    """Everything behind the head at reduced resolution h: gradient, clutter, torso, neck, long hair, bun."""
    n = geo.n
    r = imf["_bg"]
    g = ((np.arange(h, dtype=_F32) + 0.5) / h * 2 - 1)
    gu, gv = g[None, None, :], -g[None, :, None]
    c1 = 0.15 + 0.75 * r[:, 0:3]
    c2 = np.clip(c1 * (0.5 + 0.8 * r[:, 3:4]) + 0.2 * (r[:, 4:7] - 0.5), 0, 1)
    ang = r[:, 7] * 2 * np.pi
    t = (np.cos(ang)[:, None, None] * gu + np.sin(ang)[:, None, None] * gv) * 0.5 + 0.5
    bg = np.empty((n, 4, h, h), _F32)
    bg[:, :3] = c1[:, :, None, None] + t[:, None] * (c2 - c1)[:, :, None, None]
    bg[:, 3] = 0.08 + 0.1 * t
    clutter = imf["clutter"]
    px_ = 2.0 / h
    for k in range(3):
        q = r[:, 20 + k]
        on = (q < clutter).astype(_F32) * clutter
        px, py = (2 * r[:, 8 + k] - 1)[:, None, None], (2 * r[:, 11 + k] - 1)[:, None, None]
        rad = (0.12 + 0.35 * r[:, 14 + k])[:, None, None]
        col = np.clip(np.stack([r[:, 17 + k], r[:, (3 * k + 5) % 24], r[:, (7 * k + 2) % 24]], 1) * 1.1, 0, 1)
        dx, dy = np.abs(gu - px), np.abs(gv - py)
        dist = np.maximum(dx, dy) if k % 2 else np.sqrt(dx * dx + dy * dy)
        a = _ramp(rad - dist, 2 * px_) * on[:, None, None]
        _blend(bg, a, _col4(col, 0.1 + 0.2 * r[:, 23 - k]))
    # body, in roll-free head units
    X0 = (gu - geo.cx[:, None, None]) / geo.s[:, None, None]
    Y0 = (gv - geo.cy[:, None, None]) / geo.s[:, None, None]
    cr, sr = geo.cr[:, None, None], geo.sr[:, None, None]
    X = cr * X0 + sr * Y0
    Y = -sr * X0 + cr * Y0
    pixb = (px_ / geo.s)[:, None, None]
    ax = geo.ax[:, None, None]
    lc = imf["light_color"]
    amb = imf["ambient"]
    style = idf["hair_style"]
    hair4 = _col4(idf["hair_rgb"] * lc * (amb + 0.15)[:, None], 0.3)
    # long hair curtain behind the head and shoulders
    lsel = np.nonzero(style == 2)[0]
    if lsel.size:
        Xl, Yl, axl = X[lsel], Y[lsel], ax[lsel]
        hl = idf["hair_len"][lsel][:, None, None]
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
    bun = style == 3
    if bun.any():
        pb = np.stack([np.zeros(n, _F32), np.full(n, 0.95, _F32), -0.35 * geo.az], 1)
        bu, bv, _ = geo.project(pb)
        dd = np.sqrt((gu - bu[:, None, None]) ** 2 + (gv - bv[:, None, None]) ** 2) / geo.s[:, None, None]
        _blend(bg, _ramp(0.36 - dd, pixb) * bun.astype(_F32)[:, None, None], hair4)
    return bg


def _render_chunk(cfg, idf, imf, domains):
    S = cfg.image_size
    geo = _Geo(idf, imf, S)
    n = geo.n
    h = S // 2 if S % 2 == 0 and S >= 48 else S
    # the heat channel (for the infrared domain) is carried only when some image needs it
    C = 4 if (domains == 1).any() else 3
    canvas = _backdrop(geo, idf, imf, h)[:, :C]
    if h != S:
        canvas = np.repeat(np.repeat(canvas, S // h, axis=2), S // h, axis=3)
    skin = idf["skin_rgb"]
    lc = imf["light_color"]
    # light direction in camera frame, then in the roll-free frame the head solve uses
    az, el = np.deg2rad(imf["light_azimuth"]), np.deg2rad(imf["light_elevation"])
    L = np.stack([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)], 1).astype(_F32)
    Lr = np.stack([geo.cr * L[:, 0] + geo.sr * L[:, 1], -geo.sr * L[:, 0] + geo.cr * L[:, 1], L[:, 2]], 1)
    amb = imf["ambient"]

    def bc(x):  # per-image scalar -> broadcastable to [N,B,B]
        return x[:, None, None]

    # the head box: everything of the head lives within 1.25 head units of its centre
    box = _Patch(geo, geo.cx, geo.cy, None, 1.25)
    B = box.P
    X0 = (box.gu - bc(geo.cx)) / bc(geo.s)
    Y0 = (box.gv - bc(geo.cy)) / bc(geo.s)
    cr, sr = bc(geo.cr), bc(geo.sr)
    X = cr * X0 + sr * Y0
    Y = -sr * X0 + cr * Y0
    pix = 2.0 / (S * geo.s)  # head units per pixel
    pixb = bc(pix)
    ax = bc(geo.ax)
    region = box.gather_slices(canvas)

    # neck at full resolution near the head
    neck = _ramp(0.45 * ax - np.abs(X), pixb) * _ramp(-0.3 - Y, pixb)
    _blend(region, neck, _col4(skin * 0.62 * lc, 0.8))
    # ears, behind the head silhouette
    for side in (-1.0, 1.0):
        pe = np.stack([side * geo.ax * 0.97, np.full(n, 0.02, _F32), -0.05 * geo.az], 1)
        eu, ev, _ = geo.project(pe)
        rx_ = 0.09 * idf["ear_size"] * np.clip(np.abs(geo.R[:, 0, 0]), 0.3, 1)
        er = ((box.gu - bc(eu)) / bc(geo.s * rx_)) ** 2 + ((box.gv - bc(ev)) / bc(geo.s * 0.17 * idf["ear_size"])) ** 2
        _blend(region, _ramp(1 - er, 0.3), _col4(skin * lc * (amb + 0.25)[:, None], 0.8))

    # ---- head ellipsoid: silhouette, depth, normals (orthographic, roll-free frame) ----
    taper = bc(idf["jaw_taper"])
    Xt = X * (1 + taper * np.clip(-Y, 0, 1) ** 2)
    M = geo.ryp @ (np.stack([1 / geo.ax ** 2, 1 / geo.ay ** 2, 1 / geo.az ** 2], 1)[:, :, None]
                   * geo.ryp.transpose(0, 2, 1))
    M = M.astype(_F32)
    m = {k: bc(M[:, i, j]) for k, (i, j) in dict(xx=(0, 0), xy=(0, 1), xz=(0, 2), yy=(1, 1), yz=(1, 2),
                                                   zz=(2, 2)).items()}
    head = _Head(Xt, Y, m, geo.ryp, pixb)
    head_a = head.alpha
    lam = head.lambert(head.nx, head.ny, head.nz, Lr)
    shade = bc(amb * 1.1) + (1.15 - bc(amb)) * lam
    xh, yh, zh = head.xh, head.yh, head.zh

    # albedo (rgb + heat) of the head surface
    alb = np.empty((n, C, B, B), _F32)
    alb[:, :3] = skin[:, :, None, None]
    if C == 4:
        alb[:, 3] = 0.95
    # beard (subset)
    bsel = np.nonzero(idf["beard"])[0]
    if bsel.size:
        my = bc(idf["mouth_y"][bsel])
        xb, yb, zb = xh[bsel], yh[bsel], zh[bsel]
        dens = 0.75 + 0.25 * np.sin(xb * 90 + yb * 37) * np.sin(yb * 80 - xb * 30)
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
        xm, ym, zm = xh[msel], yh[msel], zh[msel]
        ny_ = bc(-idf["nose_len"][msel] + 0.08)
        area = _ramp(ny_ - ym, 0.03) * _ramp(ym + 0.9, 0.05) * _ramp(zm - 0.1, 0.1)
        pleat = 1 - 0.12 * (np.sin(ym * 60) > 0.6)
        mc = np.where(imf["_acc"][msel, 0:1] < 0.6, np.array([[0.62, 0.78, 0.9]], _F32),
                      np.array([[0.93, 0.93, 0.92]], _F32))
        sub = alb[msel]
        mcol = _col4(mc, 0.55)[:, :C, None, None] * pleat[:, None]
        if C == 4:
            mcol[:, 3] = 0.55
        _blend(sub, area, mcol)
        alb[msel] = sub

    # shade the head and composite
    alb[:, :3] *= shade[:, None] * lc[:, :, None, None]
    _blend(region, head_a, alb)

    # ---- hair shell: a slightly larger ellipsoid, cut by the hairline in head coordinates ----
    _hair_shell(geo, idf, imf, head, Lr, amb, region)
    # ---- hat (subset): beanie on a larger shell over the top of the head ----
    tsel = np.nonzero(imf["hat"])[0]
    if tsel.size:
        _hat(geo, idf, imf, tsel, head, Lr, amb, region)
    box.scatter_slices(canvas, region)

    # ---- occluders (subset): hand, bar or blob over part of the face ----
    osel = np.nonzero(imf["occluded"])[0]
    if osel.size:
        _occluder(geo, idf, imf, osel, canvas, pix)
    return canvas, landmarks


def _expression_params(imf):
    t = _EXPR_TABLE[imf["expression"]] * imf["expression_intensity"][:, None]
    names = ("brow_raise", "brow_inner", "eye_open", "corner", "mouth_width", "mouth_round", "upper_lip",
             "nose_wrinkle", "cheek")
    return {k: t[:, i] for i, k in enumerate(names)}


def _draw_eyes_brows(geo, box, idf, imf, ex, alb, head_a, landmarks):
    n = geo.n
    open_ = np.where(imf["eyes_closed"] == 1, _F32(0.06), 1 + ex["eye_open"]).astype(_F32)
    sun, gl = imf["sunglasses"].astype(_F32), imf["glasses"].astype(_F32)
    frame_rgb = np.where(imf["_acc"][:, 1:2] < 0.5, np.array([[0.08, 0.07, 0.07]], _F32),
                         np.array([[0.45, 0.30, 0.15]], _F32))
    brow_rgb = idf["hair_rgb"] * 0.55 + 0.04
    ew, eh = idf["eye_w"], idf["eye_h"]
    for li, side in ((0, -1.0), (1, 1.0)):
        x = side * idf["eye_sep"]
        p = geo.surface_point(x, idf["eye_y"])
        u, v, Ji, vis, _ = geo.frame(p)
        landmarks[:, li] = np.stack([(u + 1) / 2, (1 - v) / 2], 1)
        pt = _Patch(geo, u, v, Ji, 0.27, box)
        a, b = pt.a * side, pt.b  # a > 0 points outwards for both eyes
        pix = pt.pix
        reg = pt.gather(alb)
        hm = pt.gather(head_a) * np.clip(vis * 4, 0, 1)[:, None, None]
        # eye socket shading
        sock = np.exp(-((a / (ew[:, None, None] * 1.5)) ** 2 + ((b + 0.01) / 0.09) ** 2)) * 0.14
        reg[:, :3] *= (1 - sock)[:, None]
        W = ew[:, None, None]
        H = (eh * open_)[:, None, None]
        tilt = (idf["eye_tilt"])[:, None, None] * a
        q = np.clip(1 - (a / W) ** 2, 0, 1)
        upper = H * q ** 0.6 + tilt
        lower = -0.7 * H * q ** 0.8 + tilt + 0.004
        inside = _ramp(upper - b, pix) * _ramp(b - lower, pix) * _ramp(W - np.abs(a), pix)
        _blend(reg, inside * hm, np.array([0.92, 0.90, 0.88, 0.9], _F32))
        gx = (imf["gaze_x"] * side)[:, None, None] * W * 0.45  # gaze_x > 0 looks to image right
        gy = imf["gaze_y"][:, None, None] * eh[:, None, None] * 0.35
        rr = np.sqrt((a - gx) ** 2 + (b - gy - tilt * 0) ** 2)
        ir = eh[:, None, None] * 1.05
        iris = _ramp(ir - rr, pix) * inside
        _blend(reg, iris * hm, _col4(idf["eye_rgb"], 0.9))
        pupil = _ramp(ir * 0.45 - rr, pix) * inside
        _blend(reg, pupil * hm, np.array([0.03, 0.03, 0.03, 0.9], _F32))
        spec = _ramp(ir * 0.22 - np.sqrt((a - gx + side * ir * 0.35 * 0 - ir * 0.3) ** 2 + (b - gy - ir * 0.35) ** 2),
                     pix) * inside
        _blend(reg, spec * hm * 0.8, np.array([1, 1, 1, 0.9], _F32))
        # lash line (thicker at the outer corner) and lid crease
        lash_t = (0.010 + 0.008 * np.clip(a / W, 0, 1)) + pix * 0.3
        lash = _ramp(lash_t - np.abs(b - upper - 0.004), pix) * _ramp(W * 1.08 - np.abs(a), pix)
        _blend(reg, lash * hm * 0.9, np.array([0.08, 0.05, 0.04, 0.9], _F32))
        crease = _ramp(0.006 - np.abs(b - (H * 0.6 + eh[:, None, None] * 0.9) * q ** 0.5 - tilt), pix)
        _blend(reg, crease * hm * 0.25 * _ramp(W - np.abs(a), pix), np.array([0.3, 0.18, 0.12, 0.9], _F32))
        # brows
        by = (idf["brow_gap"] + 0.06 * ex["brow_raise"])[:, None, None] + tilt * 0.5
        bw = (ew * 1.35)[:, None, None]
        ac = a + 0.02
        arch = idf["brow_arch"][:, None, None] * (1 - (ac / bw) ** 2)
        inner = (0.045 * ex["brow_inner"])[:, None, None] * np.clip(-ac / bw, 0, 1) \
            - (0.03 * ex["brow_inner"] * (ex["brow_inner"] > 0))[:, None, None] * np.clip(ac / bw, 0, 1)
        curve = by + arch + inner
        bt = idf["brow_thick"][:, None, None] * (1.2 - 0.5 * np.clip((ac / bw + 1) / 2, 0, 1))
        brow = _ramp(bt - np.abs(b - curve), pix) * _ramp(bw - np.abs(ac), pix * 2)
        _blend(reg, brow * hm * 0.9, _col4(brow_rgb, 0.85))
        # crow's feet with age and smiling
        cf = (idf["wrinkle"] + 0.5 * ex["cheek"])[:, None, None]
        crow = _ramp(0.004 - np.abs(np.abs(b + 0.25 * (a - W)) - 0.02), pix) * _ramp(0.07 - np.abs(a - W - 0.05), pix)
        _blend(reg, crow * hm * np.clip(cf, 0, 1) * 0.3, np.array([0.25, 0.15, 0.1, 0.9], _F32))
        # glasses and sunglasses: lens outline around the eye
        if (sun + gl).any():
            la = (a - 0.01) / (W * 1.45)
            lb = (b - 0.0) / (W * 1.1)
            lr = np.sqrt(la ** 2 + lb ** 2 * 1.0) if False else np.maximum(np.abs(la), np.abs(lb)) * 0.55 \
                + np.sqrt(la * la + lb * lb) * 0.45
            lens = _ramp(1 - lr, 2 * pix / W)
            rim = _ramp(0.012 + pix * 0.4 - np.abs(lr - 1) * W * 1.2, pix)
            # bridge towards the nose
            bridge = _ramp(0.01 + pix * 0.3 - np.abs(b - 0.02 - 0.02 * (a + idf["eye_sep"][:, None, None]) ** 2),
                           pix) * _ramp(-a - W * 1.35, pix) * _ramp(idf["eye_sep"][:, None, None] + a + 0.01, pix)
            temple = _ramp(0.008 + pix * 0.3 - np.abs(b - 0.03), pix) * _ramp(a - W * 1.4, pix)
            sg = sun[:, None, None]
            _blend(reg, lens * sg * 0.88 * hm, np.array([0.05, 0.05, 0.07, 0.25], _F32))
            frame = np.maximum(np.maximum(rim, bridge), temple) * np.maximum(sg, gl[:, None, None])
            _blend(reg, frame * 0.95 * np.clip(hm + bridge, 0, 1), _col4(frame_rgb, 0.3))
            if gl.any():
                glint = _ramp(0.02 - np.abs(la + lb - 0.5) * W, pix) * lens * gl[:, None, None] * 0.25
                _blend(reg, glint * hm, np.array([1, 1, 1, 0.3], _F32))
        pt.scatter(alb, reg)


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
    a, b, pix = pt.a, pt.b + 0.0, pt.pix
    reg = pt.gather(alb)
    hm = pt.gather(head_a)
    ox, oy = off[:, 0, None, None], off[:, 1, None, None]
    nw = idf["nose_w"][:, None, None]
    # bridge side shadow on the side away from the key light
    side = np.where(L[:, 0] > 0, -1.0, 1.0).astype(_F32)[:, None, None]
    t = np.clip((b - 0.0) / (nl[:, None, None] * 0.9), 0, 1)  # 0 at tip level, 1 at eye level
    line_x = ox * (1 - t) + side * nw * (0.55 - 0.25 * t)
    sh = _ramp(0.018 - np.abs(a - line_x), pix) * _ramp(nl[:, None, None] * 0.85 - b, pix * 3) * _ramp(b + 0.01, pix)
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
    hl = np.exp(-(((a - ox) / (nw * 0.5)) ** 2 + ((b - oy - 0.02) / 0.035) ** 2)) * 0.12
    reg[:, :3] += (hl * hm)[:, None]
    # disgust: wrinkles across the bridge
    nwk = ex["nose_wrinkle"][:, None, None]
    if (nwk > 0).any():
        wr = _ramp(0.004 - np.abs(((b - nl[:, None, None] * 0.6) % 0.035) - 0.017), pix) \
            * _ramp(nw * 0.8 - np.abs(a), pix) * _ramp(nl[:, None, None] * 0.85 - b, pix) \
            * _ramp(b - nl[:, None, None] * 0.4, pix)
        _blend(reg, wr * hm * nwk * 0.6, np.array([0.3, 0.16, 0.11, 0.9], _F32))
    pt.scatter(alb, reg)


def _draw_mouth(geo, box, idf, imf, ex, alb, head_a, landmarks):
    n = geo.n
    my = idf["mouth_y"]
    smile = imf["smile"]
    lift = (0.07 * smile + 0.04 * ex["corner"]).astype(_F32)
    mw = (idf["mouth_w"] * (1 + ex["mouth_width"] + 0.12 * smile)).astype(_F32)
    opn = (imf["mouth_open"] * (0.10 + 0.06 * ex["mouth_round"])).astype(_F32)
    for li, s_ in ((3, -1.0), (4, 1.0)):
        pc = geo.surface_point(s_ * mw * 0.95, my + lift)
        cu, cv, _ = geo.project(pc)
        landmarks[:, li] = np.stack([(cu + 1) / 2, (1 - cv) / 2], 1)
    p = geo.surface_point(np.zeros(n, _F32), my)
    u, v, Ji, vis, _ = geo.frame(p)
    pt = _Patch(geo, u, v, Ji, 0.46, box)
    a, b, pix = pt.a, pt.b, pt.pix
    reg = pt.gather(alb)
    hm = pt.gather(head_a)
    W = mw[:, None, None]
    q = np.clip(1 - (a / W) ** 2, 0, 1)
    rnd = ex["mouth_round"][:, None, None]
    cl = lift[:, None, None] * (a / W) ** 2 - 0.5 * lift[:, None, None] * 0.3
    ul = ex["upper_lip"][:, None, None] * 0.025 * np.clip(0.5 + a / W, 0, 1)
    oh = opn[:, None, None] * q ** (1.0 - 0.5 * rnd)
    lt = idf["lip_thick"][:, None, None] * (1 - 0.35 * np.clip(-ex["corner"][:, None, None], 0, 1) * (1 - rnd))
    bow = 0.008 * np.exp(-(np.abs(a) - 0.035) ** 2 / 0.0006) - 0.006 * np.exp(-a * a / 0.0004)
    top = cl + oh * 0.5 + ul + lt * 0.85 * q ** 0.5 + bow
    bot = cl - oh * 0.5 - lt * 1.05 * q ** 0.5
    lips = _ramp(top - b, pix) * _ramp(b - bot, pix) * _ramp(W - np.abs(a), pix)
    # cheeks: nasolabial folds (age, smiling) and blush when happy
    cheek = ex["cheek"][:, None, None]
    fold_x = W + 0.04 + 0.12 * np.clip(b - cl, 0, 0.3)
    fold = _ramp(0.005 - np.abs(np.abs(a) - fold_x), pix) * _ramp(b - cl + 0.04, pix) * _ramp(0.22 - b, pix)
    fs = np.clip(idf["wrinkle"][:, None, None] * 0.6 + 0.5 * smile[:, None, None], 0, 1)
    _blend(reg, fold * hm * fs * 0.45, np.array([0.35, 0.2, 0.15, 0.9], _F32))
    blush = np.exp(-(((np.abs(a) - 0.3) / 0.09) ** 2 + ((b - 0.2) / 0.07) ** 2)) * cheek * 0.25
    _blend(reg, blush * hm, np.array([0.9, 0.45, 0.4, 0.95], _F32))
    _blend(reg, lips * hm * 0.85, _col4(idf["lip_rgb"], 0.95))
    inner = _ramp(oh * 0.5 - np.abs(b - cl - ul * 0.5), pix) * _ramp(W * 0.92 - np.abs(a), pix)
    _blend(reg, inner * hm, np.array([0.18, 0.04, 0.05, 1.0], _F32))
    teeth = inner * _ramp(b - cl - ul * 0.5 + oh * 0.1, pix) * _ramp(0.6 - rnd, 0.2) \
        * np.clip(smile[:, None, None] * 2 + 0.3, 0, 1)
    _blend(reg, teeth * hm * 0.9, np.array([0.93, 0.91, 0.85, 0.9], _F32))
    seam = _ramp(0.006 + 0.3 * pix - np.abs(b - cl - ul * 0.5), pix) * _ramp(W - np.abs(a), pix) \
        * _ramp(0.02 - oh, 0.02)
    _blend(reg, seam * hm * 0.8, np.array([0.28, 0.1, 0.08, 0.95], _F32))
    corners = np.exp(-((np.abs(a) - W) ** 2 / 0.0006 + (b - cl) ** 2 / 0.0006)) * 0.35
    _blend(reg, corners * hm, np.array([0.3, 0.15, 0.12, 0.9], _F32))
    pt.scatter(alb, reg)


class _Head:
    """Shared per-pixel head-ellipsoid quantities in the head box; shells are the same ellipsoid scaled by k."""

    def __init__(self, Xt, Y, m, rt, pixb):
        self.m, self.rt, self.pixb = m, rt, pixb
        self.bh = m["xz"] * Xt + m["yz"] * Y  # half b of the quadratic in z
        quad = m["xx"] * Xt * Xt + 2 * m["xy"] * Xt * Y + m["yy"] * Y * Y
        self.disc = self.bh * self.bh - m["zz"] * (quad - 1)
        self.sq = np.sqrt(np.maximum(self.disc, 0))
        self.alpha = _ramp(np.where(self.disc > 0, self.sq, self.disc), 1.5 * pixb)
        self.Z = (self.sq - self.bh) / m["zz"]
        self.nx = m["xx"] * Xt + m["xy"] * Y + m["xz"] * self.Z
        self.ny = m["xy"] * Xt + m["yy"] * Y + m["yz"] * self.Z
        self.nz = m["xz"] * Xt + m["yz"] * Y + m["zz"] * self.Z
        b = _bc
        self.xh = b(rt[:, 0, 0]) * Xt + b(rt[:, 1, 0]) * Y + b(rt[:, 2, 0]) * self.Z
        self.yh = b(rt[:, 0, 1]) * Xt + b(rt[:, 1, 1]) * Y + b(rt[:, 2, 1]) * self.Z
        self.zh = b(rt[:, 0, 2]) * Xt + b(rt[:, 1, 2]) * Y + b(rt[:, 2, 2]) * self.Z

    def lambert(self, nx, ny, nz, Lr):
        return np.maximum((nx * _bc(Lr[:, 0]) + ny * _bc(Lr[:, 1]) + nz * _bc(Lr[:, 2]))
                          / np.sqrt(nx * nx + ny * ny + nz * nz + 1e-6), 0)

    def shell(self, k, sel=None):
        """Front surface of the ellipsoid scaled by k [n]: alpha, head-frame coords (unit-head scale), normal."""
        def s_(x):
            return x if sel is None else x[sel]
        m = {kk: s_(v) for kk, v in self.m.items()}
        rt = s_(self.rt)
        kb = _bc(k)
        disc = s_(self.disc) + m["zz"] * (kb * kb - 1)
        sq = np.sqrt(np.maximum(disc, 0))
        dz = (sq - s_(self.sq)) / m["zz"]
        alpha = _ramp(np.where(disc > 0, sq, disc) / kb, 1.5 * s_(self.pixb))
        xh = (s_(self.xh) + _bc(rt[:, 2, 0]) * dz) / kb
        yh = (s_(self.yh) + _bc(rt[:, 2, 1]) * dz) / kb
        zh = (s_(self.zh) + _bc(rt[:, 2, 2]) * dz) / kb
        nx = s_(self.nx) + m["xz"] * dz
        ny = s_(self.ny) + m["yz"] * dz
        nz = s_(self.nz) + m["zz"] * dz
        return alpha, xh, yh, zh, nx, ny, nz


def _bc(x):
    """Per-image scalar [n] -> broadcastable to [n,H,W]."""
    return x[:, None, None]


def _hair_shell(geo, idf, imf, head, Lr, amb, canvas):
    style = idf["hair_style"]
    k = np.where(style == 2, 1.09, np.where(style == 1, 1.06, 1.05)).astype(_F32)
    inside, xh, yh, zh, nx, ny, nz = head.shell(k)
    b_ = _bc
    ax = b_(geo.ax)
    part = b_(idf["hair_part"]) * 0.3 * ax
    wave = b_(idf["hair_wave"])
    axh = np.abs(xh) / ax
    hl = b_(idf["hairline"]) + 0.10 * np.abs(xh - part) / ax - 0.35 * axh ** 4 + 0.03 * wave * np.sin(xh * 30)
    front = _ramp(yh - hl, 0.04)
    is_long = b_((style == 2).astype(_F32))
    is_bun = b_((style == 3).astype(_F32))
    back = _ramp(-zh - 0.05 + 0.35 * is_long, 0.06) * _ramp(yh + 0.35 + 0.5 * is_long, 0.05)
    sides = _ramp(axh - 0.86 + 0.06 * is_long, 0.04) * _ramp(yh + 0.05 + 0.55 * is_long - 0.2 * is_bun, 0.05)
    a = np.maximum(np.maximum(front, back), sides)
    a *= inside * b_((style != 0).astype(_F32))
    lam = head.lambert(nx, ny, nz, Lr)
    am = b_(amb)
    strands = 0.82 + 0.18 * np.sin(xh * (40 + 20 * wave) + yh * 6 * (1 + wave))
    sh = (am + (1 - am) * lam) * strands
    col = idf["hair_rgb"] * imf["light_color"]
    rgb = _col4(col, 0.35)[:, :canvas.shape[1], None, None] * sh[:, None]
    if canvas.shape[1] == 4:
        rgb[:, 3] = 0.35
    _blend(canvas, a, rgb)


def _hat(geo, idf, imf, sel, head, Lr, amb, canvas):
    k = np.full(len(sel), 1.14, _F32)
    inside, xh, yh, zh, nx, ny, nz = head.shell(k, sel)
    b_ = _bc
    r = imf["_acc"][sel]
    level = b_(0.38 + 0.12 * r[:, 2])
    a = inside * _ramp(yh - level, 0.03)
    band = _ramp(0.07 - (yh - level), 0.02)
    lam = head.lambert(nx, ny, nz, Lr[sel])
    am = b_(amb[sel])
    sh = (am + (1 - am) * lam) * (1 - 0.25 * band)
    hue = np.stack([r[:, 3], r[:, 4], r[:, 5]], 1)
    col = np.clip(0.1 + 0.8 * hue ** 1.5, 0, 1) * imf["light_color"][sel]
    rgb = _col4(col, 0.3)[:, :canvas.shape[1], None, None] * sh[:, None]
    if canvas.shape[1] == 4:
        rgb[:, 3] = 0.3
    sub_c = canvas[sel]
    _blend(sub_c, a, rgb)
    canvas[sel] = sub_c


def _occluder(geo, idf, imf, sel, canvas, pix):
    S = geo.S
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
    kb = kind[:, None, None]
    palm = _ramp(1 - np.sqrt((p / sz) ** 2 + (q / (sz * 0.8)) ** 2), 2 * pixb / sz)
    fingers = _ramp(0.055 - np.abs(((q + sz * 0.8) % (sz * 0.4)) - sz * 0.2), pixb) \
        * _ramp(p - sz * 0.5, pixb) * _ramp(sz * 1.9 - p, pixb) * _ramp(sz * 0.8 - np.abs(q), pixb)
    hand = np.maximum(palm, fingers)
    bar = _ramp(sz * 0.35 - np.abs(q), pixb) * _ramp(2.5 - np.abs(p), pixb)
    blob = _ramp(1 - np.sqrt((p / (sz * 1.1)) ** 2 + (q / (sz * 0.75)) ** 2), 2 * pixb / sz)
    a = np.where(kb == 0, hand, np.where(kb == 1, bar, blob))
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

_TILES: dict[int, np.ndarray] = {}


def _noise_tiles(S):
    if S not in _TILES:
        _TILES[S] = np.random.default_rng(20240501).standard_normal((64, 3, S, S), dtype=np.float32) \
            * np.array([1.0, 0.9, 1.1], _F32)[:, None, None]
    return _TILES[S]


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


def _finish(cfg, canvas, imf, domains):
    """Camera blur, domain mapping, noise, JPEG-like blocking -> uint8."""
    S = cfg.image_size
    n = canvas.shape[0]
    blur = imf["blur"]
    bsel = np.nonzero(blur > 0.05)[0]
    if bsel.size:
        sub = canvas[bsel]
        sub += (_smooth(sub) - sub) * blur[bsel][:, None, None, None]
        canvas[bsel] = sub
    photo = np.nonzero(domains == 0)[0]
    if photo.size == n:
        out = np.ascontiguousarray(canvas[:, :3])
    else:
        out = np.empty((n, 3, S, S), _F32)
        out[photo] = canvas[photo, :3]
    ir = np.nonzero(domains == 1)[0]
    if ir.size:
        # thermal look: skin warm/bright, hair and glass cold/dark, little texture, no colour
        t = canvas[ir, 3] * 0.85 + 0.2 * canvas[ir, :3].mean(1) - 0.05
        t = _smooth(np.clip(t, 0, 1))
        out[ir] = (t ** 1.3)[:, None]
    sk = np.nonzero(domains == 2)[0]
    if sk.size:
        lum = np.einsum("nchw,c->nhw", canvas[sk, :3], np.array([0.3, 0.55, 0.15], _F32))
        p = np.pad(lum, ((0, 0), (1, 1), (1, 1)), mode="edge")
        gx = p[:, 1:-1, 2:] - p[:, 1:-1, :-2]
        gy = p[:, 2:, 1:-1] - p[:, :-2, 1:-1]
        g = np.sqrt(gx * gx + gy * gy) * _F32(S / 64.0)
        ink = np.clip(g * 4.0 - 0.08, 0, 1) ** 0.8
        tone = 0.12 * np.clip(0.5 - lum, 0, 1)
        paper = np.array([0.97, 0.95, 0.90], _F32)[:, None, None]
        out[sk] = paper * (1 - np.clip(ink + tone, 0, 1))[:, None]
    lr = np.nonzero(domains == 3)[0]
    if lr.size:
        out[lr] = _lowres(canvas[lr, :3], S)
    # sensor noise from a fixed bank of tiles (per-index choice keeps determinism)
    tiles = _noise_tiles(S)
    out += tiles[imf["_tile"] % len(tiles)] * imf["noise"][:, None, None, None]
    # JPEG-like 8x8 block artefacts: pull pixels towards their block mean
    q = imf["jpeg"]
    jsel = np.nonzero(q > 0.03)[0]
    if jsel.size and S % 8 == 0:
        sub = out[jsel].reshape(len(jsel), 3, S // 8, 8, S // 8, 8)
        blk = sub.mean((3, 5), keepdims=True)
        sub += (blk - sub) * q[jsel][:, None, None, None, None, None]
        out[jsel] = sub.reshape(len(jsel), 3, S, S)
    out *= 255
    out += 0.5
    return np.clip(out, 0, 255, out=out).astype(np.uint8).transpose(0, 2, 3, 1)


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
                 domain: str = "photo") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """images uint8 [N,S,S,3] and labels {name: array [N,...]} for the given image indices.

    Deterministic per (cfg.seed, stream, pool, domain, index), whatever batch the index is rendered in.
    The scene of an index does not depend on `domain`, so the same index in two domains is a paired view.
    `domain` is one of DOMAINS or "mixed" (a per-image random domain)."""
    if not isinstance(stream, str):
        raise ValueError(f"stream must be a string, got {stream!r}")
    if domain not in DOMAINS + ("mixed",):
        raise ValueError(f"domain must be one of {DOMAINS + ('mixed',)}, got {domain!r}")
    indices = _check_ids("indices", indices)
    ids = image_identities(cfg, indices, stream, pool)
    keys = _image_keys(cfg, stream, pool, indices)
    idf = identity_factors(cfg, ids)
    imf = _image_factors(cfg, keys)
    n = len(indices)
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
    for k, v in imf.items():
        if not k.startswith("_") and k not in ("clutter", "ambient"):
            labels[k] = v
    labels["domain"] = dom
    labels["landmarks"] = landmarks
    labels["clutter"] = imf["clutter"]
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
