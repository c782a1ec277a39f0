"""Export of a tiny fine-tuned run: every TFLite variant in LiteRT, the raw-string SavedModel,
``tfllm.evaluate`` on a .tflite, ``tfllm.compare``, and one-line errors for bad input."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT, SHARED_DATA, main_in_process, sentiment_rows, write_tsv
from tfllm.config import load_config
from tfllm.errors import TfllmError

SST2 = SHARED_DATA / "sst2"


@pytest.fixture(scope="module")
def run(tiny_checkpoint, tmp_path_factory):
    """A tiny BERT fine-tuned on 400 SST-2 phrases (the built-in sentences if SST-2 is absent)."""
    from tfllm.train import run_training

    root = tmp_path_factory.mktemp("export")
    if SST2.is_dir():
        config = ROOT / "configs" / "sst2_minilm.yaml"
        data = [f"data.train_file={SST2}/train.tsv", f"data.dev_file={SST2}/dev.tsv",
                "data.max_train_examples=400", "data.max_dev_examples=100"]
    else:
        config = None
        data = [f"data.train_file={write_tsv(root / 'train.tsv', sentiment_rows(4))}",
                f"data.dev_file={write_tsv(root / 'dev.tsv', sentiment_rows(1))}"]
    cfg = load_config(config, [*data, f"model.checkpoint={tiny_checkpoint}", f"output_dir={root / 'run'}",
                               "train.epochs=3", "train.batch_size=16", "train.learning_rate=2e-3",
                               "train.eval_every=null", "train.warmup_ratio=0", "data.max_length=48",
                               "compression.int8.calibration_examples=32"])
    return run_training(cfg)


@pytest.fixture(scope="module")
def sample(run):
    """Real texts (SST-2 dev phrases or the built-in sentences) and the Keras model's logits."""
    from tfllm.data.splits import load_labelled_splits
    from tfllm.inference import Predictor

    cfg = load_config(run / "config.yaml")
    dev = load_labelled_splits(cfg.data, cfg.train.seed).dev
    texts = dev.texts[:100]
    return texts, Predictor.load(run).logits(texts)


