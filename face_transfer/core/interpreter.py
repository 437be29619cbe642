"""The TFLite interpreter that teachers and deploy share: its constructor (ai-edge-litert, else tflite-runtime)
and the quantisation of a tensor going in and coming out. The interpreter packages are imported on first use.
"""
from __future__ import annotations

import os

import numpy as np

from face_transfer.core.errors import CorruptArtifactError

_BACKEND = None  # (name, Interpreter class), resolved once


def _resolve():
    """ai_edge_litert's Interpreter, else tflite_runtime's (a numpy<2 device, BUILD.md). Never tf.lite.Interpreter:
    TensorFlow deprecated it (a UserWarning at every construction) in favour of ai_edge_litert."""
    global _BACKEND
    if _BACKEND is None:
        try:
            from ai_edge_litert.interpreter import Interpreter

            _BACKEND = ("ai_edge_litert", Interpreter)
        except Exception as litert_error:  # not installed, or a broken binary
            try:
                # tflite-runtime 2.14 raises AttributeError/ImportError at import under numpy 2.
                from tflite_runtime.interpreter import Interpreter

                _BACKEND = ("tflite_runtime", Interpreter)
            except Exception:
                raise ImportError(f"no TFLite interpreter: ai_edge_litert does not import ({litert_error}) and "
                                  "tflite_runtime is not installed; pip install 'ai-edge-litert>=2.3,<3'"
                                  ) from litert_error
    return _BACKEND


def interpreter_backend() -> str:
    """Which interpreter load_interpreter uses: "ai_edge_litert" or "tflite_runtime"."""
    return _resolve()[0]


def load_interpreter(path_or_bytes, num_threads: int = 1, default_delegates: bool = True,
                     preserve_all_tensors: bool = False):
    """An allocated interpreter for a .tflite path or flatbuffer bytes (ai_edge_litert, else tflite_runtime).

    default_delegates=False keeps XNNPACK out, so _get_ops_details() lists the file's own ops
    instead of one opaque DELEGATE node. preserve_all_tensors=True keeps intermediate tensors
    readable with get_tensor() after invoke() (the interpreter then runs without default delegates).
    """
    name, Interpreter = _resolve()
    kwargs = {"num_threads": num_threads}
    if preserve_all_tensors:
        kwargs["experimental_preserve_all_tensors"] = True
    if not default_delegates:
        if name == "ai_edge_litert":
            from ai_edge_litert.interpreter import OpResolverType
        else:
            from tflite_runtime.interpreter import OpResolverType
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if isinstance(path_or_bytes, (bytes, bytearray)):
        interpreter = Interpreter(model_content=bytes(path_or_bytes), **kwargs)
    else:
        path = os.fspath(path_or_bytes)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"load_interpreter: {path} is not a .tflite file")
        try:
            interpreter = Interpreter(model_path=path, **kwargs)
        except (ValueError, RuntimeError) as e:  # "not a valid Flatbuffer buffer", truncated files, ...
            raise CorruptArtifactError(f"{path}: not a readable .tflite model (truncated or damaged? "
                                       f"{str(e).splitlines()[0][:200]})") from None
    interpreter.allocate_tensors()
    return interpreter


def quantize_input(values: np.ndarray, detail: dict) -> np.ndarray:
    """`values` as the input tensor of `detail` (an interpreter's input detail) takes them: quantised with its
    scale and zero point when it is an integer tensor with quantisation parameters, else cast."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if values.dtype == dtype and (not scale or (scale == 1.0 and zero_point == 0)):
        return values  # raw uint8 pixels into a uint8 input (scale 1, zero point 0): nothing to convert
    if scale and dtype in (np.uint8, np.int8, np.int16):
        info = np.iinfo(dtype)
        q = np.round(values.astype(np.float32) / scale + zero_point)
        return np.clip(q, info.min, info.max).astype(dtype)
    return values.astype(dtype)


def dequantize_output(value: np.ndarray, detail: dict) -> np.ndarray:
    """An output tensor as float (dequantised with `detail`'s scale and zero point), or a copy of it when it is
    not quantised (the interpreter reuses its buffers)."""
    scale, zero_point = detail["quantization"]
    if scale and np.issubdtype(value.dtype, np.integer):
        return (value.astype(np.float32) - zero_point) * scale
    return np.array(value, copy=True)
