"""Tests for the student: Keras 3 / tf_keras twin parity, cost counts, int8 TFLite, QAT, .keras round trip."""
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from face_transfer.student.config import ARCH_BLOCKS, StudentConfig
from face_transfer.student.model import build_student, count_flops, count_params, infer_config, student_from_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = StudentConfig(input_size=16, embedding_dim=8, blocks=((1, 8, 1, 1), (2, 16, 2, 2)), stem_channels=8,
                     head_channels=32)


def _randomize(model, seed=0):
    """Random weights everywhere (BN statistics included) so that parity checks mean something."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.name == "preprocess":
            continue
        values = layer.get_weights()
        new = []
        for w, var in zip(values, layer.weights):
            if "variance" in var.name:
                new.append(rng.uniform(0.5, 1.5, w.shape).astype(w.dtype))
            else:
                new.append((rng.standard_normal(w.shape) * 0.3).astype(w.dtype))
        layer.set_weights(new)
    return model


def _images(n, size, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("arch", sorted(ARCH_BLOCKS))
def test_default_size_is_small(arch):
    model = build_student(StudentConfig(arch=arch))
    params = count_params(model)
    assert params == model.count_params()
    assert 100_000 <= params <= 250_000, params
    assert model.output.shape == (None, 64)
    assert 1e6 < count_flops(model) < 50e6


def test_flops_match_hand_count():
    # TINY at 16x16: preprocess 1x1 dw -> stem 3x3/2 (8ch, 8x8) -> block0 dw3x3 + proj 8->8 (+add)
    # -> block1 expand 8->16, dw3x3/2 (4x4), proj 16->16 -> block2 expand 16->32, dw3x3, proj 32->16 (+add)
    # -> head 16->32 -> dense 32->8.
    hand = (
        16 * 16 * 3            # preprocess
        + 8 * 8 * 9 * 3 * 8    # stem
        + 8 * 8 * 9 * 8 + 8 * 8 * 8 * 8      # block0 dw, project
        + 8 * 8 * 8 * 16 + 4 * 4 * 9 * 16 + 4 * 4 * 16 * 16  # block1 expand, dw (stride 2), project
        + 4 * 4 * 16 * 32 + 4 * 4 * 9 * 32 + 4 * 4 * 32 * 16  # block2
        + 4 * 4 * 16 * 32      # head
        + 32 * 8               # embedding
    )
    assert count_flops(TINY) == hand
    model = build_student(TINY)
    assert count_flops(model) == hand
    assert "block2_add" in [l.name for l in model.layers] and "block1_add" not in [l.name for l in model.layers]
    hand_params = (3 + 3) + (9 * 3 * 8 + 4 * 8) + (9 * 8 + 4 * 8 + 8 * 8 + 4 * 8) + (
        8 * 16 + 4 * 16 + 9 * 16 + 4 * 16 + 16 * 16 + 4 * 16) + (16 * 32 + 4 * 32 + 9 * 32 + 4 * 32 + 32 * 16 + 4 * 16) + (
        16 * 32 + 4 * 32) + (32 * 8 + 8)
    assert count_params(model) == hand_params


def test_preprocessing_is_rescaling_and_frozen():
    model = build_student(TINY)
    pre = keras.Model(model.input, model.get_layer("preprocess").output)
    x = _images(2, 16)
    np.testing.assert_allclose(pre.predict(x, verbose=0), x.astype(np.float32) / 127.5 - 1.0, atol=1e-6)
    assert not model.get_layer("preprocess").trainable
    assert all("preprocess" not in v.path for v in model.trainable_variables)


@pytest.mark.parametrize("arch", sorted(ARCH_BLOCKS))
def test_tf_keras_twin_matches(arch):
    import tf_keras

    cfg = StudentConfig(input_size=32, width=0.5, embedding_dim=16, arch=arch)
    model = _randomize(build_student(cfg))
    twin = student_from_weights(model)  # architecture read back from the layers
    assert isinstance(twin, tf_keras.Model)
    assert [l.name for l in twin.layers] == [l.name for l in model.layers]
    assert [w.shape for w in twin.get_weights()] == [w.shape for w in model.get_weights()]
    for a, b in zip(twin.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = _images(4, 32)
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(twin.predict(x.astype(np.float32), verbose=0), expected, atol=1e-5)
    # The explicit-config path builds the same graph as the inferred one.
    twin2 = student_from_weights(model, cfg=cfg)
    np.testing.assert_allclose(twin2.predict(x.astype(np.float32), verbose=0), expected, atol=1e-5)
    # And back to Keras 3.
    back = student_from_weights(twin, backend="keras")
    np.testing.assert_allclose(back.predict(x, verbose=0), expected, atol=1e-5)


def test_infer_config_round_trip():
    model = build_student(TINY)
    cfg = infer_config(model)
    assert count_params(build_student(cfg)) == count_params(model)
    assert count_flops(cfg) == count_flops(model)


def test_bad_config_and_backend_errors():
    with pytest.raises(ValueError, match="arch"):
        StudentConfig(arch="resnet")
    with pytest.raises(ValueError, match="blocks row"):
        StudentConfig(blocks=((6, 24, 2, 3),))
    with pytest.raises(ValueError, match="input_size"):
        StudentConfig(input_size=4)
    with pytest.raises(ValueError, match="backend"):
        build_student(TINY, backend="torch")
    with pytest.raises(ValueError, match="no layer 'preprocess'"):
        infer_config(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
    # Lists from JSON become hashable tuples.
    assert StudentConfig(blocks=[[1, 8, 1, 1]]).blocks == ((1, 8, 1, 1),)


def test_keras_file_round_trip(tmp_path):
    model = _randomize(build_student(TINY))
    path = str(tmp_path / "student.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = _images(3, 16)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert not loaded.get_layer("preprocess").trainable


def _tensor_dtypes_of_ops(tflite_bytes):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=tflite_bytes)
    interp.allocate_tensors()
    details = {t["index"]: t for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()
    return interp, ops, details


@pytest.mark.parametrize("arch", sorted(ARCH_BLOCKS))
def test_full_int8_tflite(arch):
    cfg = StudentConfig(input_size=32, width=0.5, embedding_dim=16, arch=arch)
    model = _randomize(build_student(cfg), seed=3)
    calib = _images(16, 32, seed=4).astype(np.float32)

    def representative():
        for i in range(len(calib)):
            yield [calib[i:i + 1]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.int8
    tflite = converter.convert()

    interp, ops, tensors = _tensor_dtypes_of_ops(tflite)
    names = {op["op_name"] for op in ops}
    assert "DEPTHWISE_CONV_2D" in names and "CONV_2D" in names and "FULLY_CONNECTED" in names
    for op in ops:
        for idx in list(op["inputs"]) + list(op["outputs"]):
            if idx < 0:
                continue
            assert tensors[idx]["dtype"] in (np.int8, np.uint8, np.int32), (op["op_name"], tensors[idx])
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    assert inp["dtype"] == np.uint8 and out["dtype"] == np.int8

    # Parity with the float model on held-out images: the int8 code tracks the float code closely.
    x = _images(8, 32, seed=5)
    expected = model.predict(x, verbose=0)
    got = []
    for i in range(len(x)):
        interp.set_tensor(inp["index"], x[i:i + 1])
        interp.invoke()
        scale, zero = out["quantization"]
        got.append((interp.get_tensor(out["index"]).astype(np.float32) - zero) * scale)
    got = np.concatenate(got)
    rel = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    assert rel < 0.1, rel


def test_tf_keras_twin_accepts_qat():
    # tfmot flips TF_USE_LEGACY_KERAS for the whole process, hence a subprocess.
    script = textwrap.dedent("""
        import numpy as np
        import tensorflow_model_optimization as tfmot
        from face_transfer.student.config import StudentConfig
        from face_transfer.student.model import build_student, student_from_weights
        cfg = StudentConfig(input_size=16, embedding_dim=8, blocks=((1, 8, 1, 1), (2, 16, 2, 2)),
                            stem_channels=8, head_channels=32)
        twin = student_from_weights(build_student(cfg), cfg=cfg)
        qat = tfmot.quantization.keras.quantize_model(twin)
        qat.compile(optimizer="adam", loss="mse")
        x = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3)).astype("float32")
        hist = qat.fit(x, np.zeros((8, 8), "float32"), epochs=2, batch_size=4, verbose=0)
        y = qat.predict(x, verbose=0)
        assert y.shape == (8, 8) and np.isfinite(y).all()
        assert any("quant" in l.name for l in qat.layers)
        print("QAT_OK", len(qat.layers), hist.history["loss"][-1])
    """)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "QAT_OK" in proc.stdout


def test_feature_views_embedding_and_ladder():
    from face_transfer.student.model import feature_model, stage_outputs
    cfg = StudentConfig(input_size=32, width=0.5, embedding_dim=16)
    model = build_student(cfg)
    # one stage end per resolution: before each stride-2 block, and the last block
    ends = stage_outputs(model)
    assert len(ends) == 1 + sum(1 for row in cfg.block_rows() if row[3] == 2)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.float32)
    code = model.predict(images, verbose=0)
    emb = feature_model(model, "embedding").predict(images, verbose=0)
    np.testing.assert_allclose(emb["features"], code, atol=1e-6)
    lad = feature_model(model, "ladder").predict(images, verbose=0)
    widths = [int(model.get_layer(n).output.shape[-1]) for n in ends] + [int(model.get_layer("pool").output.shape[-1])]
    assert lad["features"].shape == (3, sum(widths) + 16)
    np.testing.assert_allclose(lad["features"][:, -16:], code, atol=1e-5)  # the code is part of the ladder
    np.testing.assert_allclose(lad["embedding"], code, atol=1e-6)
    with pytest.raises(ValueError, match="view='pyramid'"):
        feature_model(model, "pyramid")


def test_fused_batchnorm_trains_like_keras_and_the_student_is_saved_with_stock_layers(tmp_path):
    """train_fast: FusedBatchNormalization gives Keras 3's outputs, moving statistics and gradients in training;
    student_from_weights turns it back into stock BatchNormalization layers with the same function."""
    from face_transfer.student.model import FusedBatchNormalization
    x = tf.constant(np.random.default_rng(0).normal(2, 3, (8, 5, 5, 6)).astype("float32"))
    stock, fused = (k(momentum=0.9, epsilon=1e-3) for k in (keras.layers.BatchNormalization, FusedBatchNormalization))
    for bn in (stock, fused):
        bn.build(x.shape)
        bn.gamma.assign(np.linspace(0.5, 2.0, 6).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        ys, yf = stock(x, training=True), fused(x, training=True)
        ls, lf = tf.reduce_sum(ys ** 3), tf.reduce_sum(yf ** 3)
    np.testing.assert_allclose(yf, ys, atol=1e-5)
    np.testing.assert_allclose(fused.moving_mean, stock.moving_mean, atol=1e-5)
    np.testing.assert_allclose(fused.moving_variance, stock.moving_variance, rtol=1e-5)
    np.testing.assert_allclose(tape.gradient(lf, fused.gamma), tape.gradient(ls, stock.gamma), rtol=1e-4)
    np.testing.assert_allclose(fused(x), stock(x), atol=1e-5)  # inference: the parent's call

    model = build_student(TINY, train_fast=True)
    assert any(isinstance(l, FusedBatchNormalization) for l in model.layers)
    _randomize(model)
    back = student_from_weights(model, "keras", TINY)
    assert not any(isinstance(l, FusedBatchNormalization) for l in back.layers)
    images = np.random.default_rng(1).integers(0, 256, (4, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(back(images), model(images), atol=1e-5)
    with pytest.raises(ValueError, match="train_fast"):
        build_student(TINY, backend="tf_keras", train_fast=True)


def test_distilled_student_is_saved_without_the_training_layers(tmp_path):
    from face_transfer.data import synth
    from face_transfer.student.config import DistillConfig
    from face_transfer.student.distill import distill_student
    from face_transfer.student.model import FusedBatchNormalization
    from face_transfer.student.training import load_student
    inp = keras.Input((16, 16, 3))
    fused_teacher = keras.Model(inp, keras.layers.Dense(8)(keras.layers.GlobalAveragePooling2D()(inp)))
    out = str(tmp_path / "s")
    distill_student(TINY, DistillConfig(steps=2, batch_size=4, checkpoint_every=2), synth.SynthConfig(
        image_size=16, n_train_identities=10, n_heldout_identities=4), lambda: fused_teacher, out)
    student = load_student(out)
    assert not any(isinstance(l, FusedBatchNormalization) for l in student.layers)
    assert any(type(l) is keras.layers.BatchNormalization for l in student.layers)
