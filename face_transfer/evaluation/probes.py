"""Linear probes: one fixed protocol that turns frozen embeddings into 0-100 scores per task.
Owns the split, the per-kind probes (classification, regression, verification, landmarks) and seed aggregation.

Protocol (identical for every representation, so differences come from the features alone):

* Split: `split_indices(n, seed, cfg)` is a seeded permutation cut into train/val/test; it depends only
  on (n, seed, cfg), so every representation of an eval set sees exactly the same images in each split.
  Where the eval set has a group key (`EvalSet.group_key`, a user set's identity column), the split goes by
  group instead: all images of a person land in one split (so verification's val/test people are unseen
  in train). The synthetic sets have none and keep the image-level split.
* Features are standardised with a `StandardScaler` fitted on the train split.
* If the dimension exceeds `cfg.max_dim` (2048), features are projected on their top `max_dim`
  principal components (fitted on the standardised train split; deterministic, no random solver).
  With an L2 penalty this is exact when `n_train <= max_dim` (the optimum lies in the row space of
  the train features), so it only makes wide inputs such as raw pixels cheaper. Measured: projecting
  1500-d features to 1024 saved no time (the eigen-decomposition cost what the smaller LR saved).
* Probes are fitted on the **train split only**; the hyper-parameter (C, alpha, or the verification
  threshold) is chosen on val; the chosen train-fitted probe is evaluated once on test. No refit on
  train+val: it keeps val a clean selection set and costs nothing extra.
* classification: multinomial `LogisticRegression` (lbfgs) along the C grid with warm starts
  (small C first), score = 100 * test accuracy.
* regression: ridge on standardised features and standardised targets (solved for the whole alpha
  grid at once from one eigen-decomposition shared by all regression tasks of an eval set);
  mae in raw label units (mean over outputs), r2 (mean over outputs), score = 100 * max(r2, 0).
* verification: **no learned probe**. Balanced same/different pairs are drawn inside the val split and
  inside the test split (deterministic per seed); similarity is the cosine of the train-standardised
  features; the threshold maximising val-pair accuracy is applied to test pairs; score = 100 * accuracy.
* landmarks: ridge to the 10 coordinates; NME = mean point-to-point error / ground-truth inter-ocular
  distance, averaged over images; the baseline predicts the train-mean shape;
  score = 100 * max(0, 1 - nme / nme_mean_shape).
* User data: class labels may be ints, strings or bools (a class absent from train is simply never
  predicted); images whose label is NaN leave that task's splits; a set below MIN_IMAGES images, or a
  task left with too few labelled images, is an error naming the set, its tasks and the counts.

Speed: BLAS is limited to `cfg.blas_threads` threads while probing. On the shared 2-core machine the
small matrix products of lbfgs ran 10-18x faster single-threaded than with OpenBLAS's 2 threads.
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from face_transfer.data.tasks import KINDS, Task
from face_transfer.machine import usable_cores

# Keys of a probe result that are chosen hyper-parameters, not metrics.
HPARAM_KEYS = ("C", "alpha", "threshold")
EYES = (0, 1)  # (left_eye, right_eye) rows of the [5, 2] landmark array
# Fewest images an eval set may have: below this a probe's test split holds a handful of images and its
# score is noise (the split itself would work from 4). A user's tiny set fails here, naming set and tasks.
MIN_IMAGES = 10


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    seeds: tuple[int, ...] = (0, 1, 2)
    train_frac: float = 0.6
    val_frac: float = 0.2  # the rest is test
    # Logistic-regression C, chosen on val. 0.001 is included because with ~1500-d features and
    # ~2000 training images the strongest regularisation is often the best (measured).
    c_grid: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0)
    # Ridge alpha, chosen on val. Free to extend: all alphas come from one eigen-decomposition.
    # The large values matter when the dimension approaches the number of training images.
    alpha_grid: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
    max_train: int | None = None  # cap on probe training examples (the first ones of the permutation)
    verification_pairs: int = 2000  # pairs per split (half same identity, half different)
    max_dim: int | None = 2048  # PCA-project features above this dimension (see module docstring)
    max_iter: int = 300  # lbfgs budget per C (warm-started along the grid)
    tol: float = 1e-4
    blas_threads: int | None = 1  # None leaves the BLAS thread pool alone

    def __post_init__(self):
        if not self.seeds:
            raise ValueError("ProbeConfig.seeds: expected at least one seed")
        if not (0 < self.train_frac < 1 and 0 < self.val_frac < 1 and self.train_frac + self.val_frac < 1):
            raise ValueError(
                f"ProbeConfig: train_frac={self.train_frac}, val_frac={self.val_frac}; expected both in "
                "(0, 1) with train_frac + val_frac < 1 (the rest is the test split)")
        if not self.c_grid or not self.alpha_grid:
            raise ValueError("ProbeConfig: c_grid and alpha_grid must be non-empty")
        if self.max_train is not None and self.max_train < 2:
            raise ValueError(f"ProbeConfig.max_train={self.max_train}; expected None or >= 2")
        if self.verification_pairs < 2:
            raise ValueError(f"ProbeConfig.verification_pairs={self.verification_pairs}; expected >= 2")


def split_indices(n: int, seed: int, cfg: ProbeConfig,
                  groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) indices of a set of n images: disjoint, depending only on (n, seed, cfg, groups).

    With `groups` (one value per image, e.g. a person id), every group lands in exactly one split: groups
    are shuffled (seeded) and cut where the cumulative image count is nearest train_frac / val_frac of n,
    each split keeping at least one group. Within a split images keep the image-level permutation's order,
    so `cfg.max_train` still takes a random subset. Without groups the split is exactly the historical one.
    """
    n_train = int(round(n * cfg.train_frac))
    n_val = int(round(n * cfg.val_frac))
    if n_train < 2 or n_val < 1 or n - n_train - n_val < 1:
        raise ValueError(f"split_indices: n={n} images is too few for train_frac={cfg.train_frac}, "
                         f"val_frac={cfg.val_frac} (need >= 2 train, >= 1 val and >= 1 test image)")
    perm = np.random.default_rng([seed, n]).permutation(n)
    if groups is None:
        train, val, test = perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]
    else:
        train, val, test = _group_split(perm, np.asarray(groups), n_train, n_val, seed)
    if cfg.max_train is not None:
        train = train[:cfg.max_train]
    return train, val, test


