// The face-transfer analyser page: a photo -> MTCNN (TFLite) -> aligned crop -> int8 analyser (LiteRT.js, WASM
// XNNPACK, 1 thread) -> every head on screen. Nothing leaves the browser; every file comes from this folder.
// This is the UI; the work (decoding, detection, alignment, the analyser) runs in worker.js, so the page stays
// responsive whatever the photo.
import { applyTransform, invertTransform, pilResize } from "./imageops.js";

const $ = (id) => document.getElementById(id);
let config, labels, inputSize, worker, busy = false;

// The JSON mirror of what the page shows (read by tests/test_web.py and benchmarks/bench_web.py).
const state = { state: "loading" };
function publish(patch) {
  Object.assign(state, patch);
  $("results").textContent = JSON.stringify(state);
}

function setStatus(text, kind = "info") {
  const el = $("status");
  el.textContent = text;
  el.className = `status ${kind}`;
}

function fail(kind, message, extra = {}) {
  setStatus(message, "error");
  publish({ state: "error", error: kind, message, ...extra });
}

// One request to the worker at a time (the UI never sends another while busy): the next reply that is not
// progress answers it.
function ask(msg, transfer = []) {
  return new Promise((resolve) => {
    worker.onmessage = (e) => {
      if (e.data.type === "progress") setStatus(e.data.text);
      else resolve(e.data);
    };
    worker.postMessage(msg, transfer);
  });
}

async function init() {
  try {
    config = await (await fetch("config.json")).json();
    labels = await (await fetch(config.labels)).json();
    setStatus("Starting…");
    worker = new Worker("worker.js", { type: "module" });
    worker.onerror = (e) => fail("load", `The page's worker failed: ${e.message || "could not start it"}`);
    await new Promise((resolve) => { worker.onmessage = (e) => { if (e.data.type === "loaded") resolve(); }; });
    const ready = await ask({ type: "init" });
    if (ready.type !== "ready") throw new Error(ready.message);
    inputSize = ready.inputSize;
    $("file").disabled = false;
    $("modelinfo").textContent = `${config.analyzer_name}: ${inputSize}×${inputSize} uint8 in, `
      + `${ready.outputs} outputs; LiteRT.js ${config.litert_version}, WASM XNNPACK, 1 thread`;
    setStatus("Ready: pick a photo with a face.", "ok");
    publish({ state: "ready", input_size: inputSize, litert_version: config.litert_version,
      max_file_bytes: config.max_file_bytes, max_pixels: config.max_pixels,
      trained_on: Object.fromEntries(Object.keys(labels).map((n) => [n, trainedOn(n)])) });
  } catch (e) {
    fail("load", `Could not load the page's models: ${e.message}`);
  }
}

// The size from the header alone: an <img> fires "load" before decoding the pixels. null: not an image.
async function imageSize(file) {
  const url = URL.createObjectURL(file);
  try {
    const im = new Image();
    await new Promise((resolve, reject) => { im.onload = resolve; im.onerror = reject; im.src = url; });
    return { width: im.naturalWidth, height: im.naturalHeight };
  } catch (e) {
    return null;
  } finally {
    URL.revokeObjectURL(url);
  }
}

// Median per-face analyser latency in the page (WASM XNNPACK, 1 thread) on the last crop; see worker.js.
async function benchmark(runs = 20, warmup = 3) {
  if (busy) throw new Error("the page is busy");
  busy = true;
  try {
    const res = await ask({ type: "benchmark", runs, warmup });
    if (res.type !== "bench") throw new Error(res.message);
    return res.result;
  } finally {
    busy = false;
  }
}

function b64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

