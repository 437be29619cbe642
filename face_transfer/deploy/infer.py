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
            from face_transfer.integrity import CorruptArtifactError
            raise CorruptArtifactError(f"{path}: not a readable .tflite model (truncated or damaged? "
                                       f"{str(e).splitlines()[0][:200]})") from None
    interpreter.allocate_tensors()
    return interpreter


def _to_input(images: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if images.dtype == dtype and (not scale or (scale == 1.0 and zero_point == 0)):
        return images  # raw uint8 pixels into a uint8 input (scale 1, zero point 0): nothing to convert
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


def model_info(path, labels_path: str | None = None) -> dict:
    """How to feed and read a .tflite file, from the file itself when it carries TFLite metadata
    (deploy/metadata.py), else from its `.labels.json` sidecar (or `labels_path`) with raw RGB 0..255 input.

    Returns {"labels": {output: {"kind", "classes"?, "units"?, "trained_on"?}}, "labels_from": "metadata" |
    <sidecar path> | None, "input": {"color_space", "mean", "std"}, "metadata": the read_metadata dict or None}.
    `trained_on` (the data a head was fitted on) comes from the metadata's entry, else the adapted analyser's
    face_transfer.json, else the output's description (see trained_on_from_description). An explicit
    `labels_path` wins over the metadata's labels. Metadata that belongs to another model (other outputs,
    class counts or input size than the file's) raises CorruptArtifactError naming the file.
    """
    import json

    from face_transfer.deploy.metadata import output_labels, read_metadata

    path = os.fspath(path)
    meta = read_metadata(path)
    info = {"labels": {}, "labels_from": None, "metadata": meta,
            "input": {"color_space": "RGB", "mean": [0.0], "std": [1.0]}}
    if meta is not None:
        inp = meta.get("input") or {}
        norm = inp.get("normalization") or {}
        info["input"] = {"color_space": inp.get("color_space", "RGB"), "mean": norm.get("mean") or [0.0],
                         "std": norm.get("std") or [1.0]}
        info["labels"], info["labels_from"] = output_labels(meta), "metadata"
        _fill_trained_on(info["labels"], meta)
    sidecar = labels_path or (path[: -len(".tflite")] + ".labels.json" if path.endswith(".tflite") else None)
    if labels_path is not None or (meta is None and sidecar and os.path.isfile(sidecar)):
        try:
            with open(sidecar) as f:
                info["labels"] = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{sidecar}: not a readable labels JSON file ({e})") from None
        info["labels_from"] = sidecar
    return info


SYNTHETIC_SUFFIX = ", synthetic faces only: check it on real photos, or adapt on yours"  # adapt.trained_on_text


def trained_on_from_description(description: str) -> dict | None:
    """{"dataset", "images", "domain", "synthetic"} parsed back from an output description that ends with
    face_transfer.adapt.trained_on_text ("fitted on N images of DATASET (DOMAIN)[, synthetic faces only: ...]"),
    as the export stage writes it into the TFLite metadata; None when the description has no such text."""
    i = (description or "").find("fitted on ")
    if i < 0:
        return None
    text = description[i:].strip()
    synthetic = text.endswith(SYNTHETIC_SUFFIX)
    if synthetic:
        text = text[: -len(SYNTHETIC_SUFFIX)]
    head, sep, rest = text[len("fitted on "):].partition(" images of ")
    if not sep or not rest.endswith(")"):
        return None
    depth = 0  # the domain is the last balanced (...) group: it may hold parentheses itself
    for j in range(len(rest) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(rest[j], 0)
        if depth == 0:
            break
    if depth != 0 or j == 0:
        return None
    domain, dataset = rest[j + 1: -1], rest[:j].rstrip()
    return {"dataset": dataset, "images": int(head) if head.isdigit() else None, "domain": domain,
            "synthetic": synthetic or domain.startswith("synthetic")}


def _fill_trained_on(labels: dict, meta: dict) -> None:
    """Heads whose metadata entry has no structured `trained_on`: from face_transfer.json's
    adapt.heads_trained_on (an adapted analyser), else parsed from the output's description."""
    adapted = (((meta.get("json") or {}).get("adapt") or {}).get("heads_trained_on") or {})
    for name, entry in labels.items():
        if entry.get("trained_on") or entry.get("kind") == "embedding":
            continue
        found = adapted.get(name) or trained_on_from_description(meta["outputs"].get(name, {}).get("description"))
        if found:
            entry["trained_on"] = dict(found)


def _prepare(images: np.ndarray, spec: dict | None) -> np.ndarray:
    """RGB uint8 images -> what the file's metadata says its input is: grayscale when it says GRAYSCALE,
    (x - mean) / std when its normalisation is not the identity."""
    if not spec:
        return images
    if spec.get("color_space") == "GRAYSCALE" and images.shape[-1] == 3:
        images = (images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    mean = np.asarray(spec.get("mean") or [0.0], np.float32)
    std = np.asarray(spec.get("std") or [1.0], np.float32)
    if np.any(mean != 0) or np.any(std != 1):
        images = (images.astype(np.float32) - mean) / std
    return images


def run_tflite(interpreter, images, batch_size: int = 64, input_spec: dict | None = None) -> dict[str, np.ndarray]:
    """Runs images uint8 [N,S,S,3] (0..255, RGB) through the file's first signature in batches.

    `input_spec` ({"color_space", "mean", "std"}, e.g. model_info(path)["input"]) converts them to what the
    file's metadata says it takes first. Inputs are quantized and outputs dequantized with the file's own
    parameters, so the result is {signature output name: float array [N, ...]} whatever the file's quantization.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"run_tflite: images must be [N,S,S,3], got shape {images.shape}")
    images = _prepare(images, input_spec)
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
    if not in_detail["quantization"][0] and np.dtype(in_detail["dtype"]).kind in "ui" and images.dtype.kind == "f":
        raise ValueError(f"run_tflite: the input normalisation {input_spec} gives float values, but the file takes "
                         f"raw {np.dtype(in_detail['dtype']).name} without quantization parameters")
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


STUDENT_PRECISIONS = ("auto", "int8", "float32")


def preferred_student_file(export_dir: str, flags=None, prefer: str = "auto") -> tuple[str, str]:
    """(path, why): the faster of a run's student files on this CPU (int8 PTQ, or float32 where int8 is slower:
    x86 without VNNI, see machine.int8_is_fast); the other one when only one exists. prefer="int8"/"float32"
    asks for that file instead of the CPU's choice (say, to deploy the int8 file on a phone from an x86 host)."""
    from face_transfer.machine import cpu_isa_flags, int8_is_fast
    if prefer not in STUDENT_PRECISIONS:
        raise ValueError(f"prefer={prefer!r}; expected one of {STUDENT_PRECISIONS}")
    int8, f32 = (os.path.join(export_dir, f"student_{m}.tflite") for m in ("int8_ptq", "float32"))
    if prefer == "auto":
        fast = int8_is_fast(cpu_isa_flags() if flags is None else flags)
        why = ("int8: this CPU has int8 dot-product instructions" if fast else
               "float32: on this CPU (x86 without AVX-512 VNNI / AVX-VNNI) XNNPACK's int8 kernels are slower "
               "than float32")
    else:
        fast, why = prefer == "int8", f"{prefer}: asked for"
    want, other = (int8, f32) if fast else (f32, int8)
    if os.path.isfile(want):
        return want, why
    if os.path.isfile(other):
        return other, f"{os.path.basename(other)}: the only student file in {export_dir}"
    raise FileNotFoundError(f"{export_dir}: no student_int8_ptq.tflite or student_float32.tflite (expected a run's "
                            "export/ folder)")
