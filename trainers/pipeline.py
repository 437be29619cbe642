"""The main job, end to end: synthetic faces -> teachers -> fusion -> student -> evaluation -> export.

  python -m trainers.pipeline --preset=demo --run_dir=runs/demo
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from trainers import common  # noqa: E402

FLAGS = flags.FLAGS
common.define_run_flags()
flags.DEFINE_enum("until", "report", ["data", "teachers", "cache", "fusion", "student", "evaluate", "export",
                                      "report"], "Stop after this stage.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    cfg = common.config_from_flags()
    strategy = common.strategy_from_flags()
    from face_transfer.pipeline import run_pipeline  # after the strategy: logical CPUs come first
    out = run_pipeline(cfg, FLAGS.run_dir, overwrite=FLAGS.overwrite, strategy=strategy, until=FLAGS.until,
                       flags_text=FLAGS.flags_into_string())
    if "report" in out:
        print("\n".join(out["report"]["summary_lines"]))
    return 0


def run():
    """Console-script entry point (`face-transfer --preset=demo --run_dir=...`)."""
    app.run(main, argv=sys.argv)


if __name__ == "__main__":
    run()
