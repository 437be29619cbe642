"""Every path in a run directory that a stage, a script or a benchmark reads or writes, named once.
Pure path logic: nothing is created or read here, and the names are the run directory's public layout.
"""
from __future__ import annotations

import dataclasses
import os

# The record each library module writes inside its own directory, named once here: the modules that write
# them (teachers.train, fusion.autoencoder, student.training, the data and cache writers) import these.
MANIFEST_JSON = "manifest.json"  # a shard set's, face set's, cache's or zoo's manifest
TEACHER_JSON = "teacher.json"
FUSION_JSON = "fusion.json"
STUDENT_JSON = "student.json"


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """The layout of the run directory `root`: `RunPaths(run_dir).fusion_json` and so on.

    Properties name fixed files; methods name the per-teacher, per-set, per-student-variant and per-mode ones.
    Files that a library module writes inside a named directory (a SavedModel's own files, the embedding
    cache's shards) keep their names in that module.
    """

    root: str

    def _p(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def rel(self, path: str) -> str:
        """`path` relative to the run directory (what stage records and report links hold)."""
        return os.path.relpath(path, self.root)

    # ---- the run's own records ---------------------------------------------------------------------
    @property
    def config_json(self) -> str:
        return self._p("config.json")

    @property
    def flags_txt(self) -> str:
        return self._p("flags.txt")

    @property
    def lock(self) -> str:
        return self._p(".lock")

    @property
    def report_md(self) -> str:
        return self._p("report.md")

    # ---- data stage --------------------------------------------------------------------------------
    @property
    def data_dir(self) -> str:
        return self._p("data")

    @property
    def sample_grid_png(self) -> str:
        return self._p("data", "sample_grid.png")

    @property
    def data_stats_json(self) -> str:
        return self._p("data", "stats.json")

    def eval_set_dir(self, name: str) -> str:
        """An evaluation set: rendered synthetic shards, or a user's task set copied in."""
        return self._p("data", name)

    def eval_set_manifest(self, name: str) -> str:
        return self._p("data", name, MANIFEST_JSON)

    def taskset_json(self, name: str) -> str:
        return self._p("data", name, "taskset.json")

    @property
    def faces_dir(self) -> str:
        """The user's unlabelled faces, aligned (a FaceSet)."""
        return self._p("faces")

    @property
    def faces_manifest(self) -> str:
        return self._p("faces", MANIFEST_JSON)

    # ---- teachers and their embedding cache --------------------------------------------------------
    def teacher_dir(self, name: str) -> str:
        return self._p("teachers", name)

    def teacher_json(self, name: str) -> str:
        return self._p("teachers", name, TEACHER_JSON)

    def teacher_model(self, name: str) -> str:
        return self._p("teachers", name, "model.keras")

    @property
    def cache_dir(self) -> str:
        return self._p("cache")

    @property
    def cache_manifest(self) -> str:
        return self._p("cache", MANIFEST_JSON)

    # ---- fusion ------------------------------------------------------------------------------------
    @property
    def fusion_dir(self) -> str:
        return self._p("fusion")

    @property
    def fusion_json(self) -> str:
        return self._p("fusion", FUSION_JSON)

    @property
    def fusion_encoder(self) -> str:
        return self._p("fusion", "encoder.keras")

    def fusion_standardize_dir(self, standardize: str) -> str:
        """The fusion refitted with the other standardisation (the evaluate stage's comparison)."""
        return self._p(f"fusion_{standardize}")

    @property
    def fusion_curve_root(self) -> str:
        return self._p("fusion_curve")

    def fusion_curve_dir(self, dims: int) -> str:
        """A fusion of `dims` dimensions for the compression curve."""
        return self._p("fusion_curve", f"d{dims}")

    # ---- students ----------------------------------------------------------------------------------
    def student_dir(self, variant: str = "student") -> str:
        """`student` (the run's student), or another variant's folder (`student_<loss>`, `student_supervised`,
        `student_ceiling`): variant names are the folder names."""
        return self._p(variant)

    def student_record(self, variant: str = "student") -> str:
        return self._p(variant, STUDENT_JSON)

    def student_model(self, variant: str = "student") -> str:
        return self._p(variant, "model.keras")

    def student_ckpt(self, variant: str = "student") -> str:
        return self._p(variant, "ckpt")

    @property
    def student_json(self) -> str:
        return self.student_record("student")

    # ---- features the evaluate and export stages cache ---------------------------------------------
    @property
    def features_dir(self) -> str:
        return self._p("features")

    def features_rep_dir(self, rep: str) -> str:
        return self._p("features", rep)

    def feature_file(self, rep: str, eval_set: str) -> str:
        return self._p("features", rep, f"{eval_set}.npy")

    # ---- metrics -----------------------------------------------------------------------------------
    @property
    def metrics_dir(self) -> str:
        return self._p("metrics")

    def stage_record(self, stage: str) -> str:
        return self._p("metrics", "stages", f"{stage}.json")

    @property
    def stage_times_json(self) -> str:
        return self._p("metrics", "stage_times.json")

    @property
    def transfer_json(self) -> str:
        return self._p("metrics", "transfer.json")

    @property
    def transfer_results_json(self) -> str:
        return self._p("metrics", "transfer_results.json")

    @property
    def transfer_md(self) -> str:
        return self._p("metrics", "transfer.md")

    @property
    def ceiling_md(self) -> str:
        return self._p("metrics", "ceiling.md")

    @property
    def task_bars_png(self) -> str:
        return self._p("metrics", "task_bars.png")

    @property
    def compression_curve_json(self) -> str:
        return self._p("metrics", "compression_curve.json")

    @property
    def compression_curve_png(self) -> str:
        return self._p("metrics", "compression_curve.png")

    @property
    def student_embedding_png(self) -> str:
        return self._p("metrics", "student_embedding_2d.png")

    @property
    def headline_json(self) -> str:
        return self._p("metrics", "headline.json")

    # ---- export ------------------------------------------------------------------------------------
    @property
    def export(self) -> "ExportPaths":
        """export/: the deployable files and the student bundle (ExportPaths names them)."""
        return ExportPaths(self._p("export"))

    @property
    def bundle(self) -> "ExportPaths":  # the student bundle lives in export/ (what face-transfer-adapt reads)
        return self.export

    @property
    def export_dir(self) -> str:
        return self.export.root

    @property
    def export_json(self) -> str:
        return self.export.export_json

    @property
    def analyzer_heads_json(self) -> str:
        return self.export.heads_json

    @property
    def analyzer_labels_json(self) -> str:
        return self.export.analyzer_labels_json

    @property
    def analyzer_tflite(self) -> str:
        return self.export.analyzer_tflite

    def savedmodel_dir(self, model: str) -> str:
        return self.export.savedmodel_dir(model)

    def student_tflite(self, mode: str) -> str:
        return self.export.student_tflite(mode)

    def onnx_file(self, model: str) -> str:
        return self.export.onnx_file(model)

    @property
    def web_dir(self) -> str:
        return self.export.web_dir

    @property
    def web_index(self) -> str:
        return self.export.web_index


@dataclasses.dataclass(frozen=True)
class ExportPaths:
    """The files of an export folder `root`: a run's export/, or the --out of face-transfer-adapt, which has the
    same layout. The student bundle (student.keras, bundle.json, analyzer_heads.*) is what adapt reads back."""

    root: str

    def _p(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def export_json(self) -> str:
        return self._p("export.json")

    @property
    def adapt_json(self) -> str:
        """An adapted analyser's record (face-transfer-adapt's --out)."""
        return self._p("adapt.json")

    @property
    def adapt_spec_json(self) -> str:
        """What an adaptation was asked (its inputs): a rerun with other inputs is refused without --overwrite."""
        return self._p("adapt_spec.json")

    @property
    def analyzer_labels_json(self) -> str:
        return self._p("analyzer_int8.labels.json")

    @property
    def analyzer_tflite(self) -> str:
        return self._p("analyzer_int8.tflite")

    def savedmodel_dir(self, model: str) -> str:
        """`student`, `analyzer` or `fused_teacher`."""
        return self._p(f"{model}_savedmodel")

    def student_tflite(self, mode: str) -> str:
        return self._p(f"student_{mode}.tflite")

    def onnx_file(self, model: str) -> str:
        return self._p(f"{model}.onnx")

    @property
    def web_dir(self) -> str:
        return self._p("web")

    @property
    def web_index(self) -> str:
        return self._p("web", "index.html")

    @property
    def checkpoint_dir(self) -> str:
        """face-transfer-adapt's fine-tuning checkpoints (resumable)."""
        return self._p("ckpt")

    @property
    def bundle_json(self) -> str:
        return os.path.join(self.root, "bundle.json")

    @property
    def student_keras(self) -> str:
        return os.path.join(self.root, "student.keras")

    @property
    def heads_npz(self) -> str:
        return os.path.join(self.root, "analyzer_heads.npz")

    @property
    def heads_json(self) -> str:
        return os.path.join(self.root, "analyzer_heads.json")


__all__ = ["ExportPaths", "FUSION_JSON", "MANIFEST_JSON", "RunPaths", "STUDENT_JSON", "TEACHER_JSON"]
