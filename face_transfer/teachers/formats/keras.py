"""Keras model files (.keras zip archives, .h5/.hdf5) as teachers: detection by extension or magic bytes, and
the loader (safe_mode stays on unless the ref is trusted).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile

import keras

from face_transfer.core.errors import TeacherLoadError
from face_transfer.teachers.adapters import Teacher, keras_feature_model, require_file
from face_transfer.teachers.config import InputSpec
from face_transfer.teachers.formats import TeacherFormat, register_format

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"


@register_format("keras")
class KerasFormat(TeacherFormat):
    order = 10
    extensions = (".keras", ".h5", ".hdf5")
    accepts = "a .keras/.h5/.hdf5 file"

    def sniff(self, path, head):
        return head.startswith(ZIP_SIGNATURE) or head == HDF5_SIGNATURE

    def load(self, path, ref):
        return load_keras_teacher(path, ref.output, name=ref.name, spec=ref.input_spec(), pool=ref.pool,
                                  trusted=ref.trusted)


def load_keras_teacher(path, feature_layer: str | None, name: str | None = None, spec: InputSpec = InputSpec(), pool: str | None = "avg", trusted: bool = False) -> Teacher:
    """A `.keras` or `.h5` model file as a frozen teacher (safe_mode stays on unless `trusted`)."""
    what = "a Keras model file (.keras zip archive or .h5/.hdf5)"
    path = require_file(path, what)
    own_ext = ext = os.path.splitext(path)[1].lower()
    if ext not in (".keras", ".h5", ".hdf5"):
        # A model file saved under another name (e.g. a content-addressed copy): go by its magic bytes.
        with open(path, "rb") as f:
            head = f.read(8)
        ext = ".keras" if head.startswith(ZIP_SIGNATURE) else ".h5" if head == HDF5_SIGNATURE else ext
    if ext == ".keras":
        if not zipfile.is_zipfile(path):
            raise TeacherLoadError(f"{path}: not a valid .keras archive (not a zip file, or truncated); expected {what}")
    elif ext in (".h5", ".hdf5"):
        with open(path, "rb") as f:
            if f.read(8) != HDF5_SIGNATURE:
                raise TeacherLoadError(f"{path}: not an HDF5 file; expected {what}")
    else:
        raise TeacherLoadError(f"{path}: unknown extension {ext!r}; expected {what}")
    try:
        if ext == own_ext:
            model = keras.models.load_model(path, compile=False, safe_mode=not trusted)
        else:
            # keras.models.load_model picks the format by extension only: load through a named link.
            tmp = tempfile.mkdtemp(prefix="teacher_")
            try:
                link = os.path.join(tmp, "model" + ext)
                os.symlink(os.path.abspath(path), link)
                model = keras.models.load_model(link, compile=False, safe_mode=not trusted)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except Exception as e:
        raise TeacherLoadError(f"{path}: could not load the Keras model ({type(e).__name__}: {e})") from e
    name = name or os.path.splitext(os.path.basename(path))[0]
    model.trainable = False
    feature_model, dim = keras_feature_model(model, feature_layer, pool, spec, path, name)
    return Teacher(
        name, spec, dim, feature_model=feature_model,
        metadata={"source": "keras_file", "path": os.path.abspath(path), "feature_layer": feature_layer,
                  "pool": pool, "params": int(model.count_params())},
    )
