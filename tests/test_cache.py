"""Embedding cache: sharded, resumable, manifest with dims; NaN guard; the in-graph ensemble."""
import json
import os

import keras
import numpy as np
import pytest

from face_transfer.teachers.adapters import callable_teacher, keras_model_teacher
from face_transfer.teachers.cache import (
    MANIFEST,
    build_embedding_cache,
    build_ensemble,
    embed_all,
    load_embedding_cache,
)
from face_transfer.teachers.config import InputSpec

SIZE = 16


def _images(idx):
    # Deterministic per index (the cache's contract with image_fn), different for every index.
    idx = np.asarray(idx)[:, None, None, None]
    return ((idx * 37 + np.arange(SIZE * SIZE * 3).reshape(1, SIZE, SIZE, 3) * (1 + idx % 5)) % 256).astype(np.uint8)


def _teachers():
    mean_rgb = callable_teacher(lambda x: x.mean(axis=(1, 2)), 3, "mean_rgb", InputSpec(size=8, channels=3))
    gray_stats = callable_teacher(
        lambda x: np.stack([x.mean(axis=(1, 2, 3)), x.std(axis=(1, 2, 3)), x.max(axis=(1, 2, 3)),
                            x.min(axis=(1, 2, 3)), x[:, 0, 0, 0]], 1),
        5, "gray_stats", InputSpec(size=4, channels=1, scale=1 / 255.0, offset=0.0))
    return [mean_rgb, gray_stats]


class _CountingImages:
    def __init__(self, fail_on_call=None):
        self.calls, self.fail_on_call = [], fail_on_call

    def __call__(self, idx):
        self.calls.append(int(idx[0]))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt("simulated kill")
        return _images(idx)


def test_cache_manifest_and_round_trip(tmp_path):
    teachers = _teachers()
    out = str(tmp_path / "cache")
    manifest = build_embedding_cache(teachers, _images, 10, out, shard_size=4, batch_size=3,
                                     meta={"stream": "x"}, progress=False)
    assert manifest["dims"] == {"mean_rgb": 3, "gray_stats": 5}
    assert manifest["shards"] == 3 and manifest["n"] == 10 and manifest["meta"] == {"stream": "x"}
    assert manifest["teachers"] == ["mean_rgb", "gray_stats"]
    with open(os.path.join(out, MANIFEST)) as f:
        assert json.load(f)["dims"] == manifest["dims"]
    idx, arrays = load_embedding_cache(out)
    np.testing.assert_array_equal(idx, np.arange(10))
    direct = embed_all(teachers, _images(np.arange(10)))
    for t in teachers:
        assert arrays[t.name].dtype == np.float32 and arrays[t.name].shape == (10, t.dim)
        np.testing.assert_allclose(arrays[t.name], direct[t.name], rtol=1e-6)
    # Teachers really differ per image (the data is not constant).
    assert np.ptp(arrays["mean_rgb"][:, 0]) > 0
    # A complete cache is returned as is, not recomputed.
    fn = _CountingImages()
    assert build_embedding_cache(teachers, fn, 10, out, shard_size=4, meta={"stream": "x"}, progress=False) == manifest
    assert fn.calls == []


