"""Stage `evaluate`: linear probes of every representation on every task of the run (SynthFaces tasks and
the user's dataset columns), the compression curve, tables and plots.
"""
from __future__ import annotations

import dataclasses
import os
import time

from face_transfer.core.fileio import read_json, write_json
from face_transfer.stages import inputs, register_stage
from face_transfer.stages.features import features_cached, predict, predict_student, teacher_reps
from face_transfer.stages.rundir import Run, header, summary
from face_transfer.stages.student import student_variants

NAME = "evaluate"
WORKERS = "chief"  # under multi-worker training only the chief runs it; the others wait for its record
DEPENDS_ON = ("data", "teachers", "cache", "fusion", "student")  # rebuilt upstream stages make this one stale


def compression_curve(run: Run, reps: dict, labels: dict) -> dict:
    """Mean novel-task score of AE / PCA / random projection codes vs code dim d, against concat."""
    from face_transfer.evaluation.probes import evaluate_all, group_means
    from face_transfer.fusion.autoencoder import Fusion, fit_pca, random_projection, train_fusion
    from face_transfer.teachers.cache import load_embedding_cache
    path = run.paths.compression_curve_json
    if os.path.exists(path):
        return read_json(path)
    header(f"compression curve: d in {list(run.cfg.compression_dims)} (AE vs PCA vs random projection)")
    tasks = inputs.novel_tasks(run) or inputs.run_tasks(run)
    _, cache = load_embedding_cache(run.paths.cache_dir)
    std = Fusion.load(run.paths.fusion_dir).standardizer
    cache_concat = std.concat(cache)
    concat = reps["concat"]
    probe = run.cfg.probe

    t0 = time.time()
    feats, dims = {"concat": concat}, []
    for d in run.cfg.compression_dims:
        if d >= cache_concat.shape[1]:
            continue
        fcfg = dataclasses.replace(run.cfg.fusion, code_dim=d)
        # at the run's own d the curve's AE is the run's fusion (its codes are the cached ae_d{d} features)
        fus = Fusion.load(run.paths.fusion_dir) if fcfg == run.cfg.fusion else \
            train_fusion(cache, fcfg, run.paths.fusion_curve_dir(d))
        pca = fit_pca(cache_concat, d, run.cfg.seed)
        rp = random_projection(cache_concat.shape[1], d, run.cfg.seed)
        for name, fn in (("ae", lambda z: fus.encoder.predict(z, verbose=0)), ("pca", pca), ("random_projection", rp)):
            feats[f"{name}_d{d}"] = features_cached(run, f"{name}_d{d}", lambda st, fn=fn: fn(concat[st]))
        dims.append(int(d))
    # every code of every d probed at once, in parallel (evaluate_all)
    scores = {k: group_means(r, tasks) for k, r in evaluate_all(feats, labels, tasks, probe, progress=False).items()}
    c, cs = scores["concat"]["mean_novel"], scores["concat"]["std_novel"]
    curve = {"d": dims, "ae": [], "pca": [], "random_projection": [], "ae_std": [], "pca_std": [],
             "random_projection_std": [], "concat": c, "concat_std": cs, "concat_dim": int(cache_concat.shape[1])}
    for d in dims:
        for name in ("ae", "pca", "random_projection"):
            curve[name].append(scores[f"{name}_d{d}"]["mean_novel"])
            curve[f"{name}_std"].append(scores[f"{name}_d{d}"]["std_novel"])
        summary(f"d={d}: AE {curve['ae'][-1]:.1f}  PCA {curve['pca'][-1]:.1f}  RP {curve['random_projection'][-1]:.1f}"
                f"  (concat {c:.1f})")
    summary(f"compression curve: {len(feats)} codes trained and probed in {time.time() - t0:.0f} s")
    write_json(path, curve)
    return curve


