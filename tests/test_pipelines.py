"""tf.data pipelines: deterministic streams by index; resumable, idempotent pre-rendered eval sets."""
import json
import os

import numpy as np
import pytest

from face_transfer.data import synth
from face_transfer.data.pipelines import (
    MANIFEST,
    load_eval_set,
    make_eval_dataset,
    make_stream_dataset,
    render_eval_set,
)

CFG = synth.SynthConfig(image_size=32, n_train_identities=20, n_heldout_identities=5)
B = 4


def _take(ds, k):
    return [(im.numpy(), {n: v.numpy() for n, v in lab.items()}) for im, lab in ds.take(k)]


def test_stream_deterministic_and_resumable_by_index():
    keys = ("expression", "yaw", "landmarks")
    a = _take(make_stream_dataset(CFG, B, label_keys=keys), 3)
    b = _take(make_stream_dataset(CFG, B, label_keys=keys), 3)
    for (ia, la), (ib, lb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la["yaw"], lb["yaw"])
    # Resuming at step 2 (start_index = 2*B) must reproduce batch 2 of the stream from 0.
    resumed = _take(make_stream_dataset(CFG, B, label_keys=keys, start_index=2 * B), 1)[0]
    np.testing.assert_array_equal(resumed[0], a[2][0])
    np.testing.assert_array_equal(resumed[1]["expression"], a[2][1]["expression"])
    # ... and it equals rendering those indices directly.
    direct, _ = synth.render_faces(CFG, np.arange(2 * B, 3 * B))
    np.testing.assert_array_equal(resumed[0], direct)
    # Batches differ from one another (the index really advances).
    assert not np.array_equal(a[0][0], a[1][0])


def test_stream_shapes_and_dtypes():
    images, labels = _take(make_stream_dataset(CFG, B, label_keys=("expression", "gaze_x", "landmarks")), 1)[0]
    assert images.shape == (B, 32, 32, 3) and images.dtype == np.uint8
    assert labels["expression"].shape == (B,)
    assert labels["gaze_x"].shape == (B,)
    assert labels["landmarks"].shape == (B, 5, 2)
    assert set(labels) == {"expression", "gaze_x", "landmarks"}


def test_stream_other_stream_name_gives_other_faces():
    a = _take(make_stream_dataset(CFG, B, stream="a"), 1)[0][0]
    b = _take(make_stream_dataset(CFG, B, stream="b"), 1)[0][0]
    assert not np.array_equal(a, b)


def _shards(d):
    return sorted(f for f in os.listdir(d) if f.startswith("shard-") and f.endswith(".npz") and ".tmp" not in f)


def test_render_eval_set_idempotent_resumable_and_round_trip(tmp_path):
    out = str(tmp_path / "photo")
    render_eval_set(CFG, "photo", 10, out, shard_size=4)
    assert _shards(out) == ["shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    with open(os.path.join(out, MANIFEST)) as f:
        manifest = json.load(f)
    assert manifest["shards"] == 3 and manifest["n"] == 10 and manifest["domain"] == "photo"
    images, labels = load_eval_set(out)
    assert images.shape == (10, 32, 32, 3) and images.dtype == np.uint8
    direct, dlabels = synth.render_faces(CFG, np.arange(10), stream="eval:photo", pool="train", domain="photo")
    np.testing.assert_array_equal(images, direct)
    np.testing.assert_array_equal(labels["expression"], dlabels["expression"])
    np.testing.assert_array_equal(labels["landmarks"], dlabels["landmarks"])

    # Idempotent: a complete set is left untouched.
    mtimes = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in _shards(out)}
    render_eval_set(CFG, "photo", 10, out, shard_size=4)
    assert {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in _shards(out)} == mtimes

    # Resumable: an interrupted run (no manifest, one shard missing) re-renders only that shard.
    os.remove(os.path.join(out, MANIFEST))
    os.remove(os.path.join(out, "shard-00001.npz"))
    with pytest.raises(FileNotFoundError, match="photo"):
        load_eval_set(out)
    calls = []
    render_eval_set(CFG, "photo", 10, out, shard_size=4, progress=lambda s, n: calls.append(s))
    assert calls == [2]  # progress(s + 1, n) reported only for shard index 1
    for f in ("shard-00000.npz", "shard-00002.npz"):
        assert os.stat(os.path.join(out, f)).st_mtime_ns == mtimes[f]
    images2, _ = load_eval_set(out)
    np.testing.assert_array_equal(images2, images)


def test_render_eval_set_refuses_a_different_set_in_the_same_dir(tmp_path):
    out = str(tmp_path / "set")
    render_eval_set(CFG, "photo", 4, out, shard_size=4)
    other = synth.SynthConfig(image_size=32, seed=1, n_train_identities=20, n_heldout_identities=5)
    with pytest.raises(ValueError, match=str(out)):
        render_eval_set(other, "photo", 4, out, shard_size=4)
    with pytest.raises(ValueError, match="different eval set"):
        render_eval_set(CFG, "sketch", 4, out, shard_size=4)
    with pytest.raises(ValueError):
        render_eval_set(CFG, "photo", 5, out, shard_size=4)


def test_eval_set_domain_and_pool_respected(tmp_path):
    out = str(tmp_path / "heldout")
    render_eval_set(CFG, "photo_heldout", 6, out, shard_size=6)
    _, labels = load_eval_set(out)
    assert labels["identity"].min() >= CFG.n_train_identities
    assert np.all(labels["domain"] == synth.DOMAINS.index("photo"))


def test_make_eval_dataset_order_and_labels(tmp_path):
    out = str(tmp_path / "s")
    render_eval_set(CFG, "sketch", 6, out, shard_size=4)
    images, labels = load_eval_set(out)
    batches = list(make_eval_dataset(out, 4, label_keys=("expression",)))
    assert [b[0].shape[0] for b in batches] == [4, 2]
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in batches]), images)
    np.testing.assert_array_equal(np.concatenate([b[1]["expression"].numpy() for b in batches]),
                                  labels["expression"])
