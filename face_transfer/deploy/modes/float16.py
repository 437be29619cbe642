"""TFLite mode float16: float16 weights (half the file), float32 compute.
"""
from __future__ import annotations

from face_transfer.deploy.modes import TfliteMode, register_mode


@register_mode("float16")
class Float16(TfliteMode):
    order = 20
    description = "float16 weights"
    min_cosine = 0.999

    def configure(self, converter, qcfg, input_spec, path):
        import tensorflow as tf  # converter modes run with TensorFlow loaded; the registry itself stays TF-free

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
