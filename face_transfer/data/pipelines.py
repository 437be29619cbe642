"""tf.data pipelines over SynthFaces: endless on-the-fly streams and fixed pre-rendered, sharded sets.

Streams are deterministic by index (batch b holds images [start + b*B, start + (b+1)*B)), so a
trainer that resumes at step s restarts the stream at index s*B and sees exactly the same faces.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import tensorflow as tf

from face_transfer.core.errors import CorruptArtifactError
from face_transfer.core.fileio import claim_json, save_npz, write_json
from face_transfer.core.runpaths import MANIFEST_JSON as MANIFEST
from face_transfer.data import synth
from face_transfer.data.tasks import EVAL_SETS, EvalSet


def _label_signature(cfg: synth.SynthConfig, label_keys, stream, pool, domain):
    _, labels = synth.render_faces(cfg, np.arange(1), stream=stream, pool=pool, domain=domain)
    return {k: (labels[k].dtype, labels[k].shape[1:]) for k in label_keys}


def make_stream_dataset(cfg: synth.SynthConfig, batch_size: int, stream: str = "train",
                        pool: str = "train", domain: str = "photo", label_keys=(),
                        start_index: int = 0, num_parallel_calls=tf.data.AUTOTUNE,
                        prefetch: int = 2, input_context: tf.distribute.InputContext | None = None):
    """Endless stream of freshly rendered faces: yields (images uint8 [B,S,S,3], {label: [B,...]}).

    With an `input_context` (tf.distribute), each input pipeline renders a disjoint interleaved
    slice of the batch indices, so replicas never see the same face.
    """
    label_keys = tuple(label_keys)
    sig = _label_signature(cfg, label_keys, stream, pool, domain)
    size = cfg.image_size
    n_pipes, pipe_id = 1, 0
    if input_context is not None:
        n_pipes, pipe_id = input_context.num_input_pipelines, input_context.input_pipeline_id

    def render(b):
        first = start_index + int(b) * batch_size
        images, labels = synth.render_faces(cfg, np.arange(first, first + batch_size),
                                            stream=stream, pool=pool, domain=domain)
        return [images] + [labels[k] for k in label_keys]

    def tf_render(b):
        out = tf.numpy_function(render, [b], [tf.uint8] + [tf.as_dtype(sig[k][0]) for k in label_keys],
                                stateful=False)
        images = tf.ensure_shape(out[0], [batch_size, size, size, 3])
        labels = {k: tf.ensure_shape(v, [batch_size, *sig[k][1]]) for k, v in zip(label_keys, out[1:])}
        return images, labels

    ds = tf.data.Dataset.range(pipe_id, 2**62, n_pipes)
    ds = ds.map(tf_render, num_parallel_calls=num_parallel_calls, deterministic=True)
    return ds.prefetch(prefetch)


def render_eval_set(cfg: synth.SynthConfig, eval_set: EvalSet | str, n: int, out_dir: str,
                    shard_size: int = 1000, stream: str | None = None, progress=None) -> str:
    """Pre-render `n` faces of one eval set into sharded .npz files (resumable, idempotent).

    Finished shards are kept; a manifest written last marks the set complete. A directory that holds
    a different set (other config, size or domain) is an error, never silently overwritten.
    """
    if isinstance(eval_set, str):
        eval_set = EVAL_SETS[eval_set]
    stream = stream or f"eval:{eval_set.name}"
    want = {"name": eval_set.name, "domain": eval_set.domain, "pool": eval_set.pool, "n": int(n),
            "shard_size": int(shard_size), "stream": stream, "synth": synth_config_dict(cfg)}
    if complete_manifest(out_dir, want, "eval set") is not None:
        return out_dir
    claim_shard_dir(out_dir, want)
    write_labelled_shards(out_dir, n, shard_size, lambda idx: synth.render_faces(
        cfg, idx, stream=stream, pool=eval_set.pool, domain=eval_set.domain), want, progress)
    return out_dir


def write_labelled_shards(out_dir: str, n: int, shard_size: int, images_fn, manifest: dict, progress=None) -> int:
    """Write images [0, n) as `shard-XXXXX.npz` (images, index, label__<k>) from `images_fn(idx) -> (images,
    labels)`, skipping finished shards; the manifest goes last (it marks completion). Returns the shard count."""
    n_shards = (n + shard_size - 1) // shard_size
    for s in range(n_shards):
        path = os.path.join(out_dir, f"shard-{s:05d}.npz")
        if os.path.exists(path):
            continue
        idx = np.arange(s * shard_size, min(n, (s + 1) * shard_size))
        images, labels = images_fn(idx)
        # atomic: a killed run never leaves a half shard under the final name
        save_npz(path, images=images, index=idx, **{f"label__{k}": v for k, v in labels.items()})
        if progress:
            progress(s + 1, n_shards)
    write_json(os.path.join(out_dir, MANIFEST), {**manifest, "shards": n_shards})
    return n_shards


def complete_manifest(out_dir: str, want: dict, what: str) -> dict | None:
    """The manifest of a complete sharded directory holding `want` (None if not complete yet).

    A complete directory that holds something else is an error, never silently reused.
    """
    os.makedirs(out_dir, exist_ok=True)
    mpath = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(mpath):
        return None
    with open(mpath) as f:
        have = json.load(f)
    if {k: have.get(k) for k in want} != json.loads(json.dumps(want)):
        raise ValueError(f"{out_dir} already holds a different {what} ({mpath}: {have}); "
                         f"expected {want}. Use another directory or delete it.")
    return have


def claim_shard_dir(out_dir: str, want: dict):
    """Record what a sharded directory holds before its first shard is written (first writer wins).

    The manifest is written last (it marks completion), so an interrupted directory has shards but no
    manifest; `spec.json` lets a resumed run refuse shards of a different set instead of mixing them. Several
    workers may claim the same directory at once: one creates `spec.json`, the others check that it holds
    their spec. A spec left by an attempt that wrote no shard at all (it failed first, e.g. on a NaN teacher)
    is replaced, since nothing depends on it.
    """
    spec_path = os.path.join(out_dir, "spec.json")
    want = json.loads(json.dumps(want))
    for attempt in range(2):
        have = claim_json(spec_path, want)
        if have is None or have == want:
            return
        if attempt == 0 and not _has_shards(out_dir):
            os.remove(spec_path)
            continue
        raise ValueError(f"{out_dir} holds shards of a different set ({spec_path}: {have}); expected "
                         f"{want}. Use another directory or delete it.")


def _has_shards(out_dir: str) -> bool:
    return any(n.startswith("shard-") and ".tmp" not in n for n in os.listdir(out_dir))


def load_shards(out_dir: str, what: str, resume_with: str) -> dict[str, np.ndarray]:
    """Every array of a complete sharded directory, concatenated over shards in index order."""
    mpath = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(mpath):
        raise FileNotFoundError(f"{out_dir}: no {MANIFEST}; the {what} is incomplete "
                                f"(run {resume_with} again, it resumes)")
    with open(mpath) as f:
        manifest = json.load(f)
    arrays: dict[str, list] = {}
    for s in range(manifest["shards"]):
        path = os.path.join(out_dir, f"shard-{s:05d}.npz")
        try:
            with np.load(path) as z:
                for k in z.files:
                    arrays.setdefault(k, []).append(z[k])
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise CorruptArtifactError(f"{path}: corrupt {what} shard ({type(e).__name__}: {e}); delete it and "
                                       f"run {resume_with} again to rebuild it") from None
    return {k: np.concatenate(v) for k, v in arrays.items()}


def load_eval_set(out_dir: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """All images and labels of a pre-rendered set, in index order."""
    arrays = load_shards(out_dir, "eval set", "render_eval_set")
    return arrays["images"], {k[len("label__"):]: v for k, v in arrays.items() if k.startswith("label__")}


def make_eval_dataset(out_dir: str, batch_size: int, label_keys=()):
    """A finite, ordered dataset over a pre-rendered set (for embedding it with a model)."""
    images, labels = load_eval_set(out_dir)
    data = (images, {k: labels[k] for k in label_keys}) if label_keys else images
    return tf.data.Dataset.from_tensor_slices(data).batch(batch_size).prefetch(2)


def synth_config_dict(cfg: synth.SynthConfig) -> dict:
    import dataclasses
    return dataclasses.asdict(cfg)
