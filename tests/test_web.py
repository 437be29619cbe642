"""The browser page (web/src, face_transfer.deploy.web) in headless Chromium: LiteRT.js runs the int8 analyser
and the MTCNN detector converted to TFLite; what the page reports must match the Python pipeline.

Needs Chromium (apt-get install -y chromium) and web/node_modules (`make web`); skipped otherwise. The analyser
comes from $FACE_TRANSFER_WEB_RUN (a run directory), else runs/bench/demo or runs/demo when they exist
(read only: the files are copied), else a small analyser built here (48x48 input) from a random student.
"""
import base64
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from face_transfer.deploy import web

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OK, _WHY = web.browser_status()
needs_browser = pytest.mark.skipif(not _OK, reason=f"browser test skipped: {_WHY}")

BOX_TOL_PX = 0.05       # JS/TFLite float32 cascade vs the mtcnn package (Keras): same arithmetic, float32 rounding
LANDMARK_TOL_PX = 0.05
SCORE_TOL = 1e-4


SYNTH_TRAINED_ON = {"dataset": "SynthFaces (photo eval set)", "images": 2000, "domain": "synthetic (SynthFaces)",
                    "synthetic": True}
REAL_TRAINED_ON = {"dataset": "my_photos", "path": "data/my_photos/labels.csv", "images": 480, "domain": "real",
                   "synthetic": False}


def _analyser_source():
    env = os.environ.get("FACE_TRANSFER_WEB_RUN")
    candidates = [env] if env else [os.path.join(ROOT, "runs", "bench", "demo"), os.path.join(ROOT, "runs", "demo")]
    for run_dir in candidates:
        if run_dir and os.path.isfile(os.path.join(run_dir, "export", "analyzer_int8.tflite")) and \
                os.path.isfile(os.path.join(run_dir, "export", "analyzer_int8.labels.json")):
            return os.path.join(run_dir, "export")
    return None


def _small_analyser(export_dir):
    """An int8 analyser with the real head names and kinds on a random 48x48 student (no pipeline run)."""
    import keras

    from face_transfer.deploy.savedmodel import analyzer_metadata, build_analyzer
    from face_transfer.deploy.tflite import QuantizationConfig, convert_to_tflite
    from face_transfer.student.config import StudentConfig
    from face_transfer.student.model import build_student

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = build_student(StudentConfig(input_size=48, width=0.25, embedding_dim=16))
    calib = np.clip(128 + 50 * rng.normal(size=(32, 48, 48, 3)), 0, 255).astype(np.uint8)
    feats = model.predict(calib.astype(np.float32), verbose=0).astype(np.float64)
    mean, scale = feats.mean(0), feats.std(0) + 1e-6
    spec = {"expression": ("classification", 7), "gender": ("classification", 1), "age": ("regression", 1),
            "yaw": ("regression", 1), "pitch": ("regression", 1), "roll": ("regression", 1),
            "landmarks": ("landmarks", 10), "glasses": ("classification", 1), "smile": ("regression", 1)}
    heads = {}
    for name, (kind, k) in spec.items():
        coef = rng.normal(size=(16, k)) * (0.02 if kind == "landmarks" else 0.3)
        head = {"kind": kind, "mean": mean, "scale": scale, "intercept": rng.normal(size=k) * 0.1, "coef": coef}
        if kind == "classification" and k == 1:
            head["coef"], head["classes"] = coef.T, ["no", "yes"]
        elif kind == "regression":
            head["target_mean"], head["target_scale"] = 10.0, 5.0
        elif kind == "landmarks":
            head["intercept"] = np.full(10, 0.5)
        heads[name] = head
    data = convert_to_tflite(build_analyzer(model, heads), QuantizationConfig.for_int8(calib, steps=32))
    with open(os.path.join(export_dir, "analyzer_int8.tflite"), "wb") as f:
        f.write(data)
    meta = analyzer_metadata(heads)
    meta["expression"]["classes"] = ["neutral", "happy", "sad", "surprise", "angry", "disgust", "fear"]
    for name, entry in meta.items():  # as the export stage and face-transfer-adapt write it
        entry["trained_on"] = REAL_TRAINED_ON if name in ("glasses", "smile") else SYNTH_TRAINED_ON
    with open(os.path.join(export_dir, "analyzer_int8.labels.json"), "w") as f:
        json.dump(meta, f)


