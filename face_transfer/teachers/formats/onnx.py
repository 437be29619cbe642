"""ONNX files as numpy-callable teachers run by onnxruntime, outside the TensorFlow graph (as TFLite and dlib
teachers are): detection by extension or by parsing, the graph cut at the feature tensor, and the loader.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort

from face_transfer.core.errors import TeacherLoadError
from face_transfer.teachers.adapters import Teacher, require_file
from face_transfer.teachers.config import InputSpec
from face_transfer.teachers.formats import TeacherFormat, register_format


@register_format("onnx")
class OnnxFormat(TeacherFormat):
    order = 30
    extensions = (".onnx",)
    accepts = "an .onnx file"

    def sniff(self, path, head):
        # A serialized onnx.ModelProto starts with field 1 (ir_version, varint): byte 0x08.
        if head[:1] != b"\x08":
            return False
        try:
            return bool(onnx.load(path, load_external_data=False).graph.node)
        except Exception:
            return False

    def load(self, path, ref):
        # The ref's layout says what the ONNX graph takes; the teacher's own input (preprocess) stays NHWC.
        return load_onnx_teacher(path, ref.output, name=ref.name, spec=dataclasses.replace(ref.input_spec(), layout="nhwc"),
                                 pool=ref.pool, input_layout=ref.layout)


def _graph_input(proto, path):
    inputs = [i for i in proto.graph.input if i.name not in {init.name for init in proto.graph.initializer}]
    if len(inputs) != 1:
        raise TeacherLoadError(f"{path}: expected an ONNX graph with one image input, found {len(inputs)}")
    return inputs[0]


def _onnx_input_layout(graph_input, spec, preferred, path):
    """'nchw' or 'nhwc': the layout the graph's declared input shape fits, `preferred` when both fit."""
    dims = [d.dim_value if d.HasField("dim_value") else None for d in graph_input.type.tensor_type.shape.dim]
    wants = {"nchw": (spec.channels, spec.size, spec.size), "nhwc": (spec.size, spec.size, spec.channels)}
    if len(dims) != 4:
        raise TeacherLoadError(
            f"{path}: the ONNX input {graph_input.name!r} has shape {['N' if d is None else d for d in dims]}; expected "
            f"an image batch, NCHW {wants['nchw']} or NHWC {wants['nhwc']} (size={spec.size}, channels={spec.channels})"
        )
    fits = [k for k, want in wants.items() if all(d is None or d == w for d, w in zip(dims[1:], want))]
    if not fits:
        raise TeacherLoadError(
            f"{path}: the ONNX input {graph_input.name!r} has shape {['N' if d is None else d for d in dims]}, which fits "
            f"neither NCHW {wants['nchw']} nor NHWC {wants['nhwc']} for size={spec.size}, channels={spec.channels}; "
            "pass a matching spec"
        )
    return (preferred if preferred in fits else fits[0]), dims[0]


def _cut_at(proto, output_name, path):
    """The graph with `output_name` as its only output (an intermediate tensor becomes one), and the number of
    weights (initializer values) the nodes computing it use."""
    produced = {o: node for node in proto.graph.node for o in node.output}
    if output_name not in produced:
        names = [o for node in proto.graph.node for o in node.output if o]
        shown = ", ".join(names[:30]) + (f", ... ({len(names)} in all)" if len(names) > 30 else "")
        raise TeacherLoadError(f"{path}: no tensor named {output_name!r}; tensors: {shown}")
    initializers = {init.name: init for init in proto.graph.initializer}
    needed, todo, seen = set(), [output_name], set()
    while todo:  # walk back from the feature to the input: the weights of this subgraph only
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in initializers:
            needed.add(name)
        elif name in produced:
            todo.extend(i for i in produced[name].input if i)
    # Weights are the float initializers; integer ones (pads, shapes, axes) are arguments, not parameters.
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
    params = sum(int(np.prod(initializers[n].dims)) for n in needed if initializers[n].data_type in floats)
    del proto.graph.output[:]
    proto.graph.output.append(onnx.ValueInfoProto(name=output_name))  # onnxruntime infers its type and shape
    return proto, params


def _flush_denormal_weights(proto):
    """Denormal float32 weights set to 0, as TensorFlow's flush-to-zero treats them. onnxruntime computes them
    exactly, and slowly: dlib_age's first conv has 1,332 and runs 5x slower with them, for no change in its
    output (a product below 1e-38 vanishes next to the sums it is added to)."""
    tiny = np.finfo(np.float32).tiny
    for init in proto.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        w = onnx.numpy_helper.to_array(init)
        denormal = (w != 0) & (np.abs(w) < tiny)
        if denormal.any():
            init.CopyFrom(onnx.numpy_helper.from_array(np.where(denormal, np.float32(0), w), init.name))
    return proto


