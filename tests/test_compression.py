"""Pruning and QAT as training phases on the tiny random BERT (TF-MOT wrappers, stripping, export)."""
import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from conftest import sentiment_rows, tiny_overrides, write_tsv
from tfllm.config import ModelConfig, PruningConfig, load_config
from tfllm.errors import TfllmError
from tfllm.train import run_training


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("compression_data")
    return write_tsv(root / "train.tsv", sentiment_rows(4)), write_tsv(root / "dev.tsv", sentiment_rows(1))


def tags(logdir):
    found = set()
    for event_file in logdir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            found.update(v.tag for v in event.summary.value)
    return found


def h5_weight_names(path):
    import h5py

    names = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def test_pruning_phase_reaches_target_on_every_kernel(tiny_checkpoint, files, tmp_path):
    train, dev = files
    cfg = load_config(None, tiny_overrides(
        tiny_checkpoint, train, dev, tmp_path / "pruned", "compression.pruning.enabled=true",
        "compression.pruning.target_sparsity=0.6", "compression.pruning.frequency=2",
        "compression.pruning.layers=[attention, feed_forward, embeddings]"))
    run_dir = run_training(cfg)

    from transformers import TFBertForSequenceClassification

    from tfllm.compression.pruning import encoder_kernels, sparsity

    hf = TFBertForSequenceClassification.from_pretrained(str(run_dir / "model"))  # a plain BERT
    kernels = encoder_kernels(hf, ["attention", "feed_forward", "embeddings"])
    assert len(kernels) == 1 + 2 * 6
    for kernel in kernels:
        assert sparsity(kernel.numpy()) == pytest.approx(0.6, abs=0.01), kernel.name
    assert sparsity(hf.classifier.kernel.numpy()) == 0  # the head is not pruned
    assert not [n for n in h5_weight_names(run_dir / "model" / "tf_model.h5")
                if "mask" in n or "threshold" in n or "prune" in n]
    info = json.loads((run_dir / "compression.json").read_text())["pruning"]
    assert info["overall"] == pytest.approx(0.6, abs=0.01) and len(info["kernels"]) == 13
    pruning_tags = tags(run_dir / "tensorboard" / "pruning")
    assert "sparsity/mean" in pruning_tags and "sparsity/layer_1/attention/self/query" in pruning_tags
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 16 and np.isfinite(metrics["dev"]["loss"])


def test_pruning_schedule_lands_on_a_mask_update_and_checks_steps():
    from tfllm.compression.pruning import make_schedule

    schedule, end = make_schedule(PruningConfig(enabled=True, frequency=3, begin_step=1), total_steps=20)
    assert end == 13 and (end - 1) % 3 == 0  # 0.7 * 20 = 14 -> 1 + 4 * 3
    assert float(schedule(end)[1]) == pytest.approx(0.5)
    with pytest.raises(TfllmError, match="only 10 steps"):
        make_schedule(PruningConfig(enabled=True, frequency=50, end_step=50), total_steps=10)
    with pytest.raises(TfllmError, match="target_sparsity"):
        make_schedule(PruningConfig(enabled=True, target_sparsity=1.5), total_steps=10)


def qat_classifier(checkpoint):
    from tfllm.compression import qat
    from tfllm.models.classifier import build_classifier

    tf_keras.utils.set_random_seed(0)
    model, _ = build_classifier(ModelConfig(checkpoint=checkpoint, hidden_dropout=0.0,
                                            attention_dropout=0.0, classifier_dropout=0.0), num_labels=2)
    return qat.wrap(model, ["attention", "feed_forward"])


def test_qat_wrappers_are_in_the_training_graph(tiny_checkpoint):
    from test_training import tiny_batches

    from tfllm.compression import qat
    from tfllm.data.pipeline import make_dataset
    from tfllm.training.optimization import make_optimizer

    model = qat_classifier(tiny_checkpoint)
    wrappers = qat.wrappers(model.bert)
    assert len(wrappers) == 2 * 6
    kernel_names = {v.name for v in model.trainable_variables if v.name.endswith("kernel:0")}
    assert any("attention/self/query" in n for n in kernel_names)  # still trained through the wrapper
    enc, plan = tiny_batches(tiny_checkpoint)
    model.compile(optimizer=make_optimizer(1e-3, total_steps=3))
    before = [w.numpy().copy() for w in model.trainable_variables]
    model.fit(make_dataset(enc, plan, epochs=1), epochs=1, steps_per_epoch=3, verbose=0)
    features = next(iter(make_dataset(enc, plan, epochs=1)))[0]
    graph = tf.function(lambda x: model(x, training=True)).get_concrete_function(features).graph
    fake_quant = [op for op in graph.get_operations() if op.type == "FakeQuantWithMinMaxVars"]
    assert len(fake_quant) == 12 * 2 + 1  # input and output of every wrapped Dense; embeddings
    per_channel = [op for op in graph.get_operations() if op.type == "FakeQuantWithMinMaxVarsPerChannel"]
    assert len(per_channel) == 12  # every kernel, per output channel
    probs = [op for op in graph.get_operations() if op.type == "FakeQuantWithMinMaxArgs"]
    assert len(probs) == 2  # the attention probabilities of each of the 2 layers
    changed = {v.name: not np.allclose(a, v.numpy()) for a, v in zip(before, model.trainable_variables)}
    assert all(changed[n] for n in kernel_names)  # the kernels are trained through the fake quant
    ranges = qat.ranges(model.bert, ["attention", "feed_forward"])
    first = ranges["layer_0/attention/query"]
    assert first["input_seen"] == 3 and first["input_max"] != 6.0 and first["output_min"] != -6.0


