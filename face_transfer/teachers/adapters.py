"""Teacher adapters: one frozen `Teacher` over Keras files, SavedModels, ONNX/TFLite files, callables and in-memory models.
Owns `InputSpec`, the in-graph `preprocess` (resize, colour, scale), the teachers' Keras layers and the loaders' file checks and errors.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import threading
import warnings
import zipfile

import keras
import numpy as np
import onnx
import tensorflow as tf

from face_transfer.deploy.infer import _from_output, _to_input, load_interpreter
from face_transfer.teachers import onnx_import

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZIP_SIGNATURE = b"PK\x03\x04"
_TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier, bytes 4..8 of every .tflite file
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
        y = tf.numpy_function(self._run, [x], tf.float32, stateful=False, name=f"{_safe_name(self.teacher_name)}_fn")
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
        layer_name = f"teacher_{_safe_name(self.name)}"
        if self._feature_model is None:
            return CallableTeacherLayer(self.name, self.spec, self._fn, self.dim, name=layer_name)
        return TeacherLayer(self.spec, self._feature_model, name=layer_name)


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
    own_ext = ext = os.path.splitext(path)[1].lower()
    if ext not in (".keras", ".h5", ".hdf5"):
        # A model file saved under another name (e.g. a content-addressed copy): go by its magic bytes.
        with open(path, "rb") as f:
            head = f.read(8)
        ext = ".keras" if head.startswith(_ZIP_SIGNATURE) else ".h5" if head == _HDF5_SIGNATURE else ext
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
        if ext == own_ext:
            model = keras.models.load_model(path, compile=False, safe_mode=not trusted)
        else:
            # keras.models.load_model picks the format by extension only: load through a named link.
            tmp = tempfile.mkdtemp(prefix="teacher_")
            try:
                link = os.path.join(tmp, "model" + ext)
                os.symlink(os.path.abspath(path), link)
                model = keras.models.load_model(link, compile=False, safe_mode=not trusted)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
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


def _onnx_input_layout(proto, spec, preferred, path):
    """'nchw' or 'nhwc': the layout the graph's declared input shape fits, `preferred` when both fit."""
    inputs = [i for i in proto.graph.input if i.name not in {init.name for init in proto.graph.initializer}]
    if len(inputs) != 1:
        raise TeacherLoadError(f"{path}: expected an ONNX graph with one image input, found {len(inputs)}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        return preferred  # the importer's input-shape check names the problem
    wants = {"nchw": (spec.channels, spec.size, spec.size), "nhwc": (spec.size, spec.size, spec.channels)}
    fits = [k for k, want in wants.items() if all(d is None or d == w for d, w in zip(dims[1:], want))]
    if not fits:
        raise TeacherLoadError(
            f"{path}: the ONNX input {inputs[0].name!r} has shape {['N' if d is None else d for d in dims]}, which fits "
            f"neither NCHW {wants['nchw']} nor NHWC {wants['nhwc']} for size={spec.size}, channels={spec.channels}; "
            "pass a matching spec"
        )
    return preferred if preferred in fits else fits[0]


def load_onnx_teacher(path, output_name: str | None = None, name: str | None = None, spec: InputSpec = InputSpec(), pool: str | None = None, input_layout: str | None = None) -> Teacher:
    """An ONNX file as a frozen teacher: the graph is rebuilt in Keras (NHWC) up to `output_name`
    (None = the graph's only output).

    A 4-D feature map comes out in ONNX's NCHW order; `pool` ("avg"/"max") averages it over space,
    None flattens it in NCHW order. `input_layout` is the ONNX graph's own input layout ("nchw" or
    "nhwc"): the declared input shape decides, `input_layout` (default "nchw") only when both fit.
    The Keras side is always NHWC, so `spec.layout` must be "nhwc".
    """
    what = "an ONNX model file"
    path = _require_file(path, what)
    if spec.layout != "nhwc":
        raise TeacherLoadError(f"{path}: the ONNX importer takes NHWC input; use InputSpec(layout='nhwc')")
    if input_layout not in (None, "nchw", "nhwc"):
        raise TeacherLoadError(f"{path}: input_layout must be 'nchw', 'nhwc' or None, got {input_layout!r}")
    if pool not in ("avg", "max", None):
        raise TeacherLoadError(f"{path}: pool must be 'avg', 'max' or None, got {pool!r}")
    try:
        proto = onnx.load(path)
    except Exception as e:  # protobuf DecodeError and friends, e.g. a truncated file
        raise TeacherLoadError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e}); expected {what}") from e
    if not proto.graph.node:
        raise TeacherLoadError(f"{path}: not an ONNX model (no graph nodes); expected {what}")
    if output_name is None:
        graph_outputs = [o.name for o in proto.graph.output]
        if len(graph_outputs) != 1:
            raise TeacherLoadError(
                f"{path}: the graph has outputs {graph_outputs}; name the feature tensor (output_name)"
            )
        output_name = graph_outputs[0]
    layout = _onnx_input_layout(proto, spec, input_layout or "nchw", path)
    try:
        model = onnx_import.build_keras_from_onnx(proto, outputs=[output_name], input_layout=layout)
    except onnx_import.OnnxImportError as e:
        # The importer was handed the parsed proto, so its messages say "<in-memory ONNX model>".
        raise TeacherLoadError(str(e).replace("<in-memory ONNX model>", path)) from e
    except Exception as e:  # a graph broken in ways the importer does not anticipate (e.g. cut short)
        raise TeacherLoadError(f"{path}: could not rebuild the ONNX graph ({type(e).__name__}: {e})") from e
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
                  "input_layout": layout, "pool": pool, "params": int(model.count_params())},
    )


