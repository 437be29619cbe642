"""Tests for the dataset readers of face_transfer.data.readers on small fixtures written in each real format."""
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from face_transfer.data.readers import celeba, fer2013, folder_csv, tfrecord, utkface
from face_transfer.data.vocab import EXPRESSIONS
from face_transfer.data.imageio import DataError


def _rgb(seed, h=40, w=30):
    """A smooth colour image: survives JPEG well enough to compare by mean colour."""
    rng = np.random.default_rng(seed)
    base = rng.integers(30, 220, size=3)
    ramp = np.linspace(0, 30, w)[None, :, None]
    return np.clip(base[None, None, :] + ramp + np.zeros((h, 1, 1)), 0, 255).astype(np.uint8)


def _save(path, array, fmt=None):
    Image.fromarray(array).save(path, format=fmt)
    return path


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


# ---------------------------------------------------------------- image folder + CSV


@pytest.fixture
def csv_folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    _save(tmp_path / "imgs" / "a.png", _rgb(0))
    _save(tmp_path / "imgs" / "b.jpg", _rgb(1), "JPEG")
    _save(tmp_path / "imgs" / "c.png", _rgb(2)[:, :, 0])  # grayscale file
    _write(tmp_path / "labels.csv", "image,smile,age\nimgs/a.png,1,23.5\nimgs/b.jpg,0,40\nimgs/c.png,1,7\n")
    return tmp_path


def test_image_folder_csv_reads_images_and_typed_labels(csv_folder):
    images, labels, report = folder_csv.read_image_folder_csv(
        csv_folder, csv_folder / "labels.csv", image_size=16
    )
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    assert labels["smile"].dtype == np.int64 and labels["smile"].tolist() == [1, 0, 1]
    assert labels["age"].dtype == np.float32
    np.testing.assert_allclose(labels["age"], [23.5, 40.0, 7.0])
    assert report.n_kept == 3 and report.n_skipped == 0
    assert report.kept_sources[1].endswith("b.jpg")
    # centre crop + resize keeps the colour: row 0 is a.png's colour.
    np.testing.assert_allclose(images[0].reshape(-1, 3).mean(0), _rgb(0)[5:35].reshape(-1, 3).mean(0), atol=3)
    # the grayscale file became RGB with equal channels
    assert (images[2, :, :, 0] == images[2, :, :, 2]).all()


def test_image_folder_csv_explicit_types_and_selection(csv_folder):
    _, labels, _ = folder_csv.read_image_folder_csv(
        csv_folder, csv_folder / "labels.csv", label_columns={"smile": "float"}, image_size=8
    )
    assert list(labels) == ["smile"] and labels["smile"].dtype == np.float32


def test_image_folder_csv_missing_column_names_csv(csv_folder):
    with pytest.raises(DataError, match=r"labels\.csv: missing column\(s\) \['gender'\]"):
        folder_csv.read_image_folder_csv(csv_folder, csv_folder / "labels.csv", label_columns=["gender"])
    with pytest.raises(DataError, match="missing column.*'path'"):
        folder_csv.read_image_folder_csv(csv_folder, csv_folder / "labels.csv", image_column="path")


def test_image_folder_csv_wrong_label_type_names_line(csv_folder):
    _write(csv_folder / "bad.csv", "image,smile\nimgs/a.png,1\nimgs/b.jpg,yes\n")
    with pytest.raises(DataError, match=r"bad\.csv line 3: column 'smile' has 'yes', expected an int"):
        folder_csv.read_image_folder_csv(csv_folder, csv_folder / "bad.csv")
    # a float in a column declared int is an error, never a truncation
    _write(csv_folder / "bad2.csv", "image,smile\nimgs/a.png,1.5\n")
    with pytest.raises(DataError, match="line 2: column 'smile' has '1.5', expected an int"):
        folder_csv.read_image_folder_csv(csv_folder, csv_folder / "bad2.csv", label_columns={"smile": "int"})


