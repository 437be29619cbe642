"""Tests for the SynthFaces generator: determinism, identities, labels, domains, 3-D pose, learnability."""
import numpy as np
import pytest

from face_transfer.data.synth import (DOMAINS, HAIR_COLORS, LABEL_KEYS, SynthConfig, identity_factors,
                                      image_identities, render_faces, save_sample_grid)
from face_transfer.data.vocab import EXPRESSIONS, LANDMARK_NAMES

CFG = SynthConfig(image_size=64, seed=3, n_train_identities=40, n_heldout_identities=12)

EXPECTED = {
    "identity": np.int64, "gender": np.int64, "age": np.float32, "skin_tone": np.float32,
    "hair_color": np.int64, "hair_style": np.int64, "beard": np.int64, "face_shape": np.float32,
    "expression": np.int64, "expression_intensity": np.float32, "smile": np.float32,
    "mouth_open": np.float32, "eyes_closed": np.int64, "gaze_x": np.float32, "gaze_y": np.float32,
    "yaw": np.float32, "pitch": np.float32, "roll": np.float32, "glasses": np.int64, "sunglasses": np.int64,
    "hat": np.int64, "mask": np.int64, "occluded": np.int64, "light_azimuth": np.float32,
    "light_color": np.float32, "domain": np.int64, "landmarks": np.float32,
}


@pytest.fixture(scope="module")
def batch():
    return render_faces(CFG, np.arange(300), stream="t")


def test_same_index_same_image_whatever_the_batch():
    a, la = render_faces(CFG, np.array([5, 17, 3]), stream="s", domain="mixed")
    # other neighbours, another render chunk (positions >= 150), other domains in the same chunk
    idx = np.concatenate([np.arange(100, 250), [3, 99, 17, 5, 1000]])
    b, lb = render_faces(CFG, idx, stream="s", domain="mixed")
    for i, j in ((0, 153), (1, 152), (2, 150)):
        np.testing.assert_array_equal(a[i], b[j])
        np.testing.assert_array_equal(la["landmarks"][i], lb["landmarks"][j])
        assert la["domain"][i] == lb["domain"][j]
    c, _ = render_faces(CFG, np.array([5]), stream="other", domain="mixed")
    assert np.abs(c[0].astype(int) - a[0]).mean() > 5  # streams are independent


def test_identities_persist_across_streams(batch):
    _, l1 = batch
    _, l2 = render_faces(CFG, np.arange(300), stream="u")
    per_id = ("gender", "age", "skin_tone", "hair_color", "hair_style", "beard", "face_shape")
    common = np.intersect1d(l1["identity"], l2["identity"])
    assert len(common) > 10
    for pid in common[:10]:
        i, j = np.nonzero(l1["identity"] == pid)[0][0], np.nonzero(l2["identity"] == pid)[0][0]
        for k in per_id:
            assert l1[k][i] == l2[k][j], k
    f = identity_factors(CFG, l1["identity"][:20])
    for k in per_id:
        np.testing.assert_array_equal(f[k], l1[k][:20])
    # per-image factors vary within one identity
    same = np.nonzero(l1["identity"] == l1["identity"][0])[0]
    assert len(same) >= 2 and len(set(l1["yaw"][same].tolist())) == len(same)


def test_train_and_heldout_pools_are_disjoint():
    tr = image_identities(CFG, np.arange(2000), stream="x", pool="train")
    he = image_identities(CFG, np.arange(2000), stream="x", pool="heldout")
    assert tr.min() >= 0 and tr.max() < 40 and len(np.unique(tr)) == 40
    assert he.min() >= 40 and he.max() < 52 and len(np.unique(he)) == 12
    _, lab = render_faces(CFG, np.arange(8), pool="heldout")
    assert (lab["identity"] >= 40).all()


