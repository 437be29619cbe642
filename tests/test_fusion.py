"""Fusion auto-encoder: recovers a shared low-rank structure, saves/loads, runs in-graph; baselines."""
import keras
import numpy as np
import pytest

from face_transfer.fusion.autoencoder import (Fusion, balanced_reconstruction_loss, build_autoencoder, build_fused_teacher, fit_pca, random_projection, train_fusion)
from face_transfer.fusion.config import FusionConfig
from face_transfer.fusion.standardize import Standardizer
from face_transfer.teachers.adapters import keras_model_teacher
from face_transfer.teachers.cache import build_ensemble, embed_all
from face_transfer.teachers.config import InputSpec

LATENT = 8
# Few epochs of small batches: per-epoch overhead, not the arithmetic, dominates time here.
CFG = FusionConfig(code_dim=LATENT, hidden=64, epochs=8, batch_size=32, patience=8, input_noise=0.0,
                   learning_rate=5e-3)


def _low_rank_embeddings(n=1000, seed=0):
    # Three teachers seeing one shared 8-d latent through different linear maps, scales and noise.
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, LATENT))
    out = {}
    for k, (name, d, scale) in enumerate((("t0", 12, 1.0), ("t1", 20, 50.0), ("t2", 6, 0.01))):
        w = rng.normal(size=(LATENT, d))
        out[name] = (scale * (z @ w + 0.05 * rng.normal(size=(n, d))) + 3 * k).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    emb = _low_rank_embeddings()
    out = str(tmp_path_factory.mktemp("fusion"))
    return emb, out, train_fusion(emb, CFG, out)


def test_fusion_recovers_shared_latent(trained):
    _, _, fusion = trained
    r2 = fusion.record["val_r2_per_teacher"]
    assert set(r2) == {"t0", "t1", "t2"}
    assert min(r2.values()) > 0.8, r2
    assert fusion.code_dim == LATENT
    assert fusion.record["concat_dim"] == 38 and fusion.record["compression_ratio"] == 38 / LATENT
    assert fusion.record["raw_dims"] == {"t0": 12, "t1": 20, "t2": 6}


def test_bottleneck_too_small_is_worse(trained):
    _, _, fusion = trained
    emb = _low_rank_embeddings()
    tiny = train_fusion(emb, FusionConfig(code_dim=1, hidden=64, epochs=3, batch_size=32, input_noise=0.0,
                                          learning_rate=5e-3))
    assert tiny.record["best_val_loss"] > 2 * fusion.record["best_val_loss"]
    assert np.mean(list(tiny.record["val_r2_per_teacher"].values())) < \
        np.mean(list(fusion.record["val_r2_per_teacher"].values())) - 0.2


def test_deeper_autoencoder_has_depth_hidden_layers_per_side_and_still_fits(tmp_path):
    import dataclasses
    auto, enc, dec = build_autoencoder(38, {"t0": 12, "t1": 20, "t2": 6}, dataclasses.replace(CFG, depth=3))
    assert sum(isinstance(layer, keras.layers.Dense) for layer in enc.layers) == 3 + 1  # 3 hidden + the code
    assert sum(isinstance(layer, keras.layers.Dense) for layer in dec.layers) == 3 + 1  # 3 hidden + the output
    deep = train_fusion(_low_rank_embeddings(), dataclasses.replace(CFG, depth=2), str(tmp_path / "deep"))
    assert deep.record["config"]["depth"] == 2
    assert min(deep.record["val_r2_per_teacher"].values()) > 0.7, deep.record["val_r2_per_teacher"]
    back = Fusion.load(str(tmp_path / "deep"))
    sub = {k: v[:16] for k, v in _low_rank_embeddings().items()}
    np.testing.assert_allclose(back.encode(sub), deep.encode(sub), atol=1e-6)


def test_code_dim_not_smaller_than_concat_raises():
    emb = {"a": np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32),
           "b": np.random.default_rng(1).normal(size=(50, 2)).astype(np.float32)}
    with pytest.raises(ValueError, match="code_dim=5.*5"):
        train_fusion(emb, FusionConfig(code_dim=5, hidden=8, epochs=1))


