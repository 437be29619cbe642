"""The browser page that runs the int8 analyser on-device (LiteRT.js, WASM XNNPACK): assembles
`<run>/export/web/` from the page sources (web/src/), LiteRT.js's files (web/node_modules/, installed by
`make web`) and the MTCNN detector converted to TFLite (face_transfer.deploy.detector_tflite).

Owns build_web_page, static_batch_model, web_status, browser_status, make_server (the localhost server of
export/serve_web.py), drive_page (headless Chromium via web/tools/drive.mjs, for tests/test_web.py and
benchmarks/bench_web.py) and the folder layout below. Everything the page loads is in that folder: no CDN,
no network.

    web/index.html app.js worker.js mtcnn.js imageops.js style.css   the page (copied from web/src/);
                                                           worker.js does the work off the main thread
    web/config.json                                        what the page loads, limits, versions
    web/lib/litertjs/{core,wasm-utils}/index.js            LiteRT.js ES modules (core's import of wasm-utils
                                                           made relative: workers have no import maps)
    web/lib/litertjs/wasm/litert_wasm{,_compat}_internal.*  the single-threaded WASM runtime (with and
                                                           without relaxed SIMD; LiteRT.js picks one)
    web/models/analyzer_int8.tflite + .labels.json         the analyser (batch fixed to 1, see static_batch_model)
                                                           and its head names / classes (the sidecar JSON)
    web/models/mtcnn/                                      P-Net (several canvas sizes), R-Net, O-Net
"""
from __future__ import annotations

import json
import os
import shutil

from face_transfer.deploy.detector_tflite import convert_mtcnn
from face_transfer.deploy.metadata import carry_metadata

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WEB_DIR = os.path.join(REPO, "web")
SRC_DIR = os.path.join(WEB_DIR, "src")
PAGE_FILES = ("index.html", "app.js", "worker.js", "mtcnn.js", "imageops.js", "style.css")
WASM_FILES = ("litert_wasm_internal.js", "litert_wasm_internal.wasm",
              "litert_wasm_compat_internal.js", "litert_wasm_compat_internal.wasm")
MTCNN_CACHE = os.path.join(WEB_DIR, "build", "mtcnn")  # the converted detector (not committed)
MAX_FILE_BYTES = 25 * 1000 * 1000   # the page refuses larger files, with a message
MAX_WORK_SIDE = 4096                # larger photos are downscaled by the browser right after decoding
MAX_PIXELS = 150 * 1000 * 1000      # the page refuses larger photos (a 150-megapixel decode is ~600 MB)


class WebBuildUnavailable(RuntimeError):
    """LiteRT.js is not installed (web/node_modules missing): run `make web`."""


def _node_modules(node_modules: str | None) -> str:
    return node_modules or os.path.join(WEB_DIR, "node_modules")


def web_status(node_modules: str | None = None) -> tuple[bool, str]:
    """(can build, reason): whether LiteRT.js's files are where build_web_page looks for them."""
    nm = _node_modules(node_modules)
    core = os.path.join(nm, "@litertjs", "core")
    needed = [os.path.join(core, "dist", "index.js"), os.path.join(nm, "@litertjs", "wasm-utils", "dist", "index.js")]
    needed += [os.path.join(core, "wasm", f) for f in WASM_FILES]
    missing = [p for p in needed if not os.path.isfile(p)]
    if missing:
        where = os.path.relpath(missing[0], REPO) if missing[0].startswith(REPO + os.sep) else missing[0]
        return False, (f"LiteRT.js is not installed ({where} is missing); "
                       f"run `make web` (npm ci in web/) to build the browser page")
    return True, "ok"


def litert_version(node_modules: str | None = None) -> str:
    with open(os.path.join(_node_modules(node_modules), "@litertjs", "core", "package.json")) as f:
        return json.load(f)["version"]


