"""TFLite mode dynamic: dynamic-range quantisation (int8 weights, activations quantised on the fly).
"""
from __future__ import annotations

from face_transfer.deploy.modes import TfliteMode, register_mode


@register_mode("dynamic")
class Dynamic(TfliteMode):
    order = 30
    description = "int8 weights, float activations"
    min_cosine = 0.99

    def configure(self, converter, qcfg, input_spec, path):
        import tensorflow as tf  # converter modes run with TensorFlow loaded; the registry itself stays TF-free

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