def test_cache_resumes_without_recomputing_finished_shards(tmp_path):
    teachers = _teachers()
    out = str(tmp_path / "cache")
    killer = _CountingImages(fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        build_embedding_cache(teachers, killer, 10, out, shard_size=4, progress=False)
    assert killer.calls == [0, 4, 8]
    assert not os.path.exists(os.path.join(out, MANIFEST))
    assert sorted(f for f in os.listdir(out)) == ["shard-00000.npz", "shard-00001.npz", "spec.json"]
    with pytest.raises(FileNotFoundError, match="incomplete"):
        load_embedding_cache(out)
    rerun = _CountingImages()
    manifest = build_embedding_cache(teachers, rerun, 10, out, shard_size=4, progress=False)
    assert rerun.calls == [8]  # only the unfinished shard is rendered and embedded
    assert manifest["dims"] == {"mean_rgb": 3, "gray_stats": 5}
    idx, arrays = load_embedding_cache(out)
    np.testing.assert_array_equal(idx, np.arange(10))
    np.testing.assert_allclose(arrays["gray_stats"], embed_all(teachers, _images(np.arange(10)))["gray_stats"],
                               rtol=1e-6)


def test_cache_refuses_a_different_cache(tmp_path):
    out = str(tmp_path / "cache")
    build_embedding_cache(_teachers(), _images, 4, out, shard_size=4, progress=False)
    with pytest.raises(ValueError, match="different embedding cache"):
        build_embedding_cache(_teachers()[:1], _images, 4, out, shard_size=4, progress=False)
    with pytest.raises(ValueError, match=str(out)):
        build_embedding_cache(_teachers(), _images, 8, out, shard_size=4, progress=False)


def test_nan_embedding_names_teacher_and_shard(tmp_path):
    calls = []

    def nan_on_second_call(x):
        calls.append(len(x))
        y = x.mean(axis=(1, 2))
        if len(calls) >= 2:
            y[0, 1] = np.nan
        return y

    good = _teachers()[0]
    bad = callable_teacher(nan_on_second_call, 3, "flaky", InputSpec(size=8))
    out = str(tmp_path / "cache")
    with pytest.raises(FloatingPointError, match=r"'flaky'.*1 of 4 images.*shard-00001\.npz"):
        build_embedding_cache([good, bad], _images, 8, out, shard_size=4, progress=False)
    # The shard before the NaN was kept; the bad one was never written.
    assert os.path.exists(os.path.join(out, "shard-00000.npz"))
    assert not os.path.exists(os.path.join(out, "shard-00001.npz"))
    with pytest.raises(FloatingPointError, match="flaky"):
        embed_all([bad], _images(np.arange(4, 8)))


def _tiny_keras_teacher(name, dim, seed):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(dim, name="emb")(x)
    return keras_model_teacher(keras.Model(inp, out, name=f"m_{name}"), None, name, InputSpec(size=8))


def test_ensemble_matches_each_teacher_and_takes_callables():
    teachers = [_tiny_keras_teacher("a", 3, 0), _tiny_keras_teacher("b", 5, 1)]
    ens = build_ensemble(teachers, image_size=SIZE)
    assert not ens.trainable
    images = _images(np.arange(6))
    out = ens.predict(images, verbose=0)
    direct = embed_all(teachers, images)
    for t in teachers:
        assert out[t.name].shape == (6, t.dim)
        np.testing.assert_allclose(out[t.name], direct[t.name], atol=1e-5)
    # a numpy-callable teacher joins the in-graph ensemble through tf.numpy_function
    callable_t = _teachers()[:1]
    mixed = build_ensemble(teachers[:1] + callable_t, image_size=SIZE)
    got = mixed.predict(images, verbose=0)
    np.testing.assert_allclose(got[callable_t[0].name], embed_all(callable_t, images)[callable_t[0].name], atol=1e-5)


def test_resuming_with_different_teachers_refuses_old_shards(tmp_path):
    """An interrupted cache (shards, no manifest) is never completed with another teacher set."""
    teachers = _teachers()
    out = str(tmp_path / "cache")
    with pytest.raises(KeyboardInterrupt):
        build_embedding_cache(teachers, _CountingImages(fail_on_call=2), 10, out, shard_size=4, progress=False)
    with pytest.raises(ValueError, match="different set"):
        build_embedding_cache(teachers[:1], _CountingImages(), 10, out, shard_size=4, progress=False)


def test_constant_teacher_is_named(tmp_path):
    from face_transfer.teachers.adapters import callable_teacher
    from face_transfer.teachers.config import InputSpec
    flat = callable_teacher(lambda x: np.ones((len(x), 4), np.float32), 4, "flat", InputSpec(size=SIZE))
    with pytest.raises(FloatingPointError, match="'flat' produced the same embedding"):
        build_embedding_cache([flat], lambda idx: _images(idx), 8, str(tmp_path / "c"), shard_size=8, progress=False)


def test_two_workers_split_the_shards_and_worker0_writes_the_manifest(tmp_path):
    """Worker k embeds shards s % W == k; the other's shards appear, worker 0 merges the manifest."""
    import threading
    teachers = _teachers()
    out = str(tmp_path / "cache")
    results = {}

    def work(k):
        results[k] = build_embedding_cache(teachers, lambda idx: _images(idx), 20, out, shard_size=4,
                                           progress=False, worker=(k, 2), wait_timeout_s=600)
    threads = [threading.Thread(target=work, args=(k,)) for k in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0]["shards"] == 5 and results[0]["workers"] == 2
    assert results[1] == json.load(open(os.path.join(out, "manifest.json")))
    index, embs = load_embedding_cache(out)
    np.testing.assert_array_equal(index, np.arange(20))
    direct = embed_all(teachers, _images(np.arange(20)))
    for name in direct:
        np.testing.assert_allclose(embs[name], direct[name], atol=1e-5)
