"""MTCNN (the `mtcnn` 1.0.0 wheel's P/R/O-Nets, the detector of face_transfer.data.align) as TFLite files
for on-device detection, e.g. the browser page of face_transfer.deploy.web.

Owns convert_mtcnn and PNET_CANVASES.

LiteRT.js cannot resize a model's inputs, and P-Net runs on every level of an image pyramid whose sizes
depend on the photo. So P-Net is converted at a few fixed square "canvas" sizes; a pyramid level is
placed in the top-left corner of the smallest canvas that holds it. P-Net is fully convolutional with
'valid' convolutions, so every output cell that lies inside the level only sees level pixels, except
through its one 'same'-padded 2x2 max pool: on a level of odd width (or height) the pool's last
window reaches one column past the level, where TensorFlow pads with -inf. The converted P-Net
therefore takes a second input, a 0/1 mask of the conv1 output positions inside the level, and sets
the outside positions to -1e9 before the pool: the canvas run then equals the run on the level alone.
R-Net (24x24) and O-Net (48x48) are converted with batch 1. Everything stays float32 (the detector is
1 % of the work and its boxes feed the alignment).
"""
from __future__ import annotations

import json
import os

from face_transfer.core.fileio import write_bytes
from face_transfer.data.align import get_detector


# Square canvas sides for P-Net (even, so the canvas itself never needs the pool's padding). The largest
# pyramid level of a photo downscaled to align.MAX_DETECT_SIDE (1024) at min_face_size 20 is 615 px.
PNET_CANVASES = (24, 32, 48, 64, 96, 128, 192, 256, 320, 384, 448, 512, 640)
_MASK_FILL = -1.0e9


def mtcnn_stage_models():
    """The mtcnn package's P-Net, R-Net and O-Net Keras models, as the detector the data layer uses holds them."""
    det = get_detector()
    return [s._model for s in det.stages]  # PNet, RNet, ONet (mtcnn.network.*)


def _pnet_canvas_model(pnet, side: int):
    import keras

    image = keras.Input((side, side, 3), batch_size=1, name="image")
    mask = keras.Input((side - 2, side - 2, 1), batch_size=1, name="mask")
    x = pnet.prelu1(pnet.conv1(image))
    x = x * mask + (mask - 1.0) * (-_MASK_FILL)
    x = pnet.maxpool1(x)
    x = pnet.prelu2(pnet.conv2(x))
    x = pnet.prelu3(pnet.conv3(x))
    return keras.Model([image, mask], {"reg": pnet.conv4_1(x), "prob": pnet.conv4_2(x)})


def _fixed_model(net, side: int, names):
    import keras

    image = keras.Input((side, side, 3), batch_size=1, name="image")
    outs = net(image)
    return keras.Model(image, dict(zip(names, outs)))


def _to_tflite(model) -> bytes:
    import contextlib
    import io

    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with contextlib.redirect_stdout(io.StringIO()):  # Keras prints every traced signature
        return conv.convert()


def convert_mtcnn(out_dir: str, canvases=PNET_CANVASES) -> dict:
    """Writes pnet_<side>.tflite for each canvas side, rnet.tflite, onet.tflite and mtcnn.json (the list
    of files, their input/output names and the cascade's parameters) into out_dir; returns the manifest.

    Files that already exist with the manifest's sizes are kept (conversion takes ~1 s per file)."""
    os.makedirs(out_dir, exist_ok=True)
    manifest_path = os.path.join(out_dir, "mtcnn.json")
    manifest = {
        "source": "mtcnn 1.0.0 (pip wheel weights), converted by face_transfer.deploy.detector_tflite",
        "pnet": {str(s): f"pnet_{s}.tflite" for s in canvases},
        "rnet": "rnet.tflite", "onet": "onet.tflite",
        "pnet_inputs": ["image", "mask"], "pnet_outputs": ["reg", "prob"],
        "rnet_outputs": ["reg", "prob"], "onet_outputs": ["reg", "landmarks", "prob"],
        "normalize": {"offset": 127.5, "scale": 1.0 / 128},
        # mtcnn's defaults (StagePNet/StageRNet/StageONet.__call__)
        "params": {"min_face_size": 20, "min_size": 12, "scale_factor": 0.709, "threshold_pnet": 0.6,
                   "nms_pnet1": 0.5, "nms_pnet2": 0.7, "threshold_rnet": 0.7, "nms_rnet": 0.7,
                   "threshold_onet": 0.8, "nms_onet": 0.7},
    }
    files = list(manifest["pnet"].values()) + ["rnet.tflite", "onet.tflite"]
    if os.path.exists(manifest_path) and all(os.path.exists(os.path.join(out_dir, f)) for f in files):
        with open(manifest_path) as f:
            if json.load(f) == manifest:
                return manifest
    pnet, rnet, onet = mtcnn_stage_models()
    for side in canvases:
        data = _to_tflite(_pnet_canvas_model(pnet, side))
        _write(os.path.join(out_dir, f"pnet_{side}.tflite"), data)
    _write(os.path.join(out_dir, "rnet.tflite"), _to_tflite(_fixed_model(rnet, 24, ("reg", "prob"))))
    _write(os.path.join(out_dir, "onet.tflite"),
           _to_tflite(_fixed_model(onet, 48, ("reg", "landmarks", "prob"))))
    _write(manifest_path, json.dumps(manifest, indent=1).encode())
    return manifest


def _write(path: str, data: bytes) -> None:
    write_bytes(path, data)  # two processes may fill the same cache
