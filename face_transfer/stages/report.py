"""Stage `report`: the headline figures (benchmarks/results.json keys) read back from the run directory,
and `report.md`, what a person reads first.
"""
from __future__ import annotations

import json
import os

import numpy as np

from face_transfer.core.fileio import read_json, write_json
from face_transfer.stages import EVERY_STAGE, inputs, register_stage
from face_transfer.stages.rundir import Run, header, summary
from face_transfer.stages.student import student_variants
from face_transfer.stages.teachers import teacher_records

NAME = "report"
WORKERS = "chief"  # under multi-worker training only the chief runs it; the others wait for its record
DEPENDS_ON = EVERY_STAGE  # it reads what every stage wrote, so it comes last
ALWAYS_RUN = True  # cheap, and it states this invocation's wall time


TRIM_BEST = 5  # novel tasks left out of the trimmed mean: the student's best ones, so that no few tasks carry a claim
LOW_R2 = 0.5  # a teacher whose reconstruction R² is below this is mostly lost by the fusion: the report warns


def trimmed_means(table: dict) -> dict:
    """transfer.mean_novel_trimmed.<rep>: the mean over the novel tasks without the TRIM_BEST the student scores
    best on (the same tasks left out for every representation), and which tasks those are."""
    res = table["results"]
    novel = [t["name"] for t in table["tasks"] if t["group"] == "novel"]
    if "student" not in res or len(novel) <= TRIM_BEST:
        return {}
    best = sorted(novel, key=lambda t: res["student"][t]["score_mean"], reverse=True)[:TRIM_BEST]
    keep = [t for t in novel if t not in best]
    out = {f"transfer.mean_novel_trimmed.{rep}": float(np.mean([r[t]["score_mean"] for t in keep]))
           for rep, r in res.items() if all(t in r for t in keep)}
    out["transfer.mean_novel_trimmed.left_out"] = best
    return out


def source_margins(table: dict, sources: dict[str, tuple[str, ...]], control: str = "supervised_student") -> dict:
    """Each teacher against the supervised control on the teacher's own source tasks, both probed alike:
    transfer.source_scores.<rep> ({task: score} for every source task), teachers.source_margin_over_supervised
    ({teacher: {task: teacher - control}}) and teachers.min_source_margin_over_supervised (the smallest margin:
    >= 0 means no teacher is weaker than the student's network trained on that teacher's own labels).
    {} without a control in the run."""
    res = table["results"]
    source = [t["name"] for t in table["tasks"] if t["group"] == "source"]
    out = {f"transfer.source_scores.{rep}": {t: r[t]["score_mean"] for t in source if t in r}
           for rep, r in res.items()}
    if control not in res:
        return out
    margins = {name: {t: res[name][t]["score_mean"] - res[control][t]["score_mean"]
                      for t in tasks if t in res.get(name, {}) and t in res[control]}
               for name, tasks in sources.items()}
    margins = {n: m for n, m in margins.items() if m}
    if margins:
        out["teachers.source_margin_over_supervised"] = margins
        out["teachers.min_source_margin_over_supervised"] = min(v for m in margins.values() for v in m.values())
    return out


