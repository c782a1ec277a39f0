"""Freeze parts of a Hugging Face TF BERT encoder (``TFBertMainLayer``) so they are not trained."""
from __future__ import annotations

from tfllm.errors import TfllmError


def apply_freezing(main_layer, freeze_embeddings: bool = False, freeze_layers: int = 0) -> None:
    """Freeze the embeddings and/or the bottom ``freeze_layers`` transformer layers."""
    layers = main_layer.encoder.layer
    if not 0 <= freeze_layers <= len(layers):
        raise TfllmError(f"config key model.freeze_layers: {freeze_layers} is outside 0..{len(layers)}")
    if freeze_embeddings:
        main_layer.embeddings.trainable = False
    for layer in layers[:freeze_layers]:
        layer.trainable = False
