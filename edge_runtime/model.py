"""Loading a GGUF model and generating from it: the runtime's main entry point."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Sequence

from gguf.constants import LlamaFileType

from edge_runtime.backend.core import LlamaAdapter, LlamaContext, LlamaModel, recent_llama_errors
from edge_runtime.batching.engine import BatchEngine
from edge_runtime.chat_format import ChatFormat
from edge_runtime.cpu_load import ThreadGovernor
from edge_runtime.default_model import default_model_path
from edge_runtime.errors import InvalidArgumentError, InvalidModelError, ModelError, UnsupportedModelError
from edge_runtime.generate import (AdapterResolver, CancelToken, GenerationResult, GenerationSettings, Generator, Stream,
                                   aiter_stream)
from edge_runtime.gguf_file import GGUFHeader, read_header
from edge_runtime.hardware import CpuInfo
from edge_runtime.media import MediaEncoders, Part, is_media_prompt, plan_prompt
from edge_runtime.prompt_plan import PromptPlan
from edge_runtime.settings import ResolvedSettings, RuntimeSettings, resolve

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """What a GGUF says about itself."""

    path: str
    architecture: str
    name: str
    quantization: str
    file_size_mb: float
    context_length: int | None
    sliding_window: int | None
    vocab_size: int | None
    has_chat_template: bool
    special_tokens: dict[str, int] = field(default_factory=dict)
    n_params: int | None = None
    n_layer: int | None = None
    n_embd: int | None = None
    kind: str = "base"  # "base" (pretrained: continues text) or "instruct" (follows chat turns)

    @classmethod
    def from_header(cls, header: GGUFHeader, llama: LlamaModel | None = None) -> "ModelInfo":
        file_type = header.metadata.get("general.file_type")
        try:
            quant = LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_") if file_type is not None else "unknown"
        except ValueError:
            quant = f"type {file_type}"
        return cls(
            path=str(header.path),
            architecture=header.architecture,
            name=str(header.metadata.get("general.name", header.path.stem)),
            quantization=quant,
            file_size_mb=round(header.file_size / 2**20, 1),
            context_length=header.context_length,
            sliding_window=header.sliding_window,
            vocab_size=header.vocab_size,
            has_chat_template=header.chat_template is not None,
            special_tokens=header.special_tokens(),
            n_params=llama.n_params() if llama else None,
            n_layer=llama.n_layer if llama else None,
            n_embd=llama.n_embd if llama else None,
            kind=model_kind(header),
        )


_INSTRUCT = re.compile(r"(^|[-_. ])(it|instruct|chat)([-_. ]|$)", re.I)
_BASE = re.compile(r"(^|[-_. ])(pt|base|pretrained)([-_. ]|$)", re.I)


def model_kind(header: GGUFHeader) -> str:
    """"instruct" or "base", from the names the file carries, else from whether it has a chat template."""
    names = " ".join(str(header.metadata.get(k, "")) for k in ("general.name", "general.finetune", "general.basename"))
    names += " " + header.path.stem
    if _INSTRUCT.search(names):
        return "instruct"
    if _BASE.search(names):
        return "base"
    return "instruct" if header.chat_template is not None else "base"


BASE_MODEL_HINT = (
    "{name} is a base (pretrained) model: it continues text but does not follow chat turns or instructions, "
    "so chat replies will be poor. For chat, use an instruction-tuned Gemma, e.g. "
    "`edge-runtime convert google/gemma-3-270m-it -o gemma-3-270m-it.gguf --outtype Q4_K_M` "
    "and then --model gemma-3-270m-it.gguf"
)


def kv_mb_per_token(header: GGUFHeader) -> float:
    """The f16 KV cache of one position (every layer), from the GGUF's attention shape; 0 when unknown."""
    from edge_runtime.hub.catalog import kv_cache_mb

    def count(key: str) -> int:
        value = header.arch_value(key)
        if isinstance(value, list):
            return max((int(v) for v in value if isinstance(v, int)), default=0)
        return int(value) if isinstance(value, int) else 0

    n_head = count("attention.head_count")
    head_dim = count("attention.key_length") or (count("embedding_length") // n_head if n_head else 0)
    n_head_kv = count("attention.head_count_kv") or n_head
    return kv_cache_mb(count("block_count"), n_head_kv, head_dim, 1)


def _load_llama(header: GGUFHeader, settings: ResolvedSettings, cluster=None, vocab_only: bool = False,
                repack: bool = True) -> LlamaModel:
    placement: dict = {}
    if cluster is not None:
        n_gpu_layers, split = cluster.model_params(int(header.arch_value("block_count", 0)))
        placement = {"n_gpu_layers": n_gpu_layers, "tensor_split": split}
    try:
        return LlamaModel.load(header.path, use_mmap=settings.use_mmap, use_mlock=settings.use_mlock,
                               vocab_only=vocab_only, repack=repack, **placement)
    except ModelError as exc:
        text = str(exc)
        if "unknown model architecture" in text:
            raise UnsupportedModelError(
                f"{header.path}: architecture {header.architecture!r} is not supported by the llama.cpp in this "
                "runtime; convert a supported Gemma checkpoint (gemma, gemma2, gemma3, gemma3n, gemma4)"
            ) from None
        raise InvalidModelError(f"{header.path} could not be loaded; the file may be corrupt. {text}") from None


class Model:
    """A loaded model with one inference context. Close it (or use `with`)."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        settings: RuntimeSettings | None = None,
        *,
        cpu: CpuInfo | None = None,
        mmproj: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        _rpc_cluster=None,
    ) -> None:
        if path is not None and not os.path.exists(path):  # a pulled model's name (`edge-runtime pull`)
            from edge_runtime.hub.store import resolve_model_arg

            found, projectors = resolve_model_arg(path)
            path, mmproj = found, (mmproj if mmproj else projectors or None)
        path = Path(path) if path is not None else default_model_path()
        self.media = MediaEncoders()
        self.header = read_header(path)
        settings = settings or RuntimeSettings()
        self.settings = resolve(settings, trained_ctx=self.header.context_length, cpu=cpu,
                                kv_mb_per_token=kv_mb_per_token(self.header))
        self.ctx: LlamaContext | None = None
        self.rpc_split: dict | None = None
        self._adapters: dict[Path, LlamaAdapter] = {}  # loaded once, applied per set_adapters
        self.adapters: dict[str, float] = {}
        if settings.rpc and settings.rpc.endpoints:
            self._load_remote(path, settings, mmproj)
            return
        self.llama = _load_llama(self.header, self.settings, _rpc_cluster, repack=settings.repack)
        try:
            self.ctx = LlamaContext(self.llama, self.settings.context_params())
        except BaseException:
            self.llama.close()
            raise
        recent_llama_errors()
        self.info = ModelInfo.from_header(self.header, self.llama)
        resolver = AdapterResolver(self.ctx, self._loaded_adapters)
        if self.settings.parallel > 1:
            self.generator = BatchEngine(self.llama, self.ctx, adapters=resolver)
        else:
            governor = ThreadGovernor(self.settings.n_threads) if self.settings.adaptive_threads else None
            self.generator = Generator(self.llama, self.ctx, governor, self.settings.n_threads_batch, resolver)
        self._warned_base = False
        try:
            for item in [mmproj] if isinstance(mmproj, (str, os.PathLike)) else (mmproj or ()):
                self.load_projector(item)
            if settings.lora:
                self.set_adapters(dict(settings.lora))
        except BaseException:
            self.close()
            raise
        self.chat_format = ChatFormat.for_model(self.info.architecture, self.llama.chat_template(), self.llama)

    def _load_remote(self, path: Path, settings: RuntimeSettings, mmproj) -> None:
        """Weights on RPC workers, run by a child process (rpc/remote.py); the vocabulary stays here."""
        from edge_runtime.rpc.remote import RemoteGenerator

        if mmproj:
            raise InvalidArgumentError("--mmproj cannot be combined with --rpc yet: run media models locally")
        self.llama = _load_llama(self.header, self.settings, vocab_only=True)
        try:
            self.generator = RemoteGenerator(path, settings)
        except BaseException:
            self.llama.close()
            raise
        loaded = self.generator.loaded
        self.settings = loaded["settings"]
        self.rpc_split = loaded["split"]
        self._n_ctx = loaded["n_ctx"]
        self.info = dataclasses.replace(ModelInfo.from_header(self.header), n_params=loaded["n_params"],
                                        n_layer=loaded["n_layer"], n_embd=loaded["n_embd"])
        self._warned_base = False
        self.chat_format = ChatFormat.for_model(self.info.architecture, self.llama.chat_template(), self.llama)

    def warn_if_base(self, use: str = "chat") -> None:
        """Log once per model that a chat-style use of a base model gives poor replies."""
        if self.info.kind == "base" and not self._warned_base:
            self._warned_base = True
            log.warning("%s (%s)", BASE_MODEL_HINT.format(name=self.info.name), use)

    def load_projector(self, path: str | os.PathLike[str]) -> None:
        """Load a media encoder so prompts can hold images or audio: the model's mmproj GGUF (mtmd), or
        Gemma 3n's audio encoder (`.onnx`, from `edge-runtime convert-mmproj CKPT -o audio.onnx`).
        Each takes the modalities it has, replacing the encoder loaded before for them."""
        if str(path).lower().endswith(".onnx"):
            from edge_runtime.audio.gemma3n_encoder import Gemma3nAudioEncoder

            encoder = Gemma3nAudioEncoder(path, self.llama, n_threads=self.settings.n_threads_batch)
            kinds = ["audio"]
        else:
            from edge_runtime.backend.mtmd import MultimodalProjector

            encoder = MultimodalProjector(path, self.llama, n_threads=self.settings.n_threads_batch,
                                          require_audio=False)
            kinds = [k for k, ok in (("image", encoder.supports_vision), ("audio", encoder.supports_audio)) if ok]
        for kind in kinds:
            old = getattr(self.media, kind)
            setattr(self.media, kind, encoder)
            if old is not None and old not in (self.media.image, self.media.audio):
                old.close()

    def load_adapter(self, path: str | os.PathLike[str]) -> str:
        """Check a GGUF LoRA adapter against this model and load it (once); returns its key (the
        resolved path) for `set_adapters` and `GenerationSettings.lora`."""
        if self.ctx is None:
            raise InvalidArgumentError("LoRA adapters cannot be combined with --rpc yet")
        from edge_runtime.lora.adapters import check_adapter

        key = Path(path).resolve()
        if key not in self._adapters:
            check_adapter(key, self.header)
            self._adapters[key] = LlamaAdapter(self.llama, key)
        return str(key)

    def _loaded_adapters(self, spec: tuple[tuple[str, float], ...]) -> list:
        return [(self._adapters[Path(self.load_adapter(p))], s) for p, s in spec]

    def set_adapters(self, adapters: dict[str | os.PathLike[str], float]) -> None:
        """Run later calls with exactly these LoRA adapters (GGUF path -> scale; the scale multiplies
        the adapter's alpha / r; {} for the base model). Files are checked against the model first and
        loaded once; a KV cache made under another set is never reused. A call can also pick its own
        set (`GenerationSettings.lora`)."""
        if self.ctx is None:
            raise InvalidArgumentError("LoRA adapters cannot be combined with --rpc yet")
        spec = tuple((self.load_adapter(p), float(s)) for p, s in adapters.items())
        self.generator.adapters.default = spec
        self.adapters = {p: s for p, s in spec}

    @property
    def loaded_adapters(self) -> list[str]:
        """Every adapter loaded, in load order (the server's adapter ids)."""
        return [str(p) for p in self._adapters]

    def plan(self, parts: Sequence[Part], tokenize=None) -> PromptPlan:
        """A prompt of parts (text, Image, Audio) -> the positions it takes, media wrapped as the model expects."""
        tokenize = tokenize or (lambda text, bos: self.tokenize(text, add_bos=bos))
        return plan_prompt(parts, self.media, self.info.architecture, tokenize)

    # lifecycle
    def close(self) -> None:
        if getattr(self, "media", None) is not None:
            self.media.close()
        generator = getattr(self, "generator", None)
        if generator is not None and not isinstance(generator, Generator):
            generator.close()  # the batch engine's thread, or the RPC child process
        if self.ctx is not None:
            self.ctx.close()
        for adapter in getattr(self, "_adapters", {}).values():
            adapter.close()
        self.llama.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def n_ctx(self) -> int:
        return self.ctx.n_ctx if self.ctx is not None else self._n_ctx

    # text <-> tokens
    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]:
        """Tokens of `text`; control tokens written as text (e.g. <start_of_turn>) are parsed when special."""
        return self.llama.tokenize(text, add_special=add_bos, parse_special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.llama.detokenize(tokens)

    # generation
    def stream(
        self,
        prompt: str | Sequence[int] | Sequence[Part],
        settings: GenerationSettings | None = None,
        *,
        cancel: CancelToken | None = None,
        **overrides: object,
    ) -> Stream:
        """Stream the completion of `prompt` as text pieces: text (BOS prepended), token ids, or a
        list of parts mixing text with `media.Image` / `media.Audio` (needs the projector)."""
        settings = settings or GenerationSettings()
        if overrides:
            settings = settings.replace(**overrides)
        if is_media_prompt(prompt):
            return self.generator.stream(self.plan(prompt), settings, cancel)
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
            prompt = "".join(prompt)
        tokens = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        return self.generator.stream(tokens, settings, cancel)

    def generate(
        self, prompt: str | Sequence[int] | Sequence[Part], settings: GenerationSettings | None = None, **overrides: object
    ) -> GenerationResult:
        return self.stream(prompt, settings, **overrides).consume()

    async def astream(
        self, prompt: str | Sequence[int], settings: GenerationSettings | None = None, **overrides: object
    ) -> AsyncIterator[str]:
        """Async iterator of text pieces; cancelling the consumer cancels the generation."""
        async for piece in aiter_stream(self.stream(prompt, settings, **overrides)):
            yield piece

    def generate_many(
        self, prompts: Sequence[str | Sequence[int] | Sequence[Part]], settings: GenerationSettings | None = None,
        **overrides: object
    ) -> list[GenerationResult]:
        """Every prompt's completion, decoded together on the model's `parallel` slots (one after
        another when it has one)."""
        streams = [self.stream(p, settings, **overrides) for p in prompts]
        return [s.consume() for s in streams]

    @property
    def parallel(self) -> int:
        """Streams this model decodes together."""
        return getattr(self.generator, "n_slots", 1)

    def logits(self, tokens: Sequence[int]) -> "np.ndarray":
        """Logits of every position of `tokens` evaluated from an empty cache, [n_tokens, n_vocab]: for
        checking a placement (RPC workers, threads) against another. The prompt cache is forgotten."""
        if self.ctx is None:
            return self.generator.logits(list(tokens))

        def run() -> "np.ndarray":
            self.generator.adapters.apply(None)  # the model's own adapter set
            try:
                return self.ctx.eval_logits(list(tokens))
            finally:
                self.ctx.clear()
                for cache in self._caches():
                    cache.tokens = []

        if isinstance(self.generator, BatchEngine):
            return self.generator.call(run)
        with self.generator._lock:
            return run()

    def _caches(self) -> list:
        if isinstance(self.generator, BatchEngine):
            return [slot.cache for slot in self.generator.slots]
        return [self.generator.cache]

    def reset(self) -> None:
        """Forget the cached prompt (every slot's)."""
        self.generator.reset()


def load_model(
    path: str | os.PathLike[str] | None = None, settings: RuntimeSettings | None = None, *,
    mmproj: str | os.PathLike[str] | None = None, **overrides: object
) -> Model:
    """Load a GGUF (the default model when path is None), with its projector for media when given.
    Keyword overrides go to RuntimeSettings."""
    settings = settings or RuntimeSettings()
    if overrides:
        settings = settings.replace(**overrides)
    return Model(path, settings, mmproj=mmproj)
