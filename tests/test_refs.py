"""Teacher refs: the --teacher flag and JSON syntax, format detection, digests, and loading each file format."""
import dataclasses
import hashlib
import json
import os
import re
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from face_transfer.core.digest import file_digest
from face_transfer.core.errors import TeacherLoadError
from face_transfer.teachers.adapters import keras_model_teacher, preprocess
from face_transfer.teachers.config import InputSpec, TeacherRef
from face_transfer.teachers.formats import detect_format
from face_transfer.teachers.refs import (check_images, check_unchanged, load_teacher_ref, parse_teacher_flag, resolve_ref, teacher_ref_from_dict, teacher_refs_from_json)
from test_adapters import _write_tiny_onnx  # the repo's tiny ONNX writer (onnx.helper)

SPEC = InputSpec(size=16)
RNG = np.random.default_rng(3)


def _images(n=4, size=16):
    return RNG.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _tiny_model():
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inp)
    x = keras.layers.ReLU(name="feat")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inp, out, name="tiny")


@pytest.fixture(scope="module")
def tiny():
    return _tiny_model()


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory):
    """One tiny model in every format: {format: path}."""
    d = tmp_path_factory.mktemp("models")
    tiny.save(d / "tiny.keras")
    tiny.save(d / "tiny.h5")
    tiny.export(str(d / "sm"), verbose=False)
    _write_tiny_onnx(d / "tiny.onnx")
    (d / "tiny.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(tiny).convert())
    return {"keras": str(d / "tiny.keras"), "h5": str(d / "tiny.h5"), "savedmodel": str(d / "sm"),
            "onnx": str(d / "tiny.onnx"), "tflite": str(d / "tiny.tflite")}


# ----------------------------------------------------------------------------- parsing


def test_parse_full_flag():
    text = ("expr=path/to/model.onnx,output=feat,size=64,channels=1,scale=0.0078,offset=-1,tasks=expression+age,"
            "color=bgr,layout=nchw,pool=none,endpoint=serving_default,trusted=1,format=onnx")
    ref = parse_teacher_flag(text)
    assert ref == TeacherRef(
        name="expr", path=os.path.abspath("path/to/model.onnx"), format="onnx", output="feat", size=64, channels=1,
        color_order="bgr", scale=0.0078, offset=-1.0, layout="nchw", pool=None, endpoint="serving_default",
        source_tasks=("expression", "age"), trusted=True,
    )
    assert ref.input_spec() == InputSpec(size=64, channels=1, color_order="bgr", scale=0.0078, offset=-1.0, layout="nchw")


def test_parse_minimal_flag_and_per_channel_values(tmp_path):
    ref = parse_teacher_flag(f"a={tmp_path}/m.keras")
    assert (ref.name, ref.path, ref.format, ref.output, ref.pool, ref.trusted) == ("a", f"{tmp_path}/m.keras", "", None, "avg", False)
    assert ref.input_spec() == InputSpec()
    ref = parse_teacher_flag("b = m.tflite , scale=0.1/0.2/0.3 , offset=-1/0/1, pool=MAX, trusted=no, tasks=age")
    assert ref.scale == (0.1, 0.2, 0.3) and ref.offset == (-1.0, 0.0, 1.0)
    assert ref.pool == "max" and ref.trusted is False and ref.source_tasks == ("age",)
    assert os.path.isabs(ref.path) and ref.path.endswith("m.tflite")


@pytest.mark.parametrize("text, key, expected", [
    ("expr", None, r"expected NAME=PATH\[,key=value\.\.\.\]"),
    ("=m.onnx", None, "teacher name '' must start with a letter"),
    ("1st=m.onnx", None, "teacher name '1st'"),
    ("a b=m.onnx", None, "teacher name 'a b'"),
    ("e=", None, "path of teacher 'e' is empty"),
    ("e=m.onnx,sise=64", "sise", "unknown key 'sise'; known keys: .*size"),
    ("e=m.onnx,size", None, "option 'size' is not key=value"),
    ("e=m.onnx,size=64,size=32", "size", "given twice"),
    ("e=m.onnx,size=abc", "size", "must be a positive integer, got 'abc'"),
    ("e=m.onnx,size=0", "size", "must be a positive integer"),
    ("e=m.onnx,size=1.5", "size", "must be a positive integer"),
    ("e=m.onnx,channels=2", "channels", "must be 1 or 3"),
    ("e=m.onnx,scale=x", "scale", "must be a number, got 'x'"),
    ("e=m.onnx,scale=1/2", "scale", "one number or 3 per-channel numbers"),
    ("e=m.onnx,channels=1,offset=1/2/3", "offset", "has 3 values but channels=1"),
    ("e=m.onnx,offset=a/b/c", "offset", "must be a number, got 'a'"),
    ("e=m.onnx,color=hsv", "color", "must be 'rgb' or 'bgr'"),
    ("e=m.onnx,layout=chw", "layout", "must be 'nhwc' or 'nchw'"),
    ("e=m.onnx,pool=mean", "pool", "must be 'avg' or 'max' or 'none'"),
    ("e=m.onnx,trusted=maybe", "trusted", "must be a boolean"),
    ("e=m.onnx,format=pt", "format", "must be 'keras' or 'savedmodel' or 'onnx' or 'tflite'"),
    ("e=m.onnx,tasks=age gender", "tasks", "task names joined with '\\+'"),
    ("e=m.onnx,tasks=", "tasks", "task names joined"),
    ("e=m.onnx,output=", "output", "must be a non-empty string"),
    ("e=m.onnx,endpoint=", "endpoint", "must be a non-empty string"),
])
def test_parse_flag_errors_quote_flag_key_and_expectation(text, key, expected):
    with pytest.raises(ValueError) as info:
        parse_teacher_flag(text)
    message = str(info.value)
    assert message.startswith(f"teacher flag {text!r}: "), message
    if key is not None:
        assert f"'{key}'" in message
    assert re.search(expected, message), message


def test_teacher_ref_validates_its_fields():
    with pytest.raises(ValueError, match="format must be one of"):
        TeacherRef("a", "/m", format="pytorch")
    with pytest.raises(ValueError, match="pool must be"):
        TeacherRef("a", "/m", pool="none")  # the dataclass takes None; "none" is the flag spelling
    with pytest.raises(ValueError, match="one per channel"):
        TeacherRef("a", "/m", channels=1, scale=(1.0, 2.0, 3.0))
    ref = TeacherRef("a", "/m", source_tasks=["expression"], scale=[1, 2, 3])
    assert ref.source_tasks == ("expression",) and ref.scale == (1, 2, 3)
    assert teacher_ref_from_dict(json.loads(json.dumps(ref.to_dict()))) == dataclasses.replace(ref, scale=(1.0, 2.0, 3.0))


def test_refs_from_json(tmp_path):
    digest = "ab" * 32
    entries = [
        {"name": "expr", "path": "models/expr.onnx", "output": "feat", "tasks": ["expression"], "channels": 1,
         "scale": 0.0078, "pool": None, "trusted": True},
        {"name": "age", "path": "/abs/age.tflite", "format": "tflite", "scale": [1, 1, 1], "offset": [0, 0, 0],
         "source_tasks": ["age", "gender"], "color_order": "bgr", "sha256": digest, "bytes": 12, "output": None},
    ]
    path = tmp_path / "teachers.json"
    path.write_text(json.dumps(entries))
    expr, age = teacher_refs_from_json(path)
    assert expr.path == str(tmp_path / "models" / "expr.onnx")  # relative to the JSON file
    assert (expr.output, expr.source_tasks, expr.channels, expr.pool, expr.trusted) == ("feat", ("expression",), 1, None, True)
    assert age.path == "/abs/age.tflite" and age.format == "tflite" and age.output is None
    assert age.scale == (1.0, 1.0, 1.0) and age.source_tasks == ("age", "gender") and age.color_order == "bgr"
    assert (age.sha256, age.bytes) == (digest, 12)
    # A resolved ref written back into a run config reads back equal.
    path.write_text(json.dumps([age.to_dict()]))
    assert teacher_refs_from_json(path) == (age,)


@pytest.mark.parametrize("content, expected", [
    ("{not json", "not valid JSON"),
    ('{"name": "a", "path": "m"}', "the top level is a dict; expected a JSON list"),
    ('[{"name": "a", "path": "m"}, 3]', "entry 1: expected an object"),
    ('[{"name": "a"}]', r"entry 0: missing key\(s\) \['path'\]"),
    ('[{"name": "a", "path": "m", "colour": "rgb"}]', "entry 0: unknown key 'colour'"),
    ('[{"name": "a", "path": "m", "size": "big"}]', "entry 0: key 'size' must be a positive integer"),
    ('[{"name": "a", "path": "m", "scale": [1, 2]}]', "entry 0: key 'scale' must be one number or 3"),
    ('[{"name": "a", "path": "m", "trusted": "perhaps"}]', "entry 0: key 'trusted' must be a boolean"),
    ('[{"name": "a", "path": "m", "sha256": "xyz"}]', "entry 0: key 'sha256' must be a sha256 hex digest"),
    ('[{"name": "a", "path": "m"}, {"name": "a", "path": "n"}]', "entry 1: teacher name 'a' already used by entry 0"),
])
def test_refs_from_json_errors_name_file_and_entry(tmp_path, content, expected):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        teacher_refs_from_json(path)
    assert str(info.value).startswith(f"{path}: ") and re.search(expected, str(info.value)), str(info.value)
    with pytest.raises(ValueError, match="absent.json: no such file"):
        teacher_refs_from_json(tmp_path / "absent.json")


# ----------------------------------------------------------------------------- files


def test_detect_format_by_extension_and_content(files, tmp_path):
    assert detect_format(files["keras"]) == "keras"
    assert detect_format(files["h5"]) == "keras"
    assert detect_format(files["savedmodel"]) == "savedmodel"
    assert detect_format(files["onnx"]) == "onnx"
    assert detect_format(files["tflite"]) == "tflite"
    # Without a known extension the first bytes decide.
    for fmt, src in [("keras", files["keras"]), ("keras", files["h5"]), ("tflite", files["tflite"]), ("onnx", files["onnx"])]:
        blob = tmp_path / f"blob_{os.path.basename(src)}.bin"
        shutil.copy(src, blob)
        assert detect_format(blob) == fmt, src
    (tmp_path / "weights.pt").write_bytes(b"\x80\x02}q\x00" + bytes(100))
    with pytest.raises(TeacherLoadError, match=r"weights.pt: unknown model format.*expected a .keras/.h5/.hdf5 file, a SavedModel directory"):
        detect_format(tmp_path / "weights.pt")
    (tmp_path / "notes").mkdir()
    with pytest.raises(TeacherLoadError, match="notes: a directory without saved_model.pb"):
        detect_format(tmp_path / "notes")
    with pytest.raises(TeacherLoadError, match="absent.onnx: no such file or directory"):
        detect_format(tmp_path / "absent.onnx")


_TOY_FORMAT = """
import numpy as np

from face_transfer.teachers.adapters import callable_teacher
from face_transfer.teachers.formats import TeacherFormat, register_format


@register_format("toy")
class ToyFormat(TeacherFormat):
    extensions = (".toy",)
    accepts = "a .toy file"

    def sniff(self, path, head):
        return head.startswith(b"TOY!")

    def load(self, path, ref):
        k = int(open(path, "rb").read()[4:])  # the file holds how many input values the feature keeps
        return callable_teacher(lambda x: x.reshape(len(x), -1)[:, :k], k, ref.name, ref.input_spec())
"""


def test_a_new_format_is_one_module(tmp_path, monkeypatch):
    """A format written in one file registers itself on import; nothing else changes to load a teacher in it."""
    from face_transfer.teachers.formats import TEACHER_FORMATS, accepted, format_names

    (tmp_path / "toy_teacher_format.py").write_text(_TOY_FORMAT)
    monkeypatch.syspath_prepend(str(tmp_path))
    import toy_teacher_format  # noqa: F401  (registers "toy")

    try:
        assert format_names()[-1] == "toy" and accepted().endswith("or a .toy file")
        (tmp_path / "m.toy").write_bytes(b"TOY!5")
        (tmp_path / "m_without_extension").write_bytes(b"TOY!5")
        assert detect_format(tmp_path / "m_without_extension") == "toy"
        ref = resolve_ref(parse_teacher_flag(f"t={tmp_path}/m.toy,size=16,tasks=age"))
        assert ref.format == "toy"
        teacher = load_teacher_ref(ref)
        images = _images()
        want = np.asarray(preprocess(images, SPEC)).reshape(len(images), -1)[:, :5]
        assert teacher.dim == 5 and teacher.metadata["format"] == "toy"
        np.testing.assert_allclose(teacher.embed(images), want, atol=1e-6)
        (tmp_path / "w.pt").write_bytes(b"\x80\x02" + bytes(20))
        with pytest.raises(TeacherLoadError, match=r"w.pt: unknown model format.* or a \.toy file"):
            detect_format(tmp_path / "w.pt")
    finally:
        TEACHER_FORMATS.unregister("toy")


def test_file_digest_of_files_and_directories(files, tmp_path):
    data = open(files["onnx"], "rb").read()
    assert file_digest(files["onnx"]) == (hashlib.sha256(data).hexdigest(), len(data))
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * (1 << 20) + 5))  # spans several 1 MB chunks
    assert file_digest(big) == (hashlib.sha256(big.read_bytes()).hexdigest(), big.stat().st_size)
    sm = tmp_path / "sm"
    shutil.copytree(files["savedmodel"], sm)
    sha, n = file_digest(sm)
    assert n == sum(p.stat().st_size for p in sm.rglob("*") if p.is_file())
    assert file_digest(sm) == (sha, n)  # deterministic
    shutil.copytree(sm, tmp_path / "sm_copy")
    assert file_digest(tmp_path / "sm_copy") == (sha, n)  # only relative paths count
    os.rename(sm / "fingerprint.pb", sm / "fingerprint2.pb")
    assert file_digest(sm)[0] != sha  # a rename changes it
    os.rename(sm / "fingerprint2.pb", sm / "fingerprint.pb")
    assert file_digest(sm) == (sha, n)


