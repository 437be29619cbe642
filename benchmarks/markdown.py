"""BENCHMARKS.md from benchmarks/results.json: figures, machine, command, date, and the transfer table."""
from __future__ import annotations

import os

from face_transfer.core.fileio import write_text
from face_transfer.core.runpaths import RunPaths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _f(v, nd=1):
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _c99(c) -> str:
    if not c or c.get("d") is None:
        return "no tested d keeps 99% of the concatenation's mean novel score"
    return (f"the AE keeps >= 99% of the concatenation's mean novel score down to d = {c['d']} (compression "
            f"x{c['ratio']:.1f}; AE {c['ae']:.1f} vs PCA {c['pca']:.1f} at that d)")


def _preset_rows(h: dict) -> list[str]:
    reps = ["pixels", "random_student", "best_teacher", "concat", "pca", "random_projection", "ae", "student",
            "supervised_student", "student_l2", "student_cosine", "student_teacher_space", "student_cos_sl1",
            "student_code", "ceiling"]
    rows = ["| representation | mean novel (0-100) | ± std over seeds | % of the ceiling (novel) | mean source |",
            "|---|---:|---:|---:|---:|"]
    for r in reps:
        if f"transfer.mean_novel.{r}" in h:
            rows.append(f"| {r} | {_f(h[f'transfer.mean_novel.{r}'])} | {_f(h.get(f'transfer.std_novel.{r}'))} | "
                        f"{_f(h.get(f'transfer.mean_novel_pct_of_ceiling.{r}'), 0)} | "
                        f"{_f(h.get(f'transfer.mean_source.{r}'))} |")
    if h.get("transfer.ceiling.unsolvable"):
        rows += ["", "Tasks whose ceiling does not beat raw pixels: "
                 + ", ".join(h["transfer.ceiling.unsolvable"]) + "."]
    return rows


def _teacher_lines(res: dict, preset: str, h: dict) -> list[str]:
    """Given teachers' build, each teacher against the supervised control on its own source tasks, and how much
    of each teacher the fusion's code keeps."""
    L = []
    if preset == "paper" and res.get("teachers.given"):
        L.append(f"- Teachers given, not trained in this run (`teachers.given` = `{res['teachers.given']}`, "
                 "`make zoo-paper`): built in " + _f(res.get("teachers.build_seconds"), 0) + " s (`teachers.build_seconds`; "
                 + ", ".join(f"{k} {_f(v)} steps" for k, v in (res.get("teachers.build_steps") or {}).items())
                 + "), outside `pipeline.paper_wall_s`")
    margins = h.get("teachers.source_margin_over_supervised")
    if margins:
        sup = h.get("transfer.source_scores.supervised_student", {})
        L.append("- Each teacher on its own source tasks vs `supervised_student`, both probed alike "
                 "(`transfer.source_scores.*`): " + "; ".join(
                     f"{n} {t} {_f(sup[t] + v)} vs {_f(sup[t])} ({v:+.1f})" for n, m in margins.items()
                     for t, v in m.items())
                 + f"; smallest margin **{h['teachers.min_source_margin_over_supervised']:+.1f}** "
                 "(`teachers.min_source_margin_over_supervised`, target >= 0)")
    r2 = {k.split(".", 2)[2]: v for k, v in h.items() if k.startswith("fusion.val_r2.")}
    if r2:
        L.append("- Fusion: validation R² of each teacher's reconstruction from the code (`fusion.val_r2.*`): "
                 + ", ".join(f"{k} {v:.3f}" for k, v in r2.items()))
    return L


def _trimmed_lines(h: dict) -> list[str]:
    left = h.get("transfer.mean_novel_trimmed.left_out")
    if not left:
        return []
    reps = [r for r in ("student", "supervised_student", "concat", "ae", "pca", "best_teacher", "ceiling")
            if f"transfer.mean_novel_trimmed.{r}" in h]
    return [f"Without the {len(left)} novel tasks the student scores best on ({', '.join(left)}; "
            "`transfer.mean_novel_trimmed.*`): " + ", ".join(
                f"{r} {_f(h[f'transfer.mean_novel_trimmed.{r}'])}" for r in reps) + ".", ""]


def _machine_line(m: dict) -> str:
    return (f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, ISA {' '.join(m.get('isa', [])) or '?'}, "
            f"single-thread fp32 matmul {_f(m.get('matmul_gflops_one_thread'))} GFLOP/s")


