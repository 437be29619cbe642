"""TFLite conversion (the modes of face_transfer.deploy.modes: float32, float16, dynamic range, full-integer int8 PTQ)
and its validation against the float model.

Owns QuantizationConfig, convert_to_tflite, fold_input_affine, fit_xnnpack_requantization, tflite_op_set,
validate_tflite, TFLiteValidationError and the parity report.

Every file takes uint8 images [N,S,S,3] (0..255). The int8 file is full integer (TFLITE_BUILTINS_INT8
only) with uint8 input and float32 outputs: the final DEQUANTIZE costs one op and spares every caller
from reading output scales and zero points (and keeps softmax probabilities summing to 1 exactly).
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from face_transfer.core.interpreter import load_interpreter
from face_transfer.deploy import savedmodel as _sm
from face_transfer.deploy.infer import run_tflite
from face_transfer.deploy.modes import get_mode, mode_names

# Ops that only move values across the integer/float boundary at the model's edges.
_BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE")
_FLOAT_DTYPES = (np.float32, np.float16, np.float64)


class TFLiteValidationError(RuntimeError):
    """A converted file that does not match its float model (or is not integer-only); `.report` has the figures."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


@dataclasses.dataclass(frozen=True)
class QuantizationConfig:
    """How to quantize: kept apart from the conversion itself (MediaPipe Model Maker style)."""

    mode: str  # a registered TFLite mode (face_transfer.deploy.modes)
    representative_images: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
    calibration_steps: int = 100

    def __post_init__(self):
        if self.mode not in mode_names():
            raise ValueError(f"QuantizationConfig.mode={self.mode!r}: expected one of {mode_names()}")
        if get_mode(self.mode).calibrated:
            images = self.representative_images
            if images is None:
                raise ValueError(f"QuantizationConfig(mode={self.mode!r}) needs representative_images (uint8 [N,S,S,3])")
            images = np.asarray(images)
            if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] < 1:
                raise ValueError(
                    f"QuantizationConfig.representative_images has shape {images.shape}; expected uint8 [N,S,S,3]"
                )
            if images.dtype != np.uint8:
                raise ValueError(
                    f"QuantizationConfig.representative_images has dtype {images.dtype}; expected uint8 0..255 images"
                )
            if not isinstance(self.calibration_steps, int) or self.calibration_steps < 1:
                raise ValueError(f"QuantizationConfig.calibration_steps={self.calibration_steps!r}: expected an int >= 1")

    @classmethod
    def for_float32(cls):
        return cls("float32")

    @classmethod
    def for_float16(cls):
        return cls("float16")

    @classmethod
    def for_dynamic(cls):
        return cls("dynamic")

    @classmethod
    def for_int8(cls, images, steps: int = 100):
        """int8_ptq, calibrated on `steps` of `images`."""
        return cls("int8_ptq", representative_images=np.asarray(images), calibration_steps=steps)

    @classmethod
    def for_mode(cls, mode: str, images=None, steps: int | None = None):
        """`mode`, calibrated (when it needs it) on `steps` (default: all) of `images`."""
        if not get_mode(mode).calibrated:
            return cls(mode)
        images = None if images is None else np.asarray(images)
        if steps is None:
            steps = 100 if images is None else len(images)
        return cls(mode, representative_images=images, calibration_steps=steps)


def range_anchor_image(size: int) -> np.ndarray:
    """A 0..255 ramp image: calibrating on it pins the input scale to exactly 1, zero point 0,
    so the uint8 input is the raw pixel value whatever the calibration photos' extremes."""
    ramp = np.linspace(0, 255, size * size * 3).round().astype(np.float32)
    return ramp.reshape(1, size, size, 3)