def headline(run: Run) -> dict:
    """The figures the issues name (benchmarks/results.json keys), read back from the run directory."""
    tasks = inputs.run_tasks(run)
    out = {"tasks.count": len(tasks), "tasks.novel_count": len(inputs.novel_tasks(run))}
    teachers = teacher_records(run)
    out["teachers.total_params"] = sum(r["params_embedding"] for r in teachers.values())
    out["teachers.source_scores"] = {k: r["metrics"] for k, r in teachers.items()}
    cache = read_json(run.paths.cache_manifest)
    if cache.get("images_per_s"):
        out["cache.images_per_s"] = cache["images_per_s"]
    fus = read_json(run.paths.fusion_json)
    out["fusion.code_dim"] = fus["code_dim"]
    out["fusion.compression_ratio"] = fus["compression_ratio"]
    for k, v in fus.get("val_r2_per_teacher", {}).items():  # how much of each teacher the code keeps
        out[f"fusion.val_r2.{k}"] = v
    tpath = run.paths.transfer_json
    if os.path.exists(tpath):
        table = read_json(tpath)
        groups = table["groups"]
        for rep, g in groups.items():
            out[f"transfer.mean_novel.{rep}"] = g["mean_novel"]
            out[f"transfer.mean_source.{rep}"] = g["mean_source"]
            out[f"transfer.std_novel.{rep}"] = g["std_novel"]
        out["fusion.retained_fraction"] = groups["ae"]["mean_novel"] / groups["concat"]["mean_novel"]
        out.update(trimmed_means(table))
        out.update(source_margins(table, {t.name: t.source_tasks for t in inputs.teacher_sources(run)}))
        # the two outputs of every exported student file, by name: `features` (the probed view) and `embedding`
        if "student" in groups:
            code = "student_code" if "student_code" in groups else "student"  # embedding view: one and the same
            out["transfer.mean_novel.student_features"] = groups["student"]["mean_novel"]
            out["transfer.mean_novel.student_embedding"] = groups[code]["mean_novel"]
        ceil = table.get("ceiling")
        if ceil and "novel" in ceil["groups"]:
            e = ceil["groups"]["novel"]
            out["transfer.ceiling.mean_novel"] = e["ceiling"]
            out["transfer.ceiling.unsolvable"] = ceil["unsolvable"]
            for rep, pct in e["pct"].items():
                out[f"transfer.mean_novel_pct_of_ceiling.{rep}"] = pct
            if e["ceiling"] > 0 and len(ceil["covered_tasks"]) == len(table["tasks"]):
                out["transfer.mean_novel_pct_of_ceiling.best_teacher"] = \
                    100.0 * groups["best_teacher"]["mean_novel"] / e["ceiling"]
        out["fusion.compression_99"] = table.get("compression_99")
        for t, by_set in table.get("imitation_r2", {}).get("student", {}).items():
            # on the first eval set: faces like the ones the student was distilled on
            out[f"student.imitation_r2.{t}"] = next(iter(by_set.values()))
    spath = run.paths.student_json
    if os.path.exists(spath):
        st = read_json(spath)
        out["student.params"] = st["params"]
        out["student.mflops"] = st["mflops"]
        enc_params = _encoder_params(run)
        out["teachers_plus_encoder.params"] = out["teachers.total_params"] + enc_params
        out["params_ratio"] = out["teachers_plus_encoder.params"] / st["params"]
        out["teachers_plus_encoder.mflops"] = _teacher_mflops(run) + enc_params / 1e6
        out["flops_ratio"] = out["teachers_plus_encoder.mflops"] / st["mflops"]
        for rep, v in student_variants(run).items():
            p = run.paths.student_record(v)
            if os.path.exists(p) and rep != "student":
                out[f"student.final_loss.{rep}"] = read_json(p)["final_loss"]
        out["student.final_loss.student"] = st["final_loss"]
        secs = st.get("train_seconds_this_run")
        if secs and not st.get("resumed_from_step"):  # a resumed run's seconds cover only part of the steps
            d = st["distill"]
            out["student.distill_images_per_s"] = d["steps"] * d["batch_size"] / secs
            # FLOP utilisation (distill_flop_utilisation) against the export stage's measurement of this machine's
            # matmul throughput when there is one (else measured here)
            epath = run.paths.export_json
            gflops = read_json(epath)["latency"].get("cpu_fp32_gflops_one_thread") if os.path.exists(epath) else None
            if gflops is None:
                from face_transfer.machine import matmul_gflops_one_thread
                gflops = matmul_gflops_one_thread()
            from face_transfer.machine import usable_cores
            threads = st.get("threads")  # side by side with the stage's other networks it trains on fewer cores
            gf, util = distill_flop_utilisation(out["student.distill_images_per_s"],
                                                out["teachers_plus_encoder.mflops"], st["mflops"], gflops,
                                                threads or usable_cores())
            out["student.distill_gflops"], out["student.flop_utilisation"] = gf, util
            out["student.distill_threads"] = threads
    epath = run.paths.export_json
    if os.path.exists(epath):
        ex = read_json(epath)
        for mode, key in (("float32", "float32"), ("int8_ptq", "int8_ptq"), ("int8_qat", "int8_qat"),
                          ("float16", "float16"), ("dynamic", "dynamic")):
            if mode in ex["bytes"]:
                out[f"tflite.{key}.bytes"] = ex["bytes"][mode]
        for mode in ("int8_ptq", "int8_qat"):
            if f"student_{mode}" in ex["cosine"]:
                out[f"tflite.{mode}.cosine_mean"] = ex["cosine"][f"student_{mode}"]
            if mode in ex["drops"]:
                out[f"tflite.{mode}.mean_novel_drop"] = ex["drops"][mode]["mean_novel_drop"]
        out["latency.ensemble_over_int8"] = ex["latency"]["ensemble_over_int8"]
        out["latency.int8_ms_per_face"] = ex["latency"]["int8_ms_per_face"]
        out["latency.float_over_int8"] = ex["latency"]["float_over_int8"]
        if "flop_bound_ms" in ex["latency"]:
            out["latency.flop_bound_ms"] = ex["latency"]["flop_bound_ms"]
    return out