def _folder_section(res: dict) -> list[str]:
    runs = res.get("data.folder_runs")
    if not runs:
        return []
    L = ["## Streaming from a face folder (your own unlabelled faces)", "",
         f"Command: `python -m benchmarks.bench_folder` ({res.get('data.folder_protocol', '')}). Machine: "
         f"{_machine_line(res.get('data.machine', {}))}.", "",
         "| faces on disk | peak RSS (MB) | pre-pass (images/s) | distillation (images/s) | stream alone (images/s) "
         "| wall (s) |", "|---:|---:|---:|---:|---:|---:|"]
    for n, r in sorted(runs.items(), key=lambda kv: int(kv[0])):
        L.append(f"| {int(n):,} | {_f(r['peak_rss_mb'], 0)} | {_f(r['prepare_images_per_s'], 0)} | "
                 f"{_f(r['distill_images_per_s'], 0)} | {_f(r['stream_images_per_s'], 0)} | {_f(r['wall_s'], 0)} |")
    if res.get("data.peak_rss_ratio_100k_over_20k"):
        L += ["", f"Peak RSS 100k / 20k = {res['data.peak_rss_ratio_100k_over_20k']:.3f} "
                  "(`data.peak_rss_mb_20k`, `data.peak_rss_mb_100k`; target: within 10%). "
                  f"`data.folder_images_per_s` = {_f(res.get('data.folder_images_per_s'), 0)} (distillation from the "
                  "100k folder)."]
    return L + [""]


def _robustness_section(res: dict) -> list[str]:
    if "infer.peak_rss_mb_8000px" not in res and "runs.hash_seconds" not in res:
        return []
    L = ["## What the safety nets cost", "",
         f"Command: `python -m benchmarks.bench_robustness`. Machine: {_machine_line(res.get('robustness.machine', {}))}.", ""]
    if "runs.hash_seconds" in res:
        L.append(f"- Verifying a run directory on resume (size + SHA-256 of every artifact): "
                 f"**{_f(res['runs.hash_seconds'], 2)} s** for {_f(res.get('runs.hash_mb'))} MB in "
                 f"{_f(res.get('runs.hash_files'))} files (`{res.get('runs.hash_run_dir')}`; `runs.hash_seconds`).")
    if "infer.peak_rss_mb_8000px" in res:
        L.append(f"- `export.infer_tflite` on one 8000 x 8000 px photo: peak RSS **{_f(res['infer.peak_rss_mb_8000px'], 0)} MB**, "
                 f"{_f(res.get('infer.seconds_8000px'))} s, face found: {res.get('infer.face_found_8000px')} "
                 "(`infer.peak_rss_mb_8000px`; before the bounded detection: 6.6 GB and 92 s).")
    return L + [""]


def _web_section(res: dict) -> list[str]:
    if "latency.browser_int8_ms_per_face" not in res:
        return []
    return ["## The analyser in a browser (LiteRT.js)", "",
            f"Command: `python -m benchmarks.bench_web` ({res.get('web.protocol', '')}). "
            f"Machine: {_machine_line(res.get('web.machine', {}))}; measured {res.get('web.date', '?')}.", "",
            f"- Browser, WASM XNNPACK, 1 thread: **{_f(res['latency.browser_int8_ms_per_face'], 3)} ms per face** "
            f"(`latency.browser_int8_ms_per_face`); Python LiteRT, 1 thread, same crop and protocol: "
            f"{_f(res.get('web.python_int8_ms_per_face'), 3)} ms (`web.python_int8_ms_per_face`).",
            f"- Finding the face in the page (MTCNN as TFLite, JS cascade) on the 512 x 512 astronaut photo: "
            f"{_f(res.get('web.detect_ms_astronaut'), 0)} ms (`web.detect_ms_astronaut`).", ""]


