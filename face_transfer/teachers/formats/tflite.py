"""TensorFlow Lite files as numpy-callable teachers (float or int8/uint8-quantised), run by the shared
interpreter (face_transfer.core.interpreter) outside the TensorFlow graph.
"""
from __future__ import annotations

import os
import threading
import warnings

import numpy as np

from face_transfer.core.errors import TeacherLoadError
from face_transfer.core.interpreter import dequantize_output, load_interpreter, quantize_input
from face_transfer.teachers.adapters import Teacher, require_file
from face_transfer.teachers.config import InputSpec
from face_transfer.teachers.formats import TeacherFormat, register_format

TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier, bytes 4..8 of every .tflite file


@register_format("tflite")
class TfliteFormat(TeacherFormat):
    order = 40
    extensions = (".tflite",)
    accepts = "a .tflite file"

    def sniff(self, path, head):
        return head[4:8] == TFLITE_IDENTIFIER

    def load(self, path, ref):
        return load_tflite_teacher(path, ref.output, name=ref.name, spec=ref.input_spec(), pool=ref.pool)


def _tflite_output(interpreter, output_name, path):
    """The tensor detail of the feature: the only output, or a tensor named by its full name, a
    signature output key or one `;`-separated part of a fused TFLite tensor name."""
    outputs = interpreter.get_output_details()
    if output_name is None:
        if len(outputs) != 1:
            raise TeacherLoadError(
                f"{path}: the model has outputs {[o['name'] for o in outputs]}; name the feature tensor (output)"
            )
        return outputs[0]
    tensors = interpreter.get_tensor_details()
    found = [t for t in tensors if t["name"] == output_name]
    if not found:
        for signature in interpreter.get_signature_list():
            runner_outputs = interpreter.get_signature_runner(signature).get_output_details()
            if output_name in runner_outputs:
                index = runner_outputs[output_name]["index"]
                found = [t for t in tensors if t["index"] == index]
                break
    if not found:
        # The converter fuses ops and joins their names with ';' (e.g. "model/add_4/Add;model/bn/...").
        found = [t for t in tensors if output_name in t["name"].split(";")]
    if len(found) > 1:
        raise TeacherLoadError(
            f"{path}: {len(found)} tensors match {output_name!r}: {[t['name'] for t in found][:5]}; give a full tensor name"
        )
    if not found:
        names = [t["name"] for t in tensors if t["name"] and len(t["shape"]) >= 2]
        shown = ", ".join(names[:30]) + (f", ... ({len(names)} in all)" if len(names) > 30 else "")
        raise TeacherLoadError(f"{path}: no tensor named {output_name!r}; tensors: {shown}")
    return found[0]


def _pool_numpy(y, pool, layout):
    """numpy twin of `pool_feature` for a TFLite feature [n, ...] (same layout as the model's input)."""
    if y.ndim == 2:
        return y
    if pool is None:
        return y.reshape(len(y), -1)
    reduce = np.mean if pool == "avg" else np.max
    if y.ndim == 4:
        return reduce(y, axis=(2, 3) if layout == "nchw" else (1, 2))
    return reduce(y, axis=2 if layout == "nchw" else 1)


class _TfliteRunner:
    """Runs one interpreter on preprocessed float batches; quantises the input, dequantises the feature.

    Batches are run whole by resizing the input when the model allows it, else in slices of the
    file's own batch size (padded). Interpreters are not thread-safe and tf.numpy_function may call
    this from several threads, hence the lock.
    """

    def __init__(self, interpreter, in_detail, out_detail, pool, layout, path):
        self.interpreter, self.in_detail, self.out_detail = interpreter, in_detail, out_detail
        self.pool, self.layout, self.path = pool, layout, path
        self.file_shape = [int(d) for d in in_detail["shape"]]
        self.batch = self.file_shape[0]
        self.resizable = None  # unknown until a resize is tried
        self._lock = threading.Lock()

    def _resize(self, n):
        try:
            self.interpreter.resize_tensor_input(self.in_detail["index"], [n] + self.file_shape[1:], strict=False)
            self.interpreter.allocate_tensors()
        except Exception:
            # Leave the interpreter as the file made it, so image-by-image runs still work.
            self.interpreter.resize_tensor_input(self.in_detail["index"], self.file_shape, strict=False)
            self.interpreter.allocate_tensors()
            self.batch = self.file_shape[0]
            raise
        self.batch = n

    def _invoke(self, x):
        self.interpreter.set_tensor(self.in_detail["index"], quantize_input(x, self.in_detail))
        self.interpreter.invoke()
        return dequantize_output(self.interpreter.get_tensor(self.out_detail["index"]), self.out_detail)

    def __call__(self, x):
        x = np.asarray(x, np.float32)
        n = len(x)
        with self._lock:
            if self.resizable is not False and n != self.batch:
                try:
                    self._resize(n)
                    self.resizable = True
                except Exception:  # a model that hard-codes its batch size (e.g. Reshape to [1, -1])
                    self.resizable = False
            if self.batch == n:
                y = self._invoke(x)
                if y.shape[:1] == (n,):
                    return _pool_numpy(y, self.pool, self.layout)
                self.resizable = False  # resized, but the feature did not follow the batch
            if self.batch != self.file_shape[0]:
                self._resize(self.file_shape[0])
            b = self.batch
            parts = []
            for start in range(0, n, b):
                chunk = x[start : start + b]
                pad = b - len(chunk)
                if pad:
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
                parts.append(self._invoke(chunk)[: b - pad])
            return _pool_numpy(np.concatenate(parts), self.pool, self.layout)


