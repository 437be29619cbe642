"""Streaming from a user's face folder: peak RSS and images/s of the pipeline (face pre-pass, embedding cache,
fusion, distillation) on folders of 20k and 100k JPEG faces. Peak memory must not grow with the folder.

  python -m benchmarks.bench_folder [--sizes=20000,100000] [--distill_steps=300]

Each run is the real CLI in a subprocess under /usr/bin/time -v, with the same cache size and the same number
of distillation steps, so only the number of faces on disk differs.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

from absl import app, flags

from face_transfer.core.runpaths import RunPaths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["20000", "100000"], "Folder sizes (faces) to run.")
flags.DEFINE_integer("distill_steps", 300, "Distillation steps per run (the same for every size).")
flags.DEFINE_integer("cache_size", 4000, "Faces in the embedding cache (the same for every size).")
flags.DEFINE_string("folder_bench_dir", os.path.join(ROOT, "runs", "bench", "folder"), "Where folders and runs go.")
flags.DEFINE_list("teachers", ["fer_expression", "dlib_age"], "Teachers (built-in pretrained: no training).")


def write_folder(n: int) -> str:
    """n SynthFaces renders as 64x64 JPEGs in subfolders of 1000 (reused when already complete)."""
    from face_transfer.data import synth, synth_datasets
    folder = os.path.join(FLAGS.folder_bench_dir, f"faces_{n}")
    done = os.path.join(folder, ".complete")
    if os.path.exists(done):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.time()
    synth_datasets.write_face_folder(synth.SynthConfig(), folder, n, stream="bench_folder")
    open(done, "w").close()
    print(f"[bench_folder] wrote {n} JPEGs in {time.time() - t0:.0f} s", flush=True)
    return folder


def run_one(n: int) -> dict:
    folder = write_folder(n)
    run_dir = os.path.join(FLAGS.folder_bench_dir, f"run_{n}")
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "trainers.pipeline", "--preset=smoke",
           f"--run_dir={run_dir}", *[f"--teacher={t}" for t in FLAGS.teachers], f"--faces={folder}",
           f"--cache_size={FLAGS.cache_size}", f"--distill_steps={FLAGS.distill_steps}", "--batch_size=64",
           "--until=student"]
    print(f"[bench_folder] {' '.join(cmd)}", flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    times = json.load(open(RunPaths(run_dir).stage_times_json))
    student = json.load(open(RunPaths(run_dir).student_json))
    faces = json.load(open(RunPaths(run_dir).faces_manifest))
    from face_transfer.data.faces import FaceSet, measure_stream
    stream = measure_stream(FaceSet.open(RunPaths(run_dir).faces_dir), 64, 100)
    return {"faces": n, "peak_rss_mb": round(rss_kb / 1024, 1), "wall_s": round(wall, 1), "stage_seconds": times,
            "prepare_images_per_s": round(faces["report"]["kept"] / max(times["data"], 1e-9), 1),
            "distill_images_per_s": round(FLAGS.distill_steps * 64 / student["train_seconds_this_run"], 1),
            "stream_images_per_s": round(stream, 1), "kept": faces["report"]["kept"]}


def main(argv):
    del argv
    from benchmarks.run import load_results, machine, save_results, write_markdown
    os.makedirs(FLAGS.folder_bench_dir, exist_ok=True)
    res = load_results()
    runs = {}
    for size in [int(s) for s in FLAGS.sizes]:
        runs[size] = run_one(size)
        print(f"[bench_folder] {size}: {runs[size]}", flush=True)
    last = runs[max(runs)]
    res["data.machine"] = machine()
    res["data.folder_runs"] = {str(k): v for k, v in runs.items()}
    res["data.folder_images_per_s"] = last["distill_images_per_s"]
    res["data.folder_stream_images_per_s"] = last["stream_images_per_s"]
    res["data.folder_prepare_images_per_s"] = last["prepare_images_per_s"]
    for size, r in runs.items():
        res[f"data.peak_rss_mb_{size // 1000}k"] = r["peak_rss_mb"]
    if 20000 in runs and 100000 in runs:
        res["data.peak_rss_ratio_100k_over_20k"] = round(runs[100000]["peak_rss_mb"] / runs[20000]["peak_rss_mb"], 3)
    res["data.folder_protocol"] = (f"trainers.pipeline --preset=smoke --until=student, teachers {FLAGS.teachers}, "
                                   f"--cache_size={FLAGS.cache_size}, --distill_steps={FLAGS.distill_steps}, "
                                   "batch 64; peak RSS from /usr/bin/time -v of the whole run")
    save_results(res)
    write_markdown(res)
    return 0


if __name__ == "__main__":
    app.run(main)