def static_batch_model(path: str, batch: int = 1) -> bytes:
    """The .tflite file at `path` with every dynamic (-1) dimension of its tensors' shape signatures set to
    `batch`: LiteRT.js (2.5) refuses inputs for a [-1, ...] signature and cannot resize them. Weights, ops,
    quantisation and metadata are untouched (a flatbuffer round trip through TensorFlow's own
    flatbuffer_utils), so it computes exactly what the original does on one face."""
    import numpy as np
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(path)
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            sig = tensor.shapeSignature
            if sig is not None and len(sig) and (np.asarray(sig) < 0).any():
                tensor.shapeSignature = np.where(np.asarray(sig) < 0, batch, sig).astype(np.int32)
    data = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    return carry_metadata(path, data)  # re-serialising drops the packed label files: put them back


def build_web_page(export_dir: str, node_modules: str | None = None, analyzer: str = "analyzer_int8.tflite",
                   out_dir: str | None = None) -> dict:
    """Writes the page into <export_dir>/web/ (or out_dir) and returns its config (also web/config.json).

    Raises WebBuildUnavailable when LiteRT.js is not installed, FileNotFoundError when the analyser or its
    labels sidecar is missing. Re-running replaces the page files; the converted MTCNN files are reused."""
    ok, reason = web_status(node_modules)
    if not ok:
        raise WebBuildUnavailable(reason)
    nm = _node_modules(node_modules)
    analyzer_path = os.path.join(export_dir, analyzer)
    stem = os.path.splitext(analyzer)[0]
    labels_path = os.path.join(export_dir, f"{stem}.labels.json")
    if not os.path.isfile(labels_path):
        labels_path = os.path.join(export_dir, "analyzer_heads.json")
    for p in (analyzer_path, labels_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"build_web_page: {p} is missing (run the export stage first)")
    out = out_dir or os.path.join(export_dir, "web")
    os.makedirs(out, exist_ok=True)
    for name in PAGE_FILES:
        shutil.copyfile(os.path.join(SRC_DIR, name), os.path.join(out, name))
    lib = os.path.join(out, "lib", "litertjs")
    for pkg in ("core", "wasm-utils"):
        os.makedirs(os.path.join(lib, pkg), exist_ok=True)
        with open(os.path.join(nm, "@litertjs", pkg, "dist", "index.js")) as f:
            code = f.read()
        if pkg == "core":  # the page's worker cannot use an import map: resolve LiteRT.js's one bare import here
            bare = 'from "@litertjs/wasm-utils"'
            if bare not in code:
                raise WebBuildUnavailable(f"@litertjs/core {litert_version(node_modules)}: expected `{bare}` in "
                                          "dist/index.js (a LiteRT.js version this page was not built for)")
            code = code.replace(bare, 'from "../wasm-utils/index.js"')
        with open(os.path.join(lib, pkg, "index.js"), "w") as f:
            f.write(code)
    os.makedirs(os.path.join(lib, "wasm"), exist_ok=True)
    for name in WASM_FILES:
        dst = os.path.join(lib, "wasm", name)
        src = os.path.join(nm, "@litertjs", "core", "wasm", name)
        if not (os.path.exists(dst) and os.path.getsize(dst) == os.path.getsize(src)):
            shutil.copyfile(src, dst)
    models = os.path.join(out, "models")
    os.makedirs(models, exist_ok=True)
    with open(os.path.join(models, analyzer), "wb") as f:
        f.write(static_batch_model(analyzer_path))
    shutil.copyfile(labels_path, os.path.join(models, f"{stem}.labels.json"))
    convert_mtcnn(MTCNN_CACHE)  # converted once per checkout (~40 s), then copied
    shutil.copytree(MTCNN_CACHE, os.path.join(models, "mtcnn"), dirs_exist_ok=True)
    config = {
        "analyzer": f"models/{analyzer}", "analyzer_name": analyzer, "labels": f"models/{stem}.labels.json",
        "mtcnn_dir": "models/mtcnn/", "litert_wasm_dir": "lib/litertjs/wasm/",
        "litert_version": litert_version(node_modules), "max_file_bytes": MAX_FILE_BYTES,
        "max_work_side": MAX_WORK_SIDE, "max_pixels": MAX_PIXELS,
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    return {**config, "dir": out}


# MIME types the page needs; Python's mimetypes table depends on the host (/etc/mime.types), so state them.
MIME_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript",
              ".wasm": "application/wasm", ".json": "application/json", ".css": "text/css; charset=utf-8",
              ".tflite": "application/octet-stream", ".png": "image/png"}


