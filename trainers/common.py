"""Flags shared by the trainers, and the one place flags become an ExperimentConfig."""
from __future__ import annotations

import os
import sys

from absl import flags

FLAGS = flags.FLAGS


def tasks_flag_syntax() -> str:
    """The --tasks syntax, with the dataset formats the registry holds (face_transfer.data.readers)."""
    from face_transfer.data.readers import format_names
    return (", ".join(f"{n}:PATH" for n in format_names())
            + ", with optional ,name=...,task_file=tasks.json,max_images=N,drop_bad_rows=1,align=1")


def define_verbose_flag():
    if "verbose" not in FLAGS:
        flags.DEFINE_boolean("verbose", False, "On an error, also print the traceback (or FACE_TRANSFER_VERBOSE=1).")


def define_run_flags():
    from face_transfer.configs import PRESETS
    from face_transfer.distribute import STRATEGIES
    flags.DEFINE_enum("preset", "demo", list(PRESETS), "Configuration preset.")
    flags.DEFINE_string("run_dir", None, "Run directory (created; resumed if it holds the same config).")
    flags.DEFINE_boolean("overwrite", False, "Replace an existing run directory with a different config.")
    flags.DEFINE_string("config_json", None, "A config.json to use instead of the preset (e.g. from a run dir).")
    flags.DEFINE_integer("seed", None, "Override the preset's seed.")
    flags.DEFINE_enum("strategy", None, list(STRATEGIES), "tf.distribute strategy (default: the preset's).")
    flags.DEFINE_integer("num_cpu_replicas", None, "With --strategy=mirrored and no GPU: split the CPU into N "
                         "logical devices (testing multi-replica code on a laptop).")
    flags.DEFINE_integer("code_dim", None, "Fusion code dimension d (= student embedding size).")
    flags.DEFINE_enum("distill_loss", None, ["l2", "cosine", "teacher_space", "cos_sl1", "balanced_angle"],
                      "Distillation loss: l2 / cosine on the AE code (the paper: l2), teacher_space through the frozen "
                      "decoder, cos_sl1 (0.5 cosine + 0.5 smooth-L1 per teacher block), balanced_angle (the angle "
                      "per teacher block, C-RADIOv4's balanced summary loss).")
    flags.DEFINE_float("distill_proxy_width", None, "EUPE's two-stage recipe: distil a proxy of this many times the "
                       "student's width (> 1; 3.4 is about 10x its parameters) from the fused teachers first, then "
                       "the student from the proxy. 0: off (one stage).")
    flags.DEFINE_integer("distill_steps", None, "Student distillation steps (batches of faces the teachers see).")
    flags.DEFINE_integer("distill_echo", None, "Data echoing: student updates per batch of teacher targets (>= 1; "
                         "the teachers' pass is paid once for this many updates). The supervised control and the "
                         "ceiling make as many updates, on fresh faces. Default: the preset's.")
    flags.DEFINE_boolean("distill_heads", None, "Block losses (teacher_space, cos_sl1) through trainable per-teacher "
                         "MLP heads (dropped at inference) instead of the frozen decoder.")
    flags.DEFINE_float("distill_noise", None, "Noisy student: probability in [0, 1] that a face is degraded (colour, "
                       "gray, blur, occlusion, noise) for the student only; the teachers see it clean.")
    flags.DEFINE_float("distill_mixup", None, "Function matching: probability in [0, 1] that a face is blended "
                       "with another face of its batch; teachers and student see the same blend. 0: off.")
    flags.DEFINE_boolean("distill_consistent_noise", None, "With --distill_noise: the teachers see the degraded "
                         "face too (function matching) instead of the clean one (noisy student).")
    flags.DEFINE_float("distill_teacher_drop", None, "Teacher dropping (UNIC), block losses: probability that a "
                       "teacher other than the worst-imitated one leaves a face's loss. 0: off.")
    flags.DEFINE_float("distill_code_weight", None, "Block losses: weight of an extra L2 anchor to the AE code (>= 0).")
    flags.DEFINE_enum("distill_heads_view", None, ["embedding", "ladder"], "With --distill_heads: what the heads "
                      "read, the student's code (embedding) or its ladder (every stage pooled next to the code).")
    flags.DEFINE_float("distill_relational_weight", None, "Weight (>= 0) of AMoE's relational term: the student's "
                       "and each teacher's batch cosine-similarity matrices matched. 0: off.")
    flags.DEFINE_boolean("distill_ladder_residual", None, "Block losses through the frozen decoder: predict the "
                         "teachers as decoder(code) + a linear map of the student's ladder (trained, then dropped).")
    flags.DEFINE_boolean("fusion_pca_init", None, "Start the fusion auto-encoder at whitened PCA (a linear map "
                         "plus a zero-initialised MLP branch on each side; training keeps only what improves on "
                         "PCA's validation loss). Default: the preset's (off).")
    flags.DEFINE_float("fusion_relational_weight", None, "Weight (>= 0) of the fusion's similarity-preservation "
                       "term: the code's batch cosine similarities matched to every teacher's. 0: plain "
                       "reconstruction (the paper's). Default: the preset's.")
    flags.DEFINE_integer("distill_batch_size", None, "The student's batch (and the supervised control's and the "
                         "ceiling's); --batch_size sets it together with the teachers'. Default: the preset's.")
    flags.DEFINE_float("distill_learning_rate", None, "The student's peak learning rate (AdamW, cosine decay). "
                       "Default: the preset's.")
    flags.DEFINE_enum("student_view", None, ["embedding", "ladder"], "What of the student the probes and the "
                      "analyser's heads read: its code (embedding, the paper's) or the code plus every resolution "
                      "stage's pooled output (ladder). Default: the preset's.")
    flags.DEFINE_boolean("ceiling", None, "Train the per-task ceiling (the student's architecture on every SynthFaces "
                         "task's labels) and report every score as a percentage of it. Default: the preset's.")
    flags.DEFINE_float("ceiling_budget", None, "The ceiling's training steps as a multiple (>= 1) of the student's "
                       "distillation steps. Default: the preset's.")
    flags.DEFINE_integer("ceiling_batch_size", None, "The ceiling's batch (0: the student's); its budget stays "
                         "--ceiling_budget times the student's faces. Default: the preset's.")
    flags.DEFINE_integer("student_workers", None, "Processes training the student stage's networks side by side "
                         "(default strategy only): 0 = one per usable core, 1 = one after the other. Default: the "
                         "preset's.")
    flags.DEFINE_integer("teacher_steps", None, "Training steps per zoo teacher.")
    flags.DEFINE_string("teacher_pretrained", None, "Zoo teachers already trained, used instead of training them: "
                        "'package' (the ones shipped with face-transfer, `make zoo`), a directory written by "
                        "export.package_zoo, or '' to train every zoo teacher from nothing. Default: the preset's.")
    flags.DEFINE_string("teacher_warm_start", None, "Zoo teachers already trained ('package' or an "
                        "export.package_zoo directory) to train further: --teacher_steps more steps on new faces, "
                        "with a fresh learning-rate cycle (implies --teacher_pretrained=''). Default: none.")
    flags.DEFINE_integer("batch_size", None, "Global batch size for teachers and student.")
    flags.DEFINE_float("student_width", None, "Student width multiplier.")
    flags.DEFINE_integer("student_head_channels", None, "Channels of the student's last 1x1 conv before pooling "
                         "(a wider last block; 0 drops it). Default: the architecture's (mobilenet_v2: 192).")
    flags.DEFINE_list("real_teachers", None, "Imported pretrained teachers to add to the ensemble "
                      "(names from face_transfer.teachers.real.REAL_TEACHERS; empty string for none).")
    flags.DEFINE_boolean("deterministic", False, "Enable TensorFlow op determinism (same seed and config -> "
                         "same result on the same machine; slower).")
    flags.DEFINE_boolean("zoo", True, "Train and use the preset's zoo teachers (--nozoo: real teachers only).")
    # ---- the user's own inputs: teachers, unlabelled faces, labelled datasets ----
    flags.DEFINE_multi_string(
        "teacher", None,
        "A teacher reference (repeatable); given any, they replace the preset's teachers. One of: a model file "
        "NAME=PATH[,key=value...] (.keras, .h5, SavedModel dir, .onnx, .tflite; keys: output, size, channels, "
        "color=rgb|bgr, scale, offset (one value or a/b/c), layout=nhwc|nchw, pool=avg|max|none, "
        "tasks=a+b (its source tasks), endpoint, trusted=1, format); a built-in pretrained model "
        "(fer_expression, dlib_age, dlib_gender, dlib_face_descriptor); or zoo:NAME to train a zoo teacher. "
        "Example: --teacher=expr=models/expr.onnx,output=feat,size=64,channels=1,scale=0.0078,offset=-1,"
        "tasks=expression")
    flags.DEFINE_string("teachers_json", None, "A JSON file with a list of teacher references (objects with the "
                        "keys of --teacher, plus name and path); added to the --teacher ones.")
    flags.DEFINE_multi_string("faces", None, "Your unlabelled faces (repeatable): a folder (searched recursively), "
                              "a glob ('photos/*.jpg') or TFRecord shards ('faces-*.tfrecord'). They feed the "
                              "embedding cache, the fusion, the distillation and the TFLite calibration.")
    flags.DEFINE_boolean("align_faces", False, "Detect and align every --faces photo with MTCNN (once, into "
                         "TFRecord shards in the run directory); without it photos are centre-cropped (for "
                         "folders of face crops).")
    flags.DEFINE_float("real_fraction", None, "Share of --faces in the cache and in every distillation batch, "
                       "in (0, 1]; the rest is SynthFaces. Default 1 (your faces only).")
    flags.DEFINE_integer("max_faces", None, "Use at most this many --faces files (sorted order).")
    flags.DEFINE_multi_string("tasks", None, "A labelled dataset whose columns become transfer tasks (repeatable): "
                              f"{tasks_flag_syntax()}. Example: --tasks=fer2013:data/fer2013.csv")
    flags.DEFINE_boolean("synth_tasks", True, "Keep the SynthFaces task suite next to --tasks "
                         "(--nosynth_tasks: only your datasets' tasks).")
    flags.DEFINE_integer("cache_size", None, "Unlabelled faces embedded by the teachers to fit the fusion.")
    define_verbose_flag()
    flags.mark_flag_as_required("run_dir")


