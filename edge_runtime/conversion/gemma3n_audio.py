"""Gemma 3n's audio encoder as an ONNX model, built from the safetensors without torch.

llama.cpp's mtmd does not run Gemma 3n's audio tower, so the runtime runs it in
onnxruntime and feeds its rows to llama.cpp as input embeddings. The graph is
transformers' `Gemma3nModel.get_audio_features` (`models/gemma3n/modeling_gemma3n.py`)
op for op:
- subsampling: two Conv2d 3x3 stride 2 (time padded (0, 2), frequency (1, 1)), each
  with a cumulative group norm and ReLU, then a Linear to the conformer width;
- conformer blocks: half-step FFN, chunked local self-attention with relative
  positions and a logit soft cap, light convolution (GLU, causal depthwise conv),
  half-step FFN, RMSNorm; the overlapping key windows are cut from two shifted
  slices of one reshape;
- time reduction `[:, ::4]` (applied inside the last block, after its depthwise
  convolution: the rest of the block works step by step), then the multimodal embedder
  (soft-embedding norm, projection, scale-free norm); frames marked invalid get the padding row.

Inputs: `input_features` [1, T, 128] float32 (log-mel, `audio.gemma3n_features`) and
`input_features_mask` [1, T] bool (True where the frame holds audio). Outputs:
`audio_embeddings` [1, ceil(S/4), text width] and `special_embeddings` [2, text width]:
the embedder's hard rows for `<end_of_audio>` (row 0) and for padding (the last row),
which transformers puts after a clip's frames up to 188 positions.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.conversion.checkpoint import Checkpoint, TensorRef
from edge_runtime.errors import ConversionError

PREFIX = "model.audio_tower."
EMBEDDER = "model.embed_audio."
_FLOAT_MIN = float(np.finfo(np.float32).min)


@dataclass(frozen=True)
class AudioEncoderConfig:
    """The fields of Gemma 3n's `audio_config` (and the text width) the graph needs."""

    hidden: int
    n_heads: int
    n_layers: int
    n_mels: int
    chunk: int
    context_left: int
    context_right: int
    logit_cap: float
    conv_kernel: int
    reduction: int
    residual_weight: float
    clip: float
    rms_eps: float
    group_norm_eps: float
    conv_channels: tuple[int, int]
    conv_kernels: tuple[tuple[int, int], tuple[int, int]]
    conv_strides: tuple[tuple[int, int], tuple[int, int]]
    vocab_size: int
    vocab_offset: int
    text_hidden: int
    soft_tokens: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_heads

    @property
    def time_stride(self) -> int:
        return math.prod(s[0] for s in self.conv_strides)

    @classmethod
    def from_config(cls, config: dict, where: Path) -> "AudioEncoderConfig":
        audio = config.get("audio_config")
        text = config.get("text_config")
        if config.get("model_type") != "gemma3n" or not isinstance(audio, dict) or not isinstance(text, dict):
            raise ConversionError(f"{where} is not a Gemma 3n checkpoint with an audio tower "
                                  f"(model_type {config.get('model_type')!r}); ONNX output is for Gemma 3n audio")
        get = lambda key, default: audio.get(key, default)  # noqa: E731 (transformers' defaults)
        try:
            return cls(
                hidden=int(get("hidden_size", 1536)), n_heads=int(get("conf_num_attention_heads", 8)),
                n_layers=int(get("conf_num_hidden_layers", 12)), n_mels=int(get("input_feat_size", 128)),
                chunk=int(get("conf_attention_chunk_size", 12)),
                context_left=int(get("conf_attention_context_left", 13)),
                context_right=int(get("conf_attention_context_right", 0)),
                logit_cap=float(get("conf_attention_logit_cap", 50.0)), conv_kernel=int(get("conf_conv_kernel_size", 5)),
                reduction=int(get("conf_reduction_factor", 4)), residual_weight=float(get("conf_residual_weight", 0.5)),
                clip=float(get("gradient_clipping", 1e10)), rms_eps=float(get("rms_norm_eps", 1e-6)),
                group_norm_eps=float(get("sscp_conv_group_norm_eps", 1e-3)),
                conv_channels=tuple(int(c) for c in get("sscp_conv_channel_size", (128, 32))),
                conv_kernels=tuple(tuple(int(v) for v in k) for k in get("sscp_conv_kernel_size", ((3, 3), (3, 3)))),
                conv_strides=tuple(tuple(int(v) for v in s) for s in get("sscp_conv_stride_size", ((2, 2), (2, 2)))),
                vocab_size=int(get("vocab_size", 128)), vocab_offset=int(get("vocab_offset", 262272)),
                text_hidden=int(text["hidden_size"]), soft_tokens=int(config.get("audio_soft_tokens_per_image", 188)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConversionError(f"{where}: unreadable Gemma 3n audio_config ({exc})") from None


class _Weights:
    """Checkpoint tensors by their name under a prefix, as float32 (bf16 from its raw bits)."""

    def __init__(self, tensors: dict[str, TensorRef], where: Path) -> None:
        self.tensors = tensors
        self.where = where
        self.used: set[str] = set()

    def __call__(self, name: str) -> np.ndarray:
        ref = self.tensors.get(name)
        if ref is None:
            raise ConversionError(f"{self.where}: tensor {name} is missing; is this a complete Gemma 3n checkpoint?")
        self.used.add(name)
        return ref.to_f32()


def plan_bytes(tensors: dict[str, TensorRef]) -> int:
    """Bytes of the tensors the encoder reads, as float32."""
    return sum(4 * math.prod(r.shape) for n, r in tensors.items() if n.startswith((PREFIX, EMBEDDER)))


def relative_position_table(cfg: AudioEncoderConfig, pos_proj: np.ndarray) -> np.ndarray:
    """pos_proj(sinusoid(relative positions L..-R)) as [heads, head_dim, F]: weights only, so precomputed."""
    max_back = max(0, cfg.context_left - 1)
    positions = np.arange(max_back, -cfg.context_right - 1, -1, dtype=np.float32)[:, None]
    n_scales = cfg.hidden // 2
    increment = math.log(1.0e4) / max(n_scales - 1, 1)
    inv = np.exp(np.arange(n_scales, dtype=np.float32) * np.float32(-increment)).astype(np.float32)
    scaled = positions * inv[None, :]
    signal = np.concatenate([np.sin(scaled), np.cos(scaled)], axis=-1).astype(np.float32)
    projected = signal @ pos_proj.T  # [F, heads * head_dim]
    return projected.reshape(len(positions), cfg.n_heads, cfg.head_dim).transpose(1, 2, 0).copy()


def local_causal_mask(cfg: AudioEncoderConfig) -> np.ndarray:
    """[chunk, context] True where a query may attend to a key of its window (transformers' construction)."""
    max_back, right = max(0, cfg.context_left - 1), cfg.context_right
    context = cfg.chunk + max_back + right
    lower = np.tril(np.ones((context, cfg.chunk), dtype=bool)).T
    upper = np.tril(np.ones((cfg.chunk, context), dtype=bool), k=max_back + right)
    return lower & upper


def build_graph(b, cfg: AudioEncoderConfig, w: _Weights, on_layer=None):
    """Add the encoder to GraphBuilder `b`; returns the graph's (inputs, outputs)."""
    from onnx import TensorProto, helper

    feats, mask = "input_features", "input_features_mask"
    inputs = [helper.make_tensor_value_info(feats, TensorProto.FLOAT, [1, "frames", cfg.n_mels]),
              helper.make_tensor_value_info(mask, TensorProto.BOOL, [1, "frames"])]
    sub = PREFIX + "subsample_conv_projection."
    x = b.op("Unsqueeze", [feats, b.ints(1)])  # [1, 1, T, mels]
    freq = cfg.n_mels
    for i in range(2):
        (kh, kw), (sh, sw) = cfg.conv_kernels[i], cfg.conv_strides[i]
        x = b.op("Pad", [x, b.ints(0, 0, 0, 1, 0, 0, kh - 1, 1)])
        x = b.op("Conv", [x, b.weight(f"conv_{i}", w(f"{sub}conv_{i}.conv.weight"))], strides=[sh, sw])
        freq = (freq + 2 - kw) // sw + 1
        x = _cumulative_group_norm(b, x, w(f"{sub}conv_{i}.norm.weight"), freq * cfg.conv_channels[i],
                                   cfg.group_norm_eps, f"conv_{i}_norm")
    x = b.op("Transpose", [x], perm=[0, 2, 3, 1])  # [1, S, freq, channels]
    x = b.op("Reshape", [x, b.ints(1, -1, freq * cfg.conv_channels[1])])
    x = b.linear(x, w(f"{sub}input_proj_linear.weight"), "input_proj")

    # validity of each subsampled step: the mel mask at every time_stride-th frame (clamped)
    n_frames = b.dim(mask, 1)
    steps = b.dim(x, 1)
    idx = b.op("Mul", [b.op("Range", [b.ints(0), b.op("Squeeze", [steps]), b.const(1, np.int64)]),
                       b.const(cfg.time_stride, np.int64)])
    idx = b.op("Min", [idx, b.op("Squeeze", [b.op("Sub", [n_frames, b.ints(1)])])])
    valid = b.op("Cast", [b.op("Gather", [mask, idx], axis=1)], to=TensorProto.FLOAT)  # [1, S]

    for layer in range(cfg.n_layers):
        last = layer == cfg.n_layers - 1  # the time reduction happens inside the last block
        x = _conformer_block(b, cfg, w, x, valid, steps, f"{PREFIX}conformer.{layer}.", f"l{layer}",
                             keep_every=cfg.reduction if last else 1)
        if on_layer:
            on_layer(layer)

    valid = b.slice(valid, 1, 0, 2**62, cfg.reduction)
    projection = b.weight("embedding_projection", w(EMBEDDER + "embedding_projection.weight").T)
    soft = b.rms_norm(x, w(EMBEDDER + "soft_embedding_norm.weight"), cfg.rms_eps, "soft_norm")
    emb = b.rms_norm(b.op("MatMul", [soft, projection]), None, cfg.rms_eps, "")
    rows = w(EMBEDDER + "embedding.weight")[[0, cfg.vocab_size - 1]]  # <end_of_audio>, padding
    hard = b.rms_norm(b.weight("hard_rows", rows), w(EMBEDDER + "hard_embedding_norm.weight"), cfg.rms_eps, "hard_norm")
    special = b.rms_norm(b.op("MatMul", [hard, projection]), None, cfg.rms_eps, "")
    pad_row = b.slice(special, 0, 1, 2)
    is_valid = b.op("Unsqueeze", [b.op("Greater", [valid, b.const(0.5)]), b.ints(-1)])
    emb = b.op("Where", [is_valid, emb, pad_row])
    outputs = [(emb, helper.make_tensor_value_info("audio_embeddings", TensorProto.FLOAT,
                                                   [1, "positions", cfg.text_hidden])),
               (special, helper.make_tensor_value_info("special_embeddings", TensorProto.FLOAT, [2, cfg.text_hidden]))]
    return inputs, outputs


def _cumulative_group_norm(b, x: str, weight: np.ndarray, per_step: int, eps: float, name: str) -> str:
    """[1, C, T, F] -> normalized by the mean and variance of all steps up to each one, * weight, ReLU."""
    y = b.op("Transpose", [x], perm=[0, 2, 3, 1])  # [1, T, F, C]
    total = b.op("ReduceSum", [y, b.ints(2, 3)], keepdims=1)
    count = b.op("Mul", [b.op("CumSum", [b.op("ConstantOfShape", [b.op("Shape", [total])],
                                              value=_one_tensor()), b.const(1, np.int64)]),
                         b.const(float(per_step))])
    mean = b.op("Div", [b.op("CumSum", [total, b.const(1, np.int64)]), count])
    diff = b.op("Sub", [y, mean])
    sq = b.op("ReduceSum", [b.op("Mul", [diff, diff]), b.ints(2, 3)], keepdims=1)
    var = b.op("Div", [b.op("CumSum", [sq, b.const(1, np.int64)]), count])
    y = b.op("Div", [diff, b.op("Sqrt", [b.op("Add", [var, b.const(eps)])])])
    y = b.op("Relu", [b.op("Mul", [y, b.weight(name, weight)])])
    return b.op("Transpose", [y], perm=[0, 3, 1, 2])


def _one_tensor():
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ones(1, dtype=np.float32))


def _ffn(b, cfg: AudioEncoderConfig, w: _Weights, x: str, p: str, name: str) -> str:
    y = b.rms_norm(b.clip(x, cfg.clip), w(p + "pre_layer_norm.weight"), 1e-6, name + "_pre")
    y = b.linear(y, w(p + "ffw_layer_1.weight"), name + "_up")
    y = b.op("Mul", [y, b.op("Sigmoid", [y])])
    y = b.clip(b.linear(y, w(p + "ffw_layer_2.weight"), name + "_down"), cfg.clip)
    y = b.rms_norm(y, w(p + "post_layer_norm.weight"), 1e-6, name + "_post")
    return b.op("Add", [x, b.op("Mul", [y, b.const(cfg.residual_weight)])])


def _windows(b, cfg: AudioEncoderConfig, x: str, tail: list[int], n_blocks: str) -> str:
    """[1, S, *tail] -> [1, U, context, *tail]: each block's keys with its left (and right) context."""
    max_back = max(0, cfg.context_left - 1)
    context = cfg.chunk + max_back + cfg.context_right
    k = -(-context // cfg.chunk)  # blocks a window spans
    right = max(0, k * cfg.chunk - 1 - max_back)
    pads = [0, max_back] + [0] * len(tail) + [0, right] + [0] * len(tail)
    y = b.op("Pad", [x, b.ints(*pads)])
    total = b.op("Add", [n_blocks, b.ints(k - 1)])
    y = b.slice(y, 1, 0, b.op("Mul", [total, b.ints(cfg.chunk)]))
    y = b.op("Reshape", [y, b.ints(1, -1, cfg.chunk, *tail)])  # [1, U + k - 1, chunk, *tail]
    parts = [b.slice(y, 1, j, b.op("Add", [n_blocks, b.ints(j)])) for j in range(k)]
    y = b.op("Concat", parts, axis=2) if k > 1 else parts[0]
    return b.slice(y, 2, 0, context)


def _attention(b, cfg: AudioEncoderConfig, w: _Weights, x: str, valid: str, steps: str, p: str, name: str) -> str:
    heads, hd, chunk = cfg.n_heads, cfg.head_dim, cfg.chunk
    max_back = max(0, cfg.context_left - 1)
    context = chunk + max_back + cfg.context_right
    q = b.op("Reshape", [b.linear(x, w(p + "q_proj.weight"), name + "_q"), b.ints(1, -1, heads, hd)])
    k = b.op("Reshape", [b.linear(x, w(p + "k_proj.weight"), name + "_k"), b.ints(1, -1, heads, hd)])
    v = b.op("Reshape", [b.linear(x, w(p + "v_proj.weight"), name + "_v"), b.ints(1, -1, heads, hd)])
    per_dim = w(p + "per_dim_scale")
    scale = (hd**-0.5 / math.log(2.0)) * np.log1p(np.exp(per_dim.astype(np.float64)))  # q_scale * softplus
    q = b.op("Mul", [q, b.const(scale.astype(np.float32))])

    n_blocks = b.op("Div", [b.op("Add", [steps, b.ints(chunk - 1)]), b.ints(chunk)])
    qb = b.op("Pad", [q, b.ints(0, 0, 0, 0, 0, chunk - 1, 0, 0)])
    qb = b.slice(qb, 1, 0, b.op("Mul", [n_blocks, b.ints(chunk)]))
    qb = b.op("Reshape", [qb, b.ints(1, -1, chunk, heads, hd)])  # [1, U, W, N, H]
    kw = _windows(b, cfg, k, [heads, hd], n_blocks)  # [1, U, C, N, H]
    vw = _windows(b, cfg, v, [heads, hd], n_blocks)
    valid_w = _windows(b, cfg, valid, [], n_blocks)  # [1, U, C]

    qp = b.op("Transpose", [qb], perm=[0, 3, 1, 2, 4])  # [1, N, U, W, H]
    ac = b.op("MatMul", [qp, b.op("Transpose", [kw], perm=[0, 3, 1, 4, 2])])  # [1, N, U, W, C]
    table = relative_position_table(cfg, w(p + "relative_position_embedding.pos_proj.weight"))
    f_span = table.shape[-1]
    bd = b.op("MatMul", [b.op("Reshape", [qp, b.ints(1, heads, -1, hd)]), b.weight(name + "_rel_pos", table)])
    bd = b.op("Reshape", [bd, b.ints(1, heads, -1, chunk, f_span)])
    bd = b.op("Pad", [bd, b.ints(0, 0, 0, 0, 0, 0, 0, 0, 0, context + 1 - f_span)])
    bd = b.op("Reshape", [bd, b.ints(1, heads, -1, chunk * (context + 1))])
    bd = b.slice(bd, 3, 0, chunk * context)
    bd = b.op("Reshape", [bd, b.ints(1, heads, -1, chunk, context)])
    logits = b.op("Add", [ac, bd])
    cap = b.const(cfg.logit_cap)
    logits = b.op("Mul", [b.op("Tanh", [b.op("Div", [logits, cap])]), cap])
    allowed = b.op("And", [b.op("Unsqueeze", [b.op("Greater", [valid_w, b.const(0.5)]), b.ints(1, 3)]),
                           b.const(local_causal_mask(cfg), np.bool_)])
    logits = b.op("Where", [allowed, logits, b.const(_FLOAT_MIN)])
    probs = b.op("Softmax", [logits], axis=-1)
    ctx = b.op("MatMul", [b.op("Transpose", [probs], perm=[0, 2, 1, 3, 4]),
                          b.op("Transpose", [vw], perm=[0, 1, 3, 2, 4])])  # [1, U, N, W, H]
    ctx = b.op("Transpose", [ctx], perm=[0, 1, 3, 2, 4])
    ctx = b.op("Reshape", [ctx, b.ints(1, -1, heads * hd)])
    return b.slice(ctx, 1, 0, steps)


def _conformer_block(b, cfg: AudioEncoderConfig, w: _Weights, x: str, valid: str, steps: str, p: str,
                     name: str, keep_every: int = 1) -> str:
    """One conformer block; with keep_every > 1 only every keep_every-th step leaves it.

    Everything after the depthwise convolution works step by step, so the last block applies
    the encoder's time reduction there and runs linear_end and the second FFN (about 3% of the
    encoder's arithmetic) on the kept steps only.
    """
    x = _ffn(b, cfg, w, x, p + "ffw_layer_start.", name + "_ffn1")
    a = p + "attention."
    y = b.rms_norm(b.clip(x, cfg.clip), w(a + "pre_attn_norm.weight"), 1e-6, name + "_attn_pre")
    y = _attention(b, cfg, w, y, valid, steps, a + "attn.", name + "_attn")
    y = b.clip(b.linear(y, w(a + "post.weight"), name + "_attn_out"), cfg.clip)
    x = b.op("Add", [x, b.rms_norm(y, w(a + "post_norm.weight"), 1e-6, name + "_attn_post")])

    x = b.op("Mul", [x, b.op("Unsqueeze", [valid, b.ints(-1)])])
    c = p + "lconv1d."
    y = b.rms_norm(x, w(c + "pre_layer_norm.weight"), cfg.rms_eps, name + "_conv_pre")
    y = b.linear(y, w(c + "linear_start.weight"), name + "_conv_start")
    first, second = b.ops("Split", [y], 2, axis=-1, num_outputs=2)
    y = b.op("Mul", [first, b.op("Sigmoid", [second])])
    y = b.op("Transpose", [y], perm=[0, 2, 1])  # [1, D, S]
    y = b.op("Pad", [y, b.ints(0, 0, cfg.conv_kernel - 1, 0, 0, 0)])
    y = b.op("Conv", [y, b.weight(name + "_conv_dw", w(c + "depthwise_conv1d.weight"))], group=cfg.hidden)
    y = b.clip(b.op("Transpose", [y], perm=[0, 2, 1]), cfg.clip)
    y = b.rms_norm(y, w(c + "conv_norm.weight"), cfg.rms_eps, name + "_conv_norm")
    y = b.op("Mul", [y, b.op("Sigmoid", [y])])
    if keep_every > 1:
        x, y = b.slice(x, 1, 0, 2**62, keep_every), b.slice(y, 1, 0, 2**62, keep_every)
    x = b.op("Add", [x, b.linear(y, w(c + "linear_end.weight"), name + "_conv_end")])

    x = _ffn(b, cfg, w, x, p + "ffw_layer_end.", name + "_ffn2")
    return b.rms_norm(b.clip(x, cfg.clip), w(p + "norm.weight"), 1e-6, name + "_norm")


OUTTYPES = ("f32", "f16", "int8")
_INT8_KEEP_F32 = ("input_proj", "embedding_projection")
KIND = "gemma3n-audio-encoder"


def convert_audio_encoder(src: str | os.PathLike[str], out: str | os.PathLike[str], outtype: str = "f32", *,
                          progress: bool = True) -> Path:
    """Write Gemma 3n's audio encoder and embedder from checkpoint folder `src` as ONNX model `out`.

    outtype: f32, f16 (weights stored as f16: half the file; onnxruntime holds and computes them as
    f32) or int8 (onnxruntime's dynamic quantization of the MatMul weights, one file). f32 and f16
    weights sit in a data file beside the model (`<out>.<tag>.data`), so models past protobuf's
    2 GB limit are written too; the pair appears atomically (the data first, then the model that
    names it).
    """
    import onnx

    from edge_runtime.conversion.mmproj import _read_config
    from edge_runtime.conversion.onnx_graph import GraphBuilder
    from edge_runtime.conversion.writer import atomic_path, check_free_space, check_writable, progress_bar

    src, out = Path(src), Path(out)
    if outtype not in OUTTYPES:
        raise ConversionError(f"unknown outtype {outtype!r} for an ONNX encoder; use one of {', '.join(OUTTYPES)}")
    if not src.is_dir():
        raise ConversionError(f"checkpoint folder {src} does not exist")
    config, config_path = _read_config(src)
    cfg = AudioEncoderConfig.from_config(config, config_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    check_writable(out.parent)
    with Checkpoint(src) as ckpt:
        total = plan_bytes(ckpt.tensors)
        check_free_space(out.parent, total // (2 if outtype == "f16" else 1) * (2 if outtype == "int8" else 1)
                         + (1 << 20), f"the audio encoder {out.name}")
        metadata = {"edge_runtime.kind": KIND, "edge_runtime.outtype": outtype, "source": src.name,
                    "soft_tokens": str(cfg.soft_tokens), "end_of_audio_id": str(cfg.vocab_offset),
                    "text_hidden_size": str(cfg.text_hidden), "sample_rate": "16000", "mel_bins": str(cfg.n_mels)}
        stage = out if outtype != "int8" else out.with_name(f".{out.name}.{os.getpid()}.f32.onnx")
        data_name = f"{stage.name}.{os.urandom(4).hex()}.data"
        data_path = out.parent / data_name
        with progress_bar(total, f"audio encoder {out.name}", progress) as bar:
            try:
                with atomic_path(data_path) as tmp_data, open(tmp_data, "wb") as data:
                    b = GraphBuilder(data, data_name, np.float16 if outtype == "f16" else np.float32,
                                     on_write=(lambda n: bar.update(n)) if bar is not None else None)
                    weights = _Weights(ckpt.tensors, src)
                    inputs, outputs = build_graph(b, cfg, weights)
                    model = b.model(inputs, outputs, "gemma3n_audio_encoder", metadata)
                if outtype == "int8":
                    _quantize(model, stage, out)
                else:
                    with atomic_path(out) as tmp:
                        onnx.save_model(model, str(tmp))
            except BaseException:
                data_path.unlink(missing_ok=True)
                raise
            finally:
                if outtype == "int8":
                    data_path.unlink(missing_ok=True)
                    stage.unlink(missing_ok=True)
    for old in out.parent.glob(f"{out.name}.*.data"):  # the data of the model this one replaced
        if old.name != data_name:
            old.unlink(missing_ok=True)
    return out


def _quantize(model, stage: Path, out: Path) -> None:
    """int8 weights for every MatMul through onnxruntime's dynamic quantizer, written atomically as one file."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edge_runtime.conversion.writer import atomic_path

    matrices = {t.name for t in model.graph.initializer if len(t.dims) == 2}
    # per-channel int8 needs a 2-D weight: the relative-position table (3-D) stays f32. So do the first and
    # the last projection (1% of the arithmetic): with them in f32 the error to f32 drops by a sixth
    # (max 7.3e-2 -> 6.0e-2 relative at E2B size) at no measurable cost in time
    keep = [n.name for n in model.graph.node if n.op_type == "MatMul"
            and (n.input[1] not in matrices or n.input[1] in _INT8_KEEP_F32)]
    onnx.save_model(model, str(stage))
    # the quantizer advises (on the root logger) a pre-processing pass meant for vision models: not for users
    advice = _DropMessage("Please consider to run pre-processing")
    logging.getLogger().addFilter(advice)
    try:
        with atomic_path(out) as tmp:
            quantize_dynamic(str(stage), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                             per_channel=True, nodes_to_exclude=keep, extra_options={"MatMulConstBOnly": True})
    finally:
        logging.getLogger().removeFilter(advice)


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)
