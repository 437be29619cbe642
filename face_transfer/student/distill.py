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
from face_transfer.fileio import write_json
from face_transfer.data import synth
from face_transfer.student.model import (StudentConfig, build_student, count_flops, count_params, feature_model,
                                         student_from_weights)

LOSSES = ("l2", "cosine", "teacher_space", "cos_sl1")
CODE_LOSSES = ("l2", "cosine")  # on the AE code itself
BLOCK_LOSSES = ("teacher_space", "cos_sl1")  # per standardised teacher block (decoder or trainable heads)
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


def _blocks(x, dims: dict):
    i = 0
    for d in dims.values():
        yield x[:, i:i + d], d
        i += d


def block_sq_losses(pred_concat, target_concat, dims: dict):
    """[B, teachers]: each standardised block's squared error (each teacher's relative error)."""
    return ops.stack([ops.sum(ops.square(p - t), axis=-1)
                      for (p, _), (t, _) in zip(_blocks(pred_concat, dims), _blocks(target_concat, dims))], axis=-1)


def block_sq_loss(pred_concat, target_concat, dims: dict):
    """Mean over teachers of each standardised block's squared error (each block's relative error)."""
    return ops.mean(block_sq_losses(pred_concat, target_concat, dims), axis=-1)


def smooth_l1(x, beta: float = 1.0):
    """Huber / smooth-L1 with threshold beta (PyTorch's smooth_l1_loss convention), elementwise."""
    a = ops.abs(x)
    return ops.where(a < beta, 0.5 * ops.square(x) / beta, a - 0.5 * beta)


def cos_smooth_l1_losses(pred_concat, target_concat, dims: dict, w_cos: float = 0.5, w_sl1: float = 0.5):
    """[B, teachers]: UNIC / Theia's w_cos * (1 - cosine) + w_sl1 * smooth-L1 of each teacher block.

    Our blocks carry unit *total* variance (per-dim variance ~1/d), so the smooth-L1 term is taken on
    the block times sqrt(d), i.e. at unit per-dim scale, where it is what UNIC computes on its
    standardised teacher features (otherwise it would vanish next to the cosine term).
    """
    out = []
    for (p, d), (t, _) in zip(_blocks(pred_concat, dims), _blocks(target_concat, dims)):
        cos = ops.sum(p * t, -1) / (ops.norm(p, axis=-1) * ops.norm(t, axis=-1) + 1e-6)
        scale = float(np.sqrt(d))
        out.append(w_cos * (1.0 - cos) + w_sl1 * ops.mean(smooth_l1((p - t) * scale), axis=-1))
    return ops.stack(out, axis=-1)


def cos_smooth_l1_loss(pred_concat, target_concat, dims: dict, w_cos: float = 0.5, w_sl1: float = 0.5):
    """UNIC / Theia: per teacher block, w_cos * (1 - cosine) + w_sl1 * smooth-L1, mean over teachers."""
    return ops.mean(cos_smooth_l1_losses(pred_concat, target_concat, dims, w_cos, w_sl1), axis=-1)


def teacher_dropping(losses, drop_prob: float, seed):
    """UNIC's teacher dropping, per example: [B, T] per-teacher losses -> [B] loss.

    For every face the teacher it imitates worst is always kept; each other teacher is left out with
    probability `drop_prob`. The kept (face, teacher) terms are averaged over the batch, so with nothing
    dropped this is the mean over teachers, as without dropping. `seed`: an int32 [2] tensor for the
    stateless draw (distill_student derives it from the batch, so resumed runs draw the same).
    """
    losses = tf.convert_to_tensor(losses)
    keep = tf.random.stateless_uniform(tf.shape(losses), seed=seed) >= drop_prob
    worst = tf.one_hot(tf.argmax(losses, axis=-1), tf.shape(losses)[-1], on_value=True, off_value=False)
    coeffs = tf.stop_gradient(tf.cast(keep | worst, losses.dtype))
    batch = tf.cast(tf.shape(losses)[0], losses.dtype)
    return tf.reduce_sum(coeffs * losses, axis=-1) * batch / tf.reduce_sum(coeffs)


def _similarity(x):
    x = x / (ops.norm(x, axis=-1, keepdims=True) + 1e-6)
    return ops.matmul(x, ops.transpose(x))