def _group_split(perm: np.ndarray, groups: np.ndarray, n_train: int, n_val: int, seed: int):
    n = perm.size
    if groups.ndim != 1 or groups.shape[0] != n:
        raise ValueError(f"split_indices: groups has shape {groups.shape}; expected one value per image ({n},)")
    if groups.dtype.kind == "f" and not np.all(np.isfinite(groups)):
        raise ValueError("split_indices: groups contain NaN or inf; every image needs a group (person)")
    ids, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    g = ids.size
    if g < 3:
        raise ValueError(f"split_indices: {g} group(s) over {n} images; a split by group needs >= 3 groups "
                         "(one each for train, val and test)")
    order = np.random.default_rng([seed, n, g, 1]).permutation(g)  # groups in split order
    ends = np.cumsum(counts[order])  # images up to and including the k-th group of `order`
    # Cut after group k1 (train = order[:k1+1]) and k2, nearest the image targets, >= 1 group per split.
    k1 = int(np.argmin(np.abs(ends[:g - 2] - n_train)))
    k2 = k1 + 1 + int(np.argmin(np.abs(ends[k1 + 1:g - 1] - (n_train + n_val))))
    split_of_group = np.empty(g, np.int64)
    split_of_group[order[:k1 + 1]] = 0
    split_of_group[order[k1 + 1:k2 + 1]] = 1
    split_of_group[order[k2 + 1:]] = 2
    where = split_of_group[inv[perm]]
    train, val, test = perm[where == 0], perm[where == 1], perm[where == 2]
    if train.size < 2:
        raise ValueError(f"split_indices: the group split left {train.size} train image(s) of {n}; need >= 2")
    return train, val, test