def _tflite_output(interpreter, output_name, path):
    """The tensor detail of the feature: the only output, or a tensor named by its full name, a
    signature output key or one `;`-separated part of a fused TFLite tensor name."""
    outputs = interpreter.get_output_details()
    if output_name is None:
        if len(outputs) != 1:
            raise TeacherLoadError(
                f"{path}: the model has outputs {[o['name'] for o in outputs]}; name the feature tensor (output)"
            )
        return outputs[0]
    tensors = interpreter.get_tensor_details()
    found = [t for t in tensors if t["name"] == output_name]
    if not found:
        for signature in interpreter.get_signature_list():
            runner_outputs = interpreter.get_signature_runner(signature).get_output_details()
            if output_name in runner_outputs:
                index = runner_outputs[output_name]["index"]
                found = [t for t in tensors if t["index"] == index]
                break
    if not found:
        # The converter fuses ops and joins their names with ';' (e.g. "model/add_4/Add;model/bn/...").
        found = [t for t in tensors if output_name in t["name"].split(";")]
    if len(found) > 1:
        raise TeacherLoadError(
            f"{path}: {len(found)} tensors match {output_name!r}: {[t['name'] for t in found][:5]}; give a full tensor name"
        )
    if not found:
        names = [t["name"] for t in tensors if t["name"] and len(t["shape"]) >= 2]
        shown = ", ".join(names[:30]) + (f", ... ({len(names)} in all)" if len(names) > 30 else "")
        raise TeacherLoadError(f"{path}: no tensor named {output_name!r}; tensors: {shown}")
    return found[0]


def _pool_numpy(y, pool, layout):
    """numpy twin of `_pool` for a TFLite feature [n, ...] (same layout as the model's input)."""
    if y.ndim == 2:
        return y
    if pool is None:
        return y.reshape(len(y), -1)
    reduce = np.mean if pool == "avg" else np.max
    if y.ndim == 4:
        return reduce(y, axis=(2, 3) if layout == "nchw" else (1, 2))
    return reduce(y, axis=2 if layout == "nchw" else 1)


class _TfliteRunner:
    """Runs one interpreter on preprocessed float batches; quantises the input, dequantises the feature.

    Batches are run whole by resizing the input when the model allows it, else in slices of the
    file's own batch size (padded). Interpreters are not thread-safe and tf.numpy_function may call
    this from several threads, hence the lock.
    """

    def __init__(self, interpreter, in_detail, out_detail, pool, layout, path):
        self.interpreter, self.in_detail, self.out_detail = interpreter, in_detail, out_detail
        self.pool, self.layout, self.path = pool, layout, path
        self.file_shape = [int(d) for d in in_detail["shape"]]
        self.batch = self.file_shape[0]
        self.resizable = None  # unknown until a resize is tried
        self._lock = threading.Lock()

    def _resize(self, n):
        try:
            self.interpreter.resize_tensor_input(self.in_detail["index"], [n] + self.file_shape[1:], strict=False)
            self.interpreter.allocate_tensors()
        except Exception:
            # Leave the interpreter as the file made it, so image-by-image runs still work.
            self.interpreter.resize_tensor_input(self.in_detail["index"], self.file_shape, strict=False)
            self.interpreter.allocate_tensors()
            self.batch = self.file_shape[0]
            raise
        self.batch = n

    def _invoke(self, x):
        self.interpreter.set_tensor(self.in_detail["index"], _to_input(x, self.in_detail))
        self.interpreter.invoke()
        return _from_output(self.interpreter.get_tensor(self.out_detail["index"]), self.out_detail)

    def __call__(self, x):
        x = np.asarray(x, np.float32)
        n = len(x)
        with self._lock:
            if self.resizable is not False and n != self.batch:
                try:
                    self._resize(n)
                    self.resizable = True
                except Exception:  # a model that hard-codes its batch size (e.g. Reshape to [1, -1])
                    self.resizable = False
            if self.batch == n:
                y = self._invoke(x)
                if y.shape[:1] == (n,):
                    return _pool_numpy(y, self.pool, self.layout)
                self.resizable = False  # resized, but the feature did not follow the batch
            if self.batch != self.file_shape[0]:
                self._resize(self.file_shape[0])
            b = self.batch
            parts = []
            for start in range(0, n, b):
                chunk = x[start : start + b]
                pad = b - len(chunk)
                if pad:
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
                parts.append(self._invoke(chunk)[: b - pad])
            return _pool_numpy(np.concatenate(parts), self.pool, self.layout)


