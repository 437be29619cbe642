"""The teacher zoo: source-task teachers of different architectures, trained on SynthFaces.

Each teacher is a Keras 3 model over its own preprocessed input (see `InputSpec`), with a named
`embedding` layer (the feature the fusion uses) and one source-task head.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from face_transfer.teachers.config import TeacherSpec

ARCHS = ("resnet", "vgg", "xception")
# Source task -> label keys of synth.render_faces it needs.
SOURCE_TASKS = {
    "recognition": ("identity",),
    "expression": ("expression",),
    "pose": ("yaw", "pitch", "roll"),
    "age_gender": ("age", "gender"),
}
POSE_SCALE = 30.0  # degrees; regression targets are divided by it
AGE_MEAN, AGE_STD = 45.0, 15.0  # the regression head's target is (age - AGE_MEAN) / AGE_STD
# The "dldl" age head: DEX's 101 one-year bins (0-100), trained towards a Gaussian over them (DLDL, Gao et al. 2017)
# and read as the expectation. In a warm-started screen it made the embedding hold more of age linearly than the
# regression head did at the same steps (BENCHMARKS.md, "An age teacher trained as age models are").
AGE_BINS = np.arange(101, dtype="float32")
AGE_SIGMA = 3.0  # years


def _cbr(x, filters, kernel=3, strides=1, name=""):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _resnet(x, spec):
    x = _cbr(x, spec.widths[0], 3, 2, "stem")
    for s, w in enumerate(spec.widths):
        for b in range(spec.depth):
            stride = 2 if (b == 0 and s > 0) else 1
            n = f"s{s}b{b}"
            y = _cbr(x, w, 3, stride, f"{n}_a")
            y = layers.Conv2D(w, 3, padding="same", use_bias=False, name=f"{n}_b_conv")(y)
            y = layers.BatchNormalization(name=f"{n}_b_bn")(y)
            if stride != 1 or x.shape[-1] != w:
                x = layers.Conv2D(w, 1, strides=stride, use_bias=False, name=f"{n}_proj")(x)
                x = layers.BatchNormalization(name=f"{n}_proj_bn")(x)
            x = layers.ReLU(name=f"{n}_out")(layers.Add(name=f"{n}_add")([x, y]))
    return layers.GlobalAveragePooling2D(name="gap")(x)


def _vgg(x, spec):
    for s, w in enumerate(spec.widths):
        for c in range(spec.depth):
            x = _cbr(x, w, 3, 1, f"s{s}c{c}")
        x = layers.MaxPooling2D(2, name=f"s{s}_pool")(x)
    if spec.fc_units:
        # VGG-Face style: flatten + a wide fully connected layer (most of the parameters live here).
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dropout(0.3, name="fc_drop")(x)
        # BN before the ReLU: without it the first large updates killed every fc unit (measured).
        x = layers.Dense(spec.fc_units, use_bias=False, name="fc")(x)
        x = layers.BatchNormalization(name="fc_bn")(x)
        return layers.ReLU(name="fc_relu")(x)
    return layers.GlobalAveragePooling2D(name="gap")(x)


def _xception(x, spec):
    x = _cbr(x, spec.widths[0], 3, 2, "stem")
    for s, w in enumerate(spec.widths):
        for b in range(spec.depth):
            stride = 2 if (b == 0 and s > 0) else 1
            n = f"x{s}b{b}"
            y = layers.SeparableConv2D(w, 3, padding="same", use_bias=False, name=f"{n}_sep1")(x)
            y = layers.BatchNormalization(name=f"{n}_bn1")(y)
            y = layers.ReLU(name=f"{n}_relu1")(y)
            y = layers.SeparableConv2D(w, 3, padding="same", use_bias=False, name=f"{n}_sep2")(y)
            y = layers.BatchNormalization(name=f"{n}_bn2")(y)
            if stride != 1:
                y = layers.MaxPooling2D(3, strides=2, padding="same", name=f"{n}_pool")(y)
            if stride != 1 or x.shape[-1] != w:
                x = layers.Conv2D(w, 1, strides=stride, use_bias=False, name=f"{n}_proj")(x)
                x = layers.BatchNormalization(name=f"{n}_proj_bn")(x)
            x = layers.ReLU(name=f"{n}_out")(layers.Add(name=f"{n}_add")([x, y]))
    return layers.GlobalAveragePooling2D(name="gap")(x)


_BACKBONES = {"resnet": _resnet, "vgg": _vgg, "xception": _xception}


@keras.saving.register_keras_serializable(package="face_transfer")
class CosineLogits(layers.Layer):
    """Cosine similarity between L2-normalised embeddings and class weights (CosFace head)."""

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes

    def build(self, input_shape):
        self.w = self.add_weight(name="w", shape=(input_shape[-1], self.num_classes),
                                 initializer="glorot_normal")

    def call(self, x):
        x = x / (ops.norm(x, axis=-1, keepdims=True) + 1e-6)
        w = self.w / (ops.norm(self.w, axis=0, keepdims=True) + 1e-6)
        return ops.matmul(x, w)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


def cosface_loss(labels, cos_logits, scale: float = 30.0, margin: float = 0.2):
    """Large-margin cosine loss (CosFace): subtract `margin` from the target cosine, then softmax."""
    num_classes = ops.shape(cos_logits)[-1]
    onehot = ops.one_hot(ops.cast(ops.reshape(labels, (-1,)), "int32"), num_classes)
    logits = scale * (cos_logits - margin * onehot)
    return keras.losses.categorical_crossentropy(onehot, logits, from_logits=True)


def build_teacher(spec: TeacherSpec, num_identities: int = 1000) -> keras.Model:
    """The teacher's training model: preprocessed input -> {head outputs}; layer `embedding` inside."""
    if spec.arch not in _BACKBONES:
        raise ValueError(f"teacher {spec.name}: unknown arch {spec.arch!r}; expected one of {ARCHS}")
    if spec.source_task not in SOURCE_TASKS:
        raise ValueError(f"teacher {spec.name}: unknown source task {spec.source_task!r}; "
                         f"expected one of {sorted(SOURCE_TASKS)}")
    inp = keras.Input((spec.input_size, spec.input_size, spec.channels), name="image")
    h = _BACKBONES[spec.arch](inp, spec)
    emb = layers.Dense(spec.embedding_dim, name="embedding")(h)
    if spec.source_task == "recognition":
        # ArcFace/CosFace style: BN'd embedding, cosine logits; the margin lives in the loss.
        outs = {"identity": CosineLogits(num_identities, name="identity")(
            layers.BatchNormalization(name="emb_bn")(emb))}
    else:
        # Heads read the linear embedding directly: a ReLU here let whole embeddings die early in
        # training (the loss sat at ln(7) for the expression teacher), and the feature the fusion
        # uses should be the same tensor the head was trained on.
        z = emb
        if spec.source_task == "expression":
            outs = {"expression": layers.Dense(7, name="expression")(z)}
        elif spec.source_task == "pose":
            outs = {"pose": layers.Dense(3, name="pose")(z)}
        else:
            age_units = len(AGE_BINS) if spec.age_head == "dldl" else 1
            outs = {"age": layers.Dense(age_units, name="age")(z), "gender": layers.Dense(1, name="gender")(z)}
    return keras.Model(inp, outs, name=spec.name)