def distill_flop_utilisation(images_per_s: float, targets_mflops: float, student_mflops: float,
                             gflops_one_thread: float, threads: int) -> tuple[float, float]:
    """(GFLOP/s achieved, fraction of peak) of a distillation: the targets' forward plus the student's forward and
    backward (~3x its forward), 2 FLOPs per multiply-add, over the fp32 matmul throughput of the `threads` cores
    the student trained with (one thread's measured GFLOP/s times `threads`)."""
    flops = 2e6 * (targets_mflops + 3 * student_mflops) * images_per_s
    return flops / 1e9, flops / (gflops_one_thread * 1e9 * max(1, int(threads)))


def _encoder_params(run: Run) -> int:
    import keras
    return int(keras.models.load_model(run.paths.fusion_encoder).count_params())


def _teacher_mflops(run: Run) -> float:
    """Multiply-adds of every teacher's feature extractor (conv/separable/depthwise/dense), analytic."""
    import math
    total = 0
    for t in inputs.load_teachers(run):
        fm = t.feature_model
        if fm is None:
            continue
        for layer in _all_layers(fm):
            kind = type(layer).__name__
            w = layer.get_weights()
            if not w or kind not in ("Conv2D", "Dense", "SeparableConv2D", "DepthwiseConv2D"):
                continue
            shape = tuple(layer.output.shape)
            pix = math.prod(shape[1:-1]) if len(shape) > 2 else 1
            if kind == "SeparableConv2D":
                total += pix * (math.prod(w[0].shape) + math.prod(w[1].shape))
            else:
                total += pix * math.prod(w[0].shape)
    return total / 1e6


def _all_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)
        else:
            yield layer


def _web_lines(run: Run) -> list[str]:
    """The browser page (export/web/, face_transfer.deploy.web): a link and how to open it, or how to build it."""
    serve = f"python -m export.serve_web --run_dir={run.dir}"
    if os.path.exists(run.paths.web_index):
        return ["### In a browser", "",
                "[`export/web/index.html`](export/web/index.html): pick a photo; the page finds and aligns the face "
                "(MTCNN as TFLite) and runs the int8 analyser on the device with LiteRT.js (WebAssembly, no "
                "network), showing every head and the per-face latency. Browsers do not run it from `file://`: "
                f"serve it with `{serve}` and open the printed http://127.0.0.1 address (or copy `export/web/` to "
                "any static web server).", ""]
    return ["### In a browser", "", "The browser page was not built (LiteRT.js is not installed): run `make web`, "
            f"then `{serve} --build`.", ""]


def _student_outputs_lines(ex: dict, g) -> list[str]:
    """Which output of the exported student files gives which transfer score (export.json "student_outputs")."""
    so = ex.get("student_outputs")
    if not so:  # an export by a version whose student files had the code only
        return ["The student files output the code (`embedding`) only."]
    dims, view = so["dims"], so["view"]
    score = lambda rep: (f"{g(rep):.1f} ± {g(rep, 'std_novel'):.1f}" if g(rep) is not None else "n/a")  # noqa: E731
    code = (f"`embedding` ({dims['embedding']} floats, the code: the `student_code` row, {score('student_code')})"
            if view != "embedding" else f"`embedding` ({dims['embedding']} floats, the code, equal to `features`)")
    return [f"Every student file (`student_savedmodel/`, each `student_*.tflite`, `student.onnx`) has two outputs: "
            f"`features` ({dims['features']} floats, the `{view}` view: the transfer table's `student` row, "
            f"{score('student')} on novel tasks, and the novel-score drops above are measured on it) and {code}. "
            "Fit new heads on `features`."]


