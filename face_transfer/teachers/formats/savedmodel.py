"""SavedModel directories as teachers, through keras.layers.TFSMLayer (one endpoint, one output key).
"""
from __future__ import annotations

import os

import keras

from face_transfer.core.errors import TeacherLoadError
from face_transfer.teachers.adapters import Teacher, feature_dim, pool_feature, safe_name
from face_transfer.teachers.config import InputSpec
from face_transfer.teachers.formats import TeacherFormat, register_format

_MARKERS = ("saved_model.pb", "saved_model.pbtxt")


@register_format("savedmodel")
class SavedModelFormat(TeacherFormat):
    order = 20
    accepts = "a SavedModel directory (with saved_model.pb)"
    directory_marker = "saved_model.pb"

    def sniff(self, path, head):
        return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in _MARKERS)

    def load(self, path, ref):
        return load_savedmodel_teacher(path, endpoint=ref.endpoint, output_key=ref.output, name=ref.name,
                                       spec=ref.input_spec(), pool=ref.pool)


def load_savedmodel_teacher(path, endpoint: str = "serving_default", output_key: str | None = None, name: str | None = None, spec: InputSpec = InputSpec(), pool: str | None = "avg") -> Teacher:
    """A SavedModel directory as a frozen teacher through `keras.layers.TFSMLayer`."""
    path = os.fspath(path)
    what = "a SavedModel directory containing saved_model.pb"
    if not os.path.isdir(path):
        raise TeacherLoadError(f"{path}: no such directory; expected {what}")
    if not any(os.path.isfile(os.path.join(path, f)) for f in _MARKERS):
        raise TeacherLoadError(f"{path}: no saved_model.pb inside; expected {what}")
    try:
        layer = keras.layers.TFSMLayer(path, call_endpoint=endpoint, trainable=False)
    except Exception as e:
        raise TeacherLoadError(f"{path}: could not load endpoint {endpoint!r} ({type(e).__name__}: {e})") from e
    inp = keras.Input(shape=spec.input_shape())
    try:
        out = layer(inp)
    except Exception as e:
        raise TeacherLoadError(
            f"{path}: endpoint {endpoint!r} does not accept inputs of shape {spec.input_shape()} ({type(e).__name__}: {e})"
        ) from e
    if isinstance(out, dict):
        if output_key is None and len(out) == 1:
            output_key = next(iter(out))
        if output_key not in out:
            raise TeacherLoadError(
                f"{path}: endpoint {endpoint!r} has outputs {sorted(out)}; pass output_key= one of them"
            )
        out = out[output_key]
    elif output_key is not None:
        raise TeacherLoadError(f"{path}: endpoint {endpoint!r} returns a single tensor; output_key must be None")
    out = pool_feature(out, pool, spec, path)
    dim = feature_dim(out, path)
    name = name or os.path.basename(os.path.normpath(path))
    feature_model = keras.Model(inp, out, name=f"{safe_name(name)}_features")
    return Teacher(
        name, spec, dim, feature_model=feature_model,
        metadata={"source": "savedmodel", "path": os.path.abspath(path), "endpoint": endpoint,
                  "output_key": output_key, "pool": pool},
    )
