"""TFLite metadata (deploy/metadata.py): write -> read round trip, the file still runs identically,
inference reads labels and normalisation from the file, files without metadata still work, and
metadata of another model is refused naming the file."""
import json
import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

from face_transfer.deploy import infer, metadata
from face_transfer.core.interpreter import load_interpreter
from face_transfer.deploy.savedmodel import build_analyzer
from face_transfer.deploy.tflite import QuantizationConfig, convert_to_tflite
from face_transfer.core.errors import CorruptArtifactError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from tests.deploy_models import CFG, calibrated_student, smooth_images

EXPRESSIONS = ["neutral", "happy", "sad"]




def tiny_student():
    return calibrated_student(CFG, seed=0)


def heads(rng):
    return {"expression": {"kind": "classification", "coef": rng.normal(size=(16, 3)), "intercept": np.zeros(3),
                           "classes": [0, 1, 2]},
            "yaw": {"kind": "regression", "coef": rng.normal(size=(16, 1)), "intercept": [2.0], "target_scale": 20.0},
            "landmarks": {"kind": "landmarks", "coef": 0.01 * rng.normal(size=(16, 10)), "intercept": np.full(10, 0.5)}}


OUTPUTS = {"embedding": {"kind": "embedding", "description": "facial code, 16 floats"},
           "expression": {"kind": "classification", "classes": EXPRESSIONS, "units": "probability"},
           "yaw": {"kind": "regression", "units": "degrees"},
           "landmarks": {"kind": "landmarks", "units": "image fraction (x right, y down, 0..1)"}}


@pytest.fixture(scope="module")
def files():
    """(int8 analyser bytes, float32 student bytes, the analyser Keras model)."""
    student = tiny_student()
    analyzer = build_analyzer(student, heads(np.random.default_rng(0)))
    a8 = convert_to_tflite(analyzer, QuantizationConfig.for_int8(smooth_images(24, seed=4), steps=24))
    s32 = convert_to_tflite(student, QuantizationConfig.for_float32())
    return a8, s32, analyzer


def described(data):
    return metadata.write_metadata(data, name="tiny analyser", description="test model; config sha256 abc",
                                   outputs=OUTPUTS, version="t1", extra={"run": {"config_sha256": "abc" * 8}})