def compression_summary(curve: dict, keep: float = 0.99) -> dict:
    """Smallest d (largest ratio) whose AE code keeps `keep` of the concatenation's novel score."""
    best = None
    for d, a, p in zip(curve["d"], curve["ae"], curve["pca"]):
        if a >= keep * curve["concat"]:
            if best is None or d < best["d"]:
                best = {"d": d, "ratio": curve["concat_dim"] / d, "ae": a, "pca": p}
    return best or {"d": None, "ratio": None, "note": f"no tested d keeps {keep:.0%} of concat"}


def all_reps(run: Run, teachers, images) -> dict:
    """Every representation the config defines, as {rep: {eval_set: features}}."""
    from face_transfer.student.training import load_student
    reps = teacher_reps(run, teachers, images)
    for rep, v in student_variants(run).items():
        d = run.paths.student_dir(v)
        if os.path.exists(run.paths.student_record(v)):
            model = load_student(d)
            reps[rep] = features_cached(run, rep, lambda s, m=model: predict_student(run, m, images[s]))
            if rep == "student" and run.cfg.student_view != "embedding":
                # the distilled code alone, next to the wider view: what the paper's student is
                reps["student_code"] = features_cached(run, "student_code", lambda s, m=model: predict(m, images[s]))
    return reps


def rep_groups(run: Run, results: dict, tasks) -> dict:
    """Group means per representation, plus `best_teacher` (the best single teacher per group)."""
    from face_transfer.evaluation.probes import group_means
    groups = {rep: group_means(res, tasks) for rep, res in results.items()}
    names = inputs.teacher_names(run)
    for g in ("novel", "source", "all"):
        best = max(names, key=lambda n: groups[n][f"mean_{g}"])
        groups.setdefault("best_teacher", {})[f"mean_{g}"] = groups[best][f"mean_{g}"]
        groups["best_teacher"][f"std_{g}"] = groups[best][f"std_{g}"]
        groups["best_teacher"][f"which_{g}"] = best
    return groups


# What the student is measured against: its code and features; the AE code it imitates and the supervised control
# (no teacher) for reference.
IMITATION_REPS = ("student", "student_code", "ae", "supervised_student")


def imitation_r2(run: Run, reps: dict) -> dict:
    """{rep: {teacher: {eval_set: R²}}}: how much of each frozen teacher's embedding a representation holds
    linearly on held-out faces of every eval set (probes.linear_r2, first probe seed). The fusion's val R² says what
    the code keeps of a teacher; this says what the student kept of it, also on the domains it never saw."""
    from face_transfer.evaluation.probes import MIN_IMAGES, linear_r2
    seed = run.cfg.probe.seeds[0]
    names = [n for n in inputs.teacher_names(run) if n in reps]
    # a diagnostic: an eval set too small to split (a user's tiny labelled set) is left out, not an error
    return {rep: {t: {s: linear_r2(x, reps[t][s], seed, run.cfg.probe, name=f"{rep} -> {t} ({s})")
                      for s, x in reps[rep].items() if len(x) >= MIN_IMAGES} for t in names}
            for rep in IMITATION_REPS if rep in reps}


