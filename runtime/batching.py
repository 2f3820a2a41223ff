"""Rows in, rows out: padding a batch of rows for a backend, and dynamic micro-batching.

A *row* is one example for an ids-level function (runtime/backends.py): input name ->
unpadded array (`[L]` ids / mask, `[L, H]` states). `run_rows` pads rows to the longest
in the batch, runs the backend once and cuts the outputs back into rows (sequence outputs
trimmed to each row's own length, so a row's result does not depend on its batch mates).

    batcher = MicroBatcher(backend, max_batch=32, max_wait_ms=5, max_batch_tokens=256)
    future = batcher.submit("predict_ids", rows)    # concurrent.futures.Future -> list of row outputs
    rows_out = await asyncio.wrap_future(future)    # from the event loop; cancel() drops queued rows

One worker thread owns the backend: it takes the least-served request (fewest rows run so
far, the oldest among equals), then keeps adding rows of requests for the same function,
least-served first, until the batch is full or `max_wait_ms` have passed, runs them as one
batch and hands every request its own rows, in its order. A request's rows go into batches
shortest first (`by_length`, as `run_in_batches` sorts them for the command-line tasks), so a
request of mixed lengths split over batches has each batch padded to its own longest row, not
every batch to the request's longest. A batch is full at `max_batch` rows or when the
next row would take it over `max_batch_tokens` tokens, counted as rows x padded length (the
sum of the padded lengths of the function's masks: two texts for a siamese pair); a row
longer than that runs alone, and 0 counts rows only. On a CPU an encoder batch's cost is
about its tokens, so the budget bounds how long any batch runs (functions that do not run
the encoder, VIRT's `score`, are batched by rows only). A request that does not fit in one
batch is split over batches, and requests that arrive meanwhile go into the next batch
rather than after all of its rows: a client sending 256 rows of 64 tokens delays another's
one-row request by about two batches of `max_batch_tokens` (the one running, then its own),
not by two batches of 32 long rows. A failing batch fails only the requests in it; the
worker carries on with the next one.

A `Block` is a row that is already a batch (input name -> padded array, e.g. one query's
states against its K reranked candidates): it runs as one call on its own, never padded
or merged with other rows, and its output is the backend's output dict.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError

import numpy as np

from runtime.rows import pad_rows
from runtime.logs import LIMITED
from runtime.progress import progress_bar

log = logging.getLogger(__name__)

ID_INPUTS = ("input_ids", "x_ids", "y_ids")


class Block(dict):
    """A row that is a whole batch: input name -> padded array; runs alone (see the module doc)."""


def run_rows(backend, fn, rows):
    """Pad `rows`, run `fn` once, return one output dict per row (a `Block`: one call each)."""
    if rows and isinstance(rows[0], Block):
        return [backend.run(fn, dict(b)) for b in rows]
    spec = backend.functions[fn]
    feeds = {}
    for name in spec.inputs:
        values = [r[name] for r in rows]
        dtype = np.float32 if values[0].dtype.kind == "f" else np.int32
        pad = backend.tokenizer.pad_id if name in ID_INPUTS else 0
        feeds[name] = pad_rows(values, dtype, pad)
    out = backend.run(fn, feeds)
    first = spec.inputs[0]
    result = []
    for i, r in enumerate(rows):
        row = {}
        for name in spec.outputs:
            v = out[name][i]
            row[name] = v[:len(r[first])] if name in spec.seq_outputs else v
        result.append(row)
    return result


def length_inputs(spec):
    """The inputs whose lengths make a batch's padded size: the masks (one per text), else the first."""
    return tuple(n for n in spec.inputs if n.endswith("mask")) or spec.inputs[:1]


def by_length(rows, names):
    """Row indices sorted by length (the sum of the `names` inputs' lengths), stable: the order in
    which a request's rows go into batches, so that each batch pads to its own longest row."""
    return sorted(range(len(rows)), key=lambda i: sum(len(rows[i][n]) for n in names))


def run_in_batches(backend, fn, rows, batch_size, progress=None):
    """Direct (no queue) run for the command-line tasks: length-sorted batches, input order kept.
    `progress`: a label for a progress bar over the rows (runtime.progress; long runs only)."""
    if rows and isinstance(rows[0], Block):
        return run_rows(backend, fn, rows)
    order = by_length(rows, length_inputs(backend.functions[fn]))
    out = [None] * len(rows)
    with progress_bar(len(rows), progress, "text") if progress else contextlib.nullcontext() as bar:
        for s in range(0, len(order), batch_size):
            chunk = order[s:s + batch_size]
            for i, res in zip(chunk, run_rows(backend, fn, [rows[i] for i in chunk])):
                out[i] = res
            if bar is not None:
                bar.update(len(chunk))
    return out