class _PreparedSplit:
    """One representation on one eval set for one seed: standardised splits and a lazy spectral basis.

    Shared by all tasks of the eval set, so the scaler and the eigen-decomposition are computed once.
    """

    def __init__(self, features: np.ndarray, seed: int, cfg: ProbeConfig, name: str = "features",
                 groups: np.ndarray | None = None):
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
            raise ValueError(f"{name}: expected a non-empty 2-D array [N, D], got shape {features.shape}")
        if not np.issubdtype(features.dtype, np.number):
            raise ValueError(f"{name}: expected numeric features, got dtype {features.dtype}")
        features = features.astype(np.float32, copy=False)
        if not np.all(np.isfinite(features)):
            raise ValueError(f"{name}: features contain NaN or inf")
        self.cfg, self.seed, self.n = cfg, seed, features.shape[0]
        if self.n < MIN_IMAGES:
            raise ValueError(f"{name}: {self.n} images cannot be split for probing (need >= {MIN_IMAGES})")
        try:
            self.idx = split_indices(self.n, seed, cfg, groups)
        except ValueError as e:
            raise ValueError(f"{name}: {self.n} images cannot be split for probing ({e})") from e
        scaler = StandardScaler().fit(features[self.idx[0]])
        self.x = [scaler.transform(features[i]).astype(np.float32, copy=False) for i in self.idx]
        self._basis = None
        if cfg.max_dim is not None and features.shape[1] > cfg.max_dim:
            projected, s2 = self.basis()
            r = min(cfg.max_dim, s2.size)
            # PCA scores are the new features; their own basis is the identity with the same s^2.
            self._basis = ([p[:, :r] for p in projected], s2[:r])
            self.x = [p.astype(np.float32) for p in self._basis[0]]

    def basis(self):
        """([train, val, test] projected on V, eigenvalues s^2), V = right singular vectors of train.

        Built from the smaller Gram matrix in float64: 2-3x faster than an SVD here, and ridge's
        alpha >= 0.1 makes the squared condition number harmless.
        """
        if self._basis is None:
            xtr = self.x[0].astype(np.float64)
            n, d = xtr.shape
            if d <= n:
                s2, v = np.linalg.eigh(xtr.T @ xtr)
            else:
                s2, u = np.linalg.eigh(xtr @ xtr.T)
            order = np.argsort(s2)[::-1]
            s2 = s2[order]
            keep = s2 > max(s2[0], 1e-12) * 1e-10
            s2 = s2[keep]
            if d <= n:
                v = v[:, order][:, keep]
            else:
                v = xtr.T @ (u[:, order][:, keep] / np.sqrt(s2))
            v32 = v.astype(np.float32)  # float32 products: 2x faster, ample for probe predictions
            self._basis = ([(x @ v32).astype(np.float64) for x in self.x], s2)
        return self._basis


# --------------------------------------------------------------------------- labels


def _task_labels(task: Task, labels: dict, n: int) -> np.ndarray:
    missing = [k for k in task.labels if k not in labels]
    if missing:
        raise KeyError(f"task {task.name!r}: label key(s) {missing} not in the labels dict of eval set "
                       f"{task.eval_set!r} (available: {sorted(labels)})")
    arrays = [np.asarray(labels[k]) for k in task.labels]
    for k, a in zip(task.labels, arrays):
        if a.shape[0] != n:
            raise ValueError(f"task {task.name!r}: labels[{k!r}] has {a.shape[0]} rows but the features "
                             f"have {n}; expected one label per image")
    if task.kind == "landmarks":
        y = arrays[0]
        if y.ndim != 3 or y.shape[1:] != (5, 2):
            raise ValueError(f"task {task.name!r}: labels[{task.labels[0]!r}] has shape {y.shape}; "
                             "expected [N, 5, 2] (left_eye, right_eye, nose_tip, mouth_left, mouth_right)")
        return y.astype(np.float64)
    if task.kind == "regression":
        for k, a in zip(task.labels, arrays):
            if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
                raise ValueError(f"task {task.name!r} (regression): labels[{k!r}] has dtype {a.dtype}; "
                                 "expected numbers (NaN marks a missing value)")
        cols = [a.reshape(n, -1).astype(np.float64) for a in arrays]
        return np.concatenate(cols, axis=1)
    if len(arrays) != 1 or arrays[0].ndim != 1:
        raise ValueError(f"task {task.name!r} ({task.kind}): expected one 1-D label array, got "
                         f"{[a.shape for a in arrays]}")
    return arrays[0]


