"""Training on a tiny random BERT: Keras API, accumulation, resume, NaN guard, freezing, run dir."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from conftest import (assert_same_run, main_in_process, read_scalars, simulate_kill, tensorboard_tags,
                      tiny_overrides, write_tsv)
from tfllm.config import ModelConfig, load_config
from tfllm.data.pipeline import BatchPlan, make_dataset
from tfllm.data.tokenization import Encoded, encode_texts, load_tokenizer
from tfllm.errors import TfllmError
from tfllm.inference import Predictor
from tfllm.models.classifier import BertClassifier, build_classifier
from tfllm.train import run_training
from tfllm.training.optimization import make_optimizer


def tiny_batches(checkpoint, n=24, batch_size=8, seed=0):
    tokenizer = load_tokenizer(checkpoint)
    texts = [f"example number {i} " + "word " * (i % 7) for i in range(n)]
    enc = encode_texts(tokenizer, texts, max_length=32, labels=np.arange(n, dtype=np.int32) % 2)
    plan = BatchPlan(enc.lengths, batch_size, seed=seed)
    return enc, plan


def classifier(checkpoint, **kwargs) -> BertClassifier:
    cfg = ModelConfig(checkpoint=checkpoint, hidden_dropout=0.0, attention_dropout=0.0,
                      classifier_dropout=0.0)
    tf_keras.utils.set_random_seed(0)
    model, _ = build_classifier(cfg, num_labels=2, **kwargs)
    return model


def test_keras_fit_evaluate_predict(tiny_checkpoint):
    enc, plan = tiny_batches(tiny_checkpoint)
    model = classifier(tiny_checkpoint)
    model.compile(optimizer=make_optimizer(1e-3, total_steps=6))
    ds = make_dataset(enc, plan, epochs=2)
    history = model.fit(ds, epochs=1, steps_per_epoch=6, verbose=0)
    assert set(history.history) >= {"loss", "accuracy", "grad_norm", "learning_rate"}
    logs = model.evaluate(make_dataset(enc, plan, epochs=1), return_dict=True, verbose=0)
    assert 0 <= logs["accuracy"] <= 1 and np.isfinite(logs["loss"])
    logits = model.predict(make_dataset(enc, plan, epochs=1), verbose=0)
    assert logits.shape == (24, 2) and logits.dtype == np.float32


def test_autograph_does_not_convert_the_hugging_face_model(tiny_checkpoint, monkeypatch):
    """Tracing a training step or an inference function runs the transformers code as it is:
    AutoGraph's conversion of it cost seconds in every process that trained (TaskModel.__call__)."""
    from tensorflow.python.autograph.impl import api

    converted = []
    convert = api._convert_actual  # called for every conversion, cached ones included

    def spy(entity, program_ctx):
        converted.append(f"{getattr(entity, '__module__', '')}.{getattr(entity, '__qualname__', entity)}")
        return convert(entity, program_ctx)

    monkeypatch.setattr(api, "_convert_actual", spy)
    enc, plan = tiny_batches(tiny_checkpoint, n=8)
    model = classifier(tiny_checkpoint)
    model.compile(optimizer=make_optimizer(1e-3, total_steps=1))
    model.fit(make_dataset(enc, plan, epochs=1), epochs=1, steps_per_epoch=1, verbose=0)
    features = {k: v[:2] for k, v in next(iter(make_dataset(enc, plan, epochs=1)))[0].items()}
    tf.function(lambda x: model(x, training=False))(features)
    assert any("make_train_function" in name for name in converted)  # the spy sees conversions
    assert not [name for name in converted if name.startswith("transformers.")]