def test_save_load_identical_encode_decode(trained):
    emb, out, fusion = trained
    back = Fusion.load(out)
    sub = {k: v[:64] for k, v in emb.items()}
    np.testing.assert_allclose(back.encode(sub), fusion.encode(sub), atol=1e-6)
    code = fusion.encode(sub)
    assert code.shape == (64, LATENT) and code.dtype == np.float32
    dec_a, dec_b = fusion.decode(code), back.decode(code)
    assert {k: v.shape for k, v in dec_a.items()} == {"t0": (64, 12), "t1": (64, 20), "t2": (64, 6)}
    for k in dec_a:
        np.testing.assert_allclose(dec_a[k], dec_b[k], atol=1e-6)
    assert back.record == fusion.record
    # A complete fusion directory is loaded, not retrained (same weights, even with other settings).
    again = train_fusion(emb, FusionConfig(code_dim=LATENT, hidden=64, epochs=1, seed=5), out)
    np.testing.assert_allclose(again.encode(sub), code, atol=1e-6)


def test_load_missing_dir_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="fusion.json"):
        Fusion.load(str(tmp_path))


def test_balanced_loss_weights_teachers_equally():
    y = np.zeros((2, 5), np.float32)
    p = y.copy()
    p[:, 0] = 1.0  # error of 1 in the 1-dim first teacher
    la = np.asarray(balanced_reconstruction_loss(y, p, {"a": 1, "b": 4}))
    p2 = y.copy()
    p2[:, 1] = 1.0  # the same error in the 4-dim second teacher
    lb = np.asarray(balanced_reconstruction_loss(y, p2, {"a": 1, "b": 4}))
    np.testing.assert_allclose(la, [0.5, 0.5])
    np.testing.assert_allclose(lb, la)


def test_pca_and_random_projection_shapes():
    x = np.random.default_rng(0).normal(size=(100, 10)).astype(np.float32)
    pca = fit_pca(x, 4)
    y = pca(x)
    assert y.shape == (100, 4) and y.dtype == np.float32
    np.testing.assert_allclose(y.std(0), 1.0, rtol=0.05)  # whitened
    rp = random_projection(10, 3, seed=1)
    assert rp(x).shape == (100, 3)
    np.testing.assert_array_equal(rp(x), random_projection(10, 3, seed=1)(x))
    assert not np.array_equal(rp(x), random_projection(10, 3, seed=2)(x))


def _tiny_teacher(name, dim, seed, spec):
    keras.utils.set_random_seed(seed)
    inp = keras.Input(spec.input_shape())
    x = keras.layers.Conv2D(4, 3, strides=2, name="conv")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(dim, name="emb")(x)
    return keras_model_teacher(keras.Model(inp, out, name=f"m_{name}"), None, name, spec)


def test_fused_teacher_equals_encode_of_teacher_embeddings():
    teachers = [_tiny_teacher("a", 6, 0, InputSpec(size=16)),
                _tiny_teacher("b", 4, 1, InputSpec(size=12, channels=1, scale=1 / 255.0, offset=0.0))]
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (200, 24, 24, 3), dtype=np.uint8)
    emb = embed_all(teachers, train_images)
    # The in-graph path only has to match encode(); an untrained (random) encoder checks that, fit-free.
    std = Standardizer.fit(emb, "phi_s")
    _, encoder, decoder = build_autoencoder(std.total_dim, std.dims, FusionConfig(code_dim=3, hidden=16))
    fusion = Fusion(std, encoder, decoder, {})
    fused = build_fused_teacher(build_ensemble(teachers, image_size=24), fusion)
    assert not fused.trainable
    images = rng.integers(0, 256, (10, 24, 24, 3), dtype=np.uint8)
    got = fused.predict(images, verbose=0)
    assert got.shape == (10, 3)
    np.testing.assert_allclose(got, fusion.encode(embed_all(teachers, images)), atol=1e-4)


