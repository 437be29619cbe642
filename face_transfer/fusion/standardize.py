"""Per-teacher standardisation of embeddings, so that no teacher dominates the fusion by scale.

Both methods are one affine map per teacher, y = (x - mean) @ W, then a block weight 1/sqrt(D')
so every teacher carries the same total variance in the concatenation:
  - "zscore": W = diag(1/std) (per-dimension z-scoring);
  - "phi_s":  isotropic (PHI-S, Ranzinger et al. 2024): rotate to the principal axes, spread the
    variance evenly with a normalised Hadamard matrix, then ONE scale per teacher. Invertible,
    keeps the teacher's geometry (no dimension is blown up from noise, unlike z-scoring).
"""
from __future__ import annotations

import numpy as np

METHODS = ("zscore", "phi_s")


def _hadamard(n: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(h.shape[0])


class Standardizer:
    """Fitted per-teacher affine maps; saves to / loads from one .npz file."""

    def __init__(self, teachers, means, mats, method):
        self.teachers = list(teachers)
        self.means = {k: np.asarray(means[k], np.float32) for k in self.teachers}
        self.mats = {k: np.asarray(mats[k], np.float32) for k in self.teachers}
        self.method = method

    @classmethod
    def fit(cls, embeddings: dict[str, np.ndarray], method: str = "zscore", eps: float = 1e-6):
        if method not in METHODS:
            raise ValueError(f"standardisation method {method!r}; expected one of {METHODS}")
        means, mats = {}, {}
        for name, x in embeddings.items():
            x = np.asarray(x, np.float64)
            mu = x.mean(0)
            xc = x - mu
            if method == "zscore":
                w = np.diag(1.0 / (xc.std(0) + eps))
                out_dim = x.shape[1]
            else:
                cov = xc.T @ xc / max(1, len(x) - 1)
                evals, evecs = np.linalg.eigh(cov)
                h = _hadamard(x.shape[1])
                out_dim = h.shape[0]  # next power of two: Hadamard needs it; extra dims carry ~0
                rot = np.zeros((x.shape[1], out_dim))
                rot[:, :x.shape[1]] = evecs
                w = rot @ h.T
                # After the Hadamard rotation every output dim has variance mean(evals) * D / D'.
                alpha = np.sqrt(max(evals.clip(min=0).sum() / out_dim, eps))
                w = w / alpha
            means[name] = mu
            mats[name] = w / np.sqrt(out_dim)  # block weight: each teacher has total variance ~1
        return cls(list(embeddings), means, mats, method)

    @property
    def dims(self) -> dict[str, int]:
        return {k: int(self.mats[k].shape[1]) for k in self.teachers}

    @property
    def total_dim(self) -> int:
        return int(sum(self.dims.values()))

    def transform(self, embeddings: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [k for k in self.teachers if k not in embeddings]
        if missing:
            raise KeyError(f"embeddings lack teachers {missing}; the standardiser was fitted on {self.teachers}")
        return {k: ((np.asarray(embeddings[k], np.float32) - self.means[k]) @ self.mats[k]).astype(np.float32)
                for k in self.teachers}

    def concat(self, embeddings: dict[str, np.ndarray]) -> np.ndarray:
        """Standardised, balanced concatenation [N, total_dim] (teachers in fitted order)."""
        z = self.transform(embeddings)
        return np.concatenate([z[k] for k in self.teachers], axis=1)

    def split(self, concat: np.ndarray) -> dict[str, np.ndarray]:
        out, i = {}, 0
        for k in self.teachers:
            d = self.dims[k]
            out[k] = concat[..., i:i + d]
            i += d
        return out

    def save(self, path: str):
        arrays = {"teachers": np.array(self.teachers), "method": np.array(self.method)}
        for k in self.teachers:
            arrays[f"mean__{k}"] = self.means[k]
            arrays[f"mat__{k}"] = self.mats[k]
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: str):
        with np.load(path) as z:
            teachers = [str(t) for t in z["teachers"]]
            return cls(teachers, {k: z[f"mean__{k}"] for k in teachers},
                       {k: z[f"mat__{k}"] for k in teachers}, str(z["method"]))
