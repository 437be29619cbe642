"""core.registry.Registry: decorator registration, lookups that list the names, built-ins found in a package."""
import os
import sys

import pytest

from face_transfer.core.registry import Registry, UnknownNameError


def test_register_get_and_a_clear_error_for_an_unknown_name():
    r = Registry("widget")

    @r.register("b")
    class B:
        pass

    r.register("a", object())
    assert r.get("b") is B and r.names() == ("a", "b") and "a" in r and len(r) == 2
    with pytest.raises(UnknownNameError, match=r"unknown widget 'c'; expected one of: a, b"):
        r.get("c")
    r.unregister("a")
    assert r.names() == ("b",)


def test_a_name_registered_twice_by_different_objects_is_refused():
    r = Registry("widget")
    r.register("x", int)
    r.register("x", int)  # the same object again (a module imported twice) is fine
    with pytest.raises(ValueError, match="widget 'x' is registered twice"):
        r.register("x", float)


def test_built_ins_are_the_modules_of_the_package_and_names_do_not_depend_on_import_order(tmp_path, monkeypatch):
    pkg = tmp_path / "toyplugins"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from face_transfer.core.registry import Registry\nR = Registry('toy', "
                                     "package='toyplugins')\n")
    for name in ("zeta", "alpha", "_private"):
        (pkg / f"{name}.py").write_text(f"from toyplugins import R\nR.register({name.strip('_')!r}, {name!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import toyplugins
        import toyplugins.zeta  # noqa: F401  (imported first: registered first)
        assert toyplugins.R.names() == ("alpha", "zeta")  # _private is not a built-in
        assert toyplugins.R.get("alpha") == "alpha"
    finally:
        for m in [m for m in sys.modules if m == "toyplugins" or m.startswith("toyplugins.")]:
            del sys.modules[m]
    assert os.path.exists(pkg / "_private.py")


def test_register_instance_names_the_object_and_ordered_sorts_by_its_order():
    r = Registry("mode")

    @r.register_instance("late")
    class Late:
        order = 2

    @r.register_instance("early")
    class Early:
        order = 1

    assert [o.name for o in r.ordered()] == ["early", "late"] and isinstance(r.get("late"), Late)
