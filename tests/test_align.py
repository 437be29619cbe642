"""Tests for face_transfer.data.align: the Umeyama warp on known geometry, MTCNN on real faces from skimage."""
import numpy as np
import pytest
from PIL import Image

from face_transfer.data import align
from face_transfer.data.readers import folder_csv
from face_transfer.data.imageio import DataError, NoFaceError
from face_transfer.data.vocab import LANDMARK_NAMES

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def detector():
    return align.get_detector()


@pytest.fixture(scope="module")
def astronaut():
    return skimage_data.astronaut()


def _noise(seed=0, size=96):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------- geometry (no detector)


def test_similarity_transform_recovers_known_motion():
    rng = np.random.default_rng(1)
    src = rng.random((5, 2)) * 100
    angle, scale, shift = 0.4, 1.7, np.array([12.0, -5.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ (scale * rot).T + shift
    matrix = align.similarity_transform(src, dst)
    np.testing.assert_allclose(matrix[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)
    # mirrored points: the best similarity must not flip the face (det > 0)
    mirrored = dst * np.array([-1.0, 1.0])
    assert np.linalg.det(align.similarity_transform(src, mirrored)[:, :2]) > 0
    with pytest.raises(ValueError, match="one place"):
        align.similarity_transform(np.ones((5, 2)), dst)


@pytest.mark.parametrize("face_side", [90.0, 420.0])  # 420 px exercises the antialiased pre-shrink
def test_align_face_puts_landmarks_on_template(face_side):
    size = 64
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centred = (align.CANONICAL_LANDMARKS - 0.5) * face_side
    points = centred @ rot.T + np.array([260.0, 250.0])
    yy, xx = np.mgrid[0:520, 0:520]
    photo = np.zeros((520, 520, 3), np.uint8)
    radius = face_side / 30
    for k, (x, y) in enumerate(points):
        photo[(xx - x) ** 2 + (yy - y) ** 2 <= radius**2, k % 3] = 255
    crop = align.align_face(photo, points, size=size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    ys, xs = np.mgrid[0:size, 0:size]
    for k, (tx, ty) in enumerate(align.template_points(size)):
        near = (xs - tx) ** 2 + (ys - ty) ** 2 <= 4**2
        chan = crop[:, :, k % 3].astype(np.float64) * near
        assert chan.sum() > 0, f"landmark {LANDMARK_NAMES[k]} did not reach the template"
        cx, cy = (chan * xs).sum() / chan.sum(), (chan * ys).sum() / chan.sum()
        assert abs(cx - tx) < 0.75 and abs(cy - ty) < 0.75
    assert align.alignment_residual(points, size) < 1e-6


def test_align_face_rejects_bad_input(astronaut):
    with pytest.raises(ValueError, match=r"\[5, 2\]"):
        align.align_face(astronaut, np.zeros((4, 2)))
    with pytest.raises(DataError, match="uint8"):
        align.align_face(astronaut.astype(np.float32), np.zeros((5, 2)))


# ---------------------------------------------------------------- MTCNN on real faces


def test_detector_is_cached(detector):
    assert align.get_detector() is detector


def test_detect_and_align_astronaut(detector, astronaut):
    faces = align.detect_faces(astronaut)
    assert len(faces) == 1
    box, score, landmarks = faces[0]
    assert score > 0.99 and landmarks.shape == (5, 2)
    assert (landmarks[:, 0] > box[0]).all() and (landmarks[:, 0] < box[2]).all()
    assert landmarks[0, 0] < landmarks[1, 0]  # left_eye is the image's left
    assert landmarks[3, 0] < landmarks[4, 0] and landmarks[2, 1] < landmarks[3, 1]
    # a frontal face fits the 5-point template to within a few crop pixels
    assert align.alignment_residual(landmarks, 64) < 3.0

    crop = align.align_face(astronaut, landmarks, size=64)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    # re-detect on the aligned crop (at 128 px so MTCNN has room): the eyes land on the template
    again = align.detect_faces(align.align_face(astronaut, landmarks, size=128), min_score=0.5)
    assert len(again) == 1
    eyes = again[0].landmarks[:2] / 128
    np.testing.assert_allclose(eyes, align.CANONICAL_LANDMARKS[:2], atol=0.03)


def test_lfw_crops_are_found(detector):
    faces = skimage_data.lfw_subset()[:3]  # the first 100 of the subset are faces (25x25 gray floats)
    for face in faces:
        big = np.asarray(Image.fromarray((face * 255).astype(np.uint8)).resize((100, 100), Image.Resampling.BILINEAR))
        assert len(align.detect_faces(big)) >= 1


def test_no_face_names_the_file(detector, tmp_path):
    path = tmp_path / "noise.png"
    Image.fromarray(_noise()).save(path)
    with pytest.raises(NoFaceError, match=r"noise\.png: no face found"):
        align.align_photos([str(path)])
    blank = np.zeros((80, 80, 3), np.uint8)
    assert align.detect_faces(blank) == []
    with pytest.raises(DataError, match=r"photo\[0\]: no face found"):
        align.align_photos([blank])


def test_align_photos_skip_mode(detector, astronaut, tmp_path):
    noise_path = tmp_path / "noise.png"
    Image.fromarray(_noise(1)).save(noise_path)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    with pytest.warns(UserWarning, match="skipped 2"):
        crops, report = align.align_photos(
            [str(noise_path), astronaut, str(tmp_path / "broken.jpg")], size=32, on_error="skip"
        )
    assert crops.shape == (1, 32, 32, 3)
    assert report.kept_sources == ["photo[1]"]
    assert report.skipped_by_kind() == {"no_face": 1, "unreadable_image": 1}


def test_reader_with_align(detector, astronaut, tmp_path):
    Image.fromarray(astronaut).save(tmp_path / "astronaut.png")
    Image.fromarray(_noise(2)).save(tmp_path / "noise.png")
    (tmp_path / "faces.csv").write_text("image,smile\nastronaut.png,1\nnoise.png,0\n")
    with pytest.raises(DataError, match=r"faces\.csv line 3: .*noise\.png: no face found"):
        folder_csv.read_image_folder_csv(tmp_path, tmp_path / "faces.csv", align=True)
    with pytest.warns(UserWarning, match="no_face=1"):
        images, labels, report = folder_csv.read_image_folder_csv(
            tmp_path, tmp_path / "faces.csv", align=True, on_error="skip"
        )
    assert images.shape == (1, 64, 64, 3) and labels["smile"].tolist() == [1]
    np.testing.assert_array_equal(images[0], align.align_largest_face(astronaut, size=64))
