"""User task sets on small fixtures written in each real format from synthetic faces: flag syntax, kind
inference, task files, bad rows, the on-disk round trip, task naming, source derivation, probing end to end."""
import json
import os

import numpy as np
import pytest
from test_readers import _fer_row, _save, _write

from face_transfer.data import synth, taskfile, taskset_store, tasksets
from face_transfer.data.imageio import DataError, ReadReport
from face_transfer.data.readers import READERS, RawSet, RowIssues, drop_rows, fer2013, register_reader, tfrecord
from face_transfer.data.tasks import DEFAULT_DECLARED, TASKS, with_sources
from face_transfer.data.tasksets import TaskSetConfig, parse_task_flag, read_task_set, tasks_of_set
from face_transfer.evaluation import probes

SIZE = 16  # stored image side: small keeps every test fast
N_PEOPLE, PER_PERSON = 20, 4
EMOTIONS = ("happy", "sad", "neutral")


def _faces(n, size=32):
    cfg = synth.SynthConfig(image_size=size, n_train_identities=20, n_heldout_identities=5)
    return synth.render_faces(cfg, np.arange(n), stream="test_tasksets")


@pytest.fixture(scope="module")
def csv_set(tmp_path_factory):
    """folder_csv: 80 faces of 20 people with a text class, an int class, a float, an id, notes, a constant."""
    root = tmp_path_factory.mktemp("csv_set")
    (root / "imgs").mkdir()
    images, labels = _faces(N_PEOPLE * PER_PERSON)
    lines = ["image,subject,emotion,smile,age,image_id,notes,constant"]
    for i, img in enumerate(images):
        _save(root / "imgs" / f"{i:03d}.png", img)
        person = i // PER_PERSON
        lines.append(f"imgs/{i:03d}.png,p{person:02d},{EMOTIONS[i % 3]},{i % 2},{labels['age'][i]:.1f},{1000 + i},"
                     f"note {i},1")
    _write(root / "labels.csv", "\n".join(lines) + "\n")
    return root, images, labels


def _set_cell(lines, line_no, column, value):
    header = lines[0].split(",")
    cells = lines[line_no - 1].split(",")
    cells[header.index(column)] = value
    lines[line_no - 1] = ",".join(cells)


def _csv_variant(root, name, edit):
    """A copy of labels.csv next to it (same image folder) with `edit(lines)` applied."""
    lines = (root / "labels.csv").read_text().splitlines()
    edit(lines)
    return _write(root / name, "\n".join(lines) + "\n")


def _read_dropping(capsys, cfg, image_size):
    """read_task_set with drop_bad_rows: (its result, its notice line). The dropped rows are the tool's own
    `  !! ` notice on stderr (integrity.notice), never a Python UserWarning (issue 21)."""
    import warnings
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = read_task_set(cfg, image_size=image_size)
    assert not [w for w in caught if "dropped" in str(w.message)], [str(w.message) for w in caught]
    lines = [line for line in capsys.readouterr().err.splitlines() if "drop_bad_rows dropped" in line]
    assert len(lines) == 1 and lines[0].startswith("  !! task set "), lines
    assert lines[0].endswith('all listed in the meta\'s report["skipped_items"]'), lines[0]
    return out, lines[0]


# ---------------------------------------------------------------- flag syntax


def test_parse_task_flag_good():
    cfg = parse_task_flag("folder_csv:data/my,faces,task_file=tasks.json,max_images=500,drop_bad_rows=1,name=mine")
    assert cfg == TaskSetConfig("folder_csv", "data/my,faces", name="mine", task_file="tasks.json",
                                max_images=500, drop_bad_rows=True)
    assert parse_task_flag("celeba:/d/celeba") == TaskSetConfig("celeba", "/d/celeba")
    assert parse_task_flag("celeba:/d/celeba").set_name == "celeba"
    cfg = parse_task_flag("tfrecord:/d/*.tfrecord,max_images=all,align=true,seed=3")
    assert (cfg.path, cfg.max_images, cfg.align, cfg.seed) == ("/d/*.tfrecord", None, True, 3)


