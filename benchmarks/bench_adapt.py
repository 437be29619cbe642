"""Transfer as a product, measured: a finished run's student adapted to a task it never saw.

  python -m benchmarks.bench_adapt --run_dir=runs/bench/demo

The task: `face_shape`, a SynthFaces factor outside the task registry (no teacher, no probe of the run saw it),
written as a labelled folder_csv dataset of --images faces (identity-disjoint 80/20 split). Each mode runs
face_transfer.adapt.run_adapt, as `face-transfer-adapt` does, timed back to back on this machine:
  linear      heads on the frozen student's features;
  finetune    heads, then --finetune_steps student updates with the LwF term; the tasks of the run's old heads
              are scored before and after with the run's probes (forgetting), and the old heads refitted;
  ceiling     the student's architecture trained from nothing on the same training images (--ceiling_steps).
Figures: adapt.seconds_linear, adapt.seconds_finetune, adapt.new_task_score.{linear,finetune,ceiling},
adapt.forgetting_max, adapt.machine (ISA, matmul GFLOP/s).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_string("run_dir", os.path.join(ROOT, "runs", "bench", "demo"), "A finished run (its export/ holds the student).")
flags.DEFINE_integer("images", 3000, "Labelled faces of the new task.")
flags.DEFINE_integer("finetune_steps", None, "Student updates in the fine-tune mode (default: AdaptConfig's).")
flags.DEFINE_integer("ceiling_steps", 1500, "Steps of the architecture trained from nothing (batch 32).")
flags.DEFINE_list("tradeoff_keep_weights", [], "Also fine-tune (without export) at each of these keep weights and "
                  "record the new-task score against forgetting (adapt.finetune_tradeoff).")
flags.DEFINE_string("work_dir", None, "Where the dataset and the adapted folders go (default: a temp dir).")


def _forgetting_spread(scores: dict, prefix: str) -> dict:
    """The old tasks' mean drop, and their largest gain: a refitted probe moves both ways when the features move,
    so the largest gain is the scale of change that is not forgetting."""
    before, after = scores.get("old_before") or {}, scores.get("old_after") or {}
    d = [before[k] - after[k] for k in before if k in after]
    if not d:
        return {}
    return {f"{prefix}.forgetting_mean": round(sum(d) / len(d), 2), f"{prefix}.largest_gain": round(-min(d), 2)}


def main(argv):
    del argv
    from benchmarks.run import load_results, machine, save_results
    from face_transfer import adapt
    from face_transfer.deploy.bundle import load_bundle
    from face_transfer.data import synth
    from face_transfer.data.synth_datasets import write_folder_csv
    from face_transfer.data.tasksets import parse_task_flag
    work = FLAGS.work_dir or tempfile.mkdtemp(prefix="bench_adapt_")
    bundle = load_bundle(FLAGS.run_dir)
    csv = os.path.join(work, "shape", "labels.csv")
    if not os.path.exists(csv):
        write_folder_csv(synth.SynthConfig(image_size=bundle.image_size), os.path.join(work, "shape"), FLAGS.images,
                         columns=("face_shape",), stream="bench_adapt")
    tasks = [parse_task_flag(f"folder_csv:{csv},name=shape,max_images={FLAGS.images}")]  # every image (default cap: 2,000)
    out = {}
    for mode in ("linear", "finetune"):
        dest = os.path.join(work, f"adapted_{mode}")
        shutil.rmtree(dest, ignore_errors=True)
        cfg = adapt.AdaptConfig(mode=mode, **({"finetune_steps": FLAGS.finetune_steps} if FLAGS.finetune_steps else {}))
        t0 = time.time()
        rec = adapt.run_adapt(FLAGS.run_dir, tasks, dest, cfg, progress=False)
        out[f"adapt.seconds_{mode}"] = round(time.time() - t0, 1)
        scores = rec["scores"]["new"]["face_shape"]
        out[f"adapt.new_task_score.{mode}"] = round(scores[mode], 2)
        if mode == "finetune":
            out["adapt.forgetting_max"] = rec["forgetting_max"]
            out.update(_forgetting_spread(rec["scores"], "adapt"))
            out["adapt.finetune_config"] = {k: rec["config"][k] for k in ("finetune_steps", "learning_rate",
                                                                         "keep_weight", "replay_faces", "tune_stages")}
            out["adapt.old_tasks_before"] = rec["scores"].get("old_before")
            out["adapt.old_tasks_after"] = rec["scores"].get("old_after")
            out["adapt.seconds_adapt_finetune_without_export"] = rec["seconds_adapt"]
    # the trade-off: the same fine-tune at other keep weights (adapt only: the export does not change it)
    rows = []
    for w in FLAGS.tradeoff_keep_weights:
        cfg = adapt.AdaptConfig(mode="finetune", keep_weight=float(w),
                                **({"finetune_steps": FLAGS.finetune_steps} if FLAGS.finetune_steps else {}))
        t0 = time.time()
        r = adapt.adapt(bundle, tasks, cfg, progress=False)
        rows.append({"keep_weight": float(w), "new_task_score": round(r.scores["new"]["face_shape"]["finetune"], 2),
                     "forgetting_max": round(r.forgetting_max, 2), "seconds": round(time.time() - t0, 1),
                     **{k.split(".", 1)[1]: v for k, v in _forgetting_spread(r.scores, "x").items()}})
        print(rows[-1], flush=True)
    if rows:
        out["adapt.finetune_tradeoff"] = rows
    # the ceiling: the same architecture from nothing, on the same training images, scored the same way
    if FLAGS.ceiling_steps > 0:  # 0: keep the ceiling already in results.json (it does not depend on the student)
        from face_transfer.student.model import infer_config
        new = adapt.read_new_tasks(tasks, bundle.image_size, adapt.AdaptConfig())
        t0 = time.time()
        out["adapt.new_task_score.ceiling"] = round(adapt.ceiling_score(new[0], infer_config(bundle.student),
                                                                        FLAGS.ceiling_steps), 2)
        out["adapt.seconds_ceiling"] = round(time.time() - t0, 1)
        out["adapt.ceiling_steps"] = FLAGS.ceiling_steps
        out["adapt.ceiling_date"] = time.strftime("%Y-%m-%d")
    import sys
    out["adapt.command"] = "python -m benchmarks.bench_adapt " + " ".join(
        a for a in sys.argv[1:] if not a.startswith("--work_dir"))
    out.update({"adapt.task": "face_shape (SynthFaces factor outside the registry, regression, 100*R^2)",
                "adapt.images": FLAGS.images, "adapt.finetune_steps": FLAGS.finetune_steps or adapt.AdaptConfig().finetune_steps,
                "adapt.run_dir": os.path.relpath(FLAGS.run_dir, ROOT),
                "adapt.machine": machine(), "adapt.date": time.strftime("%Y-%m-%d"),
                "adapt.load_average": round(os.getloadavg()[0], 2)})
    print({k: v for k, v in out.items() if not k.startswith("adapt.old_tasks") and k != "adapt.machine"})
    res = load_results()
    res.update(out)
    save_results(res)
    from benchmarks.markdown import _adapt_section, replace_section
    replace_section(_adapt_section(res))  # BENCHMARKS.md's section, from the figures just saved
    return 0


if __name__ == "__main__":
    app.run(main)
