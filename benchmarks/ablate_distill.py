"""Ablation of the distillation levers on a finished run (teachers, cache and fusion done).

Trains each student variant into `<run_dir>/ablation/<variant>/` with the run's own distillation budget
(same steps, batch, schedule), extracts its features on the run's eval sets and probes them exactly as
the pipeline's evaluate stage does (same tasks, seeds, probe config), next to the run's baselines (every
single teacher, the concatenation, the AE code; their features are shared with the pipeline's cache).
Prints and saves `<run_dir>/ablation/ablation.json` and `ablation.md`. Resumable: finished students and
probed variants are skipped.

    .venv/bin/python -m benchmarks.ablate_distill --run_dir=runs/ablation_demo \
        --variants=l2,teacher_space,noisy_l2,heads_cos_sl1,noisy_heads_cos_sl1 --views=embedding,ladder
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

from face_transfer.core.fileio import write_json

# name -> DistillConfig overrides (on top of the run's own distill config)
VARIANTS = {
    "preset": {},  # the run's own distillation (with --set / --student_set: one lever on top of it)
    "l2": dict(loss="l2", noise=0.0, heads=False, code_weight=0.0),  # the paper's recipe
    "cosine": dict(loss="cosine", noise=0.0, heads=False, code_weight=0.0),
    "teacher_space": dict(loss="teacher_space", noise=0.0, heads=False, code_weight=0.0),
    "cos_sl1": dict(loss="cos_sl1", noise=0.0, heads=False, code_weight=0.0),  # through the frozen decoder
    "noisy_l2": dict(loss="l2", noise=0.5, heads=False, code_weight=0.0),
    "noisy_teacher_space": dict(loss="teacher_space", noise=0.5, heads=False, code_weight=0.0),
    "heads_teacher_space": dict(loss="teacher_space", noise=0.0, heads=True, code_weight=0.0),
    "heads_cos_sl1": dict(loss="cos_sl1", noise=0.0, heads=True, code_weight=0.0),
    "heads_cos_sl1_code": dict(loss="cos_sl1", noise=0.0, heads=True, code_weight=1.0),
    "noisy_heads_cos_sl1": dict(loss="cos_sl1", noise=0.5, heads=True, code_weight=0.0),
    "noisy_heads_cos_sl1_code": dict(loss="cos_sl1", noise=0.5, heads=True, code_weight=1.0),
    # heads reading the whole ladder (the probed view), the code kept on the AE code
    "ladder_heads_teacher_space": dict(loss="teacher_space", noise=0.0, heads=True, heads_view="ladder",
                                       code_weight=1.0),
    "ladder_heads_cos_sl1": dict(loss="cos_sl1", noise=0.0, heads=True, heads_view="ladder", code_weight=1.0),
    # the ladder holds linearly what the code reconstructs badly: decoder(code) + linear(ladder)
    "teacher_space_ladder_residual": dict(loss="teacher_space", noise=0.0, heads=False, code_weight=0.0,
                                          ladder_residual=True),
    # issue 24's levers, each on top of the preset's own distillation (compare with "preset", same seeds)
    "balanced_angle": dict(loss="balanced_angle"),  # C-RADIOv4's angle per teacher block, no squared error
    "eupe_proxy": dict(proxy_width=3.4),  # EUPE: a ~10x-parameter proxy (2.38 M vs 0.24 M) from the fusion, then the student from it
    "teacher_space_relational": dict(loss="teacher_space", noise=0.0, heads=False, code_weight=0.0,
                                     relational_weight=1.0),
}
DEFAULT_VARIANTS = "l2,teacher_space,noisy_l2,heads_cos_sl1,noisy_heads_cos_sl1"


def _json(path, default=None):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return default


def _write(path, obj):
    write_json(path, obj)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run_dir", required=True)
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma list of {sorted(VARIANTS)}")
    ap.add_argument("--steps", type=int, default=None, help="override the run's distill steps")
    ap.add_argument("--set", default="", help="DistillConfig overrides applied to every variant, e.g. "
                    "'learning_rate=0.01,batch_size=32'; the variant is then named '<variant>[<overrides>]'")
    ap.add_argument("--student_set", default="", help="StudentConfig overrides applied to every variant, e.g. "
                    "'head_channels=384' (a wider last block); the variant's name gets '{<overrides>}'")
    ap.add_argument("--no_baselines", action="store_true")
    ap.add_argument("--views", default="embedding", help="comma list of student views to probe for every variant "
                    "(student.config.FEATURE_VIEWS: embedding = the code, ladder = + pooled stage outputs); a view "
                    "other than embedding is reported as '<variant>+<view>'")
    args = ap.parse_args(argv)

    from face_transfer.evaluation.probes import evaluate_representation, group_means
    from face_transfer.fusion.autoencoder import Fusion
    from face_transfer.stages import inputs
    from face_transfer.stages.features import features_cached
    from face_transfer.stages.student import fused_teacher_builders
    from face_transfer.student.config import FEATURE_VIEWS
    from face_transfer.student.distill import distill_student
    from face_transfer.student.model import feature_model
    from face_transfer.student.training import load_student

    views = [v.strip() for v in args.views.split(",") if v.strip()]
    if not views or any(v not in FEATURE_VIEWS for v in views):
        raise SystemExit(f"--views={args.views!r}: expected a comma list of {FEATURE_VIEWS}")

    cfg, run, out_root, results_path, saved = open_finished_run(args.run_dir, "ablation")
    images, labels = inputs.load_eval_data(run)
    tasks = inputs.run_tasks(run)
    sets = inputs.eval_set_names(run)

    def probe(name, feats):
        t0 = time.time()
        res = evaluate_representation(feats, labels, tasks, cfg.probe)
        g = group_means(res, tasks)
        row = {"mean_novel": g["mean_novel"], "std_novel": g["std_novel"], "mean_source": g["mean_source"],
               "std_source": g["std_source"], "scores_novel": g["scores_novel"],
               "per_task": {t: r["score_mean"] for t, r in res.items()}, "probe_seconds": round(time.time() - t0, 1)}
        print(f"[ablation] {name}: novel {row['mean_novel']:.1f}±{row['std_novel']:.1f}  "
              f"source {row['mean_source']:.1f}  ({row['probe_seconds']:.0f} s probing)", flush=True)
        return row

    if not args.no_baselines:
        fusion, per_teacher, concat = teacher_features(run, images)
        d = fusion.code_dim
        teachers = inputs.load_teachers(run)
        base = {**per_teacher, "concat": concat,
                "ae": features_cached(run, f"ae_d{d}", lambda s: fusion.encoder.predict(concat[s], verbose=0))}
        for name, feats in base.items():
            if name not in saved["baselines"]:
                saved["baselines"][name] = probe(name, feats)
                _write(results_path, saved)
        names = [t.name for t in teachers]
        best = max(names, key=lambda n: saved["baselines"][n]["mean_novel"])
        saved["best_teacher"] = best

    extra = parse_overrides(args.set, cfg.distill)
    student_extra = parse_overrides(args.student_set, cfg.student)
    tag = (f"[{args.set.replace(' ', '')}]" if extra else "") + \
        (f"{{{args.student_set.replace(' ', '')}}}" if student_extra else "")
    dims = Fusion.load(run.paths.fusion_dir).standardizer.dims
    code_fn, concat_fn, dec_fn = fused_teacher_builders(run)
    src = inputs.image_source(run, "distill")
    scfg = dataclasses.replace(cfg.student, **student_extra, embedding_dim=cfg.fusion.code_dim)
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
        names = [variant + tag if v == "embedding" else f"{variant}{tag}+{v}" for v in views]
        if all(n in saved["variants"] for n in names):
            continue
        dcfg = dataclasses.replace(cfg.distill, **{**VARIANTS[variant], **extra,
                                                   **({"steps": args.steps} if args.steps else {})})
        out = os.path.join(out_root, variant + tag)
        print(f"\n[ablation] {variant}{tag}: {({**VARIANTS[variant], **extra})} ({dcfg.steps} steps)", file=sys.stderr, flush=True)
        t0 = time.time()
        rec = distill_student(scfg, dcfg, src, code_fn, out, decoder_fn=dec_fn, dims=dims,
                              target_concat_fn=concat_fn)
        wall = time.time() - t0
        model = load_student(out)
        for view, name in zip(views, names):
            if name in saved["variants"]:
                continue
            fmodel = feature_model(model, view)
            feats = {}
            for s in sets:
                path = os.path.join(out, "features" if view == "embedding" else f"features_{view}", f"{s}.npy")
                if not os.path.exists(path):
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    np.save(path, np.asarray(fmodel.predict(images[s], batch_size=256, verbose=0)["features"]))
                feats[s] = np.load(path)
            row = probe(name, feats)
            row.update({"overrides": {**VARIANTS[variant], **extra}, "student_overrides": student_extra, "view": view, "steps": dcfg.steps,
                        "train_seconds": rec.get("train_seconds_this_run", round(wall, 1)),
                        "final_loss": rec.get("final_loss"), "params": rec["params"],
                        "teacher_heads_params": rec.get("teacher_heads_params"),
                        "ladder_residual_params": rec.get("ladder_residual_params")})
            saved["variants"][name] = row
            _write(results_path, saved)

    write_table(out_root, table(saved))
    return saved


def open_finished_run(run_dir: str, subdir: str):
    """(cfg, run, out_root, results_path, saved results) of an ablation writing under <run_dir>/<subdir>/; the run
    itself is only read (its config is never rewritten)."""
    from face_transfer.configs import ExperimentConfig
    from face_transfer.core.runpaths import RunPaths
    from face_transfer.stages.rundir import Run
    cfg = ExperimentConfig.from_file(RunPaths(run_dir).config_json)
    run = Run(run_dir, cfg)
    out_root = os.path.join(run.dir, subdir)  # the ablation's own folder, not a pipeline path
    os.makedirs(out_root, exist_ok=True)
    results_path = os.path.join(out_root, "ablation.json")
    return cfg, run, out_root, results_path, _json(results_path, {"variants": {}, "baselines": {}})


def teacher_features(run, images: dict):
    """(the run's fusion, {teacher: {eval_set: features}}, {eval_set: standardised concatenation}); the teachers'
    eval-set features are shared with the pipeline's cache (features/teacher__*)."""
    from face_transfer.fusion.autoencoder import Fusion
    from face_transfer.stages import inputs
    from face_transfer.stages.features import features_cached
    fusion = Fusion.load(run.paths.fusion_dir)
    per_teacher = {t.name: features_cached(run, f"teacher__{t.name}", lambda s, t=t: t.embed(images[s]))
                   for t in inputs.load_teachers(run)}
    concat = {s: fusion.standardizer.concat({k: per_teacher[k][s] for k in fusion.standardizer.teachers})
              for s in images}
    return fusion, per_teacher, concat


def parse_overrides(text: str, base) -> dict:
    """'k=v,k2=v2' -> overrides of the dataclass `base` (DistillConfig, StudentConfig), each value cast to the
    type of the field's current value (an int for a field that is None)."""
    out = {}
    fields = {f.name for f in dataclasses.fields(base)}
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set {item!r}: expected key=value with key one of {sorted(fields)}")
        current = getattr(base, key)
        try:
            kind = int if current is None else type(current)
            out[key] = (value.lower() in ("1", "true", "yes")) if isinstance(current, bool) else kind(value)
        except ValueError:
            raise SystemExit(f"--set {item!r}: {value!r} is not a {type(current).__name__}")
    return out


def table(saved: dict, kind: str = "student", baselines=None) -> str:
    """The ablation's markdown table: every variant ('<kind>: <name>'), then the baselines (default: the
    concatenation, the AE code and the best single teacher)."""
    lines = ["| representation | mean novel ± std (seeds) | mean source | train s |", "|---|---|---|---|"]
    for name, r in saved["variants"].items():
        lines.append(f"| {kind}: {name} | {r['mean_novel']:.1f} ± {r['std_novel']:.1f} | {r['mean_source']:.1f} "
                     f"| {r['train_seconds']:.0f} |")
    base = saved.get("baselines", {})
    best = saved.get("best_teacher")
    for name in baselines if baselines is not None else ("concat", "ae") + ((best,) if best else ()):
        if name in base:
            r = base[name]
            label = f"best single teacher ({name})" if name == best else name
            lines.append(f"| {label} | {r['mean_novel']:.1f} ± {r['std_novel']:.1f} | {r['mean_source']:.1f} | |")
    return "\n".join(lines)


def write_table(out_root: str, text: str):
    print("\n" + text)
    with open(os.path.join(out_root, "ablation.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
