"""SavedModel export with tokenisation in the graph: ``serving_default`` takes a batch of raw strings.

The signature tokenizes with tensorflow-text's ``BertTokenizer`` on the run's own ``vocab.txt``
(lower-casing and accent stripping as the run's tokenizer does), truncates to the run's
``max_length``, adds ``[CLS]``/``[SEP]`` (and segment ids for pair tasks), pads to the batch's
longest text and returns the task's outputs (classification: ``probabilities`` ``[batch, labels]``
and the predicted ``label``; regression: ``score``; multi_label: ``probabilities`` and
``predicted`` (0/1 per label at the run's thresholds); token classification: per-piece ``tag_ids``).
A second signature, ``serve_ids``, takes token ids (``input_ids``, ``attention_mask``,
``token_type_ids``, int32 ``[batch, length]``) and returns ``logits``: plain TensorFlow ops only,
so stock serving stacks without tensorflow-text run it (tokenize in the client), and
``Predictor.load(".../saved_model/1")`` uses it with the tokenizer and task metadata kept in
``assets.extra/``. The directory (``export/saved_model/1``: TF Serving's ``<model>/<version>``
layout) is loadable by ``tf.saved_model.load`` and TF Serving and listed by
``saved_model_cli show --all``.

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
from tfllm.data.readers import read_json
from tfllm.data.tokenization import Encoded, load_tokenizer
from tfllm.errors import TfllmError, first_line
from tfllm.export.tflite import INPUT_NAMES, task_from_metadata, task_metadata
from tfllm.runs import Run
from tfllm.tasks.base import keras_outputs

IDS_SIGNATURE = "serve_ids"  # input_ids / attention_mask / token_type_ids (int32) -> logits
METADATA = "tfllm.json"      # in assets.extra/: the task, its artifacts and the run's config

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

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name=name) for name in INPUT_NAMES])
    def serve_ids(input_ids, attention_mask, token_type_ids):
        features = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return {"logits": tf.cast(hf_model(features, training=False).logits, tf.float32)}

    module.serve, module.serve_ids = serve, serve_ids
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
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve.get_concrete_function(),
                                                          IDS_SIGNATURE: module.serve_ids.get_concrete_function()})
        extra = tmp / "assets.extra"  # TF Serving's place for files it does not read itself
        tokenizer.save_pretrained(str(extra / "tokenizer"))
        io.write_json(extra / METADATA, task_metadata(run))
    log.info("wrote %s (serving_default: %s -> %s; %s: token ids -> logits)", target,
             "text, text_pair" if pair else "text", ", ".join(module.serve.get_concrete_function().structured_outputs),
             IDS_SIGNATURE)
    return target


class SavedModelBackend:
    """An exported SavedModel's token-id signature (plain TensorFlow ops, no tensorflow-text
    needed), batched by length like the Keras backend; the task comes from its metadata."""

    def __init__(self, signature, multiple: int = 8):
        self.signature, self.multiple = signature, multiple

    @classmethod
    def load(cls, path: str | Path):
        """``(backend, task, tokenizer)`` of ``<out>/saved_model/<version>``."""
        path = Path(path)
        meta_file = path / "assets.extra" / METADATA
        if not meta_file.is_file():
            raise TfllmError(f"{path}: no {meta_file.relative_to(path)}; export it with python -m tfllm.export")
        task = task_from_metadata(read_json(meta_file), meta_file)
        try:
            loaded = tf.saved_model.load(str(path))
        except (OSError, ValueError) as e:
            raise TfllmError(f"{path}: not a loadable SavedModel ({first_line(e)})") from None
        if IDS_SIGNATURE not in loaded.signatures:
            raise TfllmError(f"{path}: no {IDS_SIGNATURE!r} signature; export it again")
        backend = cls(loaded.signatures[IDS_SIGNATURE], task.cfg.data.pad_to_multiple_of)
        backend.loaded = loaded  # keeps the signature's variables alive
        return backend, task, load_tokenizer(path / "assets.extra" / "tokenizer")

    def outputs(self, encoded: Encoded, batch_size: int = 64):
        call = lambda features, training=False: self.signature(**features)["logits"]  # noqa: E731
        return keras_outputs(call, encoded, batch_size, self.multiple)
