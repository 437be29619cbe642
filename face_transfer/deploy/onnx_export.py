"""ONNX export of an export_savedmodel directory (tf2onnx, in-process) and its parity against TensorFlow
with onnxruntime.

Owns export_onnx, run_onnx, validate_onnx and OnnxParityError.

The ONNX file has the SavedModel's `serving_default` interface: one input `image` uint8 [N,S,S,3] (raw RGB
0..255, NHWC; the scaling is inside the graph, as in the .tflite files) and the signature's named float32
outputs (`embedding` and `features` for the student, savedmodel.build_student_export; `embedding` and one output
per head for the analyser).
"""
from __future__ import annotations

import logging
import os

import numpy as np

from face_transfer.core.fileio import temp_name
from face_transfer.deploy import savedmodel as _sm
from face_transfer.deploy.tflite import TFLiteValidationError, output_cosines, outputs_by_name

DEFAULT_OPSET = 17
MIN_OPSET = 17


class OnnxParityError(TFLiteValidationError):
    """An ONNX file whose outputs do not match TensorFlow's (`.report` has the figures); the CLI boundary
    maps it, like a TFLite parity failure, to exit code 6 (validation failed)."""


def export_onnx(saved_model_dir, out_path, opset: int = DEFAULT_OPSET, signature: str = _sm.SERVING_KEY) -> dict:
    """Converts the `signature` endpoint of an export_savedmodel directory to ONNX at `out_path`.

    In-process tf2onnx (`convert.from_function` on the restored endpoint: Keras 3 SavedModels written by
    keras.export.ExportArchive convert this way, with the signature's input and output names kept).
    Returns {"path", "bytes", "opset", "inputs": {name: [dtype, shape]}, "outputs": [names]}.
    """
    import tensorflow as tf
    import tf2onnx

    if int(opset) < MIN_OPSET:
        raise ValueError(f"export_onnx: opset={opset}; expected >= {MIN_OPSET}")
    path = os.fspath(saved_model_dir)
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise ValueError(f"export_onnx: {path} is not a SavedModel directory (no saved_model.pb)")
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)  # its INFO lines would drown the stage's output
    loaded = tf.saved_model.load(path)
    if signature not in loaded.signatures or not hasattr(loaded, signature):
        raise ValueError(f"export_onnx: {path} has no {signature!r} endpoint (signatures {sorted(loaded.signatures)})")
    sig = loaded.signatures[signature]
    specs = sig.structured_input_signature[1]
    if len(specs) != 1:
        raise ValueError(f"export_onnx: {path} signature {signature!r} takes {len(specs)} inputs; expected one image")
    (in_name, spec), = specs.items()
    want_outputs = sorted(sig.structured_outputs)
    out_path = os.fspath(out_path)
    tmp = temp_name(out_path)
    proto, _ = tf2onnx.convert.from_function(
        getattr(loaded, signature), input_signature=[tf.TensorSpec(spec.shape, spec.dtype, name=in_name)],
        opset=int(opset), output_path=tmp)
    got_inputs = [i.name for i in proto.graph.input]
    got_outputs = sorted(o.name for o in proto.graph.output)
    if got_inputs != [in_name] or got_outputs != want_outputs:
        os.remove(tmp)
        raise ValueError(f"export_onnx: {out_path} would have inputs {got_inputs} and outputs {got_outputs}; "
                         f"the SavedModel {path} signature has [{in_name!r}] and {want_outputs}")
    os.replace(tmp, out_path)
    return {"path": out_path, "bytes": os.path.getsize(out_path), "opset": int(opset),
            "inputs": {in_name: [spec.dtype.name, [d if d is not None else -1 for d in spec.shape.as_list()]]},
            "outputs": [o.name for o in proto.graph.output]}


