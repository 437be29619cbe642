"""Distilling the fused teacher into the student, and the supervised multi-task control.

The student sees only the image; its target is the fusion auto-encoder's code of the teacher
ensemble's embeddings (computed in-graph on every fresh face, or read from the embedding cache).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from face_transfer import distribute
from face_transfer.data import synth
from face_transfer.student.model import StudentConfig, build_student, count_flops, count_params

LOSSES = ("l2", "cosine", "teacher_space")
STUDENT_JSON = "student.json"


# ---- losses: pure functions, per example ---------------------------------------------------------

def l2_code_loss(pred_code, target_code):
    """The paper's loss: squared L2 distance to the AE code (per example, mean over dims)."""
    return ops.mean(ops.square(pred_code - target_code), axis=-1)


def cosine_code_loss(pred_code, target_code):
    """1 - cosine similarity to the AE code: direction only, scale free."""
    p = pred_code / (ops.norm(pred_code, axis=-1, keepdims=True) + 1e-6)
    t = target_code / (ops.norm(target_code, axis=-1, keepdims=True) + 1e-6)
    return 1.0 - ops.sum(p * t, axis=-1)


def teacher_space_loss(pred_code, target_concat, decoder, dims: dict):
    """Decode the student's code with the frozen decoder and match every standardised teacher block.

    Blocks carry unit total variance each (see fusion.standardize), so the sum per block is each
    teacher's relative error; teachers are weighted equally.
    """
    recon = decoder(pred_code, training=False)
    total, i = 0.0, 0
    for d in dims.values():
        total = total + ops.sum(ops.square(recon[:, i:i + d] - target_concat[:, i:i + d]), axis=-1)
        i += d
    return total / len(dims)


# ---- configuration ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DistillConfig:
    steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    loss: str = "l2"
    domain: str = "photo"  # "mixed" also shows the student sketches / infrared / low-res faces
    augment: bool = True
    checkpoint_every: int = 200
    seed: int = 0
    log_every: int = 50

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"DistillConfig.loss={self.loss!r}; expected one of {LOSSES}")


def _augment(images: np.ndarray, indices: np.ndarray, flip: bool = True) -> np.ndarray:
    """Deterministic per image index: horizontal flip, brightness/contrast jitter.

    Flips are only for label-free distillation (the target is computed on the flipped face); with
    labels they would invert yaw, roll and gaze.
    """
    rng = np.random.default_rng(int(indices[0]) * 7919 + 17)
    x = images.astype(np.float32)
    flip = (rng.random(len(x)) < 0.5) & flip
    x[flip] = x[flip, :, ::-1]
    gain = rng.uniform(0.75, 1.25, (len(x), 1, 1, 1)).astype(np.float32)
    bias = rng.uniform(-20, 20, (len(x), 1, 1, 1)).astype(np.float32)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return np.clip((x - mean) * gain + mean + bias, 0, 255).astype(np.uint8)


