"""tf.distribute strategy from a name, chief-only writing, and a generic resumable custom training loop.

Owns make_strategy, is_chief / worker_dir, make_step_index_dataset and train_loop (used by the trainers).
"""
import hashlib
import json
import os
import tempfile

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def _configure_cpu_replicas(n):
    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0])
    if current is not None and len(current) == n:
        return
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as err:
        have = len(tf.config.list_logical_devices("CPU"))
        raise RuntimeError(
            f"make_strategy('mirrored', num_cpu_replicas={n}): TensorFlow has already initialised its devices "
            f"({have} logical CPU). Call make_strategy before any other TensorFlow work in the process "
            f"(building a model, creating a tensor or a dataset)."
        ) from err


def _read_tf_config():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ValueError(
            "make_strategy('multi_worker'): the TF_CONFIG environment variable is not set; expected JSON like "
            '{"cluster": {"worker": ["host0:port", "host1:port"]}, "task": {"type": "worker", "index": 0}}'
        )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"make_strategy('multi_worker'): TF_CONFIG is not valid JSON ({err}): {raw[:200]!r}") from err
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not (cluster.get("worker") or cluster.get("chief")):
        raise ValueError(
            f"make_strategy('multi_worker'): TF_CONFIG needs a 'cluster' with a 'worker' (or 'chief') list; got {raw[:200]!r}"
        )
    if not isinstance(task, dict) or task.get("type") not in cluster or not isinstance(task.get("index"), int):
        raise ValueError(
            "make_strategy('multi_worker'): TF_CONFIG needs a 'task' with a 'type' from the cluster "
            f"({sorted(cluster)}) and an integer 'index'; got {raw[:200]!r}"
        )
    if not 0 <= task["index"] < len(cluster[task["type"]]):
        raise ValueError(
            f"make_strategy('multi_worker'): TF_CONFIG task index {task['index']} is outside the "
            f"{len(cluster[task['type']])} '{task['type']}' addresses"
        )
    return config


def make_strategy(name: str, num_cpu_replicas: int | None = None, tpu_address: str | None = None):
    """A tf.distribute.Strategy from its name (one of STRATEGIES).

    "mirrored" uses every local GPU; with no GPU and num_cpu_replicas > 1 it splits the CPU into that
    many logical devices, which only works before TensorFlow initialises its devices.
    "multi_worker" reads the cluster from TF_CONFIG; "tpu" connects to tpu_address (None: the local TPU).
    """
    if name not in STRATEGIES:
        raise ValueError(f"make_strategy: unknown strategy {name!r}; expected one of {STRATEGIES}")
    if num_cpu_replicas is not None and (not isinstance(num_cpu_replicas, int) or num_cpu_replicas < 1):
        raise ValueError(f"make_strategy: num_cpu_replicas={num_cpu_replicas!r}; expected a positive int or None")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_physical_devices("GPU") or not num_cpu_replicas or num_cpu_replicas == 1:
            return tf.distribute.MirroredStrategy()
        _configure_cpu_replicas(num_cpu_replicas)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][:num_cpu_replicas]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        _read_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as err:
        raise RuntimeError(f"make_strategy('tpu', tpu_address={tpu_address!r}): no TPU could be reached: {err}") from err
    return tf.distribute.TPUStrategy(resolver)


def _task(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return None, None, {}
    return resolver.task_type, resolver.task_id, resolver.cluster_spec().as_dict()


def is_chief(strategy) -> bool:
    """Whether this process writes shared outputs: the chief, worker 0 when there is no chief, or any single-worker run."""
    task_type, task_id, cluster = _task(strategy)
    if task_type is None:
        return True
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in cluster)


def worker_index(strategy) -> tuple[int, int]:
    """(this worker's index, number of workers) for work split by hand across workers (e.g. the teacher
    pass of the embedding cache); (0, 1) outside MultiWorkerMirroredStrategy. The chief, if any, is index 0."""
    task_type, task_id, cluster = _task(strategy)
    if task_type is None:
        return 0, 1
    order = [("chief", i) for i in range(len(cluster.get("chief", [])))] + \
        [("worker", i) for i in range(len(cluster.get("worker", [])))]
    return order.index((task_type, task_id)), len(order)


def worker_dir(base_dir: str, strategy) -> str:
    """Where this process writes: base_dir on the chief, a per-task temp dir elsewhere.

    MultiWorkerMirroredStrategy needs every worker to take part in a checkpoint save, but only the
    chief's copy may land in base_dir; the others write to a throw-away folder (same path on each call,
    not created here: the writer creates it).
    """
    if is_chief(strategy):
        return base_dir
    task_type, task_id, _ = _task(strategy)
    digest = hashlib.sha1(os.path.abspath(base_dir).encode()).hexdigest()[:10]
    return os.path.join(tempfile.gettempdir(), f"face_transfer_{task_type}{task_id}_{digest}")


