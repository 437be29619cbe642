"""The head frame and its projection: rotations, the camera, surface patches, and the alpha blending the
renderer draws with. Head frame: x right, y up, z towards the camera; head semi-height 1.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from face_transfer.data.synth.factors import HEAD_SCALE, SCALE_RANGE

_F32 = np.float32


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


class Geo:
    """Per-chunk geometry: head ellipsoid, pose, camera and pixel grids."""

    def __init__(self, idf, imf, S, difficulty):
        self.S = S
        # window sizes follow the largest scale the config can produce, never the batch's own maximum:
        # a batch-dependent size would clip features differently and break per-index determinism
        self.s_max = HEAD_SCALE * (1 + SCALE_RANGE * difficulty)
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


class Patch:
    """A rectangular pixel window around a point, inside the image or inside a (square) parent window, with
    normalised image coordinates (gu, gv) and, given the inverse projected Jacobian Ji, local tangent
    coordinates (a, b). Window maps are flattened to [n, Ph*Pw]."""

    def __init__(self, geo: Geo, u, v, Ji, half_extent, parent: "Patch | None" = None, centre=None):
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


def ramp(x, w):
    """Soft step 0->1 over width w centred on 0 (anti-aliased edge)."""
    t = x * (1.0 / w) if np.isscalar(w) else x / w
    t += 0.5
    return np.clip(t, 0, 1, out=t)


def blend(dst, alpha, color):
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


def col4(rgb, heat):
    return np.concatenate([rgb, np.broadcast_to(np.asarray(heat, _F32).reshape(-1, 1), (rgb.shape[0], 1))],
                          1).astype(_F32)
