"""Tokenizers -> GGUF vocabulary fields, and back.

SentencePiece `tokenizer.model` files (Gemma 1, 2, 3, 3n) become llama.cpp's
"llama" (SPM) vocabulary; a `tokenizer.json` byte-fallback BPE (Gemma 4, or a
checkpoint without tokenizer.model) becomes the "gemma4" BPE vocabulary with
its merges. The SentencePiece protobuf is read and written here (a small,
fixed schema), so neither sentencepiece nor protobuf is needed to convert.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.conversion.checkpoint import load_json
from edge_runtime.errors import ConversionError

# gguf.TokenType values (the same numbers as SentencePiece's piece types)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Chat and tool tokens that Gemma 4 renders as text so the chat parser can see them
GEMMA4_VISIBLE = {"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>'}

_BYTE_RE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass
class Vocab:
    """A vocabulary as GGUF stores it."""

    model: str  # tokenizer.ggml.model: "llama" (SentencePiece) or "gemma4" (BPE)
    tokens: list[str]
    scores: list[float]
    types: list[int]
    source: Path
    merges: list[str] = field(default_factory=list)
    pre: str | None = None
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad
    add_bos: bool = True
    add_eos: bool = False
    chat_template: str | None = None

    def __len__(self) -> int:
        return len(self.tokens)


# --------------------------------------------------------------------------- protobuf (SentencePiece ModelProto)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field number, wire type, value) of a protobuf message."""
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = _read_varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > n:
            raise ValueError("truncated protobuf message")
        yield num, wire, value


def read_sentencepiece(path: Path) -> tuple[list[str], list[float], list[int], dict[str, int]]:
    """(pieces, scores, types, trainer ids) of a SentencePiece model file."""
    try:
        data = path.read_bytes()
        pieces, scores, types = [], [], []
        ids = {"unk": 0, "bos": 1, "eos": 2, "pad": -1}
        for num, wire, value in _fields(data):
            if num == 1 and wire == 2:
                piece, score, ptype = "", 0.0, NORMAL
                for pn, pw, pv in _fields(value):
                    if pn == 1:
                        piece = pv.decode("utf-8")
                    elif pn == 2 and pw == 5:
                        score = struct.unpack("<f", pv)[0]
                    elif pn == 3:
                        ptype = pv
                pieces.append(piece)
                scores.append(score)
                types.append(ptype)
            elif num == 2 and wire == 2:
                for tn, tw, tv in _fields(value):
                    if tw == 0 and tn in (40, 41, 42, 43):
                        ids[{40: "unk", 41: "bos", 42: "eos", 43: "pad"}[tn]] = tv - (1 << 64) if tv >= 1 << 63 else tv
    except (OSError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise ConversionError(f"{path}: not a readable SentencePiece model ({exc})") from None
    if not pieces:
        raise ConversionError(f"{path}: SentencePiece model without pieces")
    return pieces, scores, types, ids


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, wire: int, payload: bytes | int | float) -> bytes:
    key = _varint((num << 3) | wire)
    if wire == 0:
        return key + _varint(int(payload))
    if wire == 5:
        return key + struct.pack("<f", payload)
    return key + _varint(len(payload)) + payload


def write_sentencepiece(path: Path, vocab: Vocab) -> None:
    """A BPE SentencePiece model as Gemma ships it (byte fallback, no dummy prefix, whitespace kept)."""
    out = bytearray()
    for text, score, ttype in zip(vocab.tokens, vocab.scores, vocab.types):
        if ttype == USER_DEFINED:  # SentencePiece sees spaces as U+2581
            text = text.replace(" ", "\u2581")
        piece = _field(1, 2, text.encode("utf-8")) + _field(2, 5, float(score)) + _field(3, 0, ttype)
        out += _field(1, 2, piece)
    ids = vocab.special_ids
    trainer = (
        _field(3, 0, 2)  # model_type BPE
        + _field(4, 0, len(vocab.tokens))
        + _field(25, 0, 1)  # split_digits
        + _field(26, 0, 1)  # allow_whitespace_only_pieces
        + _field(35, 0, 1)  # byte_fallback
        + _field(40, 0, ids.get("unk", 3))
        + _field(41, 0, ids.get("bos", 2))
        + _field(42, 0, ids.get("eos", 1))
        + _field(43, 0, ids.get("pad", 0))
    )
    # SentencePiece looks the special ids up by piece text
    for num, key in ((45, "unk"), (46, "bos"), (47, "eos"), (48, "pad")):
        if 0 <= ids.get(key, -1) < len(vocab.tokens):
            trainer += _field(num, 2, vocab.tokens[ids[key]].encode("utf-8"))
    normalizer = _field(1, 2, b"identity") + _field(3, 0, 0) + _field(4, 0, 0) + _field(5, 0, 1)
    out += _field(2, 2, trainer) + _field(3, 2, normalizer)
    path.write_bytes(bytes(out))


# --------------------------------------------------------------------------- reading a checkpoint's tokenizer


