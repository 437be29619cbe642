"""Writes what a user brings, from SynthFaces renders and zoo teachers, as files only: teacher models
(.keras, .onnx through tf2onnx, .tflite), a CelebA folder, a FER2013 CSV and a face folder with bad files."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from face_transfer.data import synth, synth_datasets
from face_transfer.teachers import zoo
from face_transfer.teachers.config import ZOO_PRESETS


def _tiny_trained(spec, steps, seed):
    """A zoo teacher briefly trained on its source task (or untrained when steps == 0)."""
    import keras
    keras.utils.set_random_seed(seed)
    model = zoo.build_teacher(spec, num_identities=100)
    if steps:
        from face_transfer.data.pipelines import make_stream_dataset
        from face_transfer.teachers.adapters import preprocess
        import tensorflow as tf
        keys = zoo.SOURCE_TASKS[spec.source_task]
        ds = make_stream_dataset(synth.SynthConfig(n_train_identities=100), 32, stream="user_files",
                                 label_keys=keys).map(
            lambda im, lab: (preprocess(im, spec.input_spec), zoo.targets_from_labels(spec, lab)))
        model.compile(optimizer=keras.optimizers.Adam(2e-3), loss=zoo.losses_for(spec))
        model.fit(ds.take(steps), epochs=1, verbose=0)
    return zoo.embedding_model(model)


def write_teacher_files(root: str, steps: int = 0) -> dict:
    """{name: (path, flag text)} for three zoo teachers saved as .keras, .onnx and .tflite."""
    import tensorflow as tf
    specs = {s.name: s for s in ZOO_PRESETS["smoke"]}
    os.makedirs(root, exist_ok=True)
    out = {}
    # recognition -> .keras (feature layer = the model's output)
    s = specs["recognition_resnet"]
    m = _tiny_trained(s, steps, 1)
    p = os.path.join(root, "face_id.keras")
    m.save(p)
    out["face_id"] = (p, f"face_id={p},size={s.input_size},channels=3,scale=0.00784313725,offset=-1,tasks=identity")
    # expression -> .onnx (tf2onnx from a SavedModel)
    s = specs["expression_vgg"]
    m = _tiny_trained(s, steps, 2)
    sm = os.path.join(root, "expr_savedmodel")
    m.export(sm, verbose=False)
    p = os.path.join(root, "expr.onnx")
    r = subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", sm, "--output", p, "--opset", "17"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    out["expr"] = (p, f"expr={p},output=output_0,size={s.input_size},channels=1,scale=0.00392156863,offset=0,"
                      "tasks=expression")
    # pose -> .tflite (float)
    s = specs["pose_xception"]
    m = _tiny_trained(s, steps, 3)
    conv = tf.lite.TFLiteConverter.from_keras_model(m)
    p = os.path.join(root, "pose.tflite")
    with open(p, "wb") as f:
        f.write(conv.convert())
    out["pose"] = (p, f"pose={p},size={s.input_size},channels=3,scale=0.00784313725,offset=-1,tasks=head_pose")
    return out


def write_face_folder_with_bad_files(root: str, n: int) -> dict:
    """n good JPEG faces in nested folders, plus a corrupt, a truncated and a zero-byte file."""
    synth_datasets.write_face_folder(synth.SynthConfig(), root, n, per_dir=max(1, n // 3))
    bad = os.path.join(root, "bad")
    os.makedirs(bad, exist_ok=True)
    with open(os.path.join(bad, "corrupt.jpg"), "wb") as f:
        f.write(b"this is not a jpeg" * 10)
    good = sorted(os.path.join(d, x) for d, _, fs in os.walk(root) for x in fs if x.startswith("face_"))[0]
    data = open(good, "rb").read()
    with open(os.path.join(bad, "truncated.jpg"), "wb") as f:
        f.write(data[: len(data) // 3])
    open(os.path.join(bad, "empty.jpg"), "wb").close()
    return {"good": n, "bad": 3}


def write_labelled_sets(root: str, n_celeba: int, n_fer: int) -> dict:
    celeba = synth_datasets.write_celeba(synth.SynthConfig(n_train_identities=40), os.path.join(root, "celeba"), n_celeba)
    fer = synth_datasets.write_fer2013(synth.SynthConfig(), os.path.join(root, "fer2013.csv"), n_fer)
    return {"celeba": celeba, "fer2013": fer}


def rng_images(n, size=64, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, size, size, 3), dtype=np.uint8)
