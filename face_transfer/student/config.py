"""The student's settings without its model code: StudentConfig (architecture), DistillConfig (training), and
the tables and names they are checked against. Imports no TensorFlow, so configs.py can read them anywhere.
"""
from __future__ import annotations

import dataclasses


# Rows are (expansion, out_channels, repeats, stride) or (..., kernel_size).
# Sized for 64x64 faces: ~236k parameters and ~11M multiply-adds at width 1.0 (v3-small: ~207k, ~3.4M).
ARCH_BLOCKS = {
    "mobilenet_v2": (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 2, 2),
        (6, 96, 1, 1),
    ),
    # MobileNetV3-Small's table (5x5 kernels, odd expansions), with ReLU instead of hard-swish and
    # without squeeze-excite so that every op stays an int8 TFLite builtin that tfmot can quantize.
    "mobilenet_v3_small": (
        (1, 16, 1, 2, 3),
        (4.5, 24, 1, 2, 3),
        (3.67, 24, 1, 1, 3),
        (4, 40, 1, 2, 5),
        (6, 40, 2, 1, 5),
        (3, 48, 2, 1, 5),
        (6, 96, 1, 2, 5),
    ),
}


ARCH_STEM = {"mobilenet_v2": (16, 2), "mobilenet_v3_small": (16, 2)}


ARCH_HEAD = {"mobilenet_v2": 192, "mobilenet_v3_small": 288}


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    """Student architecture. `blocks=None` takes the arch's default table (ARCH_BLOCKS)."""

    input_size: int = 64
    width: float = 1.0
    embedding_dim: int = 64
    arch: str = "mobilenet_v2"
    blocks: tuple | None = None
    stem_channels: int | None = None  # None: the arch's default (ARCH_STEM)
    head_channels: int | None = None  # None: the arch's default (ARCH_HEAD); 0 drops the head conv

    def __post_init__(self):
        if self.arch not in ARCH_BLOCKS:
            raise ValueError(f"StudentConfig.arch={self.arch!r}: expected one of {sorted(ARCH_BLOCKS)}")
        if not isinstance(self.input_size, int) or self.input_size < 8:
            raise ValueError(f"StudentConfig.input_size={self.input_size!r}: expected an int >= 8")
        if not self.width > 0:
            raise ValueError(f"StudentConfig.width={self.width!r}: expected a positive multiplier")
        if not isinstance(self.embedding_dim, int) or self.embedding_dim < 1:
            raise ValueError(f"StudentConfig.embedding_dim={self.embedding_dim!r}: expected a positive int")
        if self.blocks is not None:
            # Lists (e.g. from JSON) become tuples so the config stays hashable and frozen.
            object.__setattr__(self, "blocks", tuple(tuple(row) for row in self.blocks))
            for row in self.blocks:
                if len(row) not in (4, 5) or row[0] <= 0 or row[1] < 1 or row[2] < 1 or row[3] not in (1, 2):
                    raise ValueError(
                        f"StudentConfig.blocks row {row!r}: expected (expansion>0, out_channels>=1, "
                        "repeats>=1, stride in {1,2}[, kernel_size])"
                    )
                if len(row) == 5 and (row[4] < 1 or row[4] % 2 == 0):
                    raise ValueError(f"StudentConfig.blocks row {row!r}: kernel_size must be odd and positive")
        if self.stem_channels is not None and self.stem_channels < 1:
            raise ValueError(f"StudentConfig.stem_channels={self.stem_channels!r}: expected >= 1 or None")
        if self.head_channels is not None and self.head_channels < 0:
            raise ValueError(f"StudentConfig.head_channels={self.head_channels!r}: expected >= 0 or None")

    def block_rows(self):
        return self.blocks if self.blocks is not None else ARCH_BLOCKS[self.arch]


FEATURE_VIEWS = ("embedding", "ladder")


LOSSES = ("l2", "cosine", "teacher_space", "cos_sl1", "balanced_angle")


CODE_LOSSES = ("l2", "cosine")  # on the AE code itself


