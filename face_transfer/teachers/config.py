"""The teachers' settings without their model code: zoo specs and presets, teacher-file references, input
specs and training settings. Imports no TensorFlow, so configs.py can read them anywhere.
"""
from __future__ import annotations

import dataclasses
import json
import re

from face_transfer.teachers.formats import format_names

# Teacher names become Keras layer names and embedding-cache keys.
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
TASK_RE = re.compile(r"^[A-Za-z0-9_-]+$")


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


@dataclasses.dataclass(frozen=True)
class TeacherRef:
    """A teacher model file and how to read it; `sha256`/`bytes` pin the file once `resolve_ref` has seen it."""

    name: str
    path: str  # .keras/.h5 file, SavedModel directory, .onnx or .tflite file (absolute once resolved)
    format: str = ""  # a registered format (teachers/formats); "" = detect_format(path)
    output: str | None = None  # feature layer (keras), output key (savedmodel), tensor name (onnx, tflite); None = the only output
    size: int = 64
    channels: int = 3
    color_order: str = "rgb"
    scale: float | tuple = 1 / 127.5
    offset: float | tuple = -1.0
    layout: str = "nhwc"  # the network's input layout (for ONNX the graph's declared input shape wins)
    pool: str | None = "avg"  # a spatial feature map -> vector: "avg", "max" or None (flatten)
    endpoint: str = "serving_default"  # SavedModel signature
    source_tasks: tuple[str, ...] = ()  # what the model was trained on, e.g. ("expression",): source tasks
    trusted: bool = False  # keras safe_mode off (lambda layers run arbitrary code)
    sha256: str = ""  # filled by resolve_ref; a resumed run refuses a changed file
    bytes: int = 0

    def __post_init__(self):
        if not isinstance(self.name, str) or not NAME_RE.match(self.name):
            raise ValueError(f"TeacherRef.name must be a letter then letters, digits, '_' or '-', got {self.name!r}")
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"TeacherRef {self.name!r}: path must be a non-empty string, got {self.path!r}")
        # checked only when given: listing the formats imports their loaders (and with them TensorFlow)
        if self.format and self.format not in format_names():
            raise ValueError(f"TeacherRef {self.name!r}: format must be one of {format_names()} or '' (detect), "
                             f"got {self.format!r}")
        if self.pool not in ("avg", "max", None):
            raise ValueError(f"TeacherRef {self.name!r}: pool must be 'avg', 'max' or None, got {self.pool!r}")
        tasks = (self.source_tasks,) if isinstance(self.source_tasks, str) else tuple(self.source_tasks)
        bad = [t for t in tasks if not isinstance(t, str) or not TASK_RE.match(t)]
        if bad:
            raise ValueError(f"TeacherRef {self.name!r}: source task names must be letters, digits, '_' or '-', got {bad}")
        object.__setattr__(self, "source_tasks", tasks)
        for field in ("scale", "offset"):
            if isinstance(getattr(self, field), list):
                object.__setattr__(self, field, tuple(getattr(self, field)))
        self.input_spec()  # validates size, channels, colour, layout and per-channel scale/offset

    def input_spec(self) -> InputSpec:
        return InputSpec(size=self.size, channels=self.channels, color_order=self.color_order,
                         scale=self.scale, offset=self.offset, layout=self.layout)

    def to_dict(self) -> dict:
        """JSON-ready fields (the inverse of `teacher_ref_from_dict`)."""
        out = dataclasses.asdict(self)
        for key in ("scale", "offset", "source_tasks"):
            if isinstance(out[key], tuple):
                out[key] = list(out[key])
        return out


@dataclasses.dataclass(frozen=True)
class TeacherTrainConfig:
    steps: int = 600
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    checkpoint_every: int = 100
    cosface_scale: float = 30.0
    cosface_margin: float = 0.2
    eval_images: int = 1000
    domain: str = "photo"  # teachers see photos only; other domains are novel for them
    verbose: int = 1
    # Trained zoo teachers to use instead of training them: a directory written by `package_pretrained`
    # (manifest.json + <name>/model.keras), or "package" for the ones that ship with face-transfer
    # (face_transfer/assets/zoo, built by `make zoo`). "" trains every teacher from nothing.
    pretrained: str = ""
    # Trained zoo teachers (a `package_pretrained` directory, or "package") to continue training from: their
    # weights start the run, with a fresh optimizer and learning-rate cycle of `steps` more steps on faces they
    # have not seen (a warm restart, as one fine-tunes an existing model). "" starts from random weights.
    warm_start: str = ""

    def __post_init__(self):
        if self.pretrained and self.warm_start:
            raise ValueError(f"TeacherTrainConfig: pretrained={self.pretrained!r} uses the teachers as they are and "
                             f"warm_start={self.warm_start!r} trains them further; give one of the two")


