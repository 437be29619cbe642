"""Quantization-aware fine-tuning of the student (tensorflow-model-optimization) and its int8 TFLite conversion.

Owns qat_finetune and convert_qat_to_tflite; the only module of the package that imports tfmot.

Importing this module imports tensorflow_model_optimization, which sets TF_USE_LEGACY_KERAS=1 for the
whole process: from then on the TF keras alias silently means tf_keras. That is why the library always writes
`import keras` (Keras 3) or `import tf_keras` explicitly, and why callers that also train Keras 3
models should run QAT in its own process (export/convert_tflite.py --mode=int8_qat does; so do the tests).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from face_transfer.deploy.tflite import range_anchor_image
from face_transfer.student.config import StudentConfig
from face_transfer.student.model import feature_model, student_from_weights


# tfmot's MovingAverageQuantizer: activation ranges start at [-6, 6] and follow the batch min/max
# with this EMA decay, so a short fine-tune would keep ranges near [-6, 6] (poor int8 resolution).
_EMA_DECAY = 0.999
_ACTIVATION_RANGE_SUFFIXES = ("activation_min", "activation_max", "output_min", "output_max")


def _range_name(variable) -> str:
    return variable.name.split("/")[-1].split(":")[0]


def init_activation_ranges(qat_model, batches) -> int:
    """Sets every activation range of a fresh QAT model to the min/max seen on `batches` (float images).

    One training-mode forward pass moves each range by (1 - decay) towards the batch extreme; reading
    the range before and after recovers that extreme exactly. Every other variable (BN moving
    statistics) is restored afterwards. Returns the number of ranges set.
    """
    ranges = [v for v in qat_model.non_trainable_variables if _range_name(v).endswith(_ACTIVATION_RANGE_SUFFIXES)]
    # BN moving statistics move in a training-mode pass; weight and input ranges should keep their update.
    others = [v for v in qat_model.non_trainable_variables if _range_name(v).startswith("moving_")]
    saved = [v.numpy() for v in others]
    seen = [None] * len(ranges)
    for images in batches:
        before = [v.numpy().astype(np.float64) for v in ranges]
        qat_model(images, training=True)
        for i, (v, old) in enumerate(zip(ranges, before)):
            extreme = (v.numpy().astype(np.float64) - _EMA_DECAY * old) / (1.0 - _EMA_DECAY)
            if seen[i] is None:
                seen[i] = extreme
            else:
                seen[i] = np.minimum(seen[i], extreme) if _range_name(v).endswith("min") else np.maximum(seen[i], extreme)
            v.assign(old.astype(v.dtype.as_numpy_dtype))
    for v, value in zip(others, saved):
        v.assign(value)
    for v, extreme in zip(ranges, seen):
        if extreme is not None:
            # Keep 0 inside the range (fake-quant nudges it there anyway) and never an empty range.
            bound = np.minimum(extreme, 0.0) if _range_name(v).endswith("min") else np.maximum(extreme, 1e-3)
            v.assign(bound.astype(v.dtype.as_numpy_dtype))
    return len(ranges)


def qat_finetune(
    student_keras3,
    cfg: StudentConfig,
    images_fn,
    targets_fn,
    steps: int,
    batch_size: int,
    lr: float,
    range_batches: int = 4,
    view: str = "embedding",
):
    """Carries the Keras 3 student's weights to its tf_keras twin, wraps it with quantize_model and
    fine-tunes it for `steps` steps on the MSE of its code to `targets_fn(images)` (e.g. the distillation targets).

    The twin is quantized with the exported student's two outputs (deploy/savedmodel.build_student_export):
    {"embedding": the code, "features": the `view` of student.model.feature_model, the same stage poolings
    concatenated in the same order}, so the QAT int8 file has the interface of every other student file and
    the ladder's poolings get their fake-quant ranges in training like every other activation. Only the code
    has a target; the ladder follows the weights the code's loss moves.

    images_fn(step) -> uint8 [batch_size,S,S,3]; targets_fn(images) -> float [batch_size, embedding_dim].
    Activation ranges are first set from `range_batches` batches (init_activation_ranges) so that
    a few hundred steps suffice. Returns the QAT tf_keras model (save it as SavedModel, .h5 or weights: its .keras does not reload).
    """
    if not isinstance(cfg, StudentConfig):
        raise TypeError(f"qat_finetune(cfg=...): expected a StudentConfig, got {type(cfg).__name__}")
    if steps < 0 or batch_size < 1 or not lr > 0:
        raise ValueError(f"qat_finetune: steps={steps}, batch_size={batch_size}, lr={lr}; expected >= 0, >= 1, > 0")
    twin = student_from_weights(student_keras3, backend="tf_keras", cfg=cfg)
    qat_model = tfmot.quantization.keras.quantize_model(feature_model(twin, view, backend="tf_keras"))
    # A loss for the code only: tf_keras leaves an output without a loss entry out of the training loss.
    qat_model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate=lr), loss={"embedding": "mse"})
    size = cfg.input_size

    def batch(step):
        images = np.asarray(images_fn(step))
        if images.dtype != np.uint8 or images.shape != (batch_size, size, size, 3):
            raise ValueError(
                f"qat_finetune: images_fn({step}) returned {images.dtype} {images.shape}; "
                f"expected uint8 {(batch_size, size, size, 3)}"
            )
        return images

    init_activation_ranges(qat_model, (batch(i).astype(np.float32) for i in range(max(1, range_batches))))
    for step in range(steps):
        images = batch(step)
        targets = np.asarray(targets_fn(images), dtype=np.float32)
        if targets.shape != (batch_size, cfg.embedding_dim):
            raise ValueError(
                f"qat_finetune: targets_fn returned shape {targets.shape}; expected {(batch_size, cfg.embedding_dim)}"
            )
        qat_model.train_on_batch(images.astype(np.float32), {"embedding": targets})
    return qat_model


def convert_qat_to_tflite(qat_model, representative_images) -> bytes:
    """Full-integer int8 TFLite of a QAT model: uint8 input, float32 output, TFLITE_BUILTINS_INT8 only.

    The fake-quant ranges learnt in training fix most scales; the representative images (uint8
    [N,S,S,3]) only calibrate what QAT leaves open (and confirm the 0..255 input range).
    """
    images = np.asarray(representative_images)
    size = int(qat_model.inputs[0].shape[1])
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (size, size, 3):
        raise ValueError(
            f"convert_qat_to_tflite: representative_images are {images.dtype} {images.shape}; "
            f"expected uint8 [N,{size},{size},3]"
        )

    def representative():
        yield [range_anchor_image(size)]
        for i in range(len(images)):
            yield [images[i : i + 1].astype(np.float32)]

    # quantize_model renames the output layers ("quant_embedding", "quant_ladder"); a linear Activation per
    # output (dropped by the converter) gives the TFLite signature the output names of the float exports.
    outputs = qat_model.output if isinstance(qat_model.output, dict) else \
        {qat_model.output_names[0].removeprefix("quant_"): qat_model.outputs[0]}
    named = tf_keras.Model(qat_model.inputs, {k: tf_keras.layers.Activation("linear", name=k)(v)
                                              for k, v in outputs.items()})
    converter = tf.lite.TFLiteConverter.from_keras_model(named)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.float32
    return converter.convert()
