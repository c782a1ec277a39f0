"""Evaluate a trained run on labelled data: ``python -m tfllm.evaluate RUN_DIR --data FILE``.

``RUN_DIR`` may also be an exported ``.tflite`` model (``RUN_DIR/export/model.tflite``): it then
runs in the LiteRT interpreter, one text at a time, with the metadata and tokenizer beside it.

Prints accuracy, macro-F1 and scikit-learn's classification report, and writes
``predictions.csv``, ``metrics.json``, ``classification_report.txt`` and ``confusion_matrix.png``
to ``RUN_DIR/eval/<data name>/`` (or ``--out``).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tfllm import io
from tfllm.cli import main_guard, parse_command_line, setup_logging
from tfllm.errors import TfllmError


def classification_metrics(logits: np.ndarray, labels: np.ndarray, label_names: Sequence[str]) -> dict:
    """Accuracy, macro-F1, cross-entropy, the confusion matrix and the text report."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

    from tfllm.models.classifier import softmax

    predicted = logits.argmax(-1)
    ids = list(range(len(label_names)))
    probabilities = softmax(logits)
    loss = float(-np.mean(np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1))))
    return {
        "examples": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, labels=ids, average="macro", zero_division=0)),
        "loss": loss,
        "confusion_matrix": confusion_matrix(labels, predicted, labels=ids).tolist(),
        "report": classification_report(labels, predicted, labels=ids, target_names=list(label_names),
                                        digits=4, zero_division=0),
    }


def write_evaluation(out_dir: Path, examples, logits: np.ndarray, labels: np.ndarray,
                     label_names: Sequence[str], extra: Optional[dict] = None) -> dict:
    """Write predictions, metrics, the report and the confusion-matrix PNG; return the metrics."""
    import pandas as pd

    from tfllm.models.classifier import softmax
    from tfllm.training.reporting import confusion_figure

    metrics = classification_metrics(logits, labels, label_names)
    out_dir.mkdir(parents=True, exist_ok=True)
    probabilities = softmax(logits)
    frame = pd.DataFrame({"text": examples.texts})
    if examples.pairs is not None:
        frame["text_pair"] = examples.pairs
    frame["label"] = [label_names[i] for i in labels]
    frame["predicted"] = [label_names[i] for i in logits.argmax(-1)]
    frame["confidence"] = probabilities.max(-1).round(6)
    for i, name in enumerate(label_names):
        frame[f"p_{name}"] = probabilities[:, i].round(6)
    io.write_text(out_dir / "predictions.csv", frame.to_csv(index=False))
    io.write_text(out_dir / "classification_report.txt", metrics["report"])
    io.write_json(out_dir / "metrics.json", {**{k: v for k, v in metrics.items() if k != "report"},
                                             **(extra or {})})
    tmp = out_dir / ".confusion_matrix.tmp.png"
    confusion_figure(np.asarray(metrics["confusion_matrix"]), label_names).savefig(tmp)
    tmp.replace(out_dir / "confusion_matrix.png")
    return metrics


def print_metrics(metrics: dict, title: str) -> None:
    print(f"\n{title}: accuracy={metrics['accuracy']:.4f} macro_f1={metrics['macro_f1']:.4f} "
          f"loss={metrics['loss']:.4f} ({metrics['examples']} examples)")
    print(metrics["report"])


@main_guard(memory_hint="lower --batch-size")
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tfllm.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a finished run directory, or an exported .tflite model")
    parser.add_argument("--data", required=True, help="labelled data file (csv/tsv/jsonl/json/parquet)")
    parser.add_argument("--text-column")
    parser.add_argument("--text-pair-column")
    parser.add_argument("--label-column")
    parser.add_argument("--format", default=None)
    parser.add_argument("--out", help="output directory (default RUN_DIR/eval/<data file stem>)")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per batch (64)")
    args = parse_command_line(parser, argv)
    if args.batch_size < 1:
        raise TfllmError(f"--batch-size must be at least 1, got {args.batch_size}")
    setup_logging()
    from tfllm.data.readers import read_examples
    from tfllm.predict import Classifier

    if args.run_dir.endswith(".tflite"):  # an exported model, run by the LiteRT interpreter
        from tfllm.export.tflite import TFLiteClassifier

        classifier = TFLiteClassifier.load(args.run_dir)
        default_out = Path(args.run_dir).parent / "eval" / Path(args.run_dir).stem / Path(args.data).stem
    else:
        classifier = Classifier.load(args.run_dir)
        default_out = Path(args.run_dir) / "eval" / Path(args.data).stem
    data_cfg = classifier.config.data
    examples = read_examples(args.data, args.text_column or data_cfg.text_column,
                             args.text_pair_column or data_cfg.text_pair_column,
                             args.label_column or data_cfg.label_column,
                             args.format or data_cfg.format, data_cfg.has_header, data_cfg.column_names)
    from tfllm.data.labels import LabelMap

    labels = LabelMap(tuple(classifier.label_names)).encode(examples.labels, args.data)
    logits = classifier.logits(examples.texts, examples.pairs, args.batch_size)
    out = Path(args.out) if args.out else default_out
    metrics = write_evaluation(out, examples, logits, labels, classifier.label_names,
                               extra={"data": args.data})
    print_metrics(metrics, f"{args.data}")
    print(f"wrote {out}/predictions.csv, metrics.json, classification_report.txt, confusion_matrix.png")


if __name__ == "__main__":
    main()