def make_step_index_dataset(input_context, global_batch_size, start_step=0, num_examples=None, seed=None):
    """Per-replica batches of example indices, a pure function of the global step (hence resumable).

    Element k of this pipeline's dataset is replica (k mod R)'s slice of global step start_step + k // R,
    R being the replicas fed by this pipeline, which is the order in which tf.distribute hands batches to
    its local replicas. Global step g covers examples g*B .. (g+1)*B-1 of an endless stream, taken modulo
    num_examples; with a seed each epoch over num_examples is a fresh permutation (index_shuffle).
    Map the indices to examples with a deterministic function (e.g. the synthetic face generator).
    """
    per_replica = input_context.get_per_replica_batch_size(global_batch_size)
    local = input_context.num_replicas_in_sync // input_context.num_input_pipelines
    first_replica = input_context.input_pipeline_id * local
    offsets = tf.range(per_replica, dtype=tf.int64)

    def indices(k):
        step = start_step + k // local
        replica = first_replica + k % local
        flat = step * global_batch_size + replica * per_replica + offsets
        if num_examples is None:
            return flat
        within = flat % num_examples
        if seed is None:
            return within
        epoch = flat // num_examples
        seeds = tf.stack([tf.fill(tf.shape(epoch), tf.constant(seed, tf.int64)), epoch, tf.zeros_like(epoch)], axis=1)
        # The raw op: the public wrapper mis-pads per-element [n, 3] seeds (TF 2.21).
        return tf.raw_ops.RandomIndexShuffle(
            index=within, seed=seeds, max_index=tf.constant(num_examples - 1, tf.int64), rounds=4
        )

    return tf.data.Dataset.range(2**62).map(indices)


def _trackables(models):
    """The checkpointable objects and trainable variables of whatever build_model_fn returned."""
    objects = [obj for obj in tf.nest.flatten(models) if isinstance(obj, tf.__internal__.tracking.Trackable)]
    if not objects:
        raise ValueError(
            "train_loop: build_model_fn returned no model (expected a Keras model, a tf.Module, or a "
            f"tuple/list/dict of them); got {type(models).__name__}"
        )
    seen, variables, trainers = set(), [], []
    for obj in objects:
        own = [v for v in getattr(obj, "trainable_variables", []) if id(v) not in seen]
        if own:
            trainers.append(obj)
        for v in own:
            seen.add(id(v))
            variables.append(v)
    if not variables:
        raise ValueError("train_loop: build_model_fn's models have no trainable variables")
    return objects, variables, trainers