def test_label_keys_dtypes_shapes_and_ranges(batch):
    img, lab = batch
    assert img.dtype == np.uint8 and img.shape == (300, 64, 64, 3)
    assert set(lab) == set(LABEL_KEYS)
    for k, dt in EXPECTED.items():
        assert lab[k].dtype == dt, k
        assert lab[k].shape[0] == 300, k
    assert lab["landmarks"].shape == (300, len(LANDMARK_NAMES), 2)
    assert lab["light_color"].shape == (300, 3)
    assert 18 <= lab["age"].min() and lab["age"].max() <= 80
    assert set(np.unique(lab["expression"])) == set(range(len(EXPRESSIONS)))
    assert lab["hair_color"].max() < len(HAIR_COLORS) and lab["hair_style"].max() <= 3
    assert (lab["beard"][lab["gender"] == 0] == 0).all() and lab["beard"].sum() > 0
    assert (lab["glasses"] * lab["sunglasses"] == 0).all()
    for k in ("smile", "mouth_open", "skin_tone", "expression_intensity"):
        assert 0 <= lab[k].min() and lab[k].max() <= 1, k
    assert np.abs(lab["yaw"]).max() <= 45 and np.abs(lab["pitch"]).max() <= 25 and np.abs(lab["roll"]).max() <= 20
    assert np.abs(lab["yaw"]).max() > 30  # the pose range is used
    assert (lab["landmarks"] >= 0).all() and (lab["landmarks"] <= 1).all()
    happy = lab["expression"] == EXPRESSIONS.index("happy")
    assert lab["smile"][happy].mean() > lab["smile"][~happy].mean() + 0.3
    gray = lab["hair_color"] == HAIR_COLORS.index("gray")
    assert lab["age"][gray].mean() > lab["age"][~gray].mean() + 10


def test_every_domain_renders():
    means = {}
    cfg = SynthConfig(image_size=64, seed=3, difficulty=0.0)
    for d in DOMAINS:
        img, lab = render_faces(cfg, np.arange(6), stream="d", domain=d)
        assert img.shape == (6, 64, 64, 3) and (lab["domain"] == DOMAINS.index(d)).all()
        means[d] = img.astype(np.float32)
    ir = means["infrared"]
    assert np.abs(ir[..., 0] - ir[..., 1]).max() <= 12  # grayscale up to colour noise
    assert means["sketch"].mean() > means["photo"].mean() + 40  # ink on white paper
    # lowres has little high-frequency energy compared with the same scenes as photos
    hf = {d: (np.diff(means[d], axis=2) ** 2).mean() for d in ("photo", "lowres")}
    assert hf["lowres"] < 0.5 * hf["photo"]
    _, lab = render_faces(CFG, np.arange(64), stream="d", domain="mixed")
    assert len(np.unique(lab["domain"])) == len(DOMAINS)


@pytest.mark.parametrize("size", [32, 96])
def test_other_resolutions(size):
    cfg = SynthConfig(image_size=size, seed=1)
    img, lab = render_faces(cfg, np.arange(5), domain="mixed")
    assert img.shape == (5, size, size, 3) and img.std() > 10


def test_landmarks_follow_3d_yaw():
    cfg = SynthConfig(image_size=64, seed=2, difficulty=0.0)
    idx = np.arange(20)
    _, front = render_faces(cfg, idx, overrides={"yaw": 0.0})
    _, turned = render_faces(cfg, idx, overrides={"yaw": 40.0})
    assert (turned["yaw"] == 40).all()

    def iod(lm):
        return np.linalg.norm(lm[:, 0] - lm[:, 1], axis=1)

    ratio = iod(turned["landmarks"]) / iod(front["landmarks"])
    assert (ratio < 0.9).all() and (ratio > 0.6).all()  # ~cos(40 deg) foreshortening, not a 2-D rotation
    # the protruding nose tip moves further in x than the eye midpoint (depth parallax)
    def nose_offset(lm):
        return lm[:, 2, 0] - lm[:, :2, 0].mean(1)
    assert (nose_offset(turned["landmarks"]) - nose_offset(front["landmarks"]) > 0.01).all()
    # and the eyes stay level: no in-plane rotation
    assert np.abs(turned["landmarks"][:, 0, 1] - turned["landmarks"][:, 1, 1]).max() < 0.02


def test_expression_override_rederives_what_follows_from_it():
    _, lab = render_faces(CFG, np.arange(40), stream="o", overrides={"expression": EXPRESSIONS.index("surprise")})
    assert (lab["expression_intensity"] >= 0.5).all() and (lab["mouth_open"] > 0.3).all()
    assert (lab["eyes_closed"] == 0).all()
    _, lab = render_faces(CFG, np.arange(40), stream="o", overrides={"expression": 0, "smile": 0.7})
    assert (lab["expression_intensity"] == 0).all() and (lab["smile"] == np.float32(0.7)).all()


def test_overrides_are_validated():
    with pytest.raises(ValueError, match="unknown per-image factor"):
        render_faces(CFG, np.arange(2), overrides={"nonsense": 1})


