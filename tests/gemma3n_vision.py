"""Build a Gemma 3n checkpoint with its real MobileNetV5-300M vision tower (random weights) and transformers' image
embeddings for one image, in a child process:

    python tests/gemma3n_vision.py OUT_DIR TEXT_CHECKPOINT

timm builds MobileNetV5 in plain torch but imports torchvision, whose PyPI build here is for another torch and
will not load; this script (and only this process) answers those imports with inert stand-ins, which the
MobileNetV5 code path never calls. The tiny Gemma 3n text model (at E2B's width, 2048, which mtmd requires) and audio tower come from
`gemma3n_tiny`; weights are stored as bf16, as Google's are.
Writes OUT_DIR/checkpoint (safetensors, config.json, preprocessor_config.json, tokenizer), OUT_DIR/image.npy
(768x768 RGB) and OUT_DIR/reference.npy (transformers' `get_image_features`: 256 rows).
"""

from __future__ import annotations

import enum
import importlib.abc
import importlib.machinery
import json
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

IMAGE_SIZE = 768


def stand_in_torchvision() -> None:
    """Let `import timm` succeed without a working torchvision (nothing MobileNetV5 runs comes from it)."""
    try:
        import torchvision  # noqa: F401
        return
    except Exception:
        sys.modules.pop("torchvision", None)

    class _Meta(type):
        def __getattr__(cls, name):
            return _Inert

    class _Inert(metaclass=_Meta):
        def __init__(self, *args, **kwargs) -> None:
            pass

    interpolation = enum.Enum("InterpolationMode", "NEAREST NEAREST_EXACT BILINEAR BICUBIC BOX HAMMING LANCZOS")

    class _Module(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return interpolation if name == "InterpolationMode" else _Inert

    class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path, target=None):
            if name == "torchvision" or name.startswith("torchvision."):
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec):
            module = _Module(spec.name)
            module.__path__ = []
            return module

        def exec_module(self, module) -> None:
            pass

    sys.meta_path.insert(0, _Finder())


def main(out: Path, text_dir: Path) -> None:
    import numpy as np
    import torch
    import transformers  # before the stand-in: transformers must see no torchvision
    from safetensors.torch import save_file

    from convert_support import _randomize
    from gemma3n_tiny import gemma3n_vocabulary, no_vision_tower, tiny_gemma3n_config

    stand_in_torchvision()
    import timm

    config = tiny_gemma3n_config(text_dir, text_hidden=2048)
    with no_vision_tower():
        torch.manual_seed(0)
        model = transformers.Gemma3nForConditionalGeneration(config).eval()
    _randomize(model, 0)
    torch.manual_seed(1)
    encoder = timm.create_model(config.vision_config.architecture, pretrained=False).eval()
    with torch.no_grad():  # RMS norm weights away from 1, as a trained tower has
        for name, p in encoder.named_parameters():
            if p.dim() == 1 and not name.endswith("bias"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape))
    model, encoder = model.to(torch.bfloat16).float(), encoder.to(torch.bfloat16).float()  # stored as bf16
    tensors = {k: v for k, v in model.state_dict().items()
               if not k.startswith("model.vision_tower.") and k != "lm_head.weight"}  # lm_head: tied
    tensors.update({f"model.vision_tower.timm_model.{k}": v for k, v in encoder.state_dict().items()})
    ckpt = out / "checkpoint"
    ckpt.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}, str(ckpt / "model.safetensors"),
              metadata={"format": "pt"})
    config.architectures = ["Gemma3nForConditionalGeneration"]
    config.save_pretrained(ckpt)
    (ckpt / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SiglipImageProcessor", "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "image_seq_length": 256, "do_normalize": False, "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0],
        "do_rescale": True, "rescale_factor": 1 / 255}))
    for f in text_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            (ckpt / f.name).write_bytes(f.read_bytes())
    gemma3n_vocabulary(ckpt)

    image = np.random.default_rng(5).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    pixels = torch.tensor(image, dtype=torch.float32).permute(2, 0, 1)[None] / 255.0
    hidden = config.vision_config.hidden_size
    with torch.no_grad():  # transformers' Gemma3nModel.get_image_features, with the tower it would wrap
        features = encoder.forward_features(pixels)
        features = features.reshape(1, hidden, config.vision_soft_tokens_per_image).permute(0, 2, 1) * hidden**0.5
        reference = model.model.embed_vision(inputs_embeds=features)[0].numpy()
    np.save(out / "image.npy", image)
    np.save(out / "reference.npy", reference)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
