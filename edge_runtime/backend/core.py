"""llama.cpp through llama-cpp-python's ctypes bindings: the one place that calls them.

Everything above this module works with Python lists of token ids, bytes and
numpy arrays. Objects here own C resources and are closed explicitly (they
are context managers); a closed object raises instead of crashing.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

import llama_cpp as lc

from edge_runtime.errors import GenerationError, InvalidArgumentError, ModelError, UnsupportedBuildError

log = logging.getLogger("edge_runtime.llama")

# KV cache element types by name (ggml_type values).
KV_CACHE_TYPES = {"f32": lc.GGML_TYPE_F32, "f16": lc.GGML_TYPE_F16, "bf16": 30, "q8_0": lc.GGML_TYPE_Q8_0, "q4_0": lc.GGML_TYPE_Q4_0}

# --------------------------------------------------------------------------- logging

# ggml_log_level: NONE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5 (continues the previous line).
_LOG_LEVELS = {0: logging.CRITICAL, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_recent_errors: collections.deque[tuple[int, str]] = collections.deque(maxlen=20)
_last_level = logging.DEBUG
_backend_lock = threading.Lock()
_backend_ready = False
_build_error: Exception | None = None


@lc.llama_log_callback
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    global _last_level
    py_level = _last_level if level == 5 else _LOG_LEVELS.get(level, logging.DEBUG)
    _last_level = py_level
    message = text.decode("utf-8", errors="replace").rstrip()
    if not message:
        return
    if py_level >= logging.WARNING:
        _recent_errors.append((py_level, message))
    # llama.cpp is chatty at load time: everything goes to DEBUG, shown with --verbose.
    log.debug("%s", message)


def ensure_backend() -> None:
    """Initialise llama.cpp once per process and route its logs to `logging`."""
    global _backend_ready, _build_error
    with _backend_lock:
        if _build_error is not None:
            raise _build_error
        if _backend_ready:
            return
        lc.llama_log_set(_log_callback, ctypes.c_void_p(0))
        lc.llama_backend_init()
        # before anything computes: a build for a newer CPU dies by SIGILL at its first matrix product
        from edge_runtime.backend.cpu_build import check_build
        from edge_runtime.hardware import detect_cpu

        try:
            check_build(detect_cpu(), lc.llama_print_system_info().decode(errors="replace"), lib_dir())
        except UnsupportedBuildError as exc:
            _build_error = exc
            raise
        _backend_ready = True


def lib_dir() -> Path:
    """Where the llama.cpp libraries in use live."""
    return Path(os.environ.get("LLAMA_CPP_LIB_PATH") or Path(lc.__file__).parent / "lib")


def recent_llama_errors(clear: bool = True) -> list[str]:
    """The errors llama.cpp logged since the last call, for error messages (its warnings only when
    it logged no error: a load that fails must name the cause, not an earlier vocabulary warning)."""
    entries = list(_recent_errors)
    if clear:
        _recent_errors.clear()
    errors = [m for level, m in entries if level >= logging.ERROR]
    return errors or [m for _, m in entries]


def system_info() -> str:
    """llama.cpp's own summary of the CPU features it was built for and found."""
    ensure_backend()
    return lc.llama_print_system_info().decode("utf-8", errors="replace").strip()


# --------------------------------------------------------------------------- handles


class _Handle:
    """Owns one C object: closed explicitly (or with `with`); a closed handle raises, never crashes."""

    _kind = "object"
    _ptr = None

    @property
    def ptr(self):
        if self._ptr is None:
            raise InvalidArgumentError(f"the {self._kind} has been closed")
        return self._ptr

    def _free(self, ptr) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self._ptr is not None:
            ptr, self._ptr = self._ptr, None
            self._free(ptr)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # last resort; callers close explicitly
        try:
            self.close()
        except Exception:
            pass


# --------------------------------------------------------------------------- model