async function handleFile(file) {
  if (busy) return;
  if (!inputSize) { // the models did not load: say so again, do nothing else
    fail("load", state.message || "The page's models are not loaded.", { file: file.name });
    return;
  }
  busy = true;
  $("file").disabled = true;
  $("warning").hidden = true;
  $("output").hidden = true;
  publish({ state: "busy", file: file.name, error: null, message: null, warnings: [], outputs: null, detection: null,
    image: null, crop: null, latency: null, timing_ms: null, detector_stats: null, synthetic_badges: null,
    trained_on_text: null, synthetic_note: null });
  try {
    if (file.size > config.max_file_bytes) {
      fail("too_large", `“${file.name}” is ${(file.size / 1e6).toFixed(1)} MB; this page takes photos up to `
        + `${(config.max_file_bytes / 1e6).toFixed(0)} MB.`);
      return;
    }
    setStatus(`Reading ${file.name}…`);
    const size = await imageSize(file);
    if (!size || !size.width || !size.height) {
      fail("undecodable", `The browser cannot decode “${file.name}” as an image.`);
      return;
    }
    if (size.width * size.height > config.max_pixels) {
      fail("too_many_pixels", `“${file.name}” is ${size.width}×${size.height} pixels; this page takes photos up `
        + `to ${(config.max_pixels / 1e6).toFixed(0)} megapixels.`);
      return;
    }
    const res = await ask({ type: "analyze", file });
    if (res.type !== "result") {
      fail(res.kind || "internal", res.kind === "undecodable" ? res.message : `Something went wrong: ${res.message}`);
      return;
    }
    const crop = { data: res.crop.rgb, width: res.crop.size, height: res.crop.size, channels: 3 };
    const faces = res.detection.faces;
    const face = res.detection.chosen === null ? null : faces[res.detection.chosen];
    render(res, faces, face, crop);
    setStatus(face ? `Done: ${faces.length} face(s) found; showing the largest.` : "Done, without a face.",
      face ? "ok" : "warn");
    publish({
      state: "done", file: file.name, warnings: res.warnings, image: res.image,
      detection: { used: res.detection.used, chosen: res.detection.chosen,
        faces: faces.map((f) => ({ box: f.box, score: f.score, landmarks: f.landmarks })) },
      crop: { size: res.crop.size, rgb_b64: b64(res.crop.rgb), matrix: res.crop.matrix },
      outputs: res.outputs,
      latency: { analyzer_ms_per_face: res.latency.median_ms, runs: res.latency.runs,
        samples_ms: res.latency.samples_ms, backend: "LiteRT.js wasm (XNNPACK), 1 thread" },
      timing_ms: res.timing_ms, detector_stats: res.detector_stats, ...shownTrainedOn(),
    });
  } catch (e) {
    fail("internal", `Something went wrong: ${e.message}`);
    console.error(e);
  } finally {
    busy = false;
    $("file").disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------- rendering

function fmt(v, d = 2) { return Number(v).toFixed(d); }

function esc(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// What a head was fitted on (labels[name].trained_on, written by the export stage and face-transfer-adapt):
// {dataset, path?, images, domain, synthetic}; null when the labels file does not say.
function trainedOn(name) { return (labels[name] && labels[name].trained_on) || null; }

function syntheticHeads(names) { return names.filter((n) => { const t = trainedOn(n); return t && t.synthetic; }); }

function trainedHtml(name) {
  const t = trainedOn(name);
  if (!t) return "";
  const what = `fitted on ${t.images ?? "?"} images of ${t.dataset ?? "?"}${t.synthetic ? "" : ` (${t.domain ?? "?"})`}`;
  const title = t.path ? ` title="${esc(t.path)}"` : "";
  return `<div class="trained"${title}>${esc(what)}</div>`;
}

function badgeHtml(name) {
  const t = trainedOn(name);
  return t && t.synthetic ? ' <span class="badge synthetic" title="fitted on synthetic faces only: its values on a '
    + 'real photo are not to be trusted; adapt it on your photos with face-transfer-adapt">synthetic faces only</span>' : "";
}

// The note above the heads when some were fitted on synthetic faces only.
function syntheticNote(names) {
  const synth = syntheticHeads(names);
  if (!synth.length) return "";
  const sets = [...new Set(synth.map((n) => trainedOn(n).dataset || "synthetic faces"))].join(", ");
  const all = synth.length === names.length;
  return `${all ? "Every head here was" : `${synth.length} of ${names.length} heads (${synth.join(", ")}) were`} `
    + `fitted on synthetic faces only (${sets}): on a real photo their values are not to be trusted. `
    + "Adapt them on a labelled set of your own photos with face-transfer-adapt.";
}

function bars(names, probs) {
  const best = probs.indexOf(Math.max(...probs));
  return names.map((n, i) => `<div class="bar${i === best ? " best" : ""}"><span class="name">${n}</span>`
    + `<span class="track"><span class="fill" style="width:${(100 * probs[i]).toFixed(1)}%"></span></span>`
    + `<span class="val">${(100 * probs[i]).toFixed(1)}%</span></div>`).join("");
}

const GROUPS = [
  ["Expression", ["expression"]],
  ["Age and gender", ["age", "gender"]],
  ["Head pose (degrees)", ["yaw", "pitch", "roll"]],
];

function headHtml(name, values) {
  const meta = labels[name] || { kind: "regression" };
  const title = `<h4>${esc(name)}${badgeHtml(name)}</h4>`;
  const data = `data-head="${esc(name)}"`;
  if (meta.kind === "classification") {
    const names = meta.classes.map((c) => (c === "0" ? "no" : c === "1" ? "yes" : c));
    return `<div class="head" ${data}>${title}${bars(names, values)}${trainedHtml(name)}</div>`;
  }
  if (meta.kind === "landmarks") {
    const pts = [];
    for (let i = 0; i < values.length; i += 2) pts.push(`(${fmt(values[i], 3)}, ${fmt(values[i + 1], 3)})`);
    return `<div class="head" ${data}>${title}<div class="small">x, y in crop units: ${pts.join(" ")}</div>`
      + `${trainedHtml(name)}</div>`;
  }
  return `<div class="head scalar" ${data}>${title}<span class="num">${values.length === 1 ? fmt(values[0]) : values.map((v) => fmt(v)).join(", ")}</span>`
    + `${trainedHtml(name)}</div>`;
}

function drawPhoto(preview, image, faces, face, matrix, landmarkOut) {
  const c = $("photo");
  c.width = preview.width;
  c.height = preview.height;
  const scale = preview.width / image.width; // photo pixels (as processed) -> preview pixels
  const ctx = c.getContext("2d");
  ctx.drawImage(preview, 0, 0);
  preview.close();
  ctx.lineWidth = 2;
  for (const f of faces) {
    ctx.strokeStyle = f === face ? "#2ecc71" : "#f1c40f";
    const [x1, y1, x2, y2] = f.box.map((v) => v * scale);
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.fillStyle = "#3498db";
    for (const [x, y] of f.landmarks) { ctx.beginPath(); ctx.arc(x * scale, y * scale, 3, 0, 2 * Math.PI); ctx.fill(); }
  }
  if (landmarkOut) { // the analyser's own landmarks, mapped from the crop back onto the photo
    const inv = invertTransform(matrix);
    const pts = [];
    for (let i = 0; i < landmarkOut.length; i += 2) pts.push([landmarkOut[i] * inputSize - 0.5, landmarkOut[i + 1] * inputSize - 0.5]);
    ctx.fillStyle = "#e74c3c";
    for (const [x, y] of applyTransform(inv, pts)) { ctx.beginPath(); ctx.arc(x * scale, y * scale, 3, 0, 2 * Math.PI); ctx.fill(); }
  }
}

function drawCrop(crop, landmarkOut) {
  const c = $("crop");
  const zoom = Math.max(1, Math.floor(256 / crop.width));
  c.width = crop.width * zoom;
  c.height = crop.height * zoom;
  const ctx = c.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  const big = pilResize(crop, crop.width * zoom, crop.height * zoom, "box");
  const rgba = new ImageData(c.width, c.height);
  for (let i = 0, j = 0; j < big.data.length; i += 4, j += 3) {
    rgba.data[i] = big.data[j]; rgba.data[i + 1] = big.data[j + 1]; rgba.data[i + 2] = big.data[j + 2]; rgba.data[i + 3] = 255;
  }
  ctx.putImageData(rgba, 0, 0);
  if (landmarkOut) {
    ctx.fillStyle = "#e74c3c";
    for (let i = 0; i < landmarkOut.length; i += 2) {
      ctx.beginPath();
      ctx.arc(landmarkOut[i] * c.width, landmarkOut[i + 1] * c.height, 4, 0, 2 * Math.PI);
      ctx.fill();
    }
  }
}

function render(res, faces, face, crop) {
  const { outputs, latency: lat, warnings } = res;
  const detectMs = res.timing_ms.detect;
  const lmName = Object.keys(labels).find((k) => labels[k].kind === "landmarks" && outputs[k]);
  const lm = lmName ? outputs[lmName] : null;
  drawPhoto(res.preview, res.image, faces, face, res.crop.matrix, lm);
  drawCrop(crop, lm);
  if (warnings.length) {
    $("warning").innerHTML = warnings.map((w) => `<p>⚠ ${w}</p>`).join("");
    $("warning").hidden = false;
  }
  $("latency").textContent = `${fmt(lat.median_ms, 2)} ms per face`;
  $("latencynote").textContent = `analyser only (input tensor, run, outputs read back): median of ${lat.runs} runs, `
    + `LiteRT.js WASM XNNPACK, 1 thread. Finding the face (MTCNN, float32): ${fmt(detectMs, 0)} ms.`;
  const shown = new Set();
  let html = "";
  for (const [title, names] of GROUPS) {
    const present = names.filter((n) => outputs[n]);
    if (!present.length) continue;
    present.forEach((n) => shown.add(n));
    html += `<section class="group"><h3>${title}</h3>${present.map((n) => headHtml(n, outputs[n])).join("")}</section>`;
  }
  if (lmName) {
    shown.add(lmName);
    html += `<section class="group"><h3>Landmarks</h3><p class="small">red dots on the photo and the crop</p>${headHtml(lmName, lm)}</section>`;
  }
  const rest = Object.keys(labels).filter((n) => !shown.has(n) && outputs[n]);
  if (rest.length) html += `<section class="group attrs"><h3>Attributes</h3>${rest.map((n) => headHtml(n, outputs[n])).join("")}</section>`;
  const extra = Object.keys(outputs).filter((n) => !labels[n]);
  if (extra.length) html += `<p class="small">Also computed: ${extra.map((n) => `${n} (${outputs[n].length} values)`).join(", ")}.</p>`;
  $("heads").innerHTML = html;
  const note = syntheticNote([...shown, ...rest]);
  $("trainednote").textContent = note ? `⚠ ${note}` : "";
  $("trainednote").hidden = !note;
  $("output").hidden = false;
}

// What the page shows about the heads' training data, read back from the page itself (for the tests).
function shownTrainedOn() {
  return {
    synthetic_badges: [...document.querySelectorAll("#heads .head")]
      .filter((el) => el.querySelector(".badge.synthetic")).map((el) => el.dataset.head),
    trained_on_text: Object.fromEntries([...document.querySelectorAll("#heads .head")]
      .map((el) => [el.dataset.head, el.querySelector(".trained")?.textContent ?? null])),
    synthetic_note: $("trainednote").hidden ? null : $("trainednote").textContent,
  };
}

$("file").addEventListener("change", (e) => { if (e.target.files.length) handleFile(e.target.files[0]); });
window.faceTransfer = { benchmark, state: () => state };
init();
