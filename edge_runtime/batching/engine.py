"""Continuous batching: several streams decoded together on one context.

One engine thread owns the context. Each step it builds one llama.cpp batch
holding the next token of every stream that is generating, then fills what
room is left with chunks of prompts waiting to be evaluated, so running
streams keep flowing while a long prompt arrives (llama-server's
`update_slots`). Media spans are evaluated on their own, between steps.
Callers on any thread get a `Stream` that reads their pieces from a queue;
cancelling it frees its slot at the next step.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from edge_runtime.backend.core import LlamaContext, LlamaModel, Sampler
from edge_runtime.batching.slots import Slot, make_slots, pick_slot
from edge_runtime.errors import EdgeRuntimeError, GenerationError
from edge_runtime.generate import AdapterResolver, CancelToken, GenerationSettings, Reply, Stream, checked_plan
from edge_runtime.metrics import Metrics
from edge_runtime.prompt_plan import MediaSpan, PromptPlan

log = logging.getLogger(__name__)

# While other streams are generating, a new prompt is evaluated this many tokens per step.
PREFILL_CHUNK = 256
_END = object()


@dataclass
class EngineStats:
    """What the engine has done since it started."""

    steps: int = 0  # llama_decode calls for text batches
    generated: int = 0  # tokens evaluated for streams that were generating
    prompt: int = 0  # prompt positions evaluated (media included)
    most_streams: int = 0  # the most generating streams carried by one step
    mixed_steps: int = 0  # steps that carried generating streams and a prompt chunk together


@dataclass(eq=False)
class _Request:
    plan: PromptPlan
    settings: GenerationSettings
    cancel: CancelToken
    stream: Stream
    keys: list[int] = field(default_factory=list)
    lora: tuple = ()  # the adapter set it runs with: never batched with another set
    out: "queue.SimpleQueue[object]" = field(default_factory=queue.SimpleQueue)
    t_start: float = field(default_factory=time.perf_counter)
    slot: Slot | None = None
    sampler: Sampler | None = None
    reply: Reply | None = None
    metrics: Metrics = field(default_factory=Metrics)
    cursor: int = 0  # next prompt position to evaluate
    next_token: int | None = None  # sampled, to be evaluated in the next step
    t_prompt: float = 0.0
    finished: bool = False


class BatchEngine:
    """Streams from several callers over the sequences of one context (see the module doc).

    Same interface as `Generator.stream`; thread-safe. Close it before the context.
    """

    def __init__(self, model: LlamaModel, ctx: LlamaContext, *, prefill_chunk: int = PREFILL_CHUNK,
                 adapters: AdapterResolver | None = None) -> None:
        self.model = model
        self.ctx = ctx
        self.adapters = adapters or AdapterResolver(ctx)
        self.slots = make_slots(ctx)
        self.prefill_chunk = max(1, min(prefill_chunk, ctx.params.n_batch))
        self._waiting: collections.deque[_Request] = collections.deque()
        self._running: list[_Request] = []
        self._calls: collections.deque[tuple[Callable[[], object], Future]] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self.stats = EngineStats()
        self._thread = threading.Thread(target=self._loop, name="edge-runtime-batch", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ callers' side

    @property
    def n_slots(self) -> int:
        return len(self.slots)

    @property
    def waiting(self) -> int:
        """Requests queued for a free slot."""
        return len(self._waiting)

    @property
    def busy(self) -> int:
        return len(self._running)

    @property
    def kv_cells(self) -> int:
        """Positions held in the KV cache, all slots together."""
        return sum(len(s.cache.tokens) for s in self.slots)

    def stream(
        self, prompt: Sequence[int] | PromptPlan, settings: GenerationSettings, cancel: CancelToken | None = None
    ) -> Stream:
        """Queue a generation; its pieces arrive on the returned Stream as the engine produces them."""
        plan = checked_plan(prompt, settings, self.ctx.n_ctx, f"each of the {self.n_slots} slots holds")
        n = len(plan)
        cancel = cancel or CancelToken()
        stream = Stream(iter(()), cancel)
        request = _Request(plan, settings, cancel, stream, keys=plan.keys(), lora=self.adapters.key(settings.lora))
        request.metrics.prompt_tokens = n
        stream._pieces = self._pieces(request)
        with self._cond:
            if self._closing:
                raise GenerationError("the model is closed")
            self._waiting.append(request)
            self._cond.notify()
        return stream

    @staticmethod
    def _pieces(request: _Request) -> Iterator[str]:
        try:
            while True:
                item = request.out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            if not request.finished:  # the consumer stopped early
                request.cancel.cancel()

    def call(self, fn: Callable[[], object]) -> object:
        """Run `fn` on the engine thread once no request is running (e.g. to reset the caches)."""
        future: Future = Future()
        with self._cond:
            if self._closing:
                raise GenerationError("the model is closed")
            self._calls.append((fn, future))
            self._cond.notify()
        return future.result()

    def reset(self) -> None:
        """Forget every slot's cached prompt."""
        def clear() -> None:
            for slot in self.slots:
                slot.cache.reset()

        self.call(clear)

    def close(self) -> None:
        """Cancel what runs, fail what waits, and stop the engine thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    # ------------------------------------------------------------------ engine thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._closing or self._waiting or self._running or self._calls):
                    self._cond.wait()
                if self._closing:
                    break
            try:
                self._admit()
                if not self._running and self._calls:
                    fn, future = self._calls.popleft()
                    self._run_call(fn, future)
                    continue
                if self._running:
                    self._step()
            except BaseException as exc:  # a failed decode: every stream in it ends with the error
                log.exception("batch step failed")
                for request in list(self._running):
                    request.slot.cache.reset()
                    self._finish(request, "error", exc)
        self._shutdown()

    @staticmethod
    def _run_call(fn: Callable[[], object], future: Future) -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    def _shutdown(self) -> None:
        closed = GenerationError("the model was closed while this request waited")
        for request in list(self._running):
            self._finish(request, "cancelled")
        while self._waiting:
            self._fail_waiting(self._waiting.popleft(), closed)
        while self._calls:
            self._calls.popleft()[1].set_exception(closed)

    def _fail_waiting(self, request: _Request, exc: BaseException) -> None:
        request.finished = True
        request.out.put(exc)

    def _admit(self) -> None:
        """Start waiting requests on free slots, in arrival order (calls wait for an idle engine). The
        adapter set changes only between requests: one under another set waits for the running ones."""
        while self._waiting and not self._calls:
            request = self._waiting[0]
            if request.lora != self.adapters.current and not request.cancel.cancelled:
                if self._running:
                    return
                try:
                    self.adapters.apply(request.lora)
                except BaseException as exc:  # an adapter that cannot load fails its own request only
                    self._fail_waiting(self._waiting.popleft(), exc)
                    continue
            if request.cancel.cancelled:
                self._waiting.popleft()
                request.stream.result = Reply.empty(request.metrics, "cancelled")
                request.finished = True
                request.out.put(_END)
                continue
            slot = pick_slot(self.slots, request.keys, request.lora)
            if slot is None:
                return
            self._waiting.popleft()
            try:
                self._start(request, slot)
            except BaseException as exc:
                slot.cache.reset()
                slot.release()
                self._fail_waiting(request, exc)

    def _start(self, request: _Request, slot: Slot) -> None:
        slot.busy = True
        request.slot = slot
        if slot.lora != request.lora:  # its cache was made under other adapters
            slot.cache.reset()
            slot.lora = request.lora
        request.t_prompt = time.perf_counter()
        reuse = slot.cache.prepare(request.keys, request.plan.span_ranges())
        request.cursor = reuse.reused
        request.metrics.reused_tokens = reuse.reused
        request.sampler = Sampler(self.model, request.settings)
        settings = request.settings
        if settings.repeat_penalty != 1.0:
            for tok in request.keys[-settings.repeat_last_n :]:
                if tok >= 0:
                    request.sampler.accept(tok)
        request.reply = Reply(self.model, settings, request.metrics, request.t_start)
        self._running.append(request)
        if request.reply.finish is not None:  # max_tokens 0
            self._finish(request, request.reply.finish)

    def _step(self) -> None:
        entries: list[tuple[int, int, int, bool]] = []
        sample_at: list[tuple[_Request, int]] = []
        for request in list(self._running):
            if request.cancel.cancelled:
                self._finish(request, "cancelled")
            elif request.next_token is not None:
                pos = len(request.slot.cache.tokens)
                sample_at.append((request, len(entries)))
                entries.append((request.next_token, pos, request.slot.seq, True))
        generating = bool(entries)
        budget = self.ctx.params.n_batch - len(entries)
        prefills: list[tuple[_Request, list[int]]] = []
        for request in [r for r in self._running if r.next_token is None and not r.finished]:
            if budget <= 0:
                break
            room = min(budget, self.prefill_chunk) if generating else budget
            chunk = self._prompt_chunk(request, room)
            if not chunk:  # its media span was evaluated (and sampled) on its own
                continue
            start = request.cursor
            last = start + len(chunk) == len(request.keys)
            for i, token in enumerate(chunk):
                entries.append((token, start + i, request.slot.seq, last and i == len(chunk) - 1))
            if last:
                sample_at.append((request, len(entries) - 1))
            prefills.append((request, chunk))
            budget -= len(chunk)
        if not entries:
            return
        self.ctx.decode_many(entries)
        stats = self.stats
        n_generating = sum(1 for r, _ in sample_at if r.next_token is not None)
        stats.steps += 1
        stats.generated += n_generating
        stats.prompt += len(entries) - n_generating
        stats.most_streams = max(stats.most_streams, n_generating)
        stats.mixed_steps += bool(n_generating and prefills)
        for request, chunk in prefills:
            request.slot.cache.extend(chunk)
            request.cursor += len(chunk)
        for request, index in sample_at:
            if request.next_token is not None:
                request.slot.cache.tokens.append(request.next_token)
                request.next_token = None
            self._sample(request, index)

    def _prompt_chunk(self, request: _Request, room: int) -> list[int] | None:
        """The next prompt tokens of `request` to put in this step's batch (at most `room`). A
        media span reached is evaluated right away in its own decode; returns None then."""
        pos = 0
        for run in request.plan.runs:
            n = run.n_pos if isinstance(run, MediaSpan) else len(run)
            if pos + n <= request.cursor:
                pos += n
                continue
            if isinstance(run, MediaSpan):
                try:
                    self._evaluate_media(request, run, pos)
                except EdgeRuntimeError as exc:  # this request's media: the other streams go on
                    request.slot.cache.reset()
                    self._finish(request, "error", exc)
                return None
            offset = request.cursor - pos
            return list(run[offset : offset + room])
        return []

    def _evaluate_media(self, request: _Request, span: MediaSpan, pos: int) -> None:
        last = pos + span.n_pos == len(request.keys)
        t0 = time.perf_counter()
        rows = span.embedder.embeddings(span)
        request.metrics.media_encode_s += time.perf_counter() - t0
        self.ctx.decode_embeddings(rows, pos, non_causal=span.non_causal, logits_last=last, seq=request.slot.seq)
        request.slot.cache.extend(request.keys[pos : pos + span.n_pos])
        self.stats.prompt += span.n_pos
        request.cursor = pos + span.n_pos
        if last:
            self._sample(request, -1)

    def _sample(self, request: _Request, index: int) -> None:
        reply = request.reply
        if not reply.tokens and not reply.t_first:  # the prompt is in: its evaluation rate
            done = time.perf_counter()
            evaluated = len(request.keys) - request.metrics.reused_tokens
            request.metrics.prompt_tps = evaluated / max(done - request.t_prompt, 1e-9)
        text = reply.feed(request.sampler.sample(self.ctx, index))
        if text:
            request.out.put(text)
        if reply.finish is None and len(request.slot.cache.tokens) >= self.ctx.n_ctx:
            reply.finish = "length"  # the slot's window is full
        if reply.finish is not None:
            self._finish(request, reply.finish)
        else:
            request.next_token = reply.tokens[-1]

    def _finish(self, request: _Request, finish: str, error: BaseException | None = None) -> None:
        if request.finished:
            return
        request.finished = True
        if request in self._running:
            self._running.remove(request)
        if request.next_token is not None:  # sampled but never evaluated: not in the cache
            request.next_token = None
        if request.reply is not None:
            tail = request.reply.close() if error is None else ""
            if tail:
                request.out.put(tail)
            request.stream.result = request.reply.result(finish)
        else:
            request.stream.result = Reply.empty(request.metrics, finish)
        if request.sampler is not None:
            request.sampler.close()
        if request.slot is not None:
            request.slot.release()
        request.out.put(error if error is not None else _END)