def relational_loss(pred, target, dims: dict | None = None):
    """AMoE's relational term, per example: the mean squared difference between the rows of the student's
    and the teacher's batch cosine-similarity matrices; with `dims`, per standardised teacher block, mean
    over teachers (every teacher's geometry of the batch counts equally)."""
    if not dims:
        return ops.mean(ops.square(_similarity(pred) - _similarity(target)), axis=-1)
    total = 0.0
    for (p, _), (t, _) in zip(_blocks(pred, dims), _blocks(target, dims)):
        total = total + ops.mean(ops.square(_similarity(p) - _similarity(t)), axis=-1)
    return total / len(dims)


def build_teacher_heads(embedding_dim: int, dims: dict, hidden: int = 256, name: str = "teacher_heads"):
    """One small MLP per teacher (AM-RADIO's adaptor MLP: Dense -> LayerNorm -> GELU -> Dense) from the
    student's embedding to that teacher's standardised block; outputs the concatenation of the blocks.
    Trained with the student and dropped at inference (never part of the saved student)."""
    inp = keras.Input((embedding_dim,), name="embedding")
    outs = []
    for j, (teacher, d) in enumerate(dims.items()):
        tag = "".join(c if c.isalnum() else "_" for c in str(teacher))
        x = keras.layers.Dense(hidden, name=f"head{j}_{tag}_fc1")(inp)
        x = keras.layers.LayerNormalization(name=f"head{j}_{tag}_ln")(x)
        x = keras.layers.Activation("gelu", name=f"head{j}_{tag}_gelu")(x)
        outs.append(keras.layers.Dense(d, name=f"head{j}_{tag}_fc2")(x))
    out = outs[0] if len(outs) == 1 else keras.layers.Concatenate(name="blocks")(outs)
    return keras.Model(inp, out, name=name)


def build_ladder_residual(features_dim: int, concat_dim: int, name: str = "ladder_residual"):
    """A linear map from the student's ladder to the standardised concatenation, zero-initialised (training
    starts exactly at the decoder-only loss); trained with the student, never part of the saved student."""
    inp = keras.Input((features_dim,), name="ladder")
    out = keras.layers.Dense(concat_dim, kernel_initializer="zeros", name=f"{name}_fc")(inp)
    return keras.Model(inp, out, name=name)


# ---- noisy student: generic degradations of the student's input only ---------------------------------

def degrade(images: np.ndarray, positions: np.ndarray, prob: float, seed: int = 0) -> np.ndarray:
    """Degrade a fraction `prob` of the faces with generic image ops (colour jitter, grayscale, blur or
    down-up-sampling, a random occlusion patch, Gaussian noise; each degraded face gets a random subset,
    at least one). Each face's degradation is a pure function of (seed, its stream position), so
    resumed and multi-replica runs degrade exactly as an uninterrupted one. Not the SynthFaces domain
    renderers (the evaluation's sketch / infrared / low-resolution sets): plain image processing.
    """
    from PIL import Image, ImageFilter

    out = np.array(images, dtype=np.uint8, copy=True)
    n, h, w = out.shape[:3]
    for i in range(n):
        rng = np.random.default_rng([int(seed) & 0x7FFFFFFF, 0xD15, int(positions[i]) & 0x7FFFFFFFFFFFFFFF])
        if rng.random() >= prob:
            continue
        ops_on = rng.random(5) < np.array([0.5, 0.35, 0.4, 0.3, 0.35])  # colour, gray, blur, occlude, noise
        if not ops_on.any():
            ops_on[rng.integers(5)] = True
        x = out[i].astype(np.float32)
        if ops_on[0]:  # colour: per-channel gain, gamma, saturation
            x = x * rng.uniform(0.7, 1.3, 3).astype(np.float32)
            x = 255.0 * (np.clip(x, 0, 255) / 255.0) ** rng.uniform(0.7, 1.5)
            gray = x.mean(-1, keepdims=True)
            x = gray + (x - gray) * rng.uniform(0.3, 1.5)
        if ops_on[1]:  # grayscale
            x = np.repeat((x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None], 3, -1)
        if ops_on[2]:  # blur, or down-up-sampling
            img = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
            if rng.random() < 0.5:
                img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.6, 2.0))))
            else:
                f = float(rng.uniform(2.0, 5.0))
                small = img.resize((max(4, int(w / f)), max(4, int(h / f))), Image.BILINEAR)
                img = small.resize((w, h), Image.BILINEAR if rng.random() < 0.5 else Image.NEAREST)
            x = np.asarray(img, np.float32)
        if ops_on[3]:  # occlusion: a random rectangle of flat colour or noise
            ph, pw = (rng.uniform(0.15, 0.4, 2) * (h, w)).astype(int)
            y0, x0 = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
            fill = rng.uniform(0, 255, 3) if rng.random() < 0.5 else rng.uniform(0, 255, (ph, pw, 3))
            x[y0:y0 + ph, x0:x0 + pw] = fill
        if ops_on[4]:  # additive Gaussian noise
            x = x + rng.normal(0.0, rng.uniform(4.0, 24.0), x.shape)
        out[i] = np.clip(x, 0, 255).astype(np.uint8)
    return out


