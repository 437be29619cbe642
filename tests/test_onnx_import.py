"""ONNX -> Keras import: parity with onnxruntime on tiny graphs built here with onnx.helper."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from face_transfer.teachers.onnx_import import (
    SUPPORTED_OPS,
    OnnxImportError,
    UnsupportedOnnxOp,
    build_keras_from_onnx,
)

ort = pytest.importorskip("onnxruntime")
RNG = np.random.default_rng(0)


def _w(name, *shape, scale=0.3):
    return numpy_helper.from_array((RNG.normal(size=shape) * scale).astype(np.float32), name)


def _i64(name, values):
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _model(nodes, inits, in_shape, outputs, opset=17):
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape[1:]])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _parity(model, in_shape, outputs=None, n=3):
    x = RNG.normal(size=(n, *in_shape[1:])).astype(np.float32)
    names = outputs or [o.name for o in model.graph.output]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    known = {o.name for o in model.graph.output}
    exposed.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in known)
    ref = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"]).run(names, {"x": x})
    keras_model = build_keras_from_onnx(model, outputs=outputs)
    got = keras_model(x.transpose(0, 2, 3, 1))
    got = got if isinstance(got, (list, tuple)) else [got]
    diffs = []
    for r, g in zip(ref, got):
        g = np.asarray(g)
        assert g.shape == r.shape
        diffs.append(float(np.abs(r - g).max()))
    return max(diffs), keras_model


def _classifier():
    """Conv+BN+Relu+MaxPool+Add(const)+GlobalAveragePool+Flatten+Gemm+Softmax, NCHW input."""
    c = 6
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["bn"], name="bn1", epsilon=1e-3),
        helper.make_node("Relu", ["bn"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Add", ["p1", "chan_bias"], ["a1"], name="add1"),
        helper.make_node("GlobalAveragePool", ["a1"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["feat"], name="flat", axis=1),
        helper.make_node("Gemm", ["feat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    inits = [
        _w("w1", c, 3, 3, 3), _w("b1", c), _w("g", c), _w("beta", c), _w("mean", c),
        numpy_helper.from_array(RNG.uniform(0.5, 2, c).astype(np.float32), "var"),
        _w("chan_bias", 1, c, 1, 1), _w("fc_w", 5, c), _w("fc_b", 5),
    ]
    return _model(nodes, inits, (1, 3, 16, 16), ["probs"]), (1, 3, 16, 16)


def test_classifier_matches_onnxruntime():
    model, shape = _classifier()
    diff, keras_model = _parity(model, shape)
    print(f"classifier max abs diff vs onnxruntime: {diff:.2e}")
    assert diff < 1e-4
    assert keras_model.input.shape[1:] == (16, 16, 3)  # NHWC input
    assert keras_model.count_params() > 0


def test_intermediate_output_and_unknown_name():
    model, shape = _classifier()
    diff, keras_model = _parity(model, shape, outputs=["feat", "probs"])
    assert diff < 1e-4
    assert keras_model.outputs[0].shape[1:] == (6,)
    with pytest.raises(OnnxImportError, match="no tensor named 'nope'.*available tensors:.*feat"):
        build_keras_from_onnx(model, outputs=["nope"])


def test_flatten_of_feature_map_keeps_nchw_order():
    # A non-square, multi-channel map flattened straight into Gemm: wrong element order would show.
    nodes = [
        helper.make_node("Conv", ["x", "w", ""], ["c"], name="c", kernel_shape=[1, 1]),
        helper.make_node("Flatten", ["c"], ["f"], name="f"),
        helper.make_node("Gemm", ["f", "fw"], ["y"], name="g"),
        helper.make_node("Reshape", ["c", "shape"], ["r"], name="r"),
    ]
    model = _model(nodes, [_w("w", 4, 2, 1, 1), _w("fw", 4 * 3 * 5, 7), _i64("shape", [0, -1])], (1, 2, 3, 5), ["y", "r"])
    diff, _ = _parity(model, (1, 2, 3, 5))
    assert diff < 1e-4


def test_residual_block_ops():
    """Depthwise/grouped conv, PRelu, LeakyRelu, Sigmoid, Clip, Sub/Div/Mul, channel Pad, padded pools, Concat."""
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="stem", kernel_shape=[3, 3], pads=[1, 0, 1, 2]),
        helper.make_node("PRelu", ["c0", "slope"], ["pr"], name="prelu"),
        helper.make_node("Conv", ["pr", "wd"], ["dw"], name="dw", kernel_shape=[3, 3], group=4, pads=[2, 2, 2, 2], dilations=[2, 2]),
        helper.make_node("Conv", ["pr", "wg", "bg"], ["gc"], name="grouped", kernel_shape=[1, 1], group=2),
        helper.make_node("Pad", ["gc", "padc"], ["gcp"], name="padc"),  # 4 -> 8 channels, zero-padded
        helper.make_node("Sub", ["dw", "subc"], ["s1"], name="sub"),
        helper.make_node("Div", ["s1", "divc"], ["d1"], name="div"),
        helper.make_node("Mul", ["d1", "gcp"], ["m1"], name="mul"),
        helper.make_node("LeakyRelu", ["m1"], ["lr"], name="leaky", alpha=0.2),
        helper.make_node("Sigmoid", ["dw"], ["sg"], name="sig"),
        helper.make_node("Clip", ["lr", "lo", "hi"], ["cl"], name="clip"),
        helper.make_node("Add", ["cl", "sg"], ["ad"], name="add"),
        helper.make_node("AveragePool", ["ad"], ["ap"], name="avg", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["ad"], ["mp"], name="max", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        helper.make_node("Concat", ["ap", "mp"], ["cat"], name="cat", axis=1),
        helper.make_node("Dropout", ["cat"], ["dr"], name="drop"),
        helper.make_node("Identity", ["dr"], ["out"], name="id"),
    ]
    inits = [
        _w("w0", 4, 3, 3, 3), _w("b0", 4), _w("slope", 4, 1, 1), _w("wd", 8, 1, 3, 3),
        _w("wg", 4, 2, 1, 1), _w("bg", 4), _i64("padc", [0, 0, 0, 0, 0, 4, 0, 0]),
        _w("subc", 8, 1, 1), numpy_helper.from_array(np.float32(2.0), "divc"),
        numpy_helper.from_array(np.float32(-0.5), "lo"), numpy_helper.from_array(np.float32(0.8), "hi"),
    ]
    model = _model(nodes, inits, (1, 3, 10, 10), ["out"])
    diff, keras_model = _parity(model, (1, 3, 10, 10))
    print(f"residual-block max abs diff vs onnxruntime: {diff:.2e}")
    assert diff < 1e-4
    assert keras_model.output.shape[1] == 16


def test_transpose_and_nhwc_input_layout():
    # A TF-style graph: NHWC input, transposed to NCHW for the conv.
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "w"], ["c"], name="c", kernel_shape=[3, 3]),
        helper.make_node("Transpose", ["c"], ["y"], name="to_nhwc", perm=[0, 2, 3, 1]),
    ]
    model = _model(nodes, [_w("w", 5, 3, 3, 3)], (1, 8, 8, 3), ["y"])
    x = RNG.normal(size=(2, 8, 8, 3)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = np.asarray(build_keras_from_onnx(model, input_layout="nhwc")(x))
    assert np.abs(ref - got).max() < 1e-4


def test_unsupported_op_names_op_node_and_supported_list():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="r"), helper.make_node("Erf", ["r"], ["y"], name="weird_erf")]
    model = _model(nodes, [], (1, 3, 4, 4), ["y"])
    with pytest.raises(UnsupportedOnnxOp) as err:
        build_keras_from_onnx(model)
    msg = str(err.value)
    assert "'Erf'" in msg and "weird_erf" in msg and "Conv" in msg and "Gemm" in msg
    assert "Erf" not in SUPPORTED_OPS


def test_bad_files(tmp_path):
    with pytest.raises(OnnxImportError, match="no such file"):
        build_keras_from_onnx(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_text("this is not a protobuf at all\n" * 20)
    with pytest.raises(OnnxImportError, match="junk.onnx"):
        build_keras_from_onnx(junk)


def test_imported_model_round_trips_through_keras_file(tmp_path):
    import keras

    model, shape = _classifier()
    keras_model = build_keras_from_onnx(model)
    path = tmp_path / "imported.keras"
    keras_model.save(path)
    reloaded = keras.models.load_model(path, compile=False)
    x = RNG.normal(size=(2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(reloaded(x)), np.asarray(keras_model(x)), atol=1e-6)


def test_squeeze_and_unsqueeze_as_tf2onnx_writes_them():
    """tf2onnx exports Keras' global pooling as GlobalAveragePool -> Squeeze(axes=[2, 3]) (opset 13+ form)."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["g"]),
        helper.make_node("Squeeze", ["g", "axes"], ["s"]),
        helper.make_node("Unsqueeze", ["s", "axes1"], ["u"]),
        helper.make_node("Squeeze", ["u", "axes1"], ["out"]),
    ]
    model = _model(nodes, [_w("w", 5, 3, 3, 3), _i64("axes", [2, 3]), _i64("axes1", [-1])], (1, 3, 8, 8), ["out"])
    diff, km = _parity(model, (1, 3, 8, 8))
    assert diff < 1e-5
    assert tuple(km.output.shape) == (None, 5)
    bad = _model([helper.make_node("Squeeze", ["x", "axes"], ["out"])], [_i64("axes", [1])], (1, 3, 8, 8), ["out"])
    with pytest.raises(OnnxImportError, match="Squeeze"):
        build_keras_from_onnx(bad)
