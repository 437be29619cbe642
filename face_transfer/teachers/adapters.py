"""Teacher adapters: one frozen `Teacher` over Keras files, SavedModels, ONNX files, callables and in-memory models.
Owns `InputSpec`, the in-graph `preprocess` (resize, colour, scale) and the loaders' file checks and errors.
"""
from __future__ import annotations

import dataclasses
import json
import os
import zipfile

import keras
import numpy as np
import tensorflow as tf

from face_transfer.teachers import onnx_import

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_LUMA_601 = (0.299, 0.587, 0.114)


class TeacherLoadError(ValueError):
    """An existing model could not be loaded as a teacher; the message names the file and what was expected."""


# ----------------------------------------------------------------------------- input spec


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What a teacher's network expects: `x_float = x_uint8 * scale + offset` after resize and colour conversion."""

    size: int = 64
    channels: int = 3  # 1 = grayscale (ITU-R 601 luma), 3 = colour
    color_order: str = "rgb"  # or "bgr"
    scale: float | tuple = 1 / 127.5  # a float, or one value per channel
    offset: float | tuple = -1.0
    layout: str = "nhwc"  # "nchw" for networks that keep NCHW inputs

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"InputSpec.size must be a positive int, got {self.size!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"InputSpec.channels must be 1 or 3, got {self.channels!r}")
        if self.color_order not in ("rgb", "bgr"):
            raise ValueError(f"InputSpec.color_order must be 'rgb' or 'bgr', got {self.color_order!r}")
        if self.layout not in ("nhwc", "nchw"):
            raise ValueError(f"InputSpec.layout must be 'nhwc' or 'nchw', got {self.layout!r}")
        for field in ("scale", "offset"):
            value = getattr(self, field)
            if isinstance(value, (list, tuple)):
                if len(value) != self.channels:
                    raise ValueError(
                        f"InputSpec.{field} has {len(value)} values; expected one per channel ({self.channels})"
                    )
                object.__setattr__(self, field, tuple(float(v) for v in value))
            else:
                object.__setattr__(self, field, float(value))

    def input_shape(self) -> tuple:
        """Shape of one preprocessed image as the network sees it."""
        if self.layout == "nchw":
            return (self.channels, self.size, self.size)
        return (self.size, self.size, self.channels)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "InputSpec":
        data = json.loads(text)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"InputSpec.from_json: unknown fields {sorted(unknown)}")
        for field in ("scale", "offset"):
            if isinstance(data.get(field), list):
                data[field] = tuple(data[field])
        return cls(**data)


def preprocess(images, spec: InputSpec):
    """uint8/float [N, H, W, 1|3] RGB images -> float32 network input per `spec` (graph-safe keras.ops)."""
    x = keras.ops.convert_to_tensor(images)
    if len(x.shape) != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"preprocess: images must be [N, H, W, 1 or 3], got shape {tuple(x.shape)}")
    x = keras.ops.cast(x, "float32")
    if spec.channels == 1 and x.shape[-1] == 3:
        # Luma before resizing: the same result (both are linear) on a third of the data.
        x = keras.ops.sum(x * keras.ops.convert_to_tensor(_LUMA_601, "float32"), axis=-1, keepdims=True)
    elif spec.channels == 3 and x.shape[-1] == 1:
        x = keras.ops.repeat(x, 3, axis=-1)
    elif spec.channels == 3 and spec.color_order == "bgr":
        x = keras.ops.flip(x, axis=-1)
    if x.shape[1] != spec.size or x.shape[2] != spec.size:
        x = keras.ops.image.resize(
            x, (spec.size, spec.size), interpolation="bilinear", antialias=True, data_format="channels_last"
        )
    x = x * keras.ops.convert_to_tensor(spec.scale, "float32") + keras.ops.convert_to_tensor(spec.offset, "float32")
    if spec.layout == "nchw":
        x = keras.ops.transpose(x, (0, 3, 1, 2))
    return x


# ----------------------------------------------------------------------------- teacher