# Flags that set config fields: (flag, dotted config keys, check). Unset (None) flags change nothing; check "set"
# skips empty values too, and a _CHECKS name refuses values outside its range. Later rows win on a shared key
# (--distill_batch_size over --batch_size). The config's own checks name the flags that set the refused part.
_FLAG_OVERRIDES = (
    ("seed", ("seed",), None),
    ("strategy", ("strategy",), "set"),
    ("distill_loss", ("distill.loss",), "set"),
    *((f"distill_{k}", (f"distill.{k}",), None) for k in (
        "heads", "noise", "code_weight", "heads_view", "relational_weight", "ladder_residual", "mixup",
        "consistent_noise", "teacher_drop", "proxy_width")),
    ("fusion_relational_weight", ("fusion.relational_weight",), None),
    ("fusion_pca_init", ("fusion.pca_init",), None),
    ("student_view", ("student_view",), None),
    ("ceiling", ("ceiling",), None),
    ("ceiling_budget", ("ceiling_budget",), None),
    ("ceiling_batch_size", ("ceiling_batch_size",), None),
    ("student_workers", ("student_workers",), None),
    ("distill_steps", ("distill.steps",), "positive_int"),
    ("distill_echo", ("distill.echo",), "positive_int"),
    ("teacher_steps", ("teacher_train.steps",), "positive_int"),
    ("batch_size", ("distill.batch_size", "teacher_train.batch_size"), "positive_int"),
    ("distill_batch_size", ("distill.batch_size",), "positive_int"),
    ("distill_learning_rate", ("distill.learning_rate",), "positive"),
    ("student_width", ("student.width",), "positive"),
    ("student_head_channels", ("student.head_channels",), None),
)
_CHECKS = {"positive_int": (lambda v: v >= 1, ">= 1"), "positive": (lambda v: v > 0, "> 0")}


