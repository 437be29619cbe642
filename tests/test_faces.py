"""face_transfer.data.faces: enumeration, the resumable prepare pre-pass, FaceSet and the seeded face stream."""
import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from face_transfer.data import faces, synth
from face_transfer.data.config import FacesConfig
from face_transfer.data.faces import FaceSet, list_face_files, make_faces_dataset, prepare_faces
from face_transfer.data.imageio import DataError, center_square_resize, load_image
from face_transfer.data.readers.tfrecord import write_tfrecord

S = 32  # prepared crop side; inputs are 40x48 so the centre crop and the resize both do something


def _photos(n, start=0):
    images, _ = synth.render_faces(synth.SynthConfig(image_size=48), np.arange(start, start + n))
    return images[:, 4:44]  # 40 x 48: not square


def _write(path, image, fmt="JPEG"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return str(path)


def _crops(paths):
    return np.stack([center_square_resize(load_image(p), S) for p in paths])


def _folder(root, n, start=0):
    """n JPEGs spread over nested subfolders; returns their paths in sorted (= item) order."""
    paths = [_write(os.path.join(root, f"sub{i % 3}", "deeper" if i % 2 else "", f"f{i:03d}.jpg"), im)
             for i, im in enumerate(_photos(n, start))]
    return sorted(paths)


def _prepare(cfg, out, **kw):
    return prepare_faces(cfg, str(out), progress=False, **kw)


@pytest.fixture(scope="module")
def face_set(tmp_path_factory):
    """23 faces in shards of 5, 5, 5, 5, 3 (an uneven last shard) and their canonical crops."""
    root = tmp_path_factory.mktemp("stream")
    paths = _folder(str(root / "photos"), 23)
    prepare_faces(FacesConfig(sources=(str(root / "photos"),), image_size=S, shard_size=5), str(root / "out"),
                  progress=False)
    return FaceSet.open(str(root / "out")), _crops(paths)


def _ids(batches, crops):
    index = {c.tobytes(): i for i, c in enumerate(crops)}
    return np.array([index[im.tobytes()] for b in batches for im in b])


# --------------------------------------------------------------------------- enumeration + prepare


def test_folder_glob_and_tfrecords_in_sorted_item_order(tmp_path):
    a = tmp_path / "a"
    nested = [_write(str(a / "x" / "1.jpg"), _photos(1, 0)[0]),
              _write(str(a / "x" / "y" / "2.JPG"), _photos(1, 1)[0]),
              _write(str(a / "3.png"), _photos(1, 2)[0], "PNG")]
    _write(str(a / ".hidden.jpg"), _photos(1, 3)[0])            # hidden file: ignored
    _write(str(a / ".cache" / "4.jpg"), _photos(1, 4)[0])       # hidden folder: ignored
    (a / "notes.txt").write_text("not an image")
    globbed = [_write(str(tmp_path / "b" / f"{i}.png"), _photos(1, 5 + i)[0], "PNG") for i in range(2)]
    _write(str(tmp_path / "b" / "7.bmp"), _photos(1, 9)[0], "BMP")  # not matched by b/*.png
    records = _photos(3, 10)
    os.makedirs(tmp_path / "c")
    write_tfrecord(str(tmp_path / "c" / "faces.tfrecord"), records, {"age": np.arange(3)})
    gz_records = _photos(2, 13)
    os.makedirs(tmp_path / "d")
    with tf.io.TFRecordWriter(str(tmp_path / "d" / "more.tfrecord.gz"), options="GZIP") as w:
        for im in gz_records:
            png = faces._encode_png(im)
            w.write(tf.train.Example(features=tf.train.Features(feature={
                "img": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png]))})).SerializeToString())
    cfg = FacesConfig(sources=[str(a), str(tmp_path / "b" / "*.png"), str(tmp_path / "c" / "faces.tfrecord"),
                               str(tmp_path / "d" / "*.tfrecord.gz")], image_size=S, shard_size=4, image_key="img")
    assert isinstance(cfg.sources, tuple)
    files = list_face_files(cfg)
    assert files == sorted(nested) + globbed + [str(tmp_path / "c" / "faces.tfrecord"),
                                                str(tmp_path / "d" / "more.tfrecord.gz")]
    # The "img" key is only in the .gz file: the .tfrecord records (key "image") are reported, not fatal.
    manifest = _prepare(cfg, tmp_path / "out")
    assert manifest["report"]["found"] == 10 and manifest["n"] == 7 and manifest["report"]["corrupt"] == 3
    assert all("expected one encoded image in bytes feature 'img'" in s["message"]
               for s in manifest["report"]["skipped"])
    cfg = dataclasses.replace(cfg, image_key="image")
    manifest = _prepare(cfg, tmp_path / "out2")
    assert manifest["n"] == 8 and manifest["report"]["corrupt"] == 2
    fs = FaceSet.open(str(tmp_path / "out2"))
    assert [os.path.basename(p) for p in fs.files] == ["shard-00000.tfrecord", "shard-00001.tfrecord",
                                                       "shard-00002.tfrecord"]
    expected = np.concatenate([_crops(sorted(nested) + globbed),
                               np.stack([center_square_resize(r, S) for r in records])])
    np.testing.assert_array_equal(fs.read(0, 8), expected)
    assert fs.sources(5, 8) == [f"{tmp_path / 'c' / 'faces.tfrecord'} record {i}" for i in range(3)]
    # max_images counts items in sorted order (a record is an item).
    assert list_face_files(dataclasses.replace(cfg, max_images=4)) == sorted(nested) + globbed[:1]
    with pytest.raises(DataError, match="nowhere/at-all"):
        list_face_files(FacesConfig(sources=(str(a), "nowhere/at-all")))


