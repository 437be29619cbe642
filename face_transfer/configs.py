"""The experiment configuration: frozen dataclasses per stage, presets, and a JSON round trip.

Each library function takes only its own slice (e.g. `distill_student(cfg.student, cfg.distill, ...)`).
"""
from __future__ import annotations

import dataclasses
import json

from face_transfer.data.config import FacesConfig
from face_transfer.data.synth import SynthConfig
from face_transfer.data.tasksets import TaskSetConfig
from face_transfer.evaluation.probes import ProbeConfig
from face_transfer.fusion.config import FusionConfig
from face_transfer.student.config import DistillConfig, StudentConfig
from face_transfer.teachers.config import ZOO_PRESETS, TeacherRef, TeacherSpec, TeacherTrainConfig


class ConfigError(ValueError):
    """A configuration file that cannot be read as an ExperimentConfig; the message names the file and fields."""


# Fields added after runs were written: an older config.json without them reads with their default.
# FusionConfig fields whose default changed after run directories existed: a config.json written without them
# describes a fusion trained with these values (a resumed run keeps meaning what it meant).
_LEGACY_FUSION = {"relational_weight": 0.0, "pca_init": False}  # a run dir written before each field
_OPTIONAL_FIELDS = {"teacher_files", "ceiling", "student_view", "ceiling_budget", "ceiling_batch_size",
                    "student_workers"}


