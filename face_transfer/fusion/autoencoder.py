"""The fusion auto-encoder (the paper's common embedding) and the baselines it is compared with.

encode: standardised, balanced concatenation of the teacher embeddings -> code [N, d];
decode: code -> every teacher's standardised embedding; loss balanced across teachers, plus (relational_weight)
a term keeping every teacher's batch cosine similarities in the code.
"""
from __future__ import annotations

import dataclasses
import json
import os

import keras
import numpy as np
from keras import layers, ops

from face_transfer.core.fileio import write_json
from face_transfer.core.runpaths import FUSION_JSON
from face_transfer.integrity import load_keras_model

from face_transfer.fusion.config import FusionConfig
from face_transfer.fusion.standardize import Standardizer
from face_transfer.student.training import recalibrate_batchnorm


def build_autoencoder(input_dim: int, dims: dict[str, int], cfg: FusionConfig, pca=None):
    """(autoencoder, encoder, decoder) Keras models; the decoder outputs the concatenation.

    `pca` (cfg.pca_init; `pca_basis`: mean [D], components [d, D], explained variance [d]): each side is PCA's
    linear map plus a zero-initialised MLP branch, so the untrained AE is whitened PCA."""
    inp = keras.Input((input_dim,), name="teachers_concat")
    x = layers.GaussianNoise(cfg.input_noise * np.sqrt(1.0 / max(1, len(dims))), name="noise")(inp)
    enc_in = keras.Input((input_dim,), name="enc_in")
    code = _mlp(enc_in, cfg, cfg.code_dim, "enc", "enc_code", zero_out=pca is not None)
    if pca is not None:
        mean, comps, var = pca
        scale = 1.0 / np.sqrt(np.maximum(var, 1e-12))
        lin = layers.Dense(cfg.code_dim, name="enc_pca")
        code = layers.Add(name="enc_sum")([lin(enc_in), code])
        lin.set_weights([(comps.T * scale).astype(np.float32), (-(mean @ comps.T) * scale).astype(np.float32)])
    # Code normalised to zero mean / unit variance per dim: a well-scaled regression target.
    code = layers.BatchNormalization(center=False, scale=False, name="code_bn")(code)
    encoder = keras.Model(enc_in, code, name="encoder")
    dec_in = keras.Input((cfg.code_dim,), name="code")
    recon = _mlp(dec_in, cfg, input_dim, "dec", "dec_out", zero_out=pca is not None)
    if pca is not None:
        lin = layers.Dense(input_dim, name="dec_pca")
        recon = layers.Add(name="dec_sum")([lin(dec_in), recon])
        lin.set_weights([(comps * np.sqrt(np.maximum(var, 1e-12))[:, None]).astype(np.float32),
                         mean.astype(np.float32)])
    decoder = keras.Model(dec_in, recon, name="decoder")
    code_x = encoder(x)
    if cfg.relational_weight > 0:
        code_x = SimilarityPreservation(dims, cfg.relational_weight, name="similarity_preservation")([code_x, inp])
    auto = keras.Model(inp, decoder(code_x), name="fusion_autoencoder")
    return auto, encoder, decoder


def _mlp(x, cfg: FusionConfig, out_dim: int, side: str, out_name: str, zero_out: bool):
    for i in range(cfg.depth):
        x = layers.Dense(cfg.hidden, activation="relu", name=f"{side}_hidden" + (f"{i}" if i else ""))(x)
    return layers.Dense(out_dim, kernel_initializer="zeros" if zero_out else "glorot_uniform", name=out_name)(x)


def pca_basis(x: np.ndarray, d: int, seed: int = 0):
    """(mean [D], components [d, D], explained variance [d]) of PCA fitted on x."""
    from sklearn.decomposition import PCA
    p = PCA(n_components=d, random_state=seed).fit(x)
    return p.mean_, p.components_, p.explained_variance_


def _cosine_matrix(x):
    x = x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-6)
    return ops.matmul(x, ops.transpose(x))


def similarity_preservation_loss(code, concat, dims: dict[str, int]):
    """Mean over teachers of the mean squared difference between the batch cosine-similarity matrices of the
    code and of that teacher's standardised block (a scalar for the batch)."""
    s_code, total, i = _cosine_matrix(code), 0.0, 0
    for d in dims.values():
        total = total + ops.mean(ops.square(s_code - _cosine_matrix(concat[:, i:i + d])))
        i += d
    return total / len(dims)