@register_stage
def run(run: Run, ctx) -> dict:
    from face_transfer.evaluation import plots, tables
    from face_transfer.evaluation.probes import evaluate_all
    path = run.paths.transfer_json
    header("transfer evaluation: linear probes on every task, every representation")
    teachers = inputs.load_teachers(run)
    images, labels = inputs.load_eval_data(run)
    reps = all_reps(run, teachers, images)
    tasks = inputs.run_tasks(run)
    results_path = run.paths.transfer_results_json
    done = read_json(results_path) if os.path.exists(results_path) else {}
    todo = {k: v for k, v in reps.items() if k not in done}
    t0 = time.time()
    if todo:
        done.update(evaluate_all(todo, labels, tasks, run.cfg.probe))
        write_json(results_path, done)
    results = {k: done[k] for k in reps}
    groups = rep_groups(run, results, tasks)
    curve = compression_curve(run, reps, labels)
    meta = {"eval_sets": list(images), "preset": run.cfg.preset, "seeds": list(run.cfg.probe.seeds), "eval_set_size": run.cfg.data.eval_set_size}
    table = tables.results_table_json(results, tasks, meta)
    table["groups"] = groups
    table["compression_curve"] = curve
    table["compression_99"] = compression_summary(curve)
    table["imitation_r2"] = imitation_r2(run, reps)
    # the ceiling is a reference, not a competitor: its own table, out of the "best per row" one
    order = ["pixels", "random_student"] + inputs.teacher_names(run) + \
        ["concat", "pca", "random_projection", "ae"] + [r for r in results if r.startswith("ae_")] + \
        [r for r in student_variants(run) if r in results and r != "ceiling"] + \
        [r for r in ("student_code",) if r in results]
    if "ceiling" in results:
        table["ceiling"] = tables.ceiling_summary(results, tasks, order)
        cols = [r for r in ["pixels"] + inputs.teacher_names(run) + ["concat", "ae", "student", "student_code",
                                                                      "supervised_student"]
                if r in results]
        with open(run.paths.ceiling_md, "w") as f:
            f.write(tables.ceiling_table_markdown(table["ceiling"], results, cols))
    write_json(path, table)
    with open(run.paths.transfer_md, "w") as f:
        f.write(tables.results_table_markdown(results, tasks, reps_order=order))
    plots.plot_task_bars(results, tasks, run.paths.task_bars_png,
                         reps=[r for r in ["pixels", "random_student", "concat", "ae", "student", "supervised_student"]
                               if r in results])
    plots.plot_compression_curve(curve, run.paths.compression_curve_png)
    if "student" in reps:
        colour = _colouring_task(run, tasks, labels)
        if colour is not None:
            t = colour
            plots.plot_embedding_2d(reps["student"][t.eval_set], labels[t.eval_set][t.labels[0]],
                                    run.paths.student_embedding_png,
                                    f"student embedding (PCA), coloured by {t.name} "
                                    f"({'a novel' if not t.source else 'a source'} task)")
    summary(f"{len(results)} representations x {len(tasks)} tasks x {len(run.cfg.probe.seeds)} seeds "
            f"({time.time() - t0:.0f} s); table {run.paths.transfer_md}")
    for rep in order:
        if rep in groups:
            summary(f"{rep:>22}: novel {groups[rep]['mean_novel']:.1f} ± {groups[rep]['std_novel']:.1f}   "
                    f"source {groups[rep]['mean_source']:.1f} ± {groups[rep]['std_source']:.1f}")
    if "ceiling" in table:
        e = table["ceiling"]["groups"].get("novel", {})
        summary(f"ceiling (supervised on every task's labels): novel {e.get('ceiling', float('nan')):.1f}; student "
                f"{e.get('pct', {}).get('student', float('nan')):.0f}% of it"
                + (f"; nothing beats pixels on {', '.join(table['ceiling']['unsolvable'])}"
                   if table["ceiling"]["unsolvable"] else ""))
    outputs = [path, run.paths.transfer_md]
    derived = [results_path, run.paths.compression_curve_json, run.paths.features_dir,
               run.paths.fusion_curve_root, run.paths.fusion_standardize_dir("zscore"), run.paths.fusion_standardize_dir("phi_s")]
    return {"groups": groups, "outputs": outputs, "reset": derived,
            "artifacts": [results_path, run.paths.compression_curve_json]}


def _colouring_task(run: Run, tasks, labels):
    """The task whose labels colour the student's 2-D embedding plot: hair colour on SynthFaces, else the
    first novel classification task (else any classification task)."""
    by_name = {t.name: t for t in tasks}
    if "hair_color" in by_name and run.cfg.data.synth_tasks:
        return by_name["hair_color"]
    cls = [t for t in tasks if t.kind == "classification"]
    novel = [t for t in cls if not t.source]
    return (novel or cls or [None])[0]