def load_tflite_teacher(path, output_name: str | None = None, name: str | None = None, spec: InputSpec = InputSpec(), pool: str | None = "avg", num_threads: int = 1) -> Teacher:
    """A `.tflite` file as a frozen numpy-callable teacher (float or int8/uint8-quantised).

    `output_name` picks an intermediate tensor (the interpreter then keeps all tensors); None = the
    model's only output. A spatial feature is pooled per `pool` ("avg", "max", None = flatten) over
    the axes of `spec.layout`.
    """
    what = "a TensorFlow Lite flatbuffer (.tflite)"
    path = require_file(path, what)
    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] != TFLITE_IDENTIFIER:
        raise TeacherLoadError(f"{path}: not a TFLite flatbuffer (no 'TFL3' identifier at bytes 4..8); expected {what}")
    if pool not in ("avg", "max", None):
        raise TeacherLoadError(f"{path}: pool must be 'avg', 'max' or None, got {pool!r}")

    def load(preserve):
        try:
            with warnings.catch_warnings():
                # Keeping all tensors is how an intermediate feature is read, not a debugging leftover.
                warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
                return load_interpreter(path, num_threads=num_threads, preserve_all_tensors=preserve)
        except Exception as e:  # the interpreter verifies the flatbuffer: truncated files end here
            raise TeacherLoadError(f"{path}: could not load the TFLite model ({type(e).__name__}: {e}); expected {what}") from e

    interpreter = load(False)
    out_detail = _tflite_output(interpreter, output_name, path)
    if out_detail["index"] not in {o["index"] for o in interpreter.get_output_details()}:
        # Intermediate tensors are overwritten during invoke() unless the interpreter preserves them.
        interpreter = load(True)
        out_detail = next(t for t in interpreter.get_tensor_details() if t["index"] == out_detail["index"])
    inputs = interpreter.get_input_details()
    if len(inputs) != 1:
        raise TeacherLoadError(f"{path}: expected a model with one image input, found {len(inputs)}")
    in_detail = inputs[0]
    have = tuple(int(d) for d in in_detail["shape_signature"])
    want = spec.input_shape()
    if len(have) != 4 or any(h != -1 and h != w for h, w in zip(have[1:], want)):
        shown = ", ".join("N" if d == -1 else str(d) for d in have)
        raise TeacherLoadError(
            f"{path}: the model takes inputs of shape ({shown}) but the InputSpec gives (N, {', '.join(map(str, want))}) "
            f"(size={spec.size}, channels={spec.channels}, layout={spec.layout}); pass a matching spec"
        )
    in_dtype = np.dtype(in_detail["dtype"])
    if in_dtype != np.float32 and not (np.issubdtype(in_dtype, np.integer) and in_detail["quantization"][0]):
        raise TeacherLoadError(
            f"{path}: input dtype {in_dtype.name} without quantisation parameters; expected float32 or quantised int8/uint8"
        )
    if have[0] == -1:
        # A dynamic batch is allocated as 1 until resized.
        in_detail = {**in_detail, "shape": np.array([1, *want], np.int32)}
    out_shape = tuple(int(d) for d in out_detail["shape"])
    if len(out_shape) < 2 or len(out_shape) > 4:
        raise TeacherLoadError(f"{path}: tensor {out_detail['name']!r} has shape {out_shape}; expected [N, D] or a [N, H, W, C] map")
    dim = _pool_numpy(np.zeros((1, *out_shape[1:]), np.float32), pool, spec.layout).shape[1]
    name = name or os.path.splitext(os.path.basename(path))[0]
    runner = _TfliteRunner(interpreter, in_detail, out_detail, pool, spec.layout, path)
    return Teacher(
        name, spec, dim, fn=runner,
        metadata={"source": "tflite", "path": os.path.abspath(path), "output_name": out_detail["name"],
                  "pool": pool, "input_dtype": in_dtype.name},
    )