def imitation_lines(imit: dict) -> list[str]:
    """The report's table of evaluate.imitation_r2: per teacher, what each representation holds of it, per eval set."""
    if not imit.get("student"):
        return []
    sets = list(next(iter(imit["student"].values())))
    L = ["", "How much of each teacher the student holds: held-out R² of a ridge map from a representation to the "
         "teacher's embedding (its dimensions z-scored), per eval set; `ae` is the code the student imitates, "
         "`supervised_student` learnt no teacher. The first set's faces are like the ones it was distilled on.", "",
         "| teacher | representation | " + " | ".join(sets) + " |", "|---|---|" + "---:|" * len(sets)]
    for t in imit["student"]:
        for rep in imit:
            L.append(f"| {t} | {rep} | " + " | ".join(f"{imit[rep][t][s]:.3f}" for s in sets) + " |")
    return L


def _fmt(v, nd=1):
    return "n/a" if v is None else (f"{v:,.{nd}f}" if isinstance(v, float) else f"{v:,}")


def data_section(run: Run) -> list[str]:
    """Where the run's faces and labels came from, and what was skipped on the way in."""
    d = run.cfg.data
    L = ["## Data", ""]
    src = inputs.image_source(run)
    if d.faces.sources:
        man = read_json(run.paths.faces_manifest)
        rep = man.get("report", {})
        L.append(f"- Unlabelled faces: {', '.join(d.faces.sources)} ({'MTCNN-aligned' if d.faces.align else 'centre crop'}): "
                 f"{rep.get('found', '?')} found, {rep.get('kept', '?')} kept, {rep.get('corrupt', 0)} corrupt, "
                 f"{rep.get('no_face', 0)} without a face (listed in `faces/manifest.json`); "
                 f"{100 * d.faces.real_fraction:.0f}% of the cache and of every distillation batch"
                 + (", the rest SynthFaces." if d.faces.real_fraction < 1 else "."))
    else:
        L.append("- Unlabelled faces: SynthFaces (the embedded default).")
    L.append(f"- Face source of this run: `{src.kind}`.")
    if d.synth_tasks:
        L.append(f"- SynthFaces task suite: {d.eval_set_size} rendered faces per eval set.")
    for i, ts in enumerate(d.task_sets):
        name = inputs.task_set_name(run, i)
        meta = read_json(run.paths.taskset_json(name))
        ntasks = [t.name for t in inputs.run_tasks(run) if t.eval_set == name]
        rep = meta.get("report", {})
        L.append(f"- Dataset `{name}` ({ts.format}, `{ts.path}`, {meta.get('selection', '')}): "
                 f"{meta.get('n_images', '?')} faces; tasks {', '.join(ntasks)}"
                 + (f"; {rep.get('skipped')} bad item(s) skipped (listed in `data/{name}/taskset.json`)"
                    if rep.get("skipped") else "")
                 + (f"; not tasks: " + "; ".join(f"{k} ({v})" for k, v in meta["ignored"].items())
                    if meta.get("ignored") else "") + ".")
    L.append("")
    return L


@register_stage
def run(run: Run, ctx) -> dict:
    return {**write_report(run, wall_s=ctx.wall_s()), "outputs": [run.paths.report_md]}