@pytest.mark.parametrize("text, why", [
    ("imagenet:/d", "unknown format 'imagenet'"),
    ("/d/faces.csv", "no ':' after the format"),
    ("celeba:", "empty PATH"),
    ("celeba:/d,colour=red", "unknown key 'colour'"),
    ("celeba:/d,max_images=lots", "max_images='lots'"),
    ("celeba:/d,drop_bad_rows=maybe", "not a boolean"),
    ("celeba:/d,name=a,name=b", "given twice"),
    ("celeba:/d,name=photo", "not one of"),
    ("fer2013:/d/f.csv,align=1", "align=True is not supported"),
])
def test_parse_task_flag_bad_quotes_text_and_lists_choices(text, why):
    with pytest.raises(ValueError) as e:
        parse_task_flag(text)
    msg = str(e.value)
    assert repr(text) in msg and why in msg
    assert "celeba, fer2013, folder_csv, tfrecord, utkface" in msg and "max_images" in msg  # the registry's order


def test_resolve_names_defaults_and_clashes():
    a, b, c = tasksets.resolve_names([TaskSetConfig("fer2013", "/d/fer2013.csv"),
                                      TaskSetConfig("folder_csv", "/d/lab_a/"),
                                      TaskSetConfig("folder_csv", "/d/lab b/labels.csv")])
    assert (a.name, b.name, c.name) == ("fer2013", "lab_a", "labels")
    with pytest.raises(ValueError, match="share the name"):
        tasksets.resolve_names([TaskSetConfig("utkface", "/x/faces"), TaskSetConfig("utkface", "/y/faces")])


# ---------------------------------------------------------------- kind inference per format


def test_folder_csv_inference(csv_set):
    root, images, _ = csv_set
    got, labels, meta, report = read_task_set(TaskSetConfig("folder_csv", str(root)), image_size=SIZE)
    assert got.shape == (80, SIZE, SIZE, 3) and report.n_kept == 80
    cols = meta["columns"]
    assert meta["identity"] == "subject"
    assert {c: v["kind"] for c, v in cols.items()} == {
        "subject": "verification", "emotion": "classification", "smile": "classification", "age": "regression"}
    assert cols["emotion"]["class_names"] == sorted(EMOTIONS) and cols["emotion"]["num_classes"] == 3
    assert cols["smile"]["class_names"] == ["0", "1"]
    assert cols["age"]["metric"] == "mae" and labels["age"].dtype == np.float32
    assert cols["subject"]["num_identities"] == N_PEOPLE
    # Text classes are stored as codes into class_names; the identity column as read.
    assert [cols["emotion"]["class_names"][k] for k in labels["emotion"][:3]] == list(EMOTIONS)
    assert labels["subject"][:5].tolist() == ["p00"] * 4 + ["p01"]
    ignored = meta["ignored"]
    assert set(ignored) == {"image_id", "notes", "constant"}
    assert "constant" in ignored["constant"] and "text with 80 distinct" in ignored["notes"]
    assert meta["selection"] == "every row (80, max_images=2000)"


def test_folder_csv_max_images_is_a_seeded_subset(csv_set):
    root, _, _ = csv_set
    cfg = TaskSetConfig("folder_csv", str(root), max_images=40, seed=1)
    _, a, meta, _ = read_task_set(cfg, image_size=8)
    _, b, _, _ = read_task_set(cfg, image_size=8)
    _, c, _, _ = read_task_set(TaskSetConfig("folder_csv", str(root), max_images=40, seed=2), image_size=8)
    assert meta["n_images"] == 40 and "seeded random subset" in meta["selection"]
    np.testing.assert_array_equal(a["age"], b["age"])
    assert not np.array_equal(a["age"], c["age"])
    assert len(set(a["subject"].tolist())) > 10  # spread over the file, not its first 10 people


