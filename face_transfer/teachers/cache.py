"""The teacher ensemble (one frozen Keras model) and the sharded, resumable embedding cache.

The cache is the interface between the teachers and the fusion/distillation stages: one array per
teacher for N images, written shard by shard with the image indices and a manifest.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable, Sequence

import keras
import numpy as np

MANIFEST = "manifest.json"


def build_ensemble(teachers: Sequence, image_size: int = 64, name: str = "teacher_ensemble") -> keras.Model:
    """Frozen model: uint8 images [N,S,S,3] -> {teacher_name: embedding [N,D]}.

    Each teacher's own preprocessing (resize, gray/BGR, scale) runs inside its layer.
    """
    inp = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    outs = {}
    for t in teachers:
        layer = t.as_keras_layer()
        if layer is None:
            raise ValueError(f"teacher {t.name!r} is a Python callable and has no in-graph form; "
                             "use the embedding cache (build_embedding_cache) for it")
        outs[t.name] = keras.layers.Identity(name=t.name)(layer(inp))
    model = keras.Model(inp, outs, name=name)
    model.trainable = False
    return model


def embed_all(teachers: Sequence, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """{teacher: float32 [N, D]} for an image array, checking every output is finite."""
    out = {}
    for t in teachers:
        e = np.asarray(t.embed(images, batch_size=batch_size), np.float32)
        _check_finite(e, t.name, "<in-memory images>")
        out[t.name] = e
    return out


def _check_finite(e, teacher, where):
    if not np.all(np.isfinite(e)):
        bad = int(np.sum(~np.all(np.isfinite(e), axis=-1)))
        raise FloatingPointError(f"teacher {teacher!r} produced NaN/Inf embeddings for {bad} images in {where}")


def build_embedding_cache(teachers: Sequence, image_fn: Callable[[np.ndarray], np.ndarray], n: int,
                          out_dir: str, shard_size: int = 2048, batch_size: int = 256,
                          meta: dict | None = None, progress: bool = True) -> dict:
    """Embed images 0..n-1 (`image_fn(indices) -> uint8 images`) with every teacher into shards.

    Resumable: finished shards (atomic writes) are not recomputed. Returns the manifest, which has
    the teachers, their dims, `meta` (e.g. generator seed/stream) and the throughput.
    """
    names = [t.name for t in teachers]
    want = {"teachers": names, "n": int(n), "shard_size": int(shard_size), "meta": meta or {}}
    from face_transfer.data.pipelines import claim_shard_dir, complete_manifest
    have = complete_manifest(out_dir, want, "embedding cache")
    if have is not None:
        return have
    claim_shard_dir(out_dir, want)
    mpath = os.path.join(out_dir, MANIFEST)
    n_shards = (n + shard_size - 1) // shard_size
    dims, t0, done_now = {}, time.time(), 0
    for s in range(n_shards):
        path = os.path.join(out_dir, f"shard-{s:05d}.npz")
        if os.path.exists(path):
            with np.load(path) as z:
                dims = {k: int(z[k].shape[1]) for k in names}
            continue
        idx = np.arange(s * shard_size, min(n, (s + 1) * shard_size))
        images = image_fn(idx)
        arrays = {}
        for t in teachers:
            e = np.asarray(t.embed(images, batch_size=batch_size), np.float32)
            _check_finite(e, t.name, path)
            arrays[t.name] = e
            dims[t.name] = int(e.shape[1])
        tmp = path + ".tmp.npz"
        np.savez(tmp, index=idx, **arrays)
        os.replace(tmp, path)
        done_now += len(idx)
        if progress:
            rate = done_now / max(time.time() - t0, 1e-9)
            left = (n - min(n, (s + 1) * shard_size)) / max(rate, 1e-9)
            print(f"\r  embedding cache: shard {s + 1}/{n_shards}  {rate:,.0f} images/s  ETA {left:,.0f} s",
                  end="", file=sys.stderr, flush=True)
    if progress and done_now:
        print(file=sys.stderr)
    elapsed = time.time() - t0
    manifest = {**want, "dims": dims, "shards": n_shards,
                "images_per_s": (done_now / elapsed) if done_now else None}
    with open(mpath + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(mpath + ".tmp", mpath)
    return manifest


def load_embedding_cache(out_dir: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(image indices [N], {teacher: float32 [N, D]}) of a complete cache."""
    from face_transfer.data.pipelines import load_shards
    arrays = load_shards(out_dir, "embedding cache", "build_embedding_cache")
    index = arrays.pop("index")
    return index, arrays