def _signatures(saved_model_dir: str) -> dict:
    """{signature key: (input name, dtype, shape)} read from saved_model.pb without loading the graph."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    found = {}
    for key, sig in proto.meta_graphs[0].signature_def.items():
        if len(sig.inputs) != 1:
            continue
        (name, info), = sig.inputs.items()
        shape = [d.size if d.size >= 0 else None for d in info.tensor_shape.dim]
        found[key] = (name, tf.dtypes.as_dtype(info.dtype).as_numpy_dtype, shape)
    return found


def _converter_from_dir(saved_model_dir: str, mode):
    signatures = _signatures(saved_model_dir)
    # int8 quantizes from the float32 endpoint (see savedmodel.FLOAT_SERVING_KEY); float modes keep
    # the uint8 endpoint so every file takes the same uint8 images.
    if mode.float_endpoint and _sm.FLOAT_SERVING_KEY in signatures:
        key = _sm.FLOAT_SERVING_KEY
    elif _sm.SERVING_KEY in signatures:
        key = _sm.SERVING_KEY
    else:
        raise ValueError(
            f"{saved_model_dir}: no single-input {_sm.SERVING_KEY!r} signature (has {sorted(signatures)})"
        )
    return tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=[key]), key, signatures[key]


def convert_to_tflite(model_or_savedmodel_dir, qcfg: QuantizationConfig) -> bytes:
    """Converts a Keras 3 model or an export_savedmodel directory to a .tflite flatbuffer.

    A Keras model is first exported with export_savedmodel (never tf.saved_model.save: that leaves
    variable-handle ops that make int8 conversion fail and float conversion output NaN).
    int8_ptq is full integer: TFLITE_BUILTINS_INT8 only, uint8 input (scale 1, zero point 0), float32 outputs.
    """
    if not isinstance(qcfg, QuantizationConfig):
        raise TypeError(f"convert_to_tflite(qcfg=...): expected a QuantizationConfig, got {type(qcfg).__name__}")
    if isinstance(model_or_savedmodel_dir, keras.Model):
        with tempfile.TemporaryDirectory(prefix="ft_export_") as tmp:
            path = _sm.export_savedmodel(model_or_savedmodel_dir, os.path.join(tmp, "saved_model"))
            return convert_to_tflite(path, qcfg)
    path = os.fspath(model_or_savedmodel_dir)
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise ValueError(f"convert_to_tflite: {path} is not a SavedModel directory (no saved_model.pb) nor a Keras model")
    mode = get_mode(qcfg.mode)
    if mode.trains:
        raise ValueError(f"convert_to_tflite: {mode.name} files come from a fine-tune of the Keras student "
                         "(deploy/qat.py), not from its SavedModel")
    converter, key, spec = _converter_from_dir(path, mode)
    mode.configure(converter, qcfg, spec, path)
    return mode.finish(converter.convert())


def fold_input_affine(tflite_bytes: bytes):
    """Replaces the int8 student's input normalisation (the frozen 1x1 `preprocess` DEPTHWISE_CONV_2D,
    y = a*x + c per channel, right before the stem CONV_2D) by an ADD of the constant c/a, and moves the
    scale a into the stem conv's weights. Same arithmetic (the outputs are bit-identical for the uniform
    x/127.5 - 1 of build_student): the ADD's output zero point is y's real 0, so the conv's SAME padding
    stays exact.

    Why: XNNPACK runs a depthwise conv over 3 channels in a 16-channel tile (13 lanes wasted). Measured
    on the AVX2 code path (callgrind under valgrind, whose CPUID has no AVX-512): 297k instructions per
    face for that op, ~6% of the int8 student; the scalar ADD costs a few thousand. See BENCHMARKS.md.

    Only when c/a is one value for every channel (a scalar ADD; a per-channel [C] constant makes XNNPACK
    add pixel by pixel, no faster than the depthwise conv). convert_to_tflite applies it to int8 PTQ files;
    QAT files (deploy/qat.py) keep the op: their fine-tune learnt around its rounding.

    Returns (bytes, [{op_index, tensor, scale, offset, add_scale, add_zero_point}]); the bytes are
    unchanged when no such pair is found.
    """
    from tensorflow.lite.python import schema_py_generated as fb
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite_bytes))
    names = _op_names(model)
    bufs = model.buffers
    buffer_users = {}
    for sg in model.subgraphs:
        for t in sg.tensors:
            buffer_users[t.buffer] = buffer_users.get(t.buffer, 0) + 1
    folded = []
    for sg in model.subgraphs:
        tensors, ops = sg.tensors, sg.operators
        graph_outputs = {int(i) for i in (sg.outputs if sg.outputs is not None else [])}
        consumers = {}
        for op in ops:
            for i in (op.inputs if op.inputs is not None else []):
                consumers.setdefault(int(i), []).append(op)
        for dw in list(ops):
            if names[dw.opcodeIndex] != "DEPTHWISE_CONV_2D" or dw.inputs is None or len(dw.inputs) != 3 \
                    or dw.outputs is None or len(dw.outputs) != 1:
                continue
            o = dw.builtinOptions
            x_i, w_i, b_i = (int(i) for i in dw.inputs)
            y_i = int(dw.outputs[0])
            if min(x_i, w_i, b_i) < 0 or (o.strideH, o.strideW, o.depthMultiplier, o.fusedActivationFunction) != (1, 1, 1, 0):
                continue
            x, w, b, y = tensors[x_i], tensors[w_i], tensors[b_i], tensors[y_i]
            if list(w.shape[:3]) != [1, 1, 1] or not all(_quantized(t) for t in (x, w, b, y)) \
                    or len(x.quantization.scale) != 1 or x.type != fb.TensorType.INT8:
                continue
            users = consumers.get(y_i, [])
            if len(users) != 1 or y_i in graph_outputs or names[users[0].opcodeIndex] != "CONV_2D":
                continue
            conv = users[0]
            if int(conv.inputs[0]) != y_i or len(conv.inputs) < 3 or int(conv.inputs[2]) < 0:
                continue
            cw, cb = tensors[int(conv.inputs[1])], tensors[int(conv.inputs[2])]
            if cw.type != fb.TensorType.INT8 or cb.type != fb.TensorType.INT32 or not _quantized(cw) \
                    or cw.quantization.quantizedDimension != 0:
                continue
            if len(consumers.get(int(conv.inputs[1]), [])) != 1 or len(consumers.get(int(conv.inputs[2]), [])) != 1 \
                    or buffer_users.get(cw.buffer, 0) != 1 or buffer_users.get(cb.buffer, 0) != 1:
                continue  # weights shared with another op or tensor: leave the graph alone
            C = int(w.shape[3])
            a = np.frombuffer(bytes(bufs[w.buffer].data), np.int8).astype(np.float64).reshape(C) \
                * np.broadcast_to(np.asarray(w.quantization.scale, np.float64), (C,))
            c = np.frombuffer(bytes(bufs[b.buffer].data), np.int32).astype(np.float64).reshape(C) \
                * np.broadcast_to(np.asarray(b.quantization.scale, np.float64), (C,))
            if np.any(a <= 0) or int(cw.shape[3]) != C:
                continue
            s_in, z_in = float(x.quantization.scale[0]), int(x.quantization.zeroPoint[0])
            # y = a * (x + c / a): an ADD of the constant c / a, then the scale a moves into the conv's
            # weights. The ADD output's zero point is y's real 0, so the conv's own (SAME) padding stays exact.
            shift = c / a
            lo = min((-128 - z_in) * s_in + float(shift.min()), 0.0)
            hi = max((127 - z_in) * s_in + float(shift.max()), 0.0)
            s_o = (hi - lo) / 255.0
            z_o = int(np.clip(np.round(-128 - lo / s_o), -128, 127))
            s_k = max(float(np.max(np.abs(shift))), 1e-12) / 127.0
            k_q = np.clip(np.round(shift / s_k), -127, 127).astype(np.int8)
            if np.ptp(k_q) != 0:
                continue  # per-channel shifts: XNNPACK broadcasts a [C] constant pixel by pixel (measured no faster)
            k_q = k_q[:1].reshape(())  # one shift for every channel: a scalar ADD, XNNPACK's add-constant kernel
            O, kh, kw = int(cw.shape[0]), int(cw.shape[1]), int(cw.shape[2])
            W2 = np.frombuffer(bytes(bufs[cw.buffer].data), np.int8).astype(np.float64).reshape(O, kh, kw, C) \
                * np.broadcast_to(np.asarray(cw.quantization.scale, np.float64), (O,))[:, None, None, None] \
                * a[None, None, None, :]
            bias = np.frombuffer(bytes(bufs[cb.buffer].data), np.int32).astype(np.float64).reshape(O) \
                * np.broadcast_to(np.asarray(cb.quantization.scale, np.float64), (O,))
            s_w2 = np.max(np.abs(W2.reshape(O, -1)), axis=1) / 127.0
            s_w2 = np.where(s_w2 > 0, s_w2, 1.0)
            bias_q = np.round(bias / (s_o * s_w2))
            if np.any(np.abs(bias_q) > 2**31 - 1):
                continue
            bufs[cw.buffer].data = np.frombuffer(
                np.clip(np.round(W2 / s_w2[:, None, None, None]), -127, 127).astype(np.int8).tobytes(), np.uint8)
            bufs[cb.buffer].data = np.frombuffer(bias_q.astype(np.int32).tobytes(), np.uint8)
            cw.quantization.scale, cw.quantization.zeroPoint = s_w2.astype(np.float32), np.zeros(O, np.int64)
            cb.quantization.scale, cb.quantization.zeroPoint = (s_o * s_w2).astype(np.float32), np.zeros(O, np.int64)
            k_i = _add_const(model, sg, f"{_tensor_name(y)}/folded_shift", k_q, (s_k, 0))
            y.quantization.scale, y.quantization.zeroPoint = np.array([s_o], np.float32), np.array([z_o], np.int64)
            y.quantization.quantizedDimension = 0
            add = fb.OperatorT()
            add.opcodeIndex = _opcode_index(model, names, "ADD", fb.BuiltinOperator.ADD, version=2)
            add.inputs, add.outputs = np.array([x_i, k_i], np.int32), np.array([y_i], np.int32)
            add.builtinOptionsType, add.builtinOptions = fb.BuiltinOptions.AddOptions, fb.AddOptionsT()
            index = next(i for i, op in enumerate(ops) if op is dw)
            ops[index] = add
            folded.append({"op_index": index, "tensor": _tensor_name(y), "scale": float(np.mean(a)),
                           "offset": float(np.mean(c)), "add_scale": s_o, "add_zero_point": z_o})
    if not folded:
        return bytes(tflite_bytes), folded
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), folded


def _tensor_name(t):
    return t.name.decode() if isinstance(t.name, bytes) else str(t.name)


def _opcode_index(model, names, name, code, version):
    from tensorflow.lite.python import schema_py_generated as fb
    if name in names:
        return names.index(name)
    oc = fb.OperatorCodeT()
    oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), version
    model.operatorCodes.append(oc)
    names.append(name)
    return len(model.operatorCodes) - 1


def _add_const(model, sg, name, values, quant):
    from tensorflow.lite.python import schema_py_generated as fb
    buf = fb.BufferT()
    buf.data = np.frombuffer(np.ascontiguousarray(values).tobytes(), np.uint8)
    model.buffers.append(buf)
    t = fb.TensorT()
    t.name, t.type, t.shape = name.encode(), fb.TensorType.INT8, np.array(values.shape, np.int32)
    t.buffer = len(model.buffers) - 1
    q = fb.QuantizationParametersT()
    q.scale, q.zeroPoint = np.array([quant[0]], np.float32), np.array([quant[1]], np.int64)
    t.quantization = q
    sg.tensors.append(t)
    return len(sg.tensors) - 1


# XNNPACK (the default TFLite CPU delegate) refuses a quantized conv / fully-connected node whose
# requantization scale input_scale * weight_scale[channel] / output_scale is >= 256 (xnn_create_*_qs8:
# "requantization scale ... is greater or equal to 256.0"); the delegate then fails to prepare and the
# whole file fails to load. The builtin kernels accept any scale. A linear head whose calibrated output
# range is tiny next to its weights (folded probe on near-constant embedding features) produces one.
XNNPACK_MAX_REQUANTIZATION_SCALE = 256.0
_REQUANTIZATION_TARGET = 255.0  # what a too-large scale is brought down to (< 256 with float32 margin)
# {op: (input index, weight index)} of the ops XNNPACK requantizes with input*weight/output scales.
_WEIGHTED_OPS = {"FULLY_CONNECTED": (0, 1), "CONV_2D": (0, 1), "DEPTHWISE_CONV_2D": (0, 1), "TRANSPOSE_CONV": (2, 1)}
# Ops whose int8 kernels need the output quantized exactly like the input (they move bytes only).
_SAME_SCALE_OPS = ("RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE", "GATHER", "SLICE", "STRIDED_SLICE",
                   "SPLIT", "SPLIT_V", "UNPACK", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH", "MAX_POOL_2D",
                   "PAD", "PADV2", "TILE", "BROADCAST_TO")


def _op_names(model) -> list[str]:
    from tensorflow.lite.python import schema_py_generated as schema_fb
    from tensorflow.lite.python import schema_util

    by_code = {v: k for k, v in vars(schema_fb.BuiltinOperator).items() if not k.startswith("_")}
    return [by_code.get(schema_util.get_builtin_code_from_operator_code(c), "CUSTOM") for c in model.operatorCodes]


def _quantized(tensor) -> bool:
    q = tensor.quantization
    return q is not None and q.scale is not None and len(q.scale) > 0 and float(np.max(q.scale)) > 0


def fit_xnnpack_requantization(tflite_bytes: bytes, limit: float = XNNPACK_MAX_REQUANTIZATION_SCALE):
    """Makes every int8 conv / fully-connected node acceptable to XNNPACK: where input_scale *
    max(weight_scale) / output_scale >= `limit`, the output tensor's scale is raised until the ratio is
    255 (zero point re-centred so the calibrated range stays representable, and carried through the
    byte-moving ops that must keep it, e.g. the landmarks RESHAPE). Only that output's resolution
    coarsens, by ratio / 255; every other tensor keeps its calibrated parameters.

    Returns (bytes, [{op, op_index, tensor, ratio, new_ratio}]); the bytes are unchanged when nothing
    needed fitting.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite_bytes))
    names = _op_names(model)
    fixed = []
    for subgraph in model.subgraphs:
        tensors = subgraph.tensors
        consumers = {}
        for op in subgraph.operators:
            for i in op.inputs if op.inputs is not None else []:
                consumers.setdefault(int(i), []).append(op)
        for index, op in enumerate(subgraph.operators):
            name = names[op.opcodeIndex]
            if name not in _WEIGHTED_OPS or op.outputs is None or len(op.outputs) != 1:
                continue
            i_in, i_w = _WEIGHTED_OPS[name]
            if len(op.inputs) <= max(i_in, i_w) or min(op.inputs[i_in], op.inputs[i_w]) < 0:
                continue
            x, w, y = tensors[op.inputs[i_in]], tensors[op.inputs[i_w]], tensors[op.outputs[0]]
            if not all(_quantized(t) for t in (x, w, y)) or len(y.quantization.scale) != 1:
                continue  # float or dynamic-range op: XNNPACK does not requantize it
            s_in, s_out = float(x.quantization.scale[0]), float(y.quantization.scale[0])
            ratio = s_in * float(np.max(w.quantization.scale)) / s_out
            if ratio < limit:
                continue
            new_scale = s_in * float(np.max(w.quantization.scale)) / _REQUANTIZATION_TARGET
            old_zp = int(y.quantization.zeroPoint[0])
            qmin, qmax = (-128, 127) if y.type == 9 else (0, 255)  # TensorType.INT8 else UINT8
            lo, hi = (qmin - old_zp) * s_out, (qmax - old_zp) * s_out
            slack = (qmax - qmin) * new_scale - (hi - lo)
            new_zp = int(np.clip(np.round(qmin - (lo - slack / 2) / new_scale), qmin, qmax))
            old = (s_out, old_zp)
            todo = [op.outputs[0]]
            while todo:  # the FC output and the same-scale ops that pass it on
                t = todo.pop()
                q = tensors[t].quantization
                q.scale, q.zeroPoint = np.array([new_scale], np.float32), np.array([new_zp], np.int64)
                for consumer in consumers.get(int(t), []):
                    if names[consumer.opcodeIndex] in _SAME_SCALE_OPS and consumer.outputs is not None:
                        for o in consumer.outputs:
                            oq = tensors[o].quantization
                            if _quantized(tensors[o]) and len(oq.scale) == 1 and \
                                    (float(oq.scale[0]), int(oq.zeroPoint[0])) == old:
                                todo.append(o)
            fixed.append({"op": name, "op_index": index, "tensor": y.name.decode() if isinstance(y.name, bytes) else y.name,
                          "ratio": ratio, "new_ratio": s_in * float(np.max(w.quantization.scale)) / new_scale})
    if not fixed:
        return bytes(tflite_bytes), fixed
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), fixed


