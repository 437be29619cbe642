"""The vectorised renderer: backdrop, head, eyes, brows, nose, mouth, hair, hat, glasses and occluders for
a chunk of faces. Owns render_chunk (factors -> canvas + landmarks); domains.py turns a canvas into images.
"""
from __future__ import annotations

import numpy as np

from face_transfer.data.synth.factors import EXPR_NAMES, EXPR_TABLE
from face_transfer.data.synth.geometry import Geo, Patch, blend, col4, ramp

_F32 = np.float32


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
        a = ramp(rad - dist, 2 * px_) * on[:, None]
        blend(bg, a, col4(col, 0.1 + 0.2 * r[:, 23 - k]))
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
    hair4 = col4(idf["hair_rgb"] * lc * (amb + 0.15)[:, None], 0.3)
    # long hair curtain behind the head and shoulders
    lsel = np.nonzero(style == 2)[0]
    if lsel.size:
        Xl, Yl, axl = X[lsel], Y[lsel], ax[lsel]
        hl = idf["hair_len"][lsel][:, None]
        w = axl * (1.16 + 0.08 * np.clip(-Yl, 0, 2))
        top = np.sqrt(np.maximum(1 - (Xl / (axl * 1.18)) ** 2, 0)) * 1.12
        a = ramp(w - np.abs(Xl), pixb[lsel]) * ramp(top - Yl, pixb[lsel]) \
            * ramp(Yl + hl - 0.25 * (Xl / axl) ** 2, 2 * pixb[lsel])
        sub = bg[lsel]
        blend(sub, a, hair4[lsel] * np.array([0.85, 0.85, 0.85, 1], _F32))
        bg[lsel] = sub
    cloth = np.clip(r[:, 9:12] * 0.8 + 0.1, 0, 1)
    torso = ramp(1 - np.sqrt((X / (2.0 * ax)) ** 2 + ((Y + 1.95) / 0.8) ** 2), 2 * pixb / (1.5 * ax))
    blend(bg, torso, col4(cloth * lc * (amb + 0.3)[:, None], 0.35))
    neck = ramp(0.45 * ax - np.abs(X), pixb) * ramp(-0.3 - Y, pixb)
    blend(bg, neck, col4(idf["skin_rgb"] * 0.62 * lc, 0.8))
    bsel = np.nonzero(style == 3)[0]
    if bsel.size:
        pb = np.stack([np.zeros(n, _F32), np.full(n, 0.95, _F32), -0.35 * geo.az], 1)
        bu, bv, _ = geo.project(pb)
        bu, bv = bu[bsel, None], bv[bsel, None]
        dd = np.sqrt((gu - bu) ** 2 + (gv - bv) ** 2) / geo.s[bsel, None]
        sub = bg[bsel]
        blend(sub, ramp(0.36 - dd, pixb[bsel]), hair4[bsel])
        bg[bsel] = sub
    return bg.reshape(n, C, h, h)


