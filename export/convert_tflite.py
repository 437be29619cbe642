"""Converts a student/analyser SavedModel or .keras file to TFLite and validates it against the float model.

    python -m export.convert_tflite --saved_model_dir=runs/demo/export/student --mode=int8_ptq \
        --calibration_images=200 --out=runs/demo/export/student_int8_ptq.tflite
A file whose outputs drift from the float model (or an int8 file with float ops) is not written;
the figures go to parity.json / parity.md next to --out either way.
"""
import json
import os
import shutil

from absl import app, flags

from face_transfer.deploy.modes import get_mode, mode_names, modes
from trainers.common import define_verbose_flag, guarded, run_script  # noqa: E402  (one error boundary per script)

flags.DEFINE_string("saved_model_dir", None, "SavedModel written by export_savedmodel.")
flags.DEFINE_string("keras_model", None, "Student .keras file (required for --mode=int8_qat).")
flags.DEFINE_enum("mode", "int8_ptq", mode_names(),
                  "TFLite mode: " + ", ".join(f"{m.name} ({m.description})" for m in modes()) + ".")
flags.DEFINE_integer("calibration_images", 200, "Synthetic faces for int8 calibration and validation.")
flags.DEFINE_integer("qat_steps", 200, "QAT fine-tuning steps (self-distillation to the float model).")
flags.DEFINE_integer("qat_batch_size", 32, "QAT batch size.")
flags.DEFINE_float("qat_lr", 1e-4, "QAT learning rate.")
flags.DEFINE_float("min_cosine", None, "Refuse the file below this mean cosine (default: the mode's own, "
                   + ", ".join(f"{m.name} {m.min_cosine}" for m in modes()) + ").")
flags.DEFINE_integer("seed", 0, "Synthetic face seed for calibration/validation images.")
flags.DEFINE_string("out", None, "The .tflite file to write.")
FLAGS = flags.FLAGS
define_verbose_flag()


def synthetic_faces(n, size, stream, seed):
    from face_transfer.data.synth import SynthConfig, render_faces
    import numpy as np

    images, _ = render_faces(SynthConfig(image_size=size, seed=seed), np.arange(n), stream=stream, domain="mixed")
    return images


def _update_report(out, name, report):
    from face_transfer.deploy.tflite import write_validation_report

    out_dir = os.path.dirname(os.path.abspath(out))
    path = os.path.join(out_dir, "parity.json")
    reports = json.load(open(path)) if os.path.isfile(path) else {}
    reports[name] = report
    return write_validation_report(reports, out_dir)


@guarded
def main(argv):
    del argv
    if bool(FLAGS.saved_model_dir) == bool(FLAGS.keras_model):
        raise app.UsageError("give exactly one of --saved_model_dir or --keras_model")
    if not FLAGS.out or not FLAGS.out.endswith(".tflite"):
        raise app.UsageError(f"--out={FLAGS.out}: expected a path ending in .tflite")
    if FLAGS.calibration_images < 1:
        raise app.UsageError(f"--calibration_images={FLAGS.calibration_images}: expected >= 1")
    mode = get_mode(FLAGS.mode)
    if mode.trains and not FLAGS.keras_model:
        raise app.UsageError(f"--mode={mode.name} needs --keras_model (QAT retrains the tf_keras twin of the student)")
    if FLAGS.saved_model_dir and not os.path.isfile(os.path.join(FLAGS.saved_model_dir, "saved_model.pb")):
        raise app.UsageError(f"--saved_model_dir={FLAGS.saved_model_dir}: no saved_model.pb there")
    if FLAGS.keras_model and not os.path.isfile(FLAGS.keras_model):
        raise app.UsageError(f"--keras_model={FLAGS.keras_model}: no such file")
    min_cosine = FLAGS.min_cosine if FLAGS.min_cosine is not None else mode.min_cosine

    import numpy as np

    if FLAGS.saved_model_dir:
        import tensorflow as tf

        serve = tf.saved_model.load(FLAGS.saved_model_dir).signatures["serving_default"]
        (in_name, spec), = serve.structured_input_signature[1].items()
        size = int(spec.shape[1])

        def reference(images):
            out = serve(**{in_name: tf.constant(images.astype(spec.dtype.as_numpy_dtype))})
            return {k: v.numpy() for k, v in out.items()}

        source = FLAGS.saved_model_dir
    else:
        import keras

        model = keras.models.load_model(FLAGS.keras_model, compile=False)
        size = int(model.inputs[0].shape[1])
        # Named like the SavedModel/TFLite signature output of a single-output student.
        out_name = model.output_names[0] if not isinstance(model.output, dict) else None

        def reference(images):
            out = model.predict(images.astype(np.float32), verbose=0)
            return out if isinstance(out, dict) else {out_name: out}

        source = model

    calibration = synthetic_faces(FLAGS.calibration_images, size, "calibration", FLAGS.seed)
    validation = synthetic_faces(min(FLAGS.calibration_images, 256), size, "validation", FLAGS.seed)
    from face_transfer.deploy.tflite import QuantizationConfig, TFLiteValidationError, convert_to_tflite, validate_tflite

    if mode.trains:
        from face_transfer.deploy import qat  # flips the TF keras alias to tf_keras for this process (see qat.py)
        from face_transfer.student.model import infer_config

        cfg = infer_config(model)
        bs = FLAGS.qat_batch_size
        n = len(calibration)
        pick = lambda step: calibration[(np.arange(bs) + step * bs) % n]
        qat_model = qat.qat_finetune(
            model, cfg, pick, lambda x: reference(x)[out_name], FLAGS.qat_steps, bs, FLAGS.qat_lr
        )
        data = qat.convert_qat_to_tflite(qat_model, calibration)
    else:
        data = convert_to_tflite(source, QuantizationConfig.for_mode(mode.name, calibration))
    name = os.path.basename(FLAGS.out)
    try:
        report = validate_tflite(data, reference, validation, min_cosine=min_cosine)
    except TFLiteValidationError as e:
        e.report["error"] = str(e)
        _update_report(FLAGS.out, name, e.report)
        raise SystemExit(f"convert_tflite: {FLAGS.out} NOT written: {e}")
    report["mode"] = FLAGS.mode
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "wb") as f:
        f.write(data)
    if FLAGS.saved_model_dir and os.path.isfile(os.path.join(FLAGS.saved_model_dir, "labels.json")):
        shutil.copyfile(os.path.join(FLAGS.saved_model_dir, "labels.json"), FLAGS.out[: -len(".tflite")] + ".labels.json")
    json_path, _ = _update_report(FLAGS.out, name, report)
    print(json.dumps({"out": FLAGS.out, "size_bytes": report["size_bytes"], "cosine_mean": report["cosine_mean"],
                      "int8_only": report["int8_only"], "report": json_path}))


def run():
    """Console-script entry point."""
    from trainers.common import run_console
    run_console(main, __doc__)


if __name__ == "__main__":
    run_script(main)
