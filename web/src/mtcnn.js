// The MTCNN cascade of the `mtcnn` 1.0.0 Python package (mtcnn/stages/*.py, mtcnn/utils/*.py), step by step,
// on its P/R/O-Nets converted to TFLite by face_transfer.deploy.detector_tflite, run with LiteRT.js.
// The quirks of the Python code are kept on purpose (its NMS lets suppressed boxes suppress, crops are
// normalised by H but sampled over H - 1, ...) so that both find the same boxes and landmarks.
import { Tensor, loadAndCompile } from "./lib/litertjs/core/index.js";
import { pilResize, roundHalfEven, tfCropAndResize, tfResizeArea } from "./imageops.js";

export const MAX_DETECT_SIDE = 1024; // face_transfer/data/align.py: photos are detected at most this large
export const MIN_SCORE = 0.9; // align.py DEFAULT_MIN_SCORE

const COMPILE = { accelerator: "wasm", cpuOptions: { numThreads: 1 } };

async function runModel(model, inputs) {
  const tensors = {};
  for (const [k, [arr, shape]] of Object.entries(inputs)) tensors[k] = new Tensor(arr, shape);
  try {
    const out = await model.run(tensors);
    const res = {};
    for (const [k, t] of Object.entries(out)) {
      res[k] = Float32Array.from(t.toTypedArray());
      t.delete();
    }
    return res;
  } finally {
    for (const t of Object.values(tensors)) t.delete();
  }
}

function iouMatrixRow(boxes, i, j, method) {
  const a = boxes[i], b = boxes[j];
  const areaA = (a[2] - a[0]) * (a[3] - a[1]), areaB = (b[2] - b[0]) * (b[3] - b[1]);
  const iw = Math.max(0, Math.min(a[2], b[2]) - Math.max(a[0], b[0]));
  const ih = Math.max(0, Math.min(a[3], b[3]) - Math.max(a[1], b[1]));
  const inter = iw * ih;
  return method === "min" ? inter / Math.min(areaA, areaB) : inter / (areaA + areaB - inter);
}

// mtcnn.utils.bboxes.nms: box j goes when ANY earlier box i < j overlaps it above the threshold (suppressed or not).
function nms(rows, threshold, method, sort) {
  if (sort) rows = sortByScore(rows);
  const boxes = rows.map((r) => r.box);
  const keep = [];
  for (let j = 0; j < rows.length; j++) {
    let ok = true;
    for (let i = 0; i < j && ok; i++) if (iouMatrixRow(boxes, i, j, method) > threshold) ok = false;
    if (ok) keep.push(rows[j]);
  }
  return keep;
}

function sortByScore(rows) {
  return rows.slice().sort((a, b) => b.score - a.score);
}

function resizeToSquare(rows) {
  return rows.map((r) => {
    const [x1, y1, x2, y2] = r.box;
    const h = y2 - y1, w = x2 - x1, l = Math.max(w, h);
    const nx1 = x1 + w * 0.5 - l * 0.5, ny1 = y1 + h * 0.5 - l * 0.5;
    return { ...r, box: [nx1, ny1, nx1 + l, ny1 + l] };
  });
}

function adjustBoxes(rows, regs) {
  return rows.map((r, i) => {
    const [x1, y1, x2, y2] = r.box;
    const w = x2 - x1 + 1, h = y2 - y1 + 1, g = regs[i];
    return { ...r, box: [x1 + g[0] * w, y1 + g[1] * h, x2 + g[2] * w, y2 + g[3] * h] };
  });
}

export function buildScalePyramid(width, height, p) {
  const minDim = Math.min(width, height);
  const count = roundHalfEven(-(Math.log(minDim / p.min_size) / Math.log(p.scale_factor) + 1));
  const m = p.min_size / p.min_face_size;
  const scales = [];
  for (let k = 0; k < count; k++) scales.push(m * Math.pow(p.scale_factor, k));
  return scales;
}

