"""Input augmentation for the student: the per-image jitter and flip, the noisy student's generic degradations
and function matching's mixup. Each is a pure function of the faces' stream positions, so resumes are exact.
"""
from __future__ import annotations

import numpy as np


def degrade(images: np.ndarray, positions: np.ndarray, prob: float, seed: int = 0) -> np.ndarray:
    """Degrade a fraction `prob` of the faces with generic image ops (colour jitter, grayscale, blur or
    down-up-sampling, a random occlusion patch, Gaussian noise; each degraded face gets a random subset,
    at least one). Each face's degradation is a pure function of (seed, its stream position), so
    resumed and multi-replica runs degrade exactly as an uninterrupted one. Not the SynthFaces domain
    renderers (the evaluation's sketch / infrared / low-resolution sets): plain image processing.
    """
    from PIL import Image, ImageFilter

    out = np.array(images, dtype=np.uint8, copy=True)
    n, h, w = out.shape[:3]
    for i in range(n):
        rng = np.random.default_rng([int(seed) & 0x7FFFFFFF, 0xD15, int(positions[i]) & 0x7FFFFFFFFFFFFFFF])
        if rng.random() >= prob:
            continue
        ops_on = rng.random(5) < np.array([0.5, 0.35, 0.4, 0.3, 0.35])  # colour, gray, blur, occlude, noise
        if not ops_on.any():
            ops_on[rng.integers(5)] = True
        x = out[i].astype(np.float32)
        if ops_on[0]:  # colour: per-channel gain, gamma, saturation
            x = x * rng.uniform(0.7, 1.3, 3).astype(np.float32)
            x = 255.0 * (np.clip(x, 0, 255) / 255.0) ** rng.uniform(0.7, 1.5)
            gray = x.mean(-1, keepdims=True)
            x = gray + (x - gray) * rng.uniform(0.3, 1.5)
        if ops_on[1]:  # grayscale
            x = np.repeat((x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None], 3, -1)
        if ops_on[2]:  # blur, or down-up-sampling
            img = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
            if rng.random() < 0.5:
                img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.6, 2.0))))
            else:
                f = float(rng.uniform(2.0, 5.0))
                small = img.resize((max(4, int(w / f)), max(4, int(h / f))), Image.BILINEAR)
                img = small.resize((w, h), Image.BILINEAR if rng.random() < 0.5 else Image.NEAREST)
            x = np.asarray(img, np.float32)
        if ops_on[3]:  # occlusion: a random rectangle of flat colour or noise
            ph, pw = (rng.uniform(0.15, 0.4, 2) * (h, w)).astype(int)
            y0, x0 = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
            fill = rng.uniform(0, 255, 3) if rng.random() < 0.5 else rng.uniform(0, 255, (ph, pw, 3))
            x[y0:y0 + ph, x0:x0 + pw] = fill
        if ops_on[4]:  # additive Gaussian noise
            x = x + rng.normal(0.0, rng.uniform(4.0, 24.0), x.shape)
        out[i] = np.clip(x, 0, 255).astype(np.uint8)
    return out


def mix_faces(images: np.ndarray, positions: np.ndarray, prob: float, seed: int = 0) -> np.ndarray:
    """Mixup for function matching: a fraction `prob` of the faces is blended with the next face of the batch
    (cyclically), the partner weighing uniformly in [0, 0.5], so the face stays the dominant one. Each
    face's draw is a pure function of (seed, its stream position): resumed runs mix exactly the same."""
    x = np.asarray(images)
    n = len(x)
    if n < 2 or prob <= 0:
        return x
    w = np.zeros(n, np.float32)
    for i in range(n):
        rng = np.random.default_rng([int(seed) & 0x7FFFFFFF, 0x313, int(positions[i]) & 0x7FFFFFFFFFFFFFFF])
        if rng.random() < prob:
            w[i] = rng.uniform(0.0, 0.5)
    if not w.any():
        return x
    w = w.reshape(n, *([1] * (x.ndim - 1)))
    mixed = (1.0 - w) * x.astype(np.float32) + w * np.roll(x, -1, axis=0).astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(x.dtype)


def augment_batch(images: np.ndarray, indices: np.ndarray, flip: bool = True) -> np.ndarray:
    """Deterministic per image index: horizontal flip, brightness/contrast jitter.

    Flips are only for label-free distillation (the target is computed on the flipped face); with
    labels they would invert yaw, roll and gaze.
    """
    rng = np.random.default_rng(int(indices[0]) * 7919 + 17)
    x = images.astype(np.float32)
    flip = (rng.random(len(x)) < 0.5) & flip
    x[flip] = x[flip, :, ::-1]
    gain = rng.uniform(0.75, 1.25, (len(x), 1, 1, 1)).astype(np.float32)
    bias = rng.uniform(-20, 20, (len(x), 1, 1, 1)).astype(np.float32)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return np.clip((x - mean) * gain + mean + bias, 0, 255).astype(np.uint8)
