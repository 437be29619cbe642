"""Experiment configuration: every preset builds, JSON round trip is exact, unknown presets fail clearly."""
import dataclasses
import json

import pytest

from face_transfer.configs import PRESETS, ExperimentConfig, preset_config
from face_transfer.teachers.config import ZOO_PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_builds_and_round_trips(name):
    cfg = preset_config(name)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.preset == name
    assert cfg.teachers == ZOO_PRESETS.get(name, ())
    assert cfg.teachers or cfg.real_teachers
    back = ExperimentConfig.from_json(cfg.to_json())
    assert back == cfg
    # Nested dataclasses and tuples come back as such (not dicts/lists): hashable, frozen.
    assert type(back.data.synth) is type(cfg.data.synth)
    assert isinstance(back.teachers, tuple) and isinstance(back.real_teachers, tuple)
    assert all(isinstance(t.widths, tuple) for t in back.teachers)
    assert isinstance(back.compression_dims, tuple)
    hash(back)
    # Valid JSON, stable text.
    assert back.to_json() == cfg.to_json()
    assert json.loads(cfg.to_json())["preset"] == name


def test_round_trip_of_modified_config():
    cfg = dataclasses.replace(preset_config("smoke"), seed=7, loss_comparison=("cosine", "teacher_space"),
                              strategy="mirrored")
    back = ExperimentConfig.from_json(cfg.to_json())
    assert back == cfg and back.loss_comparison == ("cosine", "teacher_space")
    assert back != preset_config("smoke")


def test_configs_are_frozen():
    cfg = preset_config("smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3


def test_presets_scale_up():
    smoke, demo, paper = (preset_config(n) for n in ("smoke", "demo", "paper"))
    assert smoke.distill.steps < demo.distill.steps < paper.distill.steps
    assert smoke.data.cache_size < demo.data.cache_size < paper.data.cache_size


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError) as e:
        preset_config("huge")
    msg = str(e.value)
    assert "huge" in msg
    for name in PRESETS:
        assert name in msg


def test_a_config_written_before_the_fusion_relational_term_means_a_plain_fusion():
    """A run directory's config.json without FusionConfig.relational_weight (written before it existed) trained a
    plain auto-encoder: it loads as 0.0, not as today's default, so resuming such a run never mixes fusions."""
    cfg = preset_config("demo")
    d = json.loads(cfg.to_json())
    del d["fusion"]["relational_weight"]
    old = ExperimentConfig.from_dict(d)
    assert old.fusion.relational_weight == 0.0
    assert old != cfg or cfg.fusion.relational_weight == 0.0
    with pytest.raises(ValueError, match="relational_weight"):
        dataclasses.replace(cfg.fusion, relational_weight=-1.0)


def test_speed_only_options_do_not_make_another_experiment():
    from face_transfer.configs import same_experiment
    cfg = preset_config("demo")
    faster = dataclasses.replace(cfg, student_workers=1,
                                 distill=dataclasses.replace(cfg.distill, steps_per_execution=4))
    assert same_experiment(cfg, faster) and faster != cfg
    assert not same_experiment(cfg, dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, steps=7)))
    with pytest.raises(ValueError, match="student_workers"):
        dataclasses.replace(cfg, student_workers=-1)
    with pytest.raises(ValueError, match="steps_per_execution"):
        dataclasses.replace(cfg.distill, steps_per_execution=0)


def test_parallel_student_workers_only_under_the_default_strategy(tmp_path):
    import tensorflow as tf
    from face_transfer.stages.rundir import Run
    from face_transfer.stages.student import parallel_workers
    run = Run(str(tmp_path), dataclasses.replace(preset_config("smoke"), student_workers=3))
    assert parallel_workers(run, None, ["student", "ceiling"]) == 2  # never more processes than networks
    assert parallel_workers(run, None, ["student", "ceiling", "a", "b"]) == 3
    assert parallel_workers(run, None, ["student"]) == 1
    assert parallel_workers(run, tf.distribute.MirroredStrategy(["/cpu:0"]), ["student", "ceiling"]) == 1
    assert parallel_workers(Run(str(tmp_path), dataclasses.replace(run.cfg, student_workers=1)), None,
                            ["student", "ceiling"]) == 1


def test_override_config_sets_dotted_keys_together_and_names_refused_ones():
    from face_transfer.configs import OverrideError, override_config, preset_config
    cfg = preset_config("smoke")
    out = override_config(cfg, {"seed": 7, "distill.steps": 3, "distill.batch_size": 8, "fusion.code_dim": 5})
    assert (out.seed, out.distill.steps, out.distill.batch_size, out.fusion.code_dim) == (7, 3, 8, 5)
    assert out.teacher_train == cfg.teacher_train and override_config(cfg, {}) == cfg
    # one part's fields are set at once: noise and consistent_noise only make sense together
    both = override_config(cfg, {"distill.noise": 0.2, "distill.consistent_noise": True})
    assert both.distill.consistent_noise and both.distill.noise == 0.2
    with pytest.raises(OverrideError, match="probability") as e:
        override_config(cfg, {"distill.steps": 3, "distill.noise": 2.0})
    assert e.value.keys == ("distill.noise",)
    with pytest.raises(OverrideError, match="no field 'distil'"):
        override_config(cfg, {"distil.steps": 3})
