"""Distilling the fused teacher into the student: the training run (its DistillConfig is in student/config.py).

The student sees only the image; its target is the fusion auto-encoder's code of the teacher
ensemble's embeddings (computed in-graph on every fresh face, or read from the embedding cache).
Losses are in losses.py, input augmentation in augment.py, the supervised control in supervised.py.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import keras
import tensorflow as tf

from face_transfer.core.fileio import write_json
from keras import ops

from face_transfer import distribute
from face_transfer.student.augment import augment_batch, degrade, mix_faces
from face_transfer.student.config import BLOCK_LOSSES, CODE_LOSSES, DistillConfig, StudentConfig
from face_transfer.student.losses import (balanced_angle_losses, block_sq_losses, build_ladder_residual,
                                          build_teacher_heads, cos_smooth_l1_losses, cosine_code_loss, l2_code_loss, relational_loss,
                                          teacher_dropping)
from face_transfer.student.model import build_student, count_params, feature_model
from face_transfer.student.training import (STUDENT_JSON, StepProgress, as_source, final_loss, make_optimizer,
                                            recalibrate_batchnorm, recalibration_batches, save_student,
                                            stock_student)


# ---- configuration ---------------------------------------------------------------------------------


def make_source_dataset(source, cfg: DistillConfig, input_context, start_step: int, global_batch: int,
                        stream: str = "distill"):
    """Per-replica batches of unlabelled faces from any source, augmented deterministically per position.

    With cfg.noise > 0 each element is a pair (clean, degraded): the targets see the clean faces, the
    student the degraded ones; the degradation is a function of the stream position (the global step's
    example indices, make_step_index_dataset's convention, which every source follows).
    """
    aug = (lambda images, idx: augment_batch(images, idx)) if cfg.augment else None
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


BLOCK_LOSS_FNS = {"teacher_space": block_sq_losses, "cos_sl1": cos_smooth_l1_losses,
                  "balanced_angle": balanced_angle_losses}  # [B, teachers] each; keys: config.BLOCK_LOSSES


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
    if cfg.proxy_width > 0:
        return distill_via_proxy(student_cfg, cfg, source, build_targets_fn, out_dir, strategy, decoder_fn, dims,
                                 target_concat_fn)
    keras.utils.set_random_seed(cfg.seed)
    os.makedirs(out_dir, exist_ok=True)
    source = as_source(source, cfg)

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

    def prepare(models, batch):
        # the teachers' forward pass: once per batch, outside the gradient tape (cfg.echo updates reuse it)
        clean, seen = batch if _student_only_noise(cfg) else (batch, batch)
        return seen, models["targets"](clean, training=False)

    def loss_fn(models, prepared):
        seen, target = prepared
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
        per_teacher = BLOCK_LOSS_FNS[cfg.loss](blocks, target, dims)
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
        lambda: make_optimizer(cfg), cfg.steps, gb, checkpoint_dir=os.path.join(out_dir, "ckpt"),
        checkpoint_every=cfg.checkpoint_every,
        steps_per_execution=cfg.steps_per_execution, on_step=StepProgress(cfg.steps, cfg.log_every, "distill"),
        prepare_fn=prepare, echo=cfg.echo)
    student = stock_student(hist["models"]["student"], student_cfg)
    recalibrate_batchnorm(student, recalibration_batches(source, cfg))
    extra = {key: count_params(hist["models"][k]) for k, key in (("heads", "teacher_heads_params"),
                                                                 ("residual", "ladder_residual_params"))
             if k in hist["models"]}
    record = save_student(student, student_cfg, out_dir, strategy, {
        "kind": "distilled", "distill": dataclasses.asdict(cfg), "final_loss": final_loss(hist, out_dir, strategy),
        "train_seconds_this_run": round(time.time() - t0, 1), "resumed_from_step": hist["start_step"],
        "threads": training_threads(), **extra})
    return record


def training_threads() -> int:
    """CPU threads this process trains with: TensorFlow's intra-op limit (set when networks train side by side,
    one process each) or, unset, every usable core. The distillation's FLOP utilisation is measured against them."""
    import tensorflow as tf
    from face_transfer.machine import usable_cores
    limit = tf.config.threading.get_intra_op_parallelism_threads()
    return min(limit, usable_cores()) if limit > 0 else usable_cores()


def distill_via_proxy(student_cfg: StudentConfig, cfg: DistillConfig, source, build_targets_fn, out_dir: str,
                      strategy=None, decoder_fn=None, dims=None, target_concat_fn=None) -> dict:
    """EUPE's two-stage recipe: a proxy (the student's architecture, cfg.proxy_width times wider) distilled from
    the fused teachers into `<out_dir>/proxy/`, then the student distilled from the frozen proxy with the same
    loss: its code is the code target, and decoder(proxy code) the teacher blocks (block losses; the AE code
    anchor then reads encoder(decoder(proxy code))). Both stages resumable; the record holds the proxy's."""
    from face_transfer.student.training import load_student
    one_stage = dataclasses.replace(cfg, proxy_width=0.0)
    proxy_cfg = dataclasses.replace(student_cfg, width=student_cfg.width * cfg.proxy_width)
    proxy_dir = os.path.join(out_dir, "proxy")
    print(f"  EUPE stage 1: proxy (width x{cfg.proxy_width}) from the fused teachers", flush=True)
    proxy_rec = distill_student(proxy_cfg, one_stage, source, build_targets_fn, proxy_dir, strategy,
                                decoder_fn, dims, target_concat_fn)
    size = student_cfg.input_size

    def proxy_model(decode: bool):
        proxy = load_student(proxy_dir)
        proxy.trainable = False
        images = keras.Input((size, size, 3), dtype="uint8", name="image")
        out = proxy(ops.cast(images, "float32"), training=False)
        if decode:
            dec = decoder_fn()
            dec.trainable = False
            out = dec(out, training=False)
        m = keras.Model(images, out, name="proxy_concat" if decode else "proxy_code")
        m.trainable = False
        return m

    block = cfg.loss in BLOCK_LOSSES
    print(f"  EUPE stage 2: the student from the frozen proxy ({proxy_rec['params']:,} params)", flush=True)
    rec = distill_student(student_cfg, one_stage, source,
                          build_targets_fn if block else (lambda: proxy_model(False)), out_dir, strategy,
                          decoder_fn, dims, (lambda: proxy_model(True)) if block else None)
    rec = {**rec, "distill": dataclasses.asdict(cfg),
           "proxy": {k: proxy_rec.get(k) for k in ("params", "mflops", "final_loss", "train_seconds_this_run")}}
    rec["train_seconds_this_run"] = round(rec.get("train_seconds_this_run", 0.0)
                                          + (proxy_rec.get("train_seconds_this_run") or 0.0), 1)
    if distribute.is_chief(strategy or tf.distribute.get_strategy()):
        write_json(os.path.join(out_dir, STUDENT_JSON), rec)
    return rec


def find_encoder(fused: keras.Model, concat_dim: int, code_dim: int) -> keras.Model:
    """The AE encoder inside a fused teacher (images -> concat -> encoder -> code): the nested model
    mapping the standardised concatenation to the code, so a code target costs no second teacher pass."""
    for layer in fused.layers:
        if isinstance(layer, keras.Model) and len(layer.inputs) == 1 and \
                tuple(layer.inputs[0].shape[1:]) == (concat_dim,) and tuple(layer.outputs[0].shape[1:]) == (code_dim,):
            return layer
    raise ValueError(f"find_encoder: {fused.name} has no nested model [{concat_dim}] -> [{code_dim}]")