class SimilarityPreservation(layers.Layer):
    """Identity on the code that adds weight * similarity_preservation_loss(code, clean concat) to the
    model's losses (training graph only: the saved encoder and decoder never contain it)."""

    def __init__(self, dims: dict, weight: float, **kwargs):
        super().__init__(**kwargs)
        self.dims, self.weight = dict(dims), float(weight)

    def call(self, inputs):
        code, concat = inputs
        self.add_loss(self.weight * similarity_preservation_loss(code, concat, self.dims))
        return code

    def get_config(self):
        return {**super().get_config(), "dims": self.dims, "weight": self.weight}


def balanced_reconstruction_loss(y_true, y_pred, dims: dict[str, int]):
    """Sum over teachers of each teacher's relative squared error (blocks carry unit total variance).

    Because the standardiser gives every teacher block the same total variance, the plain squared
    error summed inside a block is that teacher's fraction of unexplained variance: no teacher wins
    by having more dimensions.
    """
    total, i = 0.0, 0
    for d in dims.values():
        total = total + ops.sum(ops.square(y_true[:, i:i + d] - y_pred[:, i:i + d]), axis=-1)
        i += d
    return total / len(dims)


@keras.saving.register_keras_serializable(package="face_transfer")
class BalancedReconstructionLoss(keras.losses.Loss):
    """`balanced_reconstruction_loss` as a serialisable Keras loss."""

    def __init__(self, dims: dict, name="balanced_reconstruction", **kwargs):
        super().__init__(name=name, **kwargs)
        self.dims = dict(dims)

    def call(self, y_true, y_pred):
        return balanced_reconstruction_loss(y_true, y_pred, self.dims)

    def get_config(self):
        return {**super().get_config(), "dims": self.dims}


class Fusion:
    """A trained fusion: standardiser + encoder + decoder, saved in one directory."""

    def __init__(self, standardizer: Standardizer, encoder, decoder, record: dict):
        self.standardizer, self.encoder, self.decoder, self.record = standardizer, encoder, decoder, record

    @property
    def code_dim(self) -> int:
        return int(self.encoder.output.shape[-1])

    def encode(self, embeddings: dict[str, np.ndarray], batch_size=1024) -> np.ndarray:
        return np.asarray(self.encoder.predict(self.standardizer.concat(embeddings), batch_size=batch_size,
                                               verbose=0), np.float32)

    def decode(self, code: np.ndarray, batch_size=1024) -> dict[str, np.ndarray]:
        return self.standardizer.split(np.asarray(self.decoder.predict(code, batch_size=batch_size, verbose=0)))

    def save(self, out_dir: str):
        os.makedirs(out_dir, exist_ok=True)
        self.standardizer.save(os.path.join(out_dir, "standardizer.npz"))
        self.encoder.save(os.path.join(out_dir, "encoder.keras"))
        self.decoder.save(os.path.join(out_dir, "decoder.keras"))
        write_json(os.path.join(out_dir, FUSION_JSON), self.record)

    @classmethod
    def load(cls, out_dir: str):
        path = os.path.join(out_dir, FUSION_JSON)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{out_dir}: no {FUSION_JSON}; the fusion is not trained (yet)")
        with open(path) as f:
            record = json.load(f)
        return cls(Standardizer.load(os.path.join(out_dir, "standardizer.npz")),
                   load_keras_model(os.path.join(out_dir, "encoder.keras"), "fusion encoder"),
                   load_keras_model(os.path.join(out_dir, "decoder.keras"), "fusion decoder"), record)