def test_resolve_and_change_detection(files, tmp_path):
    path = tmp_path / "m.keras"
    shutil.copy(files["keras"], path)
    ref = resolve_ref(TeacherRef("expr", str(path), output="feat", size=16))
    assert ref.format == "keras" and ref.path == str(path)
    assert (ref.sha256, ref.bytes) == (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size)
    check_unchanged(ref)  # untouched file passes
    assert resolve_ref(ref) == ref  # resolving a pinned ref keeps its digest
    # Edit one byte in place (same size).
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    n = len(data)
    pattern = (rf"{re.escape(str(path))}: teacher 'expr' changed since the run started "
               rf"\(sha256 {ref.sha256[:12]}\.\. -> [0-9a-f]{{12}}\.\., {n} -> {n} bytes\); restore the file or start a new --run_dir")
    with pytest.raises(TeacherLoadError, match=pattern):
        check_unchanged(ref)
    with pytest.raises(TeacherLoadError, match="changed since the run started"):
        load_teacher_ref(ref)
    with pytest.raises(TeacherLoadError, match="changed since the run started"):
        resolve_ref(ref)
    path.unlink()
    with pytest.raises(TeacherLoadError, match=rf"{re.escape(str(path))}: teacher 'expr' is gone"):
        check_unchanged(ref)
    with pytest.raises(TeacherLoadError, match=rf"{re.escape(str(path))}: no such file or directory; expected teacher 'expr'"):
        resolve_ref(TeacherRef("expr", str(path)))
    with pytest.raises(ValueError, match="no sha256; resolve_ref it first"):
        check_unchanged(TeacherRef("expr", str(path)))


