"""Teacher adapters: one frozen `Teacher` (a Keras feature model or a numpy callable) with its own `InputSpec`.
Owns the in-graph `preprocess` (resize, colour, scale), the teachers' Keras layers and the helpers the file formats
(face_transfer.teachers.formats) build their teachers with.
"""
from __future__ import annotations

import json
import os

import keras
import numpy as np
import tensorflow as tf

from face_transfer.core.errors import TeacherLoadError
from face_transfer.teachers.config import InputSpec

_LUMA_601 = (0.299, 0.587, 0.114)


# ----------------------------------------------------------------------------- input spec


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


class CallableTeacherLayer(keras.layers.Layer):
    """A numpy-callable teacher inside a Keras graph: preprocessing in-graph, the callable through tf.numpy_function.

    The callable runs in the Python host process on every call, so a model holding this layer works
    only with the TensorFlow backend, not under XLA (`supports_jit` is False, which turns Keras'
    jit_compile="auto" off), and cannot be saved (.keras) or exported (SavedModel, TFLite):
    see `Teacher.in_graph_exportable`.
    """

    def __init__(self, teacher_name, spec, fn, dim, **kwargs):
        super().__init__(**kwargs)
        self.teacher_name = teacher_name
        self.spec = spec
        self.fn = fn
        self.dim = int(dim)
        self.trainable = False
        self.supports_jit = False

    def _run(self, x):
        y = np.asarray(self.fn(x), dtype=np.float32)
        if y.shape != (len(x), self.dim):
            raise ValueError(
                f"teacher {self.teacher_name!r}: produced shape {y.shape} for {len(x)} images; expected [{len(x)}, {self.dim}]"
            )
        return y

    def call(self, images):
        x = preprocess(images, self.spec)
        # stateful=False: the teacher is a pure function of its input, so TF may dedupe or prune the call.
        y = tf.numpy_function(self._run, [x], tf.float32, stateful=False, name=f"{safe_name(self.teacher_name)}_fn")
        # numpy_function forgets shapes; downstream layers (and Keras' output specs) need [N, dim].
        return tf.ensure_shape(y, [None, self.dim])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)

    def get_config(self):
        raise TypeError(
            f"teacher {self.teacher_name!r} is a Python callable (tf.numpy_function): a model holding it cannot be "
            "saved or exported; save the other parts, or keep the teacher file and rebuild the ensemble"
        )


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
        out = np.concatenate(parts, axis=0)
        if not np.all(np.isfinite(out)):
            bad = int(np.sum(~np.all(np.isfinite(out), axis=-1)))
            raise FloatingPointError(f"teacher {self.name!r} produced NaN/Inf embeddings for {bad} of {len(out)} "
                                     "images; check its input spec and its output layer")
        return out

    @property
    def in_graph_exportable(self) -> bool:
        """Whether a model holding `as_keras_layer()` can be saved/exported: False for numpy callables."""
        return self._feature_model is not None

    def as_keras_layer(self) -> keras.layers.Layer:
        """A frozen layer (images of any size -> [N, dim]) sharing this teacher's weights.

        For a numpy callable it is a `CallableTeacherLayer` (tf.numpy_function; TensorFlow backend,
        no XLA, not exportable).
        """
        layer_name = f"teacher_{safe_name(self.name)}"
        if self._feature_model is None:
            return CallableTeacherLayer(self.name, self.spec, self._fn, self.dim, name=layer_name)
        return TeacherLayer(self.spec, self._feature_model, name=layer_name)


def safe_name(name):
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in name)


# ----------------------------------------------------------------------------- feature models


def pool_feature(out, pool, spec, origin):
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


def feature_dim(out, origin):
    dim = out.shape[-1]
    if len(out.shape) != 2 or dim is None:
        raise TeacherLoadError(f"{origin}: the feature must be [N, D] with a static D, got {tuple(out.shape)}")
    return int(dim)


def check_input_shape(model, spec, origin):
    if len(model.inputs) != 1:
        raise TeacherLoadError(f"{origin}: expected a model with one image input, found {len(model.inputs)}")
    have = tuple(model.inputs[0].shape[1:])
    want = spec.input_shape()
    if len(have) != 3 or any(h is not None and h != w for h, w in zip(have, want)):
        raise TeacherLoadError(
            f"{origin}: the model takes inputs of shape {have} but the InputSpec gives {want} "
            f"(size={spec.size}, channels={spec.channels}, layout={spec.layout}); pass a matching spec"
        )


def keras_feature_model(model, feature_layer, pool, spec, origin, name):
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
        check_input_shape(model, spec, origin)
        inp = model.inputs[0]
        try:
            out = layer.output
        except (AttributeError, ValueError) as e:
            raise TeacherLoadError(f"{origin}: layer {feature_layer!r} has no single output tensor ({e})") from e
    out = pool_feature(out, pool, spec, origin)
    dim = feature_dim(out, origin)
    feature_model = keras.Model(inp, out, name=f"{safe_name(name)}_features")
    feature_model.trainable = False
    return feature_model, dim


def keras_model_teacher(model: keras.Model, feature_layer: str | None, name: str, spec: InputSpec = InputSpec(), pool: str | None = None) -> Teacher:
    """Wrap an in-memory Keras model (e.g. a trained zoo teacher). The model is frozen in place."""
    origin = f"in-memory model {model.name!r}"
    model.trainable = False
    feature_model, dim = keras_feature_model(model, feature_layer, pool, spec, origin, name)
    return Teacher(
        name, spec, dim, feature_model=feature_model,
        metadata={"source": "keras_model", "model_name": model.name, "feature_layer": feature_layer,
                  "pool": pool, "params": int(model.count_params())},
    )


def require_file(path, what):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise TeacherLoadError(f"{path}: no such file; expected {what}")
    if not os.path.isfile(path):
        raise TeacherLoadError(f"{path}: is not a file; expected {what}")
    if os.path.getsize(path) == 0:
        raise TeacherLoadError(f"{path}: is empty; expected {what}")
    return path


def callable_teacher(fn, dim: int, name: str, spec: InputSpec = InputSpec()) -> Teacher:
    """Any numpy function `f(float32 [n, *spec.input_shape()]) -> [n, dim]` (input already preprocessed).

    Its Keras layer calls `fn` through tf.numpy_function (see `CallableTeacherLayer`): usable in
    the in-graph ensemble, but such a model cannot be saved or exported.
    """
    if not callable(fn):
        raise TypeError(f"callable_teacher {name!r}: fn must be callable, got {type(fn).__name__}")
    return Teacher(name, spec, dim, fn=fn, metadata={"source": "callable", "callable": getattr(fn, "__qualname__", repr(fn))})
