"""Dynamic batching for one model: a bounded queue of requests and one asyncio task that turns
them into forward passes.

The batcher waits for a request, then up to ``max_latency`` more for others, until the waiting
texts reach ``max_batch_size``; it runs :meth:`Predictor.predict_encoded` on all of them at once
in its own worker thread and hands each request its rows. The Predictor sorts the batch by length
and runs it as forward passes of at most ``forward_batch_size`` texts, each padded to its own
longest text (``benchmarks/batch_gain.py`` compares the policies for the model alone).
While a batch runs, the next one gathers, so under load batches fill up without waiting; with
``batch_threads`` > 1 (TF Serving's ``num_batch_threads``) that many batches run at once, each in
its own worker thread (a small batch leaves part of the cores idle). A
request is never split: one bigger than ``max_batch_size`` runs alone, so ``max_batch_size=1``
turns batching off (one request, one forward pass).

    >>> batcher = Batcher("sst2", predictor, metrics, max_batch_size=32, max_latency_s=0.005,
    ...                   max_queue=256, timeout_s=10, forward_batch_size=16)
    >>> batcher.start()
    >>> rows = await batcher.submit(["a warm film"], None)

A full queue raises :class:`QueueFull` (503), a request not answered within ``timeout_s``
:class:`Timeout` (504; it is dropped from the queue if it has not started), a stopping batcher
:class:`Stopped`. :meth:`stop` answers every queued request before it returns. A batch whose
prediction fails is retried request by request, so its error (500) reaches only the request that
causes it, not the others batched with it.

``TFLLM_SERVE_DELAY_MS`` (tests only, like ``TFLLM_KILL_AT``) sleeps that long before each
forward pass, so a test can catch a request in flight.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

from tfllm.data.tokenization import Encoded
from tfllm.inference import Predictor
from tfllm.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)
WARM_UP_TEXT = "warm up"
LABEL_TASKS = ("classification", "multi_label")


class QueueFull(Exception):
    """The model's queue holds ``max_queue`` requests already."""


class Timeout(Exception):
    """No answer within ``timeout_s``."""


class Stopped(Exception):
    """The batcher is shutting down and takes no new requests."""


@dataclass(eq=False)
class Pending:
    """One request in the queue: its texts, the future its rows go to, when it arrived."""
    texts: list
    pairs: Optional[list]
    future: asyncio.Future
    arrived: float
    abandoned: bool = field(default=False)


