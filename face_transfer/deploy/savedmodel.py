"""SavedModel export of the student or the multi-task analyser, with named uint8-image signatures.

Owns export_savedmodel (keras.export.ExportArchive, never tf.saved_model.save), build_student_export,
build_analyzer and load_and_check.
"""
from __future__ import annotations

import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from face_transfer.student.model import feature_model

SERVING_KEY = "serving_default"
# Same graph with float32 0..255 input: the TFLite converter quantizes from this one, because the
# uint8 endpoint's leading Cast would stay a float op in an otherwise integer-only model.
FLOAT_SERVING_KEY = "serving_float32"
HEAD_KINDS = ("classification", "regression", "landmarks")
# Outputs of every exported student file (build_student_export): the code, and the run's probed view of it.
STUDENT_OUTPUTS = ("embedding", "features")
N_LANDMARKS = 5


class ExportError(ValueError):
    """A model, head or output directory that cannot be exported as asked."""


def _input_size(model: keras.Model) -> int:
    if len(model.inputs) != 1:
        raise ExportError(f"model {model.name!r} has {len(model.inputs)} inputs; expected one image input")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[1] != shape[2]:
        raise ExportError(f"model {model.name!r} input shape {shape}: expected [N, S, S, 3] with a fixed S")
    return int(shape[1])


def model_output_names(model: keras.Model) -> list[str]:
    """The names a model's outputs go by: dict keys for dict outputs, else the output layers' names."""
    if isinstance(model.output, dict):
        return list(model.output.keys())
    return list(model.output_names)


def _named_outputs(model: keras.Model, output_names: dict | None):
    """fn(float images) -> {signature output name: tensor}, plus the ordered signature names."""
    source = model_output_names(model)
    mapping = {name: name for name in source}
    if output_names:
        unknown = sorted(set(output_names) - set(source))
        if unknown:
            raise ExportError(f"output_names keys {unknown} are not outputs of model {model.name!r} (it has {source})")
        mapping.update(output_names)
    if len(set(mapping.values())) != len(mapping):
        raise ExportError(f"output_names {output_names} map two model outputs to one signature name")

    def call(images):
        out = model(images, training=False)
        if isinstance(out, dict):
            return {mapping[k]: out[k] for k in source}
        if not isinstance(out, (list, tuple)):
            out = [out]
        return {mapping[k]: t for k, t in zip(source, out)}

    return call, [mapping[k] for k in source]


def export_savedmodel(
    model: keras.Model,
    out_dir: str,
    input_name: str = "image",
    output_names: dict | None = None,
    uint8_input: bool = True,
    overwrite: bool = False,
) -> str:
    """Writes `model` as a SavedModel whose `serving_default` maps images [None,S,S,3] to named outputs.

    The input is uint8 (0..255) when `uint8_input`, else float32 in 0..255; a second endpoint
    `serving_float32` always takes float32 0..255 (the TFLite converter's entry point).
    `output_names` renames model outputs ({model output name: signature name}); by default a
    single-output student's output is called after its last layer ("embedding").
    Returns `out_dir`; an existing `out_dir` is an error unless `overwrite`.
    """
    size = _input_size(model)
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir):
        if not overwrite:
            raise FileExistsError(f"export_savedmodel: {out_dir} already exists; pass overwrite=True to replace it")
        shutil.rmtree(out_dir) if os.path.isdir(out_dir) else os.remove(out_dir)
    call, _ = _named_outputs(model, output_names)

    archive = keras.export.ExportArchive()
    archive.track(model)
    float_spec = tf.TensorSpec([None, size, size, 3], tf.float32, name=input_name)
    if uint8_input:
        archive.add_endpoint(
            SERVING_KEY,
            lambda image: call(tf.cast(image, tf.float32)),
            input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name=input_name)],
        )
    else:
        archive.add_endpoint(SERVING_KEY, call, input_signature=[float_spec])
    archive.add_endpoint(FLOAT_SERVING_KEY, call, input_signature=[float_spec])
    archive.write_out(out_dir, verbose=False)
    return out_dir


