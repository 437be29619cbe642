"""dlib's face descriptor (a ResNet .dat file, with dlib's 5-point shape predictor beside it) as a numpy-callable
teacher: 5 landmarks on the whole aligned crop, the 150x150 face chip dlib aligns from them, the 128-d embedding.
"""
from __future__ import annotations

import os
import threading

import numpy as np

from face_transfer.core.errors import TeacherLoadError
from face_transfer.teachers.adapters import callable_teacher
from face_transfer.teachers.formats import TeacherFormat, register_format

PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"  # looked for next to the descriptor's file
DIM = 128


@register_format("dlib")
class DlibFormat(TeacherFormat):
    order = 50
    accepts = f"a dlib face descriptor .dat file (format=dlib, {PREDICTOR_FILE} beside it)"

    def load(self, path, ref):
        return load_dlib_descriptor(path, ref.name, ref.input_spec())


def load_dlib_descriptor(path, name: str, spec):
    """The descriptor in `path` (e.g. face_recognition_models' dlib_face_recognition_resnet_model_v1.dat) as a
    teacher; `spec` should give dlib's bytes at 150 px (scale 1, offset 0)."""
    import dlib  # an optional package (dlib-bin): needed only when a dlib teacher is loaded

    predictor_path = os.path.join(os.path.dirname(path), PREDICTOR_FILE)
    try:
        recognizer = dlib.face_recognition_model_v1(path)
    except Exception as e:
        raise TeacherLoadError(f"{path}: could not load dlib's face recognition model ({e})") from e
    try:
        predictor = dlib.shape_predictor(predictor_path)
    except Exception as e:
        raise TeacherLoadError(f"{predictor_path}: could not load dlib's 5-point shape predictor ({e})") from e
    # dlib's network keeps per-call state in its layers: one caller at a time (tf.numpy_function
    # may call from several threads).
    lock = threading.Lock()

    def descriptor(x):
        images = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        if len(images) == 0:
            return np.zeros((0, DIM), np.float32)
        with lock:
            chips = []
            for image in images:
                image = np.ascontiguousarray(image)
                # Our inputs are aligned face crops: the face box is the whole crop.
                box = dlib.rectangle(0, 0, image.shape[1] - 1, image.shape[0] - 1)
                chips.append(dlib.get_face_chip(image, predictor(image, box), size=150))
            vectors = recognizer.compute_face_descriptor(chips)
        return np.stack([np.asarray(v, np.float32) for v in vectors])

    descriptor.__qualname__ = "dlib_face_descriptor"
    teacher = callable_teacher(descriptor, DIM, name, spec)
    teacher.metadata.update({"path": path, "shape_predictor": predictor_path})
    return teacher