def test_similarity_preservation_loss_zero_for_a_matching_geometry_positive_otherwise():
    from face_transfer.fusion.autoencoder import similarity_preservation_loss
    rng = np.random.default_rng(1)
    block = rng.normal(size=(16, 5)).astype("float32")
    concat = np.concatenate([block, 3 * block], 1)  # two teachers with the same batch geometry
    dims = {"a": 5, "b": 5}
    assert float(similarity_preservation_loss(block * 2, concat, dims)) < 1e-6
    assert float(similarity_preservation_loss(block[::-1].copy(), concat, dims)) > 0.05


def test_relational_fusion_keeps_the_teachers_geometry_better_and_saves_plain_models(tmp_path):
    """relational_weight > 0 adds the term to training only: the saved encoder / decoder are the plain ones, and
    on held-out embeddings the code's cosine geometry is closer to the teachers' than without the term."""
    import dataclasses
    from face_transfer.fusion.autoencoder import similarity_preservation_loss
    full = _low_rank_embeddings(n=1256)  # the same teachers: 1000 faces to fit, 256 held out
    emb, test = {k: v[:1000] for k, v in full.items()}, {k: v[1000:] for k, v in full.items()}
    small = dataclasses.replace(CFG, code_dim=3)  # too small for the 8-d latent: the terms compete
    plain = train_fusion(emb, dataclasses.replace(small, relational_weight=0.0))
    rel = train_fusion(emb, dataclasses.replace(small, relational_weight=20.0), str(tmp_path / "rel"))
    assert not any("similarity" in layer.name for layer in rel.encoder.layers + rel.decoder.layers)
    x = rel.standardizer.concat(test)
    dims = rel.standardizer.dims
    got = {name: float(similarity_preservation_loss(f.encoder.predict(f.standardizer.concat(test), verbose=0), x, dims))
           for name, f in (("plain", plain), ("relational", rel))}
    assert got["relational"] < 0.95 * got["plain"], got  # measured: 0.197 vs 0.217
    back = Fusion.load(str(tmp_path / "rel"))
    np.testing.assert_allclose(back.encode(test), rel.encode(test), atol=1e-5)
    assert back.record["config"]["relational_weight"] == 20.0


def test_pca_init_starts_the_auto_encoder_at_whitened_pca():
    import dataclasses

    from sklearn.decomposition import PCA

    from face_transfer.fusion.autoencoder import pca_basis
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(400, 6)) @ rng.normal(size=(6, 20)) + rng.normal(size=20)).astype(np.float32)
    cfg = FusionConfig(code_dim=4, hidden=16, pca_init=True)
    _, enc, dec = build_autoencoder(20, {"a": 8, "b": 12}, cfg, pca_basis(x, 4))
    ref = PCA(n_components=4, whiten=True).fit(x)
    code = np.asarray(enc.predict(x, verbose=0))
    # the code BN's inference at its initial statistics divides by sqrt(1 + eps) only
    np.testing.assert_allclose(np.abs(code), np.abs(ref.transform(x)), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(np.asarray(dec.predict(ref.transform(x).astype(np.float32), verbose=0)),
                               ref.inverse_transform(ref.transform(x)), rtol=1e-3, atol=1e-3)
    # trained, it keeps at least PCA's validation reconstruction: it starts there and keeps the start when no
    # epoch improves on it
    fus = train_fusion({"a": x[:, :8], "b": x[:, 8:]}, dataclasses.replace(cfg, epochs=5, relational_weight=0.0))
    z = fus.standardizer.concat({"a": x[:, :8], "b": x[:, 8:]})
    n_val = int(len(z) * cfg.val_fraction)
    xv = z[np.random.default_rng(cfg.seed).permutation(len(z))[:n_val]]
    mean, comps, _ = pca_basis(z[np.random.default_rng(cfg.seed).permutation(len(z))[n_val:]], 4)
    pca_err = np.mean(np.sum(((xv - mean) @ comps.T @ comps + mean - xv) ** 2, -1))
    ae_err = np.mean(np.sum((np.asarray(fus.decoder.predict(fus.encoder.predict(xv, verbose=0), verbose=0)) - xv) ** 2, -1))
    assert ae_err <= pca_err * 1.01 and "kept_pca_start" in fus.record
