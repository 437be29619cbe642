"""The distilled student: a small inverted-residual CNN mapping a face image to the fused code.

Owns one builder (of a student/config.py StudentConfig) for Keras 3 and the tf_keras twin (QAT), weight
transfer, cost counts.
"""
import math

import keras

from face_transfer.student.config import ARCH_HEAD, ARCH_STEM, FEATURE_VIEWS, StudentConfig

BACKENDS = ("keras", "tf_keras")
_BN_EPSILON = 1e-3
_BN_MOMENTUM = 0.99


def _divisible(value, divisor=8):
    """MobileNet channel rounding: multiple of 8, never more than 10% below the request."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _backend_module(backend):
    if backend == "keras":
        return keras
    if backend == "tf_keras":
        import tf_keras  # only when asked: it is heavy and the Keras 3 path does not need it

        return tf_keras
    raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")


class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras 3's BatchNormalization, with its training-mode call on 4-D channels-last float32 inputs run as
    TensorFlow's single FusedBatchNormV3 kernel instead of Keras 3's moments-and-normalise graph of small ops.
    On CPU that makes a student training step about 2x faster (BENCHMARKS.md, "Fused batch normalisation").
    Same weights, same moving-average update (biased batch variance, as the parent), same inference (the
    parent's call). Only for training: `build_student(train_fast=True)`; `student_from_weights` copies the
    weights back into stock layers, which is what is saved, exported and probed.
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and mask is None and len(inputs.shape) == 4 and self.axis in (-1, 3)
                and self.center and self.scale and not self.renorm and inputs.dtype == "float32"):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf
        y, mean, var, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=self.gamma, offset=self.beta, mean=tf.zeros_like(self.gamma),
            variance=tf.zeros_like(self.gamma), epsilon=self.epsilon, exponential_avg_factor=1.0,
            data_format="NHWC", is_training=True)
        # The kernel returns the Bessel-corrected variance for the running estimate; Keras 3 averages the biased one.
        n = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), var.dtype)
        var = var * (n - 1.0) / tf.maximum(n, 1.0)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + var * (1.0 - self.momentum))
        return y


def _bn(K, name, fused=False):
    klass = FusedBatchNormalization if fused else K.layers.BatchNormalization
    return klass(epsilon=_BN_EPSILON, momentum=_BN_MOMENTUM, name=name)


def _conv_bn_relu(K, x, filters, kernel, stride, name, relu6, activation=True, fused=False):
    x = K.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=name)(x)
    x = _bn(K, f"{name}_bn", fused)(x)
    if activation:
        x = K.layers.ReLU(max_value=6.0 if relu6 else None, name=f"{name}_relu")(x)
    return x


def _build(K, cfg, name, fused=False):
    """One graph for both backends: K is the `keras` or `tf_keras` module (fused: FusedBatchNormalization)."""
    relu6 = cfg.arch == "mobilenet_v2"
    size = cfg.input_size
    inputs = K.Input(shape=(size, size, 3), name="image")
    # Rescaling(1/127.5, offset=-1) written as a frozen 1x1 depthwise conv: tfmot's quantize_model
    # rejects Rescaling, while this is a quantizable builtin with exactly the same arithmetic.
    x = K.layers.DepthwiseConv2D(
        1,
        use_bias=True,
        depthwise_initializer=K.initializers.Constant(1.0 / 127.5),
        bias_initializer=K.initializers.Constant(-1.0),
        trainable=False,
        name="preprocess",
    )(inputs)
    stem = cfg.stem_channels or ARCH_STEM[cfg.arch][0]
    x = _conv_bn_relu(K, x, _divisible(stem * cfg.width), 3, ARCH_STEM[cfg.arch][1], "stem_conv", relu6, fused=fused)
    channels = _divisible(stem * cfg.width)
    index = 0
    for row in cfg.block_rows():
        expansion, out, repeats, stride = row[:4]
        kernel = row[4] if len(row) == 5 else 3
        out = _divisible(out * cfg.width)
        for r in range(repeats):
            prefix = f"block{index}"
            block_in = x
            hidden = _divisible(channels * expansion)
            if expansion != 1:
                x = _conv_bn_relu(K, x, hidden, 1, 1, f"{prefix}_expand", relu6, fused=fused)
            else:
                hidden = channels
            x = K.layers.DepthwiseConv2D(
                kernel, strides=stride if r == 0 else 1, padding="same", use_bias=False, name=f"{prefix}_dw"
            )(x)
            x = _bn(K, f"{prefix}_dw_bn", fused)(x)
            x = K.layers.ReLU(max_value=6.0 if relu6 else None, name=f"{prefix}_dw_relu")(x)
            # Linear bottleneck: no activation after the projection (MobileNetV2).
            x = _conv_bn_relu(K, x, out, 1, 1, f"{prefix}_project", relu6, activation=False, fused=fused)
            if (stride if r == 0 else 1) == 1 and channels == out:
                x = K.layers.Add(name=f"{prefix}_add")([block_in, x])
            channels = out
            index += 1
    head = ARCH_HEAD[cfg.arch] if cfg.head_channels is None else cfg.head_channels
    if head:
        x = _conv_bn_relu(K, x, _divisible(head * max(1.0, cfg.width)), 1, 1, "head_conv", relu6, fused=fused)
    x = K.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = K.layers.Dense(cfg.embedding_dim, name="embedding")(x)
    return K.Model(inputs, outputs, name=name)


def build_student(cfg: StudentConfig, backend: str = "keras", name: str = "student", train_fast: bool = False):
    """Student model: float or uint8 images [N,S,S,3] in 0..255 -> code [N, embedding_dim] (linear).

    backend "keras" gives a Keras 3 model, "tf_keras" the twin for tensorflow-model-optimization;
    both have the same layer names and weight shapes in the same order. train_fast (Keras 3 only): batch
    normalisation trains through FusedBatchNormalization; turn the trained model back into stock layers with
    `student_from_weights(model, "keras", cfg)` before saving it.
    """
    if not isinstance(cfg, StudentConfig):
        raise TypeError(f"build_student(cfg=...): expected a StudentConfig, got {type(cfg).__name__}")
    if train_fast and backend != "keras":
        raise ValueError(f"build_student(train_fast=True) is for the Keras 3 backend; got backend={backend!r}")
    return _build(_backend_module(backend), cfg, name, fused=train_fast)


def infer_config(model) -> StudentConfig:
    """The StudentConfig (width 1.0, explicit blocks) that rebuilds `model`'s exact graph and shapes."""
    names = {layer.name: layer for layer in model.layers}
    for required in ("preprocess", "stem_conv", "stem_conv_relu", "embedding"):
        if required not in names:
            raise ValueError(
                f"infer_config: model {model.name!r} has no layer {required!r}; expected a build_student model"
            )
    arch = "mobilenet_v2" if names["stem_conv_relu"].max_value is not None else "mobilenet_v3_small"
    stem = names["stem_conv"].filters
    channels, rows, index = stem, [], 0
    while f"block{index}_dw" in names:
        dw = names[f"block{index}_dw"]
        out = names[f"block{index}_project"].filters
        expand = names.get(f"block{index}_expand")
        if expand is None:
            expansion = 1
        else:
            # An expand layer whose width equals its input still has to be rebuilt: nudge above 1.
            expansion = expand.filters / channels if expand.filters != channels else 1.0 + 1e-6
        rows.append((expansion, out, 1, dw.strides[0], dw.kernel_size[0]))
        channels, index = out, index + 1
    head = names["head_conv"].filters if "head_conv" in names else 0
    return StudentConfig(
        input_size=int(model.inputs[0].shape[1]),
        width=1.0,
        embedding_dim=int(names["embedding"].units),
        arch=arch,
        blocks=tuple(rows),
        stem_channels=stem,
        head_channels=head,
    )


