"""The distillation losses, pure functions per example (code, teacher-space, UNIC, AMoE relational), and
the trainable heads the block losses read teacher blocks from (dropped after training).
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops


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


def balanced_angle_losses(pred_concat, target_concat, dims: dict):
    """[B, teachers]: C-RADIOv4's balanced summary loss, per teacher block the angle between the student's
    prediction and the teacher's (standardised) embedding, in units of pi/2.

    An angle is scale free and bounded, so a teacher whose block has a large error in norm (a block the code
    reconstructs badly, or one whose features are spread wide) cannot dominate the sum as it does in a squared
    error; every teacher's term lies in [0, 2] with 1 for an orthogonal (uninformative) prediction.
    """
    out = []
    for (p, _), (t, _) in zip(_blocks(pred_concat, dims), _blocks(target_concat, dims)):
        u = p / (ops.norm(p, axis=-1, keepdims=True) + 1e-6)
        v = t / (ops.norm(t, axis=-1, keepdims=True) + 1e-6)
        # Kahan's angle 2 atan2(|u - v|, |u + v|): accurate near 0 and pi where arccos(cos) loses float32 digits
        # and its slope is infinite; the 1e-12 keeps the gradient finite at an exact match
        diff = ops.sqrt(ops.sum(ops.square(u - v), -1) + 1e-12)
        summ = ops.sqrt(ops.sum(ops.square(u + v), -1) + 1e-12)
        out.append(2.0 * ops.arctan2(diff, summ) / (0.5 * np.pi))
    return ops.stack(out, axis=-1)


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