def load_tflite_teacher(path, output_name: str | None = None, name: str | None = None, spec: InputSpec = InputSpec(), pool: str | None = "avg", num_threads: int = 1) -> Teacher:
    """A `.tflite` file as a frozen numpy-callable teacher (float or int8/uint8-quantised).

    `output_name` picks an intermediate tensor (the interpreter then keeps all tensors); None = the
    model's only output. A spatial feature is pooled per `pool` ("avg", "max", None = flatten) over
    the axes of `spec.layout`.
    """
    what = "a TensorFlow Lite flatbuffer (.tflite)"
    path = _require_file(path, what)
    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] != _TFLITE_IDENTIFIER:
        raise TeacherLoadError(f"{path}: not a TFLite flatbuffer (no 'TFL3' identifier at bytes 4..8); expected {what}")
    if pool not in ("avg", "max", None):
        raise TeacherLoadError(f"{path}: pool must be 'avg', 'max' or None, got {pool!r}")

    def load(preserve):
        try:
            with warnings.catch_warnings():
                # Keeping all tensors is how an intermediate feature is read, not a debugging leftover.
                warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
                return load_interpreter(path, num_threads=num_threads, preserve_all_tensors=preserve)
        except Exception as e:  # the interpreter verifies the flatbuffer: truncated files end here
            raise TeacherLoadError(f"{path}: could not load the TFLite model ({type(e).__name__}: {e}); expected {what}") from e

    interpreter = load(False)
    out_detail = _tflite_output(interpreter, output_name, path)
    if out_detail["index"] not in {o["index"] for o in interpreter.get_output_details()}:
        # Intermediate tensors are overwritten during invoke() unless the interpreter preserves them.
        interpreter = load(True)
        out_detail = next(t for t in interpreter.get_tensor_details() if t["index"] == out_detail["index"])
    inputs = interpreter.get_input_details()
    if len(inputs) != 1:
        raise TeacherLoadError(f"{path}: expected a model with one image input, found {len(inputs)}")
    in_detail = inputs[0]
    have = tuple(int(d) for d in in_detail["shape_signature"])
    want = spec.input_shape()
    if len(have) != 4 or any(h != -1 and h != w for h, w in zip(have[1:], want)):
        shown = ", ".join("N" if d == -1 else str(d) for d in have)
        raise TeacherLoadError(
            f"{path}: the model takes inputs of shape ({shown}) but the InputSpec gives (N, {', '.join(map(str, want))}) "
            f"(size={spec.size}, channels={spec.channels}, layout={spec.layout}); pass a matching spec"
        )
    in_dtype = np.dtype(in_detail["dtype"])
    if in_dtype != np.float32 and not (np.issubdtype(in_dtype, np.integer) and in_detail["quantization"][0]):
        raise TeacherLoadError(
            f"{path}: input dtype {in_dtype.name} without quantisation parameters; expected float32 or quantised int8/uint8"
        )
    if have[0] == -1:
        # A dynamic batch is allocated as 1 until resized.
        in_detail = {**in_detail, "shape": np.array([1, *want], np.int32)}
    out_shape = tuple(int(d) for d in out_detail["shape"])
    if len(out_shape) < 2 or len(out_shape) > 4:
        raise TeacherLoadError(f"{path}: tensor {out_detail['name']!r} has shape {out_shape}; expected [N, D] or a [N, H, W, C] map")
    dim = _pool_numpy(np.zeros((1, *out_shape[1:]), np.float32), pool, spec.layout).shape[1]
    name = name or os.path.splitext(os.path.basename(path))[0]
    runner = _TfliteRunner(interpreter, in_detail, out_detail, pool, spec.layout, path)
    return Teacher(
        name, spec, dim, fn=runner,
        metadata={"source": "tflite", "path": os.path.abspath(path), "output_name": out_detail["name"],
                  "pool": pool, "input_dtype": in_dtype.name},
    )


def callable_teacher(fn, dim: int, name: str, spec: InputSpec = InputSpec()) -> Teacher:
    """Any numpy function `f(float32 [n, *spec.input_shape()]) -> [n, dim]` (input already preprocessed).

    Its Keras layer calls `fn` through tf.numpy_function (see `CallableTeacherLayer`): usable in
    the in-graph ensemble, but such a model cannot be saved or exported.
    """
    if not callable(fn):
        raise TypeError(f"callable_teacher {name!r}: fn must be callable, got {type(fn).__name__}")
    return Teacher(name, spec, dim, fn=fn, metadata={"source": "callable", "callable": getattr(fn, "__qualname__", repr(fn))})