def make_server(directory: str, port: int = 0, host: str = "127.0.0.1"):
    """A ThreadingHTTPServer serving `directory` on host:port (0 = a free port; read server.server_address),
    with the MIME types above and no caching. Call serve_forever() (e.g. in a thread) and shutdown()."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    if not os.path.isfile(os.path.join(directory, "index.html")):
        raise FileNotFoundError(f"{directory} has no index.html (build the page with build_web_page or `make web`)")

    class Handler(SimpleHTTPRequestHandler):
        extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}

        def end_headers(self):
            self.send_header("Cache-Control", "no-store")
            # cross-origin isolation: performance.now() then ticks in 5 us steps instead of 100 us
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            super().end_headers()

        def log_message(self, fmt, *args):  # quiet: the page fetches a few dozen files
            pass

    return ThreadingHTTPServer((host, port), functools.partial(Handler, directory=directory))


CHROMIUM = "/usr/bin/chromium"
DRIVER = os.path.join(WEB_DIR, "tools", "drive.mjs")


def browser_status(node_modules: str | None = None, chromium: str = CHROMIUM) -> tuple[bool, str]:
    """(can drive the page, reason): Chromium, node and playwright-core (web/node_modules) are all there."""
    nm = _node_modules(node_modules)
    if not os.path.isfile(chromium):
        return False, f"no Chromium at {chromium} (apt-get install -y chromium)"
    if not shutil.which("node"):
        return False, "no `node` on PATH (Node.js 18+ drives the browser)"
    if not os.path.isfile(os.path.join(nm, "playwright-core", "package.json")):
        return False, f"playwright-core is not installed in {nm} (run `make web`)"
    return web_status(node_modules)


def drive_page(web_dir: str, files, screenshot: str | None = None, screenshot_after: int = 0,
               bench_runs: int = 0, bench_after: int = 0, timeout_s: float = 180.0,
               chromium: str = CHROMIUM) -> dict:
    """Serves web_dir on a free localhost port, opens it in headless Chromium (web/tools/drive.mjs), feeds it
    `files` one after the other and returns {"ready": ..., "runs": [the page's results JSON per file],
    "requests": [every URL the page fetched], "console": [...], "bench": ...}.

    bench_runs > 0 also calls the page's benchmark (median per-face analyser latency) after file
    `bench_after`; screenshot saves a full-page PNG after file `screenshot_after`."""
    import subprocess
    import threading

    ok, reason = browser_status(chromium=chromium)
    if not ok:
        raise WebBuildUnavailable(reason)
    server = make_server(web_dir)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        args = {"url": f"http://{host}:{port}/", "files": [os.path.abspath(f) for f in files],
                "screenshot": os.path.abspath(screenshot) if screenshot else None,
                "screenshot_after": screenshot_after, "bench_runs": bench_runs, "bench_after": bench_after,
                "timeout_ms": int(timeout_s * 1000), "chromium": chromium}
        proc = subprocess.run(["node", DRIVER, json.dumps(args)], capture_output=True, text=True, cwd=WEB_DIR,
                              timeout=timeout_s * (len(files) + 2))
        if proc.returncode != 0:
            raise RuntimeError(f"the browser driver failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        return json.loads(proc.stdout)
    finally:
        server.shutdown()
        server.server_close()