# --------------------------------------------------------------------------- probes


def _balanced_accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean per-class recall over the classes present in `true`: chance is 1/K whatever the class
    balance, so rare attributes (sunglasses, closed eyes) are not "solved" by predicting the majority."""
    with warnings.catch_warnings():
        # A predicted class absent from `true` is just a miss here; sklearn warns about it on every call.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(true, pred))


def _classification(prep: _PreparedSplit, y: np.ndarray, cfg: ProbeConfig, task: Task) -> dict:
    if y.dtype.kind == "f":
        ok = np.isfinite(y)
        if not ok.all():
            # A float class column with NaN: those images have no class and leave every split.
            prep = _subset(prep, ok)
            _check_split_sizes(prep, task, int(ok.sum()))
    # Any label type (ints, strings, bools) becomes class indices; a class absent from the train split
    # simply cannot be predicted (it counts as a missed class in the balanced accuracy).
    classes, y_int = np.unique(y, return_inverse=True)
    y_int = y_int.reshape(-1)
    ytr, yva, yte = (y_int[i] for i in prep.idx)
    xtr, xva, xte = prep.x
    if np.unique(ytr).size < 2:
        # A degenerate train split: the only sensible probe predicts its single class.
        pred = np.full_like(yte, ytr[0])
        bal = _balanced_accuracy(pred, yte)
        return {"accuracy": float(np.mean(yte == ytr[0])), "balanced_accuracy": bal, "score": 100.0 * bal,
                "C": float("nan")}
    # Balanced class weights and model selection on balanced accuracy: the score is balanced accuracy.
    clf = LogisticRegression(C=cfg.c_grid[0], max_iter=cfg.max_iter, tol=cfg.tol, warm_start=True,
                             class_weight="balanced")
    best = (-1.0, None, None)
    with warnings.catch_warnings():
        # A fixed iteration budget per C is part of the protocol; warm starts carry the rest.
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in sorted(cfg.c_grid):
            clf.set_params(C=c)
            clf.fit(xtr, ytr)
            val_bal = _balanced_accuracy(clf.predict(xva), yva)
            if val_bal > best[0]:
                best = (val_bal, c, clf.predict(xte))
    bal = _balanced_accuracy(best[2], yte)
    return {"accuracy": float(np.mean(best[2] == yte)), "balanced_accuracy": bal, "score": 100.0 * bal,
            "C": float(best[1])}


def _ridge_predictions(prep: _PreparedSplit, ytr_std: np.ndarray, alphas) -> tuple[list, list]:
    """Val and test predictions (standardised units) of ridge for every alpha."""
    (ptr, pva, pte), s2 = prep.basis()
    b = ptr.T @ ytr_std  # V^T X^T Y
    val, test = [], []
    for a in alphas:
        w = b / (s2 + a)[:, None]
        val.append(pva @ w)
        test.append(pte @ w)
    return val, test


def _ridge_select(prep: _PreparedSplit, y: np.ndarray, alphas) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Ridge on targets z-scored on the train split, alpha chosen by the validation MSE in those units (the mean
    over outputs of the standardised MSE): (the test prediction, z-scored; the train mean and std; the alpha's index)."""
    ytr, yva = y[prep.idx[0]], y[prep.idx[1]]
    mu, sd = _standardise_targets(ytr)
    val, test = _ridge_predictions(prep, (ytr - mu) / sd, alphas)
    k = int(np.argmin([np.mean((p - (yva - mu) / sd) ** 2) for p in val]))
    return test[k], mu, sd, k