def test_inference_is_traced_once_for_every_batch_size_and_length(tiny_checkpoint):
    """Predicting batches of new sizes and lengths after a first call does not trace the model
    again (a retrace costs seconds: a first 872-sentence predict ran at half speed)."""
    from tfllm.tasks.base import _INFERENCE, keras_outputs

    enc, _ = tiny_batches(tiny_checkpoint, n=24)
    model = classifier(tiny_checkpoint)
    head = Encoded(enc.input_ids[:4], enc.token_type_ids[:4])
    first = keras_outputs(model, head, batch_size=4, multiple=1)
    (forward,) = _INFERENCE[model].values()
    traced = forward.experimental_get_tracing_count()  # 1, or 2 if the first call made a variable
    outputs = keras_outputs(model, enc, batch_size=5, multiple=1)  # batches of 5 and 4, lengths 4 to 10
    assert forward.experimental_get_tracing_count() == traced
    np.testing.assert_allclose(outputs[:4], first, atol=1e-5)  # same rows whatever the batch


def test_freezing_keeps_embeddings_and_bottom_layer(tiny_checkpoint):
    cfg = ModelConfig(checkpoint=tiny_checkpoint, freeze_embeddings=True, freeze_layers=1)
    model, _ = build_classifier(cfg, num_labels=2)
    names = [v.name for v in model.trainable_variables]
    assert not any("embeddings" in n for n in names)
    assert not any("layer_._0/" in n for n in names) and any("layer_._1/" in n for n in names)
    with pytest.raises(TfllmError, match="freeze_layers"):
        build_classifier(ModelConfig(checkpoint=tiny_checkpoint, freeze_layers=5), num_labels=2)


def test_importing_tfllm_first_turns_onednn_on_and_leaves_tf_mot_out():
    """TensorFlow itself turns oneDNN on only for AVX512-VNNI/BF16/AMX CPUs; tfllm asks for it
    everywhere (1.7x faster training on an AVX2-only EPYC), unless the user set the variable.
    The same fresh processes show that training and inference do not import TF-MOT (seconds of
    every start; only the compression phases and the QAT export need it)."""
    import os
    import subprocess
    import sys

    program = ("import sys, tfllm, tensorflow, tfllm.lifecycle, tfllm.inference, tfllm.serve\n"
               "from tensorflow.python.util import _pywrap_util_port as port\n"
               "print(any(m.startswith('tensorflow_model_optimization') for m in sys.modules), port.IsMklEnabled())")
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    for setting, expected in ((None, "True"), ("0", "False")):
        run_env = env if setting is None else {**env, "TF_ENABLE_ONEDNN_OPTS": setting}
        done = subprocess.run([sys.executable, "-c", program], env=run_env, capture_output=True, text=True,
                              timeout=120)
        assert done.stdout.split()[-2:] == ["False", expected], (setting, done.stdout, done.stderr[-2000:])


def test_run_directory_and_tensorboard(tiny_checkpoint, sentiment_files, tmp_path):
    train, dev = sentiment_files
    run_dir = run_training(load_config(None, tiny_overrides(tiny_checkpoint, train, dev, tmp_path / "run")))
    for name in ("config.yaml", "run_info.json", "label_map.json", "metrics.json", "model/config.json",
                 "model/tf_model.h5", "model/vocab.txt", "eval/dev/predictions.csv",
                 "eval/dev/confusion_matrix.png", "eval/dev/metrics.json", "checkpoints/checkpoint"):
        assert (run_dir / name).is_file(), name
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["seed"] == 42 and "tensorflow" in info["versions"] and info["onednn"] is True
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 16 and len(metrics["history"]) == 2  # 64 examples / 8, 2 epochs
    assert json.loads((run_dir / "label_map.json").read_text()) == {"labels": ["neg", "pos"]}

    from transformers import TFBertForSequenceClassification

    hf = TFBertForSequenceClassification.from_pretrained(str(run_dir / "model"))
    assert hf.config.id2label == {0: "neg", 1: "pos"}

    tags = tensorboard_tags(run_dir)
    assert {"loss", "accuracy", "learning_rate", "grad_norm", "config"} <= tags["train"]
    assert {"loss", "accuracy", "macro_f1", "confusion_matrix"} <= tags["dev"]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_checkpoint, sentiment_files, tmp_path):
    train, dev = sentiment_files
    extra = ["train.checkpoint_every=3", "train.keep_checkpoints=10", "train.restore_best=false"]
    full = run_training(load_config(None, tiny_overrides(tiny_checkpoint, train, dev, tmp_path / "full", *extra)))
    # What a run killed after step 3 leaves behind: checkpoint 3 and nothing later.
    killed = simulate_kill(full, tmp_path / "killed", step=3)
    resumed = run_training(load_config(None, tiny_overrides(tiny_checkpoint, train, dev, killed, *extra)),
                           resume=True)

    from transformers import TFBertForSequenceClassification

    assert_same_run(TFBertForSequenceClassification, full, resumed)
    # restore_best off: the last step's dev evaluation is the final report's, not a second pass
    metrics = json.loads((full / "metrics.json").read_text())
    assert [h["step"] for h in metrics["history"]] == [8, 16]
    assert metrics["history"][-1]["accuracy"] == metrics["dev"]["accuracy"]
    assert "macro_f1" in metrics["history"][-1]
    assert "macro_f1" in tensorboard_tags(full)["dev"]