# per standardised teacher block (decoder or trainable heads); balanced_angle: C-RADIOv4's balanced summary loss
BLOCK_LOSSES = ("teacher_space", "cos_sl1", "balanced_angle")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    loss: str = "l2"
    domain: str = "photo"  # "mixed" also shows the student sketches / infrared / low-res faces
    augment: bool = True
    checkpoint_every: int = 200
    seed: int = 0
    log_every: int = 50
    # Noisy student: probability that a face is degraded (generic ops, `degrade`) for the student only;
    # the targets are computed on the clean face. 0 = off.
    noise: float = 0.0
    # Block losses (teacher_space, cos_sl1) read the student's prediction of each standardised teacher
    # block from trainable per-teacher MLP heads (heads=True, AM-RADIO / UNIC; dropped after training)
    # or from the frozen AE decoder applied to the student's embedding (heads=False).
    # The code losses (l2, cosine) ignore heads and code_weight.
    heads: bool = False
    head_hidden: int = 256
    code_weight: float = 0.0  # block losses: + code_weight * L2 to the AE code on the student's embedding
    # What the trainable heads read (FEATURE_VIEWS): "embedding" (the code, AM-RADIO) or
    # "ladder" (every stage pooled next to the code, the view that is probed and deployed): the teachers'
    # blocks are then predicted from the whole ladder, not squeezed through the 64-d code first.
    heads_view: str = "embedding"
    # Relational term (AMoE): + relational_weight * the squared difference between the student's and each
    # teacher's batch cosine-similarity matrices (per teacher block for block losses, on the code otherwise).
    relational_weight: float = 0.0
    # Ladder residual (block losses through the frozen decoder): the teacher blocks are predicted as
    # decoder(code) + a zero-initialised linear map of the ladder (every stage pooled next to the code; the
    # view that is probed), trained with the student and dropped after. The code still imitates the AE
    # code; the ladder is pushed to hold, linearly, what the d-dim code reconstructs badly (the AE's residual).
    ladder_residual: bool = False
    # Training steps per tf.function call (distribute.train_loop): the same steps, losses and checkpoints,
    # without the per-step dispatch and host sync that small batches pay on CPU.
    steps_per_execution: int = 16
    # Function matching (Beyer et al., CVPR 2022): probability that a face is blended with another face of
    # its batch (mixup; the partner's weight is uniform in [0, 0.5]). The teachers and the student see the
    # same blend, so the student learns the teachers' function between faces too. 0 = off.
    mixup: float = 0.0
    # With noise > 0: the teachers see the degraded face too (consistent, function matching) instead of
    # the clean one (noisy student).
    consistent_noise: bool = False
    # Teacher dropping (UNIC), block losses only: per face, every teacher but the one the student
    # imitates worst leaves the loss with this probability. 0 = off.
    teacher_drop: float = 0.0
    # EUPE's two-stage recipe (small students cannot absorb several large teachers directly): 0 = off; > 0 first
    # distils a proxy, the student's architecture at proxy_width times its width (a mid-size network), from the
    # fused teachers with this same config, then the student from the frozen proxy (its code, and the teacher
    # blocks the frozen decoder reads from it). Each stage takes `steps`.
    proxy_width: float = 0.0
    # Data echoing (Choi et al. 2019) of the teachers' targets: each batch of faces and its targets, computed once,
    # serves this many student updates in a row. The teachers' forward pass costs more than the student's step, so
    # at equal seconds the student makes more updates on fewer faces. `steps` counts batches (teacher passes):
    # the student makes steps x echo updates, its learning-rate schedule spans them. 1 = off.
    echo: int = 1

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"DistillConfig.loss={self.loss!r}; expected one of {LOSSES}")
        for name in ("noise", "mixup", "teacher_drop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"DistillConfig.{name}={getattr(self, name)!r}; expected a probability in [0, 1]")
        if self.consistent_noise and self.noise <= 0:
            raise ValueError("DistillConfig.consistent_noise=True shows the teachers the degraded faces, but noise=0 "
                             "degrades none; set noise in (0, 1]")
        if self.teacher_drop > 0 and self.loss not in BLOCK_LOSSES:
            raise ValueError(f"DistillConfig.teacher_drop={self.teacher_drop!r} needs a block loss {BLOCK_LOSSES} "
                             f"(one term per teacher); got loss={self.loss!r}")
        if self.heads_view not in FEATURE_VIEWS:
            raise ValueError(f"DistillConfig.heads_view={self.heads_view!r}; expected one of {FEATURE_VIEWS}")
        if self.relational_weight < 0:
            raise ValueError(f"DistillConfig.relational_weight={self.relational_weight!r}; expected >= 0")
        if not (isinstance(self.steps_per_execution, int) and self.steps_per_execution >= 1):
            raise ValueError(f"DistillConfig.steps_per_execution={self.steps_per_execution!r}; expected an int >= 1")
        if self.ladder_residual and (self.loss not in BLOCK_LOSSES or self.heads):
            raise ValueError(f"DistillConfig.ladder_residual=True needs a block loss {BLOCK_LOSSES} through the "
                             f"frozen decoder (heads=False); got loss={self.loss!r}, heads={self.heads!r}")
        if self.proxy_width < 0 or (0 < self.proxy_width <= 1):
            raise ValueError(f"DistillConfig.proxy_width={self.proxy_width!r}; expected 0 (off) or a width multiplier "
                             "> 1 (the proxy is larger than the student)")
        if not (isinstance(self.echo, int) and not isinstance(self.echo, bool) and self.echo >= 1):
            raise ValueError(f"DistillConfig.echo={self.echo!r}; expected an int >= 1 (student updates per batch "
                             "of teacher targets; 1 = off)")
        if self.head_hidden < 1 or self.code_weight < 0:
            raise ValueError(f"DistillConfig: head_hidden={self.head_hidden!r} must be >= 1 and "
                             f"code_weight={self.code_weight!r} >= 0")
