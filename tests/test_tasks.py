"""Task registry: enough tasks, mostly novel, every label key really produced by the generator."""
import numpy as np
import pytest

from face_transfer.data import synth
from face_transfer.data.tasks import (
    EVAL_SETS,
    KINDS,
    TASKS,
    get_task,
    novel_tasks,
    source_tasks,
    tasks_markdown_table,
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