def checkpoint_values(path) -> dict:
    reader = tf.train.load_checkpoint(str(path))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def test_nan_loss_keeps_the_checkpoint_from_before_the_divergence(tiny_checkpoint, sentiment_files, tmp_path):
    """Loss at step s is computed on checkpoint s-1's weights: when it is NaN, s-1 is already
    diverged; the kept checkpoint is s-2, identical to a run stopped there, and --resume uses it."""
    train, dev = sentiment_files
    diverging = ["train.learning_rate=1e4", "train.lr_schedule=constant", "train.warmup_ratio=0",
                 "train.max_grad_norm=null", "train.checkpoint_every=1", "train.keep_checkpoints=100",
                 "train.log_every=1"]
    cfg = load_config(None, tiny_overrides(tiny_checkpoint, train, dev, tmp_path / "nan", *diverging,
                                           "train.epochs=20"))
    with pytest.raises(TfllmError, match="loss became nan at step") as failure:
        run_training(cfg)
    step = int(re.search(r"at step (\d+)", str(failure.value)).group(1))
    run_dir = tmp_path / "nan"
    assert step >= 4 and not (run_dir / "model").exists()
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    assert latest.endswith(f"ckpt-{step - 2}"), (latest, step)
    assert not list((run_dir / "checkpoints").glob(f"ckpt-{step - 1}.*"))
    train_loss = read_scalars(run_dir / "tensorboard" / "train", "loss")
    assert np.isfinite(train_loss[step - 1]) and not np.isfinite(train_loss.get(step, np.nan))
    # the same run stopped at step s-2 (constant rate: the schedule does not depend on the length)
    reference = run_training(load_config(None, tiny_overrides(
        tiny_checkpoint, train, dev, tmp_path / "reference", *diverging, f"train.max_steps={step - 2}")))
    kept = checkpoint_values(latest)
    expected = checkpoint_values(tf.train.latest_checkpoint(str(reference / "checkpoints")))
    weights = [name for name in expected if name.startswith("model/")]
    assert len(weights) > 20
    for name in weights:
        np.testing.assert_array_equal(kept[name], expected[name], err_msg=name)


