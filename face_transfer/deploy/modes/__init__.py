"""TFLite modes: one module per mode in this package registers a `TfliteMode` with `@register_mode`; the mode's
name is the one word for it everywhere (config, CLI, file name, report and results keys). Imports no TensorFlow.
"""
from __future__ import annotations

from face_transfer.core.registry import Registry

TFLITE_MODES = Registry("TFLite mode", package="face_transfer.deploy.modes")


class TfliteMode:
    """How one kind of .tflite file is made from the student's SavedModel. A subclass sets the class attributes
    and, for a converter mode, `configure` (and `finish`); `@register_mode(name)` registers one instance."""

    name = ""  # set by register_mode
    order = 100  # place in listings (the built-ins first, float to int8)
    description = ""
    integer = False  # int8 weights and activations: held to the int8 parity bar (ExportConfig.min_cosine_int8)
    calibrated = False  # needs representative images (QuantizationConfig.representative_images)
    float_endpoint = False  # converts from the SavedModel's float32 signature (savedmodel.FLOAT_SERVING_KEY)
    trains = False  # made by a fine-tune of the Keras student (deploy/qat.py), not by converting a SavedModel
    min_cosine = 0.999  # export.convert_tflite's default bar (mean cosine to the float model)

    def file_name(self, model: str = "student") -> str:
        return f"{model}_{self.name}.tflite"

    def configure(self, converter, qcfg, input_spec, path: str) -> None:
        """Sets the tf.lite.TFLiteConverter's options; `input_spec` is the signature's (name, dtype, shape)."""

    def finish(self, data: bytes) -> bytes:
        """The converted flatbuffer, post-processed."""
        return data


def register_mode(name: str):
    """Class decorator: registers one instance of a `TfliteMode` subclass under `name`."""
    return TFLITE_MODES.register_instance(name)


def modes() -> list[TfliteMode]:
    return TFLITE_MODES.ordered()


def mode_names() -> tuple[str, ...]:
    return tuple(m.name for m in modes())


def get_mode(name: str) -> TfliteMode:
    """The mode registered as `name`; UnknownNameError (a KeyError) listing the names otherwise."""
    return TFLITE_MODES.get(name)


__all__ = ["TFLITE_MODES", "TfliteMode", "get_mode", "mode_names", "modes", "register_mode"]