def check_loads_with_default_delegates(tflite_bytes) -> None:
    """RuntimeError unless the file loads with the interpreter's default (XNNPACK) delegate."""
    try:
        _interpreter(tflite_bytes, default_delegates=True)
    except RuntimeError as err:
        raise RuntimeError(
            f"the int8 TFLite file converts but does not load with the default (XNNPACK) delegate: {err}"
        ) from err


def _interpreter(tflite_bytes, default_delegates=True):
    return load_interpreter(tflite_bytes, default_delegates=default_delegates)


def tflite_op_set(tflite_bytes) -> dict:
    """What the file computes with: op names, tensor dtypes, input/output dtypes and whether any op
    other than the edge QUANTIZE/DEQUANTIZE reads or writes a float tensor (`has_float_ops`)."""
    interpreter = _interpreter(tflite_bytes, default_delegates=False)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops, float_ops, tensor_dtypes = set(), set(), set()
    for op in interpreter._get_ops_details():
        ops.add(op["op_name"])
        indices = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0 and i in tensors]
        dtypes = {np.dtype(tensors[i]["dtype"]) for i in indices}
        tensor_dtypes |= {d.name for d in dtypes}
        if op["op_name"] not in _BOUNDARY_OPS and any(d in map(np.dtype, _FLOAT_DTYPES) for d in dtypes):
            float_ops.add(op["op_name"])
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    return {
        "ops": sorted(ops),
        "float_ops": sorted(float_ops),
        "has_float_ops": bool(float_ops),
        "tensor_dtypes": sorted(tensor_dtypes),
        "input_dtypes": [np.dtype(d["dtype"]).name for d in inputs],
        "input_quantization": [list(map(float, d["quantization"])) for d in inputs],
        "output_dtypes": [np.dtype(d["dtype"]).name for d in outputs],
        "is_integer": bool(inputs and inputs[0]["quantization"][0] != 0.0),
    }


