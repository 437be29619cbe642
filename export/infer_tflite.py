"""Runs a .tflite student/analyser on photos (aligned with MTCNN) or synthetic faces and prints JSON predictions.

With an analyser, the JSON also says what each head was fitted on (`trained_on`, from the file's metadata) and
`notes` names the heads fitted on synthetic faces only; the same goes to stderr as text.

    python -m export.infer_tflite --model=runs/demo/export/analyzer_int8.tflite --images=photos/ --out=preds.json
    python -m export.infer_tflite --model=student_int8.tflite --synthetic=4
"""
import json
import os
import sys

from absl import app, flags

from trainers.common import define_verbose_flag, guarded, run_script  # noqa: E402  (one error boundary per script)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

flags.DEFINE_string("model", None, "The .tflite file, or a run's export/ folder (then the student file that is faster on this CPU: int8, or float32 on x86 without VNNI).")
flags.DEFINE_enum("precision", "auto", ["auto", "int8", "float32"], "With --model=<export folder>: which student "
                  "file; auto = the faster one on this CPU.")
flags.DEFINE_string("images", None, "An image file or a folder of photos.")
flags.DEFINE_integer("synthetic", None, "Instead of --images: this many synthetic faces.")
flags.DEFINE_boolean("align", True, "Detect and align the largest face of each photo (MTCNN); else centre-crop.")
flags.DEFINE_string("labels", None, "Output kinds/class names JSON (default: the file's own TFLite metadata, else "
                    "<model>.labels.json if present).")
flags.DEFINE_integer("num_threads", 1, "Interpreter threads.")
flags.DEFINE_integer("benchmark_runs", 0, "If > 0, also report the median latency (ms per face) over this many runs.")
flags.DEFINE_string("out", None, "Also write the predictions JSON here.")
FLAGS = flags.FLAGS
define_verbose_flag()


