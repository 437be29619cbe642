"""ONNX -> Keras 3 import: rebuilds an ONNX graph op by op as a functional Keras model with NHWC tensors.
Owns the supported-op table, the layout bookkeeping (NCHW graph, NHWC storage) and the small layers it needs.

Why not onnx2tf / onnx-tf: they do not work with TF 2.21 here (see shared/ECOSYSTEM.md).

Layout rule. Every imported tensor is a `_Value(tensor, perm)`: the ONNX ("logical") tensor equals
`transpose(tensor, perm)`. Spatial ops (Conv, pools) need `perm == (0, 3, 1, 2)`, i.e. the stored
tensor is NHWC while the graph thinks NCHW; element-wise ops keep whatever perm they get; ops
that depend on element order (Flatten, Reshape, Gemm, MatMul) first go back to the logical
layout, so a flatten of an NCHW feature map keeps ONNX's C-major order. Transposes are composed
lazily and only materialised where needed. Model outputs are in the ONNX layout.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

import keras
import numpy as np
import onnx
from onnx import numpy_helper

NHWC = (0, 3, 1, 2)  # perm such that logical NCHW == transpose(stored NHWC, NHWC)


class OnnxImportError(ValueError):
    """The ONNX graph cannot be imported as asked (bad file, unknown tensor, unsupported attribute)."""


class UnsupportedOnnxOp(OnnxImportError):
    """The graph contains an op type this importer does not convert."""


# ----------------------------------------------------------------------------- layers
# Small layers for what core Keras has no layer for. Registered so imported models survive
# a .keras save/load round trip.


@keras.saving.register_keras_serializable(package="face_transfer")
class OnnxConstantOp(keras.layers.Layer):
    """x (op) constant, with the constant held as a frozen weight (already in stored layout)."""

    _OPS = ("add", "sub", "rsub", "mul", "div", "rdiv", "prelu", "max", "min", "pow")

    def __init__(self, op, value_shape, **kwargs):
        super().__init__(**kwargs)
        if op not in self._OPS:
            raise ValueError(f"OnnxConstantOp: op must be one of {self._OPS}, got {op!r}")
        self.op = op
        self.value_shape = tuple(int(d) for d in value_shape)
        self.value = self.add_weight(
            name="value", shape=self.value_shape, initializer="zeros", trainable=False
        )

    def call(self, x):
        c = keras.ops.cast(self.value, x.dtype)
        op = self.op
        if op == "add":
            return x + c
        if op == "sub":
            return x - c
        if op == "rsub":
            return c - x
        if op == "mul":
            return x * c
        if op == "div":
            return x / c
        if op == "rdiv":
            return c / x
        if op == "max":
            return keras.ops.maximum(x, c)
        if op == "min":
            return keras.ops.minimum(x, c)
        if op == "pow":
            return keras.ops.power(x, c)
        return keras.ops.where(x >= 0, x, x * c)  # prelu

    def get_config(self):
        return {**super().get_config(), "op": self.op, "value_shape": list(self.value_shape)}


@keras.saving.register_keras_serializable(package="face_transfer")
class OnnxBinary(keras.layers.Layer):
    """Broadcasting element-wise op between two tensors (Keras merge layers want equal shapes)."""

    def __init__(self, op, **kwargs):
        super().__init__(**kwargs)
        self.op = op

    def call(self, inputs):
        a, b = inputs
        return {
            "add": keras.ops.add, "sub": keras.ops.subtract, "mul": keras.ops.multiply,
            "div": keras.ops.divide, "max": keras.ops.maximum, "min": keras.ops.minimum,
            "pow": keras.ops.power,
        }[self.op](a, b)

    def get_config(self):
        return {**super().get_config(), "op": self.op}


@keras.saving.register_keras_serializable(package="face_transfer")
class OnnxPad(keras.layers.Layer):
    """Pad with per-axis (begin, end) amounts on any axis, channels included (ONNX Pad, pool padding)."""

    def __init__(self, pads, mode="constant", value=0.0, **kwargs):
        super().__init__(**kwargs)
        self.pads = [[int(b), int(e)] for b, e in pads]
        self.mode = mode
        self.value = float(value)

    def call(self, x):
        if self.mode == "constant":
            return keras.ops.pad(x, self.pads, mode="constant", constant_values=self.value)
        return keras.ops.pad(x, self.pads, mode=self.mode)

    def get_config(self):
        return {**super().get_config(), "pads": self.pads, "mode": self.mode, "value": self.value}


@keras.saving.register_keras_serializable(package="face_transfer")
class OnnxClip(keras.layers.Layer):
    def __init__(self, min_value=None, max_value=None, **kwargs):
        super().__init__(**kwargs)
        self.min_value = None if min_value is None else float(min_value)
        self.max_value = None if max_value is None else float(max_value)

    def call(self, x):
        if self.min_value is not None:
            x = keras.ops.maximum(x, self.min_value)
        if self.max_value is not None:
            x = keras.ops.minimum(x, self.max_value)
        return x

    def get_config(self):
        return {**super().get_config(), "min_value": self.min_value, "max_value": self.max_value}


@keras.saving.register_keras_serializable(package="face_transfer")
class OnnxAveragePool(keras.layers.Layer):
    """NHWC average pool with ONNX padding semantics.

    Zero-pads, sums each window, then divides by the number of positions that ONNX counts
    (real pixels, plus explicit pads when count_include_pad; never the ceil_mode overhang).
    The divisor depends only on static shapes, so it is computed once in numpy.
    """

    def __init__(self, kernel, strides, pads, extra, count_include_pad, **kwargs):
        super().__init__(**kwargs)
        self.kernel = [int(k) for k in kernel]
        self.strides = [int(s) for s in strides]
        self.pads = [int(p) for p in pads]  # top, left, bottom, right
        self.extra = [int(e) for e in extra]  # ceil_mode overhang: bottom, right
        self.count_include_pad = bool(count_include_pad)
        self._divisor = None

    def build(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        if h is None or w is None:
            raise OnnxImportError(f"{self.name}: AveragePool with padding needs static spatial dims")
        t, l, b, r = self.pads
        mask = np.zeros((h + t + b + self.extra[0], w + l + r + self.extra[1]), np.float64)
        if self.count_include_pad:
            mask[: h + t + b, : w + l + r] = 1.0
        else:
            mask[t : t + h, l : l + w] = 1.0
        kh, kw = self.kernel
        sh, sw = self.strides
        oh = (mask.shape[0] - kh) // sh + 1
        ow = (mask.shape[1] - kw) // sw + 1
        div = np.empty((oh, ow), np.float64)
        for i in range(oh):
            for j in range(ow):
                div[i, j] = mask[i * sh : i * sh + kh, j * sw : j * sw + kw].sum()
        self._divisor = np.maximum(div, 1.0).astype(np.float32)[None, :, :, None]

    def call(self, x):
        t, l, b, r = self.pads
        x = keras.ops.pad(x, [[0, 0], [t, b + self.extra[0]], [l, r + self.extra[1]], [0, 0]])
        area = float(self.kernel[0] * self.kernel[1])
        pooled = keras.ops.average_pool(x, self.kernel, self.strides, padding="valid")
        return pooled * area / keras.ops.convert_to_tensor(self._divisor, dtype=x.dtype)

    def get_config(self):
        return {
            **super().get_config(), "kernel": self.kernel, "strides": self.strides,
            "pads": self.pads, "extra": self.extra, "count_include_pad": self.count_include_pad,
        }


# ----------------------------------------------------------------------------- layout helpers


@dataclasses.dataclass
class _Value:
    tensor: object  # KerasTensor
    perm: tuple  # logical == transpose(tensor, perm)

    @property
    def rank(self):
        return len(self.perm)

    def logical_shape(self):
        shape = tuple(self.tensor.shape)
        return tuple(shape[p] for p in self.perm)


def _inverse(perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


class _Builder:
    def __init__(self, graph, opset):
        self.graph = graph
        self.opset = opset
        self.env: dict[str, object] = {}  # ONNX name -> _Value | np.ndarray
        self.used_names: set[str] = set()

    # names ------------------------------------------------------------------
    def name(self, base, suffix=""):
        clean = re.sub(r"[^A-Za-z0-9_.-]", "_", base or "node").strip("_") or "node"
        candidate = clean + suffix
        i = 1
        while candidate in self.used_names:
            candidate = f"{clean}{suffix}_{i}"
            i += 1
        self.used_names.add(candidate)
        return candidate

    # layout -----------------------------------------------------------------
    def to_perm(self, v: _Value, perm, name):
        """Stored tensor whose transpose by `perm` is v's logical tensor."""
        perm = tuple(perm)
        if v.perm == perm:
            return v.tensor
        # stored' = transpose(stored, c) with c[j] = v.perm[inv(perm)[j]]
        inv = _inverse(perm)
        c = tuple(v.perm[inv[j]] for j in range(len(perm)))
        if c == tuple(range(len(c))):
            return v.tensor
        if c[0] != 0:
            raise OnnxImportError(f"{name}: a layout change that moves the batch axis is not supported")
        return keras.layers.Permute(c[1:], name=self.name(name, "_permute"))(v.tensor)

    def logical(self, v: _Value, name):
        return self.to_perm(v, tuple(range(v.rank)), name)

    def nhwc(self, v: _Value, name):
        if v.rank != 4:
            raise OnnxImportError(f"{name}: expected a 4-D NCHW tensor, got rank {v.rank}")
        return self.to_perm(v, NHWC, name)

    # inputs -----------------------------------------------------------------
    def const(self, name):
        if name == "":
            return None
        value = self.env.get(name)
        return value if isinstance(value, np.ndarray) else None

    def value(self, name, node):
        value = self.env.get(name)
        if value is None:
            raise OnnxImportError(f"node {node.name!r} ({node.op_type}): input {name!r} is not produced by the graph")
        return value


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _as_str(x):
    return x.decode() if isinstance(x, bytes) else x