def write_report(run: Run, wall_s: float | None = None) -> dict:
    """report.md: what a person reads first. Returns the summary lines `make demo` prints."""
    header("report")
    h = headline(run)
    cfg = run.cfg
    teachers = teacher_records(run)
    fus = read_json(run.paths.fusion_json)
    table = read_json(run.paths.transfer_json)
    groups = table["groups"]
    ex = read_json(run.paths.export_json) if os.path.exists(run.paths.export_json) else None
    g = lambda rep, k="mean_novel": groups.get(rep, {}).get(k)  # noqa: E731
    bt = groups["best_teacher"]
    L = [f"# face-transfer run report: preset `{cfg.preset}`", ""]
    if wall_s is not None:
        L.append(f"Wall time of this invocation: {wall_s / 60:.1f} min (stages skipped when already complete). ")
    L += ["Everything here was produced by the pipeline into this directory; `config.json` holds the full "
          "configuration and `metrics/` the raw numbers.", "",
          "![sample faces](data/sample_grid.png)", ""] + data_section(run) + ["## Teachers (frozen)", "",
          "| teacher | arch | source task | input | params (feature extractor) | source-task metrics |",
          "|---|---|---|---|---:|---|"]
    for n, r in teachers.items():
        sp = r["input_spec"]
        L.append(f"| {n} | {r['arch']} | {r['source_task']} | {sp['size']}x{sp['size']}x{sp['channels']} "
                 f"{sp['color_order']} | {r['params_embedding']:,} | "
                 + ", ".join(f"{k} {v:.2f}" for k, v in r["metrics"].items()) + " |")
    margins = h.get("teachers.source_margin_over_supervised")
    if margins:
        sup = h["transfer.source_scores.supervised_student"]
        L += ["", "Each teacher on its own source tasks against `supervised_student` (the student's network trained "
              "on the source tasks' labels with the student's faces), both probed alike (0-100 scores): a teacher "
              "below it is weaker than what its own labels teach a small network.", "",
              "| teacher | task | teacher | supervised_student | margin |", "|---|---|---:|---:|---:|"]
        for n, m in margins.items():
            for t, v in m.items():
                L.append(f"| {n} | {t} | {sup[t] + v:.1f} | {sup[t]:.1f} | {v:+.1f} |")
        L += ["", f"Smallest margin: {h['teachers.min_source_margin_over_supervised']:+.1f}."]
    c99 = table.get("compression_99") or {}
    L += ["", "## Fusion auto-encoder", "",
          f"Concatenated (standardised, {fus['config']['standardize']}) teacher embeddings: {fus['concat_dim']} dims "
          f"-> code d = {fus['code_dim']} (compression x{fus['compression_ratio']:.1f}). Validation R² of the "
          "reconstruction per teacher: " + ", ".join(f"{k} {v:.3f}" for k, v in fus["val_r2_per_teacher"].items()) + ".",
          *([f"**Warning:** the code keeps little of {', '.join(low)} (validation R² below {LOW_R2}): what only "
             "that teacher knows is mostly lost before the student sees it."]
            if (low := [k for k, v in fus["val_r2_per_teacher"].items() if v < LOW_R2]) else []),
          "",
          f"Mean novel-task score at d = {fus['code_dim']}: AE {_fmt(g('ae'))}, PCA {_fmt(g('pca'))}, random projection "
          f"{_fmt(g('random_projection'))}, concatenation {_fmt(g('concat'))} (AE keeps "
          f"{100 * h['fusion.retained_fraction']:.1f}% of the concatenation).",
          "",
          (f"Smallest tested d where the AE keeps >= 99% of the concatenation's novel score: d = {c99.get('d')} "
           f"(compression x{c99.get('ratio'):.1f}; AE {c99.get('ae'):.1f} vs PCA {c99.get('pca'):.1f})."
           if c99.get("d") else f"No tested d keeps 99% of the concatenation's novel score ({c99.get('note')})."),
          "", "Standardisation before the AE: " + ", ".join(
              f"`{r}` {groups[r]['mean_novel']:.1f} ± {groups[r]['std_novel']:.1f}" for r in groups if r.startswith("ae"))
          + f" (mean novel score; `ae` uses {fus['config']['standardize']}).",
          "", f"![compression curve]({run.paths.rel(run.paths.compression_curve_png)})", ""]
    if "student.params" in h:
        L += ["## Student", "",
              f"{cfg.student.arch}, width {cfg.student.width}, input {cfg.student.input_size}: "
              f"{h['student.params']:,} params, {h['student.mflops']:.1f} MFLOPs (multiply-adds). Teachers + encoder: "
              f"{h['teachers_plus_encoder.params']:,} params, {h['teachers_plus_encoder.mflops']:.1f} MFLOPs. "
              f"**Parameter ratio x{h['params_ratio']:.1f}**, FLOP ratio x{h['flops_ratio']:.1f}.", ""]
        L.append(f"Probed and deployed view of every network of the student's architecture: `{cfg.student_view}`"
                 + (" (the code plus the pooled output of every resolution stage; the analyser's heads read it, its "
                    "`embedding` output stays the code)." if cfg.student_view == "ladder" else " (the distilled code).")
                 + " Every exported student file outputs it as `features`, next to the code as `embedding`.")
        if "student.distill_images_per_s" in h:
            L.append(f"Distillation: {h['student.distill_images_per_s']:.0f} images/s, {h['student.distill_gflops']:.1f} "
                     f"GFLOP/s achieved (the ensemble's forward plus the student's forward and backward), "
                     f"{100 * h['student.flop_utilisation']:.0f}% of the measured fp32 matmul throughput of the "
                     f"core(s) it trained on ({h.get('student.distill_threads') or 'all'}).")
        L.append("")
        for rep in student_variants(run):
            if f"student.final_loss.{rep}" in h:
                L.append(f"- `{rep}`: final training loss {_fmt(h[f'student.final_loss.{rep}'], 4)}")
        L += imitation_lines(table.get("imitation_r2") or {})
        L += ["", f"![student embedding]({run.paths.rel(run.paths.student_embedding_png)})", ""]
    L += ["## Transfer to every task (linear probes, mean ± std over seeds, 0-100 scores)", "",
          open(run.paths.transfer_md).read(), "", f"![per-task scores]({run.paths.rel(run.paths.task_bars_png)})", ""]
    if os.path.exists(run.paths.ceiling_md):
        L += ["## The ceiling: how much of each task is learnable", "",
              "`ceiling` is the student's architecture trained on the labels of every SynthFaces task (source and "
              "novel, faces of every domain) with the student's data budget, then probed like every other "
              "representation. A representation's score as a percentage of it says how much of what this "
              "network could know about a task it holds without seeing that task's labels.", "",
              open(run.paths.ceiling_md).read(), ""]
    if ex:
        lat = ex["latency"]
        L += ["## Export", "", "| file | bytes | cosine vs float (mean, worse output) | novel-score drop (`features`) |",
              "|---|---:|---:|---:|"]
        for mode, b in ex["bytes"].items():
            L.append(f"| student_{mode}.tflite | {b:,} | {ex['cosine'].get(f'student_{mode}', float('nan')):.4f} | "
                     f"{ex['drops'].get(mode, {}).get('mean_novel_drop', float('nan')):+.2f} |")
        L += [""] + _student_outputs_lines(ex, g)
        L += ["", f"Multi-task analyser (student + {len(json.load(open(run.paths.analyzer_heads_json)))} "
              f"heads), int8: {ex['analyzer_int8_bytes']:,} bytes. TFLite interpreter: {ex['interpreter']}.", "",
              f"Latency, one face, one thread: int8 student {lat['int8_ptq_ms']:.2f} ms, float32 student "
              f"{lat['float32_ms']:.2f} ms, fused teacher ensemble in TF {lat['ensemble_tf_ms']:.2f} ms "
              f"(x{lat['ensemble_over_int8']:.1f} the int8 student)."
              + (f" FLOP lower bound for the student on this CPU: {lat['flop_bound_ms']:.3f} ms "
                 f"({lat['cpu_fp32_gflops_one_thread']:.0f} GFLOP/s single-thread fp32 matmul)."
                 if "flop_bound_ms" in lat else ""), ""]
        if ex.get("onnx"):
            L += ["ONNX (float, from the SavedModels, checked with onnxruntime against TensorFlow on the parity faces):", "",
                  "| file | bytes | opset | outputs | max abs diff (any output) | embedding cosine (mean / min) | "
                  "features cosine (mean / min) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
            for name, o in ex["onnx"].items():
                feats = f"{o['features_cosine_mean']:.6f} / {o['features_cosine_min']:.6f}" \
                    if "features_cosine_mean" in o else "n/a"
                L.append(f"| {os.path.basename(o['file'])} | {o['bytes']:,} | {o['opset']} | {o['outputs']} | "
                         f"{o['max_abs_diff']:.2g} | {o['embedding_cosine_mean']:.6f} / {o['embedding_cosine_min']:.6f} "
                         f"| {feats} |")
            L.append("")
        if ex.get("tflite_metadata"):
            L += [f"Every `.tflite` file carries TFLite metadata (input RGB uint8 0..255, output names, kinds, units, "
                  f"class-label files, this run's figures and config sha256 `{ex['tflite_metadata']['config_sha256'][:12]}`): "
                  "`face-transfer-infer` reads it, no sidecar needed.", ""]
        L += ["Parity details: `export/parity.md`.", ""]
        L += _web_lines(run)
    # the paper's claims, checked on this run
    claims = ["## The paper's claims on this run", ""]
    st, st_sd = g("student"), g("student", "std_novel")
    ae, conc, btn = g("ae"), g("concat"), bt["mean_novel"]
    if st is not None:
        def verdict(other: str) -> str:
            """Holds only by more than the larger seed std of the two; a smaller gap is a tie."""
            o, o_sd = g(other), g(other, "std_novel") or 0.0
            if abs(st - o) <= max(st_sd, o_sd):
                return f"ties with {'it' if other != 'concat' else 'them'} (within the seeds' spread)"
            return "holds" if st > o else "does not hold"

        claims.append(f"- *The student outperforms its teacher on novel tasks*: student (`{cfg.student_view}` view, the "
                      f"exported files' `features` output) {st:.1f} ± {st_sd:.1f} vs "
                      f"concatenated teachers {conc:.1f} ± {g('concat', 'std_novel'):.1f}, AE code {ae:.1f} ± "
                      f"{g('ae', 'std_novel'):.1f}, best single teacher ({bt['which_novel']}) {btn:.1f} -> "
                      f"{verdict('concat')} against the concatenation, {verdict('ae')} against the AE code, "
                      f"{verdict(bt['which_novel'])} against the best single teacher.")
        if g("student_code") is not None:
            claims.append(f"- The student's code alone (the paper's student, the exported files' `embedding` output; "
                          f"this run probes the `{cfg.student_view}` view): {g('student_code'):.1f} ± "
                          f"{g('student_code', 'std_novel'):.1f}.")
        if h.get("transfer.ceiling.mean_novel") is not None:
            pct = lambda r: h.get(f"transfer.mean_novel_pct_of_ceiling.{r}")  # noqa: E731
            claims.append(f"- Against the ceiling (the same network trained on every task's labels, novel "
                          f"{h['transfer.ceiling.mean_novel']:.1f}): student {_fmt(pct('student'), 0)}%, AE code "
                          f"{_fmt(pct('ae'), 0)}%, concatenation {_fmt(pct('concat'), 0)}%, best single teacher "
                          f"{_fmt(pct('best_teacher'), 0)}% of it.")
        for ctrl in ("random_student", "supervised_student"):
            if g(ctrl) is not None:
                claims.append(f"- student vs `{ctrl}` (same architecture): {st:.1f} vs {g(ctrl):.1f} "
                              f"({st - g(ctrl):+.1f} points).")
        claims.append(f"- *75x fewer parameters*: x{h['params_ratio']:.1f} here -> "
                      f"{'holds' if h['params_ratio'] >= 75 else 'does not hold at this preset'}.")
    claims.append(f"- *The AE code is efficient in compression and transfer*: x{fus['compression_ratio']:.1f} "
                  f"smaller than the concatenation, keeping {100 * h['fusion.retained_fraction']:.1f}% of its "
                  f"novel-task score; AE {'beats' if (ae or 0) > (g('pca') or 0) else 'does not beat'} PCA at this d "
                  f"({ae:.1f} vs {g('pca'):.1f}).")
    if h.get("transfer.mean_novel_trimmed.left_out"):
        tr = lambda r: h.get(f"transfer.mean_novel_trimmed.{r}")  # noqa: E731
        claims.append(f"- Without the student's {TRIM_BEST} best novel tasks "
                      f"({', '.join(h['transfer.mean_novel_trimmed.left_out'])}), so that no few tasks carry the claim: "
                      f"student {_fmt(tr('student'))}, concatenation {_fmt(tr('concat'))}, AE code {_fmt(tr('ae'))}, "
                      f"supervised student {_fmt(tr('supervised_student'))} (`transfer.mean_novel_trimmed.*`).")
    claims.append("- Differences within the seeds' spread are marked in the transfer table's footnote; treat them as ties.")
    L += claims
    with open(run.paths.report_md, "w") as f:
        f.write("\n".join(L) + "\n")
    lines = [f"report: {run.paths.report_md}"]
    if "params_ratio" in h:
        lines.append(f"parameter ratio (teachers + encoder / student): x{h['params_ratio']:.1f} "
                     f"({h['teachers_plus_encoder.params']:,} / {h['student.params']:,})")
        lines.append(f"novel-task score: student {st:.1f} ± {st_sd:.1f} vs teacher concat {conc:.1f}, AE {ae:.1f}, "
                     f"best teacher {btn:.1f}, supervised student {_fmt(g('supervised_student'))}, "
                     f"random student {_fmt(g('random_student'))}")
    if ex:
        lines.append(f"int8 TFLite student: {ex['bytes']['int8_ptq']:,} bytes, novel-score drop "
                     f"{ex['drops'].get('int8_ptq', {}).get('mean_novel_drop', float('nan')):+.2f} points "
                     f"(cosine {ex['cosine']['student_int8_ptq']:.4f})")
    write_json(run.paths.headline_json, h)
    for line in lines:
        summary(line)
    return {"summary_lines": lines, "headline": h}

