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


def test_a_full_benchmarks_rewrite_keeps_the_sections_it_does_not_write():
    from benchmarks.markdown import keep_other_sections
    old = ("# Benchmarks\n\nold intro\n\n## Data\n\nold data\n\n## Ablation (hand-written)\n\nrows\n\n"
           "## Preset `demo` (run dir `runs/bench/demo`)\n\nold demo tables\n\n"
           "## Preset `paper` (run dir `runs/bench/paper`)\n\nold paper\n")
    new = ("# Benchmarks\n\nnew intro\n\n## Data\n\nnew data\n\n## Preset `demo` (run dir `runs/bench/demo`)\n\n"
           "new demo, no tables\n\n## Preset `paper` (run dir `runs/bench/paper`)\n\nnew paper\n")
    out = keep_other_sections(new, old, keep_old=("## Preset `demo` (run dir `runs/bench/demo`)",))
    assert out.index("new data") < out.index("## Ablation (hand-written)\n\nrows") < out.index("old demo tables")
    assert "new intro" in out and "old intro" not in out and "old data" not in out
    assert "new paper" in out and "old paper" not in out and "new demo, no tables" not in out
    assert keep_other_sections(new, "") == new


def test_the_paper_preset_takes_the_zoo_paper_cache_when_it_is_built(tmp_path, monkeypatch):
    from absl import flags

    import benchmarks.run as bench
    flags.FLAGS(["bench"])  # parse the defaults (--paper_teachers unset)
    monkeypatch.setattr(bench, "PAPER_ZOO_CACHE", str(tmp_path))
    assert bench.paper_teachers() is None  # not built: the preset trains its own teachers
    (tmp_path / "manifest.json").write_text("{}")
    assert bench.paper_teachers() == str(tmp_path)
    try:
        flags.FLAGS.paper_teachers = ""  # --paper_teachers= : its own teachers, even when the cache is built
        assert bench.paper_teachers() is None
        flags.FLAGS.paper_teachers = "/elsewhere"
        assert bench.paper_teachers() == "/elsewhere"
    finally:
        flags.FLAGS.paper_teachers = None


def test_profile_self_times_subtract_nested_events_per_thread(tmp_path):
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from benchmarks.time_distill import op_self_times
    space = xplane_pb2.XSpace()
    plane = space.planes.add(name="/host:CPU")
    for i, name in ((1, "train_step"), (2, "student/conv1/Conv2D:Conv2D"), (3, "student/act:Relu")):
        plane.event_metadata[i].name = name
    line = plane.lines.add(name="thread 1")
    # train_step [0, 10) holds a Conv2D [1, 5) and a Relu [6, 8); ps units
    for mid, off, dur in ((1, 0, 10), (2, 1, 4), (3, 6, 2)):
        line.events.add(metadata_id=mid, offset_ps=off * 10 ** 12, duration_ps=dur * 10 ** 12)
    other = plane.lines.add(name="thread 2")
    other.events.add(metadata_id=2, offset_ps=0, duration_ps=3 * 10 ** 12)
    space.planes.add(name="/device:GPU:0").lines.add().events.add(metadata_id=1, duration_ps=99 * 10 ** 12)
    (tmp_path / "plugins" / "profile" / "run").mkdir(parents=True)
    (tmp_path / "plugins" / "profile" / "run" / "host.xplane.pb").write_bytes(space.SerializeToString())
    got = op_self_times(str(tmp_path))
    assert got == {"train_step": 4.0, "Conv2D": 7.0, "Relu": 2.0}  # the GPU plane is not the host's