def _field_names(klass) -> set:
    return {f.name for f in dataclasses.fields(klass)}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    synth: SynthConfig = SynthConfig()
    eval_set_size: int = 2000  # images per pre-rendered eval set (5 sets)
    cache_size: int = 20000  # unlabelled faces embedded by the teachers to train the fusion
    cache_shard_size: int = 2048  # the unit of resumption, and of the split across workers
    cache_domain: str = "photo"
    # The user's unlabelled faces (folders, globs, TFRecords): cache, fusion, distillation, calibration.
    # No sources = SynthFaces only; real_fraction < 1 mixes them with SynthFaces.
    faces: FacesConfig = FacesConfig()
    # The user's labelled datasets: every labelled column becomes a transfer task.
    task_sets: tuple[TaskSetConfig, ...] = ()
    synth_tasks: bool = True  # the SynthFaces task suite (5 rendered eval sets) next to the user's tasks


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    calibration_images: int = 200
    parity_images: int = 256
    min_cosine_int8: float = 0.95
    min_cosine_analyzer: float = 0.9  # every head output of the int8 analyser vs the float one
    qat_steps: int = 100  # 0: no quantisation-aware int8 file (post-training int8 only)
    qat_learning_rate: float = 1e-4
    latency_runs: int = 30
    tflite_modes: tuple[str, ...] = ("float32", "float16", "dynamic", "int8_ptq")  # int8_ptq and float32 required


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    preset: str = "demo"
    seed: int = 0
    data: DataConfig = DataConfig()
    teachers: tuple[TeacherSpec, ...] = ZOO_PRESETS["demo"]
    # Existing pretrained teachers (face_transfer.teachers.real.REAL_TEACHERS), frozen, next to the zoo.
    real_teachers: tuple[str, ...] = ()
    # The user's own model files (.keras/.h5, SavedModel dirs, .onnx, .tflite), with their hash.
    teacher_files: tuple[TeacherRef, ...] = ()
    teacher_train: TeacherTrainConfig = TeacherTrainConfig()
    fusion: FusionConfig = FusionConfig()
    compression_dims: tuple[int, ...] = (16, 32, 64, 128, 256)
    student: StudentConfig = StudentConfig()
    distill: DistillConfig = DistillConfig()
    loss_comparison: tuple[str, ...] = ()  # extra distillation losses trained and evaluated side by side
    supervised_control: bool = True
    # The per-task ceiling: the student's architecture trained on the labels of every SynthFaces task
    # (source and novel, every domain) with the student's data budget; scores are also reported as % of it.
    ceiling: bool = False
    # The ceiling's training steps as a multiple of the student's (>= 1: at least the student's data budget).
    # Its ~20 heads share one network, so at 1x it under-trains: a lower bound that the student beats.
    ceiling_budget: float = 1.0
    # The ceiling's batch; 0: the student's. Its budget stays in faces (ceiling_budget x the student's steps x
    # batch), so a larger batch means fewer, cheaper-per-face steps (the demo's time budget).
    ceiling_batch_size: int = 0
    # Processes that train the student stage's networks (student, loss variants, control, ceiling) side by side
    # under the default strategy, the cores shared out between them: 0 = one per usable core, 1 = one after the
    # other in the main process. Speed only: each network's training is the same.
    student_workers: int = 0
    # What of every student-architecture network (student, controls, ceiling, random student) is probed and
    # carries the analyser's heads: "embedding" (the distilled code, the paper's) or "ladder" (the code plus
    # the pooled output of every resolution stage; student.model.feature_model).
    student_view: str = "embedding"
    probe: ProbeConfig = ProbeConfig()
    export: ExportConfig = ExportConfig()
    strategy: str = "default"

    def __post_init__(self):
        from face_transfer.student.config import FEATURE_VIEWS
        if self.student_view not in FEATURE_VIEWS:
            raise ValueError(f"ExperimentConfig.student_view={self.student_view!r}; expected one of {FEATURE_VIEWS}")
        if not (isinstance(self.student_workers, int) and self.student_workers >= 0):
            raise ValueError(f"ExperimentConfig.student_workers={self.student_workers!r}; expected 0 (one per usable "
                             "core) or a number of processes")
        if not (isinstance(self.ceiling_batch_size, int) and self.ceiling_batch_size >= 0):
            raise ValueError(f"ExperimentConfig.ceiling_batch_size={self.ceiling_batch_size!r}; expected 0 (the "
                             "student's batch) or a positive batch size")
        if not self.ceiling_budget >= 1.0:
            raise ValueError(f"ExperimentConfig.ceiling_budget={self.ceiling_budget!r}; expected a multiple >= 1 of "
                             "the student's steps (the ceiling sees at least the student's data budget)")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_dict(cls, d: dict) -> "ExperimentConfig":
        def tup(x):
            return tuple(tup(v) for v in x) if isinstance(x, list) else x

        def build(klass, values):
            return klass(**{k: tup(v) for k, v in values.items()})

        d = dict(d)
        data = dict(d.pop("data"))
        data["synth"] = build(SynthConfig, data["synth"])
        if "faces" in data:
            data["faces"] = build(FacesConfig, data["faces"])
        if "task_sets" in data:
            data["task_sets"] = tuple(build(TaskSetConfig, t) for t in data["task_sets"])
        if "teacher_files" in d:
            d["teacher_files"] = tuple(build(TeacherRef, t) for t in d.pop("teacher_files"))
        return cls(
            data=DataConfig(**data),
            teachers=tuple(build(TeacherSpec, t) for t in d.pop("teachers")),
            teacher_train=build(TeacherTrainConfig, d.pop("teacher_train")),
            fusion=build(FusionConfig, {**_LEGACY_FUSION, **d.pop("fusion")}),
            student=build(StudentConfig, d.pop("student")),
            distill=build(DistillConfig, d.pop("distill")),
            probe=build(ProbeConfig, d.pop("probe")),
            export=build(ExportConfig, d.pop("export")),
            **{k: tup(v) for k, v in d.items()},
        )

    @classmethod
    def from_json(cls, text: str) -> "ExperimentConfig":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_file(cls, path: str) -> "ExperimentConfig":
        """A config.json, with errors that name the file and the missing, unknown or bad fields."""
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text file (binary data where a JSON config belongs)") from None
        if not text.strip():
            raise ConfigError(f"{path}: empty file (expected a face-transfer config.json)")
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                              "truncated or edited by hand?") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a JSON object with the fields {sorted(_field_names(cls))}")
        missing = sorted(_field_names(cls) - set(d) - _OPTIONAL_FIELDS)
        unknown = sorted(set(d) - _field_names(cls))
        if missing or unknown:
            raise ConfigError(f"{path}: " + "; ".join(
                ([f"missing field(s) {missing}"] if missing else []) + ([f"unknown field(s) {unknown}"] if unknown else []))
                + " (expected a config.json written by face-transfer)")
        try:
            return cls.from_dict(d)
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{path}: bad field ({type(e).__name__}: {e})") from None


def same_experiment(a: ExperimentConfig, b: ExperimentConfig) -> bool:
    """Equal but for the options that change how fast a run goes, not what it computes (how many processes
    train the student stage, how many steps one graph call runs): a run may resume with other values."""
    def core(c):
        return dataclasses.replace(c, student_workers=0, distill=dataclasses.replace(c.distill, steps_per_execution=1))
    return core(a) == core(b)


