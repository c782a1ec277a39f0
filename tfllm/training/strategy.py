"""Pick a ``tf.distribute`` strategy and mixed-precision policy from the config.

``mirrored`` uses every local GPU, or ``num_cpu_devices`` logical CPUs (for testing on a laptop);
``multi_worker`` reads the cluster from ``TF_CONFIG``. All strategies run the same code path.
"""
from __future__ import annotations

import json
import logging
import os

import tensorflow as tf
import tf_keras

from tfllm.config import Config, DistributeConfig
from tfllm.errors import TfllmError

log = logging.getLogger("tfllm")


def split_cpu(num_devices: int) -> None:
    """Expose the CPU as ``num_devices`` logical devices (must run before TF initialises devices)."""
    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0])
    if current and len(current) == num_devices:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])
    except RuntimeError:
        raise TfllmError("distribute.num_cpu_devices must be set before TensorFlow has started "
                         "(set it in a fresh process)") from None


def make_strategy(cfg: DistributeConfig) -> tf.distribute.Strategy:
    if cfg.num_cpu_devices > 1:
        split_cpu(cfg.num_cpu_devices)
    if cfg.strategy == "default":
        return tf.distribute.get_strategy()
    if cfg.strategy == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if "TF_CONFIG" not in os.environ:
        raise TfllmError("distribute.strategy=multi_worker needs the TF_CONFIG environment variable")
    try:
        json.loads(os.environ["TF_CONFIG"])
    except json.JSONDecodeError as e:
        raise TfllmError(f"TF_CONFIG is not valid JSON: {e}") from None
    return tf.distribute.MultiWorkerMirroredStrategy()


def set_precision(policy: str) -> str:
    """Set the global Keras mixed-precision policy; ``auto`` = float16 on GPU, bfloat16 on CPU."""
    if policy == "auto":
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    tf_keras.mixed_precision.set_global_policy("float32" if policy == "none" else policy)
    return policy


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that owns the run directory (always, outside multi-worker training)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (not has_chief and resolver.task_type == "worker"
                                             and resolver.task_id == 0)


def seed_everything(cfg: Config) -> str:
    """Seed Python/NumPy/TF, make dropout resumable, set the precision policy; returns it."""
    tf_keras.utils.set_random_seed(cfg.train.seed)
    # Dropout then draws from tf.random.Generator state variables, which our checkpoints save:
    # a resumed run continues the exact random stream of the interrupted one.
    tf_keras.backend.experimental.enable_tf_random_generator()
    return set_precision(cfg.train.mixed_precision)