def test_celeba_inference_and_identity_file(tmp_path):
    images, _ = _faces(24)
    (tmp_path / "img_align_celeba").mkdir()
    rng = np.random.default_rng(0)
    lines = ["24", "Smiling Male Eyeglasses Bald"]
    ids = []
    for i, img in enumerate(images):
        name = f"{i + 1:06d}.jpg"
        _save(tmp_path / "img_align_celeba" / name, img, "JPEG")
        v = [1 if i % 2 else -1, 1 if i % 3 == 0 else -1, 1 if rng.random() < 0.5 else -1, -1]
        lines.append(name + " " + " ".join(f"{x:2d}" for x in v))
        ids.append(f"{name} {100 + i // 3}")
    _write(tmp_path / "list_attr_celeba.txt", "\n".join(lines) + "\n")
    _write(tmp_path / "identity_CelebA.txt", "\n".join(ids) + "\n")
    _, labels, meta, _ = read_task_set(TaskSetConfig("celeba", str(tmp_path), max_images=20), image_size=SIZE)
    cols = meta["columns"]
    assert meta["n_images"] == 20 and meta["selection"].startswith("the first max_images lines")
    assert {c: v["kind"] for c, v in cols.items()} == {
        "smiling": "classification", "male": "classification", "eyeglasses": "classification",
        "identity": "verification"}
    assert cols["smiling"]["class_names"] == ["no", "yes"] and labels["smiling"][:4].tolist() == [0, 1, 0, 1]
    assert meta["identity"] == "identity" and labels["identity"][:4].tolist() == [100, 100, 100, 101]
    assert "constant" in meta["ignored"]["bald"]


def test_fer2013_inference_names_and_usage(tmp_path):
    rows = [_fer_row(i % 7, 10 * i, "Training" if i < 10 else "PublicTest") for i in range(14)]
    path = _write(tmp_path / "fer2013.csv", "emotion,pixels,Usage\n" + "".join(rows))
    _, labels, meta, _ = read_task_set(TaskSetConfig("fer2013", path), image_size=SIZE)
    assert list(meta["columns"]) == ["expression"]
    exp = meta["columns"]["expression"]
    assert exp["kind"] == "classification" and exp["class_names"] == list(fer2013.FER_EXPRESSIONS)
    assert labels["expression"][:8].tolist() == [0, 1, 2, 3, 4, 5, 6, 0]
    assert "usage" in meta["ignored"] and "split" in meta["ignored"]["usage"]
    # A teacher declaring "expression" (e.g. a FER-trained one) makes the FER2013 column a source task,
    # also when its task name gets the set prefix because the registry already has "expression".
    tasks = with_sources(tasks_of_set("fer", meta, taken_names=TASKS), {"expression"})
    assert [(t.name, t.source) for t in tasks] == [("fer_expression", True)]
    assert not with_sources(tasks, {"age"})[0].source


def test_utkface_inference_seeded_subset_and_original_names(tmp_path, capsys):
    images, _ = _faces(30)
    for i, img in enumerate(images):
        _save(tmp_path / f"{18 + 2 * i}_{i % 2}_{i % 2}_2017011617452{i:04d}.jpg.chip.jpg", img, "JPEG")
    _save(tmp_path / "39_1_20170116174525125.jpg.chip.jpg", images[0], "JPEG")  # race missing
    cfg = TaskSetConfig("utkface", str(tmp_path), max_images=31)
    with pytest.raises(DataError, match=rf"{tmp_path}/39_1_20170116174525125\.jpg\.chip\.jpg: file name"):
        read_task_set(cfg, image_size=SIZE)
    (_, labels, meta, report), line = _read_dropping(
        capsys, TaskSetConfig("utkface", str(tmp_path), max_images=31, drop_bad_rows=True), SIZE)
    assert "dropped 1 bad row(s) (bad_name=1; first: " in line
    assert meta["report"]["skipped"] == 1 and meta["report"]["skipped_by_kind"] == {"bad_name": 1}
    assert meta["report"]["skipped_items"][0]["where"] == str(tmp_path / "39_1_20170116174525125.jpg.chip.jpg")
    cols = meta["columns"]
    assert {c: v["kind"] for c, v in cols.items()} == {"age": "regression", "gender": "classification",
                                                      "race": "classification"}
    assert cols["gender"]["class_names"] == ["female", "male"] and cols["race"]["class_names"] == ["white", "black"]
    # A subset: a seeded draw over all files (name order is age order), not the youngest 12.
    _, sub, meta, report = read_task_set(TaskSetConfig("utkface", str(tmp_path), max_images=12,
                                                       drop_bad_rows=True, seed=0), image_size=SIZE)
    assert meta["n_images"] + meta["report"]["skipped"] == 12
    assert sub["age"].max() > 18 + 2 * 12 and all(str(tmp_path) in s for s in report.kept_sources)