@pytest.fixture(scope="module")
def photos():
    from skimage import data as skdata

    from face_transfer.data import synth

    face, _ = synth.render_faces(synth.SynthConfig(image_size=256, difficulty=0.0), np.arange(3, 4))
    # larger than align.MAX_DETECT_SIDE: detected after the PIL BOX shrink (ported to the page) to 1024 px
    big = np.asarray(Image.fromarray(skdata.astronaut()).resize((1600, 1400), Image.Resampling.BICUBIC))
    return {"astronaut": skdata.astronaut(), "synthetic": face[0], "astronaut_1600": big}


@pytest.fixture(scope="module")
def page(tmp_path_factory, photos):
    if not _OK:
        pytest.skip(f"browser test skipped: {_WHY}")
    root = tmp_path_factory.mktemp("webrun")
    export_dir = root / "export"
    export_dir.mkdir()
    src = _analyser_source()
    if src:
        for name in ("analyzer_int8.tflite", "analyzer_int8.labels.json"):
            shutil.copyfile(os.path.join(src, name), export_dir / name)
    else:
        _small_analyser(str(export_dir))
    config = web.build_web_page(str(export_dir))
    files = root / "files"
    files.mkdir()
    paths = {}
    for name, img in photos.items():
        paths[name] = str(files / f"{name}.png")
        Image.fromarray(img).save(paths[name])
    paths["undecodable"] = str(files / "undecodable.jpg")
    with open(paths["undecodable"], "wb") as f:  # a JPEG header, then garbage
        f.write(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 40)
    paths["huge"] = str(files / "huge.png")  # 10,000 x 10,000, a smooth gradient (no face): ~100 megapixels
    grad = np.linspace(40, 220, 10000).astype(np.uint8)
    Image.fromarray(np.broadcast_to(grad[None, :, None], (10000, 10000, 3)).copy()).save(paths["huge"])
    paths["too_many_pixels"] = str(files / "too_many_pixels.png")  # 13,000 x 13,000: a tiny file, 169 MP
    Image.new("RGB", (13000, 13000), (90, 90, 90)).save(paths["too_many_pixels"])
    paths["too_big"] = str(files / "too_big.jpg")
    with open(paths["too_big"], "wb") as f:
        f.write(b"\xff\xd8" + bytes(web.MAX_FILE_BYTES + 10))
    order = ["astronaut", "synthetic", "astronaut_1600", "undecodable", "huge", "too_many_pixels", "too_big"]
    shot = os.path.join(config["dir"], "screenshot.png")
    res = web.drive_page(config["dir"], [paths[k] for k in order], screenshot=shot, screenshot_after=0)
    return {"config": config, "export_dir": str(export_dir), "runs": dict(zip(order, res["runs"])), "raw": res,
            "screenshot": shot}


def _crop(run):
    size = run["crop"]["size"]
    return np.frombuffer(base64.b64decode(run["crop"]["rgb_b64"]), np.uint8).reshape(size, size, 3)


def _output_steps(tflite_path):
    """{output name: its int8 quantisation step} (the scale of the tensor each float output is dequantised from)."""
    from face_transfer.core.interpreter import load_interpreter

    it = load_interpreter(tflite_path, default_delegates=False)
    runner = it.get_signature_runner()
    out_index = {d["index"]: k for k, d in runner.get_output_details().items()}
    details = {d["index"]: d for d in it.get_tensor_details()}
    steps = {}
    for op in it._get_ops_details():
        for o in op["outputs"]:
            if o in out_index:
                src = details[op["inputs"][0]] if op["op_name"] == "DEQUANTIZE" else details[o]
                steps[out_index[o]] = float(src["quantization"][0]) or 1e-6
    return steps


def test_page_loads_everything_from_its_own_folder(page):
    raw = page["raw"]
    assert raw["ready"]["state"] == "ready", raw["ready"]
    origin = raw["url"]
    outside = [u for u in raw["requests"] if not u.startswith(origin) and not u.startswith(("data:", "blob:"))]
    assert outside == [], f"the page fetched from outside its folder: {outside}"
    assert any(u.endswith(".wasm") for u in raw["requests"])
    assert os.path.getsize(page["screenshot"]) > 10_000


