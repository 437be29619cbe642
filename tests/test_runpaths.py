"""core.runpaths: the run directory's layout, named once (the names are the layout runs have always had)."""
import dataclasses
import os

import pytest

from face_transfer.core.runpaths import RunPaths


def test_the_layout_of_a_run_directory():
    p = RunPaths("r")
    got = {
        p.config_json: "config.json", p.flags_txt: "flags.txt", p.lock: ".lock", p.report_md: "report.md",
        p.sample_grid_png: "data/sample_grid.png", p.data_stats_json: "data/stats.json",
        p.eval_set_manifest("synth_eval"): "data/synth_eval/manifest.json",
        p.taskset_json("celeba"): "data/celeba/taskset.json", p.faces_manifest: "faces/manifest.json",
        p.teacher_json("t"): "teachers/t/teacher.json", p.teacher_model("t"): "teachers/t/model.keras",
        p.cache_manifest: "cache/manifest.json", p.fusion_json: "fusion/fusion.json",
        p.fusion_encoder: "fusion/encoder.keras", p.fusion_standardize_dir("phi_s"): "fusion_phi_s",
        p.fusion_curve_dir(16): "fusion_curve/d16", p.student_json: "student/student.json",
        p.student_model("student_cosine"): "student_cosine/model.keras", p.student_ckpt(): "student/ckpt",
        p.feature_file("pca", "synth_eval"): "features/pca/synth_eval.npy",
        p.stage_record("fusion"): "metrics/stages/fusion.json", p.stage_times_json: "metrics/stage_times.json",
        p.transfer_json: "metrics/transfer.json", p.transfer_md: "metrics/transfer.md",
        p.headline_json: "metrics/headline.json", p.task_bars_png: "metrics/task_bars.png",
        p.export_json: "export/export.json", p.analyzer_tflite: "export/analyzer_int8.tflite",
        p.analyzer_labels_json: "export/analyzer_int8.labels.json", p.savedmodel_dir("student"):
        "export/student_savedmodel", p.student_tflite("float32"): "export/student_float32.tflite",
        p.onnx_file("analyzer"): "export/analyzer.onnx", p.web_index: "export/web/index.html",
    }
    assert {os.path.relpath(k, "r"): v for k, v in got.items()} == {v: v for v in got.values()}
    assert p.rel(p.fusion_json) == os.path.join("fusion", "fusion.json")


def test_run_paths_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunPaths("r").root = "elsewhere"
