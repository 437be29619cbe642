"""The teacher ensemble (one frozen Keras model) and the sharded, resumable embedding cache.

The cache is the interface between the teachers and the fusion/distillation stages: one array per
teacher for N images, written shard by shard with the image indices and a manifest.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Sequence

import keras
import numpy as np

from face_transfer.core import peers
from face_transfer.core.fileio import read_json, save_npz, write_json
from face_transfer.core.runpaths import MANIFEST_JSON as MANIFEST
from face_transfer.data.pipelines import claim_shard_dir, complete_manifest, load_shards


def build_ensemble(teachers: Sequence, image_size: int = 64, name: str = "teacher_ensemble") -> keras.Model:
    """Frozen model: uint8 images [N,S,S,3] -> {teacher_name: embedding [N,D]}.

    Each teacher's own preprocessing (resize, gray/BGR, scale) runs inside its layer. Numpy-callable
    teachers (TFLite and ONNX files, dlib, ...) run through tf.numpy_function: the model then works with the
    TensorFlow backend without XLA and cannot be saved or exported (check
    `all(t.in_graph_exportable for t in teachers)` before exporting anything built on it).
    """
    inp = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    outs = {}
    for t in teachers:
        outs[t.name] = keras.layers.Identity(name=t.name)(t.as_keras_layer()(inp))
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
                          meta: dict | None = None, progress: bool = True, worker: tuple[int, int] = (0, 1),
                          wait_timeout_s: float = 24 * 3600, poll_s: float = 1.0) -> dict:
    """Embed images 0..n-1 (`image_fn(indices) -> uint8 images`) with every teacher into shards.

    Resumable: finished shards (atomic writes) are not recomputed. Returns the manifest, which has
    the teachers, their dims, `meta` (e.g. generator seed/stream) and the throughput.

    `worker=(k, W)` splits the teacher pass over W processes sharing `out_dir` (multi-worker runs):
    worker k embeds shards s with s % W == k, and worker 0 writes the manifest once every shard exists
    (the others wait for it, polling every `poll_s`). Each worker's part resumes on its own. A worker whose
    peer fails or dies stops waiting at once with face_transfer.core.peers.PeerFailedError, naming the peer.
    """
    k_worker, n_workers = worker
    if not 0 <= k_worker < n_workers:
        raise ValueError(f"build_embedding_cache: worker={worker}; expected (k, W) with 0 <= k < W")
    names = [t.name for t in teachers]
    want = {"teachers": names, "n": int(n), "shard_size": int(shard_size), "meta": meta or {}}
    have = complete_manifest(out_dir, want, "embedding cache")
    if have is not None:
        return have
    claim_shard_dir(out_dir, want)
    with peers.worker_part(out_dir, worker):
        return _fill_cache(teachers, image_fn, n, out_dir, shard_size, batch_size, want, progress, worker,
                           wait_timeout_s, poll_s)


def _fill_cache(teachers, image_fn, n, out_dir, shard_size, batch_size, want, progress, worker, wait_timeout_s,
                poll_s):
    k_worker, n_workers = worker
    names = list(want["teachers"])
    mpath = os.path.join(out_dir, MANIFEST)
    n_shards = (n + shard_size - 1) // shard_size
    dims, t0, done_now = {}, time.time(), 0
    for s in range(n_shards):
        path = _shard_path(out_dir, s)
        if s % n_workers != k_worker:
            continue
        if os.path.exists(path):
            with np.load(path) as z:
                dims = {k: int(z[k].shape[1]) for k in names}
            continue
        idx = np.arange(s * shard_size, min(n, (s + 1) * shard_size))
        images = image_fn(idx)
        arrays = {}
        for t in teachers:
            try:
                e = np.asarray(t.embed(images, batch_size=batch_size), np.float32)
            except FloatingPointError as err:
                raise FloatingPointError(f"{err} (images {idx[0]}..{idx[-1]} of the cache, {path})") from None
            _check_finite(e, t.name, path)
            _check_varies(e, t.name, path)
            arrays[t.name] = e
            dims[t.name] = int(e.shape[1])
        save_npz(path, index=idx, **arrays)
        done_now += len(idx)
        if progress:
            rate = done_now / max(time.time() - t0, 1e-9)
            left = (n - min(n, (s + 1) * shard_size)) / max(rate, 1e-9)
            print(f"\r  embedding cache: shard {s + 1}/{n_shards}  {rate:,.0f} images/s  ETA {left:,.0f} s",
                  end="", file=sys.stderr, flush=True)
    if progress and done_now:
        print(file=sys.stderr)
    elapsed = time.time() - t0
    if n_workers > 1:
        if k_worker != 0:
            peers.wait_for(lambda: os.path.exists(mpath), out_dir, worker, f"the embedding cache's {mpath}",
                           wait_timeout_s, poll_s)
            return read_json(mpath)

        def all_shards():
            return all(os.path.exists(_shard_path(out_dir, s)) for s in range(n_shards))
        peers.wait_for(all_shards, out_dir, worker, f"the other workers' shards of {out_dir}", wait_timeout_s,
                       poll_s)
        with np.load(_shard_path(out_dir, 0)) as z:
            dims = {k: int(z[k].shape[1]) for k in names}
    manifest = {**want, "dims": dims, "shards": n_shards, "workers": n_workers,
                "images_per_s": (done_now * n_workers / elapsed) if done_now else None}
    write_json(mpath, manifest)
    return manifest


def _shard_path(out_dir: str, s: int) -> str:
    return os.path.join(out_dir, f"shard-{s:05d}.npz")


def _check_varies(e, teacher, where):
    """A teacher that gives every face the same embedding carries nothing to fuse or distil: say so."""
    if len(e) >= 2 and float(np.max(np.std(e, axis=0))) <= 1e-6 * (1.0 + float(np.max(np.abs(e)))):
        raise FloatingPointError(
            f"teacher {teacher!r} produced the same embedding for all {len(e)} images in {where}; check its "
            "input spec (size, channels, scale/offset) and its output layer")


def load_embedding_cache(out_dir: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(image indices [N], {teacher: float32 [N, D]}) of a complete cache."""
    arrays = load_shards(out_dir, "embedding cache", "build_embedding_cache")
    index = arrays.pop("index")
    return index, arrays