def config_from_flags():
    """The preset (or --config_json) with the flag overrides applied; validated before any work."""
    from face_transfer.configs import ExperimentConfig, OverrideError, override_config, preset_config
    if FLAGS.config_json is not None:
        if not FLAGS.config_json:  # an explicit empty --config_json= is a mistake, not "use the preset"
            raise flags.ValidationError("--config_json is empty; expected a config.json path (omit it to use "
                                        "--preset)")
        if not os.path.exists(FLAGS.config_json):
            raise flags.ValidationError(f"--config_json={FLAGS.config_json}: no such file")
        try:
            cfg = ExperimentConfig.from_file(FLAGS.config_json)
        except ValueError as e:
            raise flags.ValidationError(f"--config_json={FLAGS.config_json}: {e}") from None
    else:
        cfg = preset_config(FLAGS.preset)
    overrides, by_key = {}, {}  # config key -> value; config key -> the flag that set it

    def put(flag, keys, value):
        for key in keys:
            overrides[key], by_key[key] = value, flag

    for flag, keys, check in _FLAG_OVERRIDES:
        value = getattr(FLAGS, flag)
        if value is None or (check == "set" and not value):
            continue
        if check in _CHECKS and not _CHECKS[check][0](value):
            raise flags.ValidationError(f"--{flag}={value}: expected {_CHECKS[check][1]}")
        put(flag, keys, value)
    if FLAGS.code_dim is not None:
        from face_transfer.teachers.real import REAL_TEACHERS
        concat = sum(t.embedding_dim for t in cfg.teachers) + sum(REAL_TEACHERS[n]["dim"] for n in cfg.real_teachers)
        if not FLAGS.teacher and not FLAGS.teachers_json and not 1 <= FLAGS.code_dim < concat:
            raise flags.ValidationError(f"--code_dim={FLAGS.code_dim}: expected 1 <= d < {concat} (the "
                                        f"concatenated teacher dimension of preset {cfg.preset})")
        put("code_dim", ("fusion.code_dim", "student.embedding_dim"), FLAGS.code_dim)

    def zoo_folder(flag: str, where: str, expected: str) -> str:
        """A built zoo's folder as the config keeps it ('package' or absolute), or a flag error naming it."""
        from face_transfer.teachers.train import PRETRAINED_MANIFEST, pretrained_dir
        if not os.path.isfile(os.path.join(pretrained_dir(where), PRETRAINED_MANIFEST)):
            raise flags.ValidationError(f"--{flag}={where}: no {PRETRAINED_MANIFEST} in {pretrained_dir(where)} "
                                        f"(expected {expected})")
        return where if where == "package" else os.path.abspath(where)

    if FLAGS.teacher_pretrained is not None:
        where = FLAGS.teacher_pretrained
        put("teacher_pretrained", ("teacher_train.pretrained",), where and zoo_folder(
            "teacher_pretrained", where, "'package', a directory written by export.package_zoo, or '' to train "
            "the teachers"))
    if FLAGS.teacher_warm_start:
        where = zoo_folder("teacher_warm_start", FLAGS.teacher_warm_start,
                           "'package' or a directory written by export.package_zoo")
        if FLAGS.teacher_pretrained:
            raise flags.ValidationError(f"--teacher_warm_start={FLAGS.teacher_warm_start} trains the zoo teachers further and "
                                        f"--teacher_pretrained={FLAGS.teacher_pretrained} uses them as they are; "
                                        "give one of the two")
        put("teacher_warm_start", ("teacher_train.warm_start",), where)
        put("teacher_warm_start", ("teacher_train.pretrained",), "")
    if FLAGS.real_teachers is not None:
        from face_transfer.teachers.real import REAL_TEACHERS, available_real_teachers
        names = tuple(n for n in FLAGS.real_teachers if n)
        unknown = [n for n in names if n not in REAL_TEACHERS]
        if unknown:
            raise flags.ValidationError(f"--real_teachers: unknown teacher(s) {unknown}; allowed: {sorted(REAL_TEACHERS)}")
        missing = [n for n in names if n not in available_real_teachers()]
        if missing:
            raise flags.ValidationError(f"--real_teachers: {missing} not installed; "
                                        + "; ".join(REAL_TEACHERS[n]["pip"] for n in missing))
        put("real_teachers", ("real_teachers",), names)
    if not FLAGS.zoo:
        put("zoo", ("teachers",), ())
    try:
        cfg = override_config(cfg, overrides)
    except OverrideError as e:
        named = dict.fromkeys(by_key.get(k, k) for k in e.keys)
        raise flags.ValidationError(", ".join(f"--{f}={getattr(FLAGS, f, '?')}" for f in named) + f": {e}") from None
    cfg = _user_inputs(cfg)
    if not cfg.teachers and not cfg.real_teachers and not cfg.teacher_files:
        raise flags.ValidationError("--nozoo with no --real_teachers or --teacher leaves no teacher to distil from")
    run_dir = os.path.abspath(FLAGS.run_dir)
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise flags.ValidationError(f"--run_dir={FLAGS.run_dir}: is a file, not a directory (expected a run "
                                    "directory, new or existing)")
    parent = os.path.dirname(run_dir)
    probe = parent
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK) or \
            (os.path.exists(run_dir) and not (os.path.isdir(run_dir) and os.access(run_dir, os.W_OK))):
        raise flags.ValidationError(f"--run_dir={FLAGS.run_dir}: not a writable directory "
                                    f"({probe} is not a writable directory)")
    return cfg