def warm_up(backend, lengths, max_batch=1, max_batch_tokens=0):
    """One call of each of `backend`'s functions per sequence length in `lengths` (capped at the
    backend's max_len), at 1 row and at the most rows the micro-batcher puts in a batch of that
    length (`max_batch`, fewer under a `max_batch_tokens` budget), on placeholder rows (pad ids,
    full masks, zero states). onnxruntime and TensorFlow make the first call of a shape slow
    (buffers planned and allocated, kernels picked; Keras traces its function); a server that
    does this before it listens spares its first users that. Returns [(fn, rows, length, seconds)]."""
    done = []
    sizes = sorted({max(1, min(int(n), backend.max_len)) for n in lengths})
    for fn, spec in backend.functions.items():
        masks = len(length_inputs(spec))
        for length in sizes:
            full = max_batch
            if max_batch_tokens and spec.encoder:
                full = min(full, max_batch_tokens // (length * masks))
            row = _placeholder_row(backend, spec, length)
            for n in sorted({1, max(1, full)}):
                t0 = time.perf_counter()
                run_rows(backend, fn, [row] * n)
                done.append((fn, n, length, time.perf_counter() - t0))
    return done


def _placeholder_row(backend, spec, length):
    row = {}
    for name in spec.inputs:
        if name.endswith("_states"):
            row[name] = np.zeros((length, backend.hidden_size), np.float32)
        elif name in ID_INPUTS:
            row[name] = np.full(length, backend.tokenizer.pad_id, np.int32)
        elif name.endswith("mask"):
            row[name] = np.ones(length, np.int32)
        else:  # token_type_ids
            row[name] = np.zeros(length, np.int32)
    return row


def _blocks(job):
    return bool(job.rows) and isinstance(job.rows[0], Block)


class _Job:
    """A request: its rows, run in `order` (shortest first, see `MicroBatcher.submit`); `next`
    counts the rows taken into batches, `results` is in the request's own row order."""
    __slots__ = ("fn", "rows", "order", "future", "results", "next", "done", "enqueued")

    def __init__(self, fn, rows, order=None):
        self.fn, self.rows, self.future = fn, rows, Future()
        self.order = list(range(len(rows))) if order is None else order
        self.results = [None] * len(rows)
        self.next = self.done = 0
        self.enqueued = time.monotonic()


class MicroBatcher:
    """Dynamic batching of concurrent requests onto one backend (see the module docstring).

    `max_batch_tokens`: most rows x padded tokens in a batch (0 = rows only). `metrics`
    (serve.metrics.Metrics, optional) records every batch's size and the cancelled requests.
    """

    def __init__(self, backend, max_batch=32, max_wait_ms=5.0, metrics=None, name="batcher", max_batch_tokens=0):
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: must be >= 1")
        if max_batch_tokens < 0:
            raise ValueError(f"max_batch_tokens={max_batch_tokens}: must be >= 0")
        self.backend, self.max_batch, self.max_wait = backend, int(max_batch), max(float(max_wait_ms), 0.0) / 1000
        self.max_tokens = int(max_batch_tokens)
        self.metrics = metrics
        self._queue = queue.Queue()
        self._pending = collections.deque()  # jobs taken from the queue but not finished
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def submit(self, fn, rows):
        """Queue `rows` for `fn`; the future's result is the list of row outputs, in order."""
        if fn not in self.backend.functions:
            raise KeyError(fn)
        rows = list(rows)
        job = _Job(fn, rows, None if not rows or isinstance(rows[0], Block) else
                   by_length(rows, length_inputs(self.backend.functions[fn])))
        if not job.rows:
            job.future.set_result([])
        elif self._closed:
            job.future.set_exception(RuntimeError("server is shutting down"))
        else:
            self._queue.put(job)
        return job.future

    def run(self, fn, rows):
        """Blocking submit (threads, tests)."""
        return self.submit(fn, rows).result()

    def close(self, timeout=5.0):
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)

    # ---------------------------------------------------------------- worker
    def _live(self, job):
        if job.future.cancelled():
            LIMITED.log(log, logging.INFO, ("cancelled", job.fn), "request cancelled before it ran "
                        "(%d %s rows dropped)", len(job.rows) - job.next, job.fn)
            if self.metrics:
                self.metrics.cancelled(job.fn)
            return False
        return True

    def _next_job(self, fn=None, timeout=None):
        """The least-served pending or queued job (for `fn` only when given, and then never one of
        Blocks); None on timeout / shutdown."""
        while True:  # take in everything queued, so that new requests compete for this batch
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # keep the sentinel for the outer loop
                break
            if self._live(job):
                self._pending.append(job)
        live = [j for j in self._pending
                if (fn is None or (j.fn == fn and not _blocks(j))) and j.next < len(j.rows)]
        if live:
            return min(live, key=lambda j: j.next)  # the first of equals: the oldest
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                if deadline is None:
                    job = self._queue.get()
                else:  # a zero wait still takes what is already queued
                    wait = deadline - time.monotonic()
                    job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                return None
            if job is None:
                self._queue.put(None)  # keep the sentinel for the outer loop
                return None
            if not self._live(job):
                continue
            self._pending.append(job)
            if fn is None or (job.fn == fn and not _blocks(job)):
                return job

    def _loop(self):
        while not (self._closed and self._queue.empty() and not self._pending):
            job = self._next_job()
            if job is None:
                if self._closed:
                    break
                continue
            batch = []  # (job, row index)
            fn, deadline = job.fn, time.monotonic() + self.max_wait
            if _blocks(job):  # already a batch: run it alone, now
                if self._live(job):
                    batch.append((job, job.order[job.next]))
                    job.next += 1
                    self._run_batch(fn, batch)
                else:
                    self._pending.remove(job)
                continue
            spec = self.backend.functions[fn]
            budget = self.max_tokens if spec.encoder else 0
            longest = dict.fromkeys(length_inputs(spec), 0)  # padded lengths so far
            while job is not None:
                if self._live(job):
                    if self._take(batch, longest, job, budget):
                        break
                else:
                    self._pending.remove(job)
                job = self._next_job(fn, timeout=max(deadline - time.monotonic(), 0.0))
            if batch:
                self._run_batch(fn, batch)
        for job in list(self._pending):
            job.future.cancel()

    def _take(self, batch, longest, job, budget):
        """Move `job`'s next rows into `batch` while they fit; True when the batch is full (the
        next row would pass `max_batch` rows or `budget` tokens: it waits for the next batch,
        and so do other requests' rows, shorter or not, to keep the least-served order)."""
        while job.next < len(job.rows):
            if len(batch) >= self.max_batch:
                return True
            i = job.order[job.next]
            if budget:
                row = job.rows[i]
                grown = {name: max(n, len(row[name])) for name, n in longest.items()}
                if batch and (len(batch) + 1) * sum(grown.values()) > budget:
                    return True
                longest.update(grown)
            batch.append((job, i))
            job.next += 1
        return len(batch) >= self.max_batch

    def _run_batch(self, fn, batch):
        jobs = list(dict.fromkeys(j for j, _ in batch))
        try:
            outs = run_rows(self.backend, fn, [j.rows[i] for j, i in batch])
        except Exception as e:  # noqa: BLE001  one bad batch must not end the worker
            LIMITED.log(log, logging.ERROR, ("batch", fn, type(e).__name__), "batch of %d %s rows failed",
                        len(batch), fn, exc_info=True)
            for j in jobs:
                self._finish(j, exc=e)
            return
        if self.metrics:
            self.metrics.batch(fn, len(batch))
        for (j, i), out in zip(batch, outs):
            j.results[i] = out
            j.done += 1
        for j in jobs:
            if j.done == len(j.rows):
                self._finish(j)

    def _finish(self, job, exc=None):
        if job in self._pending:
            self._pending.remove(job)
        job.next = len(job.rows)
        try:
            if exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(job.results)
        except InvalidStateError:  # cancelled while its last batch ran
            LIMITED.log(log, logging.INFO, ("cancelled", job.fn), "request cancelled while running; %s result "
                        "dropped", job.fn)
            if self.metrics:
                self.metrics.cancelled(job.fn)


