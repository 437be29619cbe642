"""A student bundle: what the export stage leaves next to the deployable files (`<run>/export/`) and what
face-transfer-adapt reads and writes: the Keras student (`student.keras`), the view its heads read
(`bundle.json`: "ladder" or "embedding"), and the analyser's heads (`analyzer_heads.npz` parameters,
`analyzer_heads.json` names, classes, units, training data). The file names are core.runpaths.ExportPaths.

Also the one text format that says what data a head was fitted on (trained_on_text writes it into output
descriptions, trained_on_from_description reads it back). Importing this module imports no TensorFlow.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from face_transfer.core.fileio import atomic_output, read_json, save_npz, write_json
from face_transfer.core.runpaths import ExportPaths, RunPaths

BUNDLE_FORMAT = 1
# what a head was fitted on, shown next to it by face-transfer-infer and the browser page
SYNTHETIC_DOMAIN = "synthetic (SynthFaces)"
SYNTHETIC_SUFFIX = ", synthetic faces only: check it on real photos, or adapt on yours"


class BundleError(ValueError):
    """A student folder that is missing a file or comes from an incompatible version; the message names it."""


@dataclasses.dataclass
class StudentBundle:
    """The student, the view its heads read and its heads, as loaded from an export folder."""
    student: object  # keras.Model: uint8 image -> code
    view: str
    heads: dict  # {output name: head parameters (evaluation.heads.fit_head)}
    heads_meta: dict  # {output name: {"kind", "classes", "units", "task", "trained_on", ...}}
    path: str
    run_dir: str | None = None  # the run the bundle came from, when its data is at hand (forgetting)

    @property
    def image_size(self) -> int:
        return int(self.student.inputs[0].shape[1])

    def features_model(self):
        from face_transfer.student.model import feature_model
        return feature_model(self.student, self.view)

    def features(self, images, batch: int = 256) -> np.ndarray:
        out = self.features_model().predict(images, batch_size=batch, verbose=0)
        return np.asarray(out["features"], np.float32)


def save_bundle(out_dir: str, student, view: str, heads: dict, heads_meta: dict, extra: dict | None = None) -> list[str]:
    """Write a student bundle into `out_dir` (the export folder); returns the files written."""
    from face_transfer import __version__
    os.makedirs(out_dir, exist_ok=True)
    files = ExportPaths(out_dir)
    with atomic_output(files.student_keras, suffix=".keras") as tmp:
        student.save(tmp)
    arrays = {}
    for name, params in heads.items():
        for k, v in params.items():
            if isinstance(v, np.ndarray):
                arrays[f"{name}/{k}"] = v
    save_npz(files.heads_npz, **arrays)
    scalars = {name: {k: v for k, v in params.items() if not isinstance(v, np.ndarray)}
               for name, params in heads.items()}
    write_json(files.heads_json, heads_meta)
    write_json(files.bundle_json, {
        "format": BUNDLE_FORMAT, "face_transfer": __version__, "view": view,
        "image_size": int(student.inputs[0].shape[1]), "code_dim": int(student.outputs[0].shape[-1]),
        "heads": scalars, **(extra or {})})
    return [files.student_keras, files.heads_npz, files.heads_json, files.bundle_json]


def load_bundle(path: str) -> StudentBundle:
    """The bundle of an export folder, or of a run directory (its `export/`). BundleError names what is wrong."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise BundleError(f"{path}: not a directory; expected a finished run directory or its export/ folder")
    run_dir = None
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(RunPaths(path).config_json) and os.path.isdir(RunPaths(path).export_dir):
        run_dir, path = path, RunPaths(path).export_dir
    elif os.path.exists(RunPaths(parent).config_json):
        run_dir = parent
    files = ExportPaths(path)
    if not os.path.exists(files.bundle_json):
        raise BundleError(f"{files.bundle_json}: missing; {path} is not a student folder written by face-transfer's "
                          "export stage (runs exported before the adapt release: rerun the export stage with "
                          "`face-transfer --run_dir=<run> --until=export` after deleting <run>/export)")
    info = read_json(files.bundle_json)
    if info.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{files.bundle_json}: bundle format {info.get('format')!r} (face-transfer "
                          f"{info.get('face_transfer', '?')}); this version reads format {BUNDLE_FORMAT}")
    for f in (files.student_keras, files.heads_npz, files.heads_json):
        if not os.path.exists(f):
            raise BundleError(f"{f}: missing from the student folder {path}")
    from face_transfer.integrity import load_keras_model
    student = load_keras_model(files.student_keras, "student model")
    heads: dict = {name: dict(scalars) for name, scalars in info.get("heads", {}).items()}
    with np.load(files.heads_npz) as z:
        for key in z.files:
            name, field = key.split("/", 1)
            heads.setdefault(name, {})[field] = z[key]
    return StudentBundle(student, info["view"], heads, read_json(files.heads_json), path, run_dir)


def trained_on_text(meta: dict) -> str:
    t = meta.get("trained_on")
    if not t:
        return "training data not recorded"
    what = f"fitted on {t.get('images', '?')} images of {t.get('dataset', '?')} ({t.get('domain', '?')})"
    return what + (SYNTHETIC_SUFFIX if t.get("synthetic") else "")


def trained_on_from_description(description: str) -> dict | None:
    """{"dataset", "images", "domain", "synthetic"} parsed back from an output description that ends with
    trained_on_text ("fitted on N images of DATASET (DOMAIN)[, synthetic faces only: ...]"),
    as the export stage writes it into the TFLite metadata; None when the description has no such text."""
    i = (description or "").find("fitted on ")
    if i < 0:
        return None
    text = description[i:].strip()
    synthetic = text.endswith(SYNTHETIC_SUFFIX)
    if synthetic:
        text = text[: -len(SYNTHETIC_SUFFIX)]
    head, sep, rest = text[len("fitted on "):].partition(" images of ")
    if not sep or not rest.endswith(")"):
        return None
    depth = 0  # the domain is the last balanced (...) group: it may hold parentheses itself
    for j in range(len(rest) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(rest[j], 0)
        if depth == 0:
            break
    if depth != 0 or j == 0:
        return None
    domain, dataset = rest[j + 1: -1], rest[:j].rstrip()
    return {"dataset": dataset, "images": int(head) if head.isdigit() else None, "domain": domain,
            "synthetic": synthetic or domain.startswith("synthetic")}


def analyzer_outputs_metadata(heads_meta: dict, code_dim: int) -> dict:
    """The TFLite metadata entry of every analyser output: the code, then each head with its kind, classes,
    units and the data it was fitted on (trained_on_text in its description)."""
    outputs = {"embedding": {"kind": "embedding", "description": f"facial code, {code_dim} floats"}}
    for k, v in heads_meta.items():
        outputs[k] = {"kind": v["kind"], "classes": v.get("classes"), "units": v.get("units"),
                      "trained_on": v.get("trained_on"),
                      "description": ", ".join(x for x in (v["kind"], v.get("task") and f"task {v['task']}",
                                                           v.get("units"), trained_on_text(v)) if x)}
    return outputs
