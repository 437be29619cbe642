"""Ablation of the fusion auto-encoder on a finished run (teachers and cache done).

Trains each FusionConfig variant on the run's own embedding cache into `<run_dir>/ablation_fusion/<variant>/`,
encodes the run's eval sets (the teachers' cached eval features, standardised as the run's fusion does) and
probes the codes exactly as the evaluate stage does (same tasks, seeds, probe config, in parallel), next to
the concatenation, the run's AE code and PCA at the same d. Resumable: trained fusions and probed variants are
skipped. Prints and saves `ablation_fusion/ablation.json` and `ablation.md`.

    .venv/bin/python -m benchmarks.ablate_fusion --run_dir=runs/bench/paper \
        --variants=base,relational --set=relational_weight=4
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

from benchmarks.ablate_distill import _write, open_finished_run, parse_overrides, table, teacher_features, write_table

# name -> FusionConfig overrides (on top of the run's own fusion config)
VARIANTS = {
    "base": {},  # the run's configuration, retrained (the training noise of one fusion)
    "plain": dict(relational_weight=0.0),  # reconstruction only (the paper's auto-encoder)
    "relational": dict(relational_weight=6.0),  # similarity preservation on the code
    "longer": dict(epochs=120, patience=12),
    "pca_init": dict(pca_init=True),  # starts at whitened PCA (linear map + zero-initialised MLP branch per side)
    "free": dict(pca_init=False),  # a free AE from a random start (the default before 2026-12-07)
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run_dir", required=True)
    ap.add_argument("--variants", default="base,relational", help=f"comma list of {sorted(VARIANTS)}")
    ap.add_argument("--set", default="", help="FusionConfig overrides applied to every variant, e.g. "
                    "'relational_weight=4,code_dim=32'; the variant is then named '<variant>[<overrides>]'")
    args = ap.parse_args(argv)

    from face_transfer.evaluation.probes import evaluate_all, group_means
    from face_transfer.fusion.autoencoder import fit_pca, train_fusion
    from face_transfer.stages import inputs
    from face_transfer.stages.features import features_cached
    from face_transfer.teachers.cache import load_embedding_cache

    cfg, run, out_root, results_path, saved = open_finished_run(args.run_dir, "ablation_fusion")
    images, labels = inputs.load_eval_data(run)
    tasks = inputs.run_tasks(run)
    sets = inputs.eval_set_names(run)
    _, cache = load_embedding_cache(run.paths.cache_dir)
    run_fusion, _, concat = teacher_features(run, images)
    std, d = run_fusion.standardizer, run_fusion.code_dim

    extra = parse_overrides(args.set, cfg.fusion)
    tag = f"[{args.set.replace(' ', '')}]" if extra else ""
    todo, meta = {}, {}
    if not saved["baselines"]:
        pca = fit_pca(std.concat(cache), d, cfg.seed)
        todo.update({"concat": concat,
                     "ae": features_cached(run, f"ae_d{d}", lambda s: run_fusion.encoder.predict(concat[s], verbose=0)),
                     f"pca_d{d}": features_cached(run, f"pca_d{d}", lambda s: pca(concat[s]))})
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
        name = variant + tag
        if name in saved["variants"]:
            continue
        fcfg = dataclasses.replace(cfg.fusion, **{**VARIANTS[variant], **extra})
        t0 = time.time()
        fus = train_fusion(cache, fcfg, os.path.join(out_root, name))
        if fus.standardizer.dims != std.dims:
            raise SystemExit(f"{name}: standardised dims {fus.standardizer.dims} differ from the run's {std.dims}")
        todo[name] = {s: fus.encoder.predict(concat[s], verbose=0) for s in sets}
        meta[name] = {"overrides": {**VARIANTS[variant], **extra}, "train_seconds": round(time.time() - t0, 1),
                      "epochs_run": fus.record["epochs_run"], "val_r2_per_teacher": fus.record["val_r2_per_teacher"]}
        print(f"[fusion ablation] {name}: trained in {meta[name]['train_seconds']:.0f} s, "
              f"{fus.record['epochs_run']} epochs, val R2 {meta[name]['val_r2_per_teacher']}", flush=True)
    if todo:
        t0 = time.time()
        results = evaluate_all(todo, labels, tasks, cfg.probe, progress=False)
        print(f"[fusion ablation] {len(todo)} representations probed in {time.time() - t0:.0f} s", flush=True)
        for name, res in results.items():
            g = group_means(res, tasks)
            row = {"mean_novel": g["mean_novel"], "std_novel": g["std_novel"], "mean_source": g["mean_source"],
                   "per_task": {t: r["score_mean"] for t, r in res.items()}, **meta.get(name, {})}
            saved["variants" if name in meta else "baselines"][name] = row
        _write(results_path, saved)
    write_table(out_root, table(saved, "AE", list(saved["baselines"])))
    return saved


if __name__ == "__main__":
    main()