def _token_string(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def read_chat_template(directory: Path) -> str | None:
    """From chat_template.jinja, chat_template.json or tokenizer_config.json (in that order)."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        path = directory / name
        if path.is_file():
            template = load_json(path).get("chat_template")
            if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
                named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
                template = named.get("default") or next(iter(named.values()), None)
            if isinstance(template, str):
                return template
    return None


def load_vocab(directory: Path, n_vocab: int | None, *, arch: str) -> Vocab:
    """The checkpoint's vocabulary, padded with unused tokens to `n_vocab` where the model has more rows."""
    directory = Path(directory)
    tok_config_path = directory / "tokenizer_config.json"
    tok_config = load_json(tok_config_path) if tok_config_path.is_file() else {}
    spm, hf_json = directory / "tokenizer.model", directory / "tokenizer.json"
    if arch != "gemma4" and spm.is_file():
        vocab = _spm_vocab(spm, tok_config)
    elif hf_json.is_file():
        vocab = _bpe_vocab(hf_json, arch)
    elif spm.is_file():
        raise ConversionError(f"{hf_json}: missing (Gemma 4 needs its tokenizer.json)")
    else:
        raise ConversionError(f"{directory}: no tokenizer (tokenizer.model or tokenizer.json)")
    if n_vocab is not None:
        if len(vocab.tokens) > n_vocab:
            raise ConversionError(
                f"{vocab.source}: the tokenizer has {len(vocab.tokens)} tokens, config.json's vocab_size is {n_vocab}"
            )
        for i in range(len(vocab.tokens), n_vocab):
            vocab.tokens.append(f"[PAD{i}]")
            vocab.scores.append(-1000.0)
            vocab.types.append(UNUSED)
    seen: dict[str, int] = {}
    for i, t in enumerate(vocab.tokens):
        if t in seen:
            raise ConversionError(f"{vocab.source}: duplicate token {t!r} (ids {seen[t]} and {i})")
        seen[t] = i
    for key in ("bos", "eos", "unk", "pad"):
        text = _token_string(tok_config.get(f"{key}_token"))
        if text is not None and text in seen:
            vocab.special_ids[key] = seen[text]
    if "add_bos_token" in tok_config:
        vocab.add_bos = bool(tok_config["add_bos_token"])
    if "add_eos_token" in tok_config:
        vocab.add_eos = bool(tok_config["add_eos_token"])
    vocab.chat_template = read_chat_template(directory)
    return vocab


def _spm_vocab(path: Path, tok_config: dict) -> Vocab:
    pieces, scores, types, ids = read_sentencepiece(path)
    vocab = Vocab("llama", pieces, scores, types, path)
    vocab.special_ids = {k: v for k, v in ids.items() if 0 <= v < len(pieces)}
    decoder = tok_config.get("added_tokens_decoder") or {}
    for sid, info in decoder.items():
        i = int(sid)
        if not 0 <= i < len(pieces) or not isinstance(info, dict):
            continue
        content = info.get("content", pieces[i])
        if pieces[i] != content and types[i] not in (UNUSED, USER_DEFINED, CONTROL):
            continue  # never rename a normal piece
        if types[i] not in (UNKNOWN, BYTE):
            types[i] = CONTROL if info.get("special") else USER_DEFINED
        # llama.cpp matches user-defined tokens on the raw text, with real spaces
        pieces[i] = content.replace("\u2581", " ") if types[i] == USER_DEFINED else content
    return vocab


def _bpe_vocab(path: Path, arch: str) -> Vocab:
    data = load_json(path)
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ConversionError(f"{path}: tokenizer model type {model.get('type')!r}; Gemma needs a BPE tokenizer.json")
    base: dict[str, int] = model.get("vocab") or {}
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    size = max([*base.values(), *added.keys()], default=-1) + 1
    tokens: list[str | None] = [None] * size
    for text, i in base.items():
        tokens[i] = text
    types = [NORMAL] * size
    for i, info in added.items():
        tokens[i] = info["content"]
        types[i] = CONTROL if info.get("special") else USER_DEFINED
    for i, t in enumerate(tokens):
        if t is None:
            raise ConversionError(f"{path}: token id {i} is missing from the vocabulary")
        if _BYTE_RE.fullmatch(t):
            types[i] = BYTE
        if t in GEMMA4_VISIBLE:
            types[i] = USER_DEFINED
    merges = []
    for m in model.get("merges") or []:
        merges.append(m if isinstance(m, str) else " ".join(m))
    vocab = Vocab("gemma4", [t for t in tokens if t is not None], [-1000.0] * size, types, path, merges=merges, pre="gemma4")
    for key, text in (("bos", "<bos>"), ("eos", "<eos>"), ("unk", "<unk>"), ("pad", "<pad>")):
        if text in base or any(a["content"] == text for a in added.values()):
            vocab.special_ids[key] = base.get(text, next((i for i, a in added.items() if a["content"] == text), -1))
    return vocab


def write_vocab_fields(writer, vocab: Vocab) -> None:
    """tokenizer.ggml.* keys (and the chat template) on a gguf.GGUFWriter."""
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    setters = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
               "unk": writer.add_unk_token_id, "pad": writer.add_pad_token_id}
    for key, setter in setters.items():
        if key in vocab.special_ids:
            setter(vocab.special_ids[key])
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    writer.add_add_space_prefix(False)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