def _latency_section(res: dict) -> list[str]:
    """benchmarks/bench_latency.py: int8 vs float32 student, 1 thread, native and on XNNPACK's AVX2 path."""
    nat = res.get("latency.native")
    if not nat or "latency.machine" not in res:
        return []
    run, cg = res.get("latency.run_files", {}), res.get("latency.avx2_callgrind")
    forced = res.get("latency.xnnpack_isa_forced", {})
    L = ["## int8 vs float32 student per CPU instruction set (issue 13)", "",
         f"Command: `python -m benchmarks.bench_latency` (`{res.get('latency.run_dir', '?')}`; "
         f"{res.get('latency.protocol', '')}). Machine: {_machine_line(res['latency.machine'])}; "
         f"measured {res.get('latency.date', '?')}, load average {_f(res.get('latency.load_average'), 1)} on "
         f"{res['latency.machine'].get('cores', '?')} cores. ISA flags recorded with the figures: "
         f"`{' '.join(res.get('latency.cpu_isa', []))}` (`latency.cpu_isa`).", "",
         "| code path | int8 ms/face | float32 ms/face | float / int8 | run's own files: int8, float32 ms |",
         "|---|---:|---:|---:|---:|",
         f"| this CPU, XNNPACK's choice (`latency.native`) | {_f(nat.get('int8_ms_per_face'), 3)} "
         f"| {_f(nat.get('float32_ms_per_face'), 3)} | x{_f(nat.get('float_over_int8'), 2)} "
         f"| {_f(run.get('int8_ms_per_face'), 3)}, {_f(run.get('float32_ms_per_face'), 3)} |"]
    for isa, label in (("avx512_vnni", "AVX-512 VNNI kernels, no AMX (forced)"), ("avx2", "AVX2 kernels (forced)")):
        if isa in forced:
            r = forced[isa]
            L.append(f"| {label} | {_f(r['int8_ms_per_face'], 3)} | {_f(r['float32_ms_per_face'], 3)} "
                     f"| x{_f(r['float_over_int8'], 2)} | {_f(r['run_files']['int8_ms_per_face'], 3)}, "
                     f"{_f(r['run_files']['float32_ms_per_face'], 3)} |")
    L.append("")
    if cg:
        L += [f"- AVX2 path under valgrind (callgrind, instructions per face; a proxy for time, deterministic): "
              f"int8 **{_f(cg['int8_instructions_per_face'])}**, float32 {_f(cg['float32_instructions_per_face'])}, "
              f"float / int8 = **x{_f(cg['float_over_int8'], 2)}** (`latency.avx2_callgrind`); the run's own int8 "
              f"file: {_f(cg.get('run_files_int8_instructions_per_face'))}. Kernels: "
              + ", ".join(f"`{k}`" for k in (cg.get("ukernels_int8") or [])[:2]) + "."]
    L += ["- Forced paths: XNNPACK's `hardware_config.arch_flags` cleared in a child process before the first "
          "delegate (no environment variable restricts the ISA); same CPU and caches, so they show kernels, "
          "not a real AVX2-only machine.",
          "- Why int8 loses on AVX2 (per-op callgrind, one dump per XNNPACK operator, 2026-11-30): without VNNI, "
          "XNNPACK's int8 GEMM (`3x8c8__avx2`: sign-extend to int16, `vpmaddwd`) needs about as many instructions "
          "per multiply-add as the FMA float GEMM, plus a requantisation epilogue per output and input channels "
          "padded to 8. Only the 1x1 convs with K >= 64 inputs come out cheaper in int8 (0.87x float's "
          "instructions); the stem conv on 3 channels (2.6x), the 3x3 depthwise convs (1.6x, 32-bit multiplies), "
          "the 1x1 convs with K <= 32 inputs (1.34x) and the input normalisation (2.1x before the fold in "
          "`deploy.tflite.fold_input_affine`) cost more. No conversion option changes the kernels (per-tensor "
          "weights: same count; the dynamic-range file: 2.1x float's instructions). With VNNI (`vpdpbusd`) the "
          "int8 kernels differ and int8 is the faster file; XNNPACK's AMX kernels, its choice on this CPU, are "
          "slower than its VNNI ones on this small model.",
          "- Issue 13's target (int8 >= 1.5x faster than float32 on AVX2) is not met by any conversion or student "
          "architecture measured: on AVX2-only CPUs the float32 file is the faster one.", ""]
    return L