def copy_matching_weights(source: keras.Model, target: keras.Model) -> list[str]:
    """Copy into `target` the weights of every layer `source` has under the same name with the same shapes (the
    network a warm start keeps); the names of `target`'s layers with weights left as initialised (its new heads)."""
    new = []
    for layer in target.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        try:
            old = source.get_layer(layer.name).get_weights()
        except ValueError:
            old = None
        if old is not None and [w.shape for w in old] == [w.shape for w in weights]:
            layer.set_weights(old)
        else:
            new.append(layer.name)
    return new


def embedding_model(model: keras.Model, freeze: bool = True) -> keras.Model:
    """The teacher's feature extractor: same input -> the `embedding` layer's output. Frozen by default, which
    freezes the layers it shares with `model` too: pass freeze=False for a model that may still train or be saved."""
    sub = keras.Model(model.input, model.get_layer("embedding").output, name=f"{model.name}_embedding")
    if freeze:
        sub.trainable = False
    return sub


def targets_from_labels(spec: TeacherSpec, labels: dict) -> dict:
    """Training targets of a source task from synth labels (works on numpy or tensors)."""
    t = spec.source_task
    if t == "recognition":
        return {"identity": labels["identity"]}
    if t == "expression":
        return {"expression": labels["expression"]}
    if t == "pose":
        return {"pose": ops.stack([labels["yaw"], labels["pitch"], labels["roll"]], axis=-1) / POSE_SCALE}
    age = ops.cast(labels["age"], "float32")
    if spec.age_head == "dldl":
        dist = ops.exp(-0.5 * ops.square((ops.expand_dims(age, -1) - AGE_BINS) / AGE_SIGMA))
        age = dist / ops.sum(dist, axis=-1, keepdims=True)
    else:
        age = ops.expand_dims((age - AGE_MEAN) / AGE_STD, -1)
    return {"age": age, "gender": ops.expand_dims(ops.cast(labels["gender"], "float32"), -1)}


