"""The stage registry: the order DEPENDS_ON gives, and a stage added by one module of its own."""
import sys
import types

import pytest

from face_transfer.stages import STAGE_REGISTRY, depends_on, ordered_stages, register_stage, stage_names


def test_the_order_runs_have_always_had():
    assert stage_names() == ("data", "teachers", "cache", "fusion", "student", "evaluate", "export", "report")
    report = STAGE_REGISTRY.get("report")
    assert set(depends_on(report)) == set(stage_names()) - {"report"} and report.ALWAYS_RUN


def _toy_stage(name, depends):
    mod = types.ModuleType(f"toy_stage_{name}")
    mod.NAME, mod.WORKERS, mod.DEPENDS_ON = name, "chief", depends
    sys.modules[mod.__name__] = mod

    def run(run, ctx):
        return {}
    run.__module__ = mod.__name__
    mod.run = register_stage(run)
    return mod


@pytest.fixture
def toy():
    added = []
    yield lambda name, depends: added.append(name) or _toy_stage(name, depends)
    for name in added:
        STAGE_REGISTRY.unregister(name)
        sys.modules.pop(f"toy_stage_{name}", None)


def test_a_new_stage_is_one_module_placed_by_its_dependencies(toy):
    toy("calibrate", ("student",))
    names = stage_names()
    assert names.index("student") < names.index("calibrate") < names.index("report")
    assert names[-1] == "report"


def test_unknown_and_circular_dependencies_are_named(toy):
    toy("a_loop", ("b_loop",))
    toy("b_loop", ("a_loop",))
    with pytest.raises(ValueError, match="cycle: a_loop, b_loop"):
        ordered_stages()
    STAGE_REGISTRY.unregister("a_loop")
    STAGE_REGISTRY.unregister("b_loop")
    toy("dangling", ("nowhere",))
    with pytest.raises(ValueError, match=r"'dangling' depends on unknown stage\(s\) \['nowhere'\]"):
        ordered_stages()
