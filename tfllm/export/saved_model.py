"""SavedModel export with tokenisation in the graph: ``serving_default`` takes a batch of raw strings.

The signature tokenizes with tensorflow-text's ``BertTokenizer`` on the run's own ``vocab.txt``
(lower-casing and accent stripping as the run's tokenizer does), truncates to the run's
``max_length``, adds ``[CLS]``/``[SEP]`` (and segment ids for pair tasks), pads to the batch's
longest text and returns the task's outputs (classification: ``probabilities`` ``[batch, labels]``
and the predicted ``label``; regression: ``score``; multi_label: ``probabilities`` and
``predicted`` (0/1 per label at the run's thresholds); token classification: per-piece ``tag_ids``).
The directory (``export/saved_model/1``: TF Serving's ``<model>/<version>`` layout) is loadable by
``tf.saved_model.load`` and TF Serving and listed by ``saved_model_cli show --all``.

    >>> export_saved_model(load_run("runs/sst2"))
    >>> serve = tf.saved_model.load("runs/sst2/export/saved_model/1").signatures["serving_default"]
    >>> serve(text=tf.constant(["a gripping film"]))["probabilities"]
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import tensorflow as tf
import tensorflow_text as tf_text

from tfllm import io, rundir
from tfllm.errors import TfllmError
from tfllm.runs import Run

log = logging.getLogger("tfllm")


def build_module(hf_model, vocab_file: str, lower_case: bool, max_length: int, task,
                 pair: bool = False, special_ids: Optional[dict] = None):
    """A ``tf.Module`` holding the weights, the in-graph tokenizer and the ``serve`` function;
    ``task.serving_outputs(logits)`` turns the head's logits into the signature's outputs."""
    cls_id, sep_id = special_ids["cls"], special_ids["sep"]
    module = tf.Module()
    module.tokenizer = tf_text.BertTokenizer(vocab_file, lower_case=lower_case, token_out_type=tf.int64,
                                             unknown_token="[UNK]")
    module.weights = list(hf_model.weights)  # tracked, so the function's captures are saved

    def tokens(text):
        return module.tokenizer.tokenize(text).merge_dims(-2, -1)

    def classify(ids, types):
        ids = tf.cast(ids, tf.int32)
        mask = tf.ones_like(ids)
        features = {"input_ids": ids.to_tensor(0), "attention_mask": mask.to_tensor(0),
                    "token_type_ids": tf.cast(types, tf.int32).to_tensor(0)}
        logits = tf.cast(hf_model(features, training=False).logits, tf.float32)
        return task.serving_outputs(logits)

    if pair:
        trimmer = tf_text.RoundRobinTrimmer(max_seq_length=max_length - 3)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text"),
                                      tf.TensorSpec([None], tf.string, name="text_pair")])
        def serve(text, text_pair):
            first, second = trimmer.trim([tokens(text), tokens(text_pair)])
            ids, types = tf_text.combine_segments([first, second], start_of_sequence_id=cls_id,
                                                  end_of_segment_id=sep_id)
            return classify(ids, types)
    else:
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(text):
            ids, types = tf_text.combine_segments([tokens(text)[:, :max_length - 2]],
                                                  start_of_sequence_id=cls_id, end_of_segment_id=sep_id)
            return classify(ids, types)

    module.serve = serve
    return module


def export_saved_model(run: Run, out_dir: Optional[str | Path] = None, version: int = 1) -> Path:
    """Write ``<out>/saved_model/<version>``; returns that directory."""
    cfg, tokenizer, model = run.cfg, run.tokenizer, run.hf_model
    vocab = run.path / rundir.MODEL / "vocab.txt"
    if not vocab.is_file():
        raise TfllmError(f"{run.path}/model has no vocab.txt: the SavedModel needs the WordPiece vocabulary")
    pair = cfg.data.text_pair_column is not None
    module = build_module(model, str(vocab), bool(getattr(tokenizer, "do_lower_case", True)),
                          cfg.data.max_length, run.task, pair,
                          {"cls": tokenizer.cls_token_id, "sep": tokenizer.sep_token_id})
    target = (Path(out_dir) if out_dir else run.path / "export") / "saved_model" / str(version)
    with io.atomic_directory(target) as tmp:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve.get_concrete_function()})
    log.info("wrote %s (serving_default: %s -> %s)", target, "text, text_pair" if pair else "text",
             ", ".join(module.serve.get_concrete_function().structured_outputs))
    return target
