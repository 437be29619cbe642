"""TFLite inference on a run's files: what a file takes and gives (model_info), batched named-output runs and
latency measurement. The interpreter itself is face_transfer.core.interpreter.
"""
from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np

from face_transfer.core.interpreter import dequantize_output, quantize_input
from face_transfer.deploy.bundle import trained_on_from_description
from face_transfer.deploy.metadata import output_labels, read_metadata
from face_transfer.machine import cpu_isa_flags, int8_is_fast


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
        out = runner(**{in_name: quantize_input(images[start : start + batch_size], in_detail)})
        chunks.append({k: dequantize_output(v, out_details[k]) for k, v in out.items()})
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