export class Mtcnn {
  constructor(base, manifest) {
    this.base = base;
    this.manifest = manifest;
    this.p = manifest.params;
    this.canvases = Object.keys(manifest.pnet).map(Number).sort((a, b) => a - b);
    this.pnets = new Map();
  }

  static async load(base) {
    const resp = await fetch(base + "mtcnn.json");
    if (!resp.ok) throw new Error(`cannot read ${base}mtcnn.json (HTTP ${resp.status})`);
    const det = new Mtcnn(base, await resp.json());
    det.rnet = await loadAndCompile(base + det.manifest.rnet, COMPILE);
    det.onet = await loadAndCompile(base + det.manifest.onet, COMPILE);
    return det;
  }

  async pnet(side) {
    if (!this.pnets.has(side)) this.pnets.set(side, await loadAndCompile(this.base + this.manifest.pnet[String(side)], COMPILE));
    return this.pnets.get(side);
  }

  // P-Net on one pyramid level (float image [lh, lw, 3]) placed in the smallest canvas holding it.
  async pnetLevel(level, lh, lw) {
    const side = this.canvases.find((s) => s >= lh && s >= lw);
    if (side === undefined) throw new Error(`pyramid level ${lw}x${lh} is larger than the largest P-Net canvas`);
    const canvas = new Float32Array(side * side * 3);
    for (let y = 0; y < lh; y++) canvas.set(level.subarray(y * lw * 3, (y + 1) * lw * 3), y * side * 3);
    const ms = side - 2;
    const mask = new Float32Array(ms * ms);
    for (let y = 0; y < lh - 2; y++) mask.fill(1, y * ms, y * ms + lw - 2);
    const out = await runModel(await this.pnet(side), {
      image: [canvas, [1, side, side, 3]], mask: [mask, [1, ms, ms, 1]],
    });
    // output cells: 'valid' 3x3 conv, 'same' 2x2/2 pool, two 'valid' 3x3 convs
    const outSide = Math.ceil(ms / 2) - 4;
    const oh = Math.ceil((lh - 2) / 2) - 4, ow = Math.ceil((lw - 2) / 2) - 4;
    return { reg: out.reg, prob: out.prob, outSide, oh, ow };
  }

  // mtcnn.MTCNN.detect_faces(image, output_type="numpy", box_format="xyxy") for one uint8 RGB image:
  // [{box: [x1, y1, x2, y2], score, landmarks: [[x, y] x 5]}] (every detection, no score filter).
  async detectRaw(img) {
    const { width: w, height: h } = img;
    const p = this.p;
    const t0 = performance.now();
    const stats = (this.lastStats = { pnet_ms: 0, rnet_ms: 0, onet_ms: 0, pnet_boxes: 0, rnet_boxes: 0, levels: 0 });
    const norm = new Float64Array(w * h * 3);
    for (let i = 0; i < norm.length; i++) norm[i] = (img.data[i] - 127.5) / 128;
    // --- stage 1: P-Net over the pyramid
    const perScale = [];
    for (const scale of buildScalePyramid(w, h, p)) {
      const lh = Math.trunc(h * scale), lw = Math.trunc(w * scale);
      if (lh < 12 || lw < 12) continue;
      await new Promise((r) => setTimeout(r, 0)); // keep the page responsive between pyramid levels
      const level = tfResizeArea(norm, h, w, 3, lh, lw);
      stats.levels++;
      const { reg, prob, outSide, oh, ow } = await this.pnetLevel(level, lh, lw);
      let rows = [];
      for (let y = 0; y < oh; y++) {
        for (let x = 0; x < ow; x++) {
          const cell = y * outSide + x, score = prob[cell * 2 + 1];
          if (!(score > p.threshold_pnet)) continue;
          const g = reg.subarray(cell * 4, cell * 4 + 4);
          const ux = x * 2 + 1, uy = y * 2 + 1, bx = x * 2 + 12, by = y * 2 + 12;
          rows.push({
            box: [(ux + g[0] * 11) / scale, (uy + g[1] * 11) / scale, (bx + g[2] * 11) / scale, (by + g[3] * 11) / scale],
            score,
          });
        }
      }
      rows = sortByScore(rows);
      perScale.push(...nms(rows, p.nms_pnet1, "union", false));
    }
    let rows = resizeToSquare(nms(perScale, p.nms_pnet2, "union", true));
    const t1 = performance.now();
    Object.assign(stats, { pnet_ms: t1 - t0, pnet_boxes: rows.length });
    if (!rows.length) return [];
    // --- stage 2: R-Net on 24x24 patches
    rows = await this.refine(norm, h, w, rows, 24, this.rnet);
    rows = rows.filter((r) => r.score > p.threshold_rnet);
    rows = resizeToSquare(nms(rows, p.nms_rnet, "union", true));
    const t2 = performance.now();
    Object.assign(stats, { rnet_ms: t2 - t1, rnet_boxes: rows.length });
    if (!rows.length) return [];
    // --- stage 3: O-Net on 48x48 patches, landmarks
    rows = await this.refine(norm, h, w, rows, 48, this.onet);
    rows = rows.filter((r) => r.score > p.threshold_onet);
    rows = nms(rows, p.nms_onet, "min", true);
    stats.onet_ms = performance.now() - t2;
    // postprocess: fit_to_image (boxes only; landmarks are not limited by default)
    return rows.map((r) => ({
      box: [Math.min(Math.max(r.box[0], 0), w - 1), Math.min(Math.max(r.box[1], 0), h - 1),
        Math.min(Math.max(r.box[2], 0), w - 1), Math.min(Math.max(r.box[3], 0), h - 1)],
      score: r.score,
      landmarks: r.landmarks,
    }));
  }

