"""Time to first token of an image prompt: ours (`Model.generate([text, Image, text])`) against llama-cpp-python's
own mtmd chat handler (`MTMDChatHandler`, what its Gemma 3 users call), on the same GGUF, projector and PNG, same
run. Also a follow-up turn on the same image: ours reuses the cached image, the handler re-evaluates it.

The model is the tests' tiny Gemma 3 with a SigLIP tower (no real Gemma 3 4B weights can be fetched here), so
the figures measure the pipeline around the encoder (decoding, tokenizing, evaluating) more than the encoder.

    python tools/bench_image_ttft.py [--repeat 5] [--threads 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m.role == 'assistant' else m.role }}\n"
            "{% if m.content is string %}{{ m.content }}{% else %}{% for c in m.content %}"
            "{% if c.type == 'text' %}{{ c.text }}{% else %}{{ c.image_url.url if c.image_url is mapping else "
            "c.image_url }}{% endif %}{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}<start_of_turn>model\n")


class _Factory:
    """A tmp_path_factory for the tests' checkpoint helpers."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def getbasetemp(self) -> Path:
        return self.base

    def mktemp(self, name: str) -> Path:
        path = self.base / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work")
    args = ap.parse_args()

    import llama_cpp
    from llama_cpp.llama_chat_format import MTMDChatHandler

    from convert_support import converted, tiny_gemma3_vision_checkpoint
    from test_media_prompts import encode_png

    from edge_runtime import GenerationSettings, Image, load_model
    from edge_runtime.chat import ChatSession
    from edge_runtime.conversion.mmproj import convert_mmproj

    with tempfile.TemporaryDirectory() as tmp:
        factory = _Factory(Path(args.work or tmp))
        ckpt = tiny_gemma3_vision_checkpoint(factory, max_positions=2048)
        text = converted(factory, ckpt, "f32")
        mmproj = factory.mktemp("bench") / "mmproj.gguf"
        if not mmproj.exists():
            convert_mmproj(ckpt, mmproj, "f32", progress=False)
        png = factory.mktemp("bench") / "photo.png"
        png.write_bytes(encode_png(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
        url = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
        question, follow_up = "What is in this picture?", "And what colour is it?"

        ours, ours_next = [], []
        with load_model(text, n_ctx=1024, n_threads=args.threads, flash_attn=False, mmproj=mmproj) as model:
            for _ in range(args.repeat):
                chat = ChatSession(model, settings=GenerationSettings(temperature=0, max_tokens=1))
                model.reset()
                ours.append(chat.ask([Image(png), question]).metrics.ttft_s)
                ours_next.append(chat.ask(follow_up).metrics.ttft_s)

        class Handler(MTMDChatHandler):
            def _get_chat_template(self, llama_model):
                return TEMPLATE

        theirs, theirs_next = [], []
        llm = llama_cpp.Llama(str(text), n_ctx=1024, n_threads=args.threads, n_threads_batch=args.threads,
                              chat_handler=Handler(str(mmproj), verbose=False, use_gpu=False), verbose=False)
        for _ in range(args.repeat):
            messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                     {"type": "text", "text": question}]}]
            for bucket, msgs in ((theirs, messages), (theirs_next, None)):
                if msgs is None:
                    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": follow_up}]
                t0 = time.perf_counter()
                stream = llm.create_chat_completion(messages=messages, max_tokens=1, temperature=0, stream=True)
                reply = ""
                for chunk in stream:
                    delta = chunk["choices"][0]["delta"].get("content")
                    if delta is not None:
                        bucket.append(time.perf_counter() - t0)
                        reply += delta
                        break
                for _ in stream:
                    pass
        llm.close()

    def ms(values):
        return 1000 * statistics.median(values)

    print(f"image prompt TTFT, tiny Gemma 3 + SigLIP, {args.threads} threads, median of {args.repeat}")
    print(f"{'':<28} {'ours ms':>8} {'llama-cpp-python ms':>20} {'ratio':>6}")
    for name, a, b in (("first turn (image + text)", ours, theirs), ("follow-up on the same image", ours_next, theirs_next)):
        print(f"{name:<28} {ms(a):>8.1f} {ms(b):>20.1f} {ms(a) / ms(b):>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