def test_tfrecord_inference_landmarks_vectors_and_text(tmp_path):
    images, labels = _faces(40)
    extra = {"person": labels["identity"], "landmarks": labels["landmarks"],
             "pose": np.stack([labels["yaw"], labels["pitch"]], 1).astype(np.float32),
             "tag": np.array(["indoor", "outdoor"] * 20), "age": labels["age"]}
    path = str(tmp_path / "faces.tfrecord")
    tfrecord.write_tfrecord(path, images, extra)
    _, got, meta, _ = read_task_set(TaskSetConfig("tfrecord", str(tmp_path / "*.tfrecord")), image_size=SIZE)
    kinds = {c: v["kind"] for c, v in meta["columns"].items()}
    assert kinds == {"age": "regression", "landmarks": "landmarks", "person": "verification",
                     "pose": "regression", "tag": "classification"}
    assert meta["columns"]["landmarks"]["metric"] == "nme" and got["landmarks"].shape == (40, 5, 2)
    assert meta["columns"]["tag"]["class_names"] == ["indoor", "outdoor"]
    with pytest.raises(DataError, match="no TFRecord files match"):
        read_task_set(TaskSetConfig("tfrecord", str(tmp_path / "*.nothing")))


# ---------------------------------------------------------------- task files


def test_a_dataset_format_is_one_registered_reader(tmp_path, capsys):
    """A new format is one function under @register_reader (here, in this test): --tasks=toy:PATH then reads it,
    with kinds inferred and bad rows named by file and line, and no other edit anywhere."""

    @register_reader("toy", selection="every line")
    def read_toy(cfg, image_size, drop, spec):  # a text file of '<gray 0..255> <label>' lines
        rows = [line.split() for line in open(cfg.path).read().splitlines()]
        wheres = [f"{cfg.path} line {n}" for n in range(1, len(rows) + 1)]
        issues = RowIssues(drop)
        for i, r in enumerate(rows):
            if len(r) != 2 or not r[0].isdigit():
                issues.bad(i, wheres[i], "malformed_line", "expected '<gray 0..255> <label>'")
        gray = np.array([0 if i in issues.items else int(r[0]) for i, r in enumerate(rows)], np.uint8)
        images = np.repeat(gray, image_size * image_size * 3).reshape(len(rows), image_size, image_size, 3)
        raw = RawSet(images, {"shade": np.array([r[-1] for r in rows])}, wheres,
                     ReadReport(cfg.path, kept_sources=list(wheres)))
        drop_rows(raw, issues)
        return raw

    try:
        path = tmp_path / "toy.txt"
        path.write_text("".join(f"{40 * i} {'dark' if i < 3 else 'light'}\n" for i in range(6)))
        cfg = parse_task_flag(f"toy:{path},name=mine")
        images, labels, meta, _ = read_task_set(cfg, image_size=8)
        assert images.shape == (6, 8, 8, 3) and images[5].min() == 200
        assert meta["format"] == "toy" and meta["columns"]["shade"]["kind"] == "classification"
        assert meta["columns"]["shade"]["class_names"] == ["dark", "light"]
        assert labels["shade"].tolist() == [0, 0, 0, 1, 1, 1]
        path.write_text(path.read_text() + "x light\n")
        with pytest.raises(DataError, match=r"toy\.txt line 7: expected '<gray 0\.\.255> <label>'"):
            read_task_set(cfg, image_size=8)
        images, _, meta, _ = read_task_set(parse_task_flag(f"toy:{path},drop_bad_rows=1"), image_size=8)
        assert images.shape[0] == 6 and meta["report"]["skipped_by_kind"] == {"malformed_line": 1}
    finally:
        READERS.unregister("toy")
    with pytest.raises(ValueError, match="unknown format 'toy'"):
        parse_task_flag(f"toy:{path}")