  async refine(norm, h, w, rows, size, model) {
    const patch = new Float32Array(size * size * 3);
    const regs = [], out = [];
    for (const r of rows) {
      const [x1, y1, x2, y2] = r.box;
      tfCropAndResize(norm, h, w, 3, [y1 / h, x1 / w, y2 / h, x2 / w], size, patch);
      const res = await runModel(model, { image: [patch, [1, size, size, 3]] });
      regs.push(Array.from(res.reg));
      const o = { ...r, score: res.prob[1] };
      if (res.landmarks) {
        const bw = x2 - x1 + 1, bh = y2 - y1 + 1, l = res.landmarks;
        o.landmarks = [0, 1, 2, 3, 4].map((k) => [bw * l[k] + x1 - 1, bh * l[k + 5] + y1 - 1]);
      }
      out.push(o);
    }
    return adjustBoxes(out, regs);
  }

  // face_transfer.data.align.detect_faces: photos larger than MAX_DETECT_SIDE are shrunk first (PIL BOX);
  // detections with score >= minScore, most confident first, in the photo's pixel coordinates.
  async detectFaces(img, minScore = MIN_SCORE) {
    const { width: w, height: h } = img;
    if (Math.min(w, h) < 12) return { faces: [], detectWidth: w, detectHeight: h };
    const factor = Math.max(w, h) / MAX_DETECT_SIDE;
    let small = img;
    if (factor > 1) small = pilResize(img, Math.max(1, roundHalfEven(w / factor)), Math.max(1, roundHalfEven(h / factor)), "box");
    let faces = await this.detectRaw(small);
    if (factor > 1) {
      const sx = w / small.width, sy = h / small.height;
      faces = faces.map((f) => ({
        box: [f.box[0] * sx, f.box[1] * sy, f.box[2] * sx, f.box[3] * sy],
        score: f.score,
        landmarks: f.landmarks.map(([x, y]) => [x * sx, y * sy]),
      }));
    }
    faces = faces.filter((f) => f.score >= minScore).sort((a, b) => b.score - a.score);
    return { faces, detectWidth: small.width, detectHeight: small.height };
  }
}

// align.py _pick: the largest face (box area), score breaking ties.
export function pickLargest(faces) {
  const area = (f) => Math.max(f.box[2] - f.box[0], 0) * Math.max(f.box[3] - f.box[1], 0);
  return faces.reduce((best, f) => (best === null || area(f) > area(best) || (area(f) === area(best) && f.score > best.score) ? f : best), null);
}