# ----------------------------------------------------------------------------- plans
class Call:
    """One step of a plan: run `fn` of `backend` on `rows` (see `drive`)."""
    __slots__ = ("backend", "fn", "rows")

    def __init__(self, backend, fn, rows):
        self.backend, self.fn, self.rows = backend, fn, rows


def drive(plan, run):
    """Run a plan: a generator that yields `Call`s, receives their row outputs and returns
    its result (or a plain value: nothing to run). `run(call)` -> row outputs. The same
    plan is driven synchronously by the command-line tasks and through the micro-batchers
    by the server (`drive_async`)."""
    if not hasattr(plan, "send"):
        return plan
    try:
        call = next(plan)
        while True:
            call = plan.send(run(call))
    except StopIteration as stop:
        return stop.value


def _step(plan, value):
    """Resume `plan` with `value`: (finished, its next Call or its result). StopIteration cannot
    cross an executor's future, hence the flag."""
    try:
        return False, plan.send(value)
    except StopIteration as stop:
        return True, stop.value


async def _inline(fn, *args):
    return fn(*args)


async def drive_async(plan, submit, run=_inline):
    """`drive` with an async `submit(call)`. `run(fn, *args)` (awaitable) runs the plan's own
    work between calls (tokenising, recall, results), e.g. on an executor, so that the event
    loop is not held by one request's texts."""
    if not hasattr(plan, "send"):
        return plan
    done, value = await run(_step, plan, None)
    while not done:
        done, value = await run(_step, plan, await submit(value))
    return value