def linear_r2(features: np.ndarray, target: np.ndarray, seed: int, cfg: ProbeConfig, name: str = "features") -> float:
    """How much of an embedding `target` [N, D] a representation holds linearly: the held-out fraction of its
    variance (every dimension z-scored on the train split, as the fusion's per-teacher R²) that ridge on `features`
    explains, alpha chosen on the validation split; the probes' splits and alpha grid."""
    y = np.asarray(target, np.float64)
    if y.ndim != 2 or y.shape[0] != np.shape(features)[0]:
        raise ValueError(f"linear_r2 {name}: target of shape {y.shape} for {np.shape(features)[0]} images; "
                         "expected [N, D] with the features' N")
    with threadpool_limits(limits=cfg.blas_threads):
        prep = _PreparedSplit(features, seed, cfg, name=name)
        pred, mu, sd, _ = _ridge_select(prep, y, cfg.alpha_grid)
        z = (y[prep.idx[2]] - mu) / sd
        return float(1.0 - np.sum((z - pred) ** 2) / max(np.sum((z - z.mean(axis=0)) ** 2), 1e-12))


def _finite_rows(y: np.ndarray) -> np.ndarray:
    return np.all(np.isfinite(y.reshape(y.shape[0], -1)), axis=1)


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean over outputs of 1 - SSE/SST (an output constant on test counts 1 if predicted exactly, else 0)."""
    sse = np.sum((y - pred) ** 2, axis=0)
    sst = np.sum((y - y.mean(axis=0)) ** 2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.where(sse == 0, 1.0, 0.0))
    return float(np.mean(r2))


def _standardise_targets(ytr: np.ndarray):
    mu, sd = ytr.mean(axis=0), ytr.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return mu, sd


def _regression(prep: _PreparedSplit, y: np.ndarray, cfg: ProbeConfig, task: Task) -> dict:
    ok = _finite_rows(y)
    if not ok.all():
        # Labels undefined for some images (NaN) are left out of every split.
        prep = _subset(prep, ok)
        _check_split_sizes(prep, task, int(ok.sum()))
    pred, mu, sd, k = _ridge_select(prep, y, cfg.alpha_grid)
    pred, yte = pred * sd + mu, y[prep.idx[2]]
    r2 = _r2(yte, pred)
    return {"mae": float(np.mean(np.abs(pred - yte))), "r2": r2, "score": 100.0 * max(r2, 0.0),
            "alpha": float(cfg.alpha_grid[k])}


def _nme(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean over images of the mean point-to-point error divided by the ground-truth inter-ocular distance."""
    iod = np.linalg.norm(gt[:, EYES[0]] - gt[:, EYES[1]], axis=-1)
    err = np.linalg.norm(pred - gt, axis=-1).mean(axis=1)
    return float(np.mean(err / np.maximum(iod, 1e-8)))


def _landmarks(prep: _PreparedSplit, y: np.ndarray, cfg: ProbeConfig, task: Task) -> dict:
    ok = _finite_rows(y)
    if not ok.all():
        prep = _subset(prep, ok)
        _check_split_sizes(prep, task, int(ok.sum()))
    ytr, yva, yte = (y[i] for i in prep.idx)
    flat = ytr.reshape(len(ytr), 10)
    mu, sd = _standardise_targets(flat)
    val, test = _ridge_predictions(prep, (flat - mu) / sd, cfg.alpha_grid)
    val_nme = [_nme((p * sd + mu).reshape(-1, 5, 2), yva) for p in val]
    k = int(np.argmin(val_nme))
    nme = _nme((test[k] * sd + mu).reshape(-1, 5, 2), yte)
    nme_mean = _nme(np.broadcast_to(ytr.mean(axis=0), yte.shape), yte)
    score = 100.0 * max(0.0, 1.0 - nme / nme_mean) if nme_mean > 0 else 0.0
    return {"nme": nme, "nme_mean_shape": nme_mean, "score": score, "alpha": float(cfg.alpha_grid[k])}


def _check_split_sizes(prep: _PreparedSplit, task: Task, n_labelled: int):
    sizes = [len(i) for i in prep.idx]
    if sizes[0] < 2 or sizes[1] < 1 or sizes[2] < 1:
        raise ValueError(f"task {task.name!r} (eval set {task.eval_set!r}): only {n_labelled} of {prep.n} "
                         f"images have finite labels, giving train/val/test = {sizes}; need >= 2/1/1")