def train_fusion(embeddings: dict[str, np.ndarray], cfg: FusionConfig, out_dir: str | None = None) -> Fusion:
    """Fit the standardiser and the auto-encoder on (unlabelled) teacher embeddings.

    Early stopping on a held-out fraction restores the best weights; with `out_dir` the best
    checkpoint, TensorBoard logs and the final fusion are written there (an existing complete
    fusion is loaded instead of retrained).
    """
    if out_dir and os.path.exists(os.path.join(out_dir, FUSION_JSON)):
        return Fusion.load(out_dir)
    keras.utils.set_random_seed(cfg.seed)
    std = Standardizer.fit(embeddings, cfg.standardize)
    x = std.concat(embeddings)
    n_val = max(1, int(len(x) * cfg.val_fraction))
    perm = np.random.default_rng(cfg.seed).permutation(len(x))
    xv, xt = x[perm[:n_val]], x[perm[n_val:]]
    if cfg.code_dim >= x.shape[1]:
        raise ValueError(f"fusion code_dim={cfg.code_dim} must be smaller than the concatenated "
                         f"teacher dimension {x.shape[1]} (dims {std.dims})")
    auto, encoder, decoder = build_autoencoder(x.shape[1], std.dims, cfg,
                                               pca_basis(xt, cfg.code_dim, cfg.seed) if cfg.pca_init else None)
    auto.compile(optimizer=keras.optimizers.AdamW(cfg.learning_rate, weight_decay=cfg.weight_decay),
                 loss=BalancedReconstructionLoss(std.dims))
    callbacks = [keras.callbacks.EarlyStopping(patience=cfg.patience, restore_best_weights=True),
                 keras.callbacks.ReduceLROnPlateau(factor=0.3, patience=max(2, cfg.patience // 2))]
    if out_dir:
        os.makedirs(os.path.join(out_dir, "ckpt"), exist_ok=True)
        callbacks += [keras.callbacks.ModelCheckpoint(os.path.join(out_dir, "ckpt", "best.weights.h5"),
                                                      save_best_only=True, save_weights_only=True),
                      keras.callbacks.TensorBoard(os.path.join(out_dir, "tb"))]
    if cfg.pca_init:  # the validation loss at the start, PCA's: training keeps only what improves on it
        start_loss, start_weights = float(auto.evaluate(xv, xv, verbose=0)), auto.get_weights()
    hist = auto.fit(xt, xt, validation_data=(xv, xv), epochs=cfg.epochs, batch_size=cfg.batch_size,
                    callbacks=callbacks, verbose=cfg.verbose)
    kept_start = cfg.pca_init and min(hist.history["val_loss"]) > start_loss
    if kept_start:
        auto.set_weights(start_weights)
    # The code's normalisation: exact training-set statistics, not moving averages that lag a short fit (an
    # off-centre code skews every cosine computed on it, and the student imitates it).
    recalibrate_batchnorm(encoder, (xt[i:i + 4096] for i in range(0, len(xt), 4096)))
    recon = std.split(np.asarray(decoder.predict(encoder.predict(xv, verbose=0), verbose=0)))
    truth = std.split(xv)
    # Per-teacher fraction of variance explained on the validation split (R^2 of the block).
    r2 = {k: float(1 - np.sum((truth[k] - recon[k]) ** 2) / max(np.sum((truth[k] - truth[k].mean(0)) ** 2), 1e-12))
          for k in std.teachers}
    record = {"config": dataclasses.asdict(cfg), "teachers": std.teachers, "dims": std.dims,
              "concat_dim": std.total_dim, "code_dim": cfg.code_dim,
              "compression_ratio": std.total_dim / cfg.code_dim,
              "raw_dims": {k: int(v.shape[1]) for k, v in embeddings.items()},
              "epochs_run": len(hist.history["loss"]), "best_val_loss": float(min(hist.history["val_loss"])),
              "val_r2_per_teacher": r2, "n_train": int(len(xt)), "n_val": int(n_val),
              **({"kept_pca_start": bool(kept_start)} if cfg.pca_init else {})}
    fusion = Fusion(std, encoder, decoder, record)
    if out_dir:
        fusion.save(out_dir)
    return fusion


def fit_pca(x: np.ndarray, d: int, seed: int = 0):
    """PCA baseline at code dim d: returns a projection function concat -> [N, d] (whitened)."""
    from sklearn.decomposition import PCA
    pca = PCA(n_components=d, random_state=seed, whiten=True).fit(x)
    return lambda z: pca.transform(z).astype(np.float32)


def random_projection(input_dim: int, d: int, seed: int = 0):
    """Gaussian random projection baseline at code dim d (Johnson-Lindenstrauss)."""
    w = np.random.default_rng(seed).normal(size=(input_dim, d)).astype(np.float32) / np.sqrt(d)
    return lambda z: (np.asarray(z, np.float32) @ w)


def build_fused_teacher(ensemble: keras.Model, fusion: Fusion, name="fused_teacher") -> keras.Model:
    """uint8 images -> AE code, all in-graph: the teacher the student distils from (and exports)."""
    inp = ensemble.input
    embs = ensemble(inp)
    blocks = []
    for k in fusion.standardizer.teachers:
        mean = ops.convert_to_tensor(fusion.standardizer.means[k])
        mat = ops.convert_to_tensor(fusion.standardizer.mats[k])
        blocks.append(ops.matmul(embs[k] - mean, mat))
    code = fusion.encoder(ops.concatenate(blocks, axis=-1))
    model = keras.Model(inp, code, name=name)
    model.trainable = False
    return model
