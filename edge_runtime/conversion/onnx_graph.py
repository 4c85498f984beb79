"""A small ONNX graph builder whose weights stream to an external data file.

Weights go to disk as they are added (aligned, so onnxruntime can map them) and the
graph keeps only references, so a model larger than protobuf's 2 GB limit is written
without ever holding all its weights in memory.
"""

from __future__ import annotations

from typing import BinaryIO, Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
_ALIGN = 4096
_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
          np.dtype(np.int64): TensorProto.INT64, np.dtype(np.bool_): TensorProto.BOOL}


class GraphBuilder:
    """Nodes, small constants inline, weights in `data` (a file opened for binary writing named `data_name`)."""

    def __init__(self, data: BinaryIO, data_name: str, weight_dtype: np.dtype = np.dtype(np.float32),
                 on_write: Callable[[int], object] | None = None) -> None:
        self.data = data
        self.on_write = on_write
        self.data_name = data_name
        self.weight_dtype = np.dtype(weight_dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._n = 0
        self._consts: dict[tuple, str] = {}

    def _name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def weight(self, name: str, array: np.ndarray) -> str:
        """A float weight stored in the data file (in the builder's weight dtype); the graph sees float32."""
        arr = np.ascontiguousarray(array, dtype=self.weight_dtype)
        pad = -self.data.tell() % _ALIGN
        if pad:
            self.data.write(b"\0" * pad)
        offset = self.data.tell()
        self.data.write(arr.tobytes())
        if self.on_write is not None:
            self.on_write(arr.nbytes)
        tensor = TensorProto()
        tensor.name = name
        tensor.data_type = _TYPES[arr.dtype]
        tensor.dims.extend(arr.shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.data_name), ("offset", str(offset)), ("length", str(arr.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.initializers.append(tensor)
        if arr.dtype != np.float32:
            return self.op("Cast", [name], to=TensorProto.FLOAT)
        return name

    def const(self, value: object, dtype: object = np.float32) -> str:
        """A small constant (shapes, scalars, masks, tables) held in the graph itself."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            name = self._name("const")
            self.initializers.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]

    def ints(self, *values: int) -> str:
        return self.const(list(values), np.int64)

    def op(self, op_type: str, inputs: Sequence[str], **attrs: object) -> str:
        out = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def ops(self, op_type: str, inputs: Sequence[str], n_outputs: int, **attrs: object) -> list[str]:
        base = self._name(op_type.lower())
        outs = [f"{base}_{i}" for i in range(n_outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=base, **attrs))
        return outs

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[tuple[str, onnx.ValueInfoProto]],
              name: str, metadata: dict[str, str]) -> onnx.ModelProto:
        """The finished model; `outputs` pairs each graph value with its declared output."""
        for value, info in outputs:
            self.nodes.append(helper.make_node("Identity", [value], [info.name]))
        graph = helper.make_graph(self.nodes, name, inputs, [info for _, info in outputs], self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edge-runtime")
        model.ir_version = 9
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        return model

    # common blocks
    def linear(self, x: str, weight: np.ndarray, name: str) -> str:
        """x @ weight.T (a PyTorch Linear without bias); stored transposed, as onnxruntime's quantizer expects."""
        return self.op("MatMul", [x, self.weight(name, np.asarray(weight).T)])

    def rms_norm(self, x: str, weight: np.ndarray | None, eps: float, name: str) -> str:
        """x / sqrt(mean(x^2) + eps) (* weight): Gemma 3n's RMSNorm, the weight used as is.

        Written as the pattern onnxruntime fuses into one SimplifiedLayerNormalization kernel
        (Pow 2, ReduceMean, Add, Sqrt, Div, Mul by the weight).
        """
        mean = self.op("ReduceMean", [self.op("Pow", [x, self.const(2.0)]), self.ints(-1)], keepdims=1)
        y = self.op("Div", [x, self.op("Sqrt", [self.op("Add", [mean, self.const(eps)])])])
        return y if weight is None else self.op("Mul", [y, self.weight(name, weight)])

    def clip(self, x: str, limit: float) -> str:
        return self.op("Clip", [x, self.const(-limit), self.const(limit)])

    def dim(self, x: str, axis: int) -> str:
        """The size of `x` along `axis` as a 1-element int64 tensor."""
        return self.op("Slice", [self.op("Shape", [x]), self.ints(axis), self.ints(axis + 1)])

    def slice(self, x: str, axis: int, start: str | int, end: str | int, step: int = 1) -> str:
        start = start if isinstance(start, str) else self.ints(start)
        end = end if isinstance(end, str) else self.ints(end)
        return self.op("Slice", [x, start, end, self.ints(axis), self.ints(step)])
