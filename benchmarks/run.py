"""The benchmark: synthetic-face throughput, then the pipeline presets from nothing, timed.

  python -m benchmarks.run                      # synth + demo + paper (make bench)
  python -m benchmarks.run --presets=demo       # a subset
  python -m benchmarks.run --only_synth

Writes benchmarks/results.json (stable keys, merged with what is there) and BENCHMARKS.md.
Each preset runs in a fresh directory under runs/bench/ so its wall time is from nothing.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time

from absl import app, flags

from face_transfer.core.fileio import write_text
from face_transfer.core.runpaths import RunPaths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results.json")
FLAGS = flags.FLAGS
flags.DEFINE_list("presets", ["demo", "paper"], "Pipeline presets to run from nothing and time.")
flags.DEFINE_boolean("only_synth", False, "Only the synthetic-face throughput benchmark.")
flags.DEFINE_string("bench_dir", os.path.join(ROOT, "runs", "bench"), "Where the timed runs go.")
flags.DEFINE_boolean("keep", True, "Keep earlier bench run dirs (moved aside with a timestamp).")
# Where `make zoo-paper` puts the paper preset's expert teachers (the Makefile's ZOO_PAPER_DIR).
PAPER_ZOO_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "face-transfer", "zoo-paper")
flags.DEFINE_string("paper_teachers", None, "A zoo folder of given paper teachers (`make zoo-paper`): the paper "
                    "preset uses them instead of training its own, so pipeline.paper_wall_s counts from given teachers "
                    "(the paper's setting) and their build time is teachers.build_seconds. Default: "
                    f"{PAPER_ZOO_CACHE} when `make zoo-paper` has built it; an empty value (--paper_teachers=) makes "
                    "the preset train its own 600-step teachers.")
flags.DEFINE_boolean("reuse_runs", False, "Resume the existing bench run dirs instead of starting from nothing "
                     "(e.g. after deleting a stage's outputs to recompute it); wall times already recorded are kept.")


def machine() -> dict:
    """Where the figures were measured: CPU, ISA flags and single-thread matmul GFLOP/s (speeds compare only
    between machines with the same ISA; see BENCHMARKS.md)."""
    from face_transfer.machine import describe
    info = {"python": platform.python_version(), **describe()}
    try:
        with open("/proc/meminfo") as f:
            info["mem_gb"] = round(int(f.readline().split()[1]) / 1e6, 1)
    except OSError:
        pass
    return info


def load_results() -> dict:
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            return json.load(f)
    return {}


def save_results(res: dict):
    write_text(RESULTS, json.dumps(res, indent=1, sort_keys=True))


def teacher_build(zoo_dir: str | None) -> dict:
    """teachers.build_seconds (the given teachers' training time, from their zoo manifest: it is not in the
    pipeline's wall time) and teachers.given (where they came from); {} when the run trained its own."""
    if not zoo_dir:
        return {"teachers.given": None}
    from face_transfer.core.fileio import read_json
    from face_transfer.teachers.train import PRETRAINED_MANIFEST
    teachers = read_json(os.path.join(zoo_dir, PRETRAINED_MANIFEST))["teachers"]
    return {"teachers.build_seconds": round(sum(t["record"].get("train_seconds_total",
                                                               t["record"].get("train_seconds_this_run", 0.0))
                                                for t in teachers.values()), 1),
            "teachers.build_steps": {n: t["record"].get("steps_total", t["record"].get("steps"))
                                     for n, t in teachers.items()},
            "teachers.given": zoo_dir}


def paper_teachers() -> str | None:
    """The given paper teachers: --paper_teachers, else the `make zoo-paper` cache when it is built."""
    from face_transfer.teachers.train import PRETRAINED_MANIFEST
    if FLAGS.paper_teachers is not None:
        return FLAGS.paper_teachers or None
    if os.path.exists(os.path.join(PAPER_ZOO_CACHE, PRETRAINED_MANIFEST)):
        return PAPER_ZOO_CACHE
    print(f"[bench] no expert paper teachers in {PAPER_ZOO_CACHE} (`make zoo-paper` builds them, about 75 minutes "
          "on 2 cores): the paper preset trains its own 600-step teachers", flush=True)
    return None


def run_preset(preset: str) -> tuple[dict, float, str]:
    run_dir = os.path.join(FLAGS.bench_dir, preset)
    if os.path.exists(run_dir) and not FLAGS.reuse_runs:
        if FLAGS.keep:
            os.replace(run_dir, f"{run_dir}.{datetime.datetime.now():%Y%m%d-%H%M%S}")
        else:
            shutil.rmtree(run_dir)
    cmd = [sys.executable, "-m", "trainers.pipeline", f"--preset={preset}", f"--run_dir={run_dir}"]
    if preset == "paper" and paper_teachers():
        cmd.append(f"--teacher_pretrained={paper_teachers()}")
    print(f"[bench] {' '.join(cmd)}", flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.time() - t0
    with open(RunPaths(run_dir).headline_json) as f:
        return json.load(f), wall, run_dir


def main(argv):
    del argv
    from benchmarks.bench_synth import bench_synth
    from face_transfer.data.tasks import TASKS, novel_tasks
    res = load_results()
    res["machine"] = machine()
    res["date"] = datetime.date.today().isoformat()
    res.update(bench_synth())
    res["tasks.count"] = len(TASKS)
    res["tasks.novel_count"] = len(novel_tasks())
    save_results(res)
    print(f"[bench] synth.faces_per_s_per_core = {res['synth.faces_per_s_per_core']:.0f}", flush=True)
    if not FLAGS.only_synth:
        for preset in FLAGS.presets:
            head, wall, run_dir = run_preset(preset)
            if not FLAGS.reuse_runs:
                res[f"pipeline.{preset}_wall_s"] = round(wall, 1)
                # a run from nothing: an earlier run's hand-written note and resumed stages no longer apply
                for stale in ("note", "reused_stages"):
                    res.pop(f"presets.{preset}.{stale}", None)
            res.setdefault("runs", {})[preset] = os.path.relpath(run_dir, ROOT)
            # The paper preset's figures are the headline keys; other presets keep a prefixed copy.
            if preset == "paper":
                res.update(head)
                res.update(teacher_build(paper_teachers()))
            res[f"presets.{preset}"] = head
            res[f"presets.{preset}.date"] = datetime.date.today().isoformat()
            res[f"presets.{preset}.machine"] = res["machine"]
            # other jobs on the machine make wall times incomparable: the 1-minute load average at the end
            res[f"presets.{preset}.load_average"] = round(os.getloadavg()[0], 2)
            times = RunPaths(run_dir).stage_times_json
            if os.path.exists(times):
                with open(times) as f:
                    res[f"presets.{preset}.stage_seconds"] = json.load(f)
            save_results(res)
    write_markdown(res)
    return 0


def write_markdown(res: dict):
    from benchmarks.markdown import benchmarks_markdown, keep_other_sections, update_readme
    path = os.path.join(ROOT, "BENCHMARKS.md")
    old = open(path).read() if os.path.exists(path) else ""
    # a preset whose run directory is gone (another checkout) keeps its section: its per-task tables live there
    missing = tuple(f"## Preset `{p}` (run dir `{d}`)" for p, d in res.get("runs", {}).items()
                    if isinstance(d, str) and not os.path.isdir(os.path.join(ROOT, d)))
    write_text(path, keep_other_sections(benchmarks_markdown(res), old, missing))
    update_readme(res)


if __name__ == "__main__":
    app.run(main)