def agree_up_to_ties(keras, lite, margin):
    """Argmax agreement on the examples whose Keras logits are not within ``margin`` of a tie."""
    top2 = np.sort(keras, axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > margin
    return np.mean(keras[clear].argmax(-1) == lite[clear].argmax(-1)), clear.sum()


def test_every_tflite_variant_runs_in_litert_and_agrees_with_keras(run, sample):
    from tfllm.export import export
    from tfllm.inference import Predictor

    texts, keras = sample
    paths = export(run, "tflite", "all")
    assert [p.name for p in paths] == ["model.tflite", "model_dynamic.tflite", "model_float16.tflite",
                                       "model_int8.tflite"]  # no qat: the run had no QAT phase
    for name in ("vocab.txt", "tokenizer_config.json"):
        assert (run / "export" / name).is_file()
    sizes = {}
    for path in paths:
        meta = json.loads(path.with_suffix(".json").read_text())
        assert meta["max_length"] == 48 and meta["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
        assert meta["labels"] == ["0", "1"] or meta["labels"] == ["neg", "pos"]
        assert set(meta["input_dtypes"].values()) == {"int32"} and meta["output_dtype"] == "float32"
        predictor = Predictor.load(path)
        assert predictor.precision == "as exported"  # what the service's model_info metric shows
        assert meta["input_shape"] == [-1, -1] and predictor.backend.batched
        allocations, allocate = [], predictor.backend.interpreter.allocate_tensors
        predictor.backend.interpreter.allocate_tensors = lambda: allocations.append(1) or allocate()
        lite = predictor.logits(texts, batch_size=1)  # each text alone at its own length, as on a phone
        # shortest first: the interpreter re-allocates once per distinct length, not per text
        assert len(allocations) == len(set(predictor.task.encode(predictor.tokenizer, texts).lengths))
        # several texts per invoke, padded to the group's longest: one allocation per group
        allocations.clear()
        predictor.backend.batch_texts = True
        batched = predictor.logits(texts, batch_size=16)
        assert len(allocations) == 7  # 100 texts in groups of 16
        mode = meta["quantize"]
        if mode == "none":  # the shortest text padded to the longest's length: masked, no effect
            short_long = [texts[i] for i in np.argsort([len(t) for t in texts])[[0, -1]]]
            np.testing.assert_allclose(predictor.logits(short_long, batch_size=2),
                                       predictor.logits(short_long, batch_size=1), atol=1e-6)
        if mode in ("none", "float16"):
            np.testing.assert_allclose(batched, lite, atol=1e-5 if mode == "none" else 2e-2)
        else:  # int8 activation ranges are shared across a batch: close, same answers
            assert np.mean(batched.argmax(-1) == lite.argmax(-1)) >= 0.97, mode
            assert np.abs(batched - lite).max() < 0.5, mode
        sizes[mode] = path.stat().st_size
        agreement = np.mean(lite.argmax(-1) == keras.argmax(-1))
        assert agreement >= 0.95, (mode, agreement)
        if mode == "none":
            np.testing.assert_allclose(lite, keras, atol=1e-4)
        if mode in ("none", "float16"):
            exact, n = agree_up_to_ties(keras, lite, 1e-4 if mode == "none" else 2e-2)
            assert exact == 1.0 and n >= 50, (mode, exact, n)
    assert sizes["int8"] < 0.4 * sizes["none"] and sizes["float16"] < 0.6 * sizes["none"]


def op_output_dtypes(interpreter) -> dict:
    """``{TFLite op name: set of its output tensors' dtypes}`` over the whole model."""
    tensors = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    out = {}
    for op in interpreter._get_ops_details():
        out.setdefault(op["op_name"], set()).update(tensors[i] for i in op["outputs"] if i in tensors)
    return out


@pytest.mark.parametrize("float_ops", [["layer_norm", "elementwise", "position_embeddings"], []],
                         ids=["default", "full_integer"])
def test_int8_float_ops_and_output_type_follow_the_config(run, sample, tmp_path, float_ops):
    from tfllm.export.tflite import export_tflite
    from tfllm.inference import Predictor

    texts, keras = sample
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export", "checkpoints", "tensorboard"))
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["compression"]["int8"].update(output_type="int8", float_ops=float_ops)
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    path = export_tflite(copy, "int8")

    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    assert {d["dtype"] for d in interpreter.get_input_details()} == {np.int32}
    assert [d["dtype"] for d in interpreter.get_output_details()] == [np.int8]
    dtypes = op_output_dtypes(interpreter)
    assert dtypes["FULLY_CONNECTED"] == {np.int8}
    # LayerNorm's mean / variance / rsqrt: float32 when kept float, int8 in a full-integer model
    expected = {np.float32} if float_ops else {np.int8}
    for op in ("MEAN", "SQUARED_DIFFERENCE", "RSQRT", "ADD", "MUL"):
        assert dtypes[op] == expected, (op, dtypes[op])
    # embedding tables: the word table int8 always; position and token-type tables float when kept
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    tables = {int(tensors[op["inputs"][0]]["shape"][0]): tensors[op["inputs"][0]]["dtype"]
              for op in interpreter._get_ops_details() if op["op_name"] == "GATHER"
              and len(tensors[op["inputs"][0]]["shape"]) == 2}
    assert tables.pop(30522) == np.int8
    assert set(tables.values()) == expected and len(tables) == 2, tables  # 128 positions, 2 types
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["output_dtype"] == "int8" and meta["output_quantization"]["scale"] > 0
    assert meta["float_ops"] == float_ops
    lite = Predictor.load(path).logits(texts)  # dequantized
    assert np.mean(lite.argmax(-1) == keras.argmax(-1)) >= 0.95


def test_saved_model_takes_raw_strings(run, sample):
    import tensorflow as tf

    from tfllm.export import export
    from tfllm.models.classifier import softmax

    texts, keras = sample
    path, ids = export(run, "saved_model")
    assert path == run / "export" / "saved_model" / "1" and (path / "saved_model.pb").is_file()
    assert ids == run / "export" / "saved_model_ids" / "1" and (ids / "saved_model.pb").is_file()
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    out = serve(text=tf.constant(texts))
    np.testing.assert_allclose(out["probabilities"].numpy(), softmax(keras), atol=1e-4)
    labels = json.loads((run / "label_map.json").read_text())["labels"]
    assert [x.decode() for x in out["label"].numpy()] == [labels[i] for i in keras.argmax(-1)]
    cli = shutil.which("saved_model_cli", path=str(Path(sys.executable).parent))
    if cli:
        shown = subprocess.run([cli, "show", "--dir", str(path), "--all"], capture_output=True, text=True,
                               timeout=120)
        assert shown.returncode == 0, shown.stderr[-2000:]
        assert "serving_default" in shown.stdout and "probabilities" in shown.stdout
        assert "DT_STRING" in shown.stdout


def test_token_id_saved_model_runs_in_plain_tensorflow(run, sample, tmp_path):
    """``saved_model_cli run`` on the token-id SavedModel, in a process that never imports
    tensorflow_text (stock TF Serving images lack its newer ops), gives Keras' logits."""
    from tfllm.data.tokenization import load_tokenizer
    from tfllm.export import export

    texts, keras = sample
    _, ids = export(run, "saved_model")
    encoded = load_tokenizer(run / "model")(texts[0], truncation=True, max_length=48)
    exprs = ";".join(f"{name}=[{list(encoded[name])}]" for name in ("input_ids", "attention_mask", "token_type_ids"))
    program = ("import sys; from tensorflow.python.tools import saved_model_cli; sys.argv = ['saved_model_cli'] + "
               "sys.argv[1:]; saved_model_cli.main(); assert 'tensorflow_text' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", program, "run", "--dir", str(ids), "--tag_set", "serve",
                           "--signature_def", "serving_default", "--input_exprs", exprs,
                           "--outdir", str(tmp_path), "--overwrite"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    logits = np.load(tmp_path / "logits.npy")
    np.testing.assert_allclose(logits[0], keras[0], atol=1e-4)


def test_evaluate_cli_runs_an_exported_model(run, tmp_path, capsys, monkeypatch):
    from tfllm.export.tflite import export_tflite

    path = run / "export" / "model_dynamic.tflite"
    if not path.is_file():
        export_tflite(run, "dynamic")
    cfg = load_config(run / "config.yaml")
    data = cfg.data.dev_file
    done = main_in_process("evaluate", [path, "--data", data, "--out", tmp_path / "eval"], capsys, monkeypatch)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "accuracy=" in done.stdout
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["examples"] >= 100 and 0 <= metrics["accuracy"] <= 1


def test_compare_prints_and_saves_every_variant(run, capsys):
    from tfllm.compare import main

    main([str(run), "--max-examples", "40", "--latency-examples", "5"])
    out = capsys.readouterr().out
    report = json.loads((run / "export" / "report.json").read_text())
    variants = [r["variant"] for r in report["rows"]]
    assert variants == ["keras_fp32", "tflite_fp32", "tflite_dynamic", "tflite_float16", "tflite_int8"]
    for row in report["rows"]:
        assert row["size_bytes"] > row["gzip_bytes"] > 0 and row["latency_p95_ms"] >= row["latency_p50_ms"] > 0
        assert row["agreement"] >= 0.95 and 0 <= row["accuracy"] <= 1
    assert report["rows"][0]["agreement"] == 1.0
    assert "keras_fp32" in out and "tflite_int8" in out
    assert (run / "export" / "report.md").read_text().count("\n") == 7


def one_line_error(capsys, argv, main=None):
    from tfllm.export import main as export_main

    with pytest.raises(SystemExit) as exit_info:
        (main or export_main)(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_bad_input_fails_with_one_line(run, tmp_path, capsys):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert "no model/" in one_line_error(capsys, [str(empty)])
    assert "not found" in one_line_error(capsys, [str(tmp_path / "missing")])
    assert "unknown --format 'onnx'" in one_line_error(capsys, [str(run), "--format", "onnx"])
    assert "did you mean int8" in one_line_error(capsys, [str(run), "--quantize", "int9"])
    assert "compression.qat" in one_line_error(capsys, [str(run), "--quantize", "qat"])

    nodata = tmp_path / "nodata"
    shutil.copytree(run, nodata, ignore=shutil.ignore_patterns("export", "checkpoints", "tensorboard"))
    config = yaml.safe_load((nodata / "config.yaml").read_text())
    config["data"]["train_file"] = str(tmp_path / "gone.tsv")
    (nodata / "config.yaml").write_text(yaml.safe_dump(config))
    err = one_line_error(capsys, [str(nodata), "--quantize", "int8"])
    assert "calibration data" in err and "--calibration-data" in err

    from tfllm.export.tflite import export_tflite
    from tfllm.inference import Predictor

    path = run / "export" / "model.tflite"
    if not path.is_file():
        export_tflite(run, "none")
    runner = Predictor.load(path)
    too_long = {name: np.ones((1, 49), np.int32) for name in ("input_ids", "attention_mask", "token_type_ids")}
    with pytest.raises(TfllmError, match="49 tokens is longer than the exported max length 48"):
        runner.backend.run(too_long)
    assert runner.logits(["word " * 200]).shape == (1, 2)  # texts are truncated like in training


def test_compare_reuses_current_exports_and_redoes_stale_ones(run, tmp_path):
    from tfllm.compare import export_is_current
    from tfllm.export.tflite import export_tflite

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export", "checkpoints", "tensorboard"))
    cfg = load_config(copy / "config.yaml")
    path = export_tflite(copy, "int8")
    assert export_is_current(path, copy, cfg, "int8")
    # the same run asked for full-integer int8: the LayerNorm-float export no longer matches
    full = load_config(copy / "config.yaml", ["compression.int8.float_ops=[]"])
    assert not export_is_current(path, copy, full, "int8")
    (copy / "model" / "tf_model.h5").touch()  # a retrained model makes every export stale
    assert not export_is_current(path, copy, cfg, "int8")


def test_a_kill_during_export_damages_nothing_and_a_mismatched_file_is_refused(run, tmp_path):
    """kill -9 between writing an export's model file and its metadata: the run and the previous
    export still load, and a model file that is not the one its metadata names is refused."""
    import hashlib
    import os
    import signal

    from tfllm.export.tflite import export_tflite
    from tfllm.inference import Predictor

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export", "checkpoints", "tensorboard"))
    path = export_tflite(copy, "float16")
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (copy / "model").iterdir()}
    killed = subprocess.run([sys.executable, "-m", "tfllm.export", str(copy), "--quantize", "float16"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TFLLM_KILL_AT": f"file_written/{path.with_suffix('.json').name}"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (copy / "model").iterdir()} == before
    text = ["a fine film"]
    keras = Predictor.load(copy).logits(text)
    try:  # the new model file beside the old metadata: usable only if the bytes came out the same
        Predictor.load(path)
    except TfllmError as e:
        assert "does not match its metadata" in str(e) and "export it again" in str(e)
    export_tflite(copy, "float16")  # exporting again repairs it and clears the killed export's leftovers
    np.testing.assert_allclose(Predictor.load(path).logits(text), keras, atol=5e-2)
    assert not list((copy / "export").glob(".*.tmp"))

    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(TfllmError, match="does not match its metadata .*export it again"):
        Predictor.load(path)
