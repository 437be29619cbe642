"""tools/import_graph.py: what it counts on a toy package, and what it finds in face_transfer/."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import import_graph  # noqa: E402


def _write(root, rel, text):
    path = os.path.join(root, "face_transfer", rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


@pytest.fixture
def toy(tmp_path):
    root = str(tmp_path)
    _write(root, "__init__.py", "")
    _write(root, "core/__init__.py", "")
    _write(root, "core/util.py", "def f():\n    from face_transfer.teachers import t\n")  # upward, local
    _write(root, "data/__init__.py", "")
    _write(root, "data/a.py", "from face_transfer.data.b import _hidden, shown\n")
    _write(root, "data/b.py", "from face_transfer.data import a\n_hidden = shown = 1\n" + "x = 1\n" * 700)
    _write(root, "teachers/__init__.py", "")
    _write(root, "teachers/t.py", "from ..core import util\nutil._private()\n")
    return root


def test_counts_on_a_toy_package(toy):
    g = import_graph.build(toy)
    assert [m for m, _ in g.oversized()] == ["face_transfer.data.b"]
    cycles = g.cycles()
    assert ["face_transfer.data.a", "face_transfer.data.b"] in cycles
    assert ["face_transfer.core.util", "face_transfer.teachers.t"] in cycles  # a local import still counts
    up = g.upward()
    assert [(e.src, e.dst, e.local) for e in up] == [("face_transfer.core.util", "face_transfer.teachers.t", True)]
    assert sorted((p.src, p.name) for p in g.private) == [("face_transfer.data.a", "_hidden"),
                                                        ("face_transfer.teachers.t", "_private")]


def test_check_exits_non_zero_on_a_finding(toy):
    assert import_graph.main(["--root", toy, "--check"]) == 1
    assert import_graph.main(["--root", toy]) == 0


def test_runs_as_a_script():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "import_graph.py")],
                         capture_output=True, text=True, check=True).stdout
    assert "import cycles:" in out and "upward imports:" in out


def test_face_transfer_import_graph_is_clean():
    """No file over 700 lines, no import cycle, no upward import, no private name taken across modules."""
    assert import_graph.main(["--check"]) == 0


def test_core_imports_only_core():
    g = import_graph.build(ROOT)
    assert not [e for e in g.edges if e.src.startswith("face_transfer.core")
                and not e.dst.startswith("face_transfer.core")]