class Batcher:
    """The queue and batching task of one model (see the module docstring)."""

    def __init__(self, name: str, predictor: Predictor, metrics: ServeMetrics, max_batch_size: int,
                 max_latency_s: float, max_queue: int, timeout_s: float, forward_batch_size: int = 16,
                 batch_threads: int = 1):
        self.name, self.predictor, self.metrics = name, predictor, metrics
        self.max_batch_size, self.max_latency_s = max_batch_size, max_latency_s
        self.forward_batch_size = min(forward_batch_size, max_batch_size)
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self.pending: deque[Pending] = deque()
        self.wakeup = asyncio.Event()
        self.stopping = False
        self.task: Optional[asyncio.Task] = None
        self.batch_threads = batch_threads  # batches running at once, each in its own worker thread
        self.executor = ThreadPoolExecutor(batch_threads, thread_name_prefix=f"tfllm-serve-{name}")
        self.delay_s = float(os.environ.get("TFLLM_SERVE_DELAY_MS") or 0) / 1000
        metrics.queue_capacity.labels(name).set(max_queue)
        metrics.queue_depth.labels(name).set(0)

    # --- lifecycle ---------------------------------------------------------------------------
    async def warm_up(self, every_shape: bool = False) -> None:
        """One dummy batch of ``max_batch_size`` texts through the model (first-call costs), and
        with ``every_shape`` a dummy forward pass of every shape a batch can run as."""
        texts = [WARM_UP_TEXT] * self.max_batch_size
        pairs = texts if self.predictor.pair_task else None
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, lambda: self.predictor.predict_encoded(texts, pairs,
                                                                                          self.forward_batch_size))
        if every_shape:
            start = time.perf_counter()
            count = await loop.run_in_executor(self.executor, self.predictor.warm_up_shapes, self.forward_batch_size)
            log.info("model %s: warmed up %d forward-pass shapes in %.1f s", self.name, count,
                     time.perf_counter() - start)

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Take no new requests, answer the queued ones, then end the task and the worker thread."""
        self.stopping = True
        self.wakeup.set()
        if self.task is not None:
            await self.task
        self.executor.shutdown(wait=False)

    # --- requests ----------------------------------------------------------------------------
    async def submit(self, texts: list, pairs: Optional[list]) -> list[dict]:
        """The rows for ``texts`` once their batch has run."""
        if self.stopping:
            raise Stopped()
        if len(self.pending) >= self.max_queue:
            raise QueueFull()
        loop = asyncio.get_running_loop()
        request = Pending(list(texts), None if pairs is None else list(pairs), loop.create_future(), loop.time())
        self.pending.append(request)
        self.metrics.queue_depth.labels(self.name).set(len(self.pending))
        self.wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(request.future), self.timeout_s)
        except asyncio.TimeoutError:
            request.abandoned = True
            raise Timeout() from None
        except asyncio.CancelledError:  # the client went away
            request.abandoned = True
            raise

    # --- the batching task -------------------------------------------------------------------
    async def run(self) -> None:
        """Collect a batch whenever one of the ``batch_threads`` is free and run it there; when
        stopping, wait for the batches still running."""
        free = asyncio.Semaphore(self.batch_threads)
        running: set[asyncio.Task] = set()
        while True:
            await free.acquire()
            batch = await self.collect()
            if not batch:
                free.release()
                if batch is None:
                    break
                continue
            task = asyncio.create_task(self.execute(batch))
            running.add(task)
            task.add_done_callback(lambda done: (running.discard(done), free.release()))
        if running:
            await asyncio.gather(*running)

    async def collect(self) -> Optional[list[Pending]]:
        """The next batch: wait for a first request, then for more until the batch is full or
        ``max_latency_s`` after the first arrived (no waiting when stopping). None: stopped, empty."""
        loop = asyncio.get_running_loop()
        while not self.pending:
            if self.stopping:
                return None
            self.wakeup.clear()
            await self.wakeup.wait()
        deadline = self.pending[0].arrived + self.max_latency_s
        while self.queued_texts() < self.max_batch_size and not self.stopping:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return self.take()

    def queued_texts(self) -> int:
        return sum(len(p.texts) for p in self.pending if not p.abandoned)

    def take(self) -> list[Pending]:
        """Requests from the head of the queue up to ``max_batch_size`` texts (at least one)."""
        batch, size = [], 0
        while self.pending:
            head = self.pending[0]
            if not head.abandoned and batch and size + len(head.texts) > self.max_batch_size:
                break
            self.pending.popleft()
            if not head.abandoned:
                batch.append(head)
                size += len(head.texts)
        self.metrics.queue_depth.labels(self.name).set(len(self.pending))
        return batch

    async def execute(self, batch: list[Pending]) -> None:
        """One Predictor call for the whole batch; each request gets its rows. If it fails, each
        request runs alone, so a failure (500) reaches only the requests that cause it."""
        loop = asyncio.get_running_loop()
        for request in batch:
            self.metrics.queue_wait.labels(self.name).observe(loop.time() - request.arrived)
        if not await self.answer(batch, last_try=len(batch) == 1):
            log.warning("model %s: a batch of %d requests failed; running them one by one", self.name, len(batch))
            for request in batch:
                if not request.abandoned:
                    await self.answer([request], last_try=True)

    async def answer(self, batch: list[Pending], last_try: bool) -> bool:
        """Run ``batch`` and hand each request its rows. If the prediction fails: on the last try
        each request gets the error, else nothing happens and this returns False."""
        texts = [t for request in batch for t in request.texts]
        pairs = None if batch[0].pairs is None else [p for request in batch for p in request.pairs]
        try:
            rows, seconds, truncated = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.predict, texts, pairs)
        except Exception as error:  # noqa: BLE001 - the waiting request gets it (500)
            if not last_try:
                return False
            log.exception("model %s: prediction failed", self.name)
            for request in batch:
                if not request.future.done() and not request.abandoned:
                    request.future.set_exception(error)
            return True
        self.record(len(texts), seconds, truncated, rows)
        start = 0
        for request in batch:
            if not request.future.done():
                request.future.set_result(rows[start:start + len(request.texts)])
            start += len(request.texts)
        return True

    def predict(self, texts: list, pairs: Optional[list]) -> tuple[list[dict], float, int]:
        """In the worker thread: the rows, the seconds its forward passes took, and how many texts were
        longer than the model's ``max_length`` tokens."""
        if self.delay_s:
            time.sleep(self.delay_s)
        start = time.perf_counter()
        rows, encoded = self.predictor.predict_encoded(texts, pairs, batch_size=self.forward_batch_size)
        seconds = time.perf_counter() - start
        p = self.predictor
        return rows, seconds, count_truncated(p.tokenizer, p.task.cfg.data.max_length, texts, pairs, encoded)

    def record(self, size: int, seconds: float, truncated: int, rows: list[dict]) -> None:
        m, name = self.metrics, self.name
        m.inference.labels(name).observe(seconds)
        m.batch_size.labels(name).observe(size)
        m.texts.labels(name).inc(size)
        if truncated:
            m.truncated.labels(name).inc(truncated)
        if self.predictor.task.name in LABEL_TASKS:
            for row in rows:
                for label in row_labels(row):
                    m.predictions.labels(name, label).inc()


def row_labels(row: dict) -> list[str]:
    """The predicted label(s) of a classification or multi-label row."""
    return [row["label"]] if "label" in row else list(row.get("labels", []))


def count_truncated(tokenizer, max_length: int, texts: list, pairs: Optional[list],
                    encoded: Optional[Encoded] = None) -> int:
    """Texts (with their pairs) longer than ``max_length`` tokens. With ``encoded``, the model's
    truncated encoding of the same texts (one example per text), only the texts it cut to exactly
    ``max_length`` tokens are tokenized again: the others were shorter, so not truncated."""
    candidates = range(len(texts))
    if encoded is not None and len(encoded) == len(texts):
        candidates = [i for i, ids in enumerate(encoded.input_ids) if len(ids) >= max_length]
    if not candidates:
        return 0
    again = tokenizer([texts[i] for i in candidates], None if pairs is None else [pairs[i] for i in candidates],
                      add_special_tokens=True, truncation=False, return_attention_mask=False,
                      return_token_type_ids=False)
    return sum(len(ids) > max_length for ids in again["input_ids"])
