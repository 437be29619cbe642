"""TFLite conversion (int8 PTQ, float16, dynamic), op-set inspection, validation failures and inference."""
import json
import sys
import warnings

import numpy as np
import pytest

from face_transfer.core import interpreter as core_interpreter
from face_transfer.core.interpreter import interpreter_backend, load_interpreter
from face_transfer.deploy import infer
from face_transfer.deploy.savedmodel import export_savedmodel
from face_transfer.deploy.tflite import (
    QuantizationConfig,
    TFLiteValidationError,
    convert_to_tflite,
    tflite_op_set,
    validate_tflite,
    write_validation_report,
)

from tests.deploy_models import CFG, calibrated_student, smooth_images





@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    model = calibrated_student(CFG, seed=None)  # BN statistics of the data: realistic output scale
    out_dir = export_savedmodel(model, str(tmp_path_factory.mktemp("sm") / "student"))
    return model, out_dir


@pytest.fixture(scope="module")
def int8_bytes(student_dir):
    _, out_dir = student_dir
    return convert_to_tflite(out_dir, QuantizationConfig.for_int8(smooth_images(48, seed=4), steps=48))


def reference(model):
    return lambda images: {"embedding": model.predict(images.astype(np.float32), verbose=0)}


def test_int8_is_integer_only_with_uint8_input(student_dir, int8_bytes):
    model, _ = student_dir
    ops = tflite_op_set(int8_bytes)
    assert ops["has_float_ops"] is False, ops["float_ops"]
    assert ops["input_dtypes"] == ["uint8"] and ops["input_quantization"] == [[1.0, 0.0]]
    assert ops["output_dtypes"] == ["float32"]
    assert "CONV_2D" in ops["ops"] and "int8" in ops["tensor_dtypes"]
    report = validate_tflite(int8_bytes, reference(model), smooth_images(16, seed=5), min_cosine=0.95)
    assert report["int8_only"] is True and report["input_dtype"] == "uint8"
    assert report["cosine_mean"] >= 0.95 and report["cosine_min"] <= report["cosine_mean"]


def test_validation_fails_loudly(student_dir, int8_bytes):
    model, _ = student_dir
    with pytest.raises(TFLiteValidationError, match="cosine") as err:
        validate_tflite(int8_bytes, reference(model), smooth_images(4, seed=6), min_cosine=1.01)
    assert err.value.report["outputs"]["embedding"]["cosine_mean"] <= 1.0
    # A float file claimed to be int8 is rejected for its float compute ops.
    float_bytes = convert_to_tflite(student_dir[1], QuantizationConfig.for_float32())
    with pytest.raises(TFLiteValidationError, match="float"):
        validate_tflite(float_bytes, reference(model), smooth_images(4, seed=6), min_cosine=0.0, expect_int8=True)


@pytest.mark.parametrize("mode", ["float16", "dynamic"])
def test_float16_and_dynamic_convert(student_dir, mode, tmp_path):
    model, out_dir = student_dir
    data = convert_to_tflite(out_dir, getattr(QuantizationConfig, f"for_{mode}")())
    report = validate_tflite(data, reference(model), smooth_images(8, seed=7), min_cosine=0.99)
    assert report["int8"] is False and report["int8_only"] is None and report["input_dtype"] == "uint8"
    json_path, md_path = write_validation_report({f"student_{mode}.tflite": report}, tmp_path)
    assert json.load(open(json_path))[f"student_{mode}.tflite"]["size_bytes"] == len(data)
    assert f"student_{mode}.tflite" in open(md_path).read()


def test_run_tflite_named_outputs_and_backend(student_dir, int8_bytes, tmp_path):
    assert interpreter_backend() == "ai_edge_litert"
    path = tmp_path / "student_int8.tflite"
    path.write_bytes(int8_bytes)
    interpreter = load_interpreter(str(path))
    images = smooth_images(5, seed=8)
    out = infer.run_tflite(interpreter, images, batch_size=2)  # 3 batches incl. a ragged one
    assert list(out) == ["embedding"] and out["embedding"].shape == (5, 16)
    one = infer.run_tflite(interpreter, images[3:4])
    np.testing.assert_allclose(one["embedding"][0], out["embedding"][3], atol=1e-6)
    ms = infer.benchmark_latency(lambda x: infer.run_tflite(interpreter, x), images, warmup=1, runs=3)
    assert 0 < ms < 1000
    with pytest.raises(ValueError, match="32,32,3"):
        infer.run_tflite(interpreter, smooth_images(1, size=16))
    with pytest.raises(FileNotFoundError, match="missing.tflite"):
        load_interpreter(str(tmp_path / "missing.tflite"))