def test_qat_ranges_are_measured_as_inference_sees_the_activations(tiny_checkpoint):
    """Dropout off and padding skipped: after one training step the first Dense's input range is
    exactly the min/max of the inference-mode embedding output over the real tokens."""
    from test_training import tiny_batches

    from tfllm.compression import qat
    from tfllm.data.pipeline import make_dataset
    from tfllm.models.classifier import build_classifier

    tf_keras.utils.set_random_seed(0)
    model, _ = build_classifier(ModelConfig(checkpoint=tiny_checkpoint), num_labels=2)  # dropout 0.1
    embeddings = model.bert.bert.embeddings
    spike = np.zeros(embeddings.weight.shape[1], np.float32)
    spike[0] = 100.0
    embeddings.weight[0].assign(spike)  # [PAD] (id 0) now stands out after the LayerNorm
    wrapped = qat.wrap(model, ["attention", "feed_forward"])
    assert not [d for d in model.bert.submodules if isinstance(d, tf_keras.layers.Dropout) and d.rate > 0]
    enc, plan = tiny_batches(tiny_checkpoint)
    features = next(iter(make_dataset(enc, plan, epochs=1)))[0]
    real = features["attention_mask"].numpy().astype(bool)
    assert not real.all()  # the batch has padding
    wrapped(features, training=True)

    hidden = embeddings(input_ids=features["input_ids"], token_type_ids=features["token_type_ids"],
                        training=False).numpy()
    first = qat.ranges(model.bert, ["attention"])["layer_0/attention/query"]
    assert first["input_seen"] == 1
    np.testing.assert_allclose([first["input_min"], first["input_max"]],
                               [min(hidden[real].min(), 0.0), max(hidden[real].max(), 0.0)], rtol=1e-5)
    assert hidden[~real].max() > first["input_max"] + 1.0  # the padding really was left out


def test_qat_keeps_dropout_when_the_config_asks(tiny_checkpoint):
    from tfllm.compression import qat
    from tfllm.models.classifier import build_classifier

    model, _ = build_classifier(ModelConfig(checkpoint=tiny_checkpoint), num_labels=2)
    qat.wrap(model, ["attention", "feed_forward"], dropout=True)
    rates = [d.rate for d in model.bert.submodules if isinstance(d, tf_keras.layers.Dropout)]
    assert rates and all(r == 0.1 for r in rates)


def test_qat_phase_strips_wrappers_and_exports_int8(tiny_checkpoint, files, tmp_path):
    train, dev = files
    cfg = load_config(None, tiny_overrides(tiny_checkpoint, train, dev, tmp_path / "qat",
                                           "compression.qat.enabled=true",
                                           "compression.int8.calibration_examples=16"))
    run_dir = run_training(cfg)
    assert not [n for n in h5_weight_names(run_dir / "model" / "tf_model.h5")
                if "quant" in n or n.endswith(("_min:0", "_max:0"))]
    ranges = json.loads((run_dir / "compression.json").read_text())["qat"]["ranges"]
    assert len(ranges) == 12 and ranges["layer_1/output"]["output_seen"] in (8, 16)  # best dev step

    from transformers import TFBertForSequenceClassification

    from tfllm.compression import qat
    from tfllm.export.tflite import export_tflite
    from tfllm.inference import Predictor

    hf = TFBertForSequenceClassification.from_pretrained(str(run_dir / "model"))
    assert not qat.wrappers(hf)
    path = export_tflite(run_dir, "qat")
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    ops = {d["op_name"] for d in interpreter._get_ops_details()}
    assert "FAKE_QUANT" not in ops  # folded into int8 tensors
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    # every encoder Dense (2 layers x 6) runs int8 x int8 as a 1x1 CONV_2D whose filter is stored
    # as int8 with one scale per output channel
    convs = [op for op in interpreter._get_ops_details() if op["op_name"] == "CONV_2D"]
    int8_convs = [op for op in convs if tensors[op["inputs"][0]]["dtype"] == np.int8
                  and tensors[op["inputs"][1]]["dtype"] == np.int8
                  and len(tensors[op["inputs"][1]]["quantization_parameters"]["scales"])
                  == tensors[op["inputs"][1]]["shape"][0] > 1]
    assert len(int8_convs) == 12, [(tensors[op["inputs"][1]]["name"], tensors[op["inputs"][1]]["dtype"])
                                   for op in convs]
    # and the word-embedding table is stored as int8 too (fake-quantised at export)
    gathers = [tensors[op["inputs"][0]] for op in interpreter._get_ops_details() if op["op_name"] == "GATHER"]
    assert any(t["dtype"] == np.int8 and t["shape"][0] >= 30000 for t in gathers), gathers
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["quantize"] == "qat" and meta["input_dtypes"]["input_ids"] == "int32"

    runner = Predictor.load(path)

    texts = [line.split("\t")[0] for line in dev.read_text().splitlines()[1:]]
    keras = Predictor.load(run_dir).logits(texts)
    lite = runner.logits(texts)
    assert np.mean(lite.argmax(-1) == keras.argmax(-1)) >= 0.95