class OverrideError(ConfigError):
    """An override the config refuses; `keys` are the overrides of the part that refused (to name their flags)."""

    def __init__(self, message: str, keys: tuple[str, ...]):
        super().__init__(message)
        self.keys = keys


def override_config(cfg, overrides: dict):
    """`cfg` with dotted keys replaced ({"distill.steps": 5, "seed": 1}), as Model Garden's
    `override_params_dict` does for its params: the keys of one nested dataclass are set together, so its
    cross-field checks see the final values. Raises OverrideError naming the keys of the part that failed."""
    own, nested = {}, {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head not in _field_names(type(cfg)):
            raise OverrideError(f"{key}: {type(cfg).__name__} has no field {head!r}", (key,))
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            own[head] = value
    for head, sub in nested.items():
        try:
            own[head] = override_config(getattr(cfg, head), sub)
        except OverrideError as e:
            raise OverrideError(str(e), tuple(f"{head}.{k}" for k in e.keys)) from None
    try:
        return dataclasses.replace(cfg, **own)
    except (TypeError, ValueError) as e:
        # name the keys refused on their own; a combination refused as a whole names all of its keys
        alone = tuple(k for k in own if not _accepts(cfg, {k: own[k]}))
        raise OverrideError(str(e), tuple(k for k in overrides if k.partition(".")[0] in (alone or own))) from None


def _accepts(cfg, fields: dict) -> bool:
    try:
        dataclasses.replace(cfg, **fields)
        return True
    except (TypeError, ValueError):
        return False


def _preset(name: str) -> ExperimentConfig:
    if name == "smoke":
        return ExperimentConfig(
            preset="smoke",
            data=DataConfig(SynthConfig(n_train_identities=100, n_heldout_identities=40), eval_set_size=400,
                            cache_size=1200),
            teachers=ZOO_PRESETS["smoke"],
            teacher_train=TeacherTrainConfig(steps=20, batch_size=32, checkpoint_every=10, eval_images=200,
                                             verbose=0),
            fusion=FusionConfig(code_dim=16, hidden=64, epochs=10, patience=3),
            compression_dims=(8,),
            student=StudentConfig(width=0.35, embedding_dim=16),
            distill=DistillConfig(steps=30, batch_size=32, checkpoint_every=15, log_every=10),
            loss_comparison=("teacher_space",),
            supervised_control=True,
            ceiling=True,
            student_view="ladder",
            probe=ProbeConfig(seeds=(0, 1), c_grid=(0.1, 1.0), alpha_grid=(1.0, 10.0), verification_pairs=400),
            # a 30-step student is a plumbing check: its int8 parity bars are lowered accordingly
            export=ExportConfig(calibration_images=32, parity_images=64, qat_steps=5, latency_runs=5,
                                min_cosine_int8=0.8, min_cosine_analyzer=0.6, tflite_modes=("float32", "int8_ptq")),
        )
    if name == "demo":
        # The README's main job, from nothing on 2 CPU cores: sized for a machine without AVX-512, where it must
        # stay under 15 minutes. Such a machine ran the 2026-11-27 demo (650 s on the AVX-512 benchmark machine)
        # in 31 minutes, x2.9, so the demo is sized for about 5 minutes on the benchmark machine. Its teachers are
        # the zoo's, trained once for 1,000 steps each and shipped with the package (`make zoo`), as a user's
        # existing models would be; `--teacher_pretrained=` trains them from nothing instead (~15 more minutes).
        return ExperimentConfig(
            preset="demo",
            data=DataConfig(SynthConfig(n_train_identities=200, n_heldout_identities=100), eval_set_size=600,
                            cache_size=3000),
            teachers=ZOO_PRESETS["demo"],
            teacher_train=TeacherTrainConfig(steps=1000, batch_size=64, checkpoint_every=100, eval_images=400,
                                             cosface_margin=0.1, pretrained="package"),
            fusion=FusionConfig(code_dim=64, hidden=512, epochs=25, patience=5),
            compression_dims=(64,),
            student=StudentConfig(width=1.0, embedding_dim=64),
            # Teacher-space loss through the frozen decoder: the best of benchmarks/ablate_distill.py at 600
            # steps (novel 43.5 vs 40.9 for the paper's plain L2, which stays available as loss="l2").
            # 19,200 faces in batches of 16: 4x the updates of batches of 64 for the same faces and ~1.35x the
            # seconds; novel 49.9 vs 45.1 (BENCHMARKS.md, "Smaller batches"). With the similarity-preserving
            # fusion, an L2 anchor to the AE code (code_weight=1) gave 50.7 vs 48.6 without it ("Similarity").
            # Training through fused batch normalisation made a step 1.4x faster on one thread: the same seconds
            # now buy 26,880 faces (1,680 steps), 52.4 vs 50.7 at 1,200 ("Fused batch normalisation").
            distill=DistillConfig(steps=1680, batch_size=16, learning_rate=0.004, checkpoint_every=420,
                                  loss="teacher_space", code_weight=1.0),
            supervised_control=False,
            ceiling=True,
            # The ceiling sees the student's faces in the student's batches of 16. In batches of 64
            # (--ceiling_batch_size=64) it took 28 s less here but 18 s more with AVX-512 turned off, and scored
            # 47.8 instead of 52.6 (BENCHMARKS.md, "The demo without AVX-512").
            student_view="ladder",
            probe=ProbeConfig(seeds=(0, 1, 2)),
            export=ExportConfig(qat_steps=0, latency_runs=10, calibration_images=128, parity_images=128,
                                tflite_modes=("float32", "int8_ptq")),
        )
    if name == "paper":
        # The benchmark: <= 90 min on 2 CPU cores; teachers + encoder >= 75x the student's parameters.
        return ExperimentConfig(
            preset="paper",
            data=DataConfig(SynthConfig(n_train_identities=500, n_heldout_identities=200), eval_set_size=3000,
                            cache_size=20000),
            teachers=ZOO_PRESETS["paper"],
            teacher_train=TeacherTrainConfig(steps=600, batch_size=64, checkpoint_every=200, eval_images=2000,
                                             cosface_margin=0.1),
            fusion=FusionConfig(code_dim=64, hidden=1024, epochs=40, patience=6),
            compression_dims=(16, 32, 64, 128, 256),
            # Width 1.25 (360k parameters, still x79 fewer than teachers + encoder): with the expert zoo the student
            # under-fits its teachers (held-out R² 0.74-0.86 per teacher against the code's 0.86-0.95), and at a
            # quarter of the budget the wider student scored 66.8 +- 0.5 against 63.6 +- 0.7 at width 1.0 (3 seeds:
            # BENCHMARKS.md, "Student levers on the 4,600-step zoo"). The supervised control and the ceiling share the
            # architecture.
            student=StudentConfig(width=1.25, embedding_dim=64),
            # 76,800 faces (doubling the demo's 500 steps of 64 gained +1.6 novel, benchmarks/ablate_distill.py
            # --steps) in batches of 32: 62.5 vs 61.0 in batches of 64 for about the same seconds; batches of 16
            # scored the same 62.5 for 1.35x the seconds (BENCHMARKS.md, "Smaller batches").
            # With the similarity-preserving fusion, the L2 anchor to the AE code: 62.5 vs 62.1 without ("Similarity").
            # Fused batch normalisation made a step cheaper: 128,000 faces (4,000 steps) scored 63.0 vs 62.5 at
            # 2,400 steps, in 806 s, and 192,000 faces (6,000 steps) 64.1 in 1,174 s ("Fused batch normalisation").
            distill=DistillConfig(steps=6000, batch_size=32, checkpoint_every=600, loss="teacher_space",
                                  code_weight=1.0),
            loss_comparison=("l2",),  # l2: the paper's own recipe (no noise, no heads); cosine is in the ablation
            supervised_control=True,
            ceiling=True,
            # The ceiling sees as many faces as the student (the "at least the student's data budget"):
            # 192,000, more than the 153,600 of its former 2x budget at 2,400 steps, within the 90 minutes.
            ceiling_budget=1.0,
            student_view="ladder",
            probe=ProbeConfig(seeds=(0, 1, 2)),
            export=ExportConfig(qat_steps=200, calibration_images=300, parity_images=512),
        )
    if name == "real":
        # The ensemble of real pretrained face models that ship in pip packages (no zoo training).
        demo = _preset("demo")
        return dataclasses.replace(demo, preset="real", teachers=(),
                                   real_teachers=("fer_expression", "dlib_age", "dlib_gender"),
                                   supervised_control=False)
    raise ValueError(f"unknown preset {name!r}; expected one of {PRESETS}")


PRESETS = ("smoke", "demo", "paper", "real")


def preset_config(name: str) -> ExperimentConfig:
    """The named preset's full configuration."""
    return _preset(name)