def make_distill_dataset(synth_cfg: synth.SynthConfig, cfg: DistillConfig, input_context, start_step: int,
                         global_batch: int, stream: str = "distill", label_keys=()):
    """Per-replica batches of fresh faces (a pure function of the global step: exact resume)."""
    size = synth_cfg.image_size
    _, sample = synth.render_faces(synth_cfg, np.arange(1), stream=stream, domain=cfg.domain)
    sig = {k: (sample[k].dtype, sample[k].shape[1:]) for k in label_keys}

    def render(idx):
        images, labels = synth.render_faces(synth_cfg, idx, stream=stream, pool="train", domain=cfg.domain)
        if cfg.augment:
            images = _augment(images, idx, flip=not label_keys)
        return [images] + [labels[k] for k in label_keys]

    def tf_render(idx):
        out = tf.numpy_function(render, [idx], [tf.uint8] + [tf.as_dtype(sig[k][0]) for k in label_keys],
                                stateful=False)
        images = tf.ensure_shape(out[0], [None, size, size, 3])
        if not label_keys:
            return images
        return images, {k: tf.ensure_shape(v, [None, *sig[k][1]]) for k, v in zip(label_keys, out[1:])}

    ds = distribute.make_step_index_dataset(input_context, global_batch, start_step=start_step)
    return ds.map(tf_render, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(2)


class _Progress:
    """One-line progress with rate and ETA (the custom loop has no Keras progress bar)."""

    def __init__(self, total, every, label):
        self.total, self.every, self.label, self.t0, self.first = total, every, label, time.time(), None

    def __call__(self, step, logs):
        if self.first is None:
            self.first = step - 1
        if step % self.every and step != self.total:
            return
        done = step - self.first
        rate = done / max(time.time() - self.t0, 1e-9)
        eta = (self.total - step) / max(rate, 1e-9)
        print(f"\r  {self.label}: step {step}/{self.total}  loss {logs['loss']:.4f}  {rate:.1f} steps/s  "
              f"ETA {eta:.0f} s", end="" if step != self.total else "\n", file=sys.stderr, flush=True)


def distill_student(student_cfg: StudentConfig, cfg: DistillConfig, source,
                    build_targets_fn, out_dir: str, strategy=None, decoder_fn=None, dims=None,
                    target_concat_fn=None) -> dict:
    """Train the student to reproduce the fused teacher's code; resumable; writes `student.json` last.

    `source`: the unlabelled faces (face_transfer.data.sources: SynthFaces, the user's prepared faces, or a
    mix); a `SynthConfig` is accepted and means SynthFaces in `cfg.domain`.

    build_targets_fn() -> frozen Keras model uint8 images -> AE code (built inside strategy.scope()).
    For loss="teacher_space", target_concat_fn() -> frozen model images -> standardised concatenation,
    decoder_fn() -> the frozen decoder, and dims the per-teacher block sizes.
    """
    strategy = strategy or tf.distribute.get_strategy()
    done = os.path.join(out_dir, STUDENT_JSON)
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    keras.utils.set_random_seed(cfg.seed)
    os.makedirs(out_dir, exist_ok=True)
    source = _as_source(source, cfg)

    def build():
        student = build_student(student_cfg)
        targets = build_targets_fn() if cfg.loss != "teacher_space" else target_concat_fn()
        targets.trainable = False
        extras = {"targets": targets}
        if cfg.loss == "teacher_space":
            dec = decoder_fn()
            dec.trainable = False
            extras["decoder"] = dec
        return {"student": student, **extras}

    def loss_fn(models, images):
        target = models["targets"](images, training=False)
        pred = models["student"](images, training=True)
        if cfg.loss == "l2":
            return l2_code_loss(pred, target)
        if cfg.loss == "cosine":
            return cosine_code_loss(pred, target)
        return teacher_space_loss(pred, target, models["decoder"], dims)

    gb = cfg.batch_size
    t0 = time.time()
    hist = distribute.train_loop(
        strategy, build, loss_fn,
        lambda ctx, start: make_source_dataset(source, cfg, ctx, start, gb),
        lambda: _optimizer(cfg), cfg.steps, gb, checkpoint_dir=os.path.join(out_dir, "ckpt"),
        checkpoint_every=cfg.checkpoint_every, on_step=_Progress(cfg.steps, cfg.log_every, "distill"))
    student = hist["models"]["student"]
    recalibrate_batchnorm(student, _recalibration_batches(source, cfg))
    record = _save_student(student, student_cfg, out_dir, strategy, {
        "kind": "distilled", "distill": dataclasses.asdict(cfg), "final_loss": _tail_mean(hist["loss"]),
        "train_seconds_this_run": round(time.time() - t0, 1), "resumed_from_step": hist["start_step"]})
    return record


def recalibrate_batchnorm(model: keras.Model, batches) -> int:
    """Precise BN: replace every BatchNormalization layer's moving statistics by their exact average
    over `batches` (uint8 image arrays), leaving the weights alone.

    The moving averages (momentum 0.99) lag the weights; after a short run they still hold much of
    their initial values, which makes inference features tiny or off-scale (and int8 export poor).
    """
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    if not bns:
        return 0
    saved = [l.momentum for l in bns]
    n = 0
    try:
        for n, images in enumerate(batches, 1):
            for l in bns:
                l.momentum = (n - 1) / n  # cumulative average: batch n gets weight 1/n
            model(images, training=True)  # eager call: reads the momentum attribute on every call
    finally:
        for l, m in zip(bns, saved):
            l.momentum = m
    return n


def _recalibration_batches(source, cfg: DistillConfig, n_batches: int = 16):
    source = _as_source(source, cfg)
    n = source.count(n_batches * cfg.batch_size)
    for start in range(0, n - cfg.batch_size + 1 if n >= cfg.batch_size else 1, cfg.batch_size):
        yield source.images(start, min(n, start + cfg.batch_size), "bn_recalibration")


def _as_source(source, cfg: DistillConfig):
    """A SynthConfig means SynthFaces in the distillation domain (the library's long-standing call form)."""
    if isinstance(source, synth.SynthConfig):
        from face_transfer.data.sources import SynthSource
        return SynthSource(source, domain=cfg.domain)
    return source


def make_source_dataset(source, cfg: DistillConfig, input_context, start_step: int, global_batch: int,
                        stream: str = "distill"):
    """Per-replica batches of unlabelled faces from any source, augmented deterministically per position."""
    aug = (lambda images, idx: _augment(images, idx)) if cfg.augment else None
    return source.make_dataset(input_context, start_step, global_batch, stream, augment_fn=aug)


def _optimizer(cfg: DistillConfig):
    sched = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, cfg.steps, alpha=0.02)
    return keras.optimizers.AdamW(sched, weight_decay=cfg.weight_decay)