@pytest.mark.parametrize("name", ["astronaut", "synthetic", "astronaut_1600"])
def test_js_mtcnn_matches_the_mtcnn_package(page, photos, name):
    from face_transfer.data import align

    run = page["runs"][name]
    assert run["state"] == "done" and run["detection"]["used"] == "mtcnn", run.get("message")
    py = align.detect_faces(photos[name])
    js = run["detection"]["faces"]
    assert len(js) == len(py) >= 1
    for f_js, f_py in zip(js, py):
        assert np.abs(np.array(f_js["box"]) - f_py.box).max() < BOX_TOL_PX
        assert np.abs(np.array(f_js["landmarks"]) - f_py.landmarks).max() < LANDMARK_TOL_PX
        assert abs(f_js["score"] - f_py.score) < SCORE_TOL


@pytest.mark.parametrize("name", ["astronaut", "synthetic", "astronaut_1600"])
def test_js_alignment_matches_align_py(page, photos, name):
    from face_transfer.data import align

    run = page["runs"][name]
    crop = _crop(run)
    size = crop.shape[0]
    face = run["detection"]["faces"][run["detection"]["chosen"]]
    # the same landmarks through align.py: the warp (and PIL's pre-shrink) are ported exactly
    same = align.align_face(photos[name], np.array(face["landmarks"]), size=size)
    assert np.abs(same.astype(int) - crop).max() <= 1
    # the whole Python path (its own detection): the landmarks differ by < LANDMARK_TOL_PX
    full = align.align_largest_face(photos[name], size=size)
    assert np.abs(full.astype(int) - crop).max() <= 2


@pytest.mark.parametrize("name", ["astronaut", "synthetic", "astronaut_1600", "huge"])
def test_browser_analyser_matches_python_litert(page, name):
    from face_transfer.deploy import infer
    from face_transfer.core.interpreter import load_interpreter

    run = page["runs"][name]
    assert run["state"] == "done", run.get("message")
    path = os.path.join(page["export_dir"], "analyzer_int8.tflite")
    ref = infer.run_tflite(load_interpreter(path), _crop(run)[None])
    steps = _output_steps(path)
    labels = json.load(open(os.path.join(page["export_dir"], "analyzer_int8.labels.json")))
    assert set(labels) <= set(run["outputs"]) and set(ref) == set(run["outputs"])
    for head, value in ref.items():
        got = np.array(run["outputs"][head], np.float32)
        diff = np.abs(got - value.reshape(-1)).max()
        assert diff <= 1.01 * steps[head], f"{head}: browser vs Python differ by {diff} (int8 step {steps[head]})"
    assert 0 < run["latency"]["analyzer_ms_per_face"] < 1000


def test_page_shows_what_each_head_was_fitted_on(page):
    """Next to each head, the data it was fitted on (the labels file's `trained_on`); a "synthetic faces only"
    badge on every head fitted on synthetic faces, none on the others, and a note above the heads."""
    labels = json.load(open(os.path.join(page["export_dir"], "analyzer_int8.labels.json")))
    if not any(m.get("trained_on") for m in labels.values()):
        pytest.skip("the run's labels file predates `trained_on` (re-export it)")
    assert page["raw"]["ready"]["trained_on"] == {n: m.get("trained_on") for n, m in labels.items()}
    synthetic = sorted(n for n, m in labels.items() if (m.get("trained_on") or {}).get("synthetic"))
    assert synthetic, "no head fitted on synthetic faces to check the badge on"
    for name in ("astronaut", "synthetic"):
        run = page["runs"][name]
        assert run["state"] == "done", run.get("message")
        assert sorted(run["synthetic_badges"]) == synthetic
        for head, meta in labels.items():
            t = meta.get("trained_on")
            text = run["trained_on_text"][head]
            if t is None:
                assert text is None, head
                continue
            assert text.startswith(f"fitted on {t['images']} images of {t['dataset']}"), (head, text)
            assert t["synthetic"] or text.endswith(f"({t['domain']})"), (head, text)
        note = run["synthetic_note"]
        assert "synthetic faces only" in note and "face-transfer-adapt" in note, note
        assert all(h in note for h in synthetic) or note.startswith("⚠ Every head here was"), note
    # a file that fails shows no heads: no badges, no note
    bad = page["runs"]["undecodable"]
    assert bad["synthetic_badges"] is None and bad["synthetic_note"] is None


