// The page's work, off the main thread (a module worker): decoding, MTCNN, alignment and the int8 analyser with
// LiteRT.js (WASM XNNPACK, 1 thread). app.js sends {type: "init"}, {type: "analyze", file}, {type: "benchmark"}.

// LiteRT.js loads its Emscripten glue with importScripts() in a worker, which module workers do not allow:
// the same thing, synchronously, from this folder. The glue would look for its .wasm next to this worker
// (a worker has no document.currentScript): Module.locateFile points it next to the glue instead.
self.importScripts = (...urls) => {
  for (const url of urls) {
    const abs = new URL(url, self.location.href).href;
    const req = new XMLHttpRequest();
    req.open("GET", abs, false);
    req.send();
    if (req.status !== 200) throw new Error(`cannot load ${abs} (HTTP ${req.status})`);
    (0, eval)(`${req.responseText}\n//# sourceURL=${abs}`); // global scope, like importScripts
    self.Module = { ...(self.Module || {}), locateFile: (path) => new URL(path, abs).href };
  }
};

const { Tensor, loadAndCompile, loadLiteRt } = await import("./lib/litertjs/core/index.js");
const { alignFace, centreCrop } = await import("./imageops.js");
const { MAX_DETECT_SIDE, Mtcnn, pickLargest } = await import("./mtcnn.js");

let config, analyzer, inputName, inputSize, detector, lastCrop = null;
const post = (msg, transfer = []) => self.postMessage(msg, transfer);
const progress = (text) => post({ type: "progress", text });

async function init() {
  config = await (await fetch("config.json")).json();
  progress("Loading LiteRT.js (WebAssembly)…");
  await loadLiteRt(config.litert_wasm_dir, { threads: false, jspi: false });
  analyzer = await loadAndCompile(config.analyzer, { accelerator: "wasm", cpuOptions: { numThreads: 1 } });
  const inDetail = analyzer.getInputDetails()[0];
  inputName = inDetail.name;
  inputSize = inDetail.shape[1];
  if (inDetail.dtype !== "uint8" || inDetail.shape[2] !== inputSize || inDetail.shape[3] !== 3) {
    throw new Error(`unexpected analyser input ${inDetail.dtype} [${inDetail.shape}]`);
  }
  progress("Loading the face detector…");
  detector = await Mtcnn.load(config.mtcnn_dir);
  return { inputSize, outputs: analyzer.getOutputDetails().length };
}

// Decoded RGB pixels of a file, downscaled by the browser when its longest side exceeds config.max_work_side.
async function decode(file) {
  let bmp;
  try {
    bmp = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch (e) {
    return { error: `The browser cannot decode “${file.name}” as an image (${e.name}).` };
  }
  const ow = bmp.width, oh = bmp.height;
  let w = ow, h = oh;
  if (Math.max(ow, oh) > config.max_work_side) {
    const f = Math.max(ow, oh) / config.max_work_side;
    w = Math.max(1, Math.round(ow / f));
    h = Math.max(1, Math.round(oh / f));
    const small = await createImageBitmap(bmp, { resizeWidth: w, resizeHeight: h, resizeQuality: "high" });
    bmp.close();
    bmp = small;
  }
  const canvas = new OffscreenCanvas(w, h);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bmp, 0, 0);
  // a preview at most 640 px wide for the page
  const ps = Math.min(1, 640 / Math.max(w, h));
  const preview = await createImageBitmap(bmp, { resizeWidth: Math.max(1, Math.round(w * ps)),
    resizeHeight: Math.max(1, Math.round(h * ps)), resizeQuality: "high" });
  bmp.close();
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const rgb = new Uint8Array(w * h * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2];
  }
  return { img: { data: rgb, width: w, height: h, channels: 3 }, originalWidth: ow, originalHeight: oh, preview };
}

async function runAnalyzer(crop) {
  const input = new Tensor(new Uint8Array(crop.data), [1, inputSize, inputSize, 3]);
  try {
    const out = await analyzer.run({ [inputName]: input });
    const res = {};
    for (const [k, t] of Object.entries(out)) {
      res[k] = Array.from(t.toTypedArray());
      t.delete();
    }
    return res;
  } finally {
    input.delete();
  }
}

// Median per-face analyser time (tensor in, run, every output read back) over `runs` runs after `warmup`.
async function benchmark(runs = 20, warmup = 3, crop = lastCrop) {
  if (!crop) throw new Error("no face analysed yet");
  for (let i = 0; i < warmup; i++) await runAnalyzer(crop);
  const samples = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await runAnalyzer(crop);
    samples.push(performance.now() - t0);
  }
  const s = samples.slice().sort((a, b) => a - b);
  const median = s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
  return { median_ms: median, runs, warmup, samples_ms: samples };
}

async function analyze(file) {
  const warnings = [];
  progress(`Decoding ${file.name}…`);
  const t0 = performance.now();
  const dec = await decode(file);
  if (dec.error) return { type: "error", kind: "undecodable", message: dec.error };
  const { img } = dec;
  if (img.width !== dec.originalWidth || img.height !== dec.originalHeight) {
    warnings.push(`The photo is ${dec.originalWidth}×${dec.originalHeight}; it was downscaled to `
      + `${img.width}×${img.height} in the browser before detection (faces are found at most `
      + `${MAX_DETECT_SIDE} px wide anyway).`);
  }
  const t1 = performance.now();
  progress("Finding the face (MTCNN)…");
  const { faces, detectWidth, detectHeight } = await detector.detectFaces(img);
  const t2 = performance.now();
  const face = pickLargest(faces);
  let aligned;
  if (face) {
    aligned = alignFace(img, face.landmarks, inputSize);
  } else {
    aligned = centreCrop(img, inputSize);
    warnings.push("No face found (MTCNN score ≥ 0.9): the analyser ran on a centred crop instead, so its "
      + "results do not describe a face.");
  }
  const t3 = performance.now();
  lastCrop = aligned.crop;
  const outputs = await runAnalyzer(aligned.crop);
  const t4 = performance.now();
  progress("Measuring the analyser's latency…");
  const lat = await benchmark(30, 3, aligned.crop);
  return {
    type: "result", warnings, outputs, latency: lat, preview: dec.preview,
    image: { original_width: dec.originalWidth, original_height: dec.originalHeight, width: img.width,
      height: img.height, detect_width: detectWidth, detect_height: detectHeight },
    detection: { used: face ? "mtcnn" : "centre_crop", faces, chosen: face ? faces.indexOf(face) : null },
    crop: { size: inputSize, rgb: aligned.crop.data, matrix: aligned.matrix },
    timing_ms: { decode: t1 - t0, detect: t2 - t1, align: t3 - t2, first_run: t4 - t3 },
    detector_stats: detector.lastStats,
  };
}

self.onmessage = async (e) => {
  const msg = e.data;
  try {
    if (msg.type === "init") post({ type: "ready", ...(await init()) });
    else if (msg.type === "analyze") {
      const res = await analyze(msg.file);
      post(res, res.preview ? [res.preview] : []);
    } else if (msg.type === "benchmark") post({ type: "bench", id: msg.id, result: await benchmark(msg.runs, msg.warmup) });
  } catch (err) {
    post({ type: "error", kind: msg.type === "init" ? "load" : "internal", id: msg.id, message: err.message });
  }
};
post({ type: "loaded" });