def test_corrupt_truncated_and_empty_files_are_skipped_counted_and_listed(tmp_path):
    good = _folder(str(tmp_path / "in"), 5)
    data = open(good[0], "rb").read()
    (tmp_path / "in" / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not a jpeg " * 20)
    (tmp_path / "in" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "in" / "zero.jpg").write_bytes(b"")
    # A TFRecord whose last record lost its tail: two records kept, the third reported.
    write_tfrecord(str(tmp_path / "in" / "z.tfrecord"), _photos(3, 50))
    raw = (tmp_path / "in" / "z.tfrecord").read_bytes()
    (tmp_path / "in" / "z.tfrecord").write_bytes(raw[:-10])
    manifest = _prepare(FacesConfig(sources=(str(tmp_path / "in"),), image_size=S, shard_size=4), tmp_path / "out")
    report = manifest["report"]
    assert (report["found"], report["kept"], report["corrupt"], report["no_face"]) == (11, 7, 4, 0)
    skipped = {os.path.basename(s["where"]): s for s in report["skipped"]}
    assert set(skipped) == {"corrupt.jpg", "truncated.jpg", "zero.jpg", "z.tfrecord record 2"}
    assert all(s["kind"] == "corrupt" and s["message"].startswith(s["where"]) for s in report["skipped"])
    listing = (tmp_path / "out" / faces.SKIPPED).read_text()
    assert all(str(tmp_path / "in" / name) in listing for name in ("corrupt.jpg", "truncated.jpg", "zero.jpg"))
    per_shard = [json.loads((tmp_path / "out" / f"shard-0000{s}.json").read_text()) for s in range(3)]
    assert sum(len(p["corrupt"]) for p in per_shard) == 4 and sum(p["count"] for p in per_shard) == 7
    fs = FaceSet.open(str(tmp_path / "out"))
    np.testing.assert_array_equal(fs.read(0, 5), _crops(good))  # good files sort before the broken ones


def test_empty_and_all_corrupt_folders_raise_naming_the_folder(tmp_path):
    empty = tmp_path / "empty_photos"
    (empty / "nested").mkdir(parents=True)
    (empty / "readme.txt").write_text("no photos here")
    with pytest.raises(DataError, match=r"empty_photos: no face images found in it \(expected image files"):
        prepare_faces(FacesConfig(sources=(str(empty),)), str(tmp_path / "o1"), progress=False)
    # an empty source next to a good one is still named: it is a wrong path, not "fewer faces"
    good = tmp_path / "good_photos"
    good.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good / "a.png")
    with pytest.raises(DataError, match="empty_photos: no face images found"):
        prepare_faces(FacesConfig(sources=(str(good), str(empty))), str(tmp_path / "o3"), progress=False)
    broken = tmp_path / "broken_photos"
    broken.mkdir()
    for i in range(3):
        (broken / f"{i}.jpg").write_bytes(b"garbage" * i)
    with pytest.raises(DataError, match=r"broken_photos: none of the 3 images is usable \(3 unreadable"):
        prepare_faces(FacesConfig(sources=(str(broken),)), str(tmp_path / "o2"), progress=False)
    assert not (tmp_path / "o2" / faces.MANIFEST).exists()
    with pytest.raises(FileNotFoundError, match="o2"):
        FaceSet.open(str(tmp_path / "o2"))