def train_loop(
    strategy,
    build_model_fn,
    loss_fn,
    dataset_fn,
    optimizer_fn,
    steps,
    global_batch_size,
    checkpoint_dir=None,
    checkpoint_every=100,
    on_step=None,
    max_to_keep=3,
    steps_per_execution=1,
    prepare_fn=None,
    echo=1,
):
    """A synchronous custom training loop under `strategy`, checkpointed and resumable.

    build_model_fn() -> a model or a structure of them (tuple/dict), e.g. (student, frozen_decoder); it
        runs inside strategy.scope(). Every trainable variable found in it is trained, so freeze extras
        with `trainable = False`.
    loss_fn(models, batch) -> per-example loss [per-replica batch]; averaged over the GLOBAL batch.
    dataset_fn(input_context, start_step) -> per-replica batched tf.data.Dataset
        (input_context.get_per_replica_batch_size(global_batch_size)) whose k-th batches are those of
        global step start_step + k. Resuming is only exact if the batch content is a function of the
        global step, as with make_step_index_dataset; in a multi-worker run each pipeline must also
        produce its own shard (input_context.input_pipeline_id).
    optimizer_fn() -> optimizer (built on the trainable variables inside the scope).
    Checkpoints (models, optimizer, step) go to checkpoint_dir every checkpoint_every steps and at the
    end; a later call with the same checkpoint_dir restores the latest one and continues from its step.
    Only the chief writes there; other workers write to worker_dir(checkpoint_dir) and delete it.
    on_step(step, logs) is called after each step with the 1-based global step and {"loss": float}.
    steps_per_execution: up to this many steps run inside one tf.function call (a graph loop, as Keras'
        `steps_per_execution`), which removes the per-step dispatch and host sync that dominate small batches
        on CPU. A call never crosses a checkpoint boundary, so checkpoints, resume and the per-step loss
        history are the same as one step per call; on_step runs after each call, once per step.
    prepare_fn(models, batch) -> what loss_fn reads instead of the batch: the expensive part of a step that
        needs no gradient (a frozen teacher's targets), run once per batch outside the gradient tape.
    echo: optimizer updates per batch (data echoing, Choi et al. 2019): each prepared batch is trained on this
        many times in a row, so that a costly prepare_fn (the teachers' forward pass) is paid once for `echo`
        updates. `steps` counts batches (checkpoints and resume stay per batch); the optimizer makes
        steps x echo updates, and a step's logged loss is the first update's, on the batch still unseen.
    Returns {"step": [...], "loss": [...], "start_step", "final_step", "checkpoint", "models", "optimizer"}.
    """
    if steps < 0 or global_batch_size < 1 or checkpoint_every < 1 or steps_per_execution < 1 or \
            not (isinstance(echo, int) and echo >= 1):
        raise ValueError(
            f"train_loop: steps={steps}, global_batch_size={global_batch_size}, checkpoint_every="
            f"{checkpoint_every}, steps_per_execution={steps_per_execution}, echo={echo!r}; expected steps >= 0 and "
            "positive batch size, interval, steps per execution and (int) echo"
        )
    if global_batch_size % strategy.num_replicas_in_sync:
        raise ValueError(
            f"train_loop: global_batch_size={global_batch_size} is not divisible by the "
            f"{strategy.num_replicas_in_sync} replicas"
        )
    with strategy.scope():
        models = build_model_fn()
        objects, variables, trainers = _trackables(models)
        optimizer = optimizer_fn()
        # Keras 3 creates slot variables lazily otherwise, outside the scope (placeholder error).
        if hasattr(optimizer, "build"):
            optimizer.build(variables)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    checkpoint = tf.train.Checkpoint(step=step, optimizer=optimizer, models=objects)

    manager, chief, write_dir, last_saved = None, is_chief(strategy), None, None
    if checkpoint_dir:
        from face_transfer.integrity import restore_newest_intact
        latest = restore_newest_intact(checkpoint, checkpoint_dir)
        write_dir = worker_dir(checkpoint_dir, strategy)
        manager = tf.train.CheckpointManager(checkpoint, write_dir, max_to_keep=max_to_keep if chief else 1)
    start_step = int(step.numpy())
    history = {"step": [], "loss": [], "start_step": start_step, "final_step": start_step,
               "checkpoint": latest if checkpoint_dir and latest else None, "models": models, "optimizer": optimizer}
    if start_step >= steps:
        return history

    dataset = strategy.distribute_datasets_from_function(lambda ctx: dataset_fn(ctx, start_step))
    iterator = iter(dataset)

    def update(batch):
        with tf.GradientTape() as tape:
            per_example = loss_fn(models, batch)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
            reg = [l for obj in trainers for l in getattr(obj, "losses", [])]
            if reg:
                loss += tf.nn.scale_regularization_loss(tf.add_n(reg))
        grads = tape.gradient(loss, variables)
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        optimizer.apply_gradients(pairs)
        return loss

    def replica_step(batch):
        if prepare_fn is not None:
            batch = prepare_fn(models, batch)
        loss = update(batch)
        for _ in range(echo - 1):  # unrolled: echo is a small int
            update(batch)
        return loss

    @tf.function
    def train_steps(it, n):
        losses = tf.TensorArray(tf.float32, size=n)
        for i in tf.range(n):
            per_replica = strategy.run(replica_step, args=(next(it),))
            losses = losses.write(i, tf.cast(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None),
                                             tf.float32))
        return losses.stack()

    def save(number):
        path = manager.save(checkpoint_number=number)
        if not chief:
            # Non-chief copies exist only because saving is collective; nobody reads them.
            tf.io.gfile.rmtree(write_dir)
        return path

    current = start_step
    while current < steps:
        n = min(steps_per_execution, steps - current, checkpoint_every - current % checkpoint_every)
        losses = train_steps(iterator, tf.constant(n, tf.int32)).numpy()
        first, current = current + 1, current + n
        step.assign(current)
        history["step"].extend(range(first, current + 1))
        history["loss"].extend(float(x) for x in losses)
        if manager is not None and (current % checkpoint_every == 0 or current == steps):
            last_saved = save(current)
            if chief:
                history["checkpoint"] = last_saved
        if on_step is not None:
            for k, loss in enumerate(losses):
                on_step(first + k, {"loss": float(loss)})
    history["final_step"] = steps
    return history