def render_chunk(cfg, idf, imf, domains):
    S = cfg.image_size
    geo = Geo(idf, imf, S, cfg.difficulty)
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
    box = Patch(geo, geo.cx, geo.cy, None, 1.18)
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
        ep = Patch(geo, eu, ev, None, 0.2 * float(idf["ear_size"].max()), box)
        rx_ = 0.09 * idf["ear_size"] * np.clip(np.abs(geo.R[:, 0, 0]), 0.3, 1)
        er = ((ep.guf - bc(eu)) / bc(geo.s * rx_)) ** 2 + ((ep.gvf - bc(ev)) / bc(geo.s * 0.17 * idf["ear_size"])) ** 2
        reg = ep.gather(region)
        blend(reg, ramp(1 - er, 0.3), col4(skin * lc * (amb + 0.25)[:, None], 0.8))
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
        area = ramp(my + 0.16 - yb, 0.05) * ramp(zb + 0.05, 0.1)
        mous = ramp(0.05 - np.abs(yb - my - 0.1), 0.03) * ramp(0.2 - np.abs(xb), 0.05)
        ba = np.maximum(area, mous) * dens * bc(idf["beard_density"][bsel])
        sub = alb[bsel]
        blend(sub, ba, col4(idf["hair_rgb"][bsel] * 0.8, 0.5))
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
        area = ramp(ny_ - ym, 0.03) * ramp(ym + 0.9, 0.05) * ramp(zm - 0.1, 0.1)
        pleat = 1 - 0.12 * (np.sin(ym * 60) > 0.6)
        mc = np.where(imf["_acc"][msel, 0:1] < 0.6, np.array([[0.62, 0.78, 0.9]], _F32),
                      np.array([[0.93, 0.93, 0.92]], _F32))
        sub = alb[msel]
        mcol = col4(mc, 0.55)[:, :C, None] * pleat[:, None]
        if C == 4:
            mcol[:, 3] = 0.55
        blend(sub, area, mcol)
        alb[msel] = sub

    # shade the head and composite
    alb[:, :3] *= shade[:, None] * lc[:, :, None]
    blend(region, head_a, alb)

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
    t = EXPR_TABLE[imf["expression"]] * imf["expression_intensity"][:, None]
    return {k: t[:, i] for i, k in enumerate(EXPR_NAMES)}


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
        pt = Patch(geo, u, v, Ji, 0.30, box, centre=(u + 0.1 * J[:, 0, 1], v + 0.1 * J[:, 1, 1]))
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
        inside = ramp(upper - b, pix) * ramp(b - lower, pix) * ramp(W - np.abs(a), pix)
        blend(reg, inside * hm, np.array([0.92, 0.90, 0.88, 0.97], _F32))
        # gaze_x > 0 looks to image right; the iris travels most of the eye's half-width (a 64 px face's
        # eye is ~6 px wide: a smaller travel moves the pupil by less than a pixel and no network can see it)
        gx = (imf["gaze_x"] * side)[:, None] * W * 0.75
        gy = imf["gaze_y"][:, None] * eh[:, None] * 0.6
        rr = np.sqrt((a - gx) ** 2 + (b - gy) ** 2)
        ir = eh[:, None] * 1.05
        iris = ramp(ir - rr, pix) * inside
        blend(reg, iris * hm, col4(idf["eye_rgb"], 0.97))
        pupil = ramp(ir * 0.45 - rr, pix) * inside
        blend(reg, pupil * hm, np.array([0.03, 0.03, 0.03, 0.97], _F32))
        spec = ramp(ir * 0.22 - np.sqrt((a - gx - ir * 0.3) ** 2 + (b - gy - ir * 0.35) ** 2), pix) * inside
        blend(reg, spec * hm * 0.8, np.array([1, 1, 1, 0.9], _F32))
        # lash line (thicker at the outer corner) and lid crease
        lash_t = (0.010 + 0.008 * np.clip(a / W, 0, 1)) + pix * 0.3
        lash = ramp(lash_t - np.abs(b - upper - 0.004), pix) * ramp(W * 1.08 - np.abs(a), pix)
        blend(reg, lash * hm * 0.9, np.array([0.08, 0.05, 0.04, 0.45], _F32))
        crease = ramp(0.006 - np.abs(b - (H * 0.6 + eh[:, None] * 0.9) * rq - tilt), pix)
        blend(reg, crease * hm * 0.25 * ramp(W - np.abs(a), pix), np.array([0.3, 0.18, 0.12, 0.9], _F32))
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
        brow = ramp(bt - np.abs(b - curve), pix) * ramp(bw - np.abs(ac), pix * 2)
        blend(reg, brow * hm * 0.95, col4(brow_rgb, 0.3))
        # forehead lines when the brows go up (surprise, fear)
        fl = np.clip(ex["brow_raise"] - 0.3, 0, 1)
        fsel = np.nonzero(fl > 0)[0]
        if fsel.size:
            bf = b[fsel] - curve[fsel] - 0.07
            lines = ramp(0.006 - np.minimum(np.abs(bf), np.abs(bf - 0.05)), pix[fsel]) \
                * ramp(bw[fsel] * 1.1 - np.abs(ac[fsel]), pix[fsel] * 3)
            rs = reg[fsel]
            blend(rs, lines * hm[fsel] * fl[fsel, None] * 0.5, np.array([0.3, 0.17, 0.12, 0.6], _F32))
            reg[fsel] = rs
        # crow's feet with age and smiling (subset that has them)
        cf = np.clip(idf["wrinkle"] + 0.5 * ex["cheek"], 0, 1)
        csel = np.nonzero(cf > 0.05)[0]
        if csel.size:
            ac_, bc_, W_, pix_ = a[csel], b[csel], W[csel], pix[csel]
            crow = ramp(0.004 - np.abs(np.abs(bc_ + 0.25 * (ac_ - W_)) - 0.02), pix_) \
                * ramp(0.07 - np.abs(ac_ - W_ - 0.05), pix_)
            rs = reg[csel]
            blend(rs, crow * hm[csel] * cf[csel, None] * 0.3, np.array([0.25, 0.15, 0.1, 0.9], _F32))
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
    lens = ramp(1 - lr, 2 * pix / W)
    rim = ramp(0.012 + pix * 0.4 - np.abs(lr - 1) * W * 1.2, pix)
    # bridge towards the nose, temple arm outwards
    bridge = ramp(0.01 + pix * 0.3 - np.abs(b - 0.02 - 0.02 * (a + sep) ** 2), pix) \
        * ramp(-a - W * 1.35, pix) * ramp(sep + a + 0.01, pix)
    temple = ramp(0.008 + pix * 0.3 - np.abs(b - 0.03), pix) * ramp(a - W * 1.4, pix)
    blend(reg, lens * sg * 0.94 * hm, np.array([0.03, 0.03, 0.05, 0.25], _F32))
    frame = np.maximum(np.maximum(rim, bridge), temple)
    blend(reg, frame * 0.95 * np.clip(hm + bridge, 0, 1), col4(frame_rgb, 0.3))
    if reg.shape[1] == 4:  # glass is opaque to thermal infrared: lenses look cold
        reg[:, 3] += lens * hm * gl * 0.85 * (0.25 - reg[:, 3])
    glint = ramp(0.02 - np.abs(la + lb - 0.5) * W, pix) * lens * gl * 0.25
    blend(reg, glint * hm, np.array([1, 1, 1, 0.3], _F32))


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
    pt = Patch(geo, u, v, Ji, 0.30, box)
    a, b, pix = pt.a, pt.b, pt.pix
    reg = pt.gather(alb)
    hm = pt.gather(head_a)
    ox, oy = off[:, 0, None], off[:, 1, None]
    nw = idf["nose_w"][:, None]
    # bridge side shadow on the side away from the key light
    side = np.where(L[:, 0] > 0, -1.0, 1.0).astype(_F32)[:, None]
    t = np.clip(b / (nl[:, None] * 0.9), 0, 1)  # 0 at tip level, 1 at eye level
    line_x = ox * (1 - t) + side * nw * (0.55 - 0.25 * t)
    sh = ramp(0.018 - np.abs(a - line_x), pix) * ramp(nl[:, None] * 0.85 - b, pix * 3) * ramp(b + 0.01, pix)
    blend(reg, sh * hm * 0.35, np.array([0.25, 0.13, 0.09, 0.9], _F32))
    # alae (nose wings) and nostrils around the projected tip
    for s_ in (-1.0, 1.0):
        cxn = ox + s_ * nw * 0.62
        d = np.sqrt(((a - cxn) / (nw * 0.48)) ** 2 + ((b - oy + 0.012) / 0.04) ** 2)
        wing = ramp(0.13 - np.abs(d - 1) * 0.1, pix) * ramp(b - oy + 0.03, pix)
        blend(reg, wing * hm * 0.45, np.array([0.3, 0.16, 0.11, 0.9], _F32))
        dn = np.sqrt(((a - ox - s_ * nw * 0.38) / (nw * 0.28)) ** 2 + ((b - oy + 0.025) / 0.017) ** 2)
        blend(reg, ramp(1 - dn, 0.5) * hm * 0.75, np.array([0.12, 0.05, 0.04, 0.95], _F32))
    # tip highlight
    hl = _bump((((a - ox) / (nw * 0.7)) ** 2 + ((b - oy - 0.02) / 0.05) ** 2)) * 0.12
    reg[:, :3] += (hl * hm)[:, None]
    if reg.shape[1] == 4:  # the nose tip is the coldest part of a face
        reg[:, 3] -= hl * hm * 1.6
    # disgust: wrinkles across the bridge
    nwk = ex["nose_wrinkle"][:, None]
    if (nwk > 0).any():
        bb = b - nl[:, None] * 0.6
        wr = ramp(0.004 - np.minimum(np.minimum(np.abs(bb), np.abs(bb - 0.035)), np.abs(bb + 0.035)), pix) \
            * ramp(nw * 0.8 - np.abs(a), pix) * ramp(nl[:, None] * 0.85 - b, pix) \
            * ramp(b - nl[:, None] * 0.4, pix)
        blend(reg, wr * hm * nwk * 0.6, np.array([0.3, 0.16, 0.11, 0.9], _F32))
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
    pt = Patch(geo, u, v, Ji, (0.46, 0.27), box, centre=(u + 0.04 * J[:, 0, 1], v + 0.04 * J[:, 1, 1]))
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
    lips = ramp(top - b, pix) * ramp(b - bot, pix) * ramp(W - np.abs(a), pix)
    # cheeks: nasolabial folds (age, smiling, disgust) and blush when happy
    cheek = ex["cheek"][:, None]
    fold_x = W + 0.04 + 0.12 * np.clip(b - cl, 0, 0.3)
    fold = ramp(0.005 - np.abs(np.abs(a) - fold_x), pix) * ramp(b - cl + 0.04, pix) * ramp(0.22 - b, pix)
    fs = np.clip(idf["wrinkle"][:, None] * 0.6 + 0.6 * sm + 0.5 * ex["upper_lip"][:, None], 0, 1)
    blend(reg, fold * hm * fs * 0.5, np.array([0.35, 0.2, 0.15, 0.6], _F32))
    blush = _bump((((np.abs(a) - 0.3) / 0.13) ** 2 + ((b - 0.2) / 0.1) ** 2)) * cheek * 0.25
    blend(reg, blush * hm, np.array([0.9, 0.45, 0.4, 0.95], _F32))
    blend(reg, lips * hm * 0.85, col4(idf["lip_rgb"], 0.88))
    mid = b - cl - ul * 0.5 + (o_dn - o_up) * 0.5  # 0 along the middle of the opening
    inner = ramp(oh * 0.5 - np.abs(mid), pix) * ramp(W * 0.92 - np.abs(a), pix)
    # the mouth cavity is dark in light and the hottest region of a face in thermal infrared
    blend(reg, inner * hm, np.array([0.10, 0.02, 0.03, 1.0], _F32))
    # upper teeth: a band under the upper lip, shown by grins, fear and the disgust sneer
    tb = np.clip(oh * 0.45, 0, 0.035)
    teeth = inner * ramp(mid - oh * 0.5 + tb, pix) * ramp(0.6 - rnd, 0.2) \
        * np.clip(sm * 2 + 0.5 + 0.5 * ex["upper_lip"][:, None], 0, 1)
    blend(reg, teeth * hm * 0.95, np.array([0.95, 0.93, 0.88, 0.6], _F32))
    seam = ramp(0.006 + 0.3 * pix + 0.006 * press - np.abs(b - cl - ul * 0.5), pix) \
        * ramp(W - np.abs(a), pix) * ramp(0.02 - oh, 0.02)
    blend(reg, seam * hm * 0.8, np.array([0.22, 0.08, 0.07, 0.95], _F32))
    corners = _bump(((np.abs(a) - W) ** 2 + (b - cl) ** 2) / 0.0012) * 0.35
    blend(reg, corners * hm, np.array([0.3, 0.15, 0.12, 0.9], _F32))
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
        self.alpha = ramp(self.sq + np.clip(self.disc, -np.inf, 0), 1.5 * pixb)
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
        return ramp(sq + np.clip(disc, -np.inf, 0), 1.5 * kb * s_(self.pixb))


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
    front = ramp(yh - hl, 0.04)
    is_long = b_((style == 2).astype(_F32))
    is_bun = b_((style == 3).astype(_F32))
    # per-image offsets are folded into [n,1] constants first: one full-window pass fewer per term
    back = ramp((0.35 * is_long - 0.05) - zh, 0.06) * ramp(yh + (0.35 + 0.5 * is_long), 0.05)
    sides = ramp(axh + (0.06 * is_long - 0.86), 0.04) * ramp(yh + (0.05 + 0.55 * is_long - 0.2 * is_bun), 0.05)
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
    rgb = col4(col, 0.35)[:, :canvas.shape[1], None] * sh[:, None]
    if canvas.shape[1] == 4:
        rgb[:, 3] = 0.35
    blend(canvas, a, rgb)