def _user_inputs(cfg):
    """--teacher/--teachers_json, --faces and --tasks into the config (face_transfer.user_inputs), each checked
    before any work."""
    from face_transfer.user_inputs import with_user_inputs
    try:
        return with_user_inputs(
            cfg, teachers=FLAGS.teacher, teachers_json=FLAGS.teachers_json, faces=FLAGS.faces,
            align_faces=FLAGS.align_faces, real_fraction=FLAGS.real_fraction, max_faces=FLAGS.max_faces,
            tasks=FLAGS.tasks, synth_tasks=FLAGS.synth_tasks if FLAGS["synth_tasks"].present else None,
            cache_size=FLAGS.cache_size, keep_real_teachers=bool(FLAGS.real_teachers))
    except ValueError as e:
        raise flags.ValidationError(str(e)) from None


def strategy_from_flags():
    from face_transfer.distribute import make_strategy
    if FLAGS.deterministic:
        import tensorflow as tf
        tf.config.experimental.enable_op_determinism()
    name = FLAGS.strategy or "default"
    return make_strategy(name, num_cpu_replicas=FLAGS.num_cpu_replicas)


# Exit codes of every script (README, "When something goes wrong"); anything else exits 1 with its traceback.
EXIT_USAGE, EXIT_BAD_INPUT, EXIT_CORRUPT, EXIT_LOCKED, EXIT_INVALID, EXIT_TIMEOUT = 2, 3, 4, 5, 6, 7


