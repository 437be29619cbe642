"""Distillation: code / teacher-space losses, DistillConfig checks, tiny distilled and supervised runs (the
student package: losses, augment, distill, supervised, training)."""
import dataclasses
import json
import os

import keras
import numpy as np
import pytest

from face_transfer.data import synth
from face_transfer.student.augment import degrade
from face_transfer.student.config import DistillConfig, StudentConfig
from face_transfer.student.distill import distill_student, find_encoder, make_source_dataset
from face_transfer.student.losses import (block_sq_loss, build_teacher_heads, cos_smooth_l1_loss, cosine_code_loss,
                                          l2_code_loss, relational_loss, teacher_space_loss)
from face_transfer.student.model import build_student, feature_model
from face_transfer.student.supervised import train_supervised_student
from face_transfer.student.training import STUDENT_JSON, load_student

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
    from face_transfer.machine import usable_cores
    assert 1 <= record["threads"] <= usable_cores()  # the cores its FLOP utilisation is measured against
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
    from face_transfer.student.training import recalibrate_batchnorm
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.BatchNormalization(momentum=0.99)(inp))
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, (64, 4)).astype("float32") for _ in range(5)]
    assert recalibrate_batchnorm(model, iter(batches)) == 5
    bn = model.layers[-1]
    np.testing.assert_allclose(np.asarray(bn.moving_mean), np.mean([b.mean(0) for b in batches], 0), atol=1e-4)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), np.mean([b.var(0) for b in batches], 0), rtol=0.05)
    assert bn.momentum == 0.99  # restored


# ---- the levers: noisy student, per-teacher heads, cos + smooth-L1 ----------------------------------

def test_cos_smooth_l1_loss_zero_at_target_and_balanced_per_block():
    dims = {"a": 2, "b": 4}
    t = RNG.normal(size=(5, 6)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(cos_smooth_l1_loss(t, t, dims)), 0.0, atol=1e-5)
    assert np.all(np.asarray(cos_smooth_l1_loss(t + 1.0, t, dims)) > 1e-3)
    # identity decoder: block_sq_loss is the teacher-space loss
    dec = _identity_decoder(6)
    p = t + RNG.normal(size=(5, 6)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(block_sq_loss(p, t, dims)), np.asarray(teacher_space_loss(p, t, dec, dims)),
                               rtol=1e-5)
    # a sign flip of one block costs cosine 2 of that block -> 0.5 * 2 / 2 teachers + its smooth-L1 share
    q = t.copy()
    q[:, :2] *= -1
    got = np.asarray(cos_smooth_l1_loss(q, t, dims, w_cos=1.0, w_sl1=0.0))
    np.testing.assert_allclose(got, 1.0, atol=1e-4)


def test_distill_config_new_options_validate():
    with pytest.raises(ValueError, match="noise"):
        DistillConfig(noise=1.5)
    with pytest.raises(ValueError, match="code_weight"):
        DistillConfig(code_weight=-1.0)
    c = DistillConfig(loss="cos_sl1", heads=True, noise=0.5)
    assert c.heads and c.noise == 0.5
    # backward compatible defaults: the paper's plain L2, no noise, no heads
    d = DistillConfig()
    assert (d.loss, d.noise, d.heads, d.code_weight) == ("l2", 0.0, False, 0.0)


def test_degrade_is_deterministic_per_position_and_changes_only_some_faces():
    images, _ = synth.render_faces(SYNTH, np.arange(16))
    pos = np.arange(100, 116)
    a = degrade(images, pos, prob=0.5, seed=3)
    assert a.shape == images.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, degrade(images, pos, prob=0.5, seed=3))
    # per position, not per batch: the same face at the same position degrades the same in another batch
    np.testing.assert_array_equal(a[4:9], degrade(images[4:9], pos[4:9], prob=0.5, seed=3))
    changed = np.array([not np.array_equal(x, y) for x, y in zip(a, images)])
    assert 0 < changed.sum() < 16
    assert not np.array_equal(a, degrade(images, pos, prob=0.5, seed=4))
    np.testing.assert_array_equal(degrade(images, pos, prob=0.0), images)
    assert all(not np.array_equal(x, y) for x, y in zip(degrade(images, pos, prob=1.0), images))