@keras.saving.register_keras_serializable(package="face_transfer")
class CosFaceLoss(keras.losses.Loss):
    """`cosface_loss` as a serialisable Keras loss (checkpoints reload with their optimizer)."""

    def __init__(self, scale=30.0, margin=0.2, name="cosface", **kwargs):
        super().__init__(name=name, **kwargs)
        self.scale, self.margin = scale, margin

    def call(self, y_true, y_pred):
        return cosface_loss(y_true, y_pred, self.scale, self.margin)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "margin": self.margin}


def losses_for(spec: TeacherSpec, cosface_scale=30.0, cosface_margin=0.2):
    t = spec.source_task
    if t == "recognition":
        return {"identity": CosFaceLoss(cosface_scale, cosface_margin)}
    if t == "expression":
        return {"expression": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}
    if t == "pose":
        return {"pose": keras.losses.Huber(delta=1.0)}
    age = (keras.losses.CategoricalCrossentropy(from_logits=True) if spec.age_head == "dldl"
           else keras.losses.Huber(delta=1.0))
    return {"age": age, "gender": keras.losses.BinaryCrossentropy(from_logits=True)}


def source_metrics(spec: TeacherSpec, outputs: dict, labels: dict) -> dict:
    """Source-task scores on held-out images: accuracy (%) or MAE in the task's units."""
    t = spec.source_task
    if t == "recognition":
        pred = np.argmax(np.asarray(outputs["identity"]), -1)
        return {"identity_accuracy": float(100 * np.mean(pred == labels["identity"]))}
    if t == "expression":
        pred = np.argmax(np.asarray(outputs["expression"]), -1)
        return {"expression_accuracy": float(100 * np.mean(pred == labels["expression"]))}
    if t == "pose":
        p = np.asarray(outputs["pose"]) * POSE_SCALE
        true = np.stack([labels["yaw"], labels["pitch"], labels["roll"]], -1)
        mae = np.mean(np.abs(p - true), 0)
        return {"yaw_mae_deg": float(mae[0]), "pitch_mae_deg": float(mae[1]), "roll_mae_deg": float(mae[2])}
    age = predicted_age(spec, outputs["age"])
    gender = (np.asarray(outputs["gender"])[:, 0] > 0).astype(np.int64)
    return {"age_mae_years": float(np.mean(np.abs(age - labels["age"]))),
            "gender_accuracy": float(100 * np.mean(gender == labels["gender"]))}


def predicted_age(spec: TeacherSpec, age_output) -> np.ndarray:
    """Years from the age head's output: the expectation over the bins (dldl) or the de-standardised value."""
    out = np.asarray(age_output, dtype=np.float64)
    if spec.age_head == "dldl":
        p = np.exp(out - out.max(axis=-1, keepdims=True))
        return (p / p.sum(axis=-1, keepdims=True)) @ AGE_BINS
    return out[:, 0] * AGE_STD + AGE_MEAN


def main_score(metrics: dict) -> float:
    """One 0-100-ish headline per teacher for tables (accuracy, or the negated MAE)."""
    for k in ("identity_accuracy", "expression_accuracy", "gender_accuracy"):
        if k in metrics:
            return metrics[k]
    return -float(np.mean([v for k, v in metrics.items() if k.endswith("_mae_deg")]))