def _concurrency_section(res: dict) -> list[str]:
    """benchmarks/stress_claim.py: processes claiming and filling one shard directory (issue 21)."""
    if "concurrency.claim_stress.runs" not in res:
        return []
    return ["## Concurrent workers on one shared directory (issue 21)", "",
            f"Command: `python -m benchmarks.stress_claim` ({res.get('concurrency.claim_stress.processes', 4)} "
            "spawned processes fill one embedding-cache directory together, as the workers of a multi-worker run "
            "do: all claim it, each writes its shards, worker 0 writes the manifest, the others wait for it; random "
            "start delays; a fresh directory per repetition). Machine: "
            f"{_machine_line(res.get('concurrency.machine', {}))}.", "",
            f"- Repetitions: **{res['concurrency.claim_stress.runs']}** (`concurrency.claim_stress.runs`), failures: "
            f"**{res.get('concurrency.claim_stress.failures')}** (`concurrency.claim_stress.failures`; a failure is "
            "an exception in any process, manifests that differ, or a cache that differs from a direct computation), "
            f"{_f(res.get('concurrency.claim_stress.seconds'))} s.",
            "- Before the fix (commit 0b28672, the same harness, 10 repetitions): 1 failure, the issue's race: "
            "`FileNotFoundError ... spec.json.tmp -> spec.json` in one process, and the three others waited out "
            "their timeout for a manifest that never came.", ""]


def _adapt_section(res: dict) -> list[str]:
    """benchmarks/bench_adapt.py: a finished run's student adapted to a task it never saw (issue 22)."""
    if "adapt.seconds_linear" not in res:
        return []
    before, after = res.get("adapt.old_tasks_before") or {}, res.get("adapt.old_tasks_after") or {}
    L = ["## Adapting the student to a new task (issue 22)", "",
         f"Command: `{res.get('adapt.command') or 'python -m benchmarks.bench_adapt --run_dir=' + str(res.get('adapt.run_dir'))}` "
         "(= `face-transfer-adapt`, "
         f"each mode timed back to back; {res.get('adapt.date', '?')}). Machine: "
         f"{_machine_line(res.get('adapt.machine', {}))}; 1-minute load average at the end "
         f"{_f(res.get('adapt.load_average'), 2)} on 2 cores (other jobs make seconds incomparable).", "",
         f"Task: {res.get('adapt.task')}, {_f(res.get('adapt.images'))} labelled faces written as a folder_csv "
         "dataset, an identity-disjoint 80/20 split; every score is the probes' 0-100 score on the held-out 20%.", "",
         "| mode | new-task score | seconds (adapt + export: SavedModel, int8 TFLite, ONNX) |", "|---|---:|---:|",
         f"| linear heads on the frozen `features` | {_f(res.get('adapt.new_task_score.linear'))} | "
         f"{_f(res.get('adapt.seconds_linear'))} (`adapt.seconds_linear`) |",
         f"| fine-tune, {res.get('adapt.finetune_steps')} steps, LwF term with replay | "
         f"{_f(res.get('adapt.new_task_score.finetune'))} | {_f(res.get('adapt.seconds_finetune'))} (`adapt.seconds_finetune`) |",
         f"| ceiling: the architecture from nothing, {res.get('adapt.ceiling_steps')} steps on the same images "
         f"({'measured ' + res['adapt.ceiling_date'] if res.get('adapt.ceiling_date') else 'kept from an earlier run'}"
         "; `--ceiling_steps=0` keeps it: it does not depend on the student) | "
         f"{_f(res.get('adapt.new_task_score.ceiling'))} | {_f(res.get('adapt.seconds_ceiling'))} |", ""]
    cfg = res.get("adapt.finetune_config")
    if cfg:
        L.append(f"Fine-tune settings (AdaptConfig defaults): {', '.join(f'{k} {v}' for k, v in cfg.items())}.")
        L.append("")
    L.append(f"- Forgetting in fine-tune mode: the largest drop of an old head's task, scored with the run's probes "
             f"(held-out test split, the run's seeds) before and after, is **{_f(res.get('adapt.forgetting_max'), 2)} "
             f"points** (`adapt.forgetting_max`, target <= 1.0: "
             f"{'met' if (res.get('adapt.forgetting_max') or 0) <= 1.0 else 'not met'}) over {len(after)} tasks; their "
             f"mean drop is {_f(res.get('adapt.forgetting_mean'), 2)} points (`adapt.forgetting_mean`) and the largest "
             f"*gain* of one of them {_f(res.get('adapt.largest_gain'), 2)} (`adapt.largest_gain`): a probe refitted on "
             "moved features moves both ways, so only a drop well beyond that gain is forgetting the seeds cannot "
             "explain.")
    if before:
        worst = sorted(before, key=lambda k: before[k] - after.get(k, before[k]), reverse=True)[:3]
        L.append("- Largest drops: " + ", ".join(f"{k} {before[k]:.1f} -> {after.get(k, float('nan')):.1f}"
                                                 for k in worst) + ".")
    rows = res.get("adapt.finetune_tradeoff")
    if rows:
        L += ["", "The keep weight trades the new task's gain against the old tasks' drop (the same fine-tune, "
              "`--tradeoff_keep_weights`, adapt only):", "",
              "| keep weight | new-task score | forgetting max | mean drop of the old tasks | largest gain |",
              "|---:|---:|---:|---:|---:|"]
        pts = sorted(rows + ([{"keep_weight": cfg["keep_weight"], "new_task_score": res.get("adapt.new_task_score.finetune"),
                               "forgetting_max": res.get("adapt.forgetting_max"),
                               "forgetting_mean": res.get("adapt.forgetting_mean"),
                               "largest_gain": res.get("adapt.largest_gain")}] if cfg else []),
                     key=lambda r: r["keep_weight"])
        for r in pts:
            L.append(f"| {_f(r['keep_weight'])} | {_f(r['new_task_score'])} | {_f(r['forgetting_max'], 2)} | "
                     f"{_f(r.get('forgetting_mean'), 2)} | {_f(r.get('largest_gain'), 2)} |")
    return L + [""]