def test_resume_rewrites_only_the_missing_shard_and_other_configs_are_refused(tmp_path):
    paths = _folder(str(tmp_path / "in"), 10)
    cfg = FacesConfig(sources=(str(tmp_path / "in"),), image_size=S, shard_size=3)
    out = tmp_path / "out"
    # Two pre-pass workers: the first to finish cannot write the manifest, the second does.
    status = _prepare(cfg, out, worker=(1, 2))
    assert status["complete"] is False and status["missing"] == [0, 2] and status["written"] == [1, 3]
    with pytest.raises(FileNotFoundError, match=str(out)):
        FaceSet.open(str(out))
    with pytest.raises(ValueError, match=f"{out} already holds faces prepared differently.*shard_size"):
        _prepare(dataclasses.replace(cfg, shard_size=4), out)
    manifest = _prepare(cfg, out, worker=(0, 2))
    assert manifest["complete"] is True and manifest["n"] == 10
    assert [s["count"] for s in manifest["shards"]] == [3, 3, 3, 1]
    before = {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out) if f.startswith("shard-")}
    os.remove(out / "shard-00001.tfrecord")
    with pytest.raises(FileNotFoundError, match="shard-00001"):
        FaceSet.open(str(out))
    assert _prepare(cfg, out)["n"] == 10
    after = {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out) if f.startswith("shard-")}
    changed = sorted(f for f in before if after[f] != before[f])
    assert changed == ["shard-00001.json", "shard-00001.tfrecord"]
    np.testing.assert_array_equal(FaceSet.open(str(out)).read(0, 10), _crops(paths))
    # Settings that change the shards are refused; the training-time mix (real_fraction) is not one of them.
    with pytest.raises(ValueError, match=f"{out} already holds faces prepared differently.*image_size"):
        _prepare(dataclasses.replace(cfg, image_size=16), out)
    _write(os.path.join(tmp_path, "in", "zz_new.jpg"), _photos(1, 99)[0])
    with pytest.raises(ValueError, match="inputs.items: 10 there, 11 now"):
        _prepare(cfg, out)
    os.remove(tmp_path / "in" / "zz_new.jpg")
    assert _prepare(dataclasses.replace(cfg, real_fraction=0.5), out)["n"] == 10


def test_config_is_validated():
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="real_fraction"):
            FacesConfig(sources=("x",), real_fraction=bad)
    with pytest.raises(ValueError, match="shard_size"):
        FacesConfig(shard_size=0)
    with pytest.raises(DataError, match="sources is empty"):
        list_face_files(FacesConfig())


# --------------------------------------------------------------------------- FaceSet + stream


def test_read_across_shard_boundaries_equals_the_canonical_crops(face_set):
    fs, crops = face_set
    assert fs.n == 23 and fs.image_size == S and len(fs.files) == 5
    np.testing.assert_array_equal(fs.read(3, 12), crops[3:12])   # spans shards 0, 1 and 2
    np.testing.assert_array_equal(fs.read(20, 23), crops[20:23])
    assert fs.read(7, 7).shape == (0, S, S, 3)
    with pytest.raises(IndexError, match="has 23 faces"):
        fs.read(20, 24)


