"""Figures of the transfer evaluation: per-task bars, the compression curve, 2-D embedding views.
Writes PNG files with matplotlib's Agg backend (no display needed); returns the path written.
"""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)
import numpy as np  # noqa: E402

from face_transfer.data.tasks import Task  # noqa: E402


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_task_bars(all_results: dict, tasks: list[Task], path: str, reps=None) -> str:
    """Grouped bars: one group per task (source tasks first), one bar per representation, std error bars."""
    reps = list(all_results) if reps is None else list(reps)
    unknown = [r for r in reps if r not in all_results]
    if unknown:
        raise KeyError(f"plot_task_bars: reps {unknown} not in the results ({sorted(all_results)})")
    ordered = [t for t in tasks if t.source] + [t for t in tasks if not t.source]
    x = np.arange(len(ordered))
    width = 0.8 / max(len(reps), 1)
    width_in = min(18.0, max(8.0, 0.25 * len(ordered) * max(len(reps), 2)))
    fig, ax = plt.subplots(figsize=(width_in, 4.5))
    # tab10 would repeat colours beyond ten representations.
    colours = plt.get_cmap("tab20" if len(reps) > 10 else "tab10").colors
    for i, r in enumerate(reps):
        res = [all_results[r].get(t.name) for t in ordered]
        means = [v["score_mean"] if v else np.nan for v in res]
        stds = [v["score_std"] if v else 0.0 for v in res]
        ax.bar(x - 0.4 + width * (i + 0.5), means, width, yerr=stds, capsize=1.5, label=r,
               color=colours[i % len(colours)], error_kw={"lw": 0.6})
    n_source = sum(t.source for t in ordered)
    if 0 < n_source < len(ordered):
        ax.axvline(n_source - 0.5, color="k", lw=0.8, ls="--")
        ax.text(n_source - 0.45, 101, "novel →", fontsize=8, va="bottom")
    ax.set_xticks(x, [t.name for t in ordered], rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("score (0-100)")
    ax.legend(fontsize=7, ncol=min(len(reps), 6), loc="upper center", bbox_to_anchor=(0.5, -0.35))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_compression_curve(curve: dict, path: str) -> str:
    """Mean novel score vs code dimension d (log2 axis) for each method, the concatenation as a line.

    `curve`: {"d": [...], "<method>": [score per d], optionally "<method>_std": [...],
    "concat": float, "concat_dim": int, optionally "concat_std": float}.
    """
    if "d" not in curve or not len(curve["d"]):
        raise ValueError(f"plot_compression_curve: curve needs a non-empty 'd' list, got keys {sorted(curve)}")
    d = np.asarray(curve["d"], dtype=float)
    reserved = {"d", "concat", "concat_dim", "concat_std"}
    methods = [k for k in curve if k not in reserved and not k.endswith("_std")]
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in methods:
        y = np.asarray(curve[m], dtype=float)
        if y.shape != d.shape:
            raise ValueError(f"plot_compression_curve: curve[{m!r}] has {y.size} values for {d.size} dims")
        ax.errorbar(d, y, yerr=curve.get(f"{m}_std"), marker="o", capsize=3, label=m)
    if curve.get("concat") is not None:
        label = "concat" + (f" (d={curve['concat_dim']})" if curve.get("concat_dim") else "")
        ax.axhline(curve["concat"], color="k", ls="--", label=label)
        if curve.get("concat_std"):
            ax.axhspan(curve["concat"] - curve["concat_std"], curve["concat"] + curve["concat_std"],
                       color="k", alpha=0.08)
    ax.set_xscale("log", base=2)
    ax.set_xticks(d, [str(int(v)) for v in d])
    ax.set_xlabel("code dimension d")
    ax.set_ylabel("mean score on novel tasks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_embedding_2d(features: np.ndarray, color_labels: np.ndarray, path: str, title: str) -> str:
    """Scatter of the first two principal components, coloured by a label (categorical or continuous)."""
    x = np.asarray(features, dtype=np.float64)
    c = np.asarray(color_labels)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"plot_embedding_2d: features must be [N >= 2, D], got {x.shape}")
    if c.shape[0] != x.shape[0]:
        raise ValueError(f"plot_embedding_2d: {c.shape[0]} colour labels for {x.shape[0]} points")
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T
    if xy.shape[1] == 1:
        xy = np.concatenate([xy, np.zeros_like(xy)], axis=1)
    fig, ax = plt.subplots(figsize=(5, 5))
    categorical = c.dtype.kind in "biuUSO" and np.unique(c).size <= 20
    if categorical:
        for v in np.unique(c):
            m = c == v
            ax.scatter(xy[m, 0], xy[m, 1], s=6, alpha=0.7, label=str(v))
        ax.legend(fontsize=7, markerscale=2, loc="best")
    else:
        sc = ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.7, c=c.astype(float), cmap="viridis")
        fig.colorbar(sc, ax=ax)
    ax.set_title(title)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    return _save(fig, path)
