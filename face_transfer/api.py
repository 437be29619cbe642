"""The Python API, in MediaPipe Model Maker's shape: create -> evaluate -> export, then adapt.

    from face_transfer.api import FaceTransfer, Student

    ft = FaceTransfer.create(run_dir="runs/mine", preset="demo",
                             teachers=["face_id=models/face_id.keras,output=embedding,size=112", "fer_expression"],
                             faces=["photos/"], tasks=["fer2013:data/fer2013.csv"])
    results = ft.evaluate()                 # TransferResults: mean novel/source score per representation
    student = ft.export()                   # Student: the Keras model with its `features` and `embedding` views
    adapted = student.adapt(tasks=["folder_csv:data/shape/labels.csv"], out="runs/mine_shape")
    adapted.analyzer                        # keras.Model: image -> every head (old and new) + embedding

A thin layer over the same stages as the `face-transfer` command (face_transfer.pipeline.run_pipeline) and
`face-transfer-adapt` (face_transfer.adapt.run_adapt): it writes the same run directory and the same files, and
returns Keras models and result objects.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from face_transfer import adapt as _adapt
from face_transfer.deploy import bundle as bundle_lib
from face_transfer.core.fileio import read_json
from face_transfer.core.runpaths import RunPaths


@dataclasses.dataclass(frozen=True)
class TransferResults:
    """The transfer table of a run (metrics/transfer.json): per representation, the mean 0-100 score over the
    novel and the source tasks (± std over probe seeds), and per task."""
    groups: dict  # {representation: {"mean_novel", "std_novel", "mean_source", ...}}
    tasks: dict  # {task: {representation: score}}
    novel_tasks: tuple

    def mean_novel(self, representation: str = "student") -> float:
        return float(self.groups[representation]["mean_novel"])

    def __str__(self) -> str:
        rows = [f"{'representation':<22} {'novel':>6} {'source':>7}"]
        for rep, g in self.groups.items():
            if "mean_novel" in g:
                rows.append(f"{rep:<22} {g['mean_novel']:6.1f} {g.get('mean_source', float('nan')):7.1f}")
        return "\n".join(rows)


class Student:
    """A distilled student as a user gets it: `model` (uint8 face crops -> {"features", "embedding"}), its heads,
    and `adapt` to new labelled tasks. Load one with `Student.load(run directory or student folder)`."""

    def __init__(self, bundle: bundle_lib.StudentBundle):
        self._bundle = bundle

    @classmethod
    def load(cls, path: str) -> "Student":
        return cls(bundle_lib.load_bundle(path))

    @property
    def path(self) -> str:
        return self._bundle.path

    @property
    def model(self):
        """keras.Model: uint8 [N,S,S,3] -> {"features": the view the transfer scores are measured on,
        "embedding": the distilled code}."""
        return self._bundle.features_model()

    @property
    def view(self) -> str:
        return self._bundle.view

    @property
    def image_size(self) -> int:
        return self._bundle.image_size

    @property
    def heads(self) -> dict:
        """{output name: metadata} of the analyser's heads (kind, classes, units, the data each was fitted on)."""
        return dict(self._bundle.heads_meta)

    @property
    def analyzer(self):
        """keras.Model: uint8 face crops -> every head + embedding (what the int8 analyser file computes)."""
        from face_transfer.deploy.savedmodel import build_analyzer
        heads = {k: {kk: vv for kk, vv in v.items() if kk != "task"} for k, v in self._bundle.heads.items()}
        return build_analyzer(self._bundle.student, heads, features=self.model)

    def features(self, images: np.ndarray) -> np.ndarray:
        """The `features` view of uint8 face crops [N,S,S,3] (S = image_size)."""
        return self._bundle.features(images)

    def adapt(self, tasks, out: str, mode: str = "linear", replace_heads: bool = False, overwrite: bool = False,
              progress: bool = True, **config) -> "Adapted":
        """New heads for the labelled datasets `tasks` ("FORMAT:PATH[,key=value...]", as --tasks), exported as a
        new analyser into `out` (face-transfer-adapt; never into the source). Returns the adapted student and
        its scores. `config`: any other AdaptConfig field (finetune_steps, learning_rate, keep_weight, ...)."""
        from face_transfer.data.tasksets import parse_task_flag
        task_sets = [parse_task_flag(t) if isinstance(t, str) else t for t in tasks]
        cfg = _adapt.AdaptConfig(mode=mode, replace_heads=replace_heads, **config)
        record = _adapt.run_adapt(self._bundle.run_dir or self._bundle.path, task_sets, out, cfg,
                                  overwrite=overwrite, progress=progress)
        return Adapted(bundle_lib.load_bundle(out), record)


