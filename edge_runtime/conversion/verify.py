"""Checks of a converted GGUF: tokenization against the Hugging Face tokenizer, and perplexity."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

# Texts that exercise the tokenizer's corners: scripts, emoji, digits, whitespace runs
SAMPLE_TEXTS = (
    "Hello, world! This is a test.",
    "  leading spaces,   runs of   spaces,\ttabs\t\tand\nnew\n\nlines  ",
    "Digits 0123456789, 3.14159, 1,000,000 and 2026-11-23.",
    "日本語のテキストと中文文本。",
    "Привет, мир! Ünïcödé façade naïve.",
    "مرحبا بالعالم — שלום עולם — नमस्ते दुनिया — สวัสดีชาวโลก",
    "Emoji: 🎉🚀👩‍💻🇫🇷 ❤️",
    "def f(x):\n    return x ** 2  # code\n",
)

PERPLEXITY_TEXT = (
    "The quick brown fox jumps over the lazy dog. Scientists study the natural world by making "
    "observations and running experiments. Water boils at one hundred degrees Celsius at sea level, "
    "and it freezes at zero degrees. The capital of France is Paris, and the capital of Japan is Tokyo. "
    "Many people enjoy reading books, listening to music and walking in the park on sunny afternoons."
)


@dataclass
class TokenizerCheck:
    reference: str  # which Hugging Face tokenizer was used
    texts: int
    mismatches: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


@dataclass
class Verification:
    tokenizer: TokenizerCheck | None
    perplexity: float | None
    perplexity_tokens: int

    @property
    def ok(self) -> bool:
        return (self.tokenizer is None or self.tokenizer.ok) and self.perplexity is not None and math.isfinite(self.perplexity)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        if self.tokenizer is not None:
            d["tokenizer"]["ok"] = self.tokenizer.ok
        return d


def hf_tokenizer(directory: Path):
    """(name, encode(text) -> ids with BOS) from tokenizer.json (tokenizers) or tokenizer.model (sentencepiece)."""
    directory = Path(directory)
    tj, spm = directory / "tokenizer.json", directory / "tokenizer.model"
    if tj.is_file():
        try:
            from tokenizers import Tokenizer
        except ImportError:
            Tokenizer = None
        if Tokenizer is not None:
            tok = Tokenizer.from_file(str(tj))
            return "tokenizer.json (tokenizers)", lambda text: tok.encode(text, add_special_tokens=True).ids
    if spm.is_file():
        try:
            import sentencepiece
        except ImportError:
            return None
        sp = sentencepiece.SentencePieceProcessor(model_file=str(spm))
        bos, add_bos = sp.bos_id(), True
        config_path = directory / "tokenizer_config.json"
        if config_path.is_file():
            config = json.loads(config_path.read_text(encoding="utf-8"))
            add_bos = bool(config.get("add_bos_token", True))
            bos_text = config.get("bos_token")
            bos_text = bos_text.get("content") if isinstance(bos_text, dict) else bos_text
            if isinstance(bos_text, str) and sp.piece_to_id(bos_text) != sp.unk_id():
                bos = sp.piece_to_id(bos_text)
        bos = bos if add_bos else -1
        return "tokenizer.model (sentencepiece)", lambda text: ([bos] if bos >= 0 else []) + sp.encode(text)
    return None


def check_tokenizer(gguf_path: Path, hf_dir: Path, texts=SAMPLE_TEXTS) -> TokenizerCheck | None:
    from edge_runtime.backend.core import LlamaModel

    ref = hf_tokenizer(hf_dir)
    if ref is None:
        return None
    name, encode = ref
    check = TokenizerCheck(reference=name, texts=len(texts))
    with LlamaModel.load(gguf_path, vocab_only=True) as model:
        for text in texts:
            expected = list(encode(text))
            got = model.tokenize(text, add_special=True, parse_special=False)
            if got != expected:
                at = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
                check.mismatches.append({"text": text, "hf": expected, "gguf": got, "first_difference": at})
    return check


def describe(v: dict) -> list[str]:
    """Lines reporting a verification (a `Verification.to_dict()`): what differs, and whether the file is usable."""
    lines = []
    tok = v.get("tokenizer")
    if tok is None:
        lines.append("tokenizer check: skipped (no Hugging Face tokenizer library available)")
    elif tok["ok"]:
        lines.append(f"tokenizer check vs {tok['reference']}: ok ({tok['texts']} texts)")
    else:
        lines.append(f"tokenizer check vs {tok['reference']}: {len(tok['mismatches'])} of {tok['texts']} texts "
                     "tokenize differently:")
        for m in tok["mismatches"]:
            at = m.get("first_difference", 0)
            text = m["text"] if len(m["text"]) <= 40 else m["text"][:37] + "..."
            lines.append(f"  {text!r}: first difference at token {at}: "
                         f"Hugging Face {m['hf'][at:at + 4]} vs GGUF {m['gguf'][at:at + 4]} "
                         f"({len(m['hf'])} vs {len(m['gguf'])} tokens)")
    ppl = v.get("perplexity")
    usable = ppl is not None and math.isfinite(ppl)
    lines.append(f"perplexity on the built-in text ({v['perplexity_tokens']} tokens): {ppl:.2f}" if usable
                 else "perplexity: not finite (the weights are broken)")
    if not v.get("ok"):
        lines.append("the file was written and loads; it is usable, but text tokenized differently may generate "
                     "differently from the original" if usable else "the file is not usable")
    return lines


def perplexity(gguf_path: Path, text: str = PERPLEXITY_TEXT, *, n_threads: int = 2) -> tuple[float, int]:
    """exp(mean negative log-likelihood of each next token) of `text` under the model."""
    from edge_runtime.backend.core import ContextParams, LlamaContext, LlamaModel

    with LlamaModel.load(gguf_path) as model:
        tokens = model.tokenize(text, add_special=True, parse_special=False)
        params = ContextParams(n_ctx=max(64, len(tokens) + 8), n_batch=512, n_ubatch=512,
                               n_threads=n_threads, n_threads_batch=n_threads, logits_all=True)
        with LlamaContext(model, params) as ctx:
            logits = ctx.eval_logits(tokens).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    nll = -logp[np.arange(len(tokens) - 1), tokens[1:]]
    return float(np.exp(nll.mean())), len(tokens)


def verify_gguf(gguf_path: Path, hf_dir: Path, *, n_threads: int = 2) -> Verification:
    tok = check_tokenizer(gguf_path, hf_dir)
    ppl, n = perplexity(gguf_path, n_threads=n_threads)
    return Verification(tok, ppl, n)
