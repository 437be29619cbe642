"""TFLite mode int8_qat: full-integer int8 from a quantisation-aware fine-tune of the Keras student
(deploy/qat.py: qat_finetune, convert_qat_to_tflite), not from converting its SavedModel.
"""
from __future__ import annotations

from face_transfer.deploy.modes import TfliteMode, register_mode


@register_mode("int8_qat")
class Int8Qat(TfliteMode):
    order = 50
    description = "int8, quantisation-aware training"
    integer = True
    calibrated = True
    trains = True
    min_cosine = 0.95
