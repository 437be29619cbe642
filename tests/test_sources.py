"""Unlabelled face sources: SynthFaces, prepared user faces and their mix, by index and as training streams."""
import numpy as np
import pytest
import tensorflow as tf

from face_transfer.data import synth, synth_datasets
from face_transfer.data.config import FacesConfig
from face_transfer.data.faces import FaceSet, prepare_faces
from face_transfer.data.sources import FaceSetSource, MixedSource, SynthSource

S = 32
CFG = synth.SynthConfig(image_size=S)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    synth_datasets.write_face_folder(CFG, str(root / "photos"), 30, stream="src", quality=100)
    prepare_faces(FacesConfig(sources=(str(root / "photos"),), image_size=S, shard_size=8), str(root / "out"),
                  progress=False)
    return FaceSetSource(FaceSet.open(str(root / "out")), seed=3)


def test_synth_source_matches_the_generator():
    src = SynthSource(CFG)
    np.testing.assert_array_equal(src.images(5, 9, "fusion"), synth.render_faces(CFG, np.arange(5, 9), stream="fusion")[0])
    assert src.count(10**6) == 10**6


def test_face_set_source_is_finite_and_keeps_parity_apart_from_calibration(real):
    assert real.count(1000) == 30
    calib, parity = real.images(0, 10, "calibration"), real.images(0, 10, "parity")
    np.testing.assert_array_equal(parity, real.face_set.read(20, 30))
    assert not any((c == p).all() for c in calib for p in parity)
    with pytest.raises(ValueError, match="30 prepared faces"):
        real.images(25, 31, "fusion")


def test_mixed_source_interleaves_at_the_asked_fraction(real):
    mix = MixedSource(real, SynthSource(CFG), 0.25)
    # 30 real faces at 25% allow 123 positions (floor(123 * 0.25) = 30 real)
    assert mix.count(10**6) == 123 and mix.count(40) == 40
    images = mix.images(0, 40, "fusion")
    real_rows = [i for i in range(40) if np.floor((i + 1) * 0.25) > np.floor(i * 0.25)]
    assert len(real_rows) == 10
    np.testing.assert_array_equal(images[real_rows], real.face_set.read(0, 10))
    synth_rows = [i for i in range(40) if i not in real_rows]
    np.testing.assert_array_equal(images[synth_rows], synth.render_faces(CFG, np.arange(30), stream="fusion")[0])
    # any window equals the same rows of the whole range
    np.testing.assert_array_equal(mix.images(13, 27, "fusion"), images[13:27])


def test_mixed_stream_splits_each_batch_and_resumes(real):
    mix = MixedSource(real, SynthSource(CFG), 0.5)
    whole = list(mix.make_dataset(None, 0, 8, "distill").take(4).as_numpy_iterator())
    assert all(b.shape == (8, S, S, 3) for b in whole)
    resumed = next(iter(mix.make_dataset(None, 2, 8, "distill"))).numpy()
    np.testing.assert_array_equal(resumed, whole[2])
    real_part = list(real.make_dataset(None, 0, 4, "distill").take(4).as_numpy_iterator())
    np.testing.assert_array_equal(np.stack([b[:4] for b in whole]), np.stack(real_part))
    # per-position augmentation sees the stream positions
    aug = mix.make_dataset(None, 0, 8, "distill", augment_fn=lambda im, idx: (255 - im).astype(np.uint8))
    np.testing.assert_array_equal(next(iter(aug)).numpy(), 255 - whole[0])


def test_mixed_source_refuses_bad_fractions(real):
    for f in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="real_fraction"):
            MixedSource(real, SynthSource(CFG), f)
