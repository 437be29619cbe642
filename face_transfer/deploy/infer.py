"""TFLite inference: the interpreter fallback chain, batched named-output runs and latency measurement.

Owns load_interpreter, interpreter_backend, run_tflite and benchmark_latency.
"""
from __future__ import annotations

import os
import statistics
import time

import numpy as np

_BACKEND = None  # (name, Interpreter class), resolved once


def _resolve():
    global _BACKEND
    if _BACKEND is None:
        try:
            from ai_edge_litert.interpreter import Interpreter

            _BACKEND = ("ai_edge_litert", Interpreter)
        except Exception:  # not installed, or a broken binary
            try:
                # tflite-runtime 2.14 raises AttributeError/ImportError at import under numpy 2.
                from tflite_runtime.interpreter import Interpreter

                _BACKEND = ("tflite_runtime", Interpreter)
            except Exception:
                import tensorflow as tf

                _BACKEND = ("tf.lite", tf.lite.Interpreter)
    return _BACKEND


def interpreter_backend() -> str:
    """Which interpreter load_interpreter uses: "ai_edge_litert", "tflite_runtime" or "tf.lite"."""
    return _resolve()[0]


def load_interpreter(path_or_bytes, num_threads: int = 1, default_delegates: bool = True,
                     preserve_all_tensors: bool = False):
    """An allocated interpreter for a .tflite path or flatbuffer bytes (first importable of
    ai_edge_litert, tflite_runtime, tf.lite).

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
        elif name == "tflite_runtime":
            from tflite_runtime.interpreter import OpResolverType
        else:
            import tensorflow as tf

            OpResolverType = tf.lite.experimental.OpResolverType
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
            from face_transfer.integrity import CorruptArtifactError
            raise CorruptArtifactError(f"{path}: not a readable .tflite model (truncated or damaged? "
                                       f"{str(e).splitlines()[0][:200]})") from None
    interpreter.allocate_tensors()
    return interpreter


def _to_input(images: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if scale and dtype in (np.uint8, np.int8, np.int16):
        info = np.iinfo(dtype)
        q = np.round(images.astype(np.float32) / scale + zero_point)
        return np.clip(q, info.min, info.max).astype(dtype)
    return images.astype(dtype)


def _from_output(value: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if scale and np.issubdtype(value.dtype, np.integer):
        return (value.astype(np.float32) - zero_point) * scale
    return np.array(value, copy=True)


def run_tflite(interpreter, images, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Runs images uint8 [N,S,S,3] (0..255) through the file's first signature in batches.

    Inputs are quantized and outputs dequantized with the file's own parameters, so the result is
    {signature output name: float array [N, ...]} whatever the file's quantization.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"run_tflite: images must be [N,S,S,3], got shape {images.shape}")
    signatures = interpreter.get_signature_list()
    if not signatures:
        raise ValueError("run_tflite: the .tflite file has no signature; convert it with convert_to_tflite")
    key = next(iter(signatures))
    runner = interpreter.get_signature_runner(key)
    in_details = runner.get_input_details()
    out_details = runner.get_output_details()
    (in_name, in_detail), = in_details.items()
    expected = tuple(in_detail["shape_signature"][1:])
    if tuple(images.shape[1:]) != expected:
        raise ValueError(f"run_tflite: the model takes images [N,{','.join(map(str, expected))}], got {images.shape}")
    chunks = []
    for start in range(0, len(images), batch_size):
        out = runner(**{in_name: _to_input(images[start : start + batch_size], in_detail)})
        chunks.append({k: _from_output(v, out_details[k]) for k, v in out.items()})
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def benchmark_latency(fn, images, warmup: int = 3, runs: int = 10) -> float:
    """Median wall time of fn(images) over `runs` calls after `warmup`, in milliseconds per face."""
    if runs < 1:
        raise ValueError(f"benchmark_latency: runs={runs}; expected >= 1")
    n = len(images)
    if n < 1:
        raise ValueError("benchmark_latency: images is empty")
    for _ in range(warmup):
        fn(images)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(images)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / n
