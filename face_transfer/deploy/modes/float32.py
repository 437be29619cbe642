"""TFLite mode float32: the SavedModel converted as it is (uint8 image input, float weights and activations).
"""
from __future__ import annotations

from face_transfer.deploy.modes import TfliteMode, register_mode


@register_mode("float32")
class Float32(TfliteMode):
    order = 10
    description = "float weights and activations"
    min_cosine = 0.9999