def _exit_codes() -> list:
    """(exception types, exit code, what it means), most specific first; imported late (TF is heavy)."""
    from face_transfer.adapt import AdaptUsageError
    from face_transfer.deploy.bundle import BundleError
    from face_transfer.configs import ConfigError
    from face_transfer.core.errors import CorruptArtifactError, TeacherLoadError
    from face_transfer.data.imageio import DataError
    from face_transfer.deploy.tflite import TFLiteValidationError
    from face_transfer.stages.rundir import RunConfigError, RunLockedError
    return [((ConfigError, RunConfigError, AdaptUsageError, flags.ValidationError), EXIT_USAGE, "usage"),
            ((CorruptArtifactError,), EXIT_CORRUPT, "corrupt file"),
            ((DataError, TeacherLoadError, BundleError), EXIT_BAD_INPUT, "bad input"),
            ((RunLockedError,), EXIT_LOCKED, "run directory in use"),
            ((TFLiteValidationError, FloatingPointError), EXIT_INVALID, "validation failed"),
            ((TimeoutError,), EXIT_TIMEOUT, "timed out")]


def guarded(main):
    """One error boundary per script: the project's own errors become one line (what, which file/flag/row,
    what was expected) and a distinct exit code; --verbose or FACE_TRANSFER_VERBOSE=1 adds the traceback.
    An app.UsageError is that line plus a pointer to --help (exit 2). Unknown exceptions keep their traceback."""
    def wrapped(argv):
        from absl import app
        try:
            return main(argv)
        except app.UsageError as e:  # not absl's way (the whole --help, then the error): the error alone
            if _verbose():
                import traceback
                traceback.print_exc()
            usage_error(e)
            return EXIT_USAGE if e.exitcode in (None, 1) else e.exitcode  # absl's default exitcode is 1
        except Exception as e:
            import traceback
            for types, code, what in _exit_codes():
                if isinstance(e, types):
                    if _verbose():
                        traceback.print_exc()
                    print(f"error ({what}): {e}", file=sys.stderr, flush=True)
                    return code
            raise
    return wrapped