def test_task_file_overrides_kinds_marks_source_and_names_classes(csv_set, tmp_path):
    root, _, _ = csv_set
    task_file = _write(tmp_path / "tasks.json", json.dumps({
        "identity": "subject",
        "columns": {"smile": {"kind": "regression", "metric": "mae"},
                    "emotion": {"kind": "classification", "source": True, "class_names": ["neutral", "happy", "sad"]},
                    "age": {"source": False},
                    "notes": {"ignore": True}}}))
    _, labels, meta, _ = read_task_set(TaskSetConfig("folder_csv", str(root), task_file=task_file), image_size=8)
    cols = meta["columns"]
    assert cols["smile"]["kind"] == "regression" and labels["smile"].dtype == np.float32
    assert cols["emotion"]["class_names"] == ["neutral", "happy", "sad"]
    assert labels["emotion"][:3].tolist() == [1, 2, 0]  # happy, sad, neutral in the task file's order
    assert meta["ignored"]["notes"] == "ignored by the task file"
    tasks = {t.name: t for t in with_sources(tasks_of_set("mine", meta), {"expression", "age"})}
    assert tasks["emotion"].source  # the task file's mark, although no teacher declares "emotion"
    assert not tasks["age"].source  # the task file's mark wins over a teacher declaring age


@pytest.mark.parametrize("content, match", [
    ({"columns": {"mood": {"kind": "classification"}}}, r"tasks\.json: column 'mood' is not in the data"),
    ({"columns": {"smile": {"kind": "ordinal"}}}, r"tasks\.json: column 'smile': kind 'ordinal'"),
    ({"columns": {"smile": {"kind": "regression", "metric": "accuracy"}}}, r"column 'smile': metric 'accuracy'"),
    ({"columns": {"smile": {"colour": 1}}}, r"column 'smile': unknown key\(s\) \['colour'\]"),
    ({"columns": {"age": {"kind": "landmarks"}}}, r"column 'age': kind landmarks needs \[5, 2\]"),
    ({"identity": "smile"}, r"identity column 'smile': only 2 person"),
    ({"labels": {}}, r"unknown key\(s\) \['labels'\]"),
])
def test_task_file_is_validated(csv_set, tmp_path, content, match):
    root, _, _ = csv_set
    task_file = _write(tmp_path / "tasks.json", json.dumps(content))
    with pytest.raises(DataError, match=match):
        read_task_set(TaskSetConfig("folder_csv", str(root), task_file=task_file), image_size=8)


def test_task_file_bad_json_names_line(tmp_path):
    path = _write(tmp_path / "tasks.json", '{"columns": {\n  "a": }\n')
    with pytest.raises(DataError, match=r"tasks\.json line 2 column 8: not valid JSON"):
        taskfile.load_task_file(path)


# ---------------------------------------------------------------- bad rows


