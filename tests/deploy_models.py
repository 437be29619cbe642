"""Small models and images shared by the deployment tests (SavedModel, TFLite, metadata, ONNX)."""
import keras
import numpy as np

from face_transfer.student.config import StudentConfig
from face_transfer.student.model import build_student

CFG = StudentConfig(input_size=32, width=0.25, embedding_dim=16)


def smooth_images(n, size=32, seed=0):
    """Random smooth colour fields: cheap stand-ins for faces with realistic pixel statistics."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(n, 4, 4, 3))
    fine = np.repeat(np.repeat(coarse, size // 4, axis=1), size // 4, axis=2)
    return np.clip(128 + 60 * fine + rng.normal(0, 8, fine.shape), 0, 255).astype(np.uint8)


def calibrated_student(cfg: StudentConfig = CFG, seed: int | None = 0):
    """An untrained student whose BN statistics match the data (one training pass with momentum 0), so its
    outputs have a realistic scale. seed=None keeps the current random state."""
    if seed is not None:
        keras.utils.set_random_seed(seed)
    model = build_student(cfg)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0
    model(smooth_images(32, size=cfg.input_size, seed=1).astype(np.float32), training=True)
    for layer in bns:
        layer.momentum = 0.99
    return model