def _subset(prep: _PreparedSplit, keep: np.ndarray) -> _PreparedSplit:
    """`prep` restricted to the images where `keep` is true, with the same standardisation."""
    out = object.__new__(_PreparedSplit)
    out.cfg, out.seed, out.n = prep.cfg, prep.seed, prep.n
    masks = [keep[i] for i in prep.idx]
    out.idx = [i[m] for i, m in zip(prep.idx, masks)]
    out.x = [x[m] for x, m in zip(prep.x, masks)]
    out._basis = None  # the train rows changed, so ridge's eigen-decomposition is redone lazily
    if masks[0].all():
        projected, s2 = prep.basis()
        out._basis = ([p[m] for p, m in zip(projected, masks)], s2)
    return out


def verification_pairs(identity: np.ndarray, num_pairs: int, rng: np.random.Generator,
                       name: str = "identity") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced pairs (a, b, same) of positions into `identity`: half same person (a != b), half not."""
    identity = np.asarray(identity)
    m = identity.size
    ids, inv, counts = np.unique(identity, return_inverse=True, return_counts=True)
    eligible = np.flatnonzero(counts[inv] >= 2)
    if eligible.size == 0 or ids.size < 2:
        raise ValueError(f"{name}: verification needs at least one identity with >= 2 images and >= 2 "
                         f"identities in a split; got {ids.size} identities over {m} images")
    n_pos = num_pairs // 2
    n_neg = num_pairs - n_pos
    order = np.argsort(inv, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(m, dtype=np.int64)
    rank[order] = np.arange(m) - starts[inv[order]]
    a = rng.choice(eligible, n_pos)
    c = counts[inv[a]]
    offset = (rank[a] + 1 + rng.integers(0, c - 1)) % c  # any member of the group except a itself
    b = order[starts[inv[a]] + offset]
    na, nb = rng.integers(0, m, n_neg), rng.integers(0, m, n_neg)
    for _ in range(100):
        clash = inv[na] == inv[nb]
        if not clash.any():
            break
        nb[clash] = rng.integers(0, m, int(clash.sum()))
    else:
        raise ValueError(f"{name}: could not draw different-identity pairs (one identity dominates)")
    same = np.concatenate([np.ones(n_pos, bool), np.zeros(n_neg, bool)])
    return np.concatenate([a, na]), np.concatenate([b, nb]), same


def _cosine(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return np.sum(xn[a] * xn[b], axis=1)


def best_threshold(sim: np.ndarray, same: np.ndarray) -> float:
    """The threshold t maximising the accuracy of `sim >= t` (midpoint between neighbouring scores)."""
    order = np.argsort(-sim, kind="stable")
    s, y = sim[order], same[order]
    # Accepting the top k pairs: correct = positives among them + negatives among the rest.
    correct = np.concatenate([[0], np.cumsum(y)]) + (np.sum(~y) - np.concatenate([[0], np.cumsum(~y)]))
    # Only cut between distinct values.
    valid = np.concatenate([[True], s[1:] < s[:-1], [True]])
    k = int(np.argmax(np.where(valid, correct, -1)))
    if k == 0:
        return float(s[0] + 1e-6)
    if k == len(s):
        return float(s[-1] - 1e-6)
    return float((s[k - 1] + s[k]) / 2)


def _verification(prep: _PreparedSplit, identity: np.ndarray, cfg: ProbeConfig, task: Task) -> dict:
    out = []
    for split in (1, 2):
        ids = identity[prep.idx[split]]
        rng = np.random.default_rng([prep.seed, split, 7919])
        a, b, same = verification_pairs(ids, cfg.verification_pairs, rng,
                                        f"task {task.name!r} ({('val', 'test')[split - 1]} split)")
        out.append((_cosine(prep.x[split], a, b), same))
    (sv, yv), (st, yt) = out
    thr = best_threshold(sv, yv)
    acc = float(np.mean((st >= thr) == yt))
    return {"accuracy": acc, "auc": float(roc_auc_score(yt, st)), "score": 100.0 * acc, "threshold": thr}


def _probe_prepared(task: Task, prep: _PreparedSplit, labels: dict, cfg: ProbeConfig) -> dict:
    if task.kind not in KINDS:
        raise ValueError(f"task {task.name!r}: kind {task.kind!r}; expected one of {KINDS}")
    y = _task_labels(task, labels, prep.n)
    if task.kind == "classification":
        return _classification(prep, y, cfg, task)
    if task.kind == "regression":
        return _regression(prep, y, cfg, task)
    if task.kind == "landmarks":
        return _landmarks(prep, y, cfg, task)
    return _verification(prep, y, cfg, task)


def probe_task(task: Task, features: np.ndarray, labels: dict, seed: int, cfg: ProbeConfig) -> dict:
    """Metrics of one task for one seed: the task's raw metrics plus "score" in [0, 100]."""
    with threadpool_limits(limits=cfg.blas_threads):
        groups = _set_groups([task], labels, np.shape(features)[0] if np.ndim(features) else 0)
        prep = _PreparedSplit(features, seed, cfg, groups=groups,
                              name=f"task {task.name!r} (eval set {task.eval_set!r})")
        return _probe_prepared(task, prep, labels, cfg)