# ----------------------------------------------------------------------------- converters


def _conv(b: _Builder, node, a):
    x = b.value(node.input[0], node)
    w = b.const(node.input[1])
    if w is None:
        raise OnnxImportError(f"Conv {node.name!r}: weights must be a constant initializer")
    if w.ndim != 4:
        raise OnnxImportError(f"Conv {node.name!r}: only 2-D convolutions are supported (weight rank {w.ndim})")
    bias = b.const(node.input[2]) if len(node.input) > 2 else None
    group = int(a.get("group", 1))
    strides = tuple(a.get("strides", (1, 1)))
    dil = tuple(a.get("dilations", (1, 1)))
    kh, kw = w.shape[2], w.shape[3]
    if max(strides) > 1 and max(dil) > 1:
        raise OnnxImportError(f"Conv {node.name!r}: strides > 1 with dilations > 1 is not supported by Keras")
    t = b.nhwc(x, node.name)
    t = _spatial_pad(b, node, a, t, (kh, kw), strides, dil, value=0.0)
    c_in = t.shape[-1]
    c_out = w.shape[0]
    use_bias = bias is not None
    name = b.name(node.name)
    if group == 1:
        layer = keras.layers.Conv2D(c_out, (kh, kw), strides, "valid", dilation_rate=dil, use_bias=use_bias, name=name)
        kernel = w.transpose(2, 3, 1, 0)
    elif group == c_in and w.shape[1] == 1:
        mult = c_out // c_in
        layer = keras.layers.DepthwiseConv2D((kh, kw), strides, "valid", depth_multiplier=mult, dilation_rate=dil, use_bias=use_bias, name=name)
        # ONNX output channel o = c * mult + j reads input channel c; TF orders depthwise outputs the same way.
        kernel = w.reshape(c_in, mult, kh, kw).transpose(2, 3, 0, 1)
    else:
        layer = keras.layers.Conv2D(c_out, (kh, kw), strides, "valid", dilation_rate=dil, groups=group, use_bias=use_bias, name=name)
        kernel = w.transpose(2, 3, 1, 0)
    out = layer(t)
    layer.set_weights([kernel, bias] if use_bias else [kernel])
    return _Value(out, NHWC)