def benchmarks_markdown(res: dict) -> str:
    m = res.get("machine", {})
    L = ["# Benchmarks", "",
         f"Measured on {res.get('date', '?')}: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
         f"{m.get('mem_gb', '?')} GB, Python {m.get('python', '?')}, CPU only.", "",
         "Command: `make bench` (= `python -m benchmarks.run`: synthetic-face throughput, then the `demo` and "
         "`paper` presets of `trainers.pipeline`, each from nothing in a fresh run directory). Every figure below "
         "is read from `benchmarks/results.json`, which that command writes; ratios come from one run.", "",
         "## Data and tasks", "",
         f"- SynthFaces throughput: **{_f(res.get('synth.faces_per_s_per_core'), 0)} faces/s on one core** at 64x64 "
         f"(`synth.faces_per_s_per_core`, target >= 2000)",
         f"- Tasks: {res.get('tasks.count')} (`tasks.count`), of which {res.get('tasks.novel_count')} novel "
         "(`tasks.novel_count`)", ""]
    L += _folder_section(res) + _robustness_section(res) + _web_section(res) + _latency_section(res) + \
        _concurrency_section(res) + _adapt_section(res)
    for preset in ("demo", "paper"):
        L += preset_section(res, preset)
    return "\n".join(L) + "\n"


def _pretrained(res: dict, preset: str) -> bool:
    """Whether the preset's run used pretrained zoo teachers (their teacher.json records say so)."""
    import glob
    import json
    run = os.path.join(ROOT, res.get("runs", {}).get(preset, ""))
    for path in glob.glob(RunPaths(run).teacher_json("*")):
        with open(path) as f:
            if "pretrained" in json.load(f):
                return True
    return False


def _reused(res: dict, preset: str) -> str:
    """The stages a re-run resumed from an earlier run of the same configuration (their seconds are that run's)."""
    r = res.get(f"presets.{preset}.reused_stages")
    if not r:
        return ""
    secs = r.get("seconds", {})
    return (f". It is the sum of the stage seconds. The {', '.join(secs)} stages ({_f(sum(secs.values()), 0)} s) are "
            f"those of {r.get('from', 'an earlier run')}: this run resumed them, and its evaluation reused that run's "
            f"eval-set features of {r.get('features', 'the teachers and fused codes')}")


