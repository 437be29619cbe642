"""Analyser task heads: linear probes as plain arrays (classification, regression, landmarks)."""
import numpy as np
import pytest

from face_transfer.data.tasks import TASKS
from face_transfer.evaluation.heads import ANALYZER_TASKS, fit_head, fit_heads

RNG = np.random.default_rng(0)
N, D = 200, 12


def _features():
    return RNG.normal(size=(N, D)).astype(np.float32) * 3 + 1


def _apply(head, x):
    z = (x - head["mean"]) / head["scale"]
    return z @ head["coef"] + head["intercept"]


def test_binary_classification_head_is_two_way_softmax():
    x = _features()
    y = (x[:, 0] + 0.1 * RNG.normal(size=N) > 1).astype(np.int64)
    head = fit_head(TASKS["glasses"], x, {"glasses": y}, c=10.0)
    assert head["kind"] == "classification"
    assert head["coef"].shape == (D, 2) and head["intercept"].shape == (2,)
    assert head["classes"] == [0, 1]
    assert head["coef"].dtype == np.float32
    acc = np.mean(np.argmax(_apply(head, x), 1) == y)
    assert acc > 0.9


def test_multiclass_head():
    x = _features()
    y = np.argmax(x[:, :7], 1)
    head = fit_head(TASKS["expression"], x, {"expression": y}, c=10.0)
    assert head["coef"].shape == (D, 7) and head["classes"] == list(range(7))
    assert np.mean(np.argmax(_apply(head, x), 1) == y) > 0.8


def test_regression_head_destandardises():
    x = _features()
    age = 40 + 10 * x[:, 1] - 5 * x[:, 2]
    head = fit_head(TASKS["age"], x, {"age": age}, alpha=1e-3)
    for key in ("target_mean", "target_scale", "outputs"):
        assert key in head
    assert head["outputs"] == ["age"] and head["coef"].shape == (D, 1)
    pred = _apply(head, x) * head["target_scale"] + head["target_mean"]
    np.testing.assert_allclose(pred[:, 0], age, atol=0.5)
    assert abs(float(head["target_mean"][0]) - age.mean()) < 1e-3


def test_landmarks_head_has_ten_outputs():
    x = _features()
    lm = RNG.uniform(0, 32, size=(N, 5, 2)).astype(np.float32)
    lm[:, 0, 0] = 10 + x[:, 3]
    head = fit_head(TASKS["landmarks"], x, {"landmarks": lm})
    assert head["kind"] == "landmarks"
    assert head["coef"].shape == (D, 10) and head["intercept"].shape == (10,)
    assert head["target_mean"].shape == (10,)
    pred = _apply(head, x) * head["target_scale"] + head["target_mean"]
    assert np.corrcoef(pred[:, 0], lm[:, 0, 0])[0, 1] > 0.9


def test_fit_heads_splits_multi_output_regressions():
    x = _features()
    labels = {"yaw": 30 * x[:, 0], "pitch": 10 * x[:, 1], "roll": 5 * x[:, 2],
              "gender": (x[:, 3] > 1).astype(np.int64), "smile": x[:, 4]}
    heads = fit_heads(["head_pose", "gender", "smile"], x, labels, TASKS)
    assert set(heads) == {"yaw", "pitch", "roll", "gender", "smile"}
    for k in ("yaw", "pitch", "roll"):
        assert heads[k]["coef"].shape == (D, 1) and heads[k]["outputs"] == [k]
    assert heads["gender"]["coef"].shape == (D, 2)
    # Each split head learned its own label (yaw depends on feature 0, pitch on feature 1).
    assert np.argmax(np.abs(heads["yaw"]["coef"][:, 0])) == 0
    assert np.argmax(np.abs(heads["pitch"]["coef"][:, 0])) == 1


def test_analyzer_tasks_exist_in_registry():
    missing = [t for t in ANALYZER_TASKS if t not in TASKS]
    assert not missing
    assert all(TASKS[t].kind != "verification" for t in ANALYZER_TASKS)


def test_missing_label_raises():
    with pytest.raises(KeyError):
        fit_head(TASKS["beard"], _features(), {"glasses": np.zeros(N, np.int64)})