_DEPRECATED_INTERPRETER = "tf.lite.Interpreter is deprecated"


def test_int8_conversion_and_inference_use_no_deprecated_interpreter(student_dir, capfd):
    """Issue 21: `make demo`/`make test` logged "tf.lite.Interpreter is deprecated and is scheduled for deletion"
    (a UserWarning from tensorflow/lite/python/interpreter.py): TF's int8 calibrator built a tf.lite.Interpreter
    for our {input name: array} calibration samples. Neither the conversion nor our inference may build one."""
    model, out_dir = student_dir
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = convert_to_tflite(out_dir, QuantizationConfig.for_int8(smooth_images(8, seed=4), steps=8))
        out = infer.run_tflite(load_interpreter(data), smooth_images(2, seed=5))
        load_interpreter(data, default_delegates=False, preserve_all_tensors=True)
    assert out["embedding"].shape == (2, 16)
    deprecated = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if _DEPRECATED_INTERPRETER in str(w.message)]
    assert not deprecated, deprecated
    err = capfd.readouterr().err
    assert _DEPRECATED_INTERPRETER not in err and "scheduled for deletion" not in err, err[-2000:]


def test_interpreter_never_falls_back_to_tf_lite(monkeypatch):
    """Without ai_edge_litert and tflite_runtime there is no interpreter (an ImportError saying what to install),
    never the deprecated tf.lite.Interpreter."""
    monkeypatch.setattr(core_interpreter, "_BACKEND", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(ImportError, match="ai-edge-litert"):
        interpreter_backend()


def test_quantization_config_checks_its_inputs(tmp_path):
    with pytest.raises(ValueError, match="representative_images"):
        QuantizationConfig("int8_ptq")
    with pytest.raises(ValueError, match="expected one of .*'int8_ptq', 'int8_qat'"):
        QuantizationConfig("int8")  # one name per mode: int8_ptq or int8_qat
    with pytest.raises(ValueError, match="uint8"):
        QuantizationConfig.for_int8(np.zeros((4, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="mode"):
        QuantizationConfig("int4")
    with pytest.raises(ValueError, match="saved_model.pb"):
        convert_to_tflite(str(tmp_path), QuantizationConfig.for_float32())


def _many_heads(features, rng, collapsed, ill_conditioned=("yaw", "pitch")):
    """~20 linear probes of mixed kinds, standardised like evaluation.heads.fit_head (std + 1e-6).

    `collapsed` embedding dims are constant (scale 1e-6): well-conditioned probes give them no weight
    (as a fitted probe does for a constant feature); the `ill_conditioned` ones do, which folds into
    kernel weights ~1e5 next to an output range of a few units, as on a collapsed smoke-run student.
    """
    dim = features.shape[1]
    mean, scale = features.mean(0), features.std(0) + 1e-6
    kinds = ["classification"] * 10 + ["regression"] * 7 + ["landmarks"]
    n_classes = [1, 2, 3, 5, 7]
    target = [(0.5, 0.2), (40.0, 12.0), (0.0, 25.0), (100.0, 50.0)]
    heads = {}
    for i, kind in enumerate(kinds):
        k = {"classification": n_classes[i % 5], "regression": 1, "landmarks": 10}[kind]
        coef = rng.normal(size=(dim, k)) * (0.02 if kind == "landmarks" else 0.15)
        coef[collapsed] = 0.0
        head = {"kind": kind, "mean": mean, "scale": scale, "intercept": rng.normal(size=k) * 0.1}
        if kind == "classification" and k == 1:
            coef, head["classes"] = coef.T, ["no", "yes"]  # scikit-learn binary layout [1, D]
        elif kind == "regression":
            head["target_mean"], head["target_scale"] = target[i % 4]
        elif kind == "landmarks":
            head["intercept"] = np.full(10, 0.5)
        head["coef"] = coef
        heads[f"{kind[:5]}_{i}"] = head
    for name in ill_conditioned:
        coef = rng.normal(size=(dim, 1)) * 0.1
        coef[collapsed] = 0.3
        heads[name] = {"kind": "regression", "mean": mean, "scale": scale, "coef": coef,
                       "intercept": [0.0], "target_mean": 0.0, "target_scale": 15.0}
    return heads


def test_int8_analyzer_with_many_heads_loads_with_xnnpack(monkeypatch):
    """Regression: an int8 analyser whose folded probes give a fully-connected node a requantization
    scale (input * weight / output scale) >= 256 failed to load with the default XNNPACK delegate
    ("failed to create XNNPACK runtime ... failed to prepare"); convert_to_tflite now fits those nodes."""
    from face_transfer.deploy import tflite as tfl
    from face_transfer.deploy.savedmodel import build_analyzer

    model = calibrated_student(CFG, seed=0)
    collapsed = [3, 11]
    dense = model.get_layer("embedding")
    kernel, bias = dense.get_weights()
    kernel[:, collapsed], bias[collapsed] = 0.0, [0.05, -0.02]  # dead embedding dims, as in a collapsed student
    dense.set_weights([kernel, bias])
    calib = smooth_images(32, seed=4)
    features = model.predict(calib.astype(np.float32), verbose=0).astype(np.float64)
    heads = _many_heads(features, np.random.default_rng(0), collapsed)
    assert len(heads) == 20
    analyzer = build_analyzer(model, heads)

    fitted = []
    original = tfl.fit_xnnpack_requantization

    def recording(data, *args, **kwargs):
        data, fixes = original(data, *args, **kwargs)
        fitted.extend(fixes)
        return data, fixes

    monkeypatch.setattr(tfl, "fit_xnnpack_requantization", recording)
    data = convert_to_tflite(analyzer, QuantizationConfig.for_int8(calib, steps=32))
    # The ill-conditioned heads (and only they) had nodes XNNPACK refuses; now every node is < 256.
    assert len(fitted) == 2 and all(f["ratio"] >= 256 and f["new_ratio"] < 256 for f in fitted), fitted
    assert original(data)[1] == []
    ops = tflite_op_set(data)
    assert ops["has_float_ops"] is False and ops["input_dtypes"] == ["uint8"]

    interpreter = load_interpreter(data)  # default delegates (XNNPACK): used to raise RuntimeError
    images = smooth_images(16, seed=9)
    got = infer.run_tflite(interpreter, images)
    want = analyzer.predict(images.astype(np.float32), verbose=0)
    assert set(got) == set(want) == {"embedding", *heads}
    stats = {}
    for name, ref in want.items():
        out = got[name]
        assert out.shape == ref.shape and np.all(np.isfinite(out)), name
        stats[name] = {"cos": float(tfl.output_cosines(out, ref).mean()), "max_abs": float(np.abs(out - ref).max()),
                       "corr": float(np.corrcoef(out.ravel(), ref.ravel())[0, 1])}
    for name, s in stats.items():
        if name in ("yaw", "pitch"):
            continue  # weights ~1e5 on a constant feature: no int8 file reproduces these, it only has to load
        if name in heads and heads[name]["kind"] == "classification":
            np.testing.assert_allclose(got[name].sum(axis=1), 1.0, atol=0.03)
            assert s["cos"] > 0.95 and s["max_abs"] < 0.3, (name, s)
        else:  # the tiny untrained student's own int8 embedding is at cosine ~0.97
            assert s["cos"] > 0.9 and s["corr"] > 0.8, (name, s)
    assert got["landm_17"].shape == (len(images), 5, 2)


def test_int8_folds_the_input_normalisation_into_the_stem(student_dir, monkeypatch):
    """Issue 13: the frozen 1x1 `preprocess` depthwise conv (x/127.5 - 1 on 3 channels, a 16-channel tile
    in XNNPACK: ~6% of the int8 student's instructions on the AVX2 path) is replaced by a scalar ADD, its
    scale moved into the stem conv's weights; the file computes the same thing."""
    from face_transfer.deploy import tflite as tfl

    model, out_dir = student_dir
    unfolded = []
    original = tfl.fold_input_affine

    def recording(data):
        unfolded.append(data)
        return original(data)

    monkeypatch.setattr(tfl, "fold_input_affine", recording)
    data = convert_to_tflite(out_dir, QuantizationConfig.for_int8(smooth_images(48, seed=4), steps=48))
    assert len(unfolded) == 1 and original(data)[1] == []  # folded once; nothing left to fold

    interp = load_interpreter(data, default_delegates=False)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()
    assert [op["op_name"] for op in ops[:3]] == ["QUANTIZE", "ADD", "CONV_2D"], [op["op_name"] for op in ops[:4]]
    shift = tensors[ops[1]["inputs"][1]]
    assert list(shift["shape"]) == [] and np.dtype(shift["dtype"]) == np.int8  # a scalar constant
    assert ops[2]["inputs"][0] == ops[1]["outputs"][0]  # the ADD feeds the stem conv
    dw_kernels = [tuple(tensors[op["inputs"][1]]["shape"][1:3]) for op in ops if op["op_name"] == "DEPTHWISE_CONV_2D"]
    assert dw_kernels and (1, 1) not in dw_kernels  # the 3x3 depthwise convs stay, the 1x1 one is gone
    ops_before = [op["op_name"] for op in load_interpreter(unfolded[0], default_delegates=False)._get_ops_details()]
    assert ops_before[:3] == ["QUANTIZE", "DEPTHWISE_CONV_2D", "CONV_2D"] and len(ops_before) == len(ops)
    assert tflite_op_set(data)["has_float_ops"] is False

    images = smooth_images(16, seed=7)
    got = infer.run_tflite(load_interpreter(data), images)["embedding"]
    before = infer.run_tflite(load_interpreter(unfolded[0]), images)["embedding"]
    dequantize = next(op for op in ops if op["op_name"] == "DEQUANTIZE")
    step = tensors[dequantize["inputs"][0]]["quantization"][0]  # one step of the int8 embedding
    assert np.max(np.abs(got - before)) <= 2 * step + 1e-6
    ref = model.predict(images.astype(np.float32), verbose=0)
    assert tfl.output_cosines(got, ref).mean() >= 0.95


def test_the_faster_student_file_is_chosen_by_cpu_isa(tmp_path):
    """int8 where the CPU has int8 dot products (VNNI, ARM dotprod), float32 on AVX2-only x86
    (benchmarks.bench_latency: XNNPACK's AVX2 int8 kernels are slower than its float32 ones there)."""
    from face_transfer.deploy.infer import preferred_student_file
    from face_transfer.machine import int8_is_fast
    avx2 = ["sse4_2", "avx", "avx2", "fma"]
    assert not int8_is_fast(avx2)
    assert int8_is_fast(avx2 + ["avx512f", "avx512_vnni"]) and int8_is_fast(avx2 + ["avx_vnni"])
    assert int8_is_fast(["neon", "asimd", "asimddp"])
    with pytest.raises(FileNotFoundError, match="no student_int8_ptq.tflite or student_float32.tflite"):
        preferred_student_file(str(tmp_path), avx2)
    (tmp_path / "student_int8_ptq.tflite").write_bytes(b"x")
    path, why = preferred_student_file(str(tmp_path), avx2)  # float32 preferred but absent: the one there is
    assert path.endswith("student_int8_ptq.tflite") and "only student file" in why
    (tmp_path / "student_float32.tflite").write_bytes(b"x")
    assert preferred_student_file(str(tmp_path), avx2)[0].endswith("student_float32.tflite")
    assert preferred_student_file(str(tmp_path), avx2 + ["avx512_vnni"])[0].endswith("student_int8_ptq.tflite")


_TOY_MODE = """
from face_transfer.deploy.modes import TfliteMode, register_mode


@register_mode("toy_fp16")
class ToyFp16(TfliteMode):
    def configure(self, converter, qcfg, input_spec, path):
        import tensorflow as tf

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]

    def finish(self, data):
        return data + b"toy"  # a flatbuffer ignores trailing bytes; proves the hook ran
"""


def test_a_new_mode_is_one_module(student_dir, tmp_path, monkeypatch):
    """A TFLite mode written in one file registers itself on import and converts with no other edit."""
    from face_transfer.deploy.modes import TFLITE_MODES, get_mode, mode_names

    (tmp_path / "toy_tflite_mode.py").write_text(_TOY_MODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import toy_tflite_mode  # noqa: F401  (registers "toy_fp16")

    try:
        assert mode_names()[-1] == "toy_fp16" and get_mode("toy_fp16").file_name() == "student_toy_fp16.tflite"
        data = convert_to_tflite(student_dir[1], QuantizationConfig.for_mode("toy_fp16"))
        assert data.endswith(b"toy")
        assert "float16" in tflite_op_set(data)["tensor_dtypes"]
    finally:
        TFLITE_MODES.unregister("toy_fp16")
