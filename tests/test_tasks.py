"""Task registry: enough tasks, mostly novel, every label key really produced by the generator; source/novel
derived from the teachers' declarations."""
import dataclasses

import numpy as np
import pytest

from face_transfer.data import synth
from face_transfer.data.tasks import (
    DEFAULT_DECLARED,
    EVAL_SETS,
    KINDS,
    TASKS,
    ZOO_SOURCE_TASKS,
    EvalSet,
    Task,
    declared_from_zoo,
    get_task,
    novel_tasks,
    source_tasks,
    tasks_markdown_table,
    with_sources,
)

CFG = synth.SynthConfig(image_size=32, n_train_identities=20, n_heldout_identities=5)


def test_registry_size_and_novelty():
    assert len(TASKS) >= 15
    assert len(novel_tasks()) >= 10
    assert len(novel_tasks()) > len(source_tasks()) >= 1
    assert {t.name for t in novel_tasks()} | {t.name for t in source_tasks()} == set(TASKS)


def test_kinds_eval_sets_and_domains_valid():
    for t in TASKS.values():
        assert t.kind in KINDS, t
        assert t.eval_set in EVAL_SETS, t
        assert t.domain in synth.DOMAINS, t
        assert EVAL_SETS[t.eval_set].pool in synth.POOLS, t
        if t.kind == "classification":
            assert t.num_classes and t.num_classes >= 2, t
    # The registry covers more than one domain: "tasks and domains", as in the paper.
    assert len({t.domain for t in TASKS.values()}) >= 3


@pytest.mark.parametrize("set_name", sorted(EVAL_SETS))
def test_every_task_label_is_rendered_for_its_eval_set(set_name):
    es = EVAL_SETS[set_name]
    images, labels = synth.render_faces(CFG, np.arange(16), stream="test_tasks", pool=es.pool, domain=es.domain)
    assert images.shape == (16, 32, 32, 3) and images.dtype == np.uint8
    for t in (t for t in TASKS.values() if t.eval_set == set_name):
        for key in t.labels:
            assert key in labels, f"task {t.name}: label {key!r} missing from render_faces output"
            assert len(labels[key]) == 16
        if t.kind == "classification":
            y = np.asarray(labels[t.labels[0]])
            assert np.issubdtype(y.dtype, np.integer) or y.dtype == bool, (t.name, y.dtype)
            assert y.min() >= 0 and y.max() < t.num_classes, (t.name, y.min(), y.max())
        if t.kind == "landmarks":
            assert labels[t.labels[0]].shape == (16, 5, 2)
        if t.kind == "verification":
            ids = labels[t.labels[0]]
            lo = 0 if es.pool == "train" else CFG.n_train_identities
            assert ids.min() >= lo and ids.max() < lo + (CFG.n_train_identities if es.pool == "train"
                                                        else CFG.n_heldout_identities)


def test_markdown_table_lists_every_task():
    table = tasks_markdown_table()
    lines = table.splitlines()
    assert len(lines) == 2 + len(TASKS)
    names = [line.split("|")[1].strip() for line in lines[2:]]
    assert names == list(TASKS)
    assert sum("novel" in line for line in lines[2:]) == len(novel_tasks())


def test_get_task_unknown_names_choices():
    assert get_task("expression") is TASKS["expression"]
    with pytest.raises(ValueError, match="unknown task 'nope'.*expression"):
        get_task("nope")


# ---------------------------------------------------------------- source / novel, derived


def test_registry_source_flags_are_what_the_default_zoo_declares():
    from face_transfer.teachers import zoo
    from face_transfer.teachers.config import ZOO_PRESETS

    assert set(ZOO_SOURCE_TASKS) == set(zoo.SOURCE_TASKS)
    for zoo_task, names in ZOO_SOURCE_TASKS.items():
        # One vocabulary: the declared task names carry exactly the label keys the zoo teacher trains on.
        assert {k for n in names for k in TASKS[n].labels} == set(zoo.SOURCE_TASKS[zoo_task])
    for preset, specs in ZOO_PRESETS.items():
        declared = declared_from_zoo(s.source_task for s in specs)
        assert declared == DEFAULT_DECLARED, preset
        derived = with_sources(TASKS.values(), declared)
        assert [t.source for t in derived] == [t.source for t in TASKS.values()], preset
    assert with_sources(TASKS.values(), DEFAULT_DECLARED) == list(TASKS.values())


def test_with_sources_follows_the_declarations():
    got = {t.name: t.source for t in with_sources(TASKS.values(), {"EXPRESSION"})}  # case-insensitive
    assert [n for n, s in got.items() if s] == ["expression"]
    # Domain-shifted sets stay novel although they share the expression label; a declared name does not.
    assert not got["expression_sketch"]
    assert with_sources([TASKS["expression_sketch"]], {"expression_sketch"})[0].source
    assert not any(t.source for t in with_sources(TASKS.values(), set()))
    assert [t.name for t in source_tasks(declared={"glasses", "head_pose"})] == ["head_pose", "glasses"]
    assert len(novel_tasks(declared=set())) == len(TASKS)
    assert source_tasks([TASKS["age"], TASKS["beard"]]) == [TASKS["age"]]
    with pytest.raises(ValueError, match="unknown zoo source task 'gaze'"):
        declared_from_zoo(["gaze"])


def test_user_set_tasks_carry_their_eval_set():
    user = EvalSet("lab", "real", "user", group_key="person")
    yaw = Task("lab_yaw", ("yaw",), "regression", "mae_deg", "lab", False, user_set=user)
    mood = Task("mood", ("mood",), "classification", "accuracy", "lab", False, 3, user_set=user,
                class_names=("a", "b", "c"))
    assert yaw.domain == "real" and yaw.eval_set_spec is user and yaw.group_key == "person"
    assert TASKS["expression"].group_key is None and TASKS["expression"].eval_set_spec is EVAL_SETS["photo"]
    # A declared "head_pose" covers its label keys, so a user's yaw column is a source task.
    assert with_sources([yaw, mood], {"head_pose"})[0].source
    assert not with_sources([yaw, mood], {"head_pose"})[1].source
    forced = dataclasses.replace(mood, source_override=True)
    assert with_sources([forced], set())[0].source
    assert not with_sources([dataclasses.replace(yaw, source_override=False)], {"head_pose"})[0].source
    lines = tasks_markdown_table([yaw, mood]).splitlines()
    assert lines[2] == "| lab_yaw | regression | yaw | mae_deg | real | user | novel |"
    with pytest.raises(KeyError, match="neither in EVAL_SETS"):
        Task("x", ("x",), "regression", "mae", "elsewhere", False).domain