def image_paths(spec):
    if os.path.isdir(spec):
        paths = sorted(os.path.join(spec, n) for n in os.listdir(spec) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not paths:
            raise app.UsageError(f"--images={spec}: folder has no {'/'.join(IMAGE_EXTENSIONS)} files")
        return paths
    if os.path.isfile(spec):
        return [spec]
    raise app.UsageError(f"--images={spec}: no such file or folder")


def load_images(size):
    import numpy as np

    if FLAGS.synthetic:
        from face_transfer.data.synth import SynthConfig, render_faces

        images, _ = render_faces(SynthConfig(image_size=size), np.arange(FLAGS.synthetic), stream="infer")
        return images, [f"synthetic[{i}]" for i in range(FLAGS.synthetic)]
    paths = image_paths(FLAGS.images)
    if FLAGS.align:
        from face_transfer.data.align import align_photos

        images, report = align_photos(paths, size=size, on_error="skip")
        return images, list(report.kept_sources)
    from face_transfer.data.imageio import center_square_resize, load_image

    return np.stack([center_square_resize(load_image(p), size) for p in paths]), paths


def decode(outputs, labels, i):
    """One image's predictions, readable: class names and probabilities, values, landmarks."""
    row = {}
    for name, value in outputs.items():
        v = value[i]
        meta = labels.get(name, {})
        if meta.get("kind") == "classification":
            classes = meta.get("classes") or [str(k) for k in range(len(v))]
            row[name] = {"class": classes[int(v.argmax())],
                         "probabilities": {c: round(float(p), 4) for c, p in zip(classes, v)}}
        else:
            # Regression values in the task's units; landmarks as [5][x, y]; a student's `embedding` (the code)
            # and `features` (the view its run's transfer score is measured on) as vectors.
            row[name] = v.astype(float).round(4).tolist()
    return row


def trained_on(labels, output_names):
    """({head: what it was fitted on, or None when the file does not say}, [notes]) for every head the labels
    describe (outputs that are not embeddings); the note names the heads fitted on synthetic faces only."""
    heads = {n: labels[n].get("trained_on") for n in output_names
             if n in labels and labels[n].get("kind") != "embedding"}
    synthetic = [n for n, t in heads.items() if t and t.get("synthetic")]
    notes = []
    if synthetic:
        datasets = ", ".join(dict.fromkeys(str(heads[n].get("dataset") or "synthetic faces") for n in synthetic))
        many = len(synthetic) > 1
        which = (f"all {len(heads)} heads" if many and len(synthetic) == len(heads) else
                 f"{'heads' if many else 'head'} {', '.join(synthetic)}")
        notes.append(f"note: {which} {'were' if many else 'was'} fitted on synthetic faces only ({datasets}); "
                     f"adapt {'them' if many else 'it'} on your photos with face-transfer-adapt")
    return heads, notes


def print_trained_on(heads, notes):
    """What each head was fitted on, heads with the same data on one line, then the notes (stderr: stdout is the
    predictions JSON)."""
    from face_transfer.deploy.bundle import trained_on_text
    groups = {}
    for name, t in heads.items():
        groups.setdefault(trained_on_text({"trained_on": t}), []).append(name)
    for text, names in groups.items():
        print(f"{', '.join(names)}: {text}", file=sys.stderr)
    for note in notes:
        print(note, file=sys.stderr)


@guarded
def main(argv):
    del argv
    if FLAGS.model and os.path.isdir(FLAGS.model):  # a run's export/ folder: the faster student file here
        from face_transfer.deploy.infer import preferred_student_file
        try:
            FLAGS.model, why = preferred_student_file(FLAGS.model, prefer=FLAGS.precision)
        except FileNotFoundError as e:
            raise app.UsageError(f"--model: {e}") from None
        print(f"--model: {FLAGS.model} ({why})", file=sys.stderr)
    elif FLAGS.precision != "auto":
        raise app.UsageError(f"--precision={FLAGS.precision}: only with --model=<a run's export/ folder>; "
                             f"--model={FLAGS.model} is one file already")
    if not FLAGS.model or not os.path.isfile(FLAGS.model) or not FLAGS.model.endswith(".tflite"):
        raise app.UsageError(f"--model={FLAGS.model}: expected an existing .tflite file, or a run's export/ folder")
    if bool(FLAGS.images) == bool(FLAGS.synthetic):
        raise app.UsageError("give exactly one of --images or --synthetic")
    if FLAGS.synthetic is not None and FLAGS.synthetic < 1:
        raise app.UsageError(f"--synthetic={FLAGS.synthetic}: expected >= 1")
    if FLAGS.labels and not os.path.isfile(FLAGS.labels):
        raise app.UsageError(f"--labels={FLAGS.labels}: no such file")

    from face_transfer.deploy import infer
    from face_transfer.core.interpreter import interpreter_backend, load_interpreter

    interpreter = load_interpreter(FLAGS.model, num_threads=FLAGS.num_threads)
    # Labels, units and input normalisation from the file's own TFLite metadata; a file without metadata
    # falls back to <model>.labels.json. Metadata of another model is an error naming the file (exit 4).
    info = infer.model_info(FLAGS.model, labels_path=FLAGS.labels)
    labels = info["labels"]
    key = next(iter(interpreter.get_signature_list()))
    inputs = list(interpreter.get_signature_runner(key).get_input_details().values())
    shape = list(inputs[0]["shape_signature"]) if len(inputs) == 1 else []
    if len(shape) != 4 or shape[3] not in (1, 3) or shape[1] != shape[2] or shape[1] < 8:
        # Checked before any photo is read or any face detected: the file is not an image model.
        raise app.UsageError(f"--model={FLAGS.model}: its input is {[[int(d) for d in i['shape_signature']] for i in inputs]}; "
                             "expected one square image input [N, S, S, 3] (a face-transfer student or analyser)",
                             exitcode=2)
    images, sources = load_images(int(shape[1]))
    outputs = infer.run_tflite(interpreter, images, input_spec=info["input"])
    heads, notes = trained_on(labels, list(outputs))
    # `trained_on`: per head, the data it was fitted on ({"dataset", "images", "domain", "synthetic", ...}, None when
    # the file does not say); `notes`: heads fitted on synthetic faces only.
    result = {"model": FLAGS.model, "interpreter": interpreter_backend(), "labels_from": info["labels_from"],
              "units": {k: v["units"] for k, v in labels.items() if v.get("units")},
              "trained_on": heads, "notes": notes,
              "predictions": [dict(source=s, **decode(outputs, labels, i)) for i, s in enumerate(sources)]}
    if FLAGS.benchmark_runs > 0:
        result["ms_per_face"] = infer.benchmark_latency(
            lambda x: infer.run_tflite(interpreter, x, input_spec=info["input"]), images,
            warmup=2, runs=FLAGS.benchmark_runs)
    text = json.dumps(result, indent=2)
    if heads:
        print_trained_on(heads, notes)
    print(text)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            f.write(text + "\n")


def run():
    """Console-script entry point."""
    from trainers.common import run_console
    run_console(main, __doc__)


if __name__ == "__main__":
    run_script(main)