def test_bad_inputs_are_reported_and_the_page_stays_usable(page):
    runs = page["runs"]
    bad = runs["undecodable"]
    assert bad["state"] == "error" and bad["error"] == "undecodable" and "cannot decode" in bad["status_text"]
    assert bad["responsive"]
    huge = runs["huge"]
    assert huge["state"] == "done", huge.get("message")
    assert (huge["image"]["original_width"], huge["image"]["original_height"]) == (10000, 10000)
    assert max(huge["image"]["width"], huge["image"]["height"]) == web.MAX_WORK_SIDE
    assert max(huge["image"]["detect_width"], huge["image"]["detect_height"]) <= 1024
    assert huge["detection"]["used"] == "centre_crop"
    assert "downscaled" in huge["warning_text"] and "No face found" in huge["warning_text"]
    assert huge["wall_ms"] < 60_000 and huge["responsive"]
    # the work runs in a worker: the page's main thread answers within a second all along
    for name in ("huge", "astronaut_1600"):
        assert runs[name]["max_ui_wait_ms"] < 1000, (name, runs[name]["max_ui_wait_ms"])
    many = runs["too_many_pixels"]
    assert many["state"] == "error" and many["error"] == "too_many_pixels" and "megapixels" in many["status_text"]
    assert many["wall_ms"] < 10_000 and many["responsive"]
    big = runs["too_big"]
    assert big["state"] == "error" and big["error"] == "too_large" and "25 MB" in big["status_text"]


# ------------------------------------------------------------------------------------------- without a browser


def test_canvas_pnet_equals_pnet_on_the_level(tmp_path):
    """A pyramid level of odd size in the top-left of a larger canvas, with the mask, gives exactly the
    P-Net outputs of the level alone (the 'same' max pool pads the level's odd edge with -inf)."""
    from face_transfer.core.interpreter import load_interpreter
    from face_transfer.deploy import detector_tflite

    detector_tflite.convert_mtcnn(str(tmp_path), canvases=(64,))
    pnet = detector_tflite.mtcnn_stage_models()[0]
    runner = load_interpreter(str(tmp_path / "pnet_64.tflite")).get_signature_runner()
    rng = np.random.default_rng(0)
    for h, w in ((37, 51), (64, 64), (12, 13), (40, 29)):
        level = rng.uniform(-1, 1, (1, h, w, 3)).astype(np.float32)
        reg, prob = (t.numpy()[0] for t in pnet(level))
        canvas = np.zeros((1, 64, 64, 3), np.float32)
        canvas[0, :h, :w] = level[0]
        mask = np.zeros((1, 62, 62, 1), np.float32)
        mask[0, :h - 2, :w - 2] = 1
        out = runner(image=canvas, mask=mask)
        oh, ow = prob.shape[:2]
        assert (oh, ow) == (-(-(h - 2) // 2) - 4, -(-(w - 2) // 2) - 4)
        np.testing.assert_allclose(out["prob"][0, :oh, :ow], prob, atol=1e-5)
        np.testing.assert_allclose(out["reg"][0, :oh, :ow], reg, atol=1e-5)
        if w % 2 == 1:  # without the mask the odd edge column is wrong: the mask is what makes it exact
            plain = runner(image=canvas, mask=np.ones_like(mask))
            assert np.abs(plain["reg"][0, :oh, ow - 1] - reg[:, ow - 1]).max() > 1e-3


def test_static_batch_copy_computes_the_same(tmp_path):
    from face_transfer.deploy import infer
    from face_transfer.core.interpreter import load_interpreter

    src = _analyser_source()
    if src is None:
        _small_analyser(str(tmp_path))
        src = str(tmp_path)
    path = os.path.join(src, "analyzer_int8.tflite")
    data = web.static_batch_model(path)
    fixed, orig = load_interpreter(data), load_interpreter(path)
    detail = next(iter(fixed.get_signature_runner().get_input_details().values()))
    assert detail["shape_signature"][0] == 1
    size = int(detail["shape"][1])
    x = np.random.default_rng(1).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    a, b = infer.run_tflite(orig, x, batch_size=1), infer.run_tflite(fixed, x, batch_size=1)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_without_litert_the_export_stage_says_make_web(tmp_path, capsys, monkeypatch):
    from face_transfer.stages import export

    with pytest.raises(web.WebBuildUnavailable, match="make web"):
        web.build_web_page(str(tmp_path), node_modules=str(tmp_path / "no_node_modules"))
    monkeypatch.setattr(web, "web_status",
                        lambda node_modules=None: (False, "LiteRT.js is not installed; run `make web`"))

    class FakeRun:
        dir = str(tmp_path)

    export._web_page(FakeRun(), str(tmp_path))  # a notice, no exception, nothing written
    err = capsys.readouterr().err
    assert "browser page not built" in err and "make web" in err
    assert not (tmp_path / "web").exists()