def _spatial_pad(b, node, a, t, kernel, strides, dil, value):
    """Explicit padding for Conv/MaxPool (auto_pad resolved against the static input size)."""
    auto = _as_str(a.get("auto_pad", "NOTSET"))
    h, w = t.shape[1], t.shape[2]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if h is None or w is None:
            raise OnnxImportError(f"{node.op_type} {node.name!r}: auto_pad={auto} needs static spatial dims")
        pads = []
        for size, k, s, d in zip((h, w), kernel, strides, dil):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            pads.append((small, big) if auto == "SAME_UPPER" else (big, small))
        top, left, bottom, right = pads[0][0], pads[1][0], pads[0][1], pads[1][1]
    elif auto == "VALID":
        top = left = bottom = right = 0
    else:
        top, left, bottom, right = tuple(a.get("pads", (0, 0, 0, 0)))
    if top == left == bottom == right == 0:
        return t
    if value == 0.0:
        return keras.layers.ZeroPadding2D(((top, bottom), (left, right)), name=b.name(node.name, "_pad"))(t)
    return OnnxPad([[0, 0], [top, bottom], [left, right], [0, 0]], value=value, name=b.name(node.name, "_pad"))(t)


def _pool_geometry(node, a, t):
    if any(d != 1 for d in a.get("dilations", (1, 1))):
        raise OnnxImportError(f"{node.op_type} {node.name!r}: dilated pooling is not supported")
    if _as_str(a.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID"):
        raise OnnxImportError(f"{node.op_type} {node.name!r}: auto_pad SAME_* pooling is not supported; export with explicit pads")
    kernel = tuple(a["kernel_shape"])
    strides = tuple(a.get("strides", (1, 1)))
    pads = tuple(a.get("pads", (0, 0, 0, 0))) if _as_str(a.get("auto_pad", "NOTSET")) == "NOTSET" else (0, 0, 0, 0)
    extra = [0, 0]
    if a.get("ceil_mode", 0):
        for i, size in enumerate((t.shape[1], t.shape[2])):
            if size is None:
                raise OnnxImportError(f"{node.op_type} {node.name!r}: ceil_mode needs static spatial dims")
            padded = size + pads[i] + pads[i + 2]
            out = math.ceil((padded - kernel[i]) / strides[i]) + 1
            # ONNX/PyTorch drop a last window that would start inside the end padding.
            if (out - 1) * strides[i] >= size + pads[i]:
                out -= 1
            extra[i] = max((out - 1) * strides[i] + kernel[i] - padded, 0)
    return kernel, strides, pads, extra


def _maxpool(b, node, a):
    if len(node.output) > 1 and node.output[1]:
        raise OnnxImportError(f"MaxPool {node.name!r}: the Indices output is not supported")
    t = b.nhwc(b.value(node.input[0], node), node.name)
    kernel, strides, (pt, pl, pb, pr), extra = _pool_geometry(node, a, t)
    if pt or pl or pb or pr or extra[0] or extra[1]:
        t = OnnxPad([[0, 0], [pt, pb + extra[0]], [pl, pr + extra[1]], [0, 0]], value=float("-inf"), name=b.name(node.name, "_pad"))(t)
    return _Value(keras.layers.MaxPooling2D(kernel, strides, "valid", name=b.name(node.name))(t), NHWC)


def _avgpool(b, node, a):
    t = b.nhwc(b.value(node.input[0], node), node.name)
    kernel, strides, pads, extra = _pool_geometry(node, a, t)
    if not any(pads) and not any(extra):
        out = keras.layers.AveragePooling2D(kernel, strides, "valid", name=b.name(node.name))(t)
    else:
        out = OnnxAveragePool(kernel, strides, pads, extra, a.get("count_include_pad", 0), name=b.name(node.name))(t)
    return _Value(out, NHWC)


def _global_pool(kind):
    def convert(b, node, a):
        t = b.nhwc(b.value(node.input[0], node), node.name)
        layer = keras.layers.GlobalAveragePooling2D if kind == "avg" else keras.layers.GlobalMaxPooling2D
        return _Value(layer(keepdims=True, name=b.name(node.name))(t), NHWC)

    return convert


def _batchnorm(b, node, a):
    x = b.value(node.input[0], node)
    gamma, beta, mean, var = (b.const(n) for n in node.input[1:5])
    if any(p is None for p in (gamma, beta, mean, var)):
        raise OnnxImportError(f"BatchNormalization {node.name!r}: scale/bias/mean/var must be constants")
    axis = x.perm[1]  # logical channel axis 1, wherever it is stored
    layer = keras.layers.BatchNormalization(axis=axis, epsilon=float(a.get("epsilon", 1e-5)), name=b.name(node.name))
    out = layer(x.tensor)
    layer.set_weights([gamma, beta, mean, var])
    return _Value(out, x.perm)


def _activation(make):
    def convert(b, node, a):
        x = b.value(node.input[0], node)
        return _Value(make(a, b.name(node.name))(x.tensor), x.perm)

    return convert


def _clip(b, node, a):
    x = b.value(node.input[0], node)
    lo = a.get("min")
    hi = a.get("max")
    if len(node.input) > 1 and node.input[1]:
        c = b.const(node.input[1])
        if c is None:
            raise OnnxImportError(f"Clip {node.name!r}: min must be a constant")
        lo = float(c)
    if len(node.input) > 2 and node.input[2]:
        c = b.const(node.input[2])
        if c is None:
            raise OnnxImportError(f"Clip {node.name!r}: max must be a constant")
        hi = float(c)
    return _Value(OnnxClip(lo, hi, name=b.name(node.name))(x.tensor), x.perm)


_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Max": "max", "Min": "min", "Pow": "pow"}


def _stored_constant(c, v: _Value):
    """Constant (logical, numpy-broadcastable) laid out like v's storage."""
    c = np.asarray(c, np.float32)
    c = c.reshape((1,) * (v.rank - c.ndim) + c.shape)
    return np.transpose(c, _inverse(v.perm))


def _binary(b, node, a):
    op = _BINARY[node.op_type]
    lhs, rhs = (b.env.get(n) for n in node.input[:2])
    for n, v in zip(node.input[:2], (lhs, rhs)):
        if v is None:
            raise OnnxImportError(f"{node.op_type} {node.name!r}: input {n!r} is not produced by the graph")
    if isinstance(lhs, np.ndarray) or isinstance(rhs, np.ndarray):
        const_first = isinstance(lhs, np.ndarray)
        x, c = (rhs, lhs) if const_first else (lhs, rhs)
        if c.ndim > x.rank:
            x = _Value(b.logical(x, node.name), tuple(range(x.rank)))
            x = _Value(keras.layers.Reshape((1,) * (c.ndim - x.rank) + tuple(x.tensor.shape[1:]))(x.tensor), tuple(range(c.ndim)))
        stored = _stored_constant(c, x)
        if const_first and op in ("sub", "div"):
            op = "r" + op
        layer = OnnxConstantOp(op, stored.shape, name=b.name(node.name))
        out = layer(x.tensor)
        layer.set_weights([stored])
        return _Value(out, x.perm)
    if lhs.rank == rhs.rank:
        return _Value(OnnxBinary(op, name=b.name(node.name))([lhs.tensor, b.to_perm(rhs, lhs.perm, node.name)]), lhs.perm)
    # different ranks: broadcast in the logical layout (numpy aligns trailing axes)
    big, small = (lhs, rhs) if lhs.rank > rhs.rank else (rhs, lhs)
    s = b.logical(small, node.name)
    s = keras.layers.Reshape((1,) * (big.rank - small.rank) + tuple(s.shape[1:]), name=b.name(node.name, "_expand"))(s)
    s = b.to_perm(_Value(s, tuple(range(big.rank))), big.perm, node.name)
    pair = [big.tensor, s] if big is lhs else [s, big.tensor]
    return _Value(OnnxBinary(op, name=b.name(node.name))(pair), big.perm)


def _flatten(b, node, a):
    x = b.value(node.input[0], node)
    axis = int(a.get("axis", 1))
    if axis < 0:
        axis += x.rank
    if axis != 1:
        raise OnnxImportError(f"Flatten {node.name!r}: only axis=1 (keep the batch axis) is supported, got {axis}")
    t = b.logical(x, node.name)
    if x.rank == 2:
        return _Value(t, (0, 1))
    return _Value(keras.layers.Flatten(name=b.name(node.name))(t), (0, 1))


def _reshape(b, node, a):
    x = b.value(node.input[0], node)
    target = b.const(node.input[1])
    if target is None:
        raise OnnxImportError(f"Reshape {node.name!r}: the target shape must be a constant (dynamic Shape->Reshape chains are not supported)")
    target = [int(d) for d in target]
    in_shape = x.logical_shape()
    rest = in_shape[1:]
    if any(d is None for d in rest):
        raise OnnxImportError(f"Reshape {node.name!r}: needs static non-batch dims, got {in_shape}")
    # The first target dim is the batch (0 = copy, -1 = infer, or the export's fixed batch size).
    new = []
    for i, d in enumerate(target[1:], start=1):
        if d == 0 and not a.get("allowzero", 0):
            d = in_shape[i]
        new.append(d)
    n_in = int(np.prod(rest)) if rest else 1
    if new.count(-1) == 1:
        known = int(np.prod([d for d in new if d != -1])) if len(new) > 1 else 1
        new[new.index(-1)] = n_in // known if known else 0
    if int(np.prod(new)) != n_in or new.count(-1) > 1:
        raise OnnxImportError(f"Reshape {node.name!r}: {in_shape} -> {target} changes the batch dimension; not supported")
    t = b.logical(x, node.name)
    out = keras.layers.Reshape(tuple(new), name=b.name(node.name))(t)
    return _Value(out, tuple(range(len(new) + 1)))


def _axes(b, node, a, rank):
    """Squeeze/Unsqueeze axes: an attribute before opset 13, a constant second input since."""
    axes = b.const(node.input[1]) if len(node.input) > 1 and node.input[1] else a.get("axes")
    if axes is None:
        return None
    return sorted(int(ax) % rank for ax in np.asarray(axes).reshape(-1))


def _squeeze(b, node, a):
    # tf2onnx writes Keras' GlobalAveragePooling as ReduceMean/GlobalAveragePool then Squeeze.
    x = b.value(node.input[0], node)
    shape = x.logical_shape()
    axes = _axes(b, node, a, x.rank)
    if axes is None:
        axes = [i for i, d in enumerate(shape) if i > 0 and d == 1]
    if 0 in axes or any(shape[i] != 1 for i in axes):
        raise OnnxImportError(f"Squeeze {node.name!r}: axes {axes} of shape {shape} are not all non-batch size-1 axes")
    new = tuple(d for i, d in enumerate(shape) if i not in axes)[1:]
    if not new:
        raise OnnxImportError(f"Squeeze {node.name!r}: squeezing {shape} to a scalar per example is not supported")
    out = keras.layers.Reshape(new, name=b.name(node.name))(b.logical(x, node.name))
    return _Value(out, tuple(range(len(new) + 1)))


def _unsqueeze(b, node, a):
    x = b.value(node.input[0], node)
    shape = list(x.logical_shape())
    axes = _axes(b, node, a, x.rank + len(np.asarray(b.const(node.input[1]) if len(node.input) > 1 and node.input[1]
                                                      else a.get("axes", [])).reshape(-1)))
    if not axes or 0 in axes:
        raise OnnxImportError(f"Unsqueeze {node.name!r}: axes {axes} must be given and leave the batch axis alone")
    for ax in axes:
        shape.insert(ax, 1)
    out = keras.layers.Reshape(tuple(shape[1:]), name=b.name(node.name))(b.logical(x, node.name))
    return _Value(out, tuple(range(len(shape))))


def _transpose(b, node, a):
    x = b.value(node.input[0], node)
    perm = tuple(a.get("perm", tuple(reversed(range(x.rank)))))
    # new logical = transpose(old logical, perm) = transpose(stored, old.perm[perm[j]])
    return _Value(x.tensor, tuple(x.perm[p] for p in perm))


def _gemm(b, node, a):
    x = b.value(node.input[0], node)
    w = b.const(node.input[1])
    if w is None:
        raise OnnxImportError(f"Gemm {node.name!r}: B must be a constant initializer")
    if a.get("transA", 0):
        raise OnnxImportError(f"Gemm {node.name!r}: transA=1 is not supported")
    if x.rank != 2:
        raise OnnxImportError(f"Gemm {node.name!r}: A must be 2-D, got rank {x.rank}")
    w = w.T if a.get("transB", 0) else w
    w = w * np.float32(a.get("alpha", 1.0))
    c = b.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    n = w.shape[1]
    if c is not None:
        c = np.asarray(c, np.float32) * np.float32(a.get("beta", 1.0))
        if c.size not in (1, n) or (c.ndim == 2 and c.shape[0] != 1):
            raise OnnxImportError(f"Gemm {node.name!r}: bias of shape {c.shape} is not a per-output bias")
        c = np.broadcast_to(c.reshape(-1), (n,)).copy()
    layer = keras.layers.Dense(n, use_bias=c is not None, name=b.name(node.name))
    out = layer(b.logical(x, node.name))
    layer.set_weights([w, c] if c is not None else [w])
    return _Value(out, (0, 1))


def _matmul(b, node, a):
    x = b.value(node.input[0], node)
    w = b.const(node.input[1])
    if w is None or w.ndim != 2:
        raise OnnxImportError(f"MatMul {node.name!r}: the right operand must be a 2-D constant")
    layer = keras.layers.Dense(w.shape[1], use_bias=False, name=b.name(node.name))
    out = layer(b.logical(x, node.name))
    layer.set_weights([w])
    return _Value(out, tuple(range(x.rank)))


def _softmax(b, node, a):
    x = b.value(node.input[0], node)
    axis = int(a.get("axis", -1 if b.opset >= 13 else 1))
    if axis < 0:
        axis += x.rank
    if b.opset < 13 and axis != x.rank - 1:
        raise OnnxImportError(f"Softmax {node.name!r}: opset<13 flattening softmax over several axes is not supported")
    return _Value(keras.layers.Softmax(axis=x.perm[axis], name=b.name(node.name))(x.tensor), x.perm)


def _concat(b, node, a):
    vals = [b.env.get(n) for n in node.input]
    if any(v is None or isinstance(v, np.ndarray) for v in vals):
        raise OnnxImportError(f"Concat {node.name!r}: all inputs must be graph tensors (constant inputs are not supported)")
    first = vals[0]
    axis = int(a["axis"])
    if axis < 0:
        axis += first.rank
    tensors = [b.to_perm(v, first.perm, node.name) for v in vals]
    out = keras.layers.Concatenate(axis=first.perm[axis], name=b.name(node.name))(tensors)
    return _Value(out, first.perm)


def _pad(b, node, a):
    x = b.value(node.input[0], node)
    mode = _as_str(a.get("mode", "constant"))
    if mode not in ("constant", "reflect"):
        raise OnnxImportError(f"Pad {node.name!r}: mode {mode!r} is not supported (constant, reflect)")
    if len(node.input) > 1:
        pads = b.const(node.input[1])
        if pads is None:
            raise OnnxImportError(f"Pad {node.name!r}: pads must be a constant")
        if len(node.input) > 3 and node.input[3]:
            raise OnnxImportError(f"Pad {node.name!r}: the axes input is not supported")
        value = b.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        value = 0.0 if value is None else float(np.asarray(value).reshape(()))
    else:
        pads = a["pads"]
        value = float(a.get("value", 0.0))
    pads = [int(p) for p in pads]
    if any(p < 0 for p in pads):
        raise OnnxImportError(f"Pad {node.name!r}: negative pads (cropping) are not supported")
    r = x.rank
    logical = [(pads[i], pads[i + r]) for i in range(r)]
    if logical[0] != (0, 0):
        raise OnnxImportError(f"Pad {node.name!r}: padding the batch axis is not supported")
    inv = _inverse(x.perm)
    stored = [list(logical[inv[j]]) for j in range(r)]
    return _Value(OnnxPad(stored, mode=mode, value=value, name=b.name(node.name))(x.tensor), x.perm)


def _identity(b, node, a):
    return b.value(node.input[0], node)


CONVERTERS = {
    "Conv": _conv,
    "BatchNormalization": _batchnorm,
    "Relu": _activation(lambda a, n: keras.layers.ReLU(name=n)),
    "Sigmoid": _activation(lambda a, n: keras.layers.Activation("sigmoid", name=n)),
    "Tanh": _activation(lambda a, n: keras.layers.Activation("tanh", name=n)),
    "LeakyRelu": _activation(lambda a, n: keras.layers.LeakyReLU(negative_slope=float(a.get("alpha", 0.01)), name=n)),
    "PRelu": None,  # handled as a constant op, see _prelu
    "Clip": _clip,
    "Add": _binary, "Sub": _binary, "Mul": _binary, "Div": _binary, "Max": _binary, "Min": _binary, "Pow": _binary,
    "MaxPool": _maxpool,
    "AveragePool": _avgpool,
    "GlobalAveragePool": _global_pool("avg"),
    "GlobalMaxPool": _global_pool("max"),
    "Pad": _pad,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Transpose": _transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Softmax": _softmax,
    "Concat": _concat,
    "Identity": _identity,
    "Dropout": _identity,
}


def _prelu(b, node, a):
    x = b.value(node.input[0], node)
    slope = b.const(node.input[1])
    if slope is None:
        raise OnnxImportError(f"PRelu {node.name!r}: slope must be a constant")
    stored = _stored_constant(slope, x)
    layer = OnnxConstantOp("prelu", stored.shape, name=b.name(node.name))
    out = layer(x.tensor)
    layer.set_weights([stored])
    return _Value(out, x.perm)


CONVERTERS["PRelu"] = _prelu
SUPPORTED_OPS = tuple(sorted(CONVERTERS))


# ----------------------------------------------------------------------------- entry point


def _load(path_or_model):
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model, "<in-memory ONNX model>"
    path = os.fspath(path_or_model)
    if not os.path.isfile(path):
        raise OnnxImportError(f"{path}: no such file; expected an ONNX model file")
    try:
        model = onnx.load(path)
    except Exception as e:  # protobuf DecodeError and friends
        raise OnnxImportError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
    if not model.graph.node:
        raise OnnxImportError(f"{path}: not an ONNX model (no graph nodes)")
    return model, path


def _fold_constant(node, consts):
    """Evaluate a node whose inputs are all constants (Constant, Shape-free arithmetic on weights)."""
    from onnx.reference import ReferenceEvaluator

    if node.op_type == "Constant" and node.attribute[0].name == "value":
        return [numpy_helper.to_array(node.attribute[0].t)]
    inputs = [n for n in node.input if n]
    graph = onnx.helper.make_graph(
        [node], "fold",
        [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(consts[n].dtype), consts[n].shape) for n in inputs],
        [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in node.output if n],
    )
    try:
        return ReferenceEvaluator(onnx.helper.make_model(graph)).run(None, {n: consts[n] for n in inputs})
    except Exception:
        return None