def _session(onnx_path_or_bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    src = bytes(onnx_path_or_bytes) if isinstance(onnx_path_or_bytes, (bytes, bytearray)) else os.fspath(onnx_path_or_bytes)
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


def run_onnx(onnx_path_or_bytes, images, batch_size: int = 64, session=None) -> dict[str, np.ndarray]:
    """{output name: array [N, ...]} of the ONNX file on images uint8 [N,S,S,3] (0..255)."""
    sess = session or _session(onnx_path_or_bytes)
    (inp,) = sess.get_inputs()
    images = np.asarray(images)
    expected = tuple(inp.shape[1:])
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(f"run_onnx: the model takes images [N,{','.join(map(str, expected))}], got {images.shape}")
    dtype = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}.get(inp.type)
    if dtype is None:
        raise ValueError(f"run_onnx: input {inp.name!r} has type {inp.type}; expected uint8 or float images")
    names = [o.name for o in sess.get_outputs()]
    chunks = []
    for start in range(0, len(images), batch_size):
        outs = sess.run(names, {inp.name: images[start: start + batch_size].astype(dtype)})
        chunks.append(dict(zip(names, outs)))
    return {k: np.concatenate([c[k] for c in chunks]) for k in names}


def validate_onnx(onnx_path, reference_fn, images, min_cosine: float = 0.9999, max_abs_tol: float = 1e-3,
                  embedding: str = "embedding") -> dict:
    """Runs the ONNX file (onnxruntime, CPU) on `images` and compares every output with reference_fn(images)
    (TensorFlow). Returns a report shaped like tflite.validate_tflite's ({size_bytes, input_dtype, outputs:
    {name: {cosine_mean, cosine_min, max_abs_diff}}, cosine_mean, max_abs_diff, ...}) plus "format": "onnx",
    "opset", "embedding_cosine_mean"/"_min". Raises OnnxParityError (with .report, naming the file) when an
    output is missing, has another shape, its mean cosine is below `min_cosine`, or its max abs diff is above
    `max_abs_tol` * (1 + max |reference|)."""
    import onnx

    path = os.fspath(onnx_path)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"validate_onnx: images must be uint8 [N,S,S,3], got {images.dtype} {images.shape}")
    sess = _session(path)
    got = run_onnx(path, images, session=sess)
    want = outputs_by_name(reference_fn(images), names=list(got) if len(got) == 1 else None)
    missing = sorted(set(want) - set(got))
    if missing:
        raise OnnxParityError(f"{path}: lacks outputs {missing} (has {sorted(got)})", {"outputs": sorted(got)})
    per_output, worst = {}, None
    for name, ref in want.items():
        out = got[name]
        if out.shape != ref.shape:
            raise OnnxParityError(f"{path}: output {name!r} has shape {out.shape}, TensorFlow gives {ref.shape}",
                                  {"output": name})
        cos = output_cosines(out, ref)
        diff = float(np.max(np.abs(out.astype(np.float64) - ref))) if out.size else 0.0
        per_output[name] = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "max_abs_diff": diff,
                            "max_abs_reference": float(np.max(np.abs(ref))) if ref.size else 0.0}
        bad = cos.mean() < min_cosine or diff > max_abs_tol * (1 + per_output[name]["max_abs_reference"])
        if bad and worst is None:
            worst = name
    opset = max((o.version for o in onnx.load(path, load_external_data=False).opset_import if o.domain in ("", "ai.onnx")),
                default=None)
    report = {"format": "onnx", "size_bytes": os.path.getsize(path), "opset": opset,
              "input_dtype": sess.get_inputs()[0].type.replace("tensor(", "").rstrip(")"), "int8": False,
              "int8_only": None, "n_images": int(len(images)), "min_cosine": float(min_cosine),
              "max_abs_tol": float(max_abs_tol), "outputs": per_output,
              "cosine_mean": min(v["cosine_mean"] for v in per_output.values()),
              "cosine_min": min(v["cosine_min"] for v in per_output.values()),
              "max_abs_diff": max(v["max_abs_diff"] for v in per_output.values()),
              "runtime": "onnxruntime " + __import__("onnxruntime").__version__}
    if embedding in per_output:
        report["embedding_cosine_mean"] = per_output[embedding]["cosine_mean"]
        report["embedding_cosine_min"] = per_output[embedding]["cosine_min"]
    if worst is not None:
        o = per_output[worst]
        raise OnnxParityError(
            f"{path}: output {worst!r} differs from TensorFlow: mean cosine {o['cosine_mean']:.6f} (expected >= "
            f"{min_cosine}), max abs diff {o['max_abs_diff']:.3g} (expected <= "
            f"{max_abs_tol * (1 + o['max_abs_reference']):.3g})", report)
    return report
