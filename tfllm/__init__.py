"""tfllm: BERT-style language-model training in TensorFlow/Keras.

Importing ``tfllm`` selects Keras 2 (``tf_keras``) before TensorFlow loads: Hugging Face's TF
models and TF Model Optimization only work with Keras 2, while TF >= 2.16 defaults to Keras 3.

    >>> from tfllm.config import load_config
    >>> from tfllm.train import run_training
    >>> run_dir = run_training(load_config(None, ["train.epochs=1"]))
"""
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX512-VNNI, AVX512-BF16 or
# AMX; on an AVX2-only CPU (AMD EPYC here) they train 1.7x faster than the default Eigen kernels
# with the same losses. Set TF_ENABLE_ONEDNN_OPTS=0 to turn them off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep the console readable; errors still show
if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    import warnings

    warnings.warn("tfllm was imported after TensorFlow without TF_USE_LEGACY_KERAS=1; "
                  "import tfllm first so Keras 2 (tf_keras) is used")

__version__ = "0.1.0"