# ----------------------------------------------------------------------------- loading


def test_check_images():
    images = check_images(16)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    assert images[0, 0, 0, 0] == 0 and images[0, 0, -1, 0] == 255 and images[1, -1, 0, 0] == 255
    assert not np.array_equal(images[0], images[1])


def test_load_keras_refs(tiny, files, tmp_path):
    images = _images()
    want = keras_model_teacher(tiny, "feat", "want", SPEC, pool="avg").embed(images)
    blob = tmp_path / "model_without_extension"
    shutil.copy(files["keras"], blob)
    for path in (files["keras"], files["h5"], str(blob)):
        ref = resolve_ref(TeacherRef("expr", path, output="feat", size=16, source_tasks=("expression",)))
        teacher = load_teacher_ref(ref)
        assert teacher.name == "expr" and teacher.dim == 4
        assert teacher.metadata["source_tasks"] == ("expression",) and teacher.metadata["sha256"] == ref.sha256
        np.testing.assert_allclose(teacher.embed(images), want, atol=1e-5)
    head = load_teacher_ref(TeacherRef("head", files["keras"], size=16))  # output None: the model's output
    np.testing.assert_allclose(head.embed(images), np.asarray(tiny(preprocess(images, SPEC))), atol=1e-5)


def test_load_savedmodel_ref(tiny, files):
    ref = resolve_ref(TeacherRef("sm", files["savedmodel"], size=16, source_tasks=("pose",)))
    assert ref.format == "savedmodel"
    teacher = load_teacher_ref(ref)
    images = _images()
    assert teacher.dim == 3 and teacher.metadata["source_tasks"] == ("pose",)
    np.testing.assert_allclose(teacher.embed(images), np.asarray(tiny(preprocess(images, SPEC))), atol=1e-5)
    with pytest.raises(TeacherLoadError, match="output_key"):
        load_teacher_ref(dataclasses.replace(ref, output="nope"))


