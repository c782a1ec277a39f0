"""Where a fine-tuning step's time goes: parts of the step timed alone, and a profiler op table.

    python benchmarks/profile_train.py [--precision fp32|bf16] [--steps 30] [--examples 3200]

On the same SST-2 slice, batch size and bucketing as ``benchmarks/speed.py`` (packaged MiniLM-L6,
batch 32, max_length 66), the tfllm classifier's pieces are timed one at a time, each as its own
``tf.function`` over the same batches (median milliseconds per step after a warm-up):

* ``input``: the tf.data pipeline alone (next batch);
* ``forward``: the loss (training mode: dropout on);
* ``forward+backward``: loss and gradients (the word-embedding gradient sparse, as the Trainer);
* ``optimizer``: the update of every variable from fixed gradients, as the train step makes it
  (the fused AdamW's clip + update when the model uses it, else Keras' ``apply_gradients``);
* ``train step``: the Trainer's real train function (all of the above, clipping, metrics);
* ``host sync``: the train function plus reading the loss back every step, as the loop does.

Then TensorFlow's profiler traces a few real train steps and the trace's op events are summed by
op type: a per-op table of where the step's time goes. Prints Markdown; not a test.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402  (imports tfllm first: Keras 2)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

from tfllm.config import load_config  # noqa: E402
from tfllm.data.pipeline import make_dataset  # noqa: E402
from tfllm.tasks import task_for  # noqa: E402
from tfllm.training.strategy import seed_everything  # noqa: E402
from tfllm.training.trainer import Trainer  # noqa: E402

CONFIG = common.ROOT / "configs" / "sst2_minilm.yaml"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per piece")
    parser.add_argument("--examples", type=int, default=3200)
    parser.add_argument("--trace-steps", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    return parser.parse_args(argv)


def build(args):
    """The config, the task's data (bucketed train plan) and its model, as ``tfllm.train`` makes them."""
    policy = "none" if args.precision == "fp32" else "mixed_bfloat16"
    cfg = load_config(CONFIG, [f"train.mixed_precision={policy}", f"data.max_train_examples={args.examples}",
                               *args.overrides])
    task = task_for(cfg)
    data = task.load_data()
    seed_everything(cfg)
    model, _ = task.build_model(data)
    return cfg, data, model


def first_batches(data, cfg, count: int) -> list:
    """The train plan's first ``count`` batches (features, labels, weights), as tensors."""
    dataset = make_dataset(data.train.encoded, data.train.plan, multiple=cfg.padding_multiple,
                           map_fn=data.train.map_fn)
    return list(dataset.take(count))


def timed(fn, batches: list, sync) -> float:
    """Mean milliseconds per batch of ``sync(fn(batch))`` over ``batches``, after one warm-up pass."""
    for batch in batches:
        sync(fn(batch))
    start = time.perf_counter()
    for batch in batches:
        sync(fn(batch))
    return 1000 * (time.perf_counter() - start) / len(batches)


def op_table(logdir: str, steps: int, top: int = 25) -> str:
    """Sum the trace's op events by op type (the part of an event name after ':')."""
    totals, counts = collections.Counter(), collections.Counter()
    for path in Path(logdir).rglob("*.xplane.pb"):
        space = xplane_pb2.XSpace()
        space.ParseFromString(path.read_bytes())
        for plane in space.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            names = {k: m.name for k, m in plane.event_metadata.items()}
            for line in plane.lines:
                if "tf_Compute" not in line.name and "TFE" not in line.name and "Executor" not in line.name \
                        and "tf_" not in line.name:
                    continue
                for event in line.events:
                    name = names.get(event.metadata_id, "?")
                    if ":" not in name or name.endswith(":Process"):
                        continue
                    kind = name.rsplit(":", 1)[1]
                    totals[kind] += event.duration_ps / 1e9  # ms
                    counts[kind] += 1
    grand = sum(totals.values()) or 1.0
    rows = [(kind, f"{ms / steps:.2f}", f"{100 * ms / grand:.1f}%", counts[kind] // steps)
            for kind, ms in totals.most_common(top)]
    return common.markdown_table(["op type", "ms per step (summed over threads)", "share", "calls per step"], rows)


def pieces(cfg, data, model, steps: int) -> list[tuple[str, float]]:
    """Each part of the step as its own tf.function, timed alone (ms per step)."""
    trainer = Trainer(model, cfg.train, Path(tempfile.mkdtemp()), tf.distribute.get_strategy())
    batches = first_batches(data, cfg, steps)
    trainer.compile(1000, batches[0][0])
    variables = model.trainable_variables
    wait = lambda out: tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)  # noqa

    @tf.function
    def forward(batch):
        x, y, w = batch
        per_example, _ = model.per_example_loss(x, y, training=True)
        return tf.reduce_sum(tf.cast(per_example, tf.float32) * w)

    @tf.function
    def forward_backward(batch):
        x, y, w = batch
        loss, grads = model._loss_and_grads(x, y, w)
        return loss, tf.add_n([tf.reduce_sum(tf.cast(g.values if isinstance(g, tf.IndexedSlices) else g,
                                                     tf.float32)) for g in grads])

    fixed = [tf.fill(v.shape, tf.constant(1e-6, v.dtype)) for v in variables]

    @tf.function
    def optimizer_only(batch):
        if model._fused_update():
            model.optimizer.apply_clipped(fixed, variables, model.max_grad_norm)
        else:
            model.optimizer.apply_gradients(zip(fixed, variables), skip_gradients_aggregation=True)
        return model.optimizer.iterations

    @tf.function
    def input_only(batch):
        return batch[1]

    train_function = model.make_train_function()
    iterator = iter(tf.data.Dataset.from_tensor_slices(tf.range(len(batches))).repeat().map(
        lambda i: tf.switch_case(i, [lambda b=b: b for b in batches])))  # noqa (never traced per call)

    def train_step(batch):  # the Keras train function pulls its batch from an iterator: the same order
        return train_function(iterator)

    results = []
    for name, fn, sync in [("input (next batch)", input_only, wait), ("forward", forward, wait),
                           ("forward+backward", forward_backward, wait), ("optimizer (clip + AdamW, all variables)",
                                                                          optimizer_only, wait),
                           ("train step (Trainer's train function)", train_step, wait)]:
        results.append((name, timed(fn, batches, sync)))
    return results, train_function, iterator, batches


def trace(train_function, iterator, steps: int) -> str:
    logdir = tempfile.mkdtemp(prefix="tfllm-profile-")
    tf.profiler.experimental.start(logdir)
    for _ in range(steps):
        float(train_function(iterator)["loss"])
    tf.profiler.experimental.stop()
    return logdir


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg, data, model = build(args)
    print(common.machine_line(common.machine_info()))
    print(f"precision {args.precision}, batch {cfg.train.batch_size}, {args.examples} SST-2 examples, "
          f"bucketing {cfg.data.bucketing}, threads inter {tf.config.threading.get_inter_op_parallelism_threads()} "
          f"intra {tf.config.threading.get_intra_op_parallelism_threads()}")
    results, train_function, iterator, batches = pieces(cfg, data, model, args.steps)
    lengths = [int(b[0]["input_ids"].shape[1]) for b in batches]
    print(f"{len(batches)} batches, padded lengths {min(lengths)}-{max(lengths)}, mean {np.mean(lengths):.1f}")
    print(common.markdown_table(["piece", "median ms per step"], [(n, f"{ms:.1f}") for n, ms in results]))
    logdir = trace(train_function, iterator, args.trace_steps)
    print()
    print(op_table(logdir, args.trace_steps))


if __name__ == "__main__":
    main()