def outputs_by_name(outputs, names=None):
    """A model's outputs (a dict, a list or one array) as {name: array}; unnamed ones are `names` or output_<i>."""
    if isinstance(outputs, dict):
        return {k: np.asarray(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        names = names or [f"output_{i}" for i in range(len(outputs))]
        return {n: np.asarray(v) for n, v in zip(names, outputs)}
    return {(names or ["output_0"])[0]: np.asarray(outputs)}


def output_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image cosine for vector outputs; one cosine over the batch for scalar-per-image outputs
    (per-image cosine of two scalars would only compare signs)."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    if a.shape[1] == 1:
        a, b = a.T, b.T
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    # Two zero vectors agree; one zero vector against a non-zero one does not.
    return np.where(den > 0, num / np.maximum(den, 1e-30), np.where(np.linalg.norm(a - b, axis=1) == 0, 1.0, 0.0))


def validate_tflite(tflite_bytes, reference_fn, images, min_cosine: float, expect_int8: bool | None = None) -> dict:
    """Runs the file on `images` (uint8 [N,S,S,3]) and compares every named output with reference_fn(images).

    reference_fn returns a dict of named float outputs (or one array for a single-output file).
    Returns {size_bytes, ops, float_ops, int8_only, input_dtype, outputs: {name: {cosine_mean, cosine_min,
    max_abs_diff}}, cosine_mean, cosine_min, max_abs_diff}. Raises TFLiteValidationError (with .report)
    when an int8 file (`expect_int8`, default: detected from a quantized input) computes in float,
    or when the worst output's mean cosine is below `min_cosine`.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"validate_tflite: images must be uint8 [N,S,S,3], got {images.dtype} {images.shape}")
    ops = tflite_op_set(tflite_bytes)
    is_int8 = ops["is_integer"] if expect_int8 is None else bool(expect_int8)
    got = run_tflite(_interpreter(tflite_bytes), images)
    want = outputs_by_name(reference_fn(images), names=list(got) if len(got) == 1 else None)
    missing = sorted(set(want) - set(got))
    if missing:
        raise TFLiteValidationError(f"TFLite file lacks outputs {missing} (has {sorted(got)})", {"outputs": sorted(got)})
    per_output = {}
    for name, ref in want.items():
        out = got[name]
        if out.shape != ref.shape:
            raise TFLiteValidationError(
                f"output {name!r}: TFLite shape {out.shape} vs reference {ref.shape}", {"output": name}
            )
        cos = output_cosines(out, ref)
        per_output[name] = {
            "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()),
            "max_abs_diff": float(np.max(np.abs(out.astype(np.float64) - ref))),
        }
    report = {
        "size_bytes": len(tflite_bytes),
        "ops": ops["ops"],
        "float_ops": ops["float_ops"],
        "input_dtype": ops["input_dtypes"][0],
        "output_dtypes": ops["output_dtypes"],
        "int8": is_int8,
        "int8_only": (not ops["has_float_ops"]) if is_int8 else None,
        "n_images": int(len(images)),
        "min_cosine": float(min_cosine),
        "outputs": per_output,
        "cosine_mean": min(v["cosine_mean"] for v in per_output.values()),
        "cosine_min": min(v["cosine_min"] for v in per_output.values()),
        "max_abs_diff": max(v["max_abs_diff"] for v in per_output.values()),
    }
    if is_int8 and ops["has_float_ops"]:
        raise TFLiteValidationError(f"int8 TFLite file computes in float: ops {ops['float_ops']} touch float tensors", report)
    if report["cosine_mean"] < min_cosine:
        worst = min(per_output, key=lambda k: per_output[k]["cosine_mean"])
        raise TFLiteValidationError(
            f"TFLite output {worst!r} has mean cosine {report['cosine_mean']:.4f} vs the float model; "
            f"expected >= {min_cosine}",
            report,
        )
    return report


def write_validation_report(reports: dict[str, dict], out_dir) -> tuple[str, str]:
    """Writes parity.json and parity.md (one table row per file and output) into out_dir."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "parity.json")
    md_path = os.path.join(out_dir, "parity.md")
    with open(json_path, "w") as f:
        json.dump(reports, f, indent=2, sort_keys=True)
    lines = [
        "| file | size (KB) | input | int8 only | output | cosine mean | cosine min | max abs diff |",
        "|---|---:|---|---|---|---:|---:|---:|",
    ]
    for name, rep in reports.items():
        int8_only = {True: "yes", False: "NO", None: "n/a"}[rep.get("int8_only")]
        for out_name, o in rep.get("outputs", {}).items():
            lines.append(
                f"| {name} | {rep['size_bytes'] / 1024:.1f} | {rep.get('input_dtype', '?')} | {int8_only} | {out_name} "
                f"| {o['cosine_mean']:.5f} | {o['cosine_min']:.5f} | {o['max_abs_diff']:.4g} |"
            )
    with open(md_path, "w") as f:
        f.write("# TFLite (and ONNX: rows `*_onnx`) parity vs the float Keras model\n\n" + "\n".join(lines) + "\n")
    return json_path, md_path