class Adapted(Student):
    """A Student adapted to new tasks (its folder is itself a student folder), with what the adaptation measured."""

    def __init__(self, bundle: bundle_lib.StudentBundle, record: dict):
        super().__init__(bundle)
        self.record = record

    @property
    def scores(self) -> dict:
        """{new task: {"linear": score, "finetune": score?, "ceiling": score?}} on each task's held-out split."""
        return self.record["scores"]["new"]

    @property
    def forgetting_max(self) -> float | None:
        """The largest drop of an old head's score, in points (fine-tuning from a run directory), else None."""
        return self.record.get("forgetting_max")

    @property
    def tflite_path(self) -> str:
        return os.path.join(self.path, "analyzer_int8.tflite")


class FaceTransfer:
    """A run: teachers -> fusion -> student -> evaluation -> export, in one run directory (resumable)."""

    def __init__(self, run_dir: str, records: dict | None = None):
        self.run_dir = run_dir
        self.records = records or {}

    @classmethod
    def create(cls, run_dir: str, preset: str = "demo", teachers=(), faces=(), tasks=(), synth_tasks: bool | None = None,
               align_faces: bool = False, real_fraction: float | None = None, overwrite: bool = False,
               until: str = "report", config=None, strategy=None) -> "FaceTransfer":
        """Run (or resume) the pipeline into `run_dir`. `teachers`, `faces` and `tasks` take the command line's
        syntax (README, "Your own teachers and data"); `config` an ExperimentConfig instead of the preset."""
        from face_transfer.configs import preset_config
        from face_transfer.pipeline import run_pipeline
        from face_transfer.user_inputs import with_user_inputs
        cfg = config if config is not None else preset_config(preset)
        cfg = with_user_inputs(cfg, teachers=list(teachers), faces=list(faces), tasks=list(tasks),
                               synth_tasks=synth_tasks, align_faces=align_faces, real_fraction=real_fraction)
        records = run_pipeline(cfg, run_dir, overwrite=overwrite, strategy=strategy, until=until)
        return cls(run_dir, records)

    @classmethod
    def open(cls, run_dir: str) -> "FaceTransfer":
        """A run directory made earlier (by the API or the command line)."""
        if not os.path.exists(RunPaths(run_dir).config_json):
            raise FileNotFoundError(f"{run_dir}: no config.json; not a face-transfer run directory")
        return cls(run_dir)

    def evaluate(self) -> TransferResults:
        """The run's transfer table (computed by the `evaluate` stage of `create`)."""
        path = RunPaths(self.run_dir).transfer_json
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: missing; run FaceTransfer.create(..., until='evaluate') or later first")
        table = read_json(path)
        per_task = {t: {rep: res[t]["score_mean"] for rep, res in table["results"].items() if t in res}
                    for t in (x["name"] for x in table["tasks"])}
        novel = tuple(x["name"] for x in table["tasks"] if x["group"] == "novel")
        return TransferResults(table["groups"], per_task, novel)

    def export(self) -> Student:
        """The exported student (the `export` stage's files in <run_dir>/export/)."""
        return Student.load(self.run_dir)
