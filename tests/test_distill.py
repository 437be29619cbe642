"""Distillation: code / teacher-space losses, DistillConfig checks, tiny distilled and supervised runs."""
import json
import os

import keras
import numpy as np
import pytest

from face_transfer.data import synth
from face_transfer.student.distill import (
    STUDENT_JSON,
    DistillConfig,
    cosine_code_loss,
    distill_student,
    l2_code_loss,
    load_student,
    teacher_space_loss,
    train_supervised_student,
)
from face_transfer.student.model import StudentConfig

RNG = np.random.default_rng(0)
SYNTH = synth.SynthConfig(image_size=32, n_train_identities=20, n_heldout_identities=5)
# Two blocks, no head conv: tracing the train step, not arithmetic, is what costs time here.
STUDENT = StudentConfig(input_size=32, width=0.25, embedding_dim=8, blocks=((1, 16, 1, 1), (4, 24, 1, 2)),
                        head_channels=0)
TINY = DistillConfig(steps=4, batch_size=8, checkpoint_every=2, log_every=2)


def _identity_decoder(dim):
    inp = keras.Input((dim,))
    return keras.Model(inp, keras.layers.Identity()(inp))


def test_losses_zero_at_target_positive_elsewhere_per_example():
    t = RNG.normal(size=(5, 6)).astype(np.float32)
    p = t + RNG.normal(size=(5, 6)).astype(np.float32)
    dec, dims = _identity_decoder(6), {"a": 2, "b": 4}
    for name, fn in (("l2", l2_code_loss), ("cosine", cosine_code_loss),
                     ("teacher_space", lambda a, b: teacher_space_loss(a, b, dec, dims))):
        same = np.asarray(fn(t, t))
        other = np.asarray(fn(p, t))
        assert same.shape == (5,) and other.shape == (5,), name
        np.testing.assert_allclose(same, 0.0, atol=1e-5, err_msg=name)
        assert np.all(other > 1e-3), name
    # cosine is scale free, l2 is not
    np.testing.assert_allclose(np.asarray(cosine_code_loss(3 * t, t)), 0.0, atol=1e-5)
    assert np.all(np.asarray(l2_code_loss(3 * t, t)) > 0)
    # l2 is the per-example mean squared error
    np.testing.assert_allclose(np.asarray(l2_code_loss(p, t)), np.mean((p - t) ** 2, -1), rtol=1e-5)


def test_teacher_space_loss_balances_blocks():
    dec, dims = _identity_decoder(5), {"a": 1, "b": 4}
    t = np.zeros((1, 5), np.float32)
    pa, pb = t.copy(), t.copy()
    pa[0, 0], pb[0, 3] = 1.0, 1.0
    la = float(np.asarray(teacher_space_loss(pa, t, dec, dims))[0])
    lb = float(np.asarray(teacher_space_loss(pb, t, dec, dims))[0])
    assert la == pytest.approx(0.5) and lb == pytest.approx(0.5)


def test_distill_config_rejects_unknown_loss():
    with pytest.raises(ValueError, match="'huber'.*l2"):
        DistillConfig(loss="huber")
    assert DistillConfig(loss="cosine").loss == "cosine"


def _targets():
    # A frozen "fused teacher": uint8 images -> 8-d code.
    keras.utils.set_random_seed(3)
    inp = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(4, 3, strides=4)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(8)(x))
    model.trainable = False
    return model


def test_distill_student_tiny_run_writes_outputs_and_resumes(tmp_path):
    out = str(tmp_path / "student")
    record = distill_student(STUDENT, TINY, SYNTH, _targets, out)
    assert os.path.exists(os.path.join(out, "model.keras"))
    with open(os.path.join(out, STUDENT_JSON)) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(record))
    assert record["kind"] == "distilled" and record["resumed_from_step"] == 0
    assert np.isfinite(record["final_loss"]) and record["final_loss"] > 0
    assert record["params"] > 0 and record["config"]["embedding_dim"] == 8
    assert os.listdir(os.path.join(out, "ckpt"))
    student = load_student(out)
    images, _ = synth.render_faces(SYNTH, np.arange(3))
    assert student.predict(images, verbose=0).shape == (3, 8)

    # Complete: a second call returns the record without training (no targets built).
    def must_not_build():
        raise AssertionError("retrained a finished student")
    assert distill_student(STUDENT, TINY, SYNTH, must_not_build, out) == saved

    # Interrupted after its last checkpoint (no student.json): the rerun restores step 4, trains nothing.
    os.remove(os.path.join(out, STUDENT_JSON))
    again = distill_student(STUDENT, TINY, SYNTH, _targets, out)
    assert again["resumed_from_step"] == TINY.steps
    np.testing.assert_allclose(load_student(out).predict(images, verbose=0), student.predict(images, verbose=0),
                               atol=1e-5)


def test_load_student_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=STUDENT_JSON):
        load_student(str(tmp_path))


def test_supervised_student_tiny_run(tmp_path):
    out = str(tmp_path / "supervised")
    record = train_supervised_student(STUDENT, DistillConfig(steps=2, batch_size=8, checkpoint_every=2, log_every=1),
                                      SYNTH, out)
    assert record["kind"] == "supervised_multitask"
    assert np.isfinite(record["final_loss"]) and record["final_loss"] > 0
    with open(os.path.join(out, STUDENT_JSON)) as f:
        assert json.load(f)["kind"] == "supervised_multitask"
    student = load_student(out)
    # The heads are dropped: the saved model is the bare student (image -> embedding).
    assert student.output.shape[-1] == 8
    assert all(not layer.name.startswith("sup_") for layer in student.layers)


def test_recalibrate_batchnorm_sets_exact_batch_statistics():
    import keras
    from face_transfer.student.distill import recalibrate_batchnorm
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.BatchNormalization(momentum=0.99)(inp))
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, (64, 4)).astype("float32") for _ in range(5)]
    assert recalibrate_batchnorm(model, iter(batches)) == 5
    bn = model.layers[-1]
    np.testing.assert_allclose(np.asarray(bn.moving_mean), np.mean([b.mean(0) for b in batches], 0), atol=1e-4)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), np.mean([b.var(0) for b in batches], 0), rtol=0.05)
    assert bn.momentum == 0.99  # restored