@pytest.mark.parametrize("kwargs,match", [({"domain": "xray"}, "domain"), ({"pool": "test"}, "pool")])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        render_faces(CFG, np.arange(2), **kwargs)
    with pytest.raises(ValueError, match="indices"):
        render_faces(CFG, np.array([[1, 2]]))


def test_sunglasses_are_learnable_from_pixels(batch):
    """The label is visible where the landmarks say the eyes are: a tiny classifier on 5 numbers finds it."""
    from sklearn.linear_model import LogisticRegression

    img, lab = batch
    img2, lab2 = render_faces(CFG, np.arange(300), stream="t2")
    img = np.concatenate([img, img2])
    y = np.concatenate([lab["sunglasses"], lab2["sunglasses"]])
    lm = np.concatenate([lab["landmarks"], lab2["landmarks"]])
    lum = img.astype(np.float32).mean(-1)

    def window(e):
        c = np.clip(np.round(lm[:, e] * 64).astype(int), 2, 61)
        return np.array([lum[i, c[i, 1] - 2:c[i, 1] + 3, c[i, 0] - 2:c[i, 0] + 3].mean() for i in range(len(img))])

    # eye-window brightness, alone and relative to the skin at the nose tip; train on half, test on half
    e0, e1, nose = window(0), window(1), window(2)
    x = np.stack([e0, e1, nose, np.minimum(e0, e1) / (nose + 5), np.maximum(e0, e1) / (nose + 5)], 1)
    x = (x - x.mean(0)) / x.std(0)
    pos, neg = np.nonzero(y == 1)[0], np.nonzero(y == 0)[0]
    assert len(pos) > 20
    rng = np.random.default_rng(0)
    sel = rng.permutation(np.concatenate([pos, rng.choice(neg, len(pos), replace=False)]))  # chance = 0.5
    half = len(sel) // 2
    clf = LogisticRegression(max_iter=1000).fit(x[sel[:half]], y[sel[:half]])
    acc = clf.score(x[sel[half:]], y[sel[half:]])
    assert acc > 0.8, acc


def _expression_features(img, lm, k=16):
    """Gray-level gradients of a k x k crop spanning brows to chin, placed by the eye and mouth landmarks."""
    g = img.astype(np.float32).mean(-1)
    S = g.shape[1]
    eyes, mouth = lm[:, :2].mean(1) * S, lm[:, 3:].mean(1) * S
    d = np.linalg.norm(mouth - eyes, axis=1)[:, None]
    c = (eyes + mouth) / 2
    t = np.linspace(-1.3, 1.3, k)[None, :]
    xs = np.clip(np.round(c[:, :1] + t * d), 0, S - 1).astype(int)
    ys = np.clip(np.round(c[:, 1:] - 0.1 * d + t * d), 0, S - 1).astype(int)
    crop = g[np.arange(len(g))[:, None, None], ys[:, :, None], xs[:, None, :]]
    f = np.concatenate([np.diff(crop, axis=1).reshape(len(g), -1), np.diff(crop, axis=2).reshape(len(g), -1)], 1)
    return f / (f.std(1, keepdims=True) + 1e-3)


@pytest.mark.parametrize("domain,min_acc", [("photo", 0.55), ("infrared", 0.72)])
def test_expressions_are_learnable_from_pixels(domain, min_acc):
    """A linear model on landmark-placed gradients reads the 7 expressions (chance 0.14) on unseen people,
    in colour and in thermal infrared (where eyes, brows and mouth are warm/cold regions). Measured: 0.64 and
    0.87; the generator before the expression rework gave 0.47 and 0.57."""
    from sklearn.linear_model import LogisticRegression

    cfg = SynthConfig(image_size=64, seed=3, n_train_identities=40, n_heldout_identities=12, difficulty=0.5)
    a, la = render_faces(cfg, np.arange(800), stream="e", domain=domain)
    b, lb = render_faces(cfg, np.arange(300), stream="e", pool="heldout", domain=domain)
    clf = LogisticRegression(max_iter=300, C=0.01).fit(_expression_features(a, la["landmarks"]), la["expression"])
    acc = clf.score(_expression_features(b, lb["landmarks"]), lb["expression"])
    assert acc > min_acc, acc


def test_sample_grid(tmp_path):
    from PIL import Image

    p = tmp_path / "grid.png"
    save_sample_grid(p, SynthConfig(image_size=32), n_rows=5, n_cols=3)
    im = Image.open(p)
    assert im.size == (2 * (3 * 34 + 2), 2 * (5 * 34 + 2))