def test_load_onnx_ref(files):
    ort = pytest.importorskip("onnxruntime")
    images = _images()
    x = np.asarray(preprocess(images, SPEC)).transpose(0, 3, 1, 2)
    want = ort.InferenceSession(files["onnx"], providers=["CPUExecutionProvider"]).run(["feat"], {"x": x})[0]
    # The graph's declared NCHW input decides, whatever the ref's layout says.
    for layout in ("nhwc", "nchw"):
        teacher = load_teacher_ref(resolve_ref(TeacherRef("o", files["onnx"], size=16, layout=layout)))
        assert teacher.dim == 8 and teacher.metadata["input_layout"] == "nchw"
        np.testing.assert_allclose(teacher.embed(images), want, atol=1e-4)
    pooled = load_teacher_ref(TeacherRef("o", files["onnx"], size=16, output="r", pool="avg"))
    np.testing.assert_allclose(pooled.embed(images), want, atol=1e-4)
    with pytest.raises(TeacherLoadError, match="tiny.onnx: the ONNX input 'x' has shape .*fits neither"):
        load_teacher_ref(TeacherRef("o", files["onnx"], size=32))
    with pytest.raises(TeacherLoadError, match="tiny.onnx: no tensor named 'nope'"):
        load_teacher_ref(TeacherRef("o", files["onnx"], size=16, output="nope"))


