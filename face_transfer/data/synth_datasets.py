"""SynthFaces written to disk in the public layouts users own (a face folder of JPEGs, CelebA, FER2013,
UTKFace): end-to-end tests, benchmarks and a new user's dry run of the file-driven pipeline.
"""
from __future__ import annotations

import csv
import os

import numpy as np
from PIL import Image

from face_transfer.data import synth
from face_transfer.data.readers.fer2013 import FER_EXPRESSIONS
from face_transfer.data.vocab import EXPRESSIONS

# CelebA attribute name -> (SynthFaces label, threshold for float labels or None for 0/1 ints)
CELEBA_ATTRIBUTES = {
    "Eyeglasses": ("glasses", None), "Wearing_Hat": ("hat", None), "Male": ("gender", None),
    "Smiling": ("smile", 0.5), "Mouth_Slightly_Open": ("mouth_open", 0.4), "No_Beard": ("beard", "not"),
    "Young": ("age", "young"),
}


def _render(cfg: synth.SynthConfig, start: int, n: int, stream: str, chunk: int = 512):
    for s in range(start, start + n, chunk):
        yield synth.render_faces(cfg, np.arange(s, min(start + n, s + chunk)), stream=stream)


def write_face_folder(cfg: synth.SynthConfig, out_dir: str, n: int, stream: str = "folder", per_dir: int = 1000,
                      quality: int = 92, start: int = 0) -> list[str]:
    """n JPEG faces under out_dir/<k>/face_<i>.jpg (at most per_dir per subfolder, like a photo dump)."""
    paths = []
    i = start
    for images, _ in _render(cfg, start, n, stream):
        for im in images:
            d = os.path.join(out_dir, f"{i // per_dir:04d}")
            os.makedirs(d, exist_ok=True)
            p = os.path.join(d, f"face_{i:07d}.jpg")
            Image.fromarray(im).save(p, quality=quality)
            paths.append(p)
            i += 1
    return paths


def write_celeba(cfg: synth.SynthConfig, root: str, n: int, stream: str = "celeba") -> str:
    """root/img_align_celeba/*.jpg, root/list_attr_celeba.txt (1/-1 attributes) and identity_CelebA.txt."""
    img_dir = os.path.join(root, "img_align_celeba")
    os.makedirs(img_dir, exist_ok=True)
    names, rows, ids = [], [], []
    i = 0
    for images, labels in _render(cfg, 0, n, stream):
        for j, im in enumerate(images):
            name = f"{i + 1:06d}.jpg"
            Image.fromarray(im).save(os.path.join(img_dir, name), quality=95)
            vals = []
            for attr, (key, rule) in CELEBA_ATTRIBUTES.items():
                v = labels[key][j]
                on = {None: bool(v), "not": not bool(v), "young": float(v) < 35.0}.get(rule) if not isinstance(rule, float) \
                    else float(v) > rule
                vals.append("1" if on else "-1")
            names.append(name)
            rows.append(vals)
            ids.append(int(labels["identity"][j]))
            i += 1
    with open(os.path.join(root, "list_attr_celeba.txt"), "w") as f:
        f.write(f"{len(names)}\n" + " ".join(CELEBA_ATTRIBUTES) + "\n")
        for name, vals in zip(names, rows):
            f.write(name + " " + " ".join(f"{v:>2}" for v in vals) + "\n")
    with open(os.path.join(root, "identity_CelebA.txt"), "w") as f:
        for name, ident in zip(names, ids):
            f.write(f"{name} {ident}\n")
    return root


def write_fer2013(cfg: synth.SynthConfig, path: str, n: int, stream: str = "fer2013") -> str:
    """FER2013's CSV: emotion (FER order), 48x48 gray pixels, Usage."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        i = 0
        for images, labels in _render(cfg, 0, n, stream):
            for im, e in zip(images, labels["expression"]):
                gray = np.asarray(Image.fromarray(im).convert("L").resize((48, 48), Image.BILINEAR))
                w.writerow([FER_EXPRESSIONS.index(EXPRESSIONS[int(e)]), " ".join(map(str, gray.reshape(-1))),
                            "Training" if i % 10 < 8 else "PublicTest"])
                i += 1
    return path


def write_utkface(cfg: synth.SynthConfig, out_dir: str, n: int, stream: str = "utkface") -> str:
    """UTKFace names: age_gender_race_date.jpg.chip.jpg (gender 0 = male as in UTKFace)."""
    os.makedirs(out_dir, exist_ok=True)
    i = 0
    for images, labels in _render(cfg, 0, n, stream):
        for j, im in enumerate(images):
            age = int(np.clip(round(float(labels["age"][j])), 1, 99))
            gender = 1 - int(labels["gender"][j])
            race = int(labels["identity"][j]) % 5
            Image.fromarray(im).save(os.path.join(out_dir, f"{age}_{gender}_{race}_2017{i:09d}.jpg.chip.jpg"),
                                     quality=95)
            i += 1
    return out_dir


def write_folder_csv(cfg: synth.SynthConfig, out_dir: str, n: int, columns=("face_shape",), stream: str = "adapt",
                     identity_column: str | None = "person", quality: int = 92) -> str:
    """n JPEG faces under out_dir/images/ and out_dir/labels.csv (`image`, the SynthFaces label `columns`, and the
    identity as `identity_column`): a labelled folder_csv dataset of any factor, e.g. one outside the task
    registry (face_shape, light_elevation) to try adapting a student to a task it never saw. Returns the CSV."""
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    csv_path = os.path.join(out_dir, "labels.csv")
    header = ["image", *columns] + ([identity_column] if identity_column else [])
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        i = 0
        for images, labels in _render(cfg, 0, n, stream):
            for k, im in enumerate(images):
                rel = f"images/face_{i:06d}.jpg"
                Image.fromarray(im).save(os.path.join(out_dir, rel), quality=quality)
                row = [rel] + [f"{float(labels[c][k]):.4f}" if np.asarray(labels[c]).dtype.kind == "f"
                               else int(labels[c][k]) for c in columns]
                w.writerow(row + ([int(labels["identity"][k])] if identity_column else []))
                i += 1
    return csv_path