def _hat(geo, idf, imf, sel, head, surf, up, shade, canvas):
    """Beanie over the top of the head, on a larger shell (region and shading from the head, as for hair)."""
    inside = head.shell_alpha(np.full(len(sel), 1.14, _F32), sel)
    yh = surf.yh[sel]
    b_ = _bc
    r = imf["_acc"][sel]
    level = b_(0.38 + 0.12 * r[:, 2])
    m = len(sel)
    both = up(np.concatenate([ramp(yh - level, 0.03), ramp(0.07 - (yh - level), 0.02)]))
    a = inside * both[:m]
    sh = shade[sel] * (1 - 0.25 * both[m:])
    hue = np.stack([r[:, 3], r[:, 4], r[:, 5]], 1)
    col = np.clip(0.1 + 0.8 * hue * np.sqrt(hue), 0, 1) * imf["light_color"][sel]
    rgb = col4(col, 0.3)[:, :canvas.shape[1], None] * sh[:, None]
    if canvas.shape[1] == 4:
        rgb[:, 3] = 0.3
    sub_c = canvas[sel]
    blend(sub_c, a, rgb)
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
            palm = ramp(1 - np.sqrt((pk / szk) ** 2 + (qk / (szk * 0.8)) ** 2), 2 * pxk / szk)
            fq = np.minimum(np.minimum(np.abs(qk + szk * 0.4), np.abs(qk)), np.abs(qk - szk * 0.4))
            fingers = ramp(0.055 - fq, pxk) * ramp(pk - szk * 0.5, pxk) * ramp(szk * 1.9 - pk, pxk) \
                * ramp(szk * 0.8 - np.abs(qk), pxk)
            a[ks] = np.maximum(palm, fingers)
        elif k == 1:  # bar
            a[ks] = ramp(szk * 0.35 - np.abs(qk), pxk) * ramp(2.5 - np.abs(pk), pxk)
        else:  # blob
            a[ks] = ramp(1 - np.sqrt((pk / (szk * 1.1)) ** 2 + (qk / (szk * 0.75)) ** 2), 2 * pxk / szk)
    other = idf["skin_rgb"][sel][:, ::-1] * 0.3 + 0.7 * np.stack([r[:, 5], r[:, 6], r[:, 7]], 1)
    col = np.where((kind == 0)[:, None], np.clip(idf["skin_rgb"][sel] * 1.02, 0, 1), other)
    shade = 0.85 + 0.15 * np.clip(q / sz, -1, 1)
    rgb = (col * imf["light_color"][sel])[:, :, None, None] * shade[:, None]
    heat = np.where(kind == 0, 0.85, 0.25).astype(_F32)[:, None, None, None]
    t = np.concatenate([rgb, np.broadcast_to(heat, (rgb.shape[0], 1) + rgb.shape[2:])], 1)
    sub_c = canvas[sel]
    blend(sub_c, a, t)
    canvas[sel] = sub_c
