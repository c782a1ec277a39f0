"""Masked-LM pretraining: corpora, vocabulary, the model's step, runs, resume, fill-mask, errors."""
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from conftest import PERSUASION, main_in_process, tensorboard_tags
from tfllm.config import DataConfig, ModelConfig, load_config
from tfllm.data.corpus import (Corpus, build_blocks, build_lines, encode_corpus, hold_out,
                               load_corpus_splits, read_corpus, tokenize_documents)
from tfllm.data.masking import IGNORE, MaskingSpec, make_masking_fn
from tfllm.data.pipeline import BatchPlan, make_dataset
from tfllm.data.tokenization import load_tokenizer
from tfllm.data.vocab import SPECIAL_TOKENS, train_wordpiece
from tfllm.errors import TfllmError
from tfllm.models.checkpoints import resolve_checkpoint
from tfllm.inference import Predictor
from tfllm.models.masked_lm import build_masked_lm
from tfllm.train import run_training
from tfllm.training.optimization import make_optimizer

@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_checkpoint("packaged:minilm-l6"))


@pytest.fixture(scope="module")
def austen() -> Path:
    """The first 1,600 lines of Persuasion (hard-wrapped, paragraphs separated by blank lines)."""
    return PERSUASION


def mlm_overrides(corpus, out, *extra):
    return ["train.task=masked_lm", f"data.train_file={corpus}", "data.dev_file=null",
            "data.dev_fraction=0.1", "data.documents=blank_line", f"output_dir={out}",
            "data.max_length=32", "train.batch_size=8", "train.eval_batch_size=32",
            "train.learning_rate=1e-3", "train.log_every=5", "train.warmup_ratio=0", *extra]


# --- corpora ----------------------------------------------------------------------------------
def test_corpus_sources_globs_lists_columns_and_documents(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\n\nsecond doc\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("third doc\n", encoding="utf-8")
    (tmp_path / "c.csv").write_text('id,body\n1,"csv, one"\n2,\n3,csv two\n', encoding="utf-8")
    (tmp_path / "d.jsonl").write_text('{"text": "json one"}\n{"text": ""}\n', encoding="utf-8")
    (tmp_path / "p.txt").write_text("a wrapped\nparagraph\n\n\nnext one\n", encoding="utf-8")
    cfg = DataConfig()
    assert read_corpus(str(tmp_path / "*.txt"), cfg).documents[:3] == ["first doc", "second doc", "third doc"]
    spec = f"{tmp_path / 'b.txt'},{tmp_path / 'a.txt'}"
    assert read_corpus(spec, cfg).documents == ["third doc", "first doc", "second doc"]
    assert read_corpus(str(tmp_path / "c.csv"), DataConfig(text_column="body")).documents == ["csv, one", "csv two"]
    assert read_corpus(str(tmp_path / "d.jsonl"), cfg).documents == ["json one"]
    paragraphs = read_corpus(str(tmp_path / "p.txt"), DataConfig(documents="blank_line")).documents
    assert paragraphs == ["a wrapped paragraph", "next one"]
    assert read_corpus(str(tmp_path / "*.txt"), cfg, limit=2).documents == ["first doc", "second doc"]
    with pytest.raises(TfllmError, match="no column 'text'"):
        read_corpus(str(tmp_path / "c.csv"), cfg)
    with pytest.raises(TfllmError, match="no files match"):
        read_corpus(str(tmp_path / "*.nothing"), cfg)


def test_hugging_face_dataset_corpus(tmp_path):
    import datasets

    texts = {"train": ["a first review", "", "a second review"], "validation": ["held out text"]}
    datasets.DatasetDict({k: datasets.Dataset.from_dict({"text": v, "n": list(range(len(v)))})
                          for k, v in texts.items()}).save_to_disk(str(tmp_path / "hf"))
    splits = load_corpus_splits(DataConfig(hf_dataset=str(tmp_path / "hf")), seed=0)
    assert splits.train.documents == ["a first review", "a second review"]
    assert splits.dev.documents == ["held out text"] and splits.dev.source.endswith("[validation]")
    with pytest.raises(TfllmError, match="no column 'body'"):
        load_corpus_splits(DataConfig(hf_dataset=str(tmp_path / "hf"), text_column="body"), seed=0)


def test_blocks_lines_and_held_out_documents(tokenizer):
    docs = [f"document number {i} says " + "words " * (i % 9) for i in range(40)]
    train, dev = hold_out(Corpus(docs, "mem"), 0.25, seed=0)
    assert len(dev) == 10 and len(train) == 30 and not set(train.documents) & set(dev.documents)
    ids = tokenize_documents(tokenizer, train.documents)
    blocks, stats = build_blocks(ids, tokenizer.cls_token_id, tokenizer.sep_token_id, 16)
    arr = np.stack(blocks.input_ids)
    assert arr.shape[1] == 16 and (arr[:, 0] == tokenizer.cls_token_id).all()
    assert (arr[:, -1] == tokenizer.sep_token_id).all()
    stream = np.concatenate([np.append(x, tokenizer.sep_token_id) for x in ids])  # [SEP] ends each doc
    np.testing.assert_array_equal(arr[:, 1:-1].ravel(), stream[:arr.shape[0] * 14])
    assert stats.sequences == len(stream) // 14 and stats.tokens == len(stream)
    lines, _ = build_lines(ids, tokenizer.cls_token_id, tokenizer.sep_token_id, 8)
    assert len(lines) == 30 and max(lines.lengths) == 8
    np.testing.assert_array_equal(lines.input_ids[0][1:-1], ids[0][:6])


def test_nsp_pairs_are_half_true_and_well_formed(tokenizer, austen):
    cfg = DataConfig(documents="blank_line", nsp=True, max_length=64)
    corpus = read_corpus(str(austen), cfg)
    encoded, stats = encode_corpus(tokenizer, corpus, cfg, seed=3)
    labels = encoded.labels
    assert len(labels) > 300
    assert labels.mean() == pytest.approx(0.5, abs=0.06)
    sep = tokenizer.sep_token_id
    for ids, types in zip(encoded.input_ids, encoded.token_type_ids):
        assert len(ids) <= 64 and ids[0] == tokenizer.cls_token_id and ids[-1] == sep
        first_sep = int(np.flatnonzero(ids == sep)[0])
        assert (types[:first_sep + 1] == 0).all() and (types[first_sep + 1:] == 1).all()
        assert first_sep >= 2 and len(ids) - first_sep >= 3  # A and B both non-empty


def test_wordpiece_vocabulary_training(austen):
    corpus = read_corpus(str(austen), DataConfig(documents="blank_line"))
    tok = train_wordpiece(corpus.documents, vocab_size=600)
    vocab = tok.get_vocab()
    assert [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])][:5] == SPECIAL_TOKENS
    assert tok.pad_token_id == 0 and tok.mask_token_id == 4 and 500 <= len(tok) <= 700
    assert any(t.startswith("##") for t in vocab)
    pieces = tok.tokenize("Anne Elliot was persuaded")
    assert pieces and "[UNK]" not in pieces
    with pytest.raises(TfllmError, match="too small for the 5 special tokens"):
        train_wordpiece(corpus.documents, vocab_size=5)