def build_keras_from_onnx(path_or_model, outputs: list[str] | None = None, input_layout: str = "nchw") -> keras.Model:
    """Rebuild an ONNX model as a Keras 3 functional model.

    Args:
      path_or_model: an .onnx file path or an `onnx.ModelProto`.
      outputs: ONNX tensor names to expose (any intermediate tensor, e.g. a feature layer);
        default: the graph outputs.
      input_layout: "nchw" when the ONNX input is NCHW (the Keras input is then NHWC);
        "nhwc" when the ONNX input already is channels-last (kept as is).

    Returns a model whose input is float NHWC (no preprocessing inside) and whose outputs
    are in the ONNX layout, so they compare directly with onnxruntime.
    """
    if input_layout not in ("nchw", "nhwc"):
        raise OnnxImportError(f"input_layout must be 'nchw' or 'nhwc', got {input_layout!r}")
    model, origin = _load(path_or_model)
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    b = _Builder(graph, opset)
    for init in graph.initializer:
        b.env[init.name] = numpy_helper.to_array(init)
    keras_inputs = []
    for inp in graph.input:
        if inp.name in b.env:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
        if input_layout == "nchw" and len(dims) == 4:
            shape, perm = (dims[2], dims[3], dims[1]), NHWC
        else:
            shape, perm = tuple(dims[1:]), tuple(range(len(dims)))
        t = keras.Input(shape=shape, name=b.name(inp.name))
        keras_inputs.append(t)
        b.env[inp.name] = _Value(t, perm)

    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedOnnxOp(f"{origin}: node {node.name!r} has op {node.domain}.{node.op_type} from a custom domain; supported ops: {', '.join(SUPPORTED_OPS)}")
        inputs = [n for n in node.input if n]
        if node.op_type == "Constant" or (inputs and all(isinstance(b.env.get(n), np.ndarray) for n in inputs)):
            folded = _fold_constant(node, b.env)
            if folded is not None:
                for name, value in zip(node.output, folded):
                    b.env[name] = np.asarray(value)
                continue
        convert = CONVERTERS.get(node.op_type)
        if convert is None:
            raise UnsupportedOnnxOp(
                f"{origin}: op {node.op_type!r} (node {node.name!r}) is not supported; "
                f"supported ops: {', '.join(SUPPORTED_OPS)}"
            )
        try:
            result = convert(b, node, _attrs(node))
        except OnnxImportError as e:
            raise type(e)(f"{origin}: {e}") from e
        b.env[node.output[0]] = result

    names = list(outputs) if outputs else [o.name for o in graph.output]
    keras_outputs = []
    for name in names:
        v = b.env.get(name)
        if not isinstance(v, _Value):
            tensors = [n for n, x in b.env.items() if isinstance(x, _Value)]
            raise OnnxImportError(
                f"{origin}: no tensor named {name!r} in the graph; available tensors: {', '.join(tensors)}"
            )
        keras_outputs.append(b.logical(v, name))
    model_name = b.name(graph.name or "onnx_model")
    return keras.Model(
        keras_inputs[0] if len(keras_inputs) == 1 else keras_inputs,
        keras_outputs[0] if len(keras_outputs) == 1 else keras_outputs,
        name=model_name,
    )