def test_round_trip_keeps_labels_names_normalisation_and_outputs(files):
    a8, _, _ = files
    assert metadata.read_metadata(a8) is None
    data = described(a8)
    meta = metadata.read_metadata(data)
    assert (meta["name"], meta["description"], meta["version"], meta["author"]) == \
        ("tiny analyser", "test model; config sha256 abc", "t1", "face-transfer")
    assert meta["min_parser_version"] == metadata.MIN_PARSER_VERSION
    inp = meta["input"]
    assert inp["name"] == "image" and inp["color_space"] == "RGB" and inp["size"] == [32, 32]
    assert inp["normalization"] == {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    assert inp["stats"] == {"max": [255.0], "min": [0.0]}
    # outputs: the model's signature names, in the subgraph's output order
    assert list(meta["outputs"]) == [o["name"] for o in metadata.model_io(data)["outputs"]]
    assert set(meta["outputs"]) == set(OUTPUTS)
    expr = meta["outputs"]["expression"]
    assert expr["classes"] == EXPRESSIONS and expr["kind"] == "classification"
    assert expr["associated_files"][0] == {"name": "expression_labels.txt", "type": "TENSOR_AXIS_LABELS",
                                           "description": "class names of expression, one per output index",
                                           "locale": None}
    assert meta["outputs"]["yaw"]["units"] == "degrees" and "classes" not in meta["outputs"]["yaw"]
    assert meta["outputs"]["landmarks"]["dimension_names"] == ["batch", "point", "xy"]
    assert meta["json"]["run"] == {"config_sha256": "abc" * 8}
    assert meta["json"]["input"]["range"] == [0.0, 255.0]
    assert metadata.output_labels(meta) == {
        "embedding": {"kind": "embedding"}, "expression": {"kind": "classification", "classes": EXPRESSIONS,
                                                            "units": "probability"},
        "yaw": {"kind": "regression", "units": "degrees"},
        "landmarks": {"kind": "landmarks", "units": "image fraction (x right, y down, 0..1)"}}
    # The label files are a plain zip appended to the model: any zip reader lists them.
    with zipfile.ZipFile(__import__("io").BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == ["expression_labels.txt", metadata.JSON_FILE]
        assert zf.read("expression_labels.txt").decode().splitlines() == EXPRESSIONS
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    # Writing again replaces the metadata (one entry, one archive), it does not stack.
    again = metadata.write_metadata(data, name="renamed", description="d", outputs=OUTPUTS)
    assert metadata.read_metadata(again)["name"] == "renamed"
    assert abs(len(again) - len(data)) < 200 and metadata.associated_files(again).keys() == \
        metadata.associated_files(data).keys()


def test_interpreter_gives_identical_outputs_with_metadata(files):
    a8, s32, _ = files
    images = smooth_images(8, seed=7)
    for plain in (a8, s32):
        outputs = {o["name"]: {"kind": "x"} for o in metadata.model_io(plain)["outputs"]}
        data = metadata.write_metadata(plain, name="m", description="d", outputs=outputs)
        want = infer.run_tflite(load_interpreter(plain), images)
        got = infer.run_tflite(load_interpreter(data), images)
        assert set(got) == set(want)
        for k in want:
            assert np.array_equal(got[k], want[k]), k


def test_inference_reads_labels_from_the_file_not_a_sidecar(files, tmp_path):
    a8, _, analyzer = files
    path = tmp_path / "analyzer.tflite"
    path.write_bytes(described(a8))
    assert not (tmp_path / "analyzer.labels.json").exists()
    info = infer.model_info(str(path))
    assert info["labels_from"] == "metadata"
    assert info["labels"]["expression"]["classes"] == EXPRESSIONS
    assert info["input"] == {"color_space": "RGB", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    # An explicit labels file still wins over the metadata.
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"expression": {"kind": "classification", "classes": ["a", "b", "c"]}}))
    assert infer.model_info(str(path), labels_path=str(other))["labels"]["expression"]["classes"] == ["a", "b", "c"]
    # The CLI decodes class names from the file alone.
    out = tmp_path / "preds.json"
    proc = subprocess.run([sys.executable, "-m", "export.infer_tflite", f"--model={path}", "--synthetic=2",
                           f"--out={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["labels_from"] == "metadata" and result["units"]["yaw"] == "degrees"
    for row in result["predictions"]:
        assert row["expression"]["class"] in EXPRESSIONS
        assert sorted(row["expression"]["probabilities"]) == sorted(EXPRESSIONS)


SYNTH = {"dataset": "SynthFaces (photo eval set)", "images": 2000, "domain": "synthetic (SynthFaces)", "synthetic": True}
REAL = {"dataset": "shape", "path": "data/shape/labels.csv", "images": 480, "domain": "real", "synthetic": False}


def test_infer_shows_what_each_head_was_fitted_on(files, tmp_path):
    """Each head's training data reaches face-transfer-infer from the file alone: a structured `trained_on`
    in the metadata, else an adapted analyser's heads_trained_on, else the text the export stage writes into
    the output's description; heads fitted on synthetic faces only get a note."""
    from face_transfer.deploy.bundle import trained_on_text
    a8, _, _ = files
    outputs = {**OUTPUTS, "expression": {**OUTPUTS["expression"], "trained_on": SYNTH},
               "yaw": {**OUTPUTS["yaw"], "description": "regression, task yaw, degrees, "
                       + trained_on_text({"trained_on": SYNTH})},  # as stages/export.py writes it
               "landmarks": {**OUTPUTS["landmarks"], "trained_on": REAL}}
    path = tmp_path / "analyzer.tflite"
    path.write_bytes(metadata.write_metadata(a8, name="m", description="d", outputs=outputs))
    assert metadata.read_metadata(str(path))["json"]["outputs"]["expression"]["trained_on"] == SYNTH
    labels = infer.model_info(str(path))["labels"]
    assert labels["expression"]["trained_on"] == SYNTH and labels["landmarks"]["trained_on"] == REAL
    assert labels["yaw"]["trained_on"] == SYNTH  # parsed back from the description
    assert "trained_on" not in labels["embedding"]
    # an adapted analyser (face_transfer.adapt.export_analyzer) also lists them in face_transfer.json
    adapted = tmp_path / "adapted.tflite"
    adapted.write_bytes(metadata.write_metadata(a8, name="m", description="d", outputs=OUTPUTS, extra={
        "adapt": {"mode": "linear", "heads_trained_on": {"yaw": REAL, "expression": SYNTH}}}))
    labels = infer.model_info(str(adapted))["labels"]
    assert labels["yaw"]["trained_on"] == REAL and labels["expression"]["trained_on"] == SYNTH
    assert "trained_on" not in labels["landmarks"]
    # the CLI: a `trained_on` per head and a note in the JSON (fields added, the rest unchanged), lines on stderr
    out = tmp_path / "preds.json"
    proc = subprocess.run([sys.executable, "-m", "export.infer_tflite", f"--model={path}", "--synthetic=1",
                           f"--out={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout) == result
    assert result["trained_on"] == {"expression": SYNTH, "yaw": SYNTH, "landmarks": REAL}
    note = ("note: heads expression, yaw were fitted on synthetic faces only (SynthFaces (photo eval set)); adapt "
            "them on your photos with face-transfer-adapt")
    assert result["notes"] == [note] and note in proc.stderr.splitlines()
    assert "landmarks: fitted on 480 images of shape (real)" in proc.stderr.splitlines()
    assert sorted(result["predictions"][0]["expression"]["probabilities"]) == sorted(EXPRESSIONS)
    # every head synthetic: the note counts them
    from export.infer_tflite import trained_on
    heads, notes = trained_on({"embedding": {"kind": "embedding"}, "a": {"kind": "regression", "trained_on": SYNTH},
                               "b": {"kind": "landmarks", "trained_on": SYNTH}}, ["embedding", "a", "b"])
    assert heads == {"a": SYNTH, "b": SYNTH} and notes == [
        "note: all 2 heads were fitted on synthetic faces only (SynthFaces (photo eval set)); adapt them on your "
        "photos with face-transfer-adapt"]
    # a file that does not say: None per head, no note
    plain = tmp_path / "plain.tflite"
    plain.write_bytes(described(a8))
    proc = subprocess.run([sys.executable, "-m", "export.infer_tflite", f"--model={plain}", "--synthetic=1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["trained_on"] == {"expression": None, "yaw": None, "landmarks": None} and result["notes"] == []
    line = next(x for x in proc.stderr.splitlines() if x.endswith(": training data not recorded"))
    assert sorted(line.split(":")[0].split(", ")) == ["expression", "landmarks", "yaw"]


def test_rewriting_the_flatbuffer_keeps_metadata_only_with_carry_metadata(files):
    """A flatbuffer round trip (e.g. TensorFlow's flatbuffer_utils, used to fix the batch size) keeps the
    TFLITE_METADATA buffer but drops the appended label files: reading then names the missing file, and
    carry_metadata puts them back."""
    from tensorflow.lite.tools import flatbuffer_utils
    a8, _, _ = files
    data = described(a8)
    rewritten = bytes(flatbuffer_utils.convert_object_to_bytearray(flatbuffer_utils.read_model_from_bytearray(
        bytearray(data))))
    with pytest.raises(CorruptArtifactError, match="expression_labels.txt.*not packed"):
        metadata.read_metadata(rewritten)
    fixed = metadata.carry_metadata(data, rewritten)
    assert metadata.read_metadata(fixed)["outputs"]["expression"]["classes"] == EXPRESSIONS
    assert metadata.carry_metadata(a8, rewritten[:]) == rewritten  # a source without metadata: unchanged


def test_file_without_metadata_uses_the_sidecar_or_nothing(files, tmp_path):
    a8, _, _ = files
    path = tmp_path / "plain.tflite"
    path.write_bytes(a8)
    info = infer.model_info(str(path))
    assert info["metadata"] is None and info["labels"] == {} and info["labels_from"] is None
    sidecar = {"expression": {"kind": "classification", "classes": ["x", "y", "z"]}}
    (tmp_path / "plain.labels.json").write_text(json.dumps(sidecar))
    info = infer.model_info(str(path))
    assert info["labels"] == sidecar and info["labels_from"].endswith("plain.labels.json")
    out = infer.run_tflite(load_interpreter(str(path)), smooth_images(2), input_spec=info["input"])
    assert out["expression"].shape == (2, 3)


def test_metadata_of_another_model_is_an_error_naming_the_file(files, tmp_path):
    a8, s32, _ = files
    analyser_meta = metadata.metadata_buffer(described(a8))
    # the analyser's metadata (4 outputs) moved onto the student (1 output)
    wrong = metadata.attach_metadata_buffer(s32, analyser_meta, metadata.associated_files(described(a8)))
    path = tmp_path / "student_float32.tflite"
    path.write_bytes(wrong)
    with pytest.raises(CorruptArtifactError, match=r"student_float32\.tflite: its TFLite metadata describes 4 "
                                                   r"output\(s\).*the model has 1 \['embedding'\]"):
        metadata.read_metadata(str(path))
    with pytest.raises(CorruptArtifactError, match="student_float32.tflite"):
        infer.model_info(str(path))
    # labels whose count differs from the output's
    bad = metadata.write_metadata(a8, name="m", description="d", outputs=OUTPUTS)
    files_ = metadata.associated_files(bad)
    files_["expression_labels.txt"] = b"only\ntwo\n"
    path2 = tmp_path / "analyzer_int8.tflite"
    path2.write_bytes(metadata.attach_metadata_buffer(a8, metadata.metadata_buffer(bad), files_))
    with pytest.raises(CorruptArtifactError, match=r"analyzer_int8\.tflite: .*'expression' 2 class names, the "
                                                   r"output has 3 values"):
        metadata.read_metadata(str(path2))
    # a labels file named by the metadata but missing from the archive
    del files_["expression_labels.txt"]
    path2.write_bytes(metadata.attach_metadata_buffer(a8, metadata.metadata_buffer(bad), files_))
    with pytest.raises(CorruptArtifactError, match="expression_labels.txt.*not packed"):
        metadata.read_metadata(str(path2))
    # the CLI reports it in one line, exit code 4 (corrupt file)
    proc = subprocess.run([sys.executable, "-m", "export.infer_tflite", f"--model={path}", "--synthetic=1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1"))
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert f"{path}: its TFLite metadata describes 4 output(s)" in proc.stderr and "Traceback" not in proc.stderr


def test_writer_refuses_metadata_that_does_not_fit(files):
    a8, s32, _ = files
    with pytest.raises(ValueError, match=r"missing \['landmarks'\]"):
        metadata.write_metadata(a8, name="m", description="d", outputs={k: v for k, v in OUTPUTS.items()
                                                                        if k != "landmarks"})
    with pytest.raises(ValueError, match="'expression' has 3 values, 2 class names"):
        metadata.write_metadata(a8, name="m", description="d",
                                outputs={**OUTPUTS, "expression": {"kind": "classification", "classes": ["a", "b"]}})
    with pytest.raises(ValueError, match="std non-zero"):
        metadata.write_metadata(s32, name="m", description="d", outputs={"embedding": {}}, std=(0.0,))
    with pytest.raises(CorruptArtifactError, match="not a .tflite model"):
        metadata.read_metadata(b"\0" * 64)
    with pytest.raises(CorruptArtifactError, match="not a readable .tflite flatbuffer"):
        metadata.read_metadata(described(a8)[:1000])  # truncated


def test_normalisation_from_metadata_is_applied(tmp_path):
    """A float-input file whose metadata says (x - 127.5) / 127.5 is fed normalised values."""
    import tensorflow as tf
    inp = keras.Input((8, 8, 3), name="image")
    model = keras.Model(inp, {"mean": keras.layers.GlobalAveragePooling2D(name="mean")(inp)})
    plain = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    path = tmp_path / "norm.tflite"
    path.write_bytes(metadata.write_metadata(plain, name="m", description="d", outputs={
        o["name"]: {"kind": "regression"} for o in metadata.model_io(plain)["outputs"]}, mean=127.5, std=127.5))
    info = infer.model_info(str(path))
    assert info["input"] == {"color_space": "RGB", "mean": [127.5], "std": [127.5]}
    images = np.array([np.full((8, 8, 3), 255), np.zeros((8, 8, 3))], np.uint8)
    out = next(iter(infer.run_tflite(load_interpreter(str(path)), images, input_spec=info["input"]).values()))
    assert np.allclose(out, [[1.0] * 3, [-1.0] * 3])
    raw = next(iter(infer.run_tflite(load_interpreter(str(path)), images).values()))
    assert np.allclose(raw, [[255.0] * 3, [0.0] * 3])  # without the spec: raw pixels, as before


def test_the_web_pages_batch_one_copy_keeps_its_metadata(files, tmp_path):
    """The browser page's analyser (deploy.web.static_batch_model: batch fixed to 1 for LiteRT.js) is a
    re-serialised copy: it must still carry the labels, and take one face."""
    from face_transfer.deploy.web import static_batch_model
    a8, _, _ = files
    path = tmp_path / "analyzer_int8.tflite"
    path.write_bytes(described(a8))
    one = static_batch_model(str(path))
    assert metadata.read_metadata(one)["outputs"]["expression"]["classes"] == EXPRESSIONS
    from face_transfer.core.interpreter import load_interpreter
    (detail,) = load_interpreter(one).get_input_details()
    assert list(detail["shape_signature"]) == [1, 32, 32, 3]


def test_infer_cli_on_an_export_folder_runs_the_cpus_student_file_or_the_one_asked_for(files, tmp_path):
    """face-transfer-infer --model=<run>/export: the faster student file here (machine.int8_is_fast), or
    --precision's; --precision with a single file is a usage error."""
    from face_transfer.machine import int8_is_fast
    _, s32, _ = files
    export = tmp_path / "export"
    export.mkdir()
    (export / "student_float32.tflite").write_bytes(s32)
    (export / "student_int8_ptq.tflite").write_bytes(
        convert_to_tflite(tiny_student(), QuantizationConfig.for_int8(smooth_images(16, seed=5), steps=16)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "export.infer_tflite", *args, "--synthetic=2"], cwd=ROOT,
                              capture_output=True, text=True, timeout=300, env=env)

    here = "int8_ptq" if int8_is_fast() else "float32"
    other = "float32" if here == "int8_ptq" else "int8"
    for args, want in (([], here), ([f"--precision={other}"], "int8_ptq" if other == "int8" else "float32")):
        proc = cli(f"--model={export}", *args)
        assert proc.returncode == 0, proc.stderr[-2000:]
        chosen = str(export / f"student_{want}.tflite")
        assert f"--model: {chosen} (" in proc.stderr
        result = json.loads(proc.stdout[proc.stdout.index("{"):])
        assert result["model"] == chosen and len(result["predictions"]) == 2
        assert len(result["predictions"][0]["embedding"]) == CFG.embedding_dim
    proc = cli(f"--model={export / 'student_float32.tflite'}", "--precision=int8")
    assert proc.returncode != 0 and "--precision=int8: only with --model=<a run's export/ folder>" in proc.stderr
    assert "Traceback" not in proc.stderr
