"""What the safety nets cost: hashing a run directory (every resume verifies it) and the peak memory of
inference on one 8000 x 8000 px photo (MTCNN detection on a bounded copy, alignment from the original).

  python -m benchmarks.bench_robustness --run_dir=runs/bench/demo
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_string("hash_run_dir", os.path.join(ROOT, "runs", "bench", "demo"), "A finished run directory to hash.")
flags.DEFINE_integer("photo_px", 8000, "Side of the large test photo.")


def hash_cost(run_dir: str) -> dict:
    from face_transfer.integrity import artifact_files, digest_artifacts
    files = artifact_files(run_dir, run_dir)
    size = sum(os.path.getsize(os.path.join(run_dir, f)) for f in files)
    t0 = time.perf_counter()
    digest_artifacts(run_dir, [run_dir])
    return {"runs.hash_seconds": round(time.perf_counter() - t0, 2), "runs.hash_mb": round(size / 2**20, 1),
            "runs.hash_files": len(files), "runs.hash_run_dir": os.path.relpath(run_dir, ROOT)}


def big_photo_rss(px: int) -> dict:
    """Peak RSS of `export.infer_tflite` on one px x px JPEG holding one face (skimage's astronaut, upscaled)."""
    import numpy as np
    from PIL import Image
    from skimage import data
    tmp = tempfile.mkdtemp(prefix="bench_big_")
    photo = os.path.join(tmp, f"astronaut_{px}.jpg")
    Image.fromarray(data.astronaut()).resize((px, px), Image.Resampling.BILINEAR).save(photo, quality=90)
    # A small image model is enough: the memory at stake is the photo's, not the network's.
    import keras
    import tensorflow as tf
    from face_transfer.student.config import StudentConfig
    from face_transfer.student.model import build_student
    keras.utils.set_random_seed(0)
    model = build_student(StudentConfig(width=0.35, embedding_dim=16))
    tfl = os.path.join(tmp, "student.tflite")
    open(tfl, "wb").write(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "export.infer_tflite", f"--model={tfl}", f"--images={photo}"]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    found = '"source"' in proc.stdout
    return {f"infer.peak_rss_mb_{px}px": round(rss_kb / 1024, 1), f"infer.seconds_{px}px": round(time.time() - t0, 1),
            f"infer.face_found_{px}px": found}


def main(argv):
    del argv
    from benchmarks.run import load_results, machine, save_results, write_markdown
    res = load_results()
    out = {"robustness.machine": machine()}
    if os.path.isdir(FLAGS.hash_run_dir):
        out.update(hash_cost(FLAGS.hash_run_dir))
    out.update(big_photo_rss(FLAGS.photo_px))
    print(out)
    res.update(out)
    save_results(res)
    write_markdown(res)
    return 0


if __name__ == "__main__":
    app.run(main)
