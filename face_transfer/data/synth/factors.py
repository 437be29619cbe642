"""SynthConfig and the factors of a face: who a person is (identity factors) and how one image of them is
taken (image factors: expression, pose, accessories, light, camera). Owns the label vocabularies and tables.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from face_transfer.data.synth.rng import Draws, combine, erf_f32, mix, str_key

_F32 = np.float32


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
HAIR_COLORS = ("black", "brown", "blond", "red", "gray")
HAIR_STYLES = ("bald", "short", "long", "bun")
POOLS = ("train", "heldout")

# Per-identity label keys (subset of identity_factors) copied into the image labels.
IDENTITY_LABELS = ("identity", "gender", "age", "skin_tone", "hair_color", "hair_style", "beard", "face_shape")
# Every key render_faces returns (per-image ones after the identity ones). Camera/lighting extras are float32.
LABEL_KEYS = IDENTITY_LABELS + (
    "expression", "expression_intensity", "smile", "mouth_open", "eyes_closed", "gaze_x", "gaze_y",
    "yaw", "pitch", "roll", "glasses", "sunglasses", "hat", "mask", "occluded",
    "light_azimuth", "light_elevation", "light_color", "scale", "shift_x", "shift_y", "blur", "noise", "jpeg",
    "domain", "landmarks", "clutter")


HEAD_SCALE = 0.8   # head semi-height in units of the image half-width
SCALE_RANGE = 0.12  # relative camera zoom range at difficulty 1

_SKIN_LIGHT = np.array([0.97, 0.80, 0.68], _F32)
_SKIN_DARK = np.array([0.30, 0.19, 0.13], _F32)
_HAIR_RGB = np.array([[0.07, 0.06, 0.06], [0.30, 0.18, 0.10], [0.86, 0.70, 0.42],
                      [0.62, 0.25, 0.10], [0.74, 0.73, 0.72]], _F32)
_EYE_RGB = np.array([[0.36, 0.21, 0.10], [0.18, 0.11, 0.06], [0.30, 0.52, 0.78],
                     [0.32, 0.52, 0.30], [0.50, 0.56, 0.62], [0.52, 0.40, 0.18]], _F32)

# Expression -> facial action parameters at intensity 1. Magnitudes are chosen so that each class reads at
# 48x48 grayscale (a head is ~20 px high there): mouth-corner moves of 2-4 px, brow moves of 2-3 px.
EXPR_NAMES = ("brow_raise", "brow_inner", "brow_squeeze", "eye_open", "corner", "mouth_width", "mouth_round",
               "upper_lip", "nose_wrinkle", "cheek", "lip_press", "asym")
EXPR_TABLE = np.array([
    # raise inner squeeze eye  corner width round  upper wrink cheek press asym
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],        # neutral
    [0.15, 0.0, 0.0, -0.35, 0.3, 0.30, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0],    # happy (+ smile)
    [-0.15, 1.0, 0.4, -0.35, -1.3, -0.05, 0.0, 0.0, 0.0, 0.0, 0.3, 0.0],  # sad
    [1.0, 0.2, 0.0, 1.0, 0.0, -0.40, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],      # surprise
    [-0.7, -1.0, 1.0, -0.45, -0.4, -0.15, 0.0, 0.0, 0.3, 0.0, 1.0, 0.0],  # angry
    [-0.35, -0.5, 0.4, -0.45, -0.6, 0.0, 0.0, 1.0, 1.0, 0.3, 0.0, 1.0],  # disgust
    [0.75, 1.0, 0.9, 0.85, -0.5, 0.40, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],    # fear
], _F32)


def expression_factors(expr, iu, xu):
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


def check_ids(name, ids):
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) or (ids.size and ids.min() < 0):
        raise ValueError(f"{name} must be a 1-D array of non-negative integers, got shape {ids.shape} "
                         f"dtype {ids.dtype}")
    return ids.astype(np.int64)


def identity_factors(cfg: SynthConfig, identity_ids) -> dict[str, np.ndarray]:
    """The persistent per-identity factors; depend only on (cfg.seed, identity id)."""
    ids = check_ids("identity_ids", identity_ids)
    total = cfg.n_train_identities + cfg.n_heldout_identities
    if ids.size and ids.max() >= total:
        raise ValueError(f"identity_ids must be < n_train+n_heldout = {total}, got max {ids.max()}")
    d = Draws(mix(combine(cfg.seed, str_key("identity")) ^ mix(ids.astype(np.uint64))))
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


def image_factors(cfg: SynthConfig, keys: np.ndarray) -> dict[str, np.ndarray]:
    d = Draws(keys)
    n = len(keys)
    k = _F32(cfg.difficulty)
    expr = d.choice(np.ones(7, _F32))
    iu, xu = d.u(), d.u(4)
    inten, smile, mouth_open, blink = expression_factors(expr, iu, xu)
    # gaze uniform in (-1, 1) (the CDF of the same normal draws: every other factor keeps its draws)
    gaze = erf_f32(d.normal(2) / _F32(np.sqrt(2.0))).astype(_F32)
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
        "scale": (HEAD_SCALE * (1 + SCALE_RANGE * k * (2 * d.u() - 1))).astype(_F32),
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
