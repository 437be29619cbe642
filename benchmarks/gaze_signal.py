"""Is gaze in the pixels of a 64x64 SynthFace? A ridge regression from the two aligned eye crops (8x10 gray
pixels around each ground-truth eye landmark) to gaze_x, on faces without sunglasses or closed eyes.

    .venv/bin/python -m benchmarks.gaze_signal

Measured 2026-11-30 (after the blink-rate change): R² 0.78 at difficulty 0 and 0.60 at the suite's
difficulty 1. The label is visible once the eye is located; yet no whole-face network of the student's
size learned it (README, Tasks), so the suite dropped the gaze task for hair_style. The generator still
renders and labels gaze_x / gaze_y.
"""
import numpy as np
from sklearn.linear_model import RidgeCV

from face_transfer.data import synth


def eye_crops(images, landmarks, half_h=4, half_w=5):
    size = images.shape[1]
    out = []
    for im, lm in zip(images, landmarks * size):
        feats = []
        for e in (0, 1):
            x, y = np.round(lm[e]).astype(int)
            x, y = np.clip(x, half_w, size - half_w), np.clip(y, half_h, size - half_h)
            feats.append(im[y - half_h:y + half_h, x - half_w:x + half_w].astype(np.float32).mean(-1).ravel())
        out.append(np.concatenate(feats))
    x = np.array(out)
    return (x - x.mean(0)) / (x.std(0) + 1e-3)


def main(n=4000, n_train=3000):
    for difficulty in (0.0, 1.0):
        images, lab = synth.render_faces(synth.SynthConfig(difficulty=difficulty), np.arange(n), stream="gaze_signal")
        x, y = eye_crops(images, lab["landmarks"]), lab["gaze_x"]
        keep = (lab["sunglasses"] == 0) & (lab["eyes_closed"] == 0)
        tr, te = keep & (np.arange(n) < n_train), keep & (np.arange(n) >= n_train)
        model = RidgeCV(alphas=[1, 10, 100, 1000]).fit(x[tr], y[tr])
        print(f"difficulty {difficulty}: eye-crop ridge R² for gaze_x = {model.score(x[te], y[te]):.2f} "
              f"({tr.sum()} train / {te.sum()} test faces)")


if __name__ == "__main__":
    main()