def _verbose() -> bool:
    if os.environ.get("FACE_TRANSFER_VERBOSE", "") not in ("", "0"):
        return True
    return bool(getattr(FLAGS, "verbose", False)) if "verbose" in FLAGS else False


HELP_POINTER = "Run with --help for the list of flags."


def usage_error(message) -> None:
    """A rejected flag or argument on stderr: the error, then one line pointing to --help (never the whole help)."""
    print(f"error (usage): {message}\n{HELP_POINTER}", file=sys.stderr, flush=True)


def parse_flags(argv):
    """absl's flags_parser for every script: a flag absl itself rejects (unknown flag, bad enum or number, missing
    --run_dir) is usage_error's two lines and exit 2, as the errors raised in main are (absl's own parser prints
    "FATAL Flags parsing error" and exits 1)."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        usage_error(e)
        sys.exit(EXIT_USAGE)


def run_script(main):
    """app.run for every script (trainers/*, export/*, the console scripts): flags parsed by parse_flags; main
    should be guarded (usage errors raised in it print the same two lines)."""
    from absl import app
    app.run(main, flags_parser=parse_flags)


def run_console(main, doc: str):
    """Run an absl main as a console script: `--help` shows the script's docstring and its key flags.

    absl's help lists the key flags of the module named by sys.argv[0]; for a console script that is the
    stub in bin/, which defines none, so the script's key flags are registered under that name too.
    """
    sys.modules["__main__"].__doc__ = doc
    caller = sys._getframe(1).f_globals.get("__name__")
    for fl in FLAGS.get_key_flags_for_module(caller):
        FLAGS.register_key_flag_for_module(sys.argv[0], fl)
    run_script(main)


def quiet_tensorflow():
    """Keep the console for stage headers and progress: TF's retracing chatter goes to ERROR only."""
    import logging

    import tensorflow as tf
    from absl import logging as absl_logging
    tf.get_logger().setLevel(logging.ERROR)
    absl_logging.set_verbosity(absl_logging.ERROR)


def main_until(stage: str):
    """The absl main of a stage script: run the pipeline up to `stage` (earlier stages when missing)."""
    @guarded
    def main(argv):
        from absl import app
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments {argv[1:]}")
        quiet_tensorflow()
        try:
            cfg = config_from_flags()
            strategy = strategy_from_flags()
        except (flags.ValidationError, ValueError) as e:  # bad flags: a message, no traceback, no work done
            raise app.UsageError(str(e), exitcode=EXIT_USAGE) from None
        from face_transfer.pipeline import run_pipeline  # after the strategy: logical CPUs come first
        out = run_pipeline(cfg, FLAGS.run_dir, overwrite=FLAGS.overwrite, strategy=strategy, until=stage,
                           flags_text=FLAGS.flags_into_string())
        if "report" in out:
            print("\n".join(out["report"]["summary_lines"]))
        return 0
    return main
