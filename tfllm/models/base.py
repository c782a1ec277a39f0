"""TaskModel: the Keras ``train_step`` / ``test_step`` that every tfllm task shares.

A task (classification, masked LM, ...) subclasses :class:`TaskModel` and says only how to get
per-example losses and how to update its metrics. The step here does the rest, identically for
all tasks and strategies:

* weighted losses: each example carries ``1 / global_batch_size`` as its sample weight, so
  summing over replicas and micro-batches gives the global mean exactly;
* gradient accumulation: a batch is split into ``grad_accum_steps`` micro-batches whose gradients
  are summed in a ``tf.while_loop`` before one optimizer step (same result, less memory);
* gradients are all-reduced once, clipped by global norm, then applied; the pre-clip norm and the
  learning rate are returned for logging. Every returned value is the same on all replicas, so
  Keras takes the first replica's (its default sums them: 2 replicas would log twice the norm);
* mixed float16 uses loss scaling (``LossScaleOptimizer``; its current scale is logged as
  ``loss_scale``); bfloat16 needs none.
"""
from __future__ import annotations

import tensorflow as tf
import tf_keras


class TaskModel(tf_keras.Model):
    """Base class; subclasses implement :meth:`per_example_loss` and :meth:`update_task_metrics`."""

    def __init__(self, grad_accum_steps: int = 1, max_grad_norm: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.grad_accum_steps = int(grad_accum_steps)
        self.max_grad_norm = max_grad_norm
        self.loss_tracker = tf_keras.metrics.Mean(name="loss")
        self.distribute_reduction_method = "first"  # the logs are global already

    # --- to implement per task -------------------------------------------------------------
    def per_example_loss(self, x, y, training: bool):
        """Return ``(per_example_loss [batch], outputs)``; outputs feed :meth:`update_task_metrics`."""
        raise NotImplementedError

    def update_task_metrics(self, y, outputs, sample_weight) -> None:
        raise NotImplementedError

    # --- shared ----------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        """Keras' call with AutoGraph off below this point.

        Keras would run every subclassed layer's ``call`` (the whole Hugging Face BERT) through
        AutoGraph inside a ``tf.function``: seconds of source conversion per process and a slower
        trace of every step, export and inference function, for code whose Python branches all
        depend on Python values, never on tensors (it runs under XLA as it is)."""
        return tf.autograph.experimental.do_not_convert(super().__call__)(*args, **kwargs)

    @property
    def metrics(self):
        return [self.loss_tracker] + self.task_metrics()

    def task_metrics(self) -> list:
        return []

    def dev_images(self) -> dict:
        """Images of the metrics' state for TensorBoard (``{name: RGBA uint8 array}``)."""
        return {}

    def _unpack(self, data):
        x, y, w = tf_keras.utils.unpack_x_y_sample_weight(data)
        if w is None:  # plain (x, y) data, e.g. from model.fit: mean over the global batch
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            size = tf.cast(tf.shape(y)[0] * replicas, tf.float32)
            w = tf.ones(tf.shape(y)[:1], tf.float32) / size
        return x, y, tf.cast(w, tf.float32)

    def _loss_and_grads(self, x, y, w, dense: bool = False, merge: bool = True):
        """Weighted loss sum and its gradients for one (micro-)batch; updates metrics.

        The word-embedding gradient stays sparse (``IndexedSlices``: only the rows of tokens in
        the batch) unless ``dense``; its repeated rows are summed (``merge``) for Keras' update,
        which clips and applies it as it is (the fused update sums them itself).
        """
        with tf.GradientTape() as tape:
            per_example, outputs = self.per_example_loss(x, y, training=True)
            loss = tf.reduce_sum(tf.cast(per_example, tf.float32) * w)
            scaled = self._scale_loss(loss)
        grads = tape.gradient(scaled, self.trainable_variables)
        grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g) if dense else
                 _merge_rows(g) if merge else g for g, v in zip(grads, self.trainable_variables)]
        self.loss_tracker.update_state(per_example)
        self.update_task_metrics(y, outputs, w)
        return loss, grads

    def _scale_loss(self, loss):
        if isinstance(self.optimizer, tf_keras.mixed_precision.LossScaleOptimizer):
            return self.optimizer.get_scaled_loss(loss)
        return loss

    def _accumulated_loss_and_grads(self, x, y, w):
        """Sum gradients over ``grad_accum_steps`` slices of the batch (exact for any batch size)."""
        size = tf.shape(y)[0]
        micro = (size + self.grad_accum_steps - 1) // self.grad_accum_steps
        take = lambda t, i: tf.nest.map_structure(lambda a: a[i * micro:(i + 1) * micro], t)  # noqa

        def body(i, loss_sum, grad_sums):
            loss, grads = self._loss_and_grads(take(x, i), take(y, i), take(w, i), dense=True)
            return i + 1, loss_sum + loss, [a + g for a, g in zip(grad_sums, grads)]

        zeros = [tf.zeros_like(v) for v in self.trainable_variables]
        steps = (size + micro - 1) // tf.maximum(micro, 1)
        _, loss, grads = tf.while_loop(lambda i, *_: i < steps, body, [tf.constant(0), 0.0, zeros])
        return loss, grads

    def _fused_update(self) -> bool:
        """One replica and an optimizer with a fused update (tfllm's AdamW): use it."""
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        return replicas == 1 and hasattr(self.optimizer, "apply_clipped")

    def train_step(self, data):
        x, y, w = self._unpack(data)
        fused = self._fused_update()
        if self.grad_accum_steps > 1:
            loss, grads = self._accumulated_loss_and_grads(x, y, w)
        else:
            loss, grads = self._loss_and_grads(x, y, w, merge=not fused)
        if fused:  # clipping, weight decay and Adam in one XLA function
            grad_norm = self.optimizer.apply_clipped(grads, self.trainable_variables, self.max_grad_norm)
        else:
            grad_norm = self._apply_unfused(grads)
        logs = {m.name: m.result() for m in self.metrics}
        logs.update(grad_norm=grad_norm, learning_rate=self.current_learning_rate())
        if isinstance(self.optimizer, tf_keras.mixed_precision.LossScaleOptimizer):
            logs["loss_scale"] = tf.convert_to_tensor(self.optimizer.loss_scale)
        return logs

    def _apply_unfused(self, grads):
        """Keras' update: unscale (float16), all-reduce over replicas, clip, apply; the norm."""
        if isinstance(self.optimizer, tf_keras.mixed_precision.LossScaleOptimizer):
            grads = self.optimizer.get_unscaled_gradients(grads)
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            grads = context.all_reduce(tf.distribute.ReduceOp.SUM, [tf.convert_to_tensor(g) for g in grads])
        grad_norm = tf.linalg.global_norm(grads)
        if self.max_grad_norm:
            grads, _ = tf.clip_by_global_norm(grads, self.max_grad_norm, use_norm=grad_norm)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables),
                                       skip_gradients_aggregation=True)
        return grad_norm

    def current_learning_rate(self):
        optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        lr = optimizer.learning_rate
        if isinstance(lr, tf_keras.optimizers.schedules.LearningRateSchedule):
            return lr(optimizer.iterations - 1)  # the rate the step just used
        return tf.convert_to_tensor(lr)

    def test_step(self, data):
        x, y, w = self._unpack(data)
        per_example, outputs = self.per_example_loss(x, y, training=False)
        self.loss_tracker.update_state(per_example)
        self.update_task_metrics(y, outputs, w)
        return {m.name: m.result() for m in self.metrics}


def _merge_rows(gradient):
    """Sum the rows of an ``IndexedSlices`` gradient that share an index (a token seen twice).

    Norms and clipping of a sparse gradient are only right once every index appears once.
    """
    if not isinstance(gradient, tf.IndexedSlices):
        return gradient
    unique, position = tf.unique(gradient.indices)
    values = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(unique)[0])
    return tf.IndexedSlices(values, unique, gradient.dense_shape)
