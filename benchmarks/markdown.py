"""BENCHMARKS.md from benchmarks/results.json: figures, machine, command, date, and the transfer table."""
from __future__ import annotations

import os

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


def _preset_rows(h: dict) -> list[str]:
    reps = ["pixels", "random_student", "best_teacher", "concat", "pca", "random_projection", "ae", "student",
            "supervised_student", "student_cosine", "student_teacher_space"]
    rows = ["| representation | mean novel (0-100) | ± std over seeds | mean source |", "|---|---:|---:|---:|"]
    for r in reps:
        if f"transfer.mean_novel.{r}" in h:
            rows.append(f"| {r} | {_f(h[f'transfer.mean_novel.{r}'])} | {_f(h.get(f'transfer.std_novel.{r}'))} | "
                        f"{_f(h.get(f'transfer.mean_source.{r}'))} |")
    return rows


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
    for preset in ("demo", "paper"):
        h = res.get(f"presets.{preset}")
        if not h:
            continue
        wall = res.get(f"pipeline.{preset}_wall_s")
        L += [f"## Preset `{preset}` (run dir `{res.get('runs', {}).get(preset, '?')}`)", "",
              f"- Wall time from nothing: **{_f(wall, 0)} s** (`pipeline.{preset}_wall_s`, target "
              f"<= {900 if preset == 'demo' else 5400})",
              f"- Teachers (feature extractors): {_f(h.get('teachers.total_params'))} params; + fusion encoder: "
              f"{_f(h.get('teachers_plus_encoder.params'))}",
              f"- Student: {_f(h.get('student.params'))} params, {_f(h.get('student.mflops'))} MFLOPs; "
              f"**parameter ratio x{_f(h.get('params_ratio'))}** (target >= 75), FLOP ratio x{_f(h.get('flops_ratio'))}",
              f"- Teachers' source-task scores: " + "; ".join(
                  f"{k}: " + ", ".join(f"{mk} {_f(mv, 2)}" for mk, mv in v.items())
                  for k, v in (h.get("teachers.source_scores") or {}).items()),
              f"- Embedding cache: {_f(h.get('cache.images_per_s'), 0)} images/s through all teachers",
              f"- Fusion: concat -> d = {h.get('fusion.code_dim')} (x{_f(h.get('fusion.compression_ratio'))}), "
              f"AE keeps {_f(100 * h['fusion.retained_fraction'] if h.get('fusion.retained_fraction') else None)}% of "
              f"the concatenation's mean novel score; 99% point: {h.get('fusion.compression_99')}",
              f"- Distillation final losses: " + ", ".join(
                  f"{k.split('.')[-1]} {_f(v, 4)}" for k, v in h.items() if k.startswith("student.final_loss.")),
              f"- TFLite: float32 {_f(h.get('tflite.float32.bytes'))} B, int8 PTQ {_f(h.get('tflite.int8_ptq.bytes'))} B "
              f"(cosine {_f(h.get('tflite.int8_ptq.cosine_mean'), 4)}, novel drop {_f(h.get('tflite.int8_ptq.mean_novel_drop'), 2)} pts), "
              f"int8 QAT {_f(h.get('tflite.int8_qat.bytes'))} B (cosine {_f(h.get('tflite.int8_qat.cosine_mean'), 4)}, "
              f"novel drop {_f(h.get('tflite.int8_qat.mean_novel_drop'), 2)} pts)",
              f"- Latency (1 face, 1 thread): int8 student {_f(h.get('latency.int8_ms_per_face'), 3)} ms; teacher "
              f"ensemble (TF) / int8 = x{_f(h.get('latency.ensemble_over_int8'))} (target >= 50); float/int8 = "
              f"x{_f(h.get('latency.float_over_int8'), 2)}", "",
              "Transfer (linear probes, 0-100 scores, mean over seeds):", ""] + _preset_rows(h) + [""]
        table = os.path.join(ROOT, res.get("runs", {}).get(preset, ""), "metrics", "transfer.md")
        if os.path.exists(table):
            L += ["<details><summary>Full per-task table</summary>", "", open(table).read(), "", "</details>", ""]
    return "\n".join(L) + "\n"