def preset_section(res: dict, preset: str) -> list[str]:
    """One preset's section of BENCHMARKS.md (empty when results.json has no figures for it)."""
    h = res.get(f"presets.{preset}")
    if not h:
        return []
    wall = res.get(f"pipeline.{preset}_wall_s")
    mach = res.get(f"presets.{preset}.machine")
    L = []
    if True:
        L += [f"## Preset `{preset}` (run dir `{res.get('runs', {}).get(preset, '?')}`)", "",
              *([f"Measured {res.get(f'presets.{preset}.date', '?')} on {_machine_line(mach)}."
                 + (f" Load average at the end: {res[f'presets.{preset}.load_average']} on {mach.get('cores', '?')} "
                    "cores." if res.get(f"presets.{preset}.load_average") is not None else "")
                 + (" Stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in res[f"presets.{preset}.stage_seconds"].items())
                    + "." if res.get(f"presets.{preset}.stage_seconds") else "")
                 + (f" {res[f'presets.{preset}.note']}" if res.get(f"presets.{preset}.note") else ""), ""]
                if mach else []),
              f"- Wall time from nothing: **{_f(wall, 0)} s** (`pipeline.{preset}_wall_s`; target: "
              + ("<= 900 s on a 2-core AVX2-only CPU, which ran the 2026-11-27 demo x2.9 slower than the AVX-512 "
                 "benchmark machine, so about <= 310 s on that machine)" if preset == "demo" else "<= 5400 s)")
              + _reused(res, preset),
              f"- Teachers (feature extractors): {_f(h.get('teachers.total_params'))} params; + fusion encoder: "
              f"{_f(h.get('teachers_plus_encoder.params'))}",
              f"- Student: {_f(h.get('student.params'))} params, {_f(h.get('student.mflops'))} MFLOPs; "
              f"**parameter ratio x{_f(h.get('params_ratio'))}**{' (target >= 75)' if preset == 'paper' else ''}, "
              f"FLOP ratio x{_f(h.get('flops_ratio'))}",
              f"- Teachers' source-task scores: " + "; ".join(
                  f"{k}: " + ", ".join(f"{mk} {_f(mv, 2)}" for mk, mv in v.items())
                  for k, v in (h.get("teachers.source_scores") or {}).items())
              + (" (pretrained teachers shipped with the package, `make zoo`; not trained in this run)"
                 if _pretrained(res, preset) and not (preset == "paper" and res.get("teachers.given")) else ""),
              *_teacher_lines(res, preset, h),
              f"- Embedding cache: {_f(h.get('cache.images_per_s'), 0)} images/s through all teachers",
              f"- Fusion: concat -> d = {h.get('fusion.code_dim')} (x{_f(h.get('fusion.compression_ratio'))}), "
              f"AE keeps {_f(100 * h['fusion.retained_fraction'] if h.get('fusion.retained_fraction') else None)}% of "
              f"the concatenation's mean novel score; " + _c99(h.get("fusion.compression_99")),
              f"- Distillation final losses: " + ", ".join(
                  f"{k.split('.')[-1]} {_f(v, 4)}" for k, v in h.items() if k.startswith("student.final_loss.")),
              f"- TFLite: float32 {_f(h.get('tflite.float32.bytes'))} B, int8 PTQ {_f(h.get('tflite.int8_ptq.bytes'))} B "
              f"(cosine {_f(h.get('tflite.int8_ptq.cosine_mean'), 4)}, novel drop {_f(h.get('tflite.int8_ptq.mean_novel_drop'), 2)} pts)"
              + (f", int8 QAT {_f(h.get('tflite.int8_qat.bytes'))} B (cosine {_f(h.get('tflite.int8_qat.cosine_mean'), 4)}, "
                 f"novel drop {_f(h.get('tflite.int8_qat.mean_novel_drop'), 2)} pts)" if h.get("tflite.int8_qat.bytes")
                 else " (no QAT file: `export.qat_steps=0`)"),
              f"- Latency (1 face, 1 thread): int8 student {_f(h.get('latency.int8_ms_per_face'), 3)} ms; teacher "
              f"ensemble (TF) / int8 = x{_f(h.get('latency.ensemble_over_int8'))} (target >= 50); float/int8 = "
              f"x{_f(h.get('latency.float_over_int8'), 2)}",
              *([f"- Distillation: {_f(h['student.distill_images_per_s'], 0)} images/s, "
                 f"{_f(h.get('student.distill_gflops'))} GFLOP/s achieved (ensemble forward + student forward and "
                 f"backward), {_f(100 * h['student.flop_utilisation'], 0)}% of the fp32 matmul throughput of the "
                 f"{_f(h.get('student.distill_threads')) if h.get('student.distill_threads') else 'machine'}"
                 " core(s) it trained on (`student.distill_images_per_s`, `student.flop_utilisation`)"]
                if h.get("student.distill_images_per_s") else []), "",
              "Transfer (linear probes, 0-100 scores, mean over seeds):", ""] + _preset_rows(h) + [""] + _trimmed_lines(h)
        metrics = os.path.join(ROOT, res.get("runs", {}).get(preset, ""), "metrics")
        for name, title in (("ceiling.md", "Per-task ceiling: every representation as % of it"),
                            ("transfer.md", "Full per-task table")):
            if os.path.exists(os.path.join(metrics, name)):
                L += [f"<details><summary>{title}</summary>", "", open(os.path.join(metrics, name)).read(), "",
                      "</details>", ""]
    return L


