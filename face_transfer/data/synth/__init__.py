"""SynthFaces: the procedural, deterministic face generator that is the package's embedded default dataset.
Owns the public API (render_faces, image_identities, save_sample_grid); the jobs live in the modules beside it:
factors.py (SynthConfig, identity and image factors), rng.py (counter-based draws), geometry.py and render.py
(the vectorised 3-D-posed renderer), domains.py (the four domains and camera artefacts), malloc.py.
"""
from __future__ import annotations

import numpy as np

from face_transfer.data.synth.domains import finish_images
from face_transfer.data.synth.factors import (DOMAINS, HAIR_COLORS, HAIR_STYLES, IDENTITY_LABELS, LABEL_KEYS, POOLS,
                                              SynthConfig, check_ids, expression_factors, identity_factors,
                                              image_factors)
from face_transfer.data.synth.malloc import tune_malloc
from face_transfer.data.synth.render import render_chunk
from face_transfer.data.synth.rng import GOLD, combine, mix, str_key

_F32 = np.float32
_RENDER_CHUNK = 128  # images per vectorised pass: measured best at 64x64 (numpy call overhead vs L2/L3 size)


def _image_keys(cfg, stream, pool, indices):
    base = combine(cfg.seed, str_key("image"), str_key(stream), str_key(pool))
    return mix(base ^ mix(indices.astype(np.uint64) + GOLD))


def image_identities(cfg: SynthConfig, indices, stream: str = "train", pool: str = "train") -> np.ndarray:
    """Global identity id of each image index (hash of seed, stream, pool, index)."""
    indices = check_ids("indices", indices)
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    base = combine(cfg.seed, str_key("who"), str_key(stream), str_key(pool))
    h = mix(base ^ mix(indices.astype(np.uint64) * GOLD + np.uint64(7)))
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
    indices = check_ids("indices", indices)
    tune_malloc()
    ids = image_identities(cfg, indices, stream, pool)
    keys = _image_keys(cfg, stream, pool, indices)
    idf = identity_factors(cfg, ids)
    imf = image_factors(cfg, keys)
    n = len(indices)
    for name, value in (overrides or {}).items():
        if name not in imf or name.startswith("_"):
            raise ValueError(f"overrides: unknown per-image factor {name!r}; expected one of "
                             f"{sorted(k for k in imf if not k.startswith('_'))}")
        imf[name] = np.ascontiguousarray(np.broadcast_to(np.asarray(value, imf[name].dtype), imf[name].shape))
    if overrides and ("expression" in overrides or "expression_intensity" in overrides):
        # factors that follow from the expression follow the overridden one, unless overridden themselves
        inten, smile, mouth_open, blink = expression_factors(imf["expression"], imf["_iu"], imf["_xu"])
        derived = {"expression_intensity": inten, "smile": smile, "mouth_open": mouth_open, "eyes_closed": blink}
        imf.update((k, v) for k, v in derived.items() if k not in overrides)
    if domain == "mixed":
        dk = mix(keys ^ str_key("mixed-domain"))
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
        canvas, lm = render_chunk(cfg, idc, imc, dom[sl])
        images[sl] = finish_images(cfg, canvas, imc, dom[sl])
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


__all__ = ["DOMAINS", "HAIR_COLORS", "HAIR_STYLES", "IDENTITY_LABELS", "LABEL_KEYS", "POOLS", "SynthConfig",
           "identity_factors", "image_identities", "render_faces", "save_sample_grid"]
