"""Stage `data`: the run's image sets on disk. SynthFaces eval sets, the user's labelled datasets (as eval
sets), the user's unlabelled faces prepared once into TFRecord shards, a sample grid and label statistics.
"""
from __future__ import annotations

import os
import time

import numpy as np

from face_transfer.core import peers
from face_transfer.core.fileio import read_json, write_json
from face_transfer.stages import inputs, register_stage
from face_transfer.stages.rundir import Run, header, summary

NAME = "data"
WORKERS = "all"  # under multi-worker training every worker runs it (its share, or collectively)
DEPENDS_ON = ()  # rebuilt upstream stages make this one stale


@register_stage
def run(run: Run, ctx) -> dict:
    from face_transfer.data.tasks import EVAL_SETS
    cfg = run.cfg
    dcfg = cfg.data
    parts = (["SynthFaces eval sets"] if dcfg.synth_tasks else []) + \
        ([f"{len(dcfg.task_sets)} labelled dataset(s)"] if dcfg.task_sets else []) + \
        (["your face folder(s)"] if dcfg.faces.sources else [])
    header("data: " + ", ".join(parts))
    t0 = time.time()
    info: dict = {"eval_sets": inputs.eval_set_names(run)}
    outputs = []
    if dcfg.faces.sources:
        from face_transfer.data.faces import prepare_faces
        worker = ctx.worker
        faces_dir = run.paths.faces_dir
        mpath = run.paths.faces_manifest
        with peers.worker_part(faces_dir, worker):
            man = prepare_faces(dcfg.faces, faces_dir, worker=worker)
            # Split across workers: each prepares its shards; worker 0 writes the manifest once all exist.
            if not man.get("complete"):
                def ready():
                    if worker[0] == 0:
                        m = prepare_faces(dcfg.faces, faces_dir, worker=worker, progress=False)
                        return m if m.get("complete") else None
                    return read_json(mpath) if os.path.exists(mpath) else None
                man = peers.wait_for(ready, faces_dir, worker, f"the other workers' face shards ({mpath})",
                                     timeout_s=7 * 24 * 3600, poll_s=2.0)
        rep = man.get("report", {})
        info["faces"] = {k: rep.get(k) for k in ("found", "kept", "corrupt", "no_face")}
        outputs.append(run.paths.faces_manifest)
        summary(f"faces: {rep.get('found')} found, {rep.get('kept')} kept, {rep.get('corrupt')} corrupt, "
                f"{rep.get('no_face')} without a face (list: {run.paths.faces_manifest})")
    if ctx.worker[0] != 0:  # other workers only share the face pre-pass; the chief writes the rest
        return {"worker": ctx.worker, "outputs": []}
    if dcfg.synth_tasks:
        from face_transfer.data.pipelines import render_eval_set
        for name in EVAL_SETS:
            render_eval_set(dcfg.synth, name, dcfg.eval_set_size, run.paths.eval_set_dir(name))
            outputs.append(run.paths.eval_set_manifest(name))
        info["images_per_synth_set"] = dcfg.eval_set_size
    if dcfg.task_sets:
        from face_transfer.data.taskset_store import write_task_set
        info["task_sets"] = {}
        for i, ts in enumerate(dcfg.task_sets):
            name = inputs.task_set_name(run, i)
            man = write_task_set(ts, run.paths.eval_set_dir(name), image_size=dcfg.synth.image_size)
            cols = sorted(man.get("columns", {}))
            info["task_sets"][name] = {"images": man.get("n_images"), "path": ts.path, "format": ts.format,
                                       "columns": cols, "ignored": man.get("ignored", {})}
            outputs.append(run.paths.taskset_json(name))
            skipped = man.get("report", {}).get("skipped", 0)
            summary(f"{name} ({ts.format}, {ts.path}): {man.get('n_images')} labelled faces, tasks from columns "
                    f"{', '.join(cols)}" + (f"; {skipped} bad row(s) dropped and listed" if skipped else "")
                    + (f"; not tasks: {', '.join(man['ignored'])}" if man.get("ignored") else ""))
    grid = run.paths.sample_grid_png
    if not os.path.exists(grid):
        _sample_grid(run, grid)
    outputs.append(grid)
    stats_path = run.paths.data_stats_json
    if not os.path.exists(stats_path):
        write_json(stats_path, label_statistics(run))
    outputs.append(stats_path)
    info["seconds"] = round(time.time() - t0, 1)
    summary(f"eval sets {info['eval_sets']}, sample grid {grid} ({info['seconds']} s)")
    info["outputs"] = outputs
    info["artifacts"] = [run.paths.data_dir] + ([run.paths.faces_dir] if dcfg.faces.sources else [])
    return info


def _sample_grid(run: Run, path: str):
    """SynthFaces' domain grid when the run uses them, else a grid of the user's own prepared faces."""
    from face_transfer.data import synth
    if not inputs.uses_user_faces(run) and run.cfg.data.synth_tasks:
        synth.save_sample_grid(path, run.cfg.data.synth)
        return
    from PIL import Image
    src = inputs.image_source(run)
    n = min(32, src.count(32))
    faces = src.images(0, n, "grid")
    cols = 8
    rows = max(1, (n + cols - 1) // cols)
    s = faces.shape[1]
    canvas = np.full((rows * s, cols * s, 3), 255, np.uint8)
    for i, f in enumerate(faces):
        r, c = divmod(i, cols)
        canvas[r * s:(r + 1) * s, c * s:(c + 1) * s] = f
    Image.fromarray(canvas).resize((cols * s * 2, rows * s * 2), Image.NEAREST).save(path)


def label_statistics(run: Run) -> dict:
    """Per eval set, per label: class frequencies or ranges. What the data holds, for the report."""
    _, labels_by_set = inputs.load_eval_data(run)
    out = {}
    for set_name, labels in labels_by_set.items():
        stats = {}
        for k, v in labels.items():
            v = np.asarray(v)
            if v.dtype.kind in "US":
                vals, counts = np.unique(v, return_counts=True)
                stats[k] = {"distinct": int(len(vals))} if len(vals) > 50 else \
                    {"counts": {str(a): int(b) for a, b in zip(vals, counts)}}
            elif v.ndim > 1:
                stats[k] = {"shape": list(v.shape[1:]), "mean": v.reshape(len(v), -1).mean(0).round(4).tolist()}
            elif k == "identity":
                stats[k] = {"distinct": int(len(np.unique(v))), "n": int(len(v))}
            elif np.issubdtype(v.dtype, np.integer):
                vals, counts = np.unique(v, return_counts=True)
                stats[k] = {"counts": {str(a): int(b) for a, b in zip(vals, counts)}}
            else:
                stats[k] = {"mean": float(np.nanmean(v)), "std": float(np.nanstd(v)), "min": float(np.nanmin(v)),
                            "max": float(np.nanmax(v))}
        out[set_name] = stats
    return out