def student_from_weights(model, backend: str = "tf_keras", cfg: StudentConfig | None = None, name: str | None = None):
    """Rebuild a build_student `model` on `backend` and copy every weight by layer name.

    Without `cfg` the architecture is read back from the model's layers (infer_config).
    """
    cfg = cfg if cfg is not None else infer_config(model)
    twin = build_student(cfg, backend=backend, name=name or model.name)
    source = {layer.name: layer for layer in model.layers}
    for layer in twin.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if layer.name not in source:
            raise ValueError(
                f"student_from_weights: layer {layer.name!r} of the {backend} twin is missing from the source "
                f"model {model.name!r}; was it built by build_student with the same StudentConfig?"
            )
        values = source[layer.name].get_weights()
        if [w.shape for w in values] != [w.shape for w in weights]:
            raise ValueError(
                f"student_from_weights: layer {layer.name!r} has weight shapes {[w.shape for w in values]} in "
                f"the source but {[w.shape for w in weights]} for the given StudentConfig"
            )
        layer.set_weights(values)
    return twin


def count_params(model) -> int:
    """All weights, trainable or not (BN moving statistics and the frozen preprocessing included)."""
    return int(sum(math.prod(w.shape) for w in model.weights))


def count_flops(model_or_cfg) -> int:
    """Multiply-adds of one forward pass on one image (conv, depthwise, dense; BN folds into convs)."""
    model = build_student(model_or_cfg) if isinstance(model_or_cfg, StudentConfig) else model_or_cfg
    total = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in ("Conv2D", "DepthwiseConv2D", "Dense"):
            continue
        kernel_shape = tuple(layer.get_weights()[0].shape)
        out_shape = tuple(layer.output.shape)
        if kind == "Dense":
            # Dense on [N, C]: one MAC per kernel entry.
            total += math.prod(kernel_shape) * math.prod(out_shape[1:-1] or (1,))
        else:
            # Conv2D kernel (kh, kw, cin, cout); depthwise (kh, kw, cin, multiplier): per output pixel.
            total += out_shape[1] * out_shape[2] * math.prod(kernel_shape)
    return int(total)