def build_student_export(student: keras.Model, view: str) -> keras.Model:
    """The student as every exported student file carries it (SavedModel, each .tflite, ONNX):
    image -> {"embedding": the distilled code [N, D], "features": the `view` of it [N, F]}.

    `view` is student.model.feature_model's: "ladder" (the code next to the pooled output of every resolution
    stage, F > D) or "embedding" (F = D, `features` equals the code). Both names always, so that every student
    file has one interface and a user fitting a head on `features` gets the view the run's transfer score was
    measured on, not the narrower code without knowing it. The QAT int8 file is built from the same
    feature_model on the tf_keras twin (deploy/qat.py).
    """
    _input_size(student)
    if len(student.outputs) != 1 or len(student.outputs[0].shape) != 2:
        raise ExportError(f"build_student_export: student {student.name!r} must have one [N, D] embedding output")
    view_model = feature_model(student, view)
    image = keras.Input(shape=tuple(student.inputs[0].shape[1:]), name="image")
    both = view_model(image)  # nested: its layer names ("embedding", ...) stay inside, free for the outputs
    outputs = {name: keras.layers.Identity(name=name)(both[name]) for name in STUDENT_OUTPUTS}
    return keras.Model(image, outputs, name=student.name)


def _as_array(head_name, params, key, ndim):
    if key not in params:
        raise ExportError(f"head {head_name!r}: missing {key!r} (expected linear-probe parameters)")
    value = np.asarray(params[key], dtype=np.float64)
    if value.ndim != ndim:
        raise ExportError(f"head {head_name!r}: {key!r} has shape {value.shape}; expected {ndim} dimension(s)")
    return value


