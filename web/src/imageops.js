// Image operations ported from the Python pipeline so that the page sees the pixels Python would:
//  - PIL's resampling (Image.resize with BOX or BILINEAR, 8-bit fixed point, two passes),
//  - TensorFlow's ResizeArea and CropAndResize (what the `mtcnn` package feeds its networks),
//  - face_transfer.data.align: the similarity transform and the bilinear warp to the canonical crop.
// Images are {data, width, height, channels} with data a typed array in row-major HWC order.

// face_transfer/data/align.py CANONICAL_LANDMARKS: (x, y) in units of the crop side.
export const CANONICAL_LANDMARKS = [
  [0.38, 0.477], [0.62, 0.477], [0.50, 0.595], [0.427, 0.698], [0.573, 0.698],
];

// Python's round() / numpy's rint: round half to even.
export function roundHalfEven(x) {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

// ---------------------------------------------------------------------------------------------- PIL resample

const PIL_FILTERS = {
  box: { support: 0.5, fn: (x) => (x > -0.5 && x <= 0.5 ? 1.0 : 0.0) },
  bilinear: {
    support: 1.0,
    fn: (x) => {
      if (x < 0.0) x = -x;
      return x < 1.0 ? 1.0 - x : 0.0;
    },
  },
};
const PRECISION_BITS = 32 - 8 - 2;

function precomputeCoeffs(inSize, outSize, filter) {
  // Pillow's src/libImaging/Resample.c precompute_coeffs + normalize_coeffs_8bpc.
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const kk = new Float64Array(outSize * ksize);
  const bounds = new Int32Array(outSize * 2);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      const w = filter.fn((x + xmin - center + 0.5) * ss);
      kk[xx * ksize + x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) if (ww !== 0.0) kk[xx * ksize + x] /= ww;
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  const ki = new Float64Array(kk.length); // integer coefficients, kept as exact doubles
  const one = 1 << PRECISION_BITS;
  for (let i = 0; i < kk.length; i++) ki[i] = kk[i] < 0 ? Math.trunc(-0.5 + kk[i] * one) : Math.trunc(0.5 + kk[i] * one);
  return { ksize, kk: ki, bounds };
}

function clip8(ss) {
  const v = Math.floor(ss / (1 << PRECISION_BITS));
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

// PIL Image.resize((outW, outH), BOX | BILINEAR) of a uint8 image (any channel count).
export function pilResize(img, outW, outH, filterName) {
  const filter = PIL_FILTERS[filterName];
  const { width: w, height: h, channels: c } = img;
  if (outW === w && outH === h) return { data: new Uint8Array(img.data), width: w, height: h, channels: c };
  let src = img.data;
  let curW = w;
  const half = 1 << (PRECISION_BITS - 1);
  if (outW !== w) {
    const { ksize, kk, bounds } = precomputeCoeffs(w, outW, filter);
    const out = new Uint8Array(outW * h * c);
    for (let y = 0; y < h; y++) {
      const row = y * w * c;
      for (let xx = 0; xx < outW; xx++) {
        const xmin = bounds[xx * 2], xmax = bounds[xx * 2 + 1], k0 = xx * ksize;
        for (let ch = 0; ch < c; ch++) {
          let ss = half;
          for (let x = 0; x < xmax; x++) ss += src[row + (x + xmin) * c + ch] * kk[k0 + x];
          out[(y * outW + xx) * c + ch] = clip8(ss);
        }
      }
    }
    src = out;
    curW = outW;
  }
  if (outH !== h) {
    const { ksize, kk, bounds } = precomputeCoeffs(h, outH, filter);
    const out = new Uint8Array(curW * outH * c);
    const rowLen = curW * c;
    for (let yy = 0; yy < outH; yy++) {
      const ymin = bounds[yy * 2], ymax = bounds[yy * 2 + 1], k0 = yy * ksize;
      for (let i = 0; i < rowLen; i++) {
        let ss = half;
        for (let y = 0; y < ymax; y++) ss += src[(y + ymin) * rowLen + i] * kk[k0 + y];
        out[yy * rowLen + i] = clip8(ss);
      }
    }
    src = out;
  }
  return { data: src, width: outW, height: outH, channels: c };
}

// ---------------------------------------------------------------------------------------------- TensorFlow ops

// tf.image.resize(images, [outH, outW], method=AREA) (tensorflow/core/kernels/image/resize_area_op.cc) on a
// float image; returns a Float32Array [outH, outW, c].
export function tfResizeArea(data, h, w, c, outH, outW) {
  const hs = Math.fround(h / outH), ws = Math.fround(w / outW);
  const scale = 1.0 / (hs * ws);
  const axis = (n, s, inSize) => {
    const taps = [];
    for (let o = 0; o < n; o++) {
      const a = Math.fround(o * s), b = Math.fround((o + 1) * s);
      const start = Math.floor(a), end = Math.ceil(b);
      const idx = [], wt = [];
      for (let i = start; i < end; i++) {
        const sc = i < a ? (i + 1 > b ? s : i + 1 - a) : (i + 1 > b ? b - i : 1.0);
        idx.push(Math.min(Math.max(i, 0), inSize - 1));
        wt.push(sc);
      }
      taps.push({ idx, wt });
    }
    return taps;
  };
  const ty = axis(outH, hs, h), tx = axis(outW, ws, w);
  const out = new Float32Array(outH * outW * c);
  const acc = new Float64Array(c);
  for (let y = 0; y < outH; y++) {
    const { idx: yi, wt: yw } = ty[y];
    for (let x = 0; x < outW; x++) {
      const { idx: xi, wt: xw } = tx[x];
      acc.fill(0);
      for (let a = 0; a < yi.length; a++) {
        const row = yi[a] * w;
        for (let b = 0; b < xi.length; b++) {
          const wgt = yw[a] * xw[b], p = (row + xi[b]) * c;
          for (let ch = 0; ch < c; ch++) acc[ch] += wgt * data[p + ch];
        }
      }
      const o = (y * outW + x) * c;
      for (let ch = 0; ch < c; ch++) out[o + ch] = acc[ch] * scale;
    }
  }
  return out;
}

// tf.image.crop_and_resize(image[None], [[y1, x1, y2, x2]] (normalised), [0], [size, size]) with bilinear
// sampling and extrapolation value 0; returns a Float32Array [size, size, c].
export function tfCropAndResize(data, h, w, c, box, size, out = new Float32Array(size * size * c)) {
  const [y1, x1, y2, x2] = box.map(Math.fround);
  const hScale = size > 1 ? ((y2 - y1) * (h - 1)) / (size - 1) : 0;
  const wScale = size > 1 ? ((x2 - x1) * (w - 1)) / (size - 1) : 0;
  out.fill(0);
  for (let y = 0; y < size; y++) {
    const inY = size > 1 ? y1 * (h - 1) + y * hScale : 0.5 * (y1 + y2) * (h - 1);
    if (inY < 0 || inY > h - 1) continue;
    const top = Math.floor(inY), bottom = Math.ceil(inY), yl = inY - top;
    for (let x = 0; x < size; x++) {
      const inX = size > 1 ? x1 * (w - 1) + x * wScale : 0.5 * (x1 + x2) * (w - 1);
      if (inX < 0 || inX > w - 1) continue;
      const left = Math.floor(inX), right = Math.ceil(inX), xl = inX - left;
      for (let ch = 0; ch < c; ch++) {
        const tl = data[(top * w + left) * c + ch], tr = data[(top * w + right) * c + ch];
        const bl = data[(bottom * w + left) * c + ch], br = data[(bottom * w + right) * c + ch];
        const t = tl + (tr - tl) * xl, b = bl + (br - bl) * xl;
        out[(y * size + x) * c + ch] = t + (b - t) * yl;
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------- alignment

export function templatePoints(size) {
  return CANONICAL_LANDMARKS.map(([x, y]) => [x * size - 0.5, y * size - 0.5]);
}

// Least-squares similarity (rotation, uniform scale, translation) taking src points to dst: the closed form
// of Umeyama's solution in 2-D. Returns [[a, -b, tx], [b, a, ty]].
export function similarityTransform(src, dst) {
  const n = src.length;
  let msx = 0, msy = 0, mdx = 0, mdy = 0;
  for (let i = 0; i < n; i++) { msx += src[i][0]; msy += src[i][1]; mdx += dst[i][0]; mdy += dst[i][1]; }
  msx /= n; msy /= n; mdx /= n; mdy /= n;
  let ss = 0, dot = 0, cross = 0;
  for (let i = 0; i < n; i++) {
    const sx = src[i][0] - msx, sy = src[i][1] - msy, dx = dst[i][0] - mdx, dy = dst[i][1] - mdy;
    ss += sx * sx + sy * sy;
    dot += sx * dx + sy * dy;
    cross += sx * dy - sy * dx;
  }
  if (!(ss > 1e-12 * n)) throw new Error("landmarks are all at one place; no similarity transform exists");
  const a = dot / ss, b = cross / ss;
  return [[a, -b, mdx - (a * msx - b * msy)], [b, a, mdy - (b * msx + a * msy)]];
}

export function applyTransform(m, pts) {
  return pts.map(([x, y]) => [m[0][0] * x + m[0][1] * y + m[0][2], m[1][0] * x + m[1][1] * y + m[1][2]]);
}

export function invertTransform(m) {
  const [[a, b, tx], [c, d, ty]] = m;
  const det = a * d - b * c;
  const ia = d / det, ib = -b / det, ic = -c / det, id = a / det;
  return [[ia, ib, -(ia * tx + ib * ty)], [ic, id, -(ic * tx + id * ty)]];
}

function warpBilinear(img, m, size) {
  // align.py _warp_bilinear: each output pixel samples M^-1 of itself; outside the photo is black.
  const { data, width: w, height: h, channels: c } = img;
  const inv = invertTransform([[m[0][0], m[0][1], 0], [m[1][0], m[1][1], 0]]);
  const out = new Uint8Array(size * size * c);
  const tap = (yy, xx, ch) => (xx >= 0 && xx < w && yy >= 0 && yy < h ? data[(yy * w + xx) * c + ch] : 0);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const px = x - m[0][2], py = y - m[1][2];
      const sx = inv[0][0] * px + inv[0][1] * py, sy = inv[1][0] * px + inv[1][1] * py;
      const x0 = Math.floor(sx), y0 = Math.floor(sy), fx = sx - x0, fy = sy - y0;
      for (let ch = 0; ch < c; ch++) {
        const v = tap(y0, x0, ch) * (1 - fx) * (1 - fy) + tap(y0, x0 + 1, ch) * fx * (1 - fy)
          + tap(y0 + 1, x0, ch) * (1 - fx) * fy + tap(y0 + 1, x0 + 1, ch) * fx * fy;
        out[(y * size + x) * c + ch] = Math.min(255, Math.max(0, roundHalfEven(v)));
      }
    }
  }
  return { data: out, width: size, height: size, channels: c };
}

// align.py align_face: warps the face so its 5 landmarks land on the template; returns {crop, matrix}
// with matrix the transform from the (original) photo to the crop.
export function alignFace(img, landmarks, size) {
  let matrix = similarityTransform(landmarks, templatePoints(size));
  const scale = Math.sqrt(Math.abs(matrix[0][0] * matrix[1][1] - matrix[0][1] * matrix[1][0]));
  if (scale < 0.5) {
    const factor = 2.0 * scale;
    const { width: w, height: h } = img;
    const nw = Math.max(1, roundHalfEven(w * factor)), nh = Math.max(1, roundHalfEven(h * factor));
    const small = pilResize(img, nw, nh, "bilinear");
    const lm = landmarks.map(([x, y]) => [(x + 0.5) * (nw / w) - 0.5, (y + 0.5) * (nh / h) - 0.5]);
    const m2 = similarityTransform(lm, templatePoints(size));
    return { crop: warpBilinear(small, m2, size), matrix };
  }
  return { crop: warpBilinear(img, matrix, size), matrix };
}

// The no-face fallback: the largest centred square, resized (PIL bilinear) to size x size.
export function centreCrop(img, size) {
  const { data, width: w, height: h, channels: c } = img;
  const side = Math.min(w, h), x0 = Math.floor((w - side) / 2), y0 = Math.floor((h - side) / 2);
  const sq = new Uint8Array(side * side * c);
  for (let y = 0; y < side; y++) sq.set(data.subarray(((y + y0) * w + x0) * c, ((y + y0) * w + x0 + side) * c), y * side * c);
  const crop = pilResize({ data: sq, width: side, height: side, channels: c }, size, size, "bilinear");
  const s = size / side;
  return { crop, matrix: [[s, 0, (0.5 - x0) * s - 0.5], [0, s, (0.5 - y0) * s - 0.5]] };
}