def test_image_folder_csv_corrupt_and_truncated_images(csv_folder):
    _write(csv_folder / "imgs" / "corrupt.png", "this is not a png")
    jpeg = (csv_folder / "imgs" / "b.jpg").read_bytes()
    (csv_folder / "imgs" / "trunc.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    _write(csv_folder / "c.csv", "image,smile\nimgs/corrupt.png,1\n")
    _write(csv_folder / "t.csv", "image,smile\nimgs/a.png,0\nimgs/trunc.jpg,1\n")
    _write(csv_folder / "m.csv", "image,smile\nimgs/nothere.png,1\n")
    with pytest.raises(DataError, match=r"c\.csv line 2: .*corrupt\.png: not a readable image"):
        folder_csv.read_image_folder_csv(csv_folder, csv_folder / "c.csv")
    with pytest.raises(DataError, match=r"t\.csv line 3: .*trunc\.jpg: not a readable image"):
        folder_csv.read_image_folder_csv(csv_folder, csv_folder / "t.csv")
    with pytest.raises(DataError, match=r"nothere\.png: cannot open image file"):
        folder_csv.read_image_folder_csv(csv_folder, csv_folder / "m.csv")


def test_image_folder_csv_skip_mode_counts_and_warns(csv_folder):
    _write(csv_folder / "imgs" / "corrupt.png", "garbage")
    _write(
        csv_folder / "mixed.csv",
        "image,smile\nimgs/a.png,1\nimgs/corrupt.png,0\nimgs/b.jpg,maybe\n,1\nimgs/c.png,0\n",
    )
    with pytest.warns(UserWarning, match="skipped 3"):
        images, labels, report = folder_csv.read_image_folder_csv(
            csv_folder, csv_folder / "mixed.csv", on_error="skip", image_size=8
        )
    assert len(images) == 2 and labels["smile"].tolist() == [1, 0]
    assert report.skipped_by_kind() == {"unreadable_image": 1, "bad_label": 1, "missing_value": 1}
    assert [s.where.split()[-1] for s in report.skipped] == ["3", "4", "5"]


def test_image_folder_csv_all_rows_bad_still_raises(csv_folder):
    _write(csv_folder / "allbad.csv", "image,smile\nimgs/none.png,1\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="no usable items"):
            folder_csv.read_image_folder_csv(csv_folder, csv_folder / "allbad.csv", on_error="skip")


def test_bad_on_error_value(csv_folder):
    with pytest.raises(ValueError, match="on_error"):
        folder_csv.read_image_folder_csv(csv_folder, csv_folder / "labels.csv", on_error="ignore")


# ---------------------------------------------------------------- FER2013


def _fer_row(emotion, value, usage, n=2304):
    return f"{emotion},\"{' '.join([str(value)] * n)}\",{usage}\n"


def test_fer2013_reads_gray_as_rgb_and_filters_usage(tmp_path):
    path = _write(
        tmp_path / "fer2013.csv",
        "emotion,pixels,Usage\n" + _fer_row(3, 10, "Training") + _fer_row(6, 200, "PublicTest") + _fer_row(0, 90, "Training"),
    )
    images, labels, report = fer2013.read_fer2013_csv(path)
    assert images.shape == (3, 64, 64, 3) and images.dtype == np.uint8
    assert labels["expression"].tolist() == [3, 6, 0]
    assert labels["usage"].tolist() == ["Training", "PublicTest", "Training"]
    assert images[1].min() == 200 and images[1].max() == 200
    images, labels, _ = fer2013.read_fer2013_csv(path, usage="Training", image_size=48)
    assert images.shape == (2, 48, 48, 3) and labels["expression"].tolist() == [3, 0]


def test_fer_to_our_order():
    ours = fer2013.fer_to_our_expression(np.arange(7))
    assert [EXPRESSIONS[i] for i in ours] == list(fer2013.FER_EXPRESSIONS)
    assert EXPRESSIONS[fer2013.FER_TO_OURS[3]] == "happy"
    with pytest.raises(ValueError):
        fer2013.fer_to_our_expression(np.array([7]))


def test_fer2013_bad_pixel_count_and_label(tmp_path):
    path = _write(
        tmp_path / "fer.csv",
        "emotion,pixels,Usage\n" + _fer_row(1, 5, "Training") + _fer_row(2, 5, "Training", n=2300) + _fer_row(9, 5, "Training"),
    )
    with pytest.raises(DataError, match=r"fer\.csv line 3: pixels has 2300 values, expected 2304"):
        fer2013.read_fer2013_csv(path)
    with pytest.warns(UserWarning, match="skipped 2"):
        _, labels, report = fer2013.read_fer2013_csv(path, on_error="skip")
    assert labels["expression"].tolist() == [1]
    assert report.skipped_by_kind() == {"bad_pixels": 1, "bad_label": 1}
    assert "line 4: emotion '9', expected an int in 0..6" in report.skipped[1].message


def test_fer2013_missing_column(tmp_path):
    path = _write(tmp_path / "test.csv", "pixels\n\"1 2 3\"\n")
    with pytest.raises(DataError, match=r"test\.csv: missing column\(s\) \['emotion'\]"):
        fer2013.read_fer2013_csv(path)


# ---------------------------------------------------------------- CelebA


def _celeba(tmp_path, lines, count=None):
    (tmp_path / "img").mkdir(exist_ok=True)
    _save(tmp_path / "img" / "000001.jpg", _rgb(3, 218, 178), "JPEG")
    _save(tmp_path / "img" / "000002.jpg", _rgb(4, 218, 178), "JPEG")
    header = f"{len(lines) if count is None else count}\nSmiling Male Young \n"
    return _write(tmp_path / "list_attr_celeba.txt", header + "".join(lines)), str(tmp_path / "img")


def test_celeba_attributes(tmp_path):
    attr, img = _celeba(tmp_path, ["000001.jpg  1 -1  1\n", "000002.jpg -1  1 -1\n"])
    images, labels, report = celeba.read_celeba_attributes(attr, img, image_size=32)
    assert images.shape == (2, 32, 32, 3)
    assert labels == {"smiling": labels["smiling"], "male": labels["male"], "young": labels["young"]}
    assert labels["smiling"].tolist() == [1, 0] and labels["male"].tolist() == [0, 1]
    assert labels["young"].dtype == np.int64
    _, sub, _ = celeba.read_celeba_attributes(attr, img, attributes=["Male"], image_size=8)
    assert list(sub) == ["male"]


def test_celeba_malformed_line_and_count(tmp_path):
    attr, img = _celeba(tmp_path, ["000001.jpg  1 -1  1\n", "000002.jpg -1  0 -1\n"])
    with pytest.raises(DataError, match=r"list_attr_celeba\.txt line 4: expected an image file name and 3 values of 1/-1"):
        celeba.read_celeba_attributes(attr, img)
    with pytest.warns(UserWarning, match="skipped 1"):
        _, labels, report = celeba.read_celeba_attributes(attr, img, on_error="skip", image_size=8)
    assert labels["smiling"].tolist() == [1] and report.skipped_by_kind() == {"malformed_line": 1}
    attr, img = _celeba(tmp_path, ["000001.jpg  1 -1  1\n"], count=2)
    with pytest.raises(DataError, match="line 1 says 2 images but 1 image lines follow"):
        celeba.read_celeba_attributes(attr, img)
    with pytest.raises(ValueError, match="unknown CelebA attribute"):
        celeba.read_celeba_attributes(attr, img, attributes=["bald"])


# ---------------------------------------------------------------- UTKFace


def test_utkface_names_and_gender_flip(tmp_path):
    _save(tmp_path / "25_0_2_20170116174525125.jpg.chip.jpg", _rgb(5, 50, 50), "JPEG")
    _save(tmp_path / "61_1_0_20170109150557335.jpg", _rgb(6, 50, 50), "JPEG")
    _write(tmp_path / "notes.txt", "ignored: not an image")
    images, labels, report = utkface.read_utkface_folder(tmp_path, image_size=16)
    assert images.shape == (2, 16, 16, 3)
    assert labels["age"].tolist() == [25.0, 61.0] and labels["age"].dtype == np.float32
    # UTK gender 0 = male -> ours 1 = male; UTK 1 = female -> ours 0 = female
    assert labels["gender"].tolist() == [1, 0]
    assert labels["race"].tolist() == [2, 0]


def test_utkface_bad_name_and_empty_folder(tmp_path):
    _save(tmp_path / "25_0_2_20170116174525125.jpg.chip.jpg", _rgb(5), "JPEG")
    _save(tmp_path / "39_1_20170116174525125.jpg.chip.jpg", _rgb(6), "JPEG")  # race missing (as in the real set)
    with pytest.raises(DataError, match=r"39_1_20170116174525125\.jpg\.chip\.jpg: file name does not match UTKFace"):
        utkface.read_utkface_folder(tmp_path)
    with pytest.warns(UserWarning, match="bad_name=1"):
        _, labels, _ = utkface.read_utkface_folder(tmp_path, on_error="skip", image_size=8)
    assert labels["age"].tolist() == [25.0]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty: no image files found"):
        utkface.read_utkface_folder(empty)
    with pytest.raises(DataError, match="not a directory"):
        utkface.read_utkface_folder(tmp_path / "nope")


# ---------------------------------------------------------------- TFRecord


def test_tfrecord_round_trip_exact(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 16, 16, 3), dtype=np.uint8)
    labels = {
        "identity": np.array([3, 1, 4, 1]),
        "age": np.array([20.5, 31.0, 42.25, 8.0], np.float32),
        "landmarks": rng.random((4, 5, 2)).astype(np.float32),
        "pose": rng.random((4, 3)).astype(np.float32),
        "split": np.array(["train", "train", "test", "val"]),
    }
    path = str(tmp_path / "faces.tfrecord")
    assert tfrecord.write_tfrecord(path, images, labels) == 4
    got, got_labels, report = tfrecord.read_tfrecord(path, image_size=16)
    np.testing.assert_array_equal(got, images)
    assert set(got_labels) == set(labels)
    assert got_labels["identity"].dtype == np.int64 and got_labels["identity"].tolist() == [3, 1, 4, 1]
    np.testing.assert_array_equal(got_labels["age"], labels["age"])
    assert got_labels["landmarks"].shape == (4, 5, 2)
    np.testing.assert_array_equal(got_labels["landmarks"], labels["landmarks"])
    assert got_labels["pose"].shape == (4, 3)
    assert got_labels["split"].tolist() == ["train", "train", "test", "val"]
    assert report.kept_sources[2] == f"{path} record 2"
    # two files, selected keys, limit
    path2 = str(tmp_path / "more.tfrecord")
    tfrecord.write_tfrecord(path2, images[:2], {k: v[:2] for k, v in labels.items()}, image_format="jpeg")
    got, got_labels, _ = tfrecord.read_tfrecord([path, path2], label_keys=["age"], image_size=8, limit=5)
    assert got.shape == (5, 8, 8, 3) and list(got_labels) == ["age"]


def test_tfrecord_bad_records(tmp_path):
    import tensorflow as tf

    good = np.full((8, 8, 3), 100, np.uint8)
    path = str(tmp_path / "bad.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        def example(**features):
            return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()

        img = tf.io.encode_png(good).numpy()
        w.write(example(image=tf.train.Feature(bytes_list=tf.train.BytesList(value=[img])),
                        age=tf.train.Feature(int64_list=tf.train.Int64List(value=[30]))))
        w.write(example(image=tf.train.Feature(bytes_list=tf.train.BytesList(value=[img])),
                        age=tf.train.Feature(float_list=tf.train.FloatList(value=[31.5]))))
        w.write(example(image=tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"not an image"])),
                        age=tf.train.Feature(int64_list=tf.train.Int64List(value=[32]))))
        w.write(example(image=tf.train.Feature(bytes_list=tf.train.BytesList(value=[img]))))
    with pytest.raises(DataError, match=r"bad\.tfrecord record 1: feature 'age' is float_list .* expected int64_list"):
        tfrecord.read_tfrecord(path)
    with pytest.warns(UserWarning, match="skipped 3"):
        images, labels, report = tfrecord.read_tfrecord(path, on_error="skip", image_size=8)
    assert labels["age"].tolist() == [30]
    assert report.skipped_by_kind() == {"bad_label": 1, "unreadable_image": 1, "missing_value": 1}
    assert "record 2" in report.skipped[1].message and "not a readable image" in report.skipped[1].message

    # a truncated file: the CRC check fails, named by file and record
    whole = str(tmp_path / "whole.tfrecord")
    tfrecord.write_tfrecord(whole, np.stack([good] * 3), {"age": np.array([1, 2, 3])})
    data = open(whole, "rb").read()
    cut = str(tmp_path / "cut.tfrecord")
    open(cut, "wb").write(data[: len(data) - 10])
    with pytest.raises(DataError, match=r"cut\.tfrecord record 2: unreadable TFRecord data"):
        tfrecord.read_tfrecord(cut)
    with pytest.warns(UserWarning, match="corrupt_file=1"):
        _, labels, _ = tfrecord.read_tfrecord(cut, on_error="skip", image_size=8)
    assert labels["age"].tolist() == [1, 2]
    with pytest.raises(DataError, match="no such TFRecord file"):
        tfrecord.read_tfrecord(str(tmp_path / "absent.tfrecord"))


def test_write_tfrecord_rejects_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        tfrecord.write_tfrecord(str(tmp_path / "x.tfrecord"), np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="has 2 rows"):
        tfrecord.write_tfrecord(str(tmp_path / "x.tfrecord"), np.zeros((1, 4, 4, 3), np.uint8), {"a": np.zeros(2)})
    assert not os.path.exists(tmp_path / "x.tfrecord")  # validated before anything is written


def test_utkface_age_outside_0_120_is_a_bad_label_naming_the_file(tmp_path):
    from face_transfer.data.imageio import DataError
    from face_transfer.data.readers.utkface import read_utkface_folder
    _save(tmp_path / "25_0_2_20170116174525125.jpg.chip.jpg", _rgb(0))
    _save(tmp_path / "999_0_0_20170116174525126.jpg.chip.jpg", _rgb(1))
    with pytest.raises(DataError, match=r"999_0_0_.*age 999 in the file name is outside 0..120"):
        read_utkface_folder(tmp_path)
    with pytest.warns(UserWarning):
        images, labels, report = read_utkface_folder(tmp_path, on_error="skip")
    assert len(images) == 1 and report.skipped_by_kind() == {"bad_label": 1}
