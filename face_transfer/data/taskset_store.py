"""A task set on disk: written once like a pre-rendered eval set (shards + manifest) plus taskset.json, the meta.
Owns write_task_set (resumable, idempotent), its fingerprint, and the readers of a written set.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from face_transfer.core.fileio import write_json
from face_transfer.data import pipelines
from face_transfer.data.taskfile import load_task_file
from face_transfer.data.tasksets import TaskSetConfig, read_task_set

TASKSET_META = "taskset.json"


def _want(cfg: TaskSetConfig, image_size: int, shard_size: int) -> dict:
    spec = load_task_file(cfg.task_file)
    return {"kind": "task_set", "name": cfg.set_name, "format": cfg.format, "path": os.path.abspath(cfg.path),
            "task_file": os.path.abspath(cfg.task_file) if cfg.task_file else None, "task_spec": spec,
            "max_images": cfg.max_images, "drop_bad_rows": bool(cfg.drop_bad_rows), "align": bool(cfg.align),
            "seed": int(cfg.seed), "image_size": int(image_size), "shard_size": int(shard_size)}


def _fingerprint(images: np.ndarray, labels: dict) -> str:
    h = hashlib.sha1(images.tobytes())
    for k in sorted(labels):
        h.update(k.encode())
        h.update(np.ascontiguousarray(labels[k]).tobytes())
    return h.hexdigest()


def write_task_set(cfg: TaskSetConfig, out_dir: str, image_size: int = 64, shard_size: int = 1000) -> dict:
    """Reads a user dataset once and stores it like a pre-rendered eval set (resumable, idempotent).

    `shard-XXXXX.npz` (images, index, label__<column>) + manifest.json, so pipelines.load_eval_set reads it;
    plus taskset.json, the meta: columns with kind/metric/num_classes/class_names/source override, the
    identity column, ignored columns and why, how images were selected, the read report (counts and the
    skipped rows). A complete directory is reused without reading the data; one holding another set (other
    path, format, options or task file) is refused. Returns the meta.
    """
    want = _want(cfg, image_size, shard_size)
    if pipelines.complete_manifest(out_dir, want, "task set") is not None:
        return read_task_meta(out_dir)
    pipelines.claim_shard_dir(out_dir, want)
    meta_path = os.path.join(out_dir, TASKSET_META)
    images, labels, meta, _ = read_task_set(cfg, image_size, listed_in=meta_path)
    meta["fingerprint"] = _fingerprint(images, labels)
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            old = json.load(f).get("fingerprint")
        if old != meta["fingerprint"]:
            raise ValueError(f"{out_dir}: an interrupted write of task set {cfg.set_name!r} holds other data than "
                             f"{cfg.path} gives now (did the dataset change?); delete {out_dir} and run again")
    write_json(meta_path, meta)
    n = images.shape[0]
    pipelines.write_labelled_shards(out_dir, n, shard_size,
                                    lambda idx: (images[idx], {k: v[idx] for k, v in labels.items()}),
                                    {**want, "n": int(n)})
    return meta


def read_task_meta(out_dir: str) -> dict:
    path = os.path.join(out_dir, TASKSET_META)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{out_dir}: no {TASKSET_META}; not a task set written by write_task_set")
    with open(path) as f:
        return json.load(f)


def load_task_set(out_dir: str) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """(images, labels, meta) of a task set directory written by write_task_set."""
    meta = read_task_meta(out_dir)
    images, labels = pipelines.load_eval_set(out_dir)
    return images, labels, meta
