"""What the distilled and the supervised student trainers share: the optimizer, progress line, SynthFaces-as-a-
source, BatchNorm recalibration, and the saved student (model.keras + student.json) with its loss record.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys

import keras
import numpy as np
from tqdm import tqdm

from face_transfer import distribute
from face_transfer.core.fileio import write_json
from face_transfer.core.runpaths import STUDENT_JSON
from face_transfer.data import synth
from face_transfer.data.sources import SynthSource
from face_transfer.integrity import load_keras_model
from face_transfer.student.config import StudentConfig
from face_transfer.student.model import count_flops, count_params, student_from_weights


class StepProgress:
    """on_step callback: one tqdm line on stderr (the custom loop has no Keras progress bar), refreshed every
    `every` steps and at the last, with the loss, the mean rate and the ETA of the steps run in this process."""

    def __init__(self, total, every, label):
        self.total, self.every, self.label, self.bar = total, every, label, None

    def __call__(self, step, logs):
        if self.bar is None:  # a resumed run starts at its checkpoint's step: rate and ETA count from there
            self.bar = tqdm(total=self.total, initial=step - 1, unit=" steps", file=sys.stderr, postfix=[float("nan")],
                            bar_format=f"  {self.label}: step {{n}}/{{total}}  loss {{postfix[0]:.4f}}  "
                                       "{rate_fmt}  ETA {remaining}",
                            mininterval=0, smoothing=0, delay=1e-9)  # no line before the first logged step
        if step % self.every and step != self.total:
            return
        self.bar.postfix[0] = logs["loss"]
        if step == self.total:
            self.bar.n = step
            self.bar.close()  # draws the last line once, then the newline
        else:
            self.bar.update(step - self.bar.n)


def make_optimizer(cfg):
    """AdamW with a cosine decay over the run's optimizer updates: steps x echo (DistillConfig.echo)."""
    updates = cfg.steps * getattr(cfg, "echo", 1)
    sched = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, updates, alpha=0.02)
    return keras.optimizers.AdamW(sched, weight_decay=cfg.weight_decay)


def final_loss(hist, out_dir, strategy):
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
        write_json(path, {"final_loss": loss, "step": hist.get("final_step")})
    return loss


def _tail_mean(losses, k=20):
    return float(np.mean(losses[-k:])) if losses else None


def save_student(student, student_cfg, out_dir, strategy, extra):
    record = {"config": dataclasses.asdict(student_cfg), "params": count_params(student),
              "mflops": count_flops(student) / 1e6, **extra}
    if distribute.is_chief(strategy):
        student.save(os.path.join(out_dir, "model.keras"))
        write_json(os.path.join(out_dir, STUDENT_JSON), record)
    return record


def load_student(out_dir: str) -> keras.Model:
    if not os.path.exists(os.path.join(out_dir, STUDENT_JSON)):
        raise FileNotFoundError(f"{out_dir}: no {STUDENT_JSON}; the student is not trained (yet)")
    return load_keras_model(os.path.join(out_dir, "model.keras"), "student model")


def stock_student(trained: keras.Model, student_cfg: StudentConfig) -> keras.Model:
    """The trained student (built with train_fast) as stock Keras layers: what is saved, exported and probed."""
    return student_from_weights(trained, "keras", student_cfg, name=trained.name)


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


def recalibration_batches(source, cfg, n_batches: int = 16):
    source = as_source(source, cfg)
    n = source.count(n_batches * cfg.batch_size)
    for start in range(0, n - cfg.batch_size + 1 if n >= cfg.batch_size else 1, cfg.batch_size):
        yield source.images(start, min(n, start + cfg.batch_size), "bn_recalibration")


def as_source(source, cfg):
    """A SynthConfig means SynthFaces in the distillation domain (the library's long-standing call form)."""
    if isinstance(source, synth.SynthConfig):
        return SynthSource(source, domain=cfg.domain)
    return source