def stage_outputs(model) -> list[str]:
    """Layer names ending each resolution stage of a build_student model (the block before every stride-2
    block, and the last block), shallow to deep."""
    names = {layer.name for layer in model.layers}
    blocks = []
    while f"block{len(blocks)}_dw" in names:
        i = len(blocks)
        blocks.append((f"block{i}_add" if f"block{i}_add" in names else f"block{i}_project_bn",
                       model.get_layer(f"block{i}_dw").strides[0]))
    if not blocks:
        raise ValueError(f"stage_outputs: model {model.name!r} has no block0_dw; expected a build_student model")
    return [blocks[k][0] for k in range(len(blocks)) if k + 1 == len(blocks) or blocks[k + 1][1] == 2]


def feature_model(model, view: str = "embedding", backend: str = "keras"):
    """What is probed and deployed of a student: image -> {"features": [N, F], "embedding": [N, D]}.

    view "embedding": the distilled code itself (F = D, the paper's student representation).
    view "ladder": the code next to the global-average-pooled output of every resolution stage and of the
    head (UNIC's ladder of multi-level features): the lower stages keep what the code compresses away
    (illumination, local texture, occluders), at no extra inference cost beyond a few poolings.
    backend "tf_keras" builds the same view on the tf_keras twin (`student_from_weights`), before tfmot wraps it:
    the QAT int8 file has both outputs too (deploy/qat.py).
    """
    if view not in FEATURE_VIEWS:
        raise ValueError(f"feature_model: view={view!r}; expected one of {FEATURE_VIEWS}")
    K = _backend_module(backend)
    code = model.outputs[0]
    if view == "embedding":
        return K.Model(model.inputs, {"features": code, "embedding": code}, name=f"{model.name}_features")
    pooled = [K.layers.GlobalAveragePooling2D(name=f"ladder_pool{i}")(model.get_layer(n).output)
              for i, n in enumerate(stage_outputs(model))]
    pooled.append(model.get_layer("pool").output)
    feats = K.layers.Concatenate(name="ladder")(pooled + [code])
    return K.Model(model.inputs, {"features": feats, "embedding": code}, name=f"{model.name}_ladder")
