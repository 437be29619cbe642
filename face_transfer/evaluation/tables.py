"""The transfer results table: JSON for machines, Markdown for people, and the within-noise rule.
Consumes the dicts of `probes.evaluate_all`; never re-runs a probe.
"""
from __future__ import annotations

import math

import numpy as np

from face_transfer.data.tasks import Task
from face_transfer.evaluation.probes import group_means

# The raw metric shown for each task metric name, and whether higher is better.
RAW_KEY = {"accuracy": "accuracy", "mae": "mae", "mae_deg": "mae", "mae_years": "mae", "nme": "nme"}
HIGHER_IS_BETTER = {"accuracy": True, "mae": False, "nme": False, "r2": True, "auc": True}
GROUPS = (("source", "mean (source tasks)"), ("novel", "mean (novel tasks)"), ("all", "mean (all tasks)"))


def _std(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.std(x, ddof=1)) if x.size > 1 else 0.0


def within_noise(a_scores, b_scores) -> bool:
    """True when two representations are not distinguishable over seeds.

    Rule: |mean(a) - mean(b)| < max(std(a), std(b)), std over seeds with ddof=1. With 3 seeds a paired
    test has almost no power, so this deliberately simple rule is what the tables use. A single seed
    has std 0: two single-seed results are within noise only if they are equal.
    """
    a, b = np.asarray(a_scores, dtype=np.float64), np.asarray(b_scores, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("within_noise: expected non-empty score lists (one score per seed)")
    diff = abs(a.mean() - b.mean())
    noise = max(_std(a), _std(b))
    return bool(diff < noise or diff == 0)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None  # JSON has no NaN
    return x


def _order(all_results: dict, reps_order) -> list[str]:
    if reps_order is None:
        return list(all_results)
    unknown = [r for r in reps_order if r not in all_results]
    if unknown:
        raise KeyError(f"reps_order names {unknown}, not in the results ({sorted(all_results)})")
    return list(reps_order)


def best_and_ties(all_results: dict, task_name: str, reps: list[str]) -> tuple[str | None, list[str]]:
    """The representation with the best mean score on a task, and those within noise of it."""
    have = [r for r in reps if task_name in all_results[r]]
    if not have:
        return None, []
    best = max(have, key=lambda r: all_results[r][task_name]["score_mean"])
    ties = [r for r in have if r != best and within_noise(all_results[best][task_name]["scores"],
                                                           all_results[r][task_name]["scores"])]
    return best, ties


def results_table_json(all_results: dict, tasks: list[Task], meta: dict) -> dict:
    """Everything needed to redraw the tables: per rep per task, group means, ties with the best, meta."""
    reps = list(all_results)
    out = {
        "meta": meta,
        "tasks": [{"name": t.name, "kind": t.kind, "metric": t.metric, "eval_set": t.eval_set,
                   "domain": t.domain, "group": "source" if t.source else "novel",
                   "num_classes": t.num_classes} for t in tasks],
        "representations": reps,
        "results": {r: {t.name: all_results[r][t.name] for t in tasks if t.name in all_results[r]}
                    for r in reps},
        "group_means": {r: group_means(all_results[r], tasks) for r in reps},
        "best": {},
    }
    for t in tasks:
        best, ties = best_and_ties(all_results, t.name, reps)
        out["best"][t.name] = {"best": best, "within_noise": ties}
    return _jsonable(out)


def _fmt_raw(metric: str, mean: float, std: float) -> str:
    digits = 3 if metric in ("accuracy", "auc", "r2", "nme") else 2
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def results_table_markdown(all_results: dict, tasks: list[Task], reps_order=None) -> str:
    """Two Markdown tables (0-100 scores; raw metrics) of tasks x representations, plus a noise footnote."""
    reps = _order(all_results, reps_order)
    head = "| task | group | kind | " + " | ".join(reps) + " |"
    rule = "|---|---|---|" + "---:|" * len(reps)
    lines = ["**Transfer scores** (0-100, mean ± std over seeds; best per row in bold)", "", head, rule]
    ties_notes = []
    for t in tasks:
        best, ties = best_and_ties(all_results, t.name, reps)
        cells = []
        for r in reps:
            res = all_results[r].get(t.name)
            if res is None:
                cells.append("—")
                continue
            cell = f"{res['score_mean']:.1f} ± {res['score_std']:.1f}"
            cells.append(f"**{cell}**" if r == best else cell)
        group = "source" if t.source else "novel"
        lines.append(f"| {t.name} | {group} | {t.kind} | " + " | ".join(cells) + " |")
        if ties:
            ties_notes.append(f"{t.name}: {best} ≈ {', '.join(ties)}")
    groups = {r: group_means(all_results[r], tasks) for r in reps}
    for g, label in GROUPS:
        means = {r: groups[r][f"mean_{g}"] for r in reps}
        finite = [r for r in reps if math.isfinite(means[r])]
        best = max(finite, key=lambda r: means[r]) if finite else None
        cells = []
        for r in reps:
            if r not in finite:
                cells.append("—")
                continue
            cell = f"{means[r]:.1f} ± {groups[r][f'std_{g}']:.1f}"
            cells.append(f"**{cell}**" if r == best else cell)
        lines.append(f"| *{label}* | {g} | | " + " | ".join(cells) + " |")
        if best is not None:
            ties = [r for r in finite if r != best and within_noise(groups[best][f"scores_{g}"],
                                                                    groups[r][f"scores_{g}"])]
            if ties:
                ties_notes.append(f"{label}: {best} ≈ {', '.join(ties)}")

    lines += ["", "**Raw metrics** (mean ± std over seeds; best per row in bold)", "",
              "| task | metric | " + " | ".join(reps) + " |", "|---|---|" + "---:|" * len(reps)]
    for t in tasks:
        key = RAW_KEY.get(t.metric, t.metric)
        vals = {r: all_results[r][t.name] for r in reps
                if t.name in all_results[r] and key in all_results[r][t.name]["raw"]}
        best = None
        if vals:
            sign = 1 if HIGHER_IS_BETTER.get(key, True) else -1
            best = max(vals, key=lambda r: sign * vals[r]["raw"][key])
        cells = []
        for r in reps:
            if r not in vals:
                cells.append("—")
                continue
            cell = _fmt_raw(key, vals[r]["raw"][key], vals[r]["raw_std"][key])
            cells.append(f"**{cell}**" if r == best else cell)
        unit = t.metric if t.metric == key else f"{key} ({t.metric.split('_', 1)[1]})"
        lines.append(f"| {t.name} | {unit} | " + " | ".join(cells) + " |")

    lines += ["", "Scores: classification and verification 100 × accuracy; regression 100 × max(R², 0); "
              "landmarks 100 × max(0, 1 − NME / NME of the mean shape).",
              "Within noise (|Δ mean| < the larger seed std): "
              + ("; ".join(ties_notes) if ties_notes else "none — every best is separated from the rest.")]
    return "\n".join(lines) + "\n"


def ceiling_summary(all_results: dict, tasks: list[Task], reps: list[str], ceiling: str = "ceiling",
                    floor: str = "pixels") -> dict:
    """Every representation as a percentage of the per-task ceiling (the student's architecture trained on
    every task's labels), per task and on the novel / source means over the tasks the ceiling covers.

    A task is `solvable` when its ceiling, or any representation in `reps`, beats the floor representation
    (raw pixels) by more than the seeds' noise: otherwise a low score says nothing about a representation
    (the label, the rendering or the metric is at fault), and the task should be fixed or replaced. Where a
    representation beats the ceiling beyond the noise, the ceiling is under-trained on that task
    (`ceiling_below`): its data budget is the student's, shared by every task's head.
    """
    if ceiling not in all_results:
        raise KeyError(f"ceiling_summary: no {ceiling!r} representation in the results")
    ceil = all_results[ceiling]
    covered = [t for t in tasks if t.name in ceil]
    out = {"covered_tasks": [t.name for t in covered], "per_task": {}, "groups": {}}
    for t in covered:
        c = ceil[t.name]
        row = {"ceiling": c["score_mean"], "ceiling_std": c["score_std"],
               "group": "source" if t.source else "novel"}
        others = [r for r in reps if r not in (ceiling, floor) and t.name in all_results[r]]
        best = max(others, key=lambda r: all_results[r][t.name]["score_mean"], default=None)
        if floor in all_results and t.name in all_results[floor]:
            f = all_results[floor][t.name]
            row["floor"] = f["score_mean"]
            top = c if best is None or c["score_mean"] >= all_results[best][t.name]["score_mean"] \
                else all_results[best][t.name]
            row["solvable"] = bool(top["score_mean"] > f["score_mean"] and not within_noise(top["scores"], f["scores"]))
        if best is not None:
            b = all_results[best][t.name]
            row["best_other"] = best
            row["ceiling_below"] = bool(b["score_mean"] > c["score_mean"] and not within_noise(b["scores"], c["scores"]))
        row["pct"] = {r: (100.0 * all_results[r][t.name]["score_mean"] / c["score_mean"]
                          if c["score_mean"] > 0 and t.name in all_results[r] else None) for r in reps}
        out["per_task"][t.name] = row
    for g in ("novel", "source", "all"):
        names = [t.name for t in covered if g == "all" or (g == "source") == t.source]
        if not names:
            continue
        cm = float(np.mean([ceil[n]["score_mean"] for n in names]))
        entry = {"ceiling": cm, "tasks": len(names), "pct": {}}
        for r in reps:
            if all(n in all_results[r] for n in names) and cm > 0:
                entry["pct"][r] = 100.0 * float(np.mean([all_results[r][n]["score_mean"] for n in names])) / cm
        out["groups"][g] = entry
    out["unsolvable"] = [n for n, row in out["per_task"].items() if row.get("solvable") is False]
    out["ceiling_below"] = [n for n, row in out["per_task"].items() if row.get("ceiling_below")]
    return _jsonable(out)


def ceiling_table_markdown(summary: dict, all_results: dict, reps: list[str], ceiling: str = "ceiling") -> str:
    """Per task: the ceiling's score, then each representation's score as % of it; the group means last."""
    head = "| task | group | ceiling | " + " | ".join(f"{r} %" for r in reps) + " | beats pixels |"
    lines = ["**Percentage of the ceiling** (each representation's mean score / the ceiling's, per task)", "",
             head, "|---|---|---:|" + "---:|" * len(reps) + "---|"]

    def pct(v):
        return "—" if v is None else f"{v:.0f}"

    for name, row in summary["per_task"].items():
        solv = {True: "yes", False: "**no**", None: "?"}[row.get("solvable")]
        lines.append(f"| {name} | {row['group']} | {row['ceiling']:.1f} ± {row['ceiling_std']:.1f} | "
                     + " | ".join(pct(row["pct"].get(r)) for r in reps) + f" | {solv} |")
    for g, label in GROUPS:
        e = summary["groups"].get(g)
        if e:
            lines.append(f"| *{label}* | {g} | {e['ceiling']:.1f} | "
                         + " | ".join(pct(e["pct"].get(r)) for r in reps) + " | |")
    lines += ["", "*beats pixels*: the ceiling or some representation beats raw pixels by more than the seeds' noise."]
    if summary["unsolvable"]:
        lines += ["", "Tasks where nothing, the ceiling included, beats raw pixels beyond the seeds' noise (nothing is "
                  "measured there yet): " + ", ".join(summary["unsolvable"]) + "."]
    if summary.get("ceiling_below"):
        lines += ["", "Tasks where a representation beats the ceiling beyond the noise (the ceiling, one network "
                  "trained on every task at once for `ceiling_budget` times the student's steps, is under-trained "
                  "there): "
                  + ", ".join(summary["ceiling_below"]) + "."]
    return "\n".join(lines) + "\n"
