"""Representations of the eval sets, computed once and cached as .npy under `features/`: pixels, a random
student, every teacher, the concatenation, PCA, a random projection and the AE code.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from face_transfer.core.fileio import atomic_output
from face_transfer.stages import inputs
from face_transfer.stages.rundir import Run


def features_cached(run: Run, rep: str, compute):
    """{eval_set: features} for one representation, cached as .npy files under features/."""
    out = {}
    for name in inputs.eval_set_names(run):
        path = run.paths.feature_file(rep, name)
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            feats = np.asarray(compute(name), np.float32)
            if not np.all(np.isfinite(feats)):
                raise FloatingPointError(f"representation {rep!r} has NaN/Inf features on eval set {name}")
            with atomic_output(path, suffix=".npy") as tmp:
                np.save(tmp, feats)
        out[name] = np.load(path)
    return out


def pixel_features(images: np.ndarray, size: int = 16) -> np.ndarray:
    """The floor: raw pixels, area-downsampled to size x size x 3, in [0, 1]."""
    n, s = images.shape[0], images.shape[1]
    f = s // size
    x = images[:, :f * size, :f * size].astype(np.float32).reshape(n, size, f, size, f, 3).mean((2, 4))
    return (x / 255.0).reshape(n, -1)


def predict(model, images, batch=256):
    return np.asarray(model.predict(images, batch_size=batch, verbose=0), np.float32)


def student_view(run: Run, model):
    """The run's view of a student-architecture network (config `student_view`): image -> {"features",
    "embedding"} (student.model.feature_model)."""
    from face_transfer.student.model import feature_model
    return feature_model(model, run.cfg.student_view)


def predict_student(run: Run, model, images, batch=256):
    """The features of a student-architecture network that the probes and the analyser's heads read."""
    out = student_view(run, model).predict(images, batch_size=batch, verbose=0)
    return np.asarray(out["features"], np.float32)



def teacher_reps(run: Run, teachers, images) -> dict:
    """pixels, random student, each teacher, concat, PCA, random projection and AE code at d."""
    from face_transfer.fusion.autoencoder import Fusion, fit_pca, random_projection, train_fusion
    from face_transfer.student.model import build_student
    from face_transfer.teachers.cache import load_embedding_cache
    import keras

    reps = {"pixels": features_cached(run, "pixels", lambda s: pixel_features(images[s]))}

    def random_student(s):
        keras.utils.set_random_seed(run.cfg.seed + 12345)
        return predict_student(run, build_student(run.cfg.student, name="random_student"), images[s])
    reps["random_student"] = features_cached(run, "random_student", random_student)
    per_teacher = {}
    for t in teachers:
        per_teacher[t.name] = features_cached(run, f"teacher__{t.name}", lambda s, t=t: t.embed(images[s]))
        reps[t.name] = per_teacher[t.name]
    fusion = Fusion.load(run.paths.fusion_dir)
    std = fusion.standardizer
    concat = {s: std.concat({k: per_teacher[k][s] for k in std.teachers}) for s in inputs.eval_set_names(run)}
    reps["concat"] = concat
    d = fusion.code_dim
    _, cache = load_embedding_cache(run.paths.cache_dir)
    cache_concat = std.concat(cache)
    pca = fit_pca(cache_concat, d, run.cfg.seed)
    rp = random_projection(cache_concat.shape[1], d, run.cfg.seed)
    reps["pca"] = features_cached(run, f"pca_d{d}", lambda s: pca(concat[s]))
    reps["random_projection"] = features_cached(run, f"rp_d{d}", lambda s: rp(concat[s]))
    reps["ae"] = features_cached(run, f"ae_d{d}", lambda s: fusion.encoder.predict(concat[s], verbose=0))
    # the other standardisation (z-score vs isotropic PHI-S), same d and AE, for the comparison
    other = "phi_s" if run.cfg.fusion.standardize == "zscore" else "zscore"
    alt = train_fusion(cache, dataclasses.replace(run.cfg.fusion, standardize=other), run.paths.fusion_standardize_dir(other))
    alt_concat = {s: alt.standardizer.concat({k: per_teacher[k][s] for k in alt.standardizer.teachers})
                  for s in inputs.eval_set_names(run)}
    reps[f"ae_{other}"] = features_cached(run, f"ae_{other}_d{d}",
                                           lambda s: alt.encoder.predict(alt_concat[s], verbose=0))
    return reps