def test_bad_label_names_file_row_column_or_is_dropped_and_listed(csv_set, capsys):
    root, _, _ = csv_set

    def edit(lines):
        _set_cell(lines, 6, "age", "old")  # file line 6 = the 5th data row
        _set_cell(lines, 10, "smile", "")
        _set_cell(lines, 13, "notes", "")  # an empty cell in a column that is no task: fine

    path = _csv_variant(root, "bad.csv", edit)
    with pytest.raises(DataError, match=r"bad\.csv line 6: column 'age' has 'old', expected a number"):
        read_task_set(TaskSetConfig("folder_csv", path), image_size=8)
    (_, labels, meta, report), line = _read_dropping(capsys, TaskSetConfig("folder_csv", path, drop_bad_rows=True), 8)
    assert f"dropped 2 bad row(s) (bad_label=1, missing_value=1; first: {path} line 6: column 'age'" in line
    assert meta["n_images"] == 78 and report.n_kept == 78
    assert meta["report"]["skipped_by_kind"] == {"bad_label": 1, "missing_value": 1}
    items = meta["report"]["skipped_items"]
    assert [i["where"] for i in items] == [f"{path} line 6", f"{path} line 10"]
    assert "column 'smile' is empty" in items[1]["message"]
    assert np.all(np.isfinite(labels["age"]))


def test_unreadable_image_is_named_by_the_users_csv_line(csv_set, tmp_path, capsys):
    root, _, _ = csv_set
    _write(root / "imgs" / "broken.png", "not a png")
    path = _csv_variant(root, "broken.csv", lambda lines: _set_cell(lines, 4, "image", "imgs/broken.png"))
    with pytest.raises(DataError, match=r"broken\.csv line 4: .*broken\.png: not a readable image"):
        read_task_set(TaskSetConfig("folder_csv", path), image_size=8)
    (_, _, meta, _), line = _read_dropping(capsys, TaskSetConfig("folder_csv", path, drop_bad_rows=True), 8)
    assert "(unreadable_image=1; " in line
    assert meta["report"]["skipped_items"][0]["where"] == f"{path} line 4" and meta["n_images"] == 79


# ---------------------------------------------------------------- on disk


def test_write_task_set_round_trip_idempotent_and_guarded(csv_set, tmp_path):
    from face_transfer.data.pipelines import load_eval_set

    root, _, _ = csv_set
    cfg = TaskSetConfig("folder_csv", str(root), name="mine")
    out = str(tmp_path / "mine")
    meta = taskset_store.write_task_set(cfg, out, image_size=SIZE, shard_size=30)
    images, labels = load_eval_set(out)
    ref_images, ref_labels, ref_meta, _ = read_task_set(cfg, image_size=SIZE)
    np.testing.assert_array_equal(images, ref_images)
    assert set(labels) == set(ref_meta["columns"])
    for k in labels:
        np.testing.assert_array_equal(labels[k], ref_labels[k])
    on_disk = json.load(open(os.path.join(out, "taskset.json")))
    assert on_disk["columns"] == json.loads(json.dumps(meta["columns"])) and on_disk["identity"] == "subject"
    assert len([f for f in os.listdir(out) if f.startswith("shard-")]) == 3
    # A complete directory is reused without reading the data again.
    shard = os.path.join(out, "shard-00000.npz")
    stamp = os.path.getmtime(shard)
    assert taskset_store.write_task_set(cfg, out, image_size=SIZE, shard_size=30)["n_images"] == 80
    assert os.path.getmtime(shard) == stamp
    with pytest.raises(ValueError, match="different task set"):
        taskset_store.write_task_set(TaskSetConfig("folder_csv", str(root), name="mine", max_images=10), out,
                                image_size=SIZE, shard_size=30)
    # An interrupted write resumes: only the missing shard is written.
    os.remove(os.path.join(out, "manifest.json"))
    os.remove(os.path.join(out, "shard-00002.npz"))
    taskset_store.write_task_set(cfg, out, image_size=SIZE, shard_size=30)
    assert os.path.getmtime(shard) == stamp
    np.testing.assert_array_equal(load_eval_set(out)[0], images)


