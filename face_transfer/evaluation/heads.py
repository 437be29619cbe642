"""Task heads for the exported multi-task analyser: linear probes fitted on the student embedding.

Same probe family as the evaluation suite (standardise, logistic regression / ridge), fitted on a
whole eval set, returned as plain arrays that `deploy.savedmodel.build_analyzer` turns into layers.
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge

from face_transfer.data.tasks import Task

# Tasks that make sense as analyser outputs on a photo (domain-variant and verification tasks do not).
ANALYZER_TASKS = ("expression", "head_pose", "age", "gender", "glasses", "sunglasses", "beard", "hair_color",
                  "hair_style", "eyes_closed", "mouth_open", "smile", "landmarks", "illumination", "mask", "hat",
                  "occlusion")


def fit_head(task: Task, features: np.ndarray, labels: dict, c: float = 0.1, alpha: float = 10.0) -> dict:
    x = np.asarray(features, np.float64)
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / scale
    head = {"kind": task.kind, "mean": mean.astype(np.float32), "scale": scale.astype(np.float32)}
    if task.kind == "classification":
        y = np.asarray(labels[task.labels[0]]).astype(np.int64)
        clf = LogisticRegression(C=c, max_iter=500).fit(z, y)
        coef, intercept = clf.coef_.T, clf.intercept_
        if coef.shape[1] == 1:  # binary: sklearn keeps one column; make it a 2-way softmax
            coef = np.concatenate([-coef / 2, coef / 2], 1)
            intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
        head.update(coef=coef.astype(np.float32), intercept=intercept.astype(np.float32),
                    classes=[int(k) for k in clf.classes_])
        return head
    if task.kind == "landmarks":
        y = np.asarray(labels[task.labels[0]], np.float64).reshape(len(x), -1)
    else:
        y = np.stack([np.asarray(labels[k], np.float64) for k in task.labels], 1)
    ym, ys = y.mean(0), y.std(0) + 1e-9
    reg = Ridge(alpha=alpha).fit(z, (y - ym) / ys)
    head.update(coef=np.asarray(reg.coef_).reshape(y.shape[1], -1).T.astype(np.float32),
                intercept=np.asarray(reg.intercept_).reshape(y.shape[1]).astype(np.float32),
                target_mean=ym.astype(np.float32), target_scale=ys.astype(np.float32),
                outputs=list(task.labels))
    return head


def fit_heads(task_names, features: np.ndarray, labels: dict, tasks: dict) -> dict:
    """{output name: head} for the analyser. Multi-output regressions (head pose) become one
    head per label (yaw, pitch, roll, ...): clearer outputs, and XNNPACK fails to prepare int8
    fully-connected layers with 2-3 outputs followed by a dequantise (seen with ai-edge-litert 2.3)."""
    import dataclasses
    heads = {}
    for name in task_names:
        task = tasks[name]
        if task.kind == "regression" and len(task.labels) > 1:
            for key in task.labels:
                heads[key] = fit_head(dataclasses.replace(task, labels=(key,)), features, labels)
        else:
            heads[name] = fit_head(task, features, labels)
    return heads
