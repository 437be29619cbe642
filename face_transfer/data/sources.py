"""Unlabelled face sources the stages receive: SynthFaces, the user's prepared face folder, or a mix of both.
Owns index -> image for finite sets (cache, calibration, parity) and the endless per-replica training stream.

Every source is deterministic: the same (stream, indices) or (start_step, batch) always give the same faces,
so an interrupted stage that resumes sees exactly what an uninterrupted one would have seen.
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from face_transfer import distribute
from face_transfer.data import synth
from face_transfer.data.faces import make_faces_dataset


class SynthSource:
    """SynthFaces: endless, one independent stream per name (fusion, distill, calibration, ...)."""

    kind = "synth"

    def __init__(self, cfg: synth.SynthConfig, domain: str = "photo", pool: str = "train"):
        self.cfg, self.domain, self.pool = cfg, domain, pool
        self.image_size = cfg.image_size

    def count(self, wanted: int) -> int:
        return int(wanted)

    def images(self, start: int, stop: int, stream: str) -> np.ndarray:
        return synth.render_faces(self.cfg, np.arange(start, stop), stream=stream, pool=self.pool,
                                  domain=self.domain)[0]

    def make_dataset(self, input_context, start_step: int, global_batch: int, stream: str, augment_fn=None):
        size = self.image_size

        def render(idx):
            images = self.images_at(idx, stream)
            return augment_fn(images, idx) if augment_fn is not None else images

        def tf_render(idx):
            out = tf.numpy_function(render, [idx], tf.uint8, stateful=False)
            return tf.ensure_shape(out, [None, size, size, 3])

        ctx = input_context if input_context is not None else tf.distribute.InputContext()
        ds = distribute.make_step_index_dataset(ctx, global_batch, start_step=start_step)
        return ds.map(tf_render, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(2)

    def images_at(self, idx: np.ndarray, stream: str) -> np.ndarray:
        return synth.render_faces(self.cfg, np.asarray(idx), stream=stream, pool=self.pool, domain=self.domain)[0]

    def describe(self) -> dict:
        import dataclasses
        return {"kind": "synth", "domain": self.domain, "pool": self.pool, "synth": dataclasses.asdict(self.cfg)}


class FaceSetSource:
    """The user's faces, prepared once into TFRecord shards (face_transfer.data.faces): a finite set."""

    kind = "faces"

    def __init__(self, face_set, seed: int = 0):
        self.face_set, self.seed = face_set, seed
        self.image_size = face_set.image_size
        self.n = face_set.n

    def count(self, wanted: int) -> int:
        return int(min(wanted, self.n))

    def images(self, start: int, stop: int, stream: str) -> np.ndarray:
        if stop > self.n:
            raise ValueError(f"faces {start}..{stop} asked of a set of {self.n} prepared faces")
        if stream == "parity":
            # Parity faces come from the end of the set, calibration faces from its start, so that the two
            # are disjoint whenever the set holds both.
            return self.face_set.read(self.n - stop, self.n - start)
        return self.face_set.read(start, stop)

    def make_dataset(self, input_context, start_step: int, global_batch: int, stream: str, augment_fn=None):
        replicas = input_context.num_replicas_in_sync if input_context is not None else 1
        per_replica = global_batch // replicas
        return make_faces_dataset(self.face_set, per_replica, start_step=start_step,
                                  seed=_stream_seed(self.seed, stream), input_context=input_context,
                                  augment_fn=augment_fn)

    def describe(self) -> dict:
        return {"kind": "faces", "n": self.n, "dir": self.face_set.out_dir}


class MixedSource:
    """A fraction `real_fraction` of the user's faces, the rest SynthFaces, interleaved evenly.

    Position i of a finite set is real when floor((i + 1) f) > floor(i f): the real faces are spread
    through the set at exactly the asked fraction, and the i-th real position reads real face floor(i f).
    """

    kind = "mixed"

    def __init__(self, real: FaceSetSource, synth_source: SynthSource, real_fraction: float):
        if not 0.0 < real_fraction < 1.0:
            raise ValueError(f"MixedSource: real_fraction={real_fraction}; expected 0 < f < 1")
        if real.image_size != synth_source.image_size:
            raise ValueError(f"MixedSource: prepared faces are {real.image_size} px but SynthFaces render "
                             f"{synth_source.image_size} px")
        self.real, self.synth, self.f = real, synth_source, float(real_fraction)
        self.image_size = real.image_size

    def count(self, wanted: int) -> int:
        # The largest T <= wanted whose real positions (floor(T f)) fit in the prepared set.
        cap = math.ceil((self.real.n + 1) / self.f) - 1
        return int(min(wanted, cap))

    def images(self, start: int, stop: int, stream: str) -> np.ndarray:
        i = np.arange(start, stop)
        real_pos = np.floor((i + 1) * self.f) > np.floor(i * self.f)
        r_idx = np.floor(i * self.f).astype(np.int64)  # real positions before i
        s_idx = i - r_idx  # synth positions before i
        out = np.zeros((len(i), self.image_size, self.image_size, 3), np.uint8)
        if real_pos.any():
            lo, hi = int(r_idx[real_pos].min()), int(r_idx[real_pos].max()) + 1
            block = self.real.images(lo, hi, stream)
            out[real_pos] = block[r_idx[real_pos] - lo]
        if (~real_pos).any():
            out[~real_pos] = self.synth.images_at(s_idx[~real_pos], stream)
        return out

    def make_dataset(self, input_context, start_step: int, global_batch: int, stream: str, augment_fn=None):
        replicas = input_context.num_replicas_in_sync if input_context is not None else 1
        per_replica = global_batch // replicas
        k = int(round(per_replica * self.f))
        if k <= 0:
            return self.synth.make_dataset(input_context, start_step, global_batch, stream, augment_fn)
        if k >= per_replica:
            return self.real.make_dataset(input_context, start_step, global_batch, stream, augment_fn)
        real = self.real.make_dataset(input_context, start_step, k * replicas, stream, augment_fn)
        fake = self.synth.make_dataset(input_context, start_step, (per_replica - k) * replicas, stream, augment_fn)
        return tf.data.Dataset.zip((real, fake)).map(lambda a, b: tf.concat([a, b], 0)).prefetch(2)

    def describe(self) -> dict:
        return {"kind": "mixed", "real_fraction": self.f, "real": self.real.describe(), "synth": self.synth.describe()}


def _stream_seed(seed: int, stream: str) -> int:
    import zlib
    return (int(seed) * 1_000_003 + zlib.crc32(stream.encode())) % (2**31 - 1)
