"""Per-teacher standardisation: z-score and isotropic PHI-S, balanced blocks, save/load."""
import numpy as np
import pytest

from face_transfer.fusion.standardize import Standardizer

RNG = np.random.default_rng(0)


def _embeddings(n=4000):
    # Two teachers with wildly different scales, offsets and anisotropy; the second has 6 dims (not 2^k).
    a = RNG.normal(size=(n, 4)) * np.array([100.0, 10.0, 1.0, 0.1]) + 50.0
    mix = RNG.normal(size=(6, 6))
    b = (RNG.normal(size=(n, 6)) * np.array([5, 3, 2, 1, 0.5, 0.2])) @ mix - 3.0
    return {"a": a.astype(np.float32), "b": b.astype(np.float32)}


def test_zscore_unit_dims_and_balanced_blocks():
    emb = _embeddings()
    std = Standardizer.fit(emb, "zscore")
    z = std.transform(emb)
    assert std.dims == {"a": 4, "b": 6} and std.total_dim == 10
    for k, d in std.dims.items():
        assert z[k].dtype == np.float32
        np.testing.assert_allclose(z[k].mean(0), 0, atol=1e-4)
        # Each dim is z-scored then block-weighted by 1/sqrt(D): per-dim variance 1/D, block total 1.
        np.testing.assert_allclose(z[k].var(0) * d, 1.0, rtol=1e-3)
        assert abs(z[k].var(0).sum() - 1.0) < 1e-3


def test_phi_s_isotropic_power_of_two_and_balanced():
    emb = _embeddings()
    std = Standardizer.fit(emb, "phi_s")
    assert std.dims == {"a": 4, "b": 8}  # 6 -> padded to the next power of two
    z = std.transform(emb)
    for k in std.teachers:
        np.testing.assert_allclose(z[k].mean(0), 0, atol=1e-4)
        var = z[k].var(0)
        # Isotropic: every output dim has the same variance (despite 1000x anisotropy in "a").
        assert var.max() / var.min() < 1.05, (k, var)
        assert abs(var.sum() - 1.0) < 1e-2, (k, var.sum())
    # Invertible on the original dims: the map keeps all information (rank = input dim).
    assert np.linalg.matrix_rank(std.mats["b"]) == 6


def test_concat_split_round_trip():
    emb = _embeddings(500)
    std = Standardizer.fit(emb, "phi_s")
    c = std.concat(emb)
    assert c.shape == (500, std.total_dim)
    parts = std.split(c)
    z = std.transform(emb)
    for k in std.teachers:
        np.testing.assert_array_equal(parts[k], z[k])


@pytest.mark.parametrize("method", ["zscore", "phi_s"])
def test_save_load_round_trip(tmp_path, method):
    emb = _embeddings(300)
    std = Standardizer.fit(emb, method)
    path = str(tmp_path / "std.npz")
    std.save(path)
    back = Standardizer.load(path)
    assert back.teachers == std.teachers and back.method == method and back.dims == std.dims
    np.testing.assert_array_equal(back.concat(emb), std.concat(emb))


def test_transform_missing_teacher_raises_key_error():
    std = Standardizer.fit(_embeddings(100), "zscore")
    with pytest.raises(KeyError, match="'b'"):
        std.transform({"a": np.zeros((3, 4), np.float32)})


def test_unknown_method():
    with pytest.raises(ValueError, match="pca.*zscore"):
        Standardizer.fit(_embeddings(50), "pca")
