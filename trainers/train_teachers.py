"""Train the zoo teachers of a preset into <run_dir>/teachers (resumable).

  python -m trainers.train_teachers --preset=demo --run_dir=runs/demo   (earlier stages run first if missing)
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from trainers import common  # noqa: E402

common.define_run_flags()
flags.adopt_module_key_flags(common)  # --help lists the run flags, not only this script's

if __name__ == "__main__":
    common.run_script(common.main_until("teachers"))