def test_noisy_dataset_yields_clean_and_degraded_pairs_resumable():
    cfg = dataclasses.replace(TINY, noise=1.0)
    from face_transfer.student.training import as_source
    src = as_source(SYNTH, cfg)
    batches = [b for b in make_source_dataset(src, cfg, None, 0, 8).take(3)]
    clean, noisy = (np.asarray(x) for x in batches[2])
    assert clean.shape == noisy.shape == (8, 32, 32, 3)
    assert not np.array_equal(clean, noisy)
    # the targets' faces are the plain (clean) stream
    plain = np.asarray(next(iter(make_source_dataset(src, TINY, None, 2, 8))))
    np.testing.assert_array_equal(clean, plain)
    # resumed at step 2: the same pair
    c2, n2 = (np.asarray(x) for x in next(iter(make_source_dataset(src, cfg, None, 2, 8))))
    np.testing.assert_array_equal(c2, clean)
    np.testing.assert_array_equal(n2, noisy)


def test_teacher_heads_shapes():
    heads = build_teacher_heads(8, {"face id": 3, "expr": 5}, hidden=16)
    out = heads(np.zeros((2, 8), np.float32))
    assert tuple(out.shape) == (2, 8)


def _concat_targets():
    # A frozen "standardised concatenation": uint8 images -> 6-d (blocks a: 2, b: 4).
    keras.utils.set_random_seed(5)
    inp = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(4, 3, strides=4)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(6)(x), name="concat")
    model.trainable = False
    return model


def _fused():
    # concat -> "encoder" nested model -> 8-d code, as build_fused_teacher nests the AE encoder.
    concat = _concat_targets()
    e_in = keras.Input((6,))
    encoder = keras.Model(e_in, keras.layers.Dense(8)(e_in), name="encoder")
    model = keras.Model(concat.input, encoder(concat.output), name="fused")
    model.trainable = False
    return model


def _toy_decoder():
    keras.utils.set_random_seed(7)
    inp = keras.Input((8,))
    return keras.Model(inp, keras.layers.Dense(6)(inp), name="decoder")


def test_find_encoder_in_fused_teacher():
    enc = find_encoder(_fused(), 6, 8)
    assert enc.name == "encoder"
    with pytest.raises(ValueError, match="no nested model"):
        find_encoder(_fused(), 7, 8)


def test_heads_noisy_cos_sl1_tiny_run_drops_heads_and_learns(tmp_path):
    dims = {"a": 2, "b": 4}
    cfg = DistillConfig(steps=12, batch_size=8, checkpoint_every=6, log_every=6, learning_rate=1e-2,
                        loss="cos_sl1", heads=True, head_hidden=16, noise=0.5, code_weight=0.5)
    out = str(tmp_path / "heads")
    record = distill_student(STUDENT, cfg, SYNTH, _fused, out, dims=dims, target_concat_fn=_concat_targets)
    assert record["teacher_heads_params"] > 0 and np.isfinite(record["final_loss"])
    student = load_student(out)
    # the heads are not part of the saved student: image -> embedding only
    assert student.output.shape[-1] == 8
    assert all(not layer.name.startswith("head") or layer.name == "head_conv" for layer in student.layers)
    assert record["params"] == student.count_params()


def test_ladder_heads_with_relational_term_train_and_leave_a_plain_student(tmp_path):
    """Heads reading the ladder (every stage pooled): they are trained with the student and dropped; the saved
    student is image -> code, and its stage layers received gradient (their weights moved)."""
    dims = {"a": 2, "b": 4}
    cfg = DistillConfig(steps=6, batch_size=8, checkpoint_every=6, log_every=6, learning_rate=1e-2,
                        loss="teacher_space", heads=True, heads_view="ladder", head_hidden=16,
                        relational_weight=1.0, code_weight=0.5)
    out = str(tmp_path / "ladder_heads")
    record = distill_student(STUDENT, cfg, SYNTH, _fused, out, dims=dims, target_concat_fn=_concat_targets)
    student = load_student(out)
    assert student.output.shape[-1] == 8 and np.isfinite(record["final_loss"])
    ladder_width = feature_model(student, "ladder").output["features"].shape[-1]
    assert record["teacher_heads_params"] > ladder_width * 16  # the heads' first layers read the ladder
    fresh = build_student(STUDENT)
    moved = [l.name for l in student.layers if l.name.endswith("_project") and
             not np.allclose(l.get_weights()[0], fresh.get_layer(l.name).get_weights()[0])]
    assert moved, "no stage was trained"