def test_write_task_set_notice_names_the_list_of_dropped_rows(csv_set, tmp_path, capsys):
    root, _, _ = csv_set
    path = _csv_variant(root, "one_bad.csv", lambda lines: _set_cell(lines, 6, "age", "old"))
    out = str(tmp_path / "dropping")
    capsys.readouterr()
    meta = taskset_store.write_task_set(TaskSetConfig("folder_csv", path, name="dropping", drop_bad_rows=True), out,
                                   image_size=8)
    listed = os.path.join(out, "taskset.json")
    lines = [line for line in capsys.readouterr().err.splitlines() if "drop_bad_rows dropped" in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"  !! task set 'dropping': drop_bad_rows dropped 1 bad row(s) (bad_label=1; first: "
                               f"{path} line 6: column 'age'"), lines
    assert lines[0].endswith(f"all listed in {listed}"), lines
    assert json.load(open(listed))["report"]["skipped_items"] == meta["report"]["skipped_items"]


# ---------------------------------------------------------------- tasks


def test_tasks_of_set_names_clashes_and_sources(csv_set):
    root, _, _ = csv_set
    _, _, meta, _ = read_task_set(TaskSetConfig("folder_csv", str(root)), image_size=8)
    tasks = tasks_of_set("mine", meta, taken_names=TASKS)
    by_col = {t.labels[0]: t for t in tasks}
    assert by_col["age"].name == "mine_age"  # "age" is a registry task
    assert by_col["smile"].name == "mine_smile"  # so is "smile" (a synthetic intensity)
    assert by_col["emotion"].name == "emotion"
    assert by_col["subject"].kind == "verification" and by_col["subject"].name == "subject"
    assert by_col["emotion"].class_names == tuple(sorted(EMOTIONS)) and by_col["emotion"].num_classes == 3
    for t in tasks:
        assert t.eval_set == "mine" and t.domain == "real" and t.group_key == "subject" and not t.source
    again = tasks_of_set("other", meta, taken_names=[t.name for t in tasks])
    assert {t.name for t in again} == {"other_subject", "other_emotion", "smile", "age"}
    # The default zoo declares age, and identity via recognition (a verification task's person column,
    # whatever its name): those become source here; emotion and smile stay novel.
    src = {t.name: t.source for t in with_sources(tasks, DEFAULT_DECLARED)}
    assert src == {"mine_age": True, "subject": True, "emotion": False, "mine_smile": False}
    assert not with_sources([by_col["subject"]], {"expression"})[0].source
    with pytest.raises(ValueError, match="synthetic eval set"):
        tasks_of_set("photo", meta)


def test_evaluate_representation_on_a_user_set_end_to_end(csv_set, tmp_path):
    root, _, _ = csv_set
    out = str(tmp_path / "mine")
    taskset_store.write_task_set(TaskSetConfig("folder_csv", str(root), name="mine"), out, image_size=SIZE)
    images, labels, meta = taskset_store.load_task_set(out)
    tasks = with_sources(tasks_of_set("mine", meta, taken_names=TASKS), DEFAULT_DECLARED)
    # Tiny features: 4x4 mean-pooled pixels plus the person code (so verification has something to find).
    pooled = images.reshape(len(images), 4, 4, 4, 4, 3).mean(axis=(2, 4)).reshape(len(images), -1) / 255
    person = np.random.default_rng(0).normal(size=(N_PEOPLE, 32))[np.unique(labels["subject"], return_inverse=True)[1]]
    feats = np.concatenate([pooled, person], 1).astype(np.float32)
    cfg = probes.ProbeConfig(seeds=(0, 1), verification_pairs=200, c_grid=(0.1, 1.0), alpha_grid=(1.0, 100.0))
    res = probes.evaluate_representation({"mine": feats}, {"mine": labels}, tasks, cfg)
    assert set(res) == {t.name for t in tasks}
    for r in res.values():
        assert all(0 <= s <= 100 for s in r["scores"])
    assert res["subject"]["score_mean"] > 75  # the person code verifies people never seen in train
    g = probes.group_means(res, tasks)
    assert np.isfinite(g["mean_source"]) and np.isfinite(g["mean_novel"])
    # The split went by person: no person of the test split is in the train split.
    tr, va, te = probes.split_indices(len(images), 0, cfg, groups=labels["subject"])
    assert not set(labels["subject"][tr]) & set(labels["subject"][te])
