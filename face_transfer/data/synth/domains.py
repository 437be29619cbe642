"""Camera, domains and artefacts: the photo, infrared, sketch and low-resolution looks, blur, noise and
JPEG, applied to a rendered canvas. Owns finish_images (canvas -> uint8 images in each image's domain).
"""
from __future__ import annotations

import numpy as np

_F32 = np.float32


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


def finish_images(cfg, canvas, imf, domains):
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