AGE_HEADS = ("regression", "dldl")


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    """One zoo teacher: architecture, size, the source task it learns, and its own input spec."""

    name: str
    arch: str
    source_task: str
    widths: tuple[int, ...] = (16, 32, 64)
    depth: int = 1  # blocks (or convs) per stage
    embedding_dim: int = 64
    fc_units: int = 0  # VGG-style fully connected layer before the embedding (0 = global pooling)
    input_size: int = 64
    channels: int = 3
    color_order: str = "rgb"
    # age_gender teachers: "regression" (Huber on the z-scored age) or "dldl" (softmax over one-year bins, trained
    # towards a Gaussian label distribution, read as its expectation: how real age models are trained, DEX and DLDL)
    age_head: str = "regression"

    def __post_init__(self):
        if self.age_head not in AGE_HEADS:
            raise ValueError(f"TeacherSpec {self.name!r}: age_head must be one of {AGE_HEADS}, got {self.age_head!r}")

    @property
    def input_spec(self) -> InputSpec:
        # Teachers differ in input like real models do: size, gray vs colour, [0,1] vs [-1,1].
        if self.arch == "vgg":
            return InputSpec(size=self.input_size, channels=self.channels, color_order=self.color_order,
                             scale=1 / 255.0, offset=0.0)
        return InputSpec(size=self.input_size, channels=self.channels, color_order=self.color_order,
                         scale=1 / 127.5, offset=-1.0)


# Presets: a plain dict of the zoo for each pipeline preset. Architectures and input specs differ
# on purpose, like independently trained real models.
ZOO_PRESETS: dict[str, tuple[TeacherSpec, ...]] = {
    "smoke": (
        TeacherSpec("recognition_resnet", "resnet", "recognition", (8, 16), 1, 32),
        TeacherSpec("expression_vgg", "vgg", "expression", (8, 16), 1, 32, input_size=48, channels=1),
        TeacherSpec("pose_xception", "xception", "pose", (8, 16), 1, 32, input_size=56),
        TeacherSpec("agegender_resnet", "resnet", "age_gender", (8, 16), 1, 32, input_size=48,
                    color_order="bgr"),
    ),
    "demo": (
        TeacherSpec("recognition_resnet", "resnet", "recognition", (24, 48, 96), 1, 128),
        TeacherSpec("expression_vgg", "vgg", "expression", (16, 32, 64), 1, 64, fc_units=256,
                    input_size=48, channels=1),
        TeacherSpec("pose_xception", "xception", "pose", (16, 32, 64), 1, 64, input_size=56),
        TeacherSpec("agegender_resnet", "resnet", "age_gender", (16, 32, 64), 1, 64, input_size=48,
                    color_order="bgr"),
    ),
    # Teachers + encoder >= 75x the default student's parameters, as in the paper. Like VGG-Face,
    # most parameters sit in wide fully connected layers, so the FLOP ratio is much smaller (reported).
    "paper": (
        TeacherSpec("recognition_resnet", "resnet", "recognition", (32, 64, 128), 2, 256),
        TeacherSpec("expression_vgg", "vgg", "expression", (32, 64, 128), 1, 128, fc_units=2048,
                    input_size=48, channels=1),
        TeacherSpec("pose_xception", "xception", "pose", (32, 64, 128), 2, 128, input_size=56),
        # The age head as real age models have it (DEX/DLDL): warm-started from the regression head, 1,000 steps
        # of each made the embedding hold 38.7 of age against 36.7 (BENCHMARKS.md, "An age teacher trained as
        # age models are").
        TeacherSpec("agegender_vgg", "vgg", "age_gender", (32, 64, 128), 1, 128, fc_units=2048,
                    color_order="bgr", age_head="dldl"),
    ),
}