def _tail_mean(losses, k=20):
    return float(np.mean(losses[-k:])) if losses else None


def _save_student(student, student_cfg, out_dir, strategy, extra):
    record = {"config": dataclasses.asdict(student_cfg), "params": count_params(student),
              "mflops": count_flops(student) / 1e6, **extra}
    if distribute.is_chief(strategy):
        student.save(os.path.join(out_dir, "model.keras"))
        path = os.path.join(out_dir, STUDENT_JSON)
        with open(path + ".tmp", "w") as f:
            json.dump(record, f, indent=1)
        os.replace(path + ".tmp", path)
    return record


def load_student(out_dir: str) -> keras.Model:
    if not os.path.exists(os.path.join(out_dir, STUDENT_JSON)):
        raise FileNotFoundError(f"{out_dir}: no {STUDENT_JSON}; the student is not trained (yet)")
    return keras.models.load_model(os.path.join(out_dir, "model.keras"))


# ---- the supervised multi-task control --------------------------------------------------------------

SUPERVISED_LABELS = ("identity", "expression", "yaw", "pitch", "roll", "age", "gender")


def train_supervised_student(student_cfg: StudentConfig, cfg: DistillConfig, synth_cfg: synth.SynthConfig,
                             out_dir: str, strategy=None) -> dict:
    """Same architecture and data budget, trained directly on all source-task labels at once.

    The alternative a user would pick instead of distillation: identity (CosFace), expression,
    head pose, age and gender heads on the student's embedding; the heads are dropped afterwards.
    """
    from face_transfer.teachers import zoo

    strategy = strategy or tf.distribute.get_strategy()
    done = os.path.join(out_dir, STUDENT_JSON)
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    keras.utils.set_random_seed(cfg.seed)
    os.makedirs(out_dir, exist_ok=True)
    n_ids = synth_cfg.n_train_identities

    def build():
        student = build_student(student_cfg)
        emb = student.output
        z = emb  # linear heads on the embedding (as the zoo teachers)
        heads = {
            "identity": zoo.CosineLogits(n_ids, name="sup_identity")(keras.layers.BatchNormalization(name="sup_bn")(emb)),
            "expression": keras.layers.Dense(7, name="sup_expression")(z),
            "pose": keras.layers.Dense(3, name="sup_pose")(z),
            "age": keras.layers.Dense(1, name="sup_age")(z),
            "gender": keras.layers.Dense(1, name="sup_gender")(z),
        }
        return {"student": student, "multitask": keras.Model(student.input, heads, name="multitask")}

    def loss_fn(models, batch):
        images, labels = batch
        out = models["multitask"](images, training=True)
        ce = keras.losses.sparse_categorical_crossentropy(labels["expression"], out["expression"], from_logits=True)
        pose = ops.stack([labels["yaw"], labels["pitch"], labels["roll"]], -1) / zoo.POSE_SCALE
        pose_l = ops.mean(ops.square(out["pose"] - pose), -1)
        age_l = ops.square(out["age"][:, 0] - (labels["age"] - zoo.AGE_MEAN) / zoo.AGE_STD)
        gen_l = keras.losses.binary_crossentropy(ops.cast(labels["gender"], "float32")[:, None], out["gender"],
                                                 from_logits=True)
        id_l = zoo.cosface_loss(labels["identity"], out["identity"])
        return 0.2 * id_l + ce + pose_l + age_l + gen_l

    gb = cfg.batch_size
    t0 = time.time()
    hist = distribute.train_loop(
        strategy, build, loss_fn,
        lambda ctx, start: make_distill_dataset(synth_cfg, cfg, ctx, start, gb, stream="supervised",
                                                label_keys=SUPERVISED_LABELS),
        lambda: _optimizer(cfg), cfg.steps, gb, checkpoint_dir=os.path.join(out_dir, "ckpt"),
        checkpoint_every=cfg.checkpoint_every, on_step=_Progress(cfg.steps, cfg.log_every, "supervised"))
    recalibrate_batchnorm(hist["models"]["student"], _recalibration_batches(synth_cfg, cfg))
    return _save_student(hist["models"]["student"], student_cfg, out_dir, strategy, {
        "kind": "supervised_multitask", "distill": dataclasses.asdict(cfg), "final_loss": _tail_mean(hist["loss"]),
        "train_seconds_this_run": round(time.time() - t0, 1)})
