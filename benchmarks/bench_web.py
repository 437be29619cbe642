"""Per-face latency of the int8 analyser in the browser page (LiteRT.js, WASM XNNPACK, 1 thread, headless
Chromium), next to Python LiteRT (ai-edge-litert, 1 thread) on the same aligned crop.

  python -m benchmarks.bench_web [--run_dir=runs/bench/demo] [--runs=200]

Builds <run_dir>/export/web/ when it is missing (needs `make web`), loads it from a localhost server, feeds it
skimage's astronaut photo, then calls the page's own benchmark (window.faceTransfer.benchmark: input tensor,
run, every output read back; median over --runs after 5 warm-up runs). Saves <run_dir>/export/web/screenshot.png,
merges `latency.browser_int8_ms_per_face` (and `web.*`) into benchmarks/results.json and rewrites BENCHMARKS.md.
"""
from __future__ import annotations

import base64
import datetime
import os
import subprocess
import tempfile

import numpy as np
from absl import app, flags

from face_transfer.core.runpaths import RunPaths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_string("run_dir", os.path.join(ROOT, "runs", "bench", "demo"), "A run directory with export/.")
flags.DEFINE_integer("runs", 200, "Timed analyser runs (median reported).")
flags.DEFINE_boolean("rebuild", False, "Rebuild export/web/ even when it exists.")
flags.DEFINE_string("run_label", None, "How BENCHMARKS.md names the run (default: --run_dir relative to the repo).")


def measure_browser_latency(run_dir: str, runs: int = 200, screenshot: str | None = None) -> dict:
    """{"browser_ms", "python_ms", "samples_ms", ...}: median per-face analyser latency in the page and, on the
    same crop with the same protocol, in Python LiteRT (1 thread)."""
    from PIL import Image
    from skimage import data as skdata

    from face_transfer.deploy import infer, web
    from face_transfer.core.interpreter import load_interpreter

    export_dir = RunPaths(run_dir).export_dir
    web_dir = os.path.join(export_dir, "web")
    if FLAGS.rebuild or not os.path.isfile(os.path.join(web_dir, "index.html")):
        web.build_web_page(export_dir)
    with tempfile.TemporaryDirectory() as tmp:
        photo = os.path.join(tmp, "astronaut.png")
        Image.fromarray(skdata.astronaut()).save(photo)
        res = web.drive_page(web_dir, [photo], screenshot=screenshot, bench_runs=runs)
    run = res["runs"][0]
    if run["state"] != "done":
        raise RuntimeError(f"the page failed on the astronaut photo: {run.get('message')}")
    size = run["crop"]["size"]
    crop = np.frombuffer(base64.b64decode(run["crop"]["rgb_b64"]), np.uint8).reshape(1, size, size, 3)
    it = load_interpreter(os.path.join(export_dir, "analyzer_int8.tflite"), num_threads=1)
    python_ms = infer.benchmark_latency(lambda x: infer.run_tflite(it, x), crop, warmup=5, runs=runs)
    chromium = subprocess.run([web.CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
    return {"browser_ms": res["bench"]["median_ms"], "samples_ms": res["bench"]["samples_ms"], "runs": runs,
            "python_ms": python_ms, "detect_ms": run["timing_ms"]["detect"], "load_ms": res["load_ms"],
            "litert_js": res["ready"]["litert_version"], "chromium": chromium, "input_size": size}


def update_benchmarks_md(res: dict, path: str = os.path.join(ROOT, "BENCHMARKS.md")) -> None:
    """Replaces (or inserts before the first preset section) only this benchmark's section of BENCHMARKS.md."""
    from benchmarks.markdown import _web_section, replace_section
    replace_section(_web_section(res), path)


def main(argv):
    from benchmarks.run import load_results, machine, save_results

    shot = os.path.join(RunPaths(FLAGS.run_dir).web_dir, "screenshot.png")
    m = measure_browser_latency(FLAGS.run_dir, FLAGS.runs, screenshot=shot)
    res = load_results()
    res["latency.browser_int8_ms_per_face"] = round(m["browser_ms"], 4)
    res["web.python_int8_ms_per_face"] = round(m["python_ms"], 4)
    res["web.detect_ms_astronaut"] = round(m["detect_ms"], 1)
    res["web.protocol"] = (f"{m['chromium']} headless, LiteRT.js {m['litert_js']} WASM (XNNPACK), 1 thread; "
                           f"`{FLAGS.run_label or os.path.relpath(FLAGS.run_dir, ROOT)}/export/analyzer_int8.tflite` "
                           f"({m['input_size']}x{m['input_size']}) on the aligned astronaut crop; median of "
                           f"{m['runs']} runs after 5 warm-up runs (input tensor, run, all outputs read back)")
    res["web.machine"] = machine()
    res["web.date"] = datetime.date.today().isoformat()
    save_results(res)
    update_benchmarks_md(res)
    print(f"browser {m['browser_ms']:.3f} ms/face, Python LiteRT {m['python_ms']:.3f} ms/face "
          f"(MTCNN in the page: {m['detect_ms']:.0f} ms); screenshot {shot}")


if __name__ == "__main__":
    app.run(main)