@keras.saving.register_keras_serializable(package="face_transfer")
class TeacherLayer(keras.layers.Layer):
    """Frozen teacher as a layer: raw images of any size in, embedding out; preprocessing inside."""

    def __init__(self, spec, feature_model, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec if isinstance(spec, InputSpec) else InputSpec.from_json(spec)
        if isinstance(feature_model, dict):
            feature_model = keras.saving.deserialize_keras_object(feature_model)
        self.feature_model = feature_model
        self.feature_model.trainable = False
        self.trainable = False

    def call(self, images):
        # training=False always: a teacher's BatchNorm/Dropout stay in inference mode inside a training student.
        return self.feature_model(preprocess(images, self.spec), training=False)

    def get_config(self):
        return {
            **super().get_config(),
            "spec": self.spec.to_json(),
            "feature_model": keras.saving.serialize_keras_object(self.feature_model),
        }


class Teacher:
    """A frozen embedding function with its own input spec: `embed(uint8 [N,H,W,3]) -> float32 [N, dim]`."""

    def __init__(self, name: str, spec: InputSpec, dim: int, *, feature_model=None, fn=None, metadata=None):
        if (feature_model is None) == (fn is None):
            raise ValueError("Teacher needs exactly one of feature_model (Keras) or fn (numpy callable)")
        self.name = name
        self.spec = spec
        self.dim = int(dim)
        self.metadata = dict(metadata or {})
        self.metadata.setdefault("name", name)
        self.metadata.setdefault("dim", self.dim)
        self.metadata.setdefault("input_spec", json.loads(spec.to_json()))
        self._feature_model = feature_model
        self._fn = fn
        self._compiled = {}
        if feature_model is not None:
            feature_model.trainable = False

    def __repr__(self):
        return f"Teacher(name={self.name!r}, dim={self.dim}, source={self.metadata.get('source')!r})"

    @property
    def feature_model(self):
        """The Keras model from preprocessed input to the embedding (None for callables)."""
        return self._feature_model

    def _check_images(self, images):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(
                f"teacher {self.name!r}: images must be [N, H, W, 3] (or 1 channel), got shape {images.shape}"
            )
        return images

    def _embed_batch(self, batch):
        if self._fn is not None:
            x = np.asarray(preprocess(batch, self.spec))
            y = np.asarray(self._fn(x), dtype=np.float32)
        else:
            # One trace per (dtype, channels): any batch size and image size reuse it.
            key = (batch.dtype.str, batch.shape[-1])
            if key not in self._compiled:
                model, spec = self._feature_model, self.spec
                signature = [tf.TensorSpec([None, None, None, batch.shape[-1]], tf.as_dtype(batch.dtype))]
                self._compiled[key] = tf.function(
                    lambda x: model(preprocess(x, spec), training=False), input_signature=signature
                )
            y = np.asarray(self._compiled[key](batch), dtype=np.float32)
        if y.shape != (len(batch), self.dim):
            raise ValueError(
                f"teacher {self.name!r}: produced shape {y.shape} for {len(batch)} images; expected [{len(batch)}, {self.dim}]"
            )
        return y

    def embed(self, images_uint8: np.ndarray, batch_size: int = 256) -> np.ndarray:
        images = self._check_images(images_uint8)
        if batch_size < 1:
            raise ValueError(f"teacher {self.name!r}: batch_size must be >= 1, got {batch_size}")
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        parts = [self._embed_batch(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        return np.concatenate(parts, axis=0)

    def as_keras_layer(self) -> keras.layers.Layer | None:
        """A frozen layer (images of any size -> [N, dim]) sharing this teacher's weights; None for callables."""
        if self._feature_model is None:
            return None
        return TeacherLayer(self.spec, self._feature_model, name=f"teacher_{_safe_name(self.name)}")


def _safe_name(name):
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in name)


# ----------------------------------------------------------------------------- feature models


def _pool(out, pool, spec, origin):
    rank = len(out.shape)
    if rank == 2:
        return out
    if pool not in ("avg", "max", None):
        raise TeacherLoadError(f"{origin}: pool must be 'avg', 'max' or None, got {pool!r}")
    if pool is None:
        return keras.layers.Flatten()(out)
    fmt = "channels_first" if spec.layout == "nchw" else "channels_last"
    if rank == 4:
        layer = keras.layers.GlobalAveragePooling2D if pool == "avg" else keras.layers.GlobalMaxPooling2D
        return layer(data_format=fmt)(out)
    if rank == 3:
        layer = keras.layers.GlobalAveragePooling1D if pool == "avg" else keras.layers.GlobalMaxPooling1D
        return layer(data_format=fmt)(out)
    raise TeacherLoadError(f"{origin}: cannot pool a rank-{rank} feature of shape {tuple(out.shape)}")


def _dim_of(out, origin):
    dim = out.shape[-1]
    if len(out.shape) != 2 or dim is None:
        raise TeacherLoadError(f"{origin}: the feature must be [N, D] with a static D, got {tuple(out.shape)}")
    return int(dim)


def _check_input_shape(model, spec, origin):
    if len(model.inputs) != 1:
        raise TeacherLoadError(f"{origin}: expected a model with one image input, found {len(model.inputs)}")
    have = tuple(model.inputs[0].shape[1:])
    want = spec.input_shape()
    if len(have) != 3 or any(h is not None and h != w for h, w in zip(have, want)):
        raise TeacherLoadError(
            f"{origin}: the model takes inputs of shape {have} but the InputSpec gives {want} "
            f"(size={spec.size}, channels={spec.channels}, layout={spec.layout}); pass a matching spec"
        )


def _keras_feature_model(model, feature_layer, pool, spec, origin, name):
    if feature_layer is None:
        inp = keras.Input(shape=spec.input_shape())
        out = model(inp)
        if isinstance(out, (list, tuple, dict)):
            raise TeacherLoadError(f"{origin}: the model has several outputs; name a feature_layer")
    else:
        try:
            layer = model.get_layer(feature_layer)
        except ValueError:
            names = [layer.name for layer in model.layers]
            raise TeacherLoadError(
                f"{origin}: no layer named {feature_layer!r}; available layers: {', '.join(names)}"
            ) from None
        _check_input_shape(model, spec, origin)
        inp = model.inputs[0]
        try:
            out = layer.output
        except (AttributeError, ValueError) as e:
            raise TeacherLoadError(f"{origin}: layer {feature_layer!r} has no single output tensor ({e})") from e
    out = _pool(out, pool, spec, origin)
    dim = _dim_of(out, origin)
    feature_model = keras.Model(inp, out, name=f"{_safe_name(name)}_features")
    feature_model.trainable = False
    return feature_model, dim


def keras_model_teacher(model: keras.Model, feature_layer: str | None, name: str, spec: InputSpec = InputSpec(), pool: str | None = None) -> Teacher:
    """Wrap an in-memory Keras model (e.g. a trained zoo teacher). The model is frozen in place."""
    origin = f"in-memory model {model.name!r}"
    model.trainable = False
    feature_model, dim = _keras_feature_model(model, feature_layer, pool, spec, origin, name)
    return Teacher(
        name, spec, dim, feature_model=feature_model,
        metadata={"source": "keras_model", "model_name": model.name, "feature_layer": feature_layer,
                  "pool": pool, "params": int(model.count_params())},
    )


def _require_file(path, what):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise TeacherLoadError(f"{path}: no such file; expected {what}")
    if not os.path.isfile(path):
        raise TeacherLoadError(f"{path}: is not a file; expected {what}")
    if os.path.getsize(path) == 0:
        raise TeacherLoadError(f"{path}: is empty; expected {what}")
    return path


def load_keras_teacher(path, feature_layer: str | None, name: str | None = None, spec: InputSpec = InputSpec(), pool: str | None = "avg", trusted: bool = False) -> Teacher:
    """A `.keras` or `.h5` model file as a frozen teacher (safe_mode stays on unless `trusted`)."""
    what = "a Keras model file (.keras zip archive or .h5/.hdf5)"
    path = _require_file(path, what)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".keras":
        if not zipfile.is_zipfile(path):
            raise TeacherLoadError(f"{path}: not a valid .keras archive (not a zip file, or truncated); expected {what}")
    elif ext in (".h5", ".hdf5"):
        with open(path, "rb") as f:
            if f.read(8) != _HDF5_SIGNATURE:
                raise TeacherLoadError(f"{path}: not an HDF5 file; expected {what}")
    else:
        raise TeacherLoadError(f"{path}: unknown extension {ext!r}; expected {what}")
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=not trusted)
    except Exception as e:
        raise TeacherLoadError(f"{path}: could not load the Keras model ({type(e).__name__}: {e})") from e
    name = name or os.path.splitext(os.path.basename(path))[0]
    model.trainable = False
    feature_model, dim = _keras_feature_model(model, feature_layer, pool, spec, path, name)
    return Teacher(
        name, spec, dim, feature_model=feature_model,
        metadata={"source": "keras_file", "path": os.path.abspath(path), "feature_layer": feature_layer,
                  "pool": pool, "params": int(model.count_params())},
    )


def load_savedmodel_teacher(path, endpoint: str = "serving_default", output_key: str | None = None, name: str | None = None, spec: InputSpec = InputSpec(), pool: str | None = "avg") -> Teacher:
    """A SavedModel directory as a frozen teacher through `keras.layers.TFSMLayer`."""
    path = os.fspath(path)
    what = "a SavedModel directory containing saved_model.pb"
    if not os.path.isdir(path):
        raise TeacherLoadError(f"{path}: no such directory; expected {what}")
    if not any(os.path.isfile(os.path.join(path, f)) for f in ("saved_model.pb", "saved_model.pbtxt")):
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
    out = _pool(out, pool, spec, path)
    dim = _dim_of(out, path)
    name = name or os.path.basename(os.path.normpath(path))
    feature_model = keras.Model(inp, out, name=f"{_safe_name(name)}_features")
    return Teacher(
        name, spec, dim, feature_model=feature_model,
        metadata={"source": "savedmodel", "path": os.path.abspath(path), "endpoint": endpoint,
                  "output_key": output_key, "pool": pool},
    )


def load_onnx_teacher(path, output_name: str, name: str | None = None, spec: InputSpec = InputSpec(), pool: str | None = None) -> Teacher:
    """An ONNX file as a frozen teacher: the graph is rebuilt in Keras (NHWC) up to `output_name`.

    A 4-D feature map comes out in ONNX's NCHW order; `pool` ("avg"/"max") averages it over space,
    None flattens it in NCHW order.
    """
    what = "an ONNX model file"
    path = _require_file(path, what)
    if spec.layout != "nhwc":
        raise TeacherLoadError(f"{path}: the ONNX importer takes NHWC input; use InputSpec(layout='nhwc')")
    try:
        model = onnx_import.build_keras_from_onnx(path, outputs=[output_name])
    except onnx_import.OnnxImportError as e:
        raise TeacherLoadError(str(e)) from e
    _check_input_shape(model, spec, path)
    out = model.outputs[0]
    if len(out.shape) == 4 and pool is not None:
        # Output is NCHW: average/max over the spatial axes 2 and 3.
        layer = keras.layers.GlobalAveragePooling2D if pool == "avg" else keras.layers.GlobalMaxPooling2D
        out = layer(data_format="channels_first")(out)
    elif len(out.shape) > 2:
        out = keras.layers.Flatten()(out)
    dim = _dim_of(out, path)
    name = name or os.path.splitext(os.path.basename(path))[0]
    feature_model = keras.Model(model.inputs[0], out, name=f"{_safe_name(name)}_features")
    return Teacher(
        name, spec, dim, feature_model=feature_model,
        metadata={"source": "onnx", "path": os.path.abspath(path), "output_name": output_name,
                  "pool": pool, "params": int(model.count_params())},
    )


def callable_teacher(fn, dim: int, name: str, spec: InputSpec = InputSpec()) -> Teacher:
    """Any numpy function `f(float32 [n, *spec.input_shape()]) -> [n, dim]` (input already preprocessed).

    It has no Keras layer: use it through the embedding cache.
    """
    if not callable(fn):
        raise TypeError(f"callable_teacher {name!r}: fn must be callable, got {type(fn).__name__}")
    return Teacher(name, spec, dim, fn=fn, metadata={"source": "callable", "callable": getattr(fn, "__qualname__", repr(fn))})