def test_stream_epochs_cover_every_face_once_reshuffle_and_resume(face_set):
    fs, crops = face_set
    seen = {}

    def augment(images, positions):
        # Runs in a parallel map (and ahead, for prefetch): record what each position held.
        seen.update((int(p), im.tobytes()) for p, im in zip(positions, images))
        return 255 - images  # a visible, invertible change

    batches = [255 - b for b in make_faces_dataset(fs, 4, seed=7, augment_fn=augment).take(12).as_numpy_iterator()]
    assert all(b.shape == (4, S, S, 3) and b.dtype == np.uint8 for b in batches)
    ids = _ids(batches, crops)
    epoch0, epoch1 = ids[:23], ids[23:46]
    assert sorted(epoch0) == list(range(23)) and sorted(epoch1) == list(range(23))
    assert not np.array_equal(epoch0, epoch1) and not np.array_equal(epoch0, np.arange(23))
    # Reshuffled within shards too, not only the shard order (faces 5k..5k+4 share shard k).
    assert any(not np.array_equal(epoch0[epoch0 // 5 == k], epoch1[epoch1 // 5 == k]) for k in range(5))
    assert all(seen[p] == crops[i].tobytes() for p, i in enumerate(ids))  # positions passed to augment_fn
    for start in (3, 7):  # mid-epoch, and in epoch 1 (position 28)
        resumed = list(make_faces_dataset(fs, 4, seed=7, start_step=start).take(12 - start).as_numpy_iterator())
        np.testing.assert_array_equal(np.stack(resumed), np.stack(batches[start:]))
    other = _ids(make_faces_dataset(fs, 4, seed=8).take(5).as_numpy_iterator(), crops)
    assert not np.array_equal(other, ids[:20])


def test_two_input_pipelines_take_disjoint_slices_of_the_global_stream(face_set):
    fs, crops = face_set
    single = list(make_faces_dataset(fs, 4, seed=1).take(5).as_numpy_iterator())  # global batch 4
    parts = []
    for pid in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pid, num_replicas_in_sync=2)
        got = list(make_faces_dataset(fs, 2, seed=1, input_context=ctx).take(5).as_numpy_iterator())
        for step, batch in enumerate(got):
            np.testing.assert_array_equal(batch, single[step][2 * pid : 2 * pid + 2])
        parts.append(set(_ids(got, crops)))
    assert not parts[0] & parts[1] and len(parts[0] | parts[1]) == 20
    # Resuming one pipeline at step 3 gives its step-3 batch.
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2)
    again = next(iter(make_faces_dataset(fs, 2, seed=1, start_step=3, input_context=ctx))).numpy()
    np.testing.assert_array_equal(again, single[3][2:])


def test_measure_stream_reports_a_rate(face_set):
    assert faces.measure_stream(face_set[0], 8, 3) > 0


# --------------------------------------------------------------------------- alignment


def test_align_keeps_the_face_and_counts_a_blank_photo_as_no_face(tmp_path):
    from face_transfer.data import align

    face, _ = synth.render_faces(synth.SynthConfig(image_size=64, difficulty=0.0), np.arange(3, 4))
    big = np.asarray(Image.fromarray(face[0]).resize((160, 160), Image.Resampling.BICUBIC))
    face_path = _write(str(tmp_path / "in" / "a_face.png"), big, "PNG")
    _write(str(tmp_path / "in" / "b_blank.png"), np.full((160, 160, 3), 128, np.uint8), "PNG")
    cfg = FacesConfig(sources=(str(tmp_path / "in"),), align=True, image_size=S)
    manifest = _prepare(cfg, tmp_path / "out")
    report = manifest["report"]
    assert (report["kept"], report["no_face"], report["corrupt"]) == (1, 1, 0)
    assert report["skipped"][0]["kind"] == "no_face" and report["skipped"][0]["where"].endswith("b_blank.png")
    expected = align.align_largest_face(load_image(face_path), size=S)
    np.testing.assert_array_equal(FaceSet.open(str(tmp_path / "out")).read(0, 1)[0], expected)
    with pytest.raises(DataError, match=r"no face found in any of 1 images under .*blank_only"):
        _write(str(tmp_path / "blank_only" / "x.png"), np.full((160, 160, 3), 30, np.uint8), "PNG")
        _prepare(dataclasses.replace(cfg, sources=(str(tmp_path / "blank_only"),)), tmp_path / "out2")
