"""A tiny random Gemma3nForConditionalGeneration with an audio tower, built with transformers.

The vision tower (MobileNetV5) needs timm, which cannot be imported here; it is replaced by an empty module
while the model is built (its weights are not needed by anything that reads the checkpoint: the text
converter and the audio encoder converter read their own tensors only).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

START_OF_AUDIO = 256000
AUDIO = dict(hidden_size=64, conf_num_attention_heads=2, conf_num_hidden_layers=2, sscp_conv_channel_size=[8, 4],
             rms_norm_eps=1e-6, conf_attention_chunk_size=12, conf_attention_context_left=13,
             conf_attention_context_right=0)


@contextlib.contextmanager
def no_vision_tower():
    import torch
    import transformers
    from transformers.models.gemma3n import modeling_gemma3n

    real = modeling_gemma3n.AutoModel.from_config

    def from_config(config, *args, **kwargs):
        if isinstance(config, transformers.Gemma3nVisionConfig):
            return torch.nn.Module()
        return real(config, *args, **kwargs)

    modeling_gemma3n.AutoModel.from_config = from_config
    try:
        yield
    finally:
        modeling_gemma3n.AutoModel.from_config = real


def tiny_gemma3n_config(text_dir: Path, *, text_hidden: int | None = None, **audio_overrides):
    """text_hidden=2048 gives the text model Gemma 3n E2B's width, which llama.cpp's mtmd requires of a
    MobileNetV5 projector (it compares the text width with the vision tower's, 2048)."""
    import transformers

    text = {k: v for k, v in json.loads((text_dir / "config.json").read_text()).items()
            if k not in ("architectures", "model_type", "transformers_version", "dtype", "torch_dtype")}
    text["max_position_embeddings"] = 1024
    if text_hidden:
        text["hidden_size"] = text_hidden
    return transformers.Gemma3nConfig(text_config=transformers.Gemma3nTextConfig(**text),
                                      audio_config=transformers.Gemma3nAudioConfig(**{**AUDIO, **audio_overrides}))


def build_tiny_gemma3n(path: Path, text_dir: Path, seed: int = 0) -> Path:
    """Save the model (safetensors) with the tokenizer files of `text_dir` (a tiny Gemma 3n text checkpoint)."""
    import torch
    import transformers

    from convert_support import _randomize

    with no_vision_tower():
        torch.manual_seed(seed)
        model = transformers.Gemma3nForConditionalGeneration(tiny_gemma3n_config(text_dir)).eval()
    _randomize(model, seed)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    for f in text_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copy(f, path / f.name)
    gemma3n_vocabulary(path)
    return path


def gemma3n_vocabulary(path: Path) -> None:
    """Give the (Gemma 3) tokenizer Gemma 3n's audio token: id 256000 is <start_of_audio> there."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((path / "tokenizer.model").read_bytes())
    proto.pieces[START_OF_AUDIO].piece = "<start_of_audio>"
    (path / "tokenizer.model").write_bytes(proto.SerializeToString())
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"][str(START_OF_AUDIO)]["content"] = "<start_of_audio>"
    (path / "tokenizer_config.json").write_text(json.dumps(config))


def load_tiny_gemma3n(path: Path):
    import torch
    import transformers

    with no_vision_tower():
        return transformers.Gemma3nForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