def _set_groups(tasks: list[Task], labels: dict, n: int) -> np.ndarray | None:
    """The group labels splits go by for these tasks of one eval set (None: image-level split)."""
    keys = {t.group_key for t in tasks}
    if len(keys) > 1:
        raise ValueError(f"tasks {[t.name for t in tasks]} of eval set {tasks[0].eval_set!r} disagree on "
                         f"the group key of its split ({sorted(map(str, keys))}); one set has one split")
    key = keys.pop()
    if key is None:
        return None
    if key not in labels:
        raise KeyError(f"eval set {tasks[0].eval_set!r} splits by {key!r} (its identity column) but the "
                       f"labels dict has no such key (available: {sorted(labels)})")
    groups = np.asarray(labels[key])
    if groups.shape[:1] != (n,):
        raise ValueError(f"eval set {tasks[0].eval_set!r}: labels[{key!r}] (split groups) has shape "
                         f"{groups.shape}; expected one value per image ({n})")
    return groups


def _std(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.std(values, ddof=1)) if values.size > 1 else 0.0


def evaluate_representation(features_by_set: dict[str, np.ndarray], labels_by_set: dict[str, dict],
                            tasks: list[Task], cfg: ProbeConfig) -> dict:
    """{task: {"score_mean", "score_std", "scores", "raw", "raw_std", "hparams"}}; std is over seeds (ddof=1)."""
    for t in tasks:
        if t.eval_set not in features_by_set:
            raise KeyError(f"task {t.name!r} needs features of eval set {t.eval_set!r}; "
                           f"features_by_set has {sorted(features_by_set)}")
        if t.eval_set not in labels_by_set:
            raise KeyError(f"task {t.name!r} needs labels of eval set {t.eval_set!r}; "
                           f"labels_by_set has {sorted(labels_by_set)}")
    per_task = {t.name: [] for t in tasks}
    with threadpool_limits(limits=cfg.blas_threads):
        for set_name in dict.fromkeys(t.eval_set for t in tasks):
            set_tasks = [t for t in tasks if t.eval_set == set_name]
            groups = _set_groups(set_tasks, labels_by_set[set_name], np.shape(features_by_set[set_name])[0])
            for seed in cfg.seeds:
                prep = _PreparedSplit(features_by_set[set_name], seed, cfg, groups=groups,
                                      name=f"eval set {set_name!r} (tasks {[t.name for t in set_tasks]})")
                for t in set_tasks:
                    per_task[t.name].append(_probe_prepared(t, prep, labels_by_set[set_name], cfg))
    results = {}
    for t in tasks:
        runs = per_task[t.name]
        metrics = [k for k in runs[0] if k != "score" and k not in HPARAM_KEYS]
        scores = [float(r["score"]) for r in runs]
        results[t.name] = {
            "score_mean": float(np.mean(scores)),
            "score_std": _std(scores),
            "scores": scores,
            "raw": {k: float(np.mean([r[k] for r in runs])) for k in metrics},
            "raw_std": {k: _std([r[k] for r in runs]) for k in metrics},
            "hparams": {k: [float(r[k]) for r in runs] for k in HPARAM_KEYS if k in runs[0]},
        }
    return results


