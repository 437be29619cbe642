"""The fusion auto-encoder's settings without its model code (FusionConfig). Imports no TensorFlow, so
configs.py can read it anywhere.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    code_dim: int = 64
    hidden: int = 512
    depth: int = 1  # hidden layers on each side of the code (encoder and decoder)
    standardize: str = "zscore"  # or "phi_s"
    input_noise: float = 0.1  # denoising AE: Gaussian noise on the input (fraction of unit variance)
    # Similarity preservation (Tung & Mori 2019; AMoE's relational term): + relational_weight * the mean
    # squared difference between the code's batch cosine-similarity matrix and the teachers' (each teacher's
    # block compared on its own, averaged). Reconstruction keeps variance, as PCA does; this keeps who is
    # close to whom in every teacher, which cosine-based uses (verification, retrieval) read. 0 = off.
    relational_weight: float = 6.0
    epochs: int = 60
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.1
    patience: int = 8
    seed: int = 0
    verbose: int = 0
    # Start from PCA: the encoder is the whitened PCA projection of the training split plus a zero-initialised
    # MLP branch, the decoder PCA's back-projection plus another, so that training begins exactly at PCA's
    # code and reconstruction and early stopping (on the validation split) only keeps what improves on it.
    # With few faces (a user's cache of a few thousand) a free AE can end below PCA: in the `real` preset (fer,
    # dlib age and gender) the AE code scored 41.8 against PCA's 43.8, and 43.9 from PCA (validation R² of fer
    # 0.49 -> 0.66, age 0.20 -> 0.45); in `demo` 51.9 -> 53.0, as high as 120 epochs of the free AE for a quarter
    # of its seconds (BENCHMARKS.md, "Fusion from PCA"). Off by default until the presets' figures are re-measured
    # with it; `--set` / a config file turns it on.
    pca_init: bool = False

    def __post_init__(self):
        if not self.relational_weight >= 0:
            raise ValueError(f"FusionConfig.relational_weight={self.relational_weight!r}; expected >= 0")