class LlamaModel(_Handle):
    """A loaded GGUF model (weights and vocabulary)."""

    _kind = "model"

    def __init__(self, ptr: lc.llama_model_p, path: Path) -> None:
        self._ptr = ptr
        self.path = path
        self.vocab = lc.llama_model_get_vocab(ptr)
        self.n_vocab = int(lc.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(lc.llama_model_n_ctx_train(ptr))
        self.n_embd = int(lc.llama_model_n_embd(ptr))
        self.n_embd_inp = int(lc.llama_model_n_embd_inp(ptr))  # width of an embedding-batch row
        self.n_layer = int(lc.llama_model_n_layer(ptr))
        self.n_swa = int(lc.llama_model_n_swa(ptr))
        self.bos = int(lc.llama_vocab_bos(self.vocab))
        self.eos = int(lc.llama_vocab_eos(self.vocab))
        self.add_bos = bool(lc.llama_vocab_get_add_bos(self.vocab))
        self._piece_buf = ctypes.create_string_buffer(256)
        self._eog_cache: dict[int, bool] = {}

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        vocab_only: bool = False,
        use_mmap: bool = True,
        use_mlock: bool = False,
        n_gpu_layers: int = 0,
        tensor_split: Sequence[float] | None = None,
        repack: bool = True,
    ) -> "LlamaModel":
        """Load a GGUF file. Raises ModelError with llama.cpp's reason on failure.

        `n_gpu_layers`/`tensor_split` place layers on registered devices (RPC workers: backend/rpc.py)."""
        ensure_backend()
        path = Path(path)
        params = lc.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.use_extra_bufts = repack  # CPU weight repacking (faster kernels, slightly other rounding)
        if tensor_split is not None:
            split = (ctypes.c_float * int(lc.llama_max_devices()))(*tensor_split)
            params.tensor_split = ctypes.cast(split, ctypes.POINTER(ctypes.c_float))
        params.vocab_only = vocab_only
        if use_mmap and use_mlock:
            params.load_mode = lc.LLAMA_LOAD_MODE_MMAP_MLOCK
        elif use_mmap:
            params.load_mode = lc.LLAMA_LOAD_MODE_MMAP
        elif use_mlock:
            params.load_mode = lc.LLAMA_LOAD_MODE_MLOCK
        else:
            params.load_mode = lc.LLAMA_LOAD_MODE_NONE
        recent_llama_errors()
        ptr = lc.llama_model_load_from_file(os.fsencode(path), params)
        if not ptr:
            reasons = "; ".join(recent_llama_errors()) or "no reason given"
            raise ModelError(f"llama.cpp could not load {path}: {reasons}")
        return cls(ptr, path)

    @classmethod
    def load_at(cls, path: str | os.PathLike[str], offset: int) -> "LlamaModel":
        """Load a GGUF stored at `offset` inside a larger file (an uncompressed archive entry), mapped in place
        through llama.cpp's FILE* loader, as an app does with an asset's file descriptor."""
        ensure_backend()
        libc = ctypes.CDLL(None)
        libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
        libc.fseek.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_int]
        libc.fclose.argtypes = [ctypes.c_void_p]
        fp = libc.fopen(os.fsencode(path), b"rb")
        if not fp:
            raise ModelError(f"cannot open {path}")
        try:
            if libc.fseek(fp, offset, 0) != 0:
                raise ModelError(f"cannot seek to {offset} in {path}")
            recent_llama_errors()
            ptr = lc.llama_model_load_from_file_ptr(fp, lc.llama_model_default_params())
        finally:
            libc.fclose(fp)  # the mapping, if any, outlives the stream
        if not ptr:
            reasons = "; ".join(recent_llama_errors()) or "no reason given"
            raise ModelError(f"llama.cpp could not load the model at offset {offset} of {path}: {reasons}")
        return cls(ptr, Path(path))

    def _free(self, ptr: lc.llama_model_p) -> None:
        lc.llama_model_free(ptr)

    # metadata
    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = lc.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            lc.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def chat_template(self) -> str | None:
        raw = lc.llama_model_chat_template(self.ptr, None)
        return raw.decode("utf-8", errors="replace") if raw else None

    def description(self) -> str:
        buf = ctypes.create_string_buffer(256)
        lc.llama_model_desc(self.ptr, buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def size_bytes(self) -> int:
        return int(lc.llama_model_size(self.ptr))

    def n_params(self) -> int:
        return int(lc.llama_model_n_params(self.ptr))

    # vocabulary
    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (lc.llama_token * capacity)()
        n = lc.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
        if n < 0:
            capacity = -n
            buf = (lc.llama_token * capacity)()
            n = lc.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
            if n < 0:
                raise GenerationError(f"llama.cpp could not tokenize a text of {len(data)} bytes")
        return list(buf[:n])

    def token_to_piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token (special tokens render only with special=True)."""
        buf = self._piece_buf
        n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens: Iterable[int], *, special: bool = False) -> str:
        return b"".join(self.token_to_piece(t, special=special) for t in tokens).decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        """The vocabulary entry of a token as stored in the GGUF."""
        raw = lc.llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    def is_eog(self, token: int) -> bool:
        cached = self._eog_cache.get(token)
        if cached is None:
            cached = self._eog_cache[token] = bool(lc.llama_vocab_is_eog(self.vocab, token))
        return cached

    def is_control(self, token: int) -> bool:
        """A control or user-defined token: llama.cpp cuts text at these before tokenizing the rest."""
        attr = int(lc.llama_vocab_get_attr(self.vocab, token))
        return bool(attr & (lc.LLAMA_TOKEN_ATTR_CONTROL | lc.LLAMA_TOKEN_ATTR_USER_DEFINED))

    def token_id(self, text: str) -> int | None:
        """Id of a token whose whole text is `text` (e.g. "<end_of_turn>"), if any."""
        tokens = self.tokenize(text, add_special=False, parse_special=True)
        return tokens[0] if len(tokens) == 1 else None


# --------------------------------------------------------------------------- adapters


class LlamaAdapter(_Handle):
    """A GGUF LoRA adapter loaded for a model (check it first: llama.cpp 0.3.36's Python binding
    does not notice a failed load, and a wrongly shaped adapter crashes the process)."""

    _kind = "adapter"

    def __init__(self, model: LlamaModel, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        recent_llama_errors()
        ptr = lc.llama_adapter_lora_init(model.ptr, str(path).encode())
        if not ptr:
            reasons = "; ".join(recent_llama_errors()) or "no reason given"
            raise ModelError(f"llama.cpp could not load the adapter {path}: {reasons}")
        self._ptr = ptr

    def _free(self, ptr) -> None:
        lc.llama_adapter_lora_free(ptr)


# --------------------------------------------------------------------------- context


@dataclass(frozen=True)
class ContextParams:
    """What llama.cpp needs to build a context; decided by `settings.py`."""

    n_ctx: int
    n_batch: int = 512
    n_ubatch: int = 512
    n_threads: int = 2
    n_threads_batch: int = 2
    flash_attn: bool | None = None  # None: llama.cpp decides
    type_k: str = "f16"
    type_v: str = "f16"
    swa_full: bool = True
    logits_all: bool = False
    n_seq_max: int = 1  # sequences (parallel slots), each allowed n_ctx / n_seq_max positions
    # One KV pool the sequences share. llama.cpp splits a batch of separate per-sequence caches into
    # micro-batches of consecutive sequence ids only, so slots 0, 2 and 5 would cost three graph runs.
    kv_unified: bool = False


@dataclass
class PerfCounters:
    prompt_ms: float
    prompt_tokens: int
    eval_ms: float
    eval_tokens: int


_ABORT_CALLBACK_TYPE = lc.ggml_abort_callback
_NO_ABORT_CALLBACK = _ABORT_CALLBACK_TYPE()  # a NULL function pointer


class LlamaContext(_Handle):
    """An inference context: KV memory for n_seq_max sequences of n_ctx / n_seq_max positions each,
    decode and logits. Memory calls take the sequence (default 0)."""

    _kind = "context"

    def __init__(self, model: LlamaModel, params: ContextParams) -> None:
        for name in ("type_k", "type_v"):
            if getattr(params, name) not in KV_CACHE_TYPES:
                raise InvalidArgumentError(
                    f"unknown KV cache type {getattr(params, name)!r}; use one of {', '.join(KV_CACHE_TYPES)}"
                )
        self.model = model
        self.params = params
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = params.n_ctx
        cparams.n_batch = params.n_batch
        cparams.n_ubatch = params.n_ubatch
        cparams.n_seq_max = params.n_seq_max
        cparams.kv_unified = params.kv_unified
        cparams.n_threads = params.n_threads
        cparams.n_threads_batch = params.n_threads_batch
        cparams.flash_attn_type = (
            lc.LLAMA_FLASH_ATTN_TYPE_AUTO
            if params.flash_attn is None
            else (lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if params.flash_attn else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        )
        cparams.type_k = KV_CACHE_TYPES[params.type_k]
        cparams.type_v = KV_CACHE_TYPES[params.type_v]
        cparams.swa_full = params.swa_full
        cparams.no_perf = False
        recent_llama_errors()
        ptr = lc.llama_init_from_model(model.ptr, cparams)
        if not ptr:
            reasons = "; ".join(recent_llama_errors()) or "no reason given"
            raise ModelError(f"llama.cpp could not create a context of {params.n_ctx} tokens: {reasons}")
        self._ptr = ptr
        self.n_ctx = int(lc.llama_n_ctx(ptr)) // params.n_seq_max  # what one sequence may hold
        self.n_seq = params.n_seq_max
        self.memory = lc.llama_get_memory(ptr)
        self._batch = lc.llama_batch_init(max(params.n_batch, 1), 0, 1)
        self._one = (lc.llama_token * 1)()
        self._embd_batch = None  # allocated on the first embedding decode
        self._abort_flag: Callable[[], bool] | None = None
        # The C callback object must outlive the context: keep a reference.
        self._abort_cb = _ABORT_CALLBACK_TYPE(self._abort_trampoline)

    def _free(self, ptr: lc.llama_context_p) -> None:
        lc.llama_batch_free(self._batch)
        if self._embd_batch is not None:
            lc.llama_batch_free(self._embd_batch)
        lc.llama_free(ptr)

    # cancellation
    def _abort_trampoline(self, _data: ctypes.c_void_p) -> bool:
        flag = self._abort_flag
        return bool(flag and flag())

    def set_abort_check(self, check: Callable[[], bool] | None) -> None:
        """A callable polled by llama.cpp during decode; True aborts the decode. None removes it.

        llama.cpp polls it once per graph node (hundreds per token), each poll a trip into
        Python: install it for long prompt evaluations, not for one-token decodes.
        """
        self._abort_flag = check
        lc.llama_set_abort_callback(self.ptr, self._abort_cb if check else _NO_ABORT_CALLBACK, None)

    def set_adapters(self, adapters: Sequence[tuple["LlamaAdapter", float]]) -> None:
        """Apply exactly these LoRA adapters, each at its scale, to every later decode (none: the base)."""
        n = len(adapters)
        ptrs = (lc.llama_adapter_lora_p_ctypes * max(n, 1))(*[a.ptr for a, _ in adapters])
        scales = (ctypes.c_float * max(n, 1))(*[s for _, s in adapters])
        status = lc.llama_set_adapters_lora(self.ptr, ptrs, n, scales)
        if status != 0:
            raise ModelError(f"llama.cpp refused the adapter set (status {status})")

    def set_threads(self, n_threads: int, n_threads_batch: int) -> None:
        lc.llama_set_n_threads(self.ptr, n_threads, n_threads_batch)

    # decoding
    def decode(self, tokens: Sequence[int], start_pos: int, *, logits: str = "last") -> int:
        """Evaluate `tokens` at positions start_pos.. in chunks of n_batch.

        logits: "last" (only the final token's logits are kept), "all", or "none".
        Returns the number of tokens actually evaluated: fewer than len(tokens)
        only when the abort check fired.
        """
        n_total = len(tokens)
        done = 0
        batch = self._batch
        while done < n_total:
            n = min(self.params.n_batch, n_total - done)
            for i in range(n):
                batch.token[i] = tokens[done + i]
                batch.pos[i] = start_pos + done + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = logits == "all"
            if logits == "last" and done + n == n_total:
                batch.logits[n - 1] = True
            batch.n_tokens = n
            status = lc.llama_decode(self.ptr, batch)
            if status == 2:  # aborted: the ubatches already processed stay in memory
                return max(0, self.pos_max() + 1 - start_pos)
            if status != 0:
                reasons = "; ".join(recent_llama_errors()) or f"status {status}"
                raise GenerationError(f"llama.cpp failed to evaluate {n} tokens at position {start_pos + done}: {reasons}")
            done += n
        return done

    def decode_one(self, token: int, pos: int) -> bool:
        """Evaluate one token (the generation hot path). False when aborted."""
        batch = self._batch
        batch.token[0] = token
        batch.pos[0] = pos
        batch.n_seq_id[0] = 1
        batch.seq_id[0][0] = 0
        batch.logits[0] = True
        batch.n_tokens = 1
        status = lc.llama_decode(self.ptr, batch)
        if status == 2:
            return False
        if status != 0:
            reasons = "; ".join(recent_llama_errors()) or f"status {status}"
            raise GenerationError(f"llama.cpp failed to evaluate a token at position {pos}: {reasons}")
        return True

    def decode_many(self, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence, wants_logits) entries from several
        sequences (at most n_batch); logits are then read by their index among the entries."""
        n = len(entries)
        if not 0 < n <= self.params.n_batch:
            raise InvalidArgumentError(f"a batch takes 1 to {self.params.n_batch} entries, not {n}")
        batch = self._batch
        for i, (token, pos, seq, want) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = want
        batch.n_tokens = n
        status = lc.llama_decode(self.ptr, batch)
        if status != 0:
            reasons = "; ".join(recent_llama_errors()) or f"status {status}"
            raise GenerationError(f"llama.cpp failed to evaluate a batch of {n} tokens: {reasons}")

    def decode_embeddings(self, rows: np.ndarray, start_pos: int, *, non_causal: bool = False,
                          logits_last: bool = False, seq: int = 0) -> int:
        """Evaluate input embeddings (media encoder output, [n, n_embd_inp] float32) at positions
        start_pos.. in chunks of n_batch; with `non_causal` the rows attend to each other both ways
        (Gemma 3 images). Returns the rows evaluated: fewer only when the abort check fired."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        width = self.model.n_embd_inp
        if rows.ndim != 2 or rows.shape[1] != width:
            raise InvalidArgumentError(f"media embeddings of shape {rows.shape} do not fit this model, whose "
                                       f"input rows are {width} wide: the projector belongs to another model")
        if self._embd_batch is None:
            self._embd_batch = lc.llama_batch_init(max(self.params.n_batch, 1), width, 1)
        batch = self._embd_batch
        step = self.params.n_batch
        if non_causal:
            if len(rows) > self.params.n_ubatch:
                raise InvalidArgumentError(f"a media item of {len(rows)} positions must be evaluated in one "
                                           f"micro-batch; load the model with n_ubatch >= {len(rows)}")
            step = len(rows)
            lc.llama_set_causal_attn(self.ptr, False)
        done = 0
        try:
            while done < len(rows):
                n = min(step, len(rows) - done)
                ctypes.memmove(batch.embd, rows[done : done + n].ctypes.data, n * width * 4)
                for i in range(n):
                    batch.pos[i] = start_pos + done + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = seq
                    batch.logits[i] = logits_last and done + i == len(rows) - 1
                batch.n_tokens = n
                status = lc.llama_decode(self.ptr, batch)
                if status == 2:
                    return max(0, self.pos_max(seq) + 1 - start_pos)
                if status != 0:
                    reasons = "; ".join(recent_llama_errors()) or f"status {status}"
                    raise GenerationError(f"llama.cpp failed to evaluate {n} media positions at {start_pos + done}: "
                                          f"{reasons}")
                done += n
        finally:
            if non_causal:
                lc.llama_set_causal_attn(self.ptr, True)
        return done

    def logits(self, index: int = -1) -> np.ndarray:
        """A copy of the logits of the index-th output of the last decode."""
        ptr = lc.llama_get_logits_ith(self.ptr, index)
        if not ptr:
            raise GenerationError(f"no logits for output {index}: the last decode did not request them")
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,)).copy()

    def eval_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits for every position of `tokens`, from an empty memory: [n_tokens, n_vocab]."""
        if len(tokens) > self.n_ctx:
            raise InvalidArgumentError(f"{len(tokens)} tokens do not fit a context of {self.n_ctx}")
        self.clear()
        out = np.empty((len(tokens), self.model.n_vocab), dtype=np.float32)
        step = self.params.n_batch
        for start in range(0, len(tokens), step):
            chunk = tokens[start : start + step]
            self.decode(chunk, start, logits="all")
            for i in range(len(chunk)):
                out[start + i] = np.ctypeslib.as_array(lc.llama_get_logits_ith(self.ptr, i), shape=(self.model.n_vocab,))
        return out

    # memory
    def clear(self) -> None:
        """Forget every sequence."""
        lc.llama_memory_clear(self.memory, True)

    def seq_rm(self, p0: int, p1: int = -1, seq: int = 0) -> bool:
        return bool(lc.llama_memory_seq_rm(self.memory, seq, p0, p1))

    def seq_add(self, p0: int, p1: int, delta: int, seq: int = 0) -> None:
        lc.llama_memory_seq_add(self.memory, seq, p0, p1, delta)

    def pos_min(self, seq: int = 0) -> int:
        return int(lc.llama_memory_seq_pos_min(self.memory, seq))

    def pos_max(self, seq: int = 0) -> int:
        return int(lc.llama_memory_seq_pos_max(self.memory, seq))

    def can_shift(self) -> bool:
        return bool(lc.llama_memory_can_shift(self.memory))

    def perf(self) -> PerfCounters:
        data = lc.llama_perf_context(self.ptr)
        return PerfCounters(data.t_p_eval_ms, data.n_p_eval, data.t_eval_ms, data.n_eval)

    def reset_perf(self) -> None:
        lc.llama_perf_context_reset(self.ptr)


# --------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class SamplerParams:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None  # None: random
    grammar: str | None = None


class Sampler(_Handle):
    """A llama.cpp sampler chain (grammar, penalties, top-k/p, min-p, temperature)."""

    _kind = "sampler"

    def __init__(self, model: LlamaModel, params: SamplerParams) -> None:
        self._n_vocab = model.n_vocab
        # Plain greedy needs no chain: an argmax over the logits in place is cheaper than
        # llama.cpp filling a candidate array of the whole vocabulary for every token.
        self._argmax_only = params.temperature <= 0 and not params.grammar and params.repeat_penalty == 1.0
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        self._ptr = chain
        add = lambda s: lc.llama_sampler_chain_add(chain, s)  # noqa: E731
        if params.grammar:
            recent_llama_errors()
            grammar = lc.llama_sampler_init_grammar(model.vocab, params.grammar.encode(), b"root")
            if not grammar:
                self.close()
                reasons = "; ".join(recent_llama_errors()) or "parse error"
                raise InvalidArgumentError(f"invalid GBNF grammar: {reasons}")
            add(grammar)
        if params.repeat_penalty != 1.0:
            add(lc.llama_sampler_init_penalties(model.n_vocab, params.repeat_last_n, params.repeat_penalty, 0.0, 0.0))
        if params.temperature <= 0:
            add(lc.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(lc.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(lc.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0:
                add(lc.llama_sampler_init_min_p(params.min_p, 1))
            add(lc.llama_sampler_init_temp(params.temperature))
            add(lc.llama_sampler_init_dist(lc.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF))

    def sample(self, ctx: LlamaContext, index: int = -1) -> int:
        """Sample from the index-th output and record the token in the chain's state."""
        if self._argmax_only:
            logits = lc.llama_get_logits_ith(ctx.ptr, index)
            return int(np.ctypeslib.as_array(logits, shape=(self._n_vocab,)).argmax())
        return int(lc.llama_sampler_sample(self._ptr, ctx.ptr, index))

    def accept(self, token: int) -> None:
        """Record a token the chain did not sample (e.g. prompt tokens for penalties)."""
        lc.llama_sampler_accept(self._ptr, token)

    def _free(self, ptr: lc.llama_sampler_p) -> None:
        lc.llama_sampler_free(ptr)


# --------------------------------------------------------------------------- grammars


def json_schema_to_gbnf(schema: dict) -> str:
    """llama.cpp's JSON-schema-to-GBNF conversion (as shipped in llama-cpp-python)."""
    import json

    from llama_cpp.llama_grammar import json_schema_to_gbnf as convert

    try:
        return convert(json.dumps(schema))
    except Exception as exc:  # the converter raises bare exceptions for unsupported schemas
        raise InvalidArgumentError(f"cannot build a grammar from this JSON schema: {exc}") from None
