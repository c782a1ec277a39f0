"""Pick a ``tf.distribute`` strategy and mixed-precision policy from the config.

``mirrored`` uses every local GPU, or ``num_cpu_devices`` logical CPUs (for testing on a laptop);
``multi_worker`` reads the cluster from ``TF_CONFIG``. All strategies run the same code path.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import tensorflow as tf
import tf_keras

from tfllm.config import Config, DistributeConfig
from tfllm.errors import TfllmError
from tfllm.hardware import bf16_hardware, bf16_refused_by_cap, no_bf16_reason

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


@dataclass(frozen=True)
class Precision:
    policy: str   # none (float32), mixed_bfloat16 or mixed_float16
    reason: str   # why: what the config asked, or what ``auto`` saw


def resolve_precision(cfg: Config) -> Precision:
    """``train.mixed_precision``, with ``auto`` decided by the hardware.

    ``auto``: float16 on a GPU; bfloat16 on a CPU with bf16 matrix instructions (AMX-BF16 or
    AVX512-BF16), where oneDNN runs bf16 matmuls faster than float32; float32 on a CPU without
    them (bf16 would be emulated there: slower, and less precise) and for QAT (float32 only).
    """
    asked = cfg.train.mixed_precision
    refused = bf16_refused_by_cap() if asked == "mixed_bfloat16" else None
    if refused:
        raise TfllmError(f"config key train.mixed_precision: mixed_bfloat16 cannot run: {refused}; "
                         "use auto or none, or unset ONEDNN_MAX_CPU_ISA")
    if asked == "mixed_bfloat16" and not bf16_hardware() and not tf.config.list_physical_devices("GPU"):
        log.warning("train.mixed_precision=mixed_bfloat16, but %s: bf16 runs emulated here, slower than "
                    "float32 (auto would pick float32)", no_bf16_reason())
    if asked != "auto":
        return Precision(asked, "train.mixed_precision")
    if cfg.compression.qat.enabled:
        return Precision("none", "auto: quantization-aware training runs in float32")
    if tf.config.list_physical_devices("GPU"):
        return Precision("mixed_float16", "auto: a GPU")
    bf16 = bf16_hardware()
    if bf16:
        return Precision("mixed_bfloat16", f"auto: the CPU has bf16 instructions ({', '.join(bf16)})")
    return Precision("none", f"auto: {no_bf16_reason()}; float32 is faster than emulated bf16")


def set_precision(policy: str) -> None:
    """Set the global Keras mixed-precision policy (``none`` = float32)."""
    tf_keras.mixed_precision.set_global_policy("float32" if policy == "none" else policy)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that owns the run directory (always, outside multi-worker training)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (not has_chief and resolver.task_type == "worker"
                                             and resolver.task_id == 0)


def seed_everything(cfg: Config) -> Precision:
    """Seed Python/NumPy/TF, make dropout resumable, set the precision policy; returns it."""
    tf_keras.utils.set_random_seed(cfg.train.seed)
    # Dropout then draws from tf.random.Generator state variables, which our checkpoints save:
    # a resumed run continues the exact random stream of the interrupted one.
    tf_keras.backend.experimental.enable_tf_random_generator()
    precision = resolve_precision(cfg)
    set_precision(precision.policy)
    return precision