def test_load_tflite_ref(tiny, files):
    ref = resolve_ref(TeacherRef("t", files["tflite"], size=16, source_tasks=("age",)))
    assert ref.format == "tflite"
    teacher = load_teacher_ref(ref)
    images = _images(5)
    assert teacher.dim == 3 and teacher.metadata["source_tasks"] == ("age",) and teacher.metadata["source"] == "tflite"
    np.testing.assert_allclose(teacher.embed(images, batch_size=2), np.asarray(tiny(preprocess(images, SPEC))), atol=1e-4)


def test_missing_truncated_and_unknown_files(files, tmp_path):
    with pytest.raises(TeacherLoadError, match="absent.keras: no such file"):
        load_teacher_ref(TeacherRef("a", str(tmp_path / "absent.keras"), size=16))
    for key in ("keras", "h5", "onnx", "tflite"):
        data = open(files[key], "rb").read()
        for frac in (0.1, 0.5, 0.9):
            cut = tmp_path / f"cut{int(frac * 10)}_{os.path.basename(files[key])}"
            cut.write_bytes(data[: int(len(data) * frac)])
            with pytest.raises(TeacherLoadError) as info:
                load_teacher_ref(TeacherRef("a", str(cut), size=16, output="feat" if key != "tflite" else None))
            assert str(cut) in str(info.value), (key, frac, str(info.value))
    sm = tmp_path / "sm"
    shutil.copytree(files["savedmodel"], sm)
    pb = sm / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[:100])
    with pytest.raises(TeacherLoadError, match=re.escape(str(sm))):
        load_teacher_ref(TeacherRef("a", str(sm), size=16))
    (tmp_path / "model.pt").write_bytes(b"\x80\x02" + bytes(50))
    with pytest.raises(TeacherLoadError, match="model.pt: unknown model format"):
        load_teacher_ref(TeacherRef("a", str(tmp_path / "model.pt")))
    # A format named in the ref but not matching the file.
    with pytest.raises(TeacherLoadError, match="tiny.onnx: not a TFLite flatbuffer"):
        load_teacher_ref(TeacherRef("a", files["onnx"], size=16, format="tflite"))


class _BatchMean(tf.Module):
    """Averages over the batch: a [N, D] signature whose real output is [16, 3] for any N."""

    @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32)])
    def serve(self, x):
        return {"feat": tf.reduce_mean(x, axis=[0, 1])}


def test_check_forward_pass_catches_wrong_shape_and_nan(tiny, tmp_path):
    bad_dir = tmp_path / "batch_mean"
    module = _BatchMean()
    tf.saved_model.save(module, str(bad_dir), signatures={"serving_default": module.serve})
    ref = TeacherRef("bad", str(bad_dir), size=16)
    with pytest.raises(TeacherLoadError, match=rf"{re.escape(str(bad_dir))}: teacher 'bad' failed its check forward pass.*"
                                               r"expected features of shape \[2, 3\].*\(16, 3\)"):
        load_teacher_ref(ref)
    assert load_teacher_ref(ref, verify=False).dim == 3  # only the check pass sees it
    nan_model = keras.models.clone_model(tiny)
    nan_model.get_layer("head").set_weights([np.full((4, 3), np.nan, np.float32), np.zeros(3, np.float32)])
    nan_model.save(tmp_path / "nan.keras")
    with pytest.raises(TeacherLoadError, match=r"nan.keras: teacher 'n' gave NaN/Inf features \(shape \[2, 3\]\).*expected finite \[2, 3\]"):
        load_teacher_ref(TeacherRef("n", str(tmp_path / "nan.keras"), size=16))