def group_means(results_for_rep: dict, tasks: list[Task]) -> dict:
    """Mean score over source / novel / all tasks: the group mean per seed, then mean and std over seeds."""
    out = {}
    groups = {"source": [t for t in tasks if t.source], "novel": [t for t in tasks if not t.source],
              "all": list(tasks)}
    for g, members in groups.items():
        rows = [results_for_rep[t.name]["scores"] for t in members if t.name in results_for_rep]
        if not rows:
            out[f"mean_{g}"], out[f"std_{g}"], out[f"scores_{g}"] = float("nan"), float("nan"), []
            continue
        n_seeds = min(len(r) for r in rows)
        per_seed = np.mean([r[:n_seeds] for r in rows], axis=0)
        out[f"mean_{g}"] = float(np.mean(per_seed))
        out[f"std_{g}"] = _std(per_seed)
        out[f"scores_{g}"] = [float(s) for s in per_seed]
    return out


def probe_workers(n_reps: int, workers: int | None = None) -> int:
    """How many processes probe `n_reps` representations: `workers`, or one per usable core (usable_cores)."""
    return max(1, min(int(workers if workers is not None else usable_cores()), n_reps))


def evaluate_all(reps: dict[str, dict[str, np.ndarray]], labels_by_set: dict[str, dict],
                 tasks: list[Task], cfg: ProbeConfig, progress: bool = True, workers: int | None = None) -> dict:
    """{representation: evaluate_representation(...)}, one progress line per representation.

    Representations are probed in parallel by `probe_workers(len(reps), workers)` spawned processes (each
    single-threaded BLAS, see the module docstring; they import numpy and scikit-learn only). Every probe
    is a pure function of its inputs, so the results do not depend on the number of workers.
    """
    n = probe_workers(len(reps), workers)

    def report(i, name, results, seconds):
        if progress:
            g = group_means(results, tasks)
            dims = sorted({np.shape(reps[name][s])[1] for s in dict.fromkeys(t.eval_set for t in tasks)})
            print(f"[probes {i}/{len(reps)}] {name} (dim {','.join(map(str, dims))}): "
                  f"novel {g['mean_novel']:.1f}±{g['std_novel']:.1f}  source {g['mean_source']:.1f}"
                  f"±{g['std_source']:.1f}  all {g['mean_all']:.1f}  ({seconds:.1f}s)", file=sys.stdout, flush=True)

    results = {}
    if n == 1:
        for i, (name, features_by_set) in enumerate(reps.items(), 1):
            start = time.perf_counter()
            results[name] = evaluate_representation(features_by_set, labels_by_set, tasks, cfg)
            report(i, name, results[name], time.perf_counter() - start)
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    start = time.perf_counter()
    # spawn, not fork: the parent holds TensorFlow's and BLAS's thread pools, which a forked child inherits
    # in an undefined state.
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        with main_module_hidden():  # the workers start during the submits
            futures = {pool.submit(_evaluate_timed, reps[name], labels_by_set, tasks, cfg): name for name in reps}
        for i, future in enumerate(as_completed(futures), 1):
            name = futures[future]
            results[name], seconds = future.result()
            report(i, name, results[name], seconds)
    if progress:
        print(f"[probes] {len(reps)} representations in {time.perf_counter() - start:.1f} s on {n} processes",
              file=sys.stdout, flush=True)
    return {name: results[name] for name in reps}


@contextlib.contextmanager
def main_module_hidden():
    """A spawned worker first re-imports the parent's __main__ (e.g. trainers.pipeline, which loads TensorFlow:
    seconds and hundreds of MB per worker). The probe workers need only this module, so while they start the
    parent's main module does not name itself."""
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__spec__", "__file__") if hasattr(main, k)}
    for k in saved:
        setattr(main, k, None) if k == "__spec__" else delattr(main, k)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


def _evaluate_timed(features_by_set, labels_by_set, tasks, cfg):
    start = time.perf_counter()
    return evaluate_representation(features_by_set, labels_by_set, tasks, cfg), time.perf_counter() - start
