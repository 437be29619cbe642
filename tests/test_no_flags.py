"""The library never reads absl flags: only trainers/ and export/ scripts parse them."""
import ast
import os

LIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "face_transfer")


def _sources():
    for root, _, files in os.walk(LIB):
        for f in files:
            if f.endswith(".py"):
                yield os.path.join(root, f)


def _flag_imports(path):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name == "absl.flags" or a.name.startswith("absl.flags.")]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "absl" and any(a.name == "flags" for a in node.names):
                bad.append("from absl import flags")
            if node.module == "absl.flags" or node.module.startswith("absl.flags."):
                bad.append(f"from {node.module} import ...")
    return bad


def test_library_has_sources():
    files = list(_sources())
    assert len(files) >= 20
    assert any(p.endswith(os.path.join("teachers", "zoo.py")) for p in files)


def test_no_library_module_imports_absl_flags():
    offenders = {os.path.relpath(p, LIB): b for p in _sources() if (b := _flag_imports(p))}
    assert not offenders, f"library modules import absl flags: {offenders}"


def test_no_library_module_reads_FLAGS():
    offenders = []
    for p in _sources():
        with open(p, encoding="utf-8") as f:
            text = f.read()
        if "FLAGS." in text or "flags.FLAGS" in text:
            offenders.append(os.path.relpath(p, LIB))
    assert not offenders, f"library modules read FLAGS: {offenders}"


def test_detector_catches_flag_imports(tmp_path):
    # The checker itself must be able to fail.
    p = tmp_path / "m.py"
    p.write_text("from absl import flags\nimport absl.flags\n")
    assert len(_flag_imports(str(p))) == 2
    p.write_text("from absl import logging\n")
    assert _flag_imports(str(p)) == []
