"""Supervised students: the student's architecture and data budget trained on task labels directly, the
multi-task control (source tasks) and the per-task ceiling (every task, mixed domains).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from face_transfer import distribute
from face_transfer.data import synth
from face_transfer.data.tasks import TASKS
from face_transfer.student.augment import augment_batch
from face_transfer.student.config import DistillConfig
from face_transfer.student.config import StudentConfig
from face_transfer.student.model import build_student, feature_model
from face_transfer.student.training import (STUDENT_JSON, StepProgress, final_loss, make_optimizer,
                                            recalibrate_batchnorm, recalibration_batches, save_student,
                                            stock_student)
from face_transfer.teachers import zoo


def make_distill_dataset(synth_cfg: synth.SynthConfig, cfg: DistillConfig, input_context, start_step: int,
                         global_batch: int, stream: str = "distill", label_keys=()):
    """Per-replica batches of fresh faces (a pure function of the global step: exact resume)."""
    size = synth_cfg.image_size
    _, sample = synth.render_faces(synth_cfg, np.arange(1), stream=stream, domain=cfg.domain)
    sig = {k: (sample[k].dtype, sample[k].shape[1:]) for k in label_keys}

    def render(idx):
        images, labels = synth.render_faces(synth_cfg, idx, stream=stream, pool="train", domain=cfg.domain)
        if cfg.augment:
            images = augment_batch(images, idx, flip=not label_keys)
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
        lambda: make_optimizer(cfg), cfg.steps, gb, checkpoint_dir=os.path.join(out_dir, "ckpt"),
        checkpoint_every=cfg.checkpoint_every,
        steps_per_execution=cfg.steps_per_execution, on_step=StepProgress(cfg.steps, cfg.log_every, kind.split("_")[0]))
    student = stock_student(hist["models"]["student"], student_cfg)
    recalibrate_batchnorm(student, recalibration_batches(synth_cfg, dcfg))
    return save_student(student, student_cfg, out_dir, strategy, {
        "kind": kind, "distill": dataclasses.asdict(dcfg), "tasks": [h["name"] for h in heads], "heads_on": view,
        "final_loss": final_loss(hist, out_dir, strategy), "train_seconds_this_run": round(time.time() - t0, 1)})
