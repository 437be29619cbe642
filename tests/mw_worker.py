"""Subprocess helper for tests/test_distribute.py: trains a tiny MLP with train_loop under a named strategy.

Writes the final weights (.npz) and a JSON summary; --kill_at_step SIGKILLs itself to test resuming.
"""
import argparse
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="default")
    parser.add_argument("--num_cpu_replicas", type=int, default=None)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--global_batch", type=int, default=8)
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    parser.add_argument("--ckpt_dir", default=None)
    parser.add_argument("--checkpoint_every", type=int, default=100)
    parser.add_argument("--kill_at_step", type=int, default=0, help="SIGKILL after this step, first run only")
    parser.add_argument("--steps_per_execution", type=int, default=1)
    parser.add_argument("--out", required=True, help="prefix: writes <out>.npz and <out>.json")
    args = parser.parse_args()

    import tensorflow as tf

    from face_transfer import distribute

    # The strategy first: splitting the CPU into logical devices must precede any other TF work.
    strategy = distribute.make_strategy(args.strategy, num_cpu_replicas=args.num_cpu_replicas)
    import keras

    keras.utils.set_random_seed(1234)
    tf.config.experimental.enable_op_determinism()

    def build_model():
        # No BatchNorm: per-replica batch statistics would legitimately differ between 1 and 2 replicas.
        inputs = keras.Input((6,))
        hidden = keras.layers.Dense(16, activation="tanh", name="hidden")(inputs)
        outputs = keras.layers.Dense(1, name="out")(hidden)
        return keras.Model(inputs, outputs, name="mlp")

    def examples(index):
        # Deterministic example from its global index (resumable data).
        t = tf.cast(index, tf.float32)[:, None]
        x = tf.sin(t * 0.37 + tf.range(6, dtype=tf.float32))
        y = tf.reduce_sum(x * tf.constant([0.5, -1.0, 0.25, 2.0, -0.5, 1.0]), axis=1, keepdims=True)
        return x, y

    def dataset_fn(ctx, start_step):
        ds = distribute.make_step_index_dataset(ctx, args.global_batch, start_step, num_examples=40, seed=7)
        return ds.map(examples)

    def loss_fn(model, batch):
        x, y = batch
        return tf.reduce_mean(tf.square(model(x, training=True) - y), axis=1)

    def optimizer_fn():
        if args.optimizer == "adam":
            return keras.optimizers.Adam(0.01)
        return keras.optimizers.SGD(0.1)

    marker = args.out + ".killed"

    def on_step(step, logs):
        # Kill once only, so that the restart can be the very same command line.
        if step == args.kill_at_step and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

    history = distribute.train_loop(
        strategy, build_model, loss_fn, dataset_fn, optimizer_fn, steps=args.steps,
        global_batch_size=args.global_batch, checkpoint_dir=args.ckpt_dir,
        checkpoint_every=args.checkpoint_every, on_step=on_step, steps_per_execution=args.steps_per_execution,
    )
    import numpy as np

    model = history["models"]
    np.savez(args.out + ".npz", *[np.asarray(w) for w in model.get_weights()])
    summary = {
        "replicas": strategy.num_replicas_in_sync,
        "is_chief": distribute.is_chief(strategy),
        "worker_dir": distribute.worker_dir(args.ckpt_dir, strategy) if args.ckpt_dir else None,
        "start_step": history["start_step"],
        "final_step": history["final_step"],
        "steps": history["step"],
        "loss": history["loss"],
        "checkpoint": history["checkpoint"],
    }
    with open(args.out + ".json", "w") as f:
        json.dump(summary, f)


if __name__ == "__main__":
    main()
