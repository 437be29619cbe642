"""benchmarks/run.py: the build time of given paper teachers, read from their zoo manifest."""
import json

from benchmarks.run import teacher_build


def test_teacher_build_sums_each_teachers_total_training_seconds(tmp_path):
    manifest = {"teachers": {
        "a": {"record": {"steps": 3000, "train_seconds_total": 100.0, "train_seconds_this_run": 40.0}},
        "b": {"record": {"steps": 3000, "train_seconds_this_run": 25.5}}}}  # a zoo packaged before the total
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    got = teacher_build(str(tmp_path))
    assert got["teachers.build_seconds"] == 125.5
    assert got["teachers.build_steps"] == {"a": 3000, "b": 3000} and got["teachers.given"] == str(tmp_path)
    assert teacher_build(None) == {"teachers.given": None}
