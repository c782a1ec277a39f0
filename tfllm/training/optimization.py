"""AdamW with decoupled weight decay (not on LayerNorm or biases) and a warm-up/decay schedule."""
from __future__ import annotations

import math

import tensorflow as tf
import tf_keras

NO_DECAY = ["LayerNorm", "layer_norm", "bias"]


@tf_keras.utils.register_keras_serializable("tfllm")
class WarmupDecay(tf_keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak`` over ``warmup_steps``, then linear/cosine decay to 0 (or constant).

        >>> WarmupDecay(1e-3, total_steps=100, warmup_steps=10)(tf.constant(4))  # 5e-4: 5th update
        >>> WarmupDecay(1e-3, total_steps=100, warmup_steps=10)(tf.constant(99))  # 1e-3/90: last update
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int = 0, kind: str = "linear"):
        super().__init__()
        self.peak, self.total_steps, self.warmup_steps, self.kind = peak, total_steps, warmup_steps, kind

    def __call__(self, step):
        """The rate of the update that follows ``step`` completed updates (0 .. total_steps - 1).

        Warm-up climbs to ``peak`` at update ``warmup_steps`` and decay reaches 0 only after the
        last update, so neither the first nor the last update runs at rate 0.
        """
        step = tf.cast(step, tf.float32)
        warmup = float(max(self.warmup_steps, 0))
        warm = self.peak * (step + 1.0) / max(warmup, 1.0)
        progress = tf.clip_by_value((step - warmup) / max(self.total_steps - warmup, 1.0), 0.0, 1.0)
        if self.kind == "cosine":
            decayed = self.peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
        elif self.kind == "linear":
            decayed = self.peak * (1.0 - progress)
        else:
            decayed = tf.constant(self.peak, tf.float32)
        return tf.where(step < warmup, warm, decayed)

    def get_config(self):
        return dict(peak=self.peak, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                    kind=self.kind)


def make_optimizer(learning_rate: float, total_steps: int, warmup_ratio: float = 0.1,
                   schedule: str = "linear", weight_decay: float = 0.01, loss_scale: bool = False):
    """The AdamW the BERT papers use, with ``schedule`` over ``total_steps`` optimizer steps."""
    rate = WarmupDecay(learning_rate, total_steps, int(round(warmup_ratio * total_steps)), schedule)
    optimizer = tf_keras.optimizers.AdamW(learning_rate=rate, weight_decay=weight_decay,
                                          beta_1=0.9, beta_2=0.999, epsilon=1e-6)
    optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    if loss_scale:
        optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer
