"""Streaming generation: prompt evaluation with KV reuse, sampling, stop strings, cancellation."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterator, Sequence

from edge_runtime.backend.core import LlamaContext, LlamaModel, Sampler, SamplerParams
from edge_runtime.cpu_load import ThreadGovernor
from edge_runtime.errors import ContextSizeError, GenerationError, InvalidArgumentError
from edge_runtime.metrics import Metrics, peak_rss_mb
from edge_runtime.prompt_cache import PromptCache, ReuseOutcome
from edge_runtime.prompt_plan import EvalReport, PromptPlan
from edge_runtime.text_stream import IncrementalDetokenizer, StopMatcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationSettings(SamplerParams):
    """Per-call sampling (temperature 0 is greedy; grammar is GBNF) and stopping settings."""

    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    stop_tokens: tuple[int, ...] = ()  # token ids that end the reply (besides end-of-generation ones)
    # LoRA adapters for this call: (GGUF path, scale) pairs; None: the model's own set (Model.set_adapters)
    lora: tuple[tuple[str, float], ...] | None = None

    def replace(self, **changes: object) -> "GenerationSettings":
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        for name in ("temperature", "top_p", "min_p", "repeat_penalty"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidArgumentError(f"{name} must be a finite number, not {value!r}")
        if self.max_tokens < 0:
            raise InvalidArgumentError(f"max_tokens must be >= 0, not {self.max_tokens}")
        if self.temperature < 0:
            raise InvalidArgumentError(f"temperature must be >= 0, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidArgumentError(f"top_p must be in (0, 1], not {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise InvalidArgumentError(f"min_p must be in [0, 1), not {self.min_p}")
        if self.repeat_penalty <= 0:
            raise InvalidArgumentError(f"repeat_penalty must be > 0, not {self.repeat_penalty}")
        if isinstance(self.stop, str):
            raise InvalidArgumentError("stop must be a sequence of strings, not a single string")


@dataclass
class GenerationResult:
    text: str
    finish_reason: str  # "stop" (end of turn, stop string or token), "length", "cancelled", "error"
    tokens: list[int] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)

    def as_dict(self) -> dict[str, object]:
        return {"text": self.text, "finish_reason": self.finish_reason, "metrics": self.metrics.as_dict()}


class CancelToken:
    """Set from any thread to stop a generation at the next token (or mid-prompt)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def reset(self) -> None:
        self._event.clear()


class Stream:
    """An iterator of text pieces; `result` is filled in when it ends.

    Iterate it once. `cancel()` may be called from any thread; the iterator
    then ends promptly and the model stays usable.
    """

    def __init__(self, pieces: Iterator[str], cancel: CancelToken) -> None:
        self._pieces = pieces
        self.cancel_token = cancel
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def __next__(self) -> str:
        return next(self._pieces)

    def cancel(self) -> None:
        self.cancel_token.cancel()

    def close(self) -> None:
        self._pieces.close()  # type: ignore[attr-defined]

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def consume(self) -> GenerationResult:
        """Run to the end and return the result."""
        for _ in self._pieces:
            pass
        assert self.result is not None
        return self.result


def suggest_ctx(positions: int) -> int:
    """A --ctx that holds `positions` with room for a reply: the next multiple of 256 past it plus 256."""
    return (positions // 256 + 2) * 256


def checked_plan(prompt: Sequence[int] | PromptPlan, settings: GenerationSettings, n_ctx: int,
                 holds: str) -> PromptPlan:
    """The prompt as a plan, once the settings are valid and it fits `n_ctx` (`holds` says whose)."""
    settings.validate()
    plan = prompt if isinstance(prompt, PromptPlan) else PromptPlan.of_tokens(prompt)
    n = len(plan)
    if not n:
        raise InvalidArgumentError("the prompt is empty")
    if n >= n_ctx:
        what = "positions with its media" if plan.has_media else "tokens"
        raise ContextSizeError(f"the prompt takes {n} {what} but {holds} {n_ctx}; shorten the prompt or load the "
                               f"model with --ctx {suggest_ctx(n)} or more")
    return plan


class AdapterResolver:
    """Which LoRA adapters a call runs with, and applying a set to the context when it changes.
    `load` turns (path, scale) pairs into loaded adapters; `default` is the model's own set."""

    def __init__(self, ctx: LlamaContext, load=None) -> None:
        self.ctx = ctx
        self.load = load or (lambda spec: [])
        self.default: tuple[tuple[str, float], ...] = ()
        self.current: tuple[tuple[str, float], ...] = ()  # the set the context runs with

    def key(self, spec: tuple[tuple[str, float], ...] | None) -> tuple[tuple[str, float], ...]:
        spec = self.default if spec is None else spec
        return tuple(sorted((str(p), float(s)) for p, s in spec if s != 0))

    def apply(self, spec: tuple[tuple[str, float], ...] | None) -> bool:
        """Put the call's set on the context (on the thread that decodes); True when it changed."""
        key = self.key(spec)
        if key == self.current:
            return False
        self.ctx.set_adapters(self.load(key))
        self.current = key
        return True


class Reply:
    """One reply taking shape token by token: end-of-generation and stop tokens, stop strings,
    max_tokens, text pieces and timing. Shared by the one-stream Generator and the batch engine."""

    def __init__(self, model: LlamaModel, settings: GenerationSettings, metrics: Metrics, t_start: float) -> None:
        self.model, self.settings, self.metrics, self.t_start = model, settings, metrics, t_start
        self.detok = IncrementalDetokenizer(model.token_to_piece)
        self.stops = StopMatcher(settings.stop)
        self.tokens: list[int] = []
        self.pieces: list[str] = []
        self.t_first = 0.0
        # "stop", "length" or "cancelled" once nothing more follows
        self.finish: str | None = "length" if settings.max_tokens <= 0 else None

    def feed(self, token: int) -> str:
        """Take the next sampled token; returns the text it completes (may be empty)."""
        if not self.t_first:
            self.t_first = time.perf_counter()
            self.metrics.ttft_s = self.t_first - self.t_start
        if self.model.is_eog(token) or token in self.settings.stop_tokens:
            self.finish = "stop"
            return ""
        self.tokens.append(token)
        text = self.stops.feed(self.detok.feed(token))
        if text:
            self.pieces.append(text)
        if self.stops.stopped:
            self.finish = "stop"
        elif len(self.tokens) >= self.settings.max_tokens:
            self.finish = "length"
        return text

    def close(self) -> str:
        """The text held back (incomplete characters, a possible stop string's start)."""
        tail = "" if self.stops.stopped else self.stops.feed(self.detok.flush()) + self.stops.flush()
        if tail:
            self.pieces.append(tail)
        if len(self.tokens) > 1:
            gen_s = time.perf_counter() - self.t_first
            self.metrics.gen_tps = (len(self.tokens) - 1) / gen_s if gen_s > 0 else 0.0
        return tail

    def result(self, finish: str | None = None) -> GenerationResult:
        """The result; `finish` overrides the reason when the run ended otherwise (cancelled, error)."""
        self.metrics.generated_tokens = len(self.tokens)
        self.metrics.peak_rss_mb = peak_rss_mb()
        reason = finish if finish in ("cancelled", "error") else (self.finish or finish or "length")
        return GenerationResult("".join(self.pieces), reason, self.tokens, self.metrics)

    @staticmethod
    def empty(metrics: Metrics, finish: str) -> GenerationResult:
        metrics.peak_rss_mb = peak_rss_mb()
        return GenerationResult("", finish, [], metrics)


class Generator:
    """Owns one context's generation loop and its prompt cache. One call at a time."""

    def __init__(self, model: LlamaModel, ctx: LlamaContext, governor: ThreadGovernor | None = None,
                 n_threads_batch: int | None = None, adapters: "AdapterResolver | None" = None) -> None:
        self.model = model
        self.ctx = ctx
        self.adapters = adapters or AdapterResolver(ctx)
        self.governor = governor  # adapts the thread count to other processes' load
        self._threads = governor.max_threads if governor else 0
        self._threads_batch = n_threads_batch or self._threads
        self.cache = PromptCache(ctx)
        self._lock = threading.Lock()
        self.last_reuse: ReuseOutcome | None = None

    @property
    def n_slots(self) -> int:
        return 1

    @property
    def kv_cells(self) -> int:
        return len(self.cache.tokens)

    def reset(self) -> None:
        """Forget the cached prompt."""
        self.cache.reset()

    def _adapt_threads(self) -> None:
        if self.governor is None:
            return
        n = self.governor.threads()
        if n != self._threads:
            spare = self.governor.max_threads - n
            self.ctx.set_threads(n, max(1, self._threads_batch - spare))
            log.debug("generation threads %d -> %d (other processes use %.2f cores)",
                      self._threads, n, self.governor.sample.others)
            self._threads = n

    def stream(
        self, prompt: Sequence[int] | PromptPlan, settings: GenerationSettings, cancel: CancelToken | None = None
    ) -> Stream:
        """Stream the reply to `prompt`: token ids, or a plan mixing tokens with media spans."""
        plan = checked_plan(prompt, settings, self.ctx.n_ctx, "the context holds")
        cancel = cancel or CancelToken()
        stream = Stream(iter(()), cancel)
        stream._pieces = self._run(plan, settings, cancel, stream)
        return stream

    def _run(self, plan: PromptPlan, settings: GenerationSettings, cancel: CancelToken, stream: Stream) -> Iterator[str]:
        with self._lock:
            t_start = time.perf_counter()
            prompt = plan.keys()
            metrics = Metrics(prompt_tokens=len(prompt))
            reply: Reply | None = None
            finish = "length"
            sampler = Sampler(self.model, settings)
            self._adapt_threads()
            self.ctx.set_abort_check(lambda: cancel.cancelled)
            try:
                if self.adapters.apply(settings.lora):  # a cache made under other adapters is not reused
                    self.cache.reset()
                t_prompt = time.perf_counter()
                reuse = self.cache.prepare(prompt, plan.span_ranges())
                self.last_reuse = reuse
                metrics.reused_tokens = reuse.reused
                try:
                    report = plan.evaluate(self.ctx, reuse.reused)
                except GenerationError:
                    if not cancel.cancelled:
                        raise
                    report = EvalReport(-1)
                metrics.media_encode_s = report.media_encode_s
                if reuse.reused + report.evaluated < len(prompt):
                    self.cache.sync_after_abort(prompt)
                    finish = "cancelled"
                    return
                todo = prompt[reuse.reused :]
                self.cache.extend(todo)
                # From here `cancel` is checked before every token; llama.cpp's per-node poll
                # would only slow the one-token decodes down.
                self.ctx.set_abort_check(None)
                prompt_s = time.perf_counter() - t_prompt
                metrics.prompt_tps = len(todo) / prompt_s if prompt_s > 0 else 0.0
                if settings.repeat_penalty != 1.0:
                    for tok in prompt[-settings.repeat_last_n :]:
                        if tok >= 0:
                            sampler.accept(tok)

                reply = Reply(self.model, settings, metrics, t_start)
                n_ctx = self.ctx.n_ctx
                while reply.finish is None:
                    if cancel.cancelled:
                        reply.finish = "cancelled"
                        break
                    text = reply.feed(sampler.sample(self.ctx))
                    if text:
                        yield text
                    if reply.finish is not None:
                        break  # no need to evaluate a token nothing will follow
                    token = reply.tokens[-1]
                    pos = len(self.cache.tokens)
                    if pos >= n_ctx:
                        reply.finish = "length"  # the window is full
                        break
                    if len(reply.tokens) % 16 == 0:
                        self._adapt_threads()
                    if not self.ctx.decode_one(token, pos):
                        reply.finish = "cancelled"
                        break
                    self.cache.tokens.append(token)
                tail = reply.close()
                if tail:
                    yield tail
            except GeneratorExit:  # the consumer stopped iterating
                finish = "cancelled"
                raise
            except BaseException:
                # Memory and the cache's token list may disagree after a failure: start clean.
                self.cache.reset()
                finish = "error"
                raise
            finally:
                self.ctx.set_abort_check(None)
                sampler.close()
                stream.result = Reply.empty(metrics, finish) if reply is None else reply.result(finish)


async def aiter_stream(stream: Stream) -> AsyncIterator[str]:
    """Consume a Stream on a worker thread and yield its pieces to asyncio.

    Closing the async iterator (or cancelling the task) cancels the generation.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    done = object()

    def worker() -> None:
        try:
            for piece in stream:
                loop.call_soon_threadsafe(queue.put_nowait, piece)
        except BaseException as exc:  # surfaced in the consumer
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, done)

    thread = threading.Thread(target=worker, name="edge-runtime-generate", daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stream.cancel()
        await asyncio.to_thread(thread.join)
