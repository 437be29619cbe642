"""TFLite mode int8_ptq: full-integer post-training int8 (TFLITE_BUILTINS_INT8 only, uint8 input with scale 1 and
zero point 0, float32 outputs), calibrated on representative images, then tuned for XNNPACK (deploy/tflite.py).
"""
from __future__ import annotations

import numpy as np

from face_transfer.deploy.modes import TfliteMode, register_mode


@register_mode("int8_ptq")
class Int8Ptq(TfliteMode):
    order = 40
    description = "int8, post-training quantisation"
    integer = True
    calibrated = True
    float_endpoint = True
    min_cosine = 0.95

    def configure(self, converter, qcfg, input_spec, path):
        # Imported on use, here and in finish: listing the modes (export.convert_tflite's --mode) loads no TensorFlow.
        import tensorflow as tf

        from face_transfer.deploy.tflite import range_anchor_image

        images = np.asarray(qcfg.representative_images)
        name, dtype, shape = input_spec
        size = int(shape[1])
        if tuple(images.shape[1:]) != (size, size, 3):
            raise ValueError(
                f"QuantizationConfig.representative_images are {images.shape[1:]}; the model at {path} takes {(size, size, 3)}"
            )
        steps = min(qcfg.calibration_steps, len(images))

        # Samples as a list of the inputs in order, not {input name: array}: for a dict (or a (signature, dict)
        # tuple) TF's calibrator (tensorflow/lite/python/optimize/calibrator.py, _feed_tensors) builds a
        # tf.lite.Interpreter just to look the names up, and tf.lite.Interpreter warns at construction that it is
        # deprecated. The signature has one input (_signatures), so the list is the same feed: the .tflite bytes
        # are identical.
        def representative():
            yield [range_anchor_image(size).astype(dtype)]
            for i in range(steps):
                yield [images[i : i + 1].astype(dtype)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32

    def finish(self, data):
        from face_transfer.deploy.tflite import check_loads_with_default_delegates, fit_xnnpack_requantization, \
            fold_input_affine

        data, _ = fold_input_affine(data)
        data, _ = fit_xnnpack_requantization(data)
        check_loads_with_default_delegates(data)
        return data