def test_relational_loss_zero_for_a_rescaled_target_positive_for_a_shuffled_one():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(6, 5)).astype("float32")
    dims = {"a": 2, "b": 3}
    scaled = t * np.array([3, 3, 0.5, 0.5, 0.5], "float32")  # per-block rescaling keeps every block's geometry
    assert np.allclose(np.asarray(relational_loss(scaled, t, dims)), 0, atol=1e-5)
    assert np.allclose(np.asarray(relational_loss(t * 2, t)), 0, atol=1e-5)
    assert float(np.mean(relational_loss(t[::-1], t, dims))) > 0.05
    with pytest.raises(ValueError, match="heads_view"):
        DistillConfig(heads_view="code")
    with pytest.raises(ValueError, match="relational_weight"):
        DistillConfig(relational_weight=-1)


def test_block_losses_decrease_on_a_toy_target(tmp_path):
    """Teacher space through trainable heads (and through the frozen decoder): the loss goes down."""
    import face_transfer.student.distill as distill_mod
    dims = {"a": 2, "b": 4}
    seen = {}
    for heads in (True, False):
        cfg = DistillConfig(steps=30, batch_size=8, checkpoint_every=30, log_every=30, learning_rate=1e-2,
                            loss="cos_sl1", heads=heads, head_hidden=16, augment=False)
        losses = []
        orig = distill_mod.distribute.train_loop

        def spy(*a, **k):
            hist = orig(*a, **k)
            losses.extend(hist["loss"])
            return hist
        distill_mod.distribute.train_loop = spy
        try:
            distill_student(STUDENT, cfg, SYNTH, _fused, str(tmp_path / f"h{heads}"), dims=dims,
                            target_concat_fn=_concat_targets, decoder_fn=_toy_decoder)
        finally:
            distill_mod.distribute.train_loop = orig
        seen[heads] = losses
        assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), (heads, losses[:5], losses[-5:])


def test_ceiling_heads_follow_task_kinds_and_share_labels():
    from face_transfer.data.tasks import TASKS
    from face_transfer.student.supervised import supervised_task_heads
    names = ["identity", "verification", "expression", "expression_sketch", "head_pose", "landmarks", "glasses"]
    heads = supervised_task_heads([TASKS[n] for n in names])
    by = {h["name"]: h for h in heads}
    # verification on held-out people and identity share one CosFace head; expression across domains one head
    assert [h["name"] for h in heads] == ["identity", "expression", "head_pose", "landmarks", "glasses"]
    assert by["identity"]["kind"] == "verification" and by["identity"]["labels"] == ("identity",)
    assert by["expression"]["classes"] == 7 and by["head_pose"]["labels"] == ("yaw", "pitch", "roll")


def test_ceiling_tiny_run_learns_every_kind_and_drops_heads(tmp_path):
    from face_transfer.data.tasks import TASKS
    out = str(tmp_path / "ceiling")
    tasks = [TASKS[n] for n in ("verification", "expression_sketch", "head_pose", "landmarks", "hair_color")]
    record = train_supervised_student(STUDENT, DistillConfig(steps=2, batch_size=8, checkpoint_every=2, log_every=1),
                                      SYNTH, out, tasks=tasks, domain="mixed", kind="ceiling", view="ladder")
    assert record["kind"] == "ceiling" and record["distill"]["domain"] == "mixed"
    assert record["heads_on"] == "ladder"
    assert record["tasks"] == ["verification", "expression_sketch", "head_pose", "landmarks", "hair_color"]
    assert np.isfinite(record["final_loss"]) and record["final_loss"] > 0
    student = load_student(out)
    assert student.output.shape[-1] == 8
    assert all(not layer.name.startswith("sup") for layer in student.layers)


def test_ladder_residual_trains_through_the_decoder_and_is_dropped(tmp_path):
    """decoder(code) + linear(ladder): the residual map is trained (its count is recorded) and dropped; the
    saved student is image -> code. It needs the frozen decoder's block loss."""
    dims = {"a": 2, "b": 4}
    cfg = DistillConfig(steps=6, batch_size=8, checkpoint_every=6, log_every=6, learning_rate=1e-2,
                        loss="teacher_space", ladder_residual=True)
    out = str(tmp_path / "residual")
    record = distill_student(STUDENT, cfg, SYNTH, _fused, out, dims=dims, target_concat_fn=_concat_targets,
                             decoder_fn=_toy_decoder)
    student = load_student(out)
    assert student.output.shape[-1] == 8 and np.isfinite(record["final_loss"])
    ladder_width = feature_model(student, "ladder").output["features"].shape[-1]
    assert record["ladder_residual_params"] == (ladder_width + 1) * 6
    assert "teacher_heads_params" not in record
    assert not any(l.name.startswith("ladder_residual") for l in student.layers)
    with pytest.raises(ValueError, match="ladder_residual"):
        DistillConfig(loss="l2", ladder_residual=True)
    with pytest.raises(ValueError, match="ladder_residual"):
        DistillConfig(loss="teacher_space", heads=True, ladder_residual=True)