class _OnnxRunner:
    """Runs the session on preprocessed NHWC float batches; NCHW graphs get them transposed. A graph with a fixed
    batch size runs in slices of it (the last one padded). A feature map is pooled or flattened in the graph's
    own (NCHW) order."""

    def __init__(self, session, input_name, output_name, dtype, layout, batch, pool):
        self.session, self.input_name, self.output_name = session, input_name, output_name
        self.dtype, self.layout, self.batch, self.pool = dtype, layout, batch, pool

    def _run(self, x):
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def __call__(self, x):
        x = np.asarray(x, np.float32)
        if self.layout == "nchw":
            x = x.transpose(0, 3, 1, 2)
        x = np.ascontiguousarray(x, dtype=self.dtype)
        if not self.batch or len(x) == self.batch:
            y = self._run(x)
        else:
            parts = []
            for start in range(0, len(x), self.batch):
                chunk = x[start : start + self.batch]
                pad = self.batch - len(chunk)
                if pad:
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
                parts.append(self._run(chunk)[: self.batch - pad])
            y = np.concatenate(parts)
        y = np.asarray(y, np.float32)
        if y.ndim == 4 and self.pool is not None:
            return y.mean(axis=(2, 3)) if self.pool == "avg" else y.max(axis=(2, 3))
        return y.reshape(len(y), -1) if y.ndim > 2 else y


def load_onnx_teacher(path, output_name: str | None = None, name: str | None = None, spec: InputSpec = InputSpec(), pool: str | None = None, input_layout: str | None = None) -> Teacher:
    """An ONNX file as a frozen numpy-callable teacher, run by onnxruntime up to `output_name` (None = the graph's
    only output; an intermediate tensor works too).

    A 4-D feature map comes out in ONNX's NCHW order; `pool` ("avg"/"max") averages it over space,
    None flattens it in NCHW order. `input_layout` is the ONNX graph's own input layout ("nchw" or
    "nhwc"): the declared input shape decides, `input_layout` (default "nchw") only when both fit.
    `spec` describes the teacher's NHWC input (what `preprocess` makes), so `spec.layout` must be "nhwc".
    """
    what = "an ONNX model file"
    path = require_file(path, what)
    if spec.layout != "nhwc":
        raise TeacherLoadError(f"{path}: an ONNX teacher's InputSpec is NHWC (the graph's own layout is input_layout); "
                               "use InputSpec(layout='nhwc')")
    if input_layout not in (None, "nchw", "nhwc"):
        raise TeacherLoadError(f"{path}: input_layout must be 'nchw', 'nhwc' or None, got {input_layout!r}")
    if pool not in ("avg", "max", None):
        raise TeacherLoadError(f"{path}: pool must be 'avg', 'max' or None, got {pool!r}")
    try:
        proto = onnx.load(path)
    except Exception as e:  # protobuf DecodeError and friends, e.g. a truncated file
        raise TeacherLoadError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e}); expected {what}") from e
    if not proto.graph.node:
        raise TeacherLoadError(f"{path}: not an ONNX model (no graph nodes); expected {what}")
    if output_name is None:
        graph_outputs = [o.name for o in proto.graph.output]
        if len(graph_outputs) != 1:
            raise TeacherLoadError(
                f"{path}: the graph has outputs {graph_outputs}; name the feature tensor (output_name)"
            )
        output_name = graph_outputs[0]
    graph_input = _graph_input(proto, path)
    layout, batch = _onnx_input_layout(graph_input, spec, input_layout or "nchw", path)
    proto, params = _cut_at(proto, output_name, path)
    proto = _flush_denormal_weights(proto)
    elem_type = graph_input.type.tensor_type.elem_type or onnx.TensorProto.FLOAT
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    if dtype.kind != "f":
        raise TeacherLoadError(f"{path}: the ONNX input {graph_input.name!r} is {dtype.name}; expected a float image input")
    try:
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as e:  # a graph broken in ways the checks above do not see (e.g. cut short, unknown ops)
        raise TeacherLoadError(f"{path}: onnxruntime cannot run the graph ({type(e).__name__}: {e})") from e
    runner = _OnnxRunner(session, graph_input.name, output_name, dtype, layout, batch, pool)
    probe = np.zeros((batch or 1, spec.size, spec.size, spec.channels), np.float32)
    try:
        feature = runner(probe)
    except Exception as e:
        raise TeacherLoadError(f"{path}: onnxruntime failed on a {list(probe.shape)} NHWC input "
                               f"({type(e).__name__}: {e})") from e
    if feature.ndim != 2:
        raise TeacherLoadError(f"{path}: the feature must be [N, D], got {tuple(feature.shape)}")
    name = name or os.path.splitext(os.path.basename(path))[0]
    return Teacher(
        name, spec, int(feature.shape[1]), fn=runner,
        metadata={"source": "onnx", "path": os.path.abspath(path), "output_name": output_name,
                  "input_layout": layout, "pool": pool, "params": params},
    )