def mix_faces(images: np.ndarray, positions: np.ndarray, prob: float, seed: int = 0) -> np.ndarray:
    """Mixup for function matching: a fraction `prob` of the faces is blended with the next face of the batch
    (cyclically), the partner weighing uniformly in [0, 0.5], so the face stays the dominant one. Each
    face's draw is a pure function of (seed, its stream position): resumed runs mix exactly the same."""
    x = np.asarray(images)
    n = len(x)
    if n < 2 or prob <= 0:
        return x
    w = np.zeros(n, np.float32)
    for i in range(n):
        rng = np.random.default_rng([int(seed) & 0x7FFFFFFF, 0x313, int(positions[i]) & 0x7FFFFFFFFFFFFFFF])
        if rng.random() < prob:
            w[i] = rng.uniform(0.0, 0.5)
    if not w.any():
        return x
    w = w.reshape(n, *([1] * (x.ndim - 1)))
    mixed = (1.0 - w) * x.astype(np.float32) + w * np.roll(x, -1, axis=0).astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(x.dtype)


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
    # Noisy student: probability that a face is degraded (generic ops, `degrade`) for the student only;
    # the targets are computed on the clean face. 0 = off.
    noise: float = 0.0
    # Block losses (teacher_space, cos_sl1) read the student's prediction of each standardised teacher
    # block from trainable per-teacher MLP heads (heads=True, AM-RADIO / UNIC; dropped after training)
    # or from the frozen AE decoder applied to the student's embedding (heads=False).
    # The code losses (l2, cosine) ignore heads and code_weight.
    heads: bool = False
    head_hidden: int = 256
    code_weight: float = 0.0  # block losses: + code_weight * L2 to the AE code on the student's embedding
    # What the trainable heads read (student.model.FEATURE_VIEWS): "embedding" (the code, AM-RADIO) or
    # "ladder" (every stage pooled next to the code, the view that is probed and deployed): the teachers'
    # blocks are then predicted from the whole ladder, not squeezed through the 64-d code first.
    heads_view: str = "embedding"
    # Relational term (AMoE): + relational_weight * the squared difference between the student's and each
    # teacher's batch cosine-similarity matrices (per teacher block for block losses, on the code otherwise).
    relational_weight: float = 0.0
    # Ladder residual (block losses through the frozen decoder): the teacher blocks are predicted as
    # decoder(code) + a zero-initialised linear map of the ladder (every stage pooled next to the code; the
    # view that is probed), trained with the student and dropped after. The code still imitates the AE
    # code; the ladder is pushed to hold, linearly, what the d-dim code reconstructs badly (the AE's residual).
    ladder_residual: bool = False
    # Training steps per tf.function call (distribute.train_loop): the same steps, losses and checkpoints,
    # without the per-step dispatch and host sync that small batches pay on CPU.
    steps_per_execution: int = 16
    # Function matching (Beyer et al., CVPR 2022): probability that a face is blended with another face of
    # its batch (mixup; the partner's weight is uniform in [0, 0.5]). The teachers and the student see the
    # same blend, so the student learns the teachers' function between faces too. 0 = off.
    mixup: float = 0.0
    # With noise > 0: the teachers see the degraded face too (consistent, function matching) instead of
    # the clean one (noisy student).
    consistent_noise: bool = False
    # Teacher dropping (UNIC), block losses only: per face, every teacher but the one the student
    # imitates worst leaves the loss with this probability. 0 = off.
    teacher_drop: float = 0.0

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"DistillConfig.loss={self.loss!r}; expected one of {LOSSES}")
        for name in ("noise", "mixup", "teacher_drop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"DistillConfig.{name}={getattr(self, name)!r}; expected a probability in [0, 1]")
        if self.consistent_noise and self.noise <= 0:
            raise ValueError("DistillConfig.consistent_noise=True shows the teachers the degraded faces, but noise=0 "
                             "degrades none; set noise in (0, 1]")
        if self.teacher_drop > 0 and self.loss not in BLOCK_LOSSES:
            raise ValueError(f"DistillConfig.teacher_drop={self.teacher_drop!r} needs a block loss {BLOCK_LOSSES} "
                             f"(one term per teacher); got loss={self.loss!r}")
        from face_transfer.student.model import FEATURE_VIEWS
        if self.heads_view not in FEATURE_VIEWS:
            raise ValueError(f"DistillConfig.heads_view={self.heads_view!r}; expected one of {FEATURE_VIEWS}")
        if self.relational_weight < 0:
            raise ValueError(f"DistillConfig.relational_weight={self.relational_weight!r}; expected >= 0")
        if not (isinstance(self.steps_per_execution, int) and self.steps_per_execution >= 1):
            raise ValueError(f"DistillConfig.steps_per_execution={self.steps_per_execution!r}; expected an int >= 1")
        if self.ladder_residual and (self.loss not in BLOCK_LOSSES or self.heads):
            raise ValueError(f"DistillConfig.ladder_residual=True needs a block loss {BLOCK_LOSSES} through the "
                             f"frozen decoder (heads=False); got loss={self.loss!r}, heads={self.heads!r}")
        if self.head_hidden < 1 or self.code_weight < 0:
            raise ValueError(f"DistillConfig: head_hidden={self.head_hidden!r} must be >= 1 and "
                             f"code_weight={self.code_weight!r} >= 0")


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
    For the block losses (teacher_space, cos_sl1), target_concat_fn() -> frozen model images ->
    standardised concatenation, dims the per-teacher block sizes, and decoder_fn() -> the frozen decoder
    (unless cfg.heads: trainable per-teacher heads, dropped when saving). cfg.code_weight > 0 also finds
    the AE encoder inside build_targets_fn()'s fused teacher. cfg.noise > 0: noisy student.
    """
    strategy = strategy or tf.distribute.get_strategy()
    done = os.path.join(out_dir, STUDENT_JSON)
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    keras.utils.set_random_seed(cfg.seed)
    os.makedirs(out_dir, exist_ok=True)
    source = _as_source(source, cfg)

    block = cfg.loss in BLOCK_LOSSES
    code_w = cfg.code_weight if block else 0.0
    if block and (target_concat_fn is None or dims is None or (decoder_fn is None and not cfg.heads)):
        raise ValueError(f"distill_student: loss={cfg.loss!r} needs target_concat_fn, dims and "
                         f"{'' if cfg.heads else 'decoder_fn'}")

    ladder_heads = block and cfg.heads and cfg.heads_view != "embedding"
    residual = block and cfg.ladder_residual

    def build():
        student = build_student(student_cfg, train_fast=True)
        targets = target_concat_fn() if block else build_targets_fn()
        targets.trainable = False
        extras = {"targets": targets}
        if ladder_heads:
            view = feature_model(student, cfg.heads_view)
            extras["view"] = view
            extras["heads"] = build_teacher_heads(int(view.output["features"].shape[-1]), dims, cfg.head_hidden)
        elif block and cfg.heads:
            extras["heads"] = build_teacher_heads(student_cfg.embedding_dim, dims, cfg.head_hidden)
        elif block:
            dec = decoder_fn()
            dec.trainable = False
            extras["decoder"] = dec
        if residual:
            view = feature_model(student, "ladder")
            extras["view"] = view
            extras["residual"] = build_ladder_residual(int(view.output["features"].shape[-1]), sum(dims.values()))
        if code_w > 0:
            enc = find_encoder(build_targets_fn(), sum(dims.values()), student_cfg.embedding_dim)
            enc.trainable = False
            extras["encoder"] = enc
        return {"student": student, **extras}

    def loss_fn(models, batch):
        clean, seen = batch if _student_only_noise(cfg) else (batch, batch)
        target = models["targets"](clean, training=False)
        if ladder_heads:
            out = models["view"](seen, training=True)
            pred, blocks = out["embedding"], models["heads"](out["features"], training=True)
        elif residual:
            out = models["view"](seen, training=True)
            pred = out["embedding"]
        else:
            pred = models["student"](seen, training=True)
        if cfg.loss in CODE_LOSSES:
            loss = l2_code_loss(pred, target) if cfg.loss == "l2" else cosine_code_loss(pred, target)
            if cfg.relational_weight > 0:
                loss = loss + cfg.relational_weight * relational_loss(pred, target)
            return loss
        if not ladder_heads:
            blocks = models["heads"](pred, training=True) if cfg.heads else models["decoder"](pred, training=False)
        if residual:
            blocks = blocks + models["residual"](out["features"], training=True)
        per_teacher = block_sq_losses(blocks, target, dims) if cfg.loss == "teacher_space" else \
            cos_smooth_l1_losses(blocks, target, dims)
        if cfg.teacher_drop > 0:
            # The draw is a function of the batch (its targets' bits), so a resumed run draws the same.
            bits = tf.bitcast(tf.reduce_sum(target, axis=0)[:2], tf.int32)
            loss = teacher_dropping(per_teacher, cfg.teacher_drop, bits + cfg.seed)
        else:
            loss = ops.mean(per_teacher, axis=-1)
        if cfg.relational_weight > 0:
            loss = loss + cfg.relational_weight * relational_loss(blocks, target, dims)
        if code_w > 0:
            loss = loss + code_w * l2_code_loss(pred, models["encoder"](target, training=False))
        return loss

    gb = cfg.batch_size
    t0 = time.time()
    hist = distribute.train_loop(
        strategy, build, loss_fn,
        lambda ctx, start: make_source_dataset(source, cfg, ctx, start, gb),
        lambda: _optimizer(cfg), cfg.steps, gb, checkpoint_dir=os.path.join(out_dir, "ckpt"),
        checkpoint_every=cfg.checkpoint_every,
        steps_per_execution=cfg.steps_per_execution, on_step=_Progress(cfg.steps, cfg.log_every, "distill"))
    student = _stock(hist["models"]["student"], student_cfg)
    recalibrate_batchnorm(student, _recalibration_batches(source, cfg))
    extra = {key: count_params(hist["models"][k]) for k, key in (("heads", "teacher_heads_params"),
                                                                 ("residual", "ladder_residual_params"))
             if k in hist["models"]}
    record = _save_student(student, student_cfg, out_dir, strategy, {
        "kind": "distilled", "distill": dataclasses.asdict(cfg), "final_loss": _final_loss(hist, out_dir, strategy),
        "train_seconds_this_run": round(time.time() - t0, 1), "resumed_from_step": hist["start_step"], **extra})
    return record


def _stock(trained: keras.Model, student_cfg: StudentConfig) -> keras.Model:
    """The trained student (built with train_fast) as stock Keras layers: what is saved, exported and probed."""
    return student_from_weights(trained, "keras", student_cfg, name=trained.name)


def find_encoder(fused: keras.Model, concat_dim: int, code_dim: int) -> keras.Model:
    """The AE encoder inside a fused teacher (images -> concat -> encoder -> code): the nested model
    mapping the standardised concatenation to the code, so a code target costs no second teacher pass."""
    for layer in fused.layers:
        if isinstance(layer, keras.Model) and len(layer.inputs) == 1 and \
                tuple(layer.inputs[0].shape[1:]) == (concat_dim,) and tuple(layer.outputs[0].shape[1:]) == (code_dim,):
            return layer
    raise ValueError(f"find_encoder: {fused.name} has no nested model [{concat_dim}] -> [{code_dim}]")


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
    """Per-replica batches of unlabelled faces from any source, augmented deterministically per position.

    With cfg.noise > 0 each element is a pair (clean, degraded): the targets see the clean faces, the
    student the degraded ones; the degradation is a function of the stream position (the global step's
    example indices, make_step_index_dataset's convention, which every source follows).
    """
    aug = (lambda images, idx: _augment(images, idx)) if cfg.augment else None
    ds = source.make_dataset(input_context, start_step, global_batch, stream, augment_fn=aug)
    if cfg.noise <= 0 and cfg.mixup <= 0:
        return ds
    ctx = input_context if input_context is not None else tf.distribute.InputContext()
    positions = distribute.make_step_index_dataset(ctx, global_batch, start_step=start_step)
    seed = cfg.seed * 1_000_003 + 7

    def views(images, idx):
        def np_views(x, i):
            if cfg.mixup > 0:
                x = mix_faces(x, i, cfg.mixup, seed)
            if cfg.noise <= 0:
                return x, x
            noisy = degrade(x, i, cfg.noise, seed)
            return (noisy, noisy) if cfg.consistent_noise else (x, noisy)

        clean, seen = tf.numpy_function(np_views, [images, idx], [tf.uint8, tf.uint8], stateful=False)
        clean, seen = tf.ensure_shape(clean, images.shape), tf.ensure_shape(seen, images.shape)
        return (clean, seen) if _student_only_noise(cfg) else clean

    return tf.data.Dataset.zip((ds, positions)).map(views, num_parallel_calls=tf.data.AUTOTUNE,
                                                     deterministic=True).prefetch(2)


def _student_only_noise(cfg: DistillConfig) -> bool:
    """Batches are (teachers' faces, student's faces) pairs: the noisy student; otherwise one face batch."""
    return cfg.noise > 0 and not cfg.consistent_noise


def _optimizer(cfg: DistillConfig):
    sched = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, cfg.steps, alpha=0.02)
    return keras.optimizers.AdamW(sched, weight_decay=cfg.weight_decay)


def _final_loss(hist, out_dir, strategy):
    """The mean loss of the last steps; kept next to the checkpoints, so that a student rebuilt from its final
    checkpoint (no step left to run) still reports the loss it was trained to."""
    path = os.path.join(out_dir, "ckpt", "final_loss.json")
    loss = _tail_mean(hist["loss"])
    if loss is None:
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)["final_loss"]
        return None
    if distribute.is_chief(strategy):
        from face_transfer.fileio import write_json
        write_json(path, {"final_loss": loss, "step": hist.get("final_step")})
    return loss


def _tail_mean(losses, k=20):
    return float(np.mean(losses[-k:])) if losses else None


def _save_student(student, student_cfg, out_dir, strategy, extra):
    record = {"config": dataclasses.asdict(student_cfg), "params": count_params(student),
              "mflops": count_flops(student) / 1e6, **extra}
    if distribute.is_chief(strategy):
        student.save(os.path.join(out_dir, "model.keras"))
        write_json(os.path.join(out_dir, STUDENT_JSON), record)
    return record


def load_student(out_dir: str) -> keras.Model:
    if not os.path.exists(os.path.join(out_dir, STUDENT_JSON)):
        raise FileNotFoundError(f"{out_dir}: no {STUDENT_JSON}; the student is not trained (yet)")
    from face_transfer.integrity import load_keras_model
    return load_keras_model(os.path.join(out_dir, "model.keras"), "student model")


# ---- supervised students: the multi-task control and the per-task ceiling ---------------------------

def supervised_task_heads(tasks) -> list[dict]:
    """One head per task, from its kind: {name, kind, labels, classes}. Tasks sharing a label (expression on
    photo and on sketch) share one head; verification learns identities (CosFace) on the train pool."""
    heads, seen = [], set()
    for t in tasks:
        labels = ("identity",) if t.kind == "verification" else tuple(t.labels)
        key = (t.kind, labels)
        if key in seen:
            continue
        seen.add(key)
        if t.kind == "classification" and not t.num_classes:
            raise ValueError(f"supervised_task_heads: classification task {t.name!r} has no num_classes")
        heads.append({"name": t.name, "kind": t.kind, "labels": labels, "classes": t.num_classes})
    return heads


def _label_stats(synth_cfg: synth.SynthConfig, heads, domain: str, n: int = 1024) -> dict:
    """Mean and std of every regression / landmark label on a sample of the training stream (targets are
    standardised so that every head's loss starts near 1)."""
    _, lab = synth.render_faces(synth_cfg, np.arange(n), stream="supervised_stats", pool="train", domain=domain)
    out = {}
    for h in heads:
        if h["kind"] in ("regression", "landmarks"):
            for k in h["labels"]:
                v = np.asarray(lab[k], np.float64).reshape(n, -1)
                out[k] = (v.mean(0).astype(np.float32), np.maximum(v.std(0), 1e-3).astype(np.float32))
    return out


def train_supervised_student(student_cfg: StudentConfig, cfg: DistillConfig, synth_cfg: synth.SynthConfig,
                             out_dir: str, strategy=None, tasks=None, domain: str | None = None,
                             kind: str = "supervised_multitask", view: str = "embedding") -> dict:
    """The student's architecture and data budget (cfg.steps x cfg.batch_size fresh SynthFaces), trained
    directly on task labels, one head per task on the embedding (dropped afterwards).

    tasks=None: the source tasks' labels (identity, expression, pose, age, gender), the supervised
    control a user would pick instead of distillation. With every task of the run (source and novel) and
    domain="mixed" it is the per-task ceiling: what this architecture reaches when it sees the labels.
    Classification: cross-entropy; regression and landmarks: squared error of standardised targets;
    verification: CosFace on the train pool's identities.
    view: what the heads read (student.model.feature_model): "embedding" (the code) or "ladder" (every stage
    pooled, the view that is probed; 20 tasks through a 64-d code alone under-train the ceiling).
    """
    from face_transfer.data.tasks import TASKS
    from face_transfer.teachers import zoo

    strategy = strategy or tf.distribute.get_strategy()
    done = os.path.join(out_dir, STUDENT_JSON)
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    if tasks is None:
        tasks = [TASKS[n] for n in ("identity", "expression", "head_pose", "age", "gender")]
    heads = supervised_task_heads(tasks)
    domain = domain or cfg.domain
    label_keys = tuple(sorted({k for h in heads for k in h["labels"]}))
    stats = _label_stats(synth_cfg, heads, domain)
    keras.utils.set_random_seed(cfg.seed)
    os.makedirs(out_dir, exist_ok=True)
    n_ids = synth_cfg.n_train_identities

    def build():
        student = build_student(student_cfg, train_fast=True)
        emb = feature_model(student, view).output["features"]
        outs = {}
        for j, h in enumerate(heads):
            tag = f"sup{j}_" + "".join(c if c.isalnum() else "_" for c in h["name"])
            if h["kind"] == "verification":
                outs[h["name"]] = zoo.CosineLogits(n_ids, name=tag)(keras.layers.BatchNormalization(name=tag + "_bn")(emb))
            elif h["kind"] == "classification":
                outs[h["name"]] = keras.layers.Dense(h["classes"], name=tag)(emb)
            else:
                width = sum(int(np.prod(stats[k][0].shape)) for k in h["labels"])
                outs[h["name"]] = keras.layers.Dense(width, name=tag)(emb)
        return {"student": student, "multitask": keras.Model(student.input, outs, name="multitask")}

    def loss_fn(models, batch):
        images, labels = batch
        out = models["multitask"](images, training=True)
        total = 0.0
        for h in heads:
            pred = out[h["name"]]
            if h["kind"] == "verification":
                total = total + 0.2 * zoo.cosface_loss(labels["identity"], pred)
            elif h["kind"] == "classification":
                total = total + keras.losses.sparse_categorical_crossentropy(labels[h["labels"][0]], pred,
                                                                             from_logits=True)
            else:
                y = ops.concatenate([(ops.reshape(ops.cast(labels[k], "float32"), (-1, stats[k][0].size))
                                      - stats[k][0]) / stats[k][1] for k in h["labels"]], -1)
                total = total + ops.mean(ops.square(pred - y), -1)
        return total

    gb = cfg.batch_size
    dcfg = dataclasses.replace(cfg, domain=domain)
    t0 = time.time()
    hist = distribute.train_loop(
        strategy, build, loss_fn,
        lambda ctx, start: make_distill_dataset(synth_cfg, dcfg, ctx, start, gb, stream="supervised",
                                                label_keys=label_keys),
        lambda: _optimizer(cfg), cfg.steps, gb, checkpoint_dir=os.path.join(out_dir, "ckpt"),
        checkpoint_every=cfg.checkpoint_every,
        steps_per_execution=cfg.steps_per_execution, on_step=_Progress(cfg.steps, cfg.log_every, kind.split("_")[0]))
    student = _stock(hist["models"]["student"], student_cfg)
    recalibrate_batchnorm(student, _recalibration_batches(synth_cfg, dcfg))
    return _save_student(student, student_cfg, out_dir, strategy, {
        "kind": kind, "distill": dataclasses.asdict(dcfg), "tasks": [h["name"] for h in heads], "heads_on": view,
        "final_loss": _final_loss(hist, out_dir, strategy), "train_seconds_this_run": round(time.time() - t0, 1)})
