"""SavedModel export with tokenisation in the graph: ``serving_default`` takes a batch of raw strings.

The signature tokenizes with tensorflow-text's ``BertTokenizer`` on the run's own ``vocab.txt``
(lower-casing and accent stripping as the run's tokenizer does), truncates to the run's
``max_length``, adds ``[CLS]``/``[SEP]`` (and segment ids for pair tasks), pads to the batch's
longest text and returns the task's outputs (classification: ``probabilities`` ``[batch, labels]``
and the predicted ``label``; regression: ``score``; multi_label: ``probabilities`` and
``predicted`` (0/1 per label at the run's thresholds); token classification: per-piece ``tag_ids``).
Its ops include tensorflow-text's (``CaseFoldUTF8``...), which stock TensorFlow and TF Serving
images without tensorflow-text cannot load, not even for another signature. So a second
SavedModel, ``export/saved_model_ids/1``, takes token ids (``input_ids``, ``attention_mask``,
``token_type_ids``, int32 ``[batch, length]``) and returns ``logits`` with plain TensorFlow ops
only (tokenize in the client); ``Predictor.load`` uses it, with the tokenizer and task metadata
kept in each model's ``assets.extra/``. The directory (``export/saved_model/1``: TF Serving's ``<model>/<version>``
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

IDS_DIR = "saved_model_ids"  # the token-id SavedModel: input_ids / attention_mask / token_type_ids -> logits
METADATA = "tfllm.json"      # in assets.extra/: the task, its artifacts and the run's config
# The serving functions below are straight-line TensorFlow, traced with ``autograph=False``:
# AutoGraph would convert the whole transformers model's source first, for nothing.

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
                                      tf.TensorSpec([None], tf.string, name="text_pair")], autograph=False)
        def serve(text, text_pair):
            first, second = trimmer.trim([tokens(text), tokens(text_pair)])
            ids, types = tf_text.combine_segments([first, second], start_of_sequence_id=cls_id,
                                                  end_of_segment_id=sep_id)
            return classify(ids, types)
    else:
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")], autograph=False)
        def serve(text):
            ids, types = tf_text.combine_segments([tokens(text)[:, :max_length - 2]],
                                                  start_of_sequence_id=cls_id, end_of_segment_id=sep_id)
            return classify(ids, types)

    module.serve = serve
    return module


def build_ids_module(hf_model):
    """A ``tf.Module`` whose ``serve`` takes token ids and returns ``logits``: plain TF ops only."""
    module = tf.Module()
    module.weights = list(hf_model.weights)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name=name) for name in INPUT_NAMES],
                 autograph=False)
    def serve(input_ids, attention_mask, token_type_ids):
        features = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return {"logits": tf.cast(hf_model(features, training=False).logits, tf.float32)}

    module.serve = serve
    return module


def export_saved_model(run: Run, out_dir: Optional[str | Path] = None, version: int = 1) -> list[Path]:
    """Write ``<out>/saved_model/<version>`` (raw strings) and ``<out>/saved_model_ids/<version>``
    (token ids, plain TensorFlow); returns both directories."""
    cfg, tokenizer, model = run.cfg, run.tokenizer, run.hf_model
    vocab = run.path / rundir.MODEL / "vocab.txt"
    if not vocab.is_file():
        raise TfllmError(f"{run.path}/model has no vocab.txt: the SavedModel needs the WordPiece vocabulary")
    pair = cfg.data.text_pair_column is not None
    strings = build_module(model, str(vocab), bool(getattr(tokenizer, "do_lower_case", True)),
                           cfg.data.max_length, run.task, pair,
                           {"cls": tokenizer.cls_token_id, "sep": tokenizer.sep_token_id})
    root = Path(out_dir) if out_dir else run.path / "export"
    targets = [save_module(strings, root / "saved_model" / str(version), run),
               save_module(build_ids_module(model), root / IDS_DIR / str(version), run)]
    log.info("wrote %s (serving_default: %s -> %s) and %s (serving_default: token ids -> logits)",
             targets[0], "text, text_pair" if pair else "text",
             ", ".join(strings.serve.get_concrete_function().structured_outputs), targets[1])
    return targets


def save_module(module, target: Path, run: Run) -> Path:
    """``module.serve`` as ``serving_default``; the tokenizer and the task metadata in
    ``assets.extra/`` (TF Serving's place for files it does not read itself). Atomic."""
    with io.atomic_directory(target) as tmp:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve.get_concrete_function()})
        run.tokenizer.save_pretrained(str(tmp / "assets.extra" / "tokenizer"))
        io.write_json(tmp / "assets.extra" / METADATA, task_metadata(run))
    return target


class SavedModelBackend:
    """The exported token-id SavedModel (``saved_model_ids/<version>``; plain TensorFlow ops),
    batched by length like the Keras backend; the task comes from its metadata."""

    def __init__(self, signature, multiple: int = 8):
        self.signature, self.multiple = signature, multiple

    @classmethod
    def load(cls, path: str | Path):
        """``(backend, task, tokenizer)`` of ``<out>/saved_model_ids/<version>`` (given the raw-string
        ``<out>/saved_model/<version>``, its token-id sibling is used)."""
        path = Path(path)
        if path.parent.name == "saved_model" and (path.parent.parent / IDS_DIR / path.name).is_dir():
            path = path.parent.parent / IDS_DIR / path.name
        meta_file = path / "assets.extra" / METADATA
        if not meta_file.is_file():
            raise TfllmError(f"{path}: no {meta_file.relative_to(path)}; export it with python -m tfllm.export")
        task = task_from_metadata(read_json(meta_file), meta_file)
        try:
            loaded = tf.saved_model.load(str(path))
        except (OSError, ValueError) as e:
            raise TfllmError(f"{path}: not a loadable SavedModel ({first_line(e)})") from None
        signature = loaded.signatures.get("serving_default")
        if signature is None or "input_ids" not in signature.structured_input_signature[1]:
            raise TfllmError(f"{path}: not a token-id SavedModel (no input_ids); use {IDS_DIR}/<version>")
        backend = cls(signature, task.cfg.padding_multiple)
        backend.loaded = loaded  # keeps the signature's variables alive
        return backend, task, load_tokenizer(path / "assets.extra" / "tokenizer")

    def outputs(self, encoded: Encoded, batch_size: int = 64):
        call = lambda features, training=False: self.signature(**features)["logits"]  # noqa: E731
        return keras_outputs(call, encoded, batch_size, self.multiple)
