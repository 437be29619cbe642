"""face_transfer.core and face_transfer.configs import without TensorFlow, Keras or onnx: a config can be read,
written and checked, and the shared layer used, on a machine (or in a process) that has none of them."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_BLOCKED_IMPORTS = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = ("tensorflow", "keras", "tf_keras", "onnx", "onnxruntime", "tensorflow_model_optimization")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
""")


def _run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCKED_IMPORTS + textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_the_blocker_blocks():
    out = _run_blocked("import tensorflow")
    assert out.returncode != 0 and "blocked in this test" in out.stderr


def test_core_and_configs_import_without_tensorflow():
    out = _run_blocked("""
        import pkgutil, importlib
        import face_transfer.core
        for m in pkgutil.iter_modules(face_transfer.core.__path__):
            importlib.import_module("face_transfer.core." + m.name)
        from face_transfer.configs import ExperimentConfig, preset_config
        for name in ("smoke", "demo"):
            cfg = preset_config(name)
            assert ExperimentConfig.from_json(cfg.to_json()) == cfg
        print("ok")
    """)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
