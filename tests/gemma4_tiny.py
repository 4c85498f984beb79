"""A tiny random Gemma 4 checkpoint with an audio tower, built with transformers.

Real architecture, toy sizes: a 2-layer text model (n_embd 64) with a small
vocabulary, a 2-layer conformer audio tower and the audio embedder. The
tokenizer is a real byte-fallback BPE `tokenizer.json` holding Gemma 4's
control tokens (`<|turn>`, `<turn|>`, `<|audio>`, `<audio|>`, `<|audio|>` ...),
so converters and llama.cpp treat it like the real one.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
CONTROL = ["<|turn>", "<turn|>", "<|audio>", "<audio|>", "<|audio|>", "<|image>", "<image|>", "<|image|>", "<|video|>"]
VOCAB_SIZE = 384


def _tokenizer(folder: Path) -> dict[str, int]:
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for tok in SPECIALS + CONTROL:
        vocab[tok] = len(vocab)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in "\u2581" + string.ascii_letters + string.digits + ".,:;!?'-\n":
        vocab.setdefault(ch, len(vocab))
    merges = []
    for a, b in [("\u2581", "t"), ("h", "e"), ("\u2581t", "he"), ("\u2581", "a"), ("i", "n"), ("e", "r"), ("o", "n"), ("r", "e"),
                 ("a", "n"), ("\u2581", "s"), ("\u2581", "w"), ("o", "r"), ("e", "n"), ("\u2581", "T"), ("T", "r"), ("a", "u"),
                 ("d", "i"), ("i", "o"), ("t", "h"), ("i", "s"), ("\u2581", "m"), ("o", "d"), ("e", "l"), ("u", "s")]:
        merged = a + b
        if merged not in vocab:
            vocab[merged] = len(vocab)
            merges.append((a, b))
    for i in range(len(vocab), VOCAB_SIZE):
        vocab[f"<unused{i}>"] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        additional_special_tokens=CONTROL,
    )
    fast.add_bos_token = True
    fast.save_pretrained(folder)
    return vocab


def build_tiny_gemma4(folder: Path, *, seed: int = 0, with_audio: bool = True, bf16: bool = False,
                      hidden_size: int = 64) -> Path:
    """Write the checkpoint (config.json, model.safetensors, tokenizer) to `folder`.

    bf16=True stores the weights in bfloat16, as the real Gemma 4 checkpoints are. hidden_size=1536 gives the
    text model Gemma 4 E2B's width, by which llama.cpp decides that image tokens attend causally (as in
    transformers for E2B/E4B).
    """
    import torch
    from transformers.models.gemma4 import Gemma4Config, Gemma4ForConditionalGeneration

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _tokenizer(folder)
    torch.manual_seed(seed)
    text = dict(
        vocab_size=VOCAB_SIZE,
        vocab_size_per_layer_input=VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        global_head_dim=32,
        hidden_size_per_layer_input=8,
        sliding_window=32,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=4096,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    config = Gemma4Config(
        text_config=text,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           num_key_value_heads=2, head_dim=16),
        audio_config=(
            # subsampling_conv_channels[0] must be 128 (= mel bins): HF sizes input_proj_linear with it.
            dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, subsampling_conv_channels=[128, 8],
                 output_proj_dims=48)
            if with_audio else None
        ),
        boi_token_id=vocab["<|image>"],
        eoi_token_id=vocab["<image|>"],
        image_token_id=vocab["<|image|>"],
        video_token_id=vocab["<|video|>"],
        boa_token_id=vocab["<|audio>"],
        eoa_token_index=vocab["<audio|>"],
        audio_token_id=vocab["<|audio|>"],
    )
    model = Gemma4ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.state_dict().items():  # clamps are buffers, not parameters
            if "audio_tower" not in name:
                continue
            # Random init leaves the clamps at +-inf and norms at 1: make them bite, so that
            # the parity test checks they are converted and applied.
            if name.endswith(("input_min", "output_min")):
                p.fill_(-3.0)
            elif name.endswith(("input_max", "output_max")):
                p.fill_(3.0)
            elif name.endswith(".weight") and p.ndim == 1:
                p.uniform_(0.5, 1.5)
            elif name.endswith("per_dim_scale"):
                p.normal_(0.0, 0.5)
    if bf16:
        model = model.to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    # Real Gemma 4 configs name the full-attention head size; this transformers drops it on save.
    config_path = folder / "config.json"
    saved = json.loads(config_path.read_text())
    saved["text_config"]["global_head_dim"] = text["global_head_dim"]
    saved["text_config"]["per_layer_config"] = {
        str(i): {"head_dim": text["global_head_dim"]} for i, t in enumerate(text["layer_types"]) if t == "full_attention"
    }
    config_path.write_text(json.dumps(saved, indent=2))
    # Help converters that look for these next to config.json.
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 2, "eos_token_id": [1, vocab["<turn|>"]], "pad_token_id": 0}))
    return folder