def test_mix_faces_blends_a_fraction_deterministically_per_position():
    from face_transfer.student.augment import mix_faces
    images, _ = synth.render_faces(SYNTH, np.arange(16))
    pos = np.arange(40, 56)
    a = mix_faces(images, pos, prob=0.5, seed=1)
    assert a.shape == images.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, mix_faces(images, pos, prob=0.5, seed=1))
    changed = np.array([not np.array_equal(x, y) for x, y in zip(a, images)])
    assert 0 < changed.sum() < 16
    # a blended face lies between itself and its partner (the next face, cyclically), nearer itself
    i = int(np.flatnonzero(changed)[0])
    x, p, m = (v.astype(np.float32) for v in (images[i], images[(i + 1) % 16], a[i]))
    w = np.sum((m - x) * (p - x)) / np.sum((p - x) ** 2)
    assert 0 < w <= 0.5 + 1e-2 and np.abs(m - (x + w * (p - x))).max() <= 1.0
    np.testing.assert_array_equal(mix_faces(images, pos, prob=0.0), images)
    with pytest.raises(ValueError, match="mixup"):
        DistillConfig(mixup=-0.1)


def test_mixup_and_consistent_noise_feed_the_teachers_what_the_student_sees():
    from face_transfer.student.training import as_source
    src = as_source(SYNTH, TINY)
    plain = np.asarray(next(iter(make_source_dataset(src, TINY, None, 1, 8))))
    mixed_cfg = dataclasses.replace(TINY, mixup=1.0)
    mixed = np.asarray(next(iter(make_source_dataset(src, mixed_cfg, None, 1, 8))))
    assert mixed.shape == plain.shape and not np.array_equal(mixed, plain)  # one batch for both
    consistent = dataclasses.replace(TINY, noise=1.0, consistent_noise=True)
    one = np.asarray(next(iter(make_source_dataset(src, consistent, None, 1, 8))))
    clean, noisy = (np.asarray(x) for x in next(iter(make_source_dataset(src, dataclasses.replace(
        consistent, consistent_noise=False), None, 1, 8))))
    np.testing.assert_array_equal(one, noisy)  # the degraded faces, for teachers and student alike
    np.testing.assert_array_equal(clean, plain)


def test_teacher_dropping_keeps_the_worst_teacher_and_the_mean_scale():
    import tensorflow as tf
    from face_transfer.student.losses import teacher_dropping
    losses = tf.constant(np.random.default_rng(2).random((32, 4)).astype("float32"))
    seed = tf.constant([3, 4])
    np.testing.assert_allclose(teacher_dropping(losses, 0.0, seed), np.mean(losses, -1), rtol=1e-6)
    # everything but the worst teacher dropped: the batch mean is the mean of every face's worst loss
    np.testing.assert_allclose(np.mean(teacher_dropping(losses, 1.0, seed)), np.mean(np.max(losses, -1)), rtol=1e-5)
    half = np.asarray(teacher_dropping(losses, 0.5, seed))
    np.testing.assert_array_equal(half, np.asarray(teacher_dropping(losses, 0.5, seed)))  # stateless
    assert not np.allclose(half, np.mean(losses, -1))
    with pytest.raises(ValueError, match="block loss"):
        DistillConfig(loss="cosine", teacher_drop=0.5)


def test_teacher_dropping_and_mixup_tiny_run(tmp_path):
    dims = {"a": 2, "b": 4}
    cfg = DistillConfig(steps=4, batch_size=8, checkpoint_every=2, log_every=2, loss="teacher_space",
                        teacher_drop=0.5, mixup=0.5, code_weight=0.5)
    out = str(tmp_path / "drop")
    record = distill_student(STUDENT, cfg, SYNTH, _fused, out, dims=dims, target_concat_fn=_concat_targets,
                             decoder_fn=_toy_decoder)
    assert np.isfinite(record["final_loss"]) and record["distill"]["teacher_drop"] == 0.5
    assert load_student(out).output.shape[-1] == 8