def test_early_stopping_restores_best(tiny_checkpoint, sentiment_files, tmp_path):
    train, dev = sentiment_files
    cfg = load_config(None, tiny_overrides(tiny_checkpoint, train, dev, tmp_path / "es",
                                           "train.eval_every=1", "train.epochs=30",
                                           "train.early_stopping_patience=2",
                                           "train.early_stopping_metric=loss"))
    run_dir = run_training(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["stopped_early"] and metrics["steps"] < 120
    best = min(h["loss"] for h in metrics["history"])
    assert metrics["history"][-1]["loss"] > best or metrics["history"][-2]["loss"] > best
    assert metrics["best_step"] == min(metrics["history"], key=lambda h: h["loss"])["step"]
    assert metrics["dev"]["loss"] == pytest.approx(best, abs=1e-3)


@pytest.mark.parametrize("switch", ["train.mixed_precision=mixed_bfloat16",
                                    "train.jit_compile=true data.pad_to_multiple_of=32",
                                    "train.mixed_precision=mixed_bfloat16 train.jit_compile=true"])
def test_precision_and_xla_switches_train(tiny_checkpoint, sentiment_files, tmp_path, switch):
    train, dev = sentiment_files
    try:
        run_dir = run_training(load_config(None, tiny_overrides(tiny_checkpoint, train, dev,
                                                                tmp_path / "run", *switch.split(), "train.epochs=1")))
        info = json.loads((run_dir / "run_info.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert np.isfinite(metrics["dev"]["loss"])
        if "mixed_" in switch:
            assert info["precision"] == switch.split()[0].split("=")[1]
            assert info["precision_reason"] == "train.mixed_precision"
            # the final dev report scores the saved weights in float32, as tfllm.evaluate does
            assert metrics["dev_precision"] == "float32"
            alone = Predictor.load(run_dir, precision="float32").evaluate(str(dev), tmp_path / "evaluate")
            assert metrics["dev"]["loss"] == pytest.approx(alone["loss"], rel=1e-6)
            assert ((run_dir / "eval" / "dev" / "predictions.csv").read_text()
                    == (tmp_path / "evaluate" / "predictions.csv").read_text())
        else:
            assert metrics["dev_precision"] == "none"
        # the run's policy ends with the run: models built afterwards in this process are float32
        assert tf_keras.mixed_precision.global_policy().name == "float32"
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("flags, gpu, qat, expected", [
    (["avx512_bf16"], False, False, "mixed_bfloat16"),
    (["amx_bf16"], False, False, "mixed_bfloat16"),
    ([], False, False, "none"),                 # AVX2-only CPU: emulated bf16 would be slower
    (["avx512_bf16"], True, False, "mixed_float16"),
    (["avx512_bf16"], False, True, "none"),    # QAT runs in float32
])
def test_auto_precision_follows_the_hardware(monkeypatch, flags, gpu, qat, expected):
    from tfllm.training import strategy
    monkeypatch.setattr(strategy, "bf16_hardware", lambda: flags)  # conftest pins [] otherwise
    monkeypatch.setattr(strategy.tf.config, "list_physical_devices",
                        lambda kind=None: ["GPU:0"] if gpu and kind == "GPU" else [])
    cfg = load_config(None, ["train.mixed_precision=auto"] + (["compression.qat.enabled=true"] if qat else []))
    precision = strategy.resolve_precision(cfg)
    assert precision.policy == expected
    assert precision.reason.startswith("auto:")
    assert load_config(None, []).train.mixed_precision == "auto"  # the default


def test_sentence_pair_task_trains_and_predicts(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """Pairs ([CLS] a [SEP] b [SEP], token types 0/1) through training and the predict CLI (its
    ``main`` in this process; test_end_to_end runs the command itself)."""
    rows = [(f"the cat sat {i}", f"a cat was sitting {i}", "1") for i in range(12)]
    rows += [(f"the cat sat {i}", f"stocks fell sharply {i}", "0") for i in range(12)]
    header = ("s1", "s2", "label")
    train, dev = write_tsv(tmp_path / "train.tsv", rows, header), write_tsv(tmp_path / "dev.tsv", rows[::3], header)
    run_dir = run_training(load_config(None, tiny_overrides(
        tiny_checkpoint, train, dev, tmp_path / "pairs", "data.text_column=s1",
        "data.text_pair_column=s2", "train.epochs=1")))
    done = main_in_process("predict", [run_dir, "the dog ran\ta dog was running"], capsys, monkeypatch)
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads(done.stdout.strip())
    assert row["text"] == "the dog ran" and row["text_pair"] == "a dog was running"
    assert set(row["probabilities"]) == {"0", "1"}
    bad = main_in_process("predict", [run_dir, "no tab here"], capsys, monkeypatch)
    assert bad.returncode == 2 and "first<TAB>second" in bad.stderr