def fold_head(head_name: str, params: dict, embedding_dim: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Folds standardisation, probe and target de-standardisation into one Dense (kernel [D,K'], bias [K']).

    Binary classification (one logit z) becomes the two logits [-z/2, z/2], whose softmax is
    [1 - sigmoid(z), sigmoid(z)], so every classification head outputs probabilities over its classes.
    """
    kind = params.get("kind")
    if kind not in HEAD_KINDS:
        raise ExportError(f"head {head_name!r}: kind={kind!r}; expected one of {HEAD_KINDS}")
    D = embedding_dim
    mean = _as_array(head_name, params, "mean", 1) if "mean" in params else np.zeros(D)
    scale = _as_array(head_name, params, "scale", 1) if "scale" in params else np.ones(D)
    coef = _as_array(head_name, params, "coef", 2)
    intercept = np.atleast_1d(np.asarray(params.get("intercept", 0.0), dtype=np.float64))
    if coef.shape[0] != D and coef.shape[1] == D:
        coef = coef.T  # scikit-learn stores coef_ as [K, D]
    if coef.shape[0] != D:
        raise ExportError(f"head {head_name!r}: coef has shape {coef.shape}; expected [{D}, K] for embedding_dim {D}")
    K = coef.shape[1]
    if mean.shape != (D,) or scale.shape != (D,):
        raise ExportError(f"head {head_name!r}: mean/scale shapes {mean.shape}/{scale.shape}; expected ({D},)")
    if np.any(scale == 0):
        raise ExportError(f"head {head_name!r}: scale has zeros; expected the per-feature standard deviations")
    if intercept.shape not in ((K,), (1,)):
        raise ExportError(f"head {head_name!r}: intercept has shape {intercept.shape}; expected ({K},)")
    kernel = coef / scale[:, None]
    bias = np.broadcast_to(intercept, (K,)) - (mean / scale) @ coef
    if kind == "classification":
        if K == 1:
            kernel = np.concatenate([-kernel / 2, kernel / 2], axis=1)
            bias = np.concatenate([-bias / 2, bias / 2])
        classes = params.get("classes")
        if classes is not None and len(classes) != kernel.shape[1]:
            raise ExportError(
                f"head {head_name!r}: {len(classes)} classes but the probe has {kernel.shape[1]} outputs"
            )
    else:
        target_mean = np.asarray(params.get("target_mean", 0.0), dtype=np.float64)
        target_scale = np.asarray(params.get("target_scale", 1.0), dtype=np.float64)
        kernel = kernel * target_scale
        bias = bias * target_scale + target_mean
        if kind == "landmarks" and K != 2 * N_LANDMARKS:
            raise ExportError(f"head {head_name!r}: landmarks need {2 * N_LANDMARKS} outputs (5 x/y pairs), got {K}")
    return kernel.astype(np.float32), np.asarray(bias, dtype=np.float32), kind


def build_analyzer(student: keras.Model, heads: dict[str, dict], include_embedding: bool = True,
                   features: keras.Model | None = None) -> keras.Model:
    """The multi-task facial analyser: image -> {"embedding": code, <head name>: output, ...}.

    `features` (student.model.feature_model: image -> {"features", "embedding"}) puts the heads on a
    wider view of the student than its code (e.g. the multi-level ladder); the embedding output stays the code.

    Each head is the linear probe of the evaluation stage as one Dense layer (int8-convertible):
    {"kind", "mean" [D], "scale" [D], "coef" [D,K], "intercept" [K], optional "target_mean",
    "target_scale", "classes"}. Classification -> softmax probabilities [N, n_classes];
    regression -> values in the task's units [N, K]; landmarks -> [N, 5, 2].
    """
    if not heads:
        raise ExportError("build_analyzer: heads is empty; expected {task name: probe parameters}")
    if len(student.outputs) != 1 or len(student.outputs[0].shape) != 2:
        raise ExportError(f"build_analyzer: student {student.name!r} must have one [N, D] embedding output")
    if include_embedding and "embedding" in heads:
        raise ExportError("build_analyzer: a head may not be called 'embedding' (the student code output)")
    image = keras.Input(shape=tuple(student.inputs[0].shape[1:]), name="image")
    if features is not None:
        both = features(image)
        code, feats = both["embedding"], both["features"]
    else:
        code = feats = student(image)
    D = int(feats.shape[-1])
    outputs = {"embedding": keras.layers.Identity(name="embedding")(code)} if include_embedding else {}
    for name, params in heads.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ExportError(f"build_analyzer: head name {name!r} must be an identifier (it names an output)")
        kernel, bias, kind = fold_head(name, params, D)
        dense = keras.layers.Dense(kernel.shape[1], name=f"{name}_probe")
        y = dense(feats)
        dense.set_weights([kernel, bias])
        if kind == "classification":
            y = keras.layers.Softmax(name=name)(y)
        elif kind == "landmarks":
            y = keras.layers.Reshape((N_LANDMARKS, 2), name=name)(y)
        else:
            y = keras.layers.Identity(name=name)(y)
        outputs[name] = y
    return keras.Model(image, outputs, name="analyzer")


def analyzer_metadata(heads: dict[str, dict]) -> dict:
    """What a reader of the analyser outputs needs: kind and class names per head (JSON-friendly)."""
    meta = {}
    for name, params in heads.items():
        entry = {"kind": params["kind"]}
        if params.get("classes") is not None:
            entry["classes"] = [str(c) for c in params["classes"]]
        elif params["kind"] == "classification" and np.asarray(params["coef"]).ndim == 2:
            n = min(np.asarray(params["coef"]).shape)
            entry["classes"] = [str(i) for i in range(max(2, n))]
        meta[name] = entry
    return meta


def load_and_check(out_dir, images) -> dict:
    """Reloads the SavedModel with tf.saved_model.load and runs `serving_default` on `images`.

    Returns {output name: np.ndarray}; raises ExportError naming the directory when the signature
    is missing or its input does not accept the images' shape.
    """
    out_dir = os.fspath(out_dir)
    if not os.path.isdir(out_dir):
        raise ExportError(f"load_and_check: {out_dir} is not a SavedModel directory")
    loaded = tf.saved_model.load(out_dir)
    if SERVING_KEY not in loaded.signatures:
        raise ExportError(f"{out_dir}: no {SERVING_KEY!r} signature (has {sorted(loaded.signatures)})")
    fn = loaded.signatures[SERVING_KEY]
    (name, spec), = fn.structured_input_signature[1].items()
    images = np.asarray(images)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(spec.shape[1:]):
        raise ExportError(f"{out_dir}: signature input {name!r} expects {spec.shape}, got images {images.shape}")
    out = fn(**{name: tf.constant(images.astype(spec.dtype.as_numpy_dtype))})
    return {k: v.numpy() for k, v in out.items()}