def test_balanced_angle_loss_is_scale_free_bounded_and_one_per_orthogonal_block():
    from face_transfer.student.losses import balanced_angle_losses
    dims = {"a": 2, "b": 4}
    t = RNG.normal(size=(5, 6)).astype(np.float32)
    got = np.asarray(balanced_angle_losses(t, t, dims))
    assert got.shape == (5, 2) and np.all(got < 1e-4)  # 0 at the target
    # scale free per block: a block 100x too large costs nothing (a squared error would be dominated by it)
    big = t * np.array([100, 100, 1, 1, 1, 1], np.float32)
    assert np.all(np.asarray(balanced_angle_losses(big, t, dims)) < 1e-4)
    # a sign flip costs 2 (pi in units of pi/2), an orthogonal prediction 1, whatever the block's size
    q = t.copy()
    q[:, :2] *= -1
    np.testing.assert_allclose(np.asarray(balanced_angle_losses(q, t, dims))[:, 0], 2.0, atol=1e-4)
    o = np.stack([-t[:, 1], t[:, 0]], -1)  # a 90-degree rotation of block a
    np.testing.assert_allclose(np.asarray(balanced_angle_losses(np.concatenate([o, t[:, 2:]], -1), t, dims))[:, 0],
                               1.0, atol=1e-4)


def test_eupe_proxy_two_stages_leave_a_student_of_the_students_size(tmp_path):
    """proxy_width: a wider proxy is distilled from the fused teacher first (its own folder and record), then the
    student from the frozen proxy; what is saved is the student's architecture, with the proxy in its record."""
    dims = {"a": 2, "b": 4}
    cfg = DistillConfig(steps=4, batch_size=8, checkpoint_every=4, log_every=2, loss="balanced_angle",
                        code_weight=0.5, proxy_width=2.0)
    out = str(tmp_path / "eupe")
    record = distill_student(STUDENT, cfg, SYNTH, _fused, out, dims=dims, target_concat_fn=_concat_targets,
                             decoder_fn=_toy_decoder)
    student = load_student(out)
    assert record["params"] == student.count_params() == build_student(STUDENT).count_params()
    assert record["proxy"]["params"] == load_student(os.path.join(out, "proxy")).count_params() > record["params"]
    assert record["distill"]["proxy_width"] == 2.0 and np.isfinite(record["final_loss"])
    with open(os.path.join(out, STUDENT_JSON)) as f:
        assert json.load(f)["proxy"]["params"] == record["proxy"]["params"]
    # a finished run is read back, not retrained
    assert distill_student(STUDENT, cfg, SYNTH, _fused, out, dims=dims, target_concat_fn=_concat_targets,
                           decoder_fn=_toy_decoder)["proxy"] == record["proxy"]
    with pytest.raises(ValueError, match="proxy_width"):
        DistillConfig(proxy_width=0.5)


def test_echo_distils_with_each_teacher_pass_reused(tmp_path):
    """DistillConfig.echo: the student makes `echo` updates per batch of teacher targets (train_loop's echo, tested
    in test_distribute); the run counts batches (checkpoints, loss history), its optimizer steps x echo updates, and
    its learning-rate schedule spans them."""
    import face_transfer.student.distill as distill_mod
    from face_transfer.student.training import make_optimizer
    cfg = dataclasses.replace(TINY, echo=3)
    orig, hist = distill_mod.distribute.train_loop, {}

    def spy(*a, **k):
        hist.update(orig(*a, **k))
        return hist
    distill_mod.distribute.train_loop = spy
    try:
        record = distill_student(STUDENT, cfg, SYNTH, _targets, str(tmp_path / "echo"))
    finally:
        distill_mod.distribute.train_loop = orig
    assert record["distill"]["echo"] == 3 and np.isfinite(record["final_loss"])
    assert int(hist["optimizer"].iterations.numpy()) == 3 * cfg.steps and len(hist["loss"]) == cfg.steps
    assert make_optimizer(cfg)._learning_rate.decay_steps == 3 * cfg.steps
    with pytest.raises(ValueError, match="echo"):
        DistillConfig(echo=0)
    with pytest.raises(ValueError, match="echo"):
        DistillConfig(echo=1.5)