def readme_results(res: dict) -> str:
    """The README's headline table (between the results markers), from benchmarks/results.json."""
    # `student` is the exported student files' `features` output (the run's view), the code only their `embedding`
    rows = ["| preset | wall time (2 cores) | params: teachers+encoder / student | novel-task score: student "
            "(`features`) | student's code only (`embedding`) | teachers concat | AE code | best single teacher | random student | "
            "supervised student | ceiling | int8 student | int8 novel-score drop |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for preset in ("demo", "paper"):
        h = res.get(f"presets.{preset}")
        if not h:
            continue
        g = lambda rep: h.get(f"transfer.mean_novel.{rep}")  # noqa: E731
        sd = h.get("transfer.std_novel.student")
        when = res.get(f"presets.{preset}.date")
        rows.append(
            f"| `{preset}`{f' ({when})' if when else ''} | {_f(res.get(f'pipeline.{preset}_wall_s'), 0)} s | x{_f(h.get('params_ratio'))} | "
            f"**{_f(g('student'))}** ± {_f(sd)} | {_f(g('student_code'))} | {_f(g('concat'))} | {_f(g('ae'))} | "
            f"{_f(g('best_teacher'))} | {_f(g('random_student'))} | {_f(g('supervised_student'))} | "
            f"{_f(g('ceiling'))} | "
            f"{_f((h.get('tflite.int8_ptq.bytes') or 0) / 1024, 0)} KB | {_f(h.get('tflite.int8_ptq.mean_novel_drop'), 2)} |")
    return ("Measured by `make bench` on " + str(res.get("date")) + " (" + str(res.get("machine", {}).get("cores"))
            + "-core CPU); scores are the mean over the novel tasks of the 0-100 task scores (balanced accuracy, "
            "verification accuracy, 100·R², landmark NME gain), 3 probe seeds. SynthFaces renders "
            f"{_f(res.get('synth.faces_per_s_per_core'), 0)} faces/s on one core. Details and every per-task number: "
            "[BENCHMARKS.md](BENCHMARKS.md).\n\n" + "\n".join(rows) + "\n")


def update_readme(res: dict, path: str = os.path.join(ROOT, "README.md")):
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    text = open(path).read()
    if start not in text or end not in text:
        return
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(head + start + "\n" + readme_results(res) + end + tail)


def _split(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(the text before the first `## ` section, [(title line, the section's text)] in order)."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith("## ")]
    bounds = starts + [len(lines)]
    return ("".join(lines[:bounds[0]]),
            [(lines[i].rstrip("\n"), "".join(lines[i:j])) for i, j in zip(bounds, bounds[1:])])


def keep_other_sections(new: str, old: str, keep_old: tuple[str, ...] = ()) -> str:
    """`new` (a full rewrite of BENCHMARKS.md) with every section of `old` that it does not write itself (an
    ablation's write-up, a one-off measurement) put back before the first preset section, in their old order.
    The sections titled in `keep_old` (a preset whose run directory is not on this machine, so that its per-task
    tables cannot be re-read) stay as they were."""
    _, olds = _split(old)
    olds_by_title = dict(olds)
    head, sections = _split(new)
    sections = [(t, olds_by_title.get(t, body) if t in keep_old else body) for t, body in sections]
    titles = {t for t, _ in sections}
    kept = [(t, body if body.endswith("\n\n") else body + "\n") for t, body in olds if t not in titles]
    j = next((k for k, (t, _) in enumerate(sections) if t.startswith("## Preset")), len(sections))
    return head + "".join(body for _, body in sections[:j] + kept + sections[j:])


def replace_section(section_lines: list[str], path: str = os.path.join(ROOT, "BENCHMARKS.md")) -> None:
    """Replace one `## ` section of BENCHMARKS.md (matched by its title line), or insert it before the first
    preset section: the file also holds sections that a full rewrite (benchmarks.run.write_markdown) drops."""
    section = "\n".join(section_lines) + "\n"
    title = section.splitlines()[0]
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n"
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith("## ")]
    if title + "\n" in lines:
        i = lines.index(title + "\n")
        j = next((k for k in starts if k > i), len(lines))
        lines[i:j] = [section]
    else:
        j = next((k for k in starts if lines[k].startswith("## Preset")), len(lines))
        lines[j:j] = [section]
    write_text(path, "".join(lines))