# --- the model's step -------------------------------------------------------------------------
def tiny_mlm(checkpoint, tokenizer, **kwargs):
    tf_keras.utils.set_random_seed(0)
    cfg = ModelConfig(checkpoint=checkpoint, hidden_dropout=0.0, attention_dropout=0.0)
    model, report = build_masked_lm(cfg, tokenizer, **kwargs)
    return model, report


def masked_batch(tokenizer, n=12, seed=0):
    texts = [f"sample text number {i} " + "more words here " * (i % 4) for i in range(n)]
    ids = tokenize_documents(tokenizer, texts)
    enc, _ = build_lines(ids, tokenizer.cls_token_id, tokenizer.sep_token_id, 32)
    spec = MaskingSpec.from_tokenizer(tokenizer, 0.3)
    plan = BatchPlan(enc.lengths, n, seed=seed)
    return next(iter(make_dataset(enc, plan, epochs=1, map_fn=make_masking_fn(spec, seed))))


def test_loss_is_mean_over_masked_tokens_and_accumulation_is_exact(tiny_checkpoint):
    tokenizer = load_tokenizer(tiny_checkpoint)
    batch = masked_batch(tokenizer)
    features, labels, _ = batch
    model, _ = tiny_mlm(tiny_checkpoint, tokenizer)
    logits = model(features)["logits"].numpy()
    chosen = labels.numpy() != IGNORE
    log_p = tf.nn.log_softmax(logits).numpy()
    expected = -np.mean(log_p[chosen, labels.numpy()[chosen]])
    results = []
    for accum in (1, 3):
        model, _ = tiny_mlm(tiny_checkpoint, tokenizer, grad_accum_steps=accum, max_grad_norm=1.0)
        model.compile(optimizer=make_optimizer(1e-2, total_steps=10, warmup_ratio=0.0))
        logs = model.train_step(batch)
        results.append(([v.numpy().copy() for v in model.trainable_variables], logs))
    (w1, logs1), (w3, logs3) = results
    assert float(logs1["loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(logs1["perplexity"]) == pytest.approx(np.exp(expected), rel=1e-4)
    assert float(logs3["loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(logs3["grad_norm"]) == pytest.approx(float(logs1["grad_norm"]), rel=1e-4)
    for a, b in zip(w1, w3):
        np.testing.assert_allclose(a, b, atol=2e-6)


# --- whole runs -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scratch_run(austen, tmp_path_factory):
    """A tiny BERT from scratch with a vocabulary trained on the corpus: 120 steps."""
    out = tmp_path_factory.mktemp("mlm") / "scratch"
    cfg = load_config(None, mlm_overrides(
        austen, out, "model.checkpoint=scratch", "model.vocab_size=1000", "model.num_layers=2",
        "model.hidden_size=64", "model.num_heads=2", "model.intermediate_size=128",
        "data.max_length=64", "train.batch_size=32", "train.max_steps=120", "train.eval_every=40",
        "train.learning_rate=3e-3", "train.warmup_ratio=0.05", "train.log_every=10",
        "train.checkpoint_every=40", "train.early_stopping_metric=perplexity"))
    return run_training(cfg)


def test_scratch_model_loss_falls_and_the_run_directory(scratch_run):
    metrics = json.loads((scratch_run / "metrics.json").read_text())
    history = metrics["history"]
    assert [h["step"] for h in history] == [40, 80, 120]
    vocab = len((scratch_run / "tokenizer" / "vocab.txt").read_text().splitlines())
    assert 900 <= vocab <= 1100
    # a random model predicts ~uniformly: loss ~ ln(vocab); training must beat that clearly
    train_loss = {}
    for event_file in (scratch_run / "tensorboard" / "train").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for v in event.summary.value:
                if v.tag == "loss":
                    train_loss[event.step] = float(tf.make_ndarray(v.tensor))
    steps = sorted(train_loss)
    assert steps[0] == 10 and steps[-1] == 120
    assert train_loss[steps[-1]] < train_loss[steps[0]] - 0.3, train_loss
    assert history[-1]["loss"] < history[0]["loss"], history
    assert history[-1]["loss"] < np.log(vocab) - 0.8, history
    assert metrics["dev"]["perplexity"] == pytest.approx(np.exp(metrics["dev"]["loss"]), rel=1e-3)
    assert 0.02 < metrics["dev"]["accuracy"] < 1  # "the", ",", "." are learnt first
    assert metrics["corpus"]["train"]["sequences"] > 100
    for name in ("config.yaml", "run_info.json", "model/config.json", "model/tf_model.h5",
                 "model/vocab.txt", "checkpoints/checkpoint"):
        assert (scratch_run / name).is_file(), name
    config = json.loads((scratch_run / "model" / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"] and config["hidden_size"] == 64
    tags = tensorboard_tags(scratch_run)
    assert {"loss", "perplexity", "accuracy", "learning_rate", "config"} <= tags["train"]
    assert {"loss", "perplexity", "accuracy"} <= tags["dev"]

    from transformers import TFBertForMaskedLM

    TFBertForMaskedLM.from_pretrained(str(scratch_run / "model"))  # loadable by transformers


def test_fill_mask_cli(scratch_run, capsys, monkeypatch):
    done = main_in_process("predict", [scratch_run, "--fill-mask", "she was [MASK] to see him .",
                                       "--fill-mask", "[MASK] and [MASK]", "--top-k", "3"], capsys, monkeypatch)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["text"][:3], r["mask"]) for r in rows] == [("she", 1), ("[MA", 1), ("[MA", 2)]
    for row in rows:
        probabilities = [p["probability"] for p in row["predictions"]]
        assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1.0001
    bad = main_in_process("predict", [scratch_run, "--fill-mask", "no mask here"], capsys, monkeypatch)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: text 1 has no [MASK]")

    predicted = main_in_process("predict", [scratch_run, "a text"], capsys, monkeypatch)
    assert predicted.returncode == 2 and "masked-LM run, not a classifier" in predicted.stderr

    from tfllm.inference import Predictor

    with pytest.raises(TfllmError, match="is a masked_lm run, not classification"):
        Predictor.load(scratch_run, task_name="classification")


def test_packaged_minilm_continues_and_its_run_starts_a_classifier(austen, tmp_path, caplog):
    """The real scenario: MiniLM (no MLM head) -> continued MLM -> classifier with every encoder weight."""
    out = tmp_path / "continue"
    with caplog.at_level("INFO", logger="tfllm"):
        run_dir = run_training(load_config(None, mlm_overrides(
            austen, out, "train.max_steps=2", "train.learning_rate=1e-4", "data.max_dev_examples=16",
            "train.restore_best=false")))
    assert "has no masked-LM head weights" in caplog.text and "tied to the input word embeddings" in caplog.text

    from transformers import TFBertForMaskedLM

    from tfllm.models.classifier import build_classifier

    mlm = TFBertForMaskedLM.from_pretrained(str(run_dir / "model"))
    classifier, report = build_classifier(ModelConfig(checkpoint=str(run_dir)), num_labels=2)
    assert report.missing and all(k.startswith("classifier") for k in report.missing), report.missing
    encoder = {w.name.split("/", 1)[1]: w.numpy() for w in classifier.bert.bert.weights}
    mlm_encoder = {w.name.split("/", 1)[1]: w.numpy() for w in mlm.bert.weights}
    assert set(mlm_encoder) <= set(encoder) and any("pooler" in k for k in encoder)
    for name, value in mlm_encoder.items():
        np.testing.assert_array_equal(value, encoder[name], err_msg=name)
    # the pooler was carried over from the packaged checkpoint (PyTorch layout), not re-initialised
    from safetensors.numpy import load_file

    original = load_file(str(Path(resolve_checkpoint("packaged:minilm-l6")) / "model.safetensors"))
    kernel, bias = (w.numpy() for w in classifier.bert.bert.pooler.weights)
    np.testing.assert_array_equal(kernel, original["pooler.dense.weight"].T)
    np.testing.assert_array_equal(bias, original["pooler.dense.bias"])


def test_nsp_run_reports_nsp_metrics_and_still_starts_a_classifier(tiny_checkpoint, austen, tmp_path):
    try:
        run_dir = run_training(load_config(None, mlm_overrides(
            austen, tmp_path / "nsp", f"model.checkpoint={tiny_checkpoint}", "data.nsp=true",
            "train.max_steps=6", "data.max_length=48", "data.max_dev_examples=32",
            "train.mixed_precision=mixed_bfloat16")))
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"loss", "mlm_loss", "nsp_loss", "nsp_accuracy", "perplexity", "accuracy"} <= set(metrics["dev"])
    assert metrics["dev"]["loss"] == pytest.approx(metrics["dev"]["mlm_loss"] + metrics["dev"]["nsp_loss"], rel=1e-4)
    assert 0.3 < metrics["corpus"]["train"]["random_next_fraction"] < 0.7
    assert json.loads((run_dir / "model" / "config.json").read_text())["architectures"] == ["BertForPreTraining"]

    from tfllm.models.classifier import build_classifier

    _, report = build_classifier(ModelConfig(checkpoint=str(run_dir)), num_labels=2)
    assert all(k.startswith("classifier") for k in report.missing), report.missing
    assert Predictor.load(run_dir).predict(["it was a [MASK] day"])[0]["predictions"]


@pytest.mark.slow  # XLA compiles for ~1 minute on 2 CPU cores
def test_xla_step_matches_eager_step(tiny_checkpoint):
    tokenizer = load_tokenizer(tiny_checkpoint)
    batch = masked_batch(tokenizer, seed=4)
    losses = []
    for jit in (False, True):
        model, _ = tiny_mlm(tiny_checkpoint, tokenizer)
        model.compile(optimizer=make_optimizer(1e-3, total_steps=10), jit_compile=jit)
        logs = model.make_train_function()(iter(tf.data.Dataset.from_tensors(batch).repeat()))
        losses.append(float(logs["loss"]))
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


# --- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize("setup, overrides, message", [
    ("empty", [], "the corpus is empty"),
    ("short", [], "fewer than one block"),
    ("ok", ["model.checkpoint=scratch", "model.preset=tiny", "model.vocab_size=4"],
     "too small for the 5 special tokens"),
    ("ok", ["data.mlm_probability=0"], "mlm_probability: 0.0 must be between 0 and 1"),
    ("ok", ["data.mlm_probability=1.2"], "mlm_probability: 1.2 must be between 0 and 1"),
    ("ok", ["model.preset=tiny"], "sizes apply only to a model trained from scratch"),
    ("ok", ["model.checkpoint=scratch", "model.hidden_size=100", "model.num_heads=3",
            "model.num_layers=1"], "not divisible"),
    ("ok", ["model.checkpoint=scratch"], "needs model.preset"),
])
def test_bad_inputs_fail_with_one_clear_error(tmp_path, setup, overrides, message):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text({"empty": "\n   \n\n", "short": "a few words\nand a few more\n",
                       "ok": "a sentence of text.\n" * 50}[setup], encoding="utf-8")
    cfg = load_config(None, mlm_overrides(corpus, tmp_path / "run", "data.documents=line", *overrides))
    with pytest.raises(TfllmError, match=message) as error:
        run_training(cfg)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()  # nothing written on a bad start


def test_scratch_is_only_for_masked_lm(sentiment_files, tmp_path):
    train, dev = sentiment_files
    cfg = load_config(None, [f"data.train_file={train}", f"data.dev_file={dev}", "model.checkpoint=scratch",
                             f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(TfllmError, match="scratch .* is only for train.task=masked_lm"):
        run_training(cfg)


def test_cli_bad_corpus_is_one_line(tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "empty.txt"
    corpus.write_text("", encoding="utf-8")
    done = main_in_process("train", mlm_overrides(corpus, tmp_path / "run"), capsys, monkeypatch)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"error: {corpus}: the corpus is empty (no non-blank text)"
