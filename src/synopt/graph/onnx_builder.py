"""The machinery behind :func:`synopt.graph.onnx_import.import_onnx`: one fx graph under construction.

Every ONNX value is held in ``_Builder.env`` as one of

* a ``numpy`` array: a constant (initializer, ``Constant`` node or a folded computation on constants);
* a *symbolic shape*: a numpy array of ``dtype=object`` holding ints and the :data:`BATCH` marker (what ``Shape`` of
  a runtime tensor and the Gather/Unsqueeze/Concat chains built on it evaluate to);
* a :class:`Val`: a runtime tensor, i.e. an ``fx.Node`` of the graph being built.  Runtime tensors always carry the
  batch on axis 0.  Every node is evaluated eagerly on an example batch, so per-sample shapes are always known.
"""

from __future__ import annotations

import keyword
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx
import torch
import torch.fx as fx
import torch.nn as nn
from onnx import helper, numpy_helper


class OnnxImportError(ValueError):
    """Any failure of :func:`import_onnx`; the message names the ONNX node (name and op_type) and what to do."""


class _BatchMarker:
    """The batch size inside symbolic shapes (the imported module accepts any batch)."""

    def __repr__(self) -> str:
        return "N"

    def __reduce__(self):  # a singleton, even through copies
        return "BATCH"


BATCH = _BatchMarker()
EXAMPLE_BATCH = 2  # the batch the graph is evaluated on while it is built


@dataclass(frozen=True)
class Val:
    """A runtime tensor. ``nhwc``: the ONNX value is NHWC while the torch tensor is already NCHW (input prefix)."""

    node: fx.Node
    nhwc: bool = False


def is_sym(v: Any) -> bool:
    return isinstance(v, np.ndarray) and v.dtype == object


def is_const(v: Any) -> bool:
    return isinstance(v, np.ndarray) and v.dtype != object


def node_label(n: onnx.NodeProto) -> str:
    return f"node {n.name or '<unnamed>'!r} ({n.op_type})"


def attrs(n: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in n.attribute:
        if a.type == onnx.AttributeProto.GRAPH or a.type == onnx.AttributeProto.GRAPHS:
            out[a.name] = None  # subgraphs (If/Loop) are never supported; the op handler refuses
            continue
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def sanitize(name: str, fallback: str) -> str:
    """A readable Python identifier from an ONNX node name ('/layer1/conv/Conv' -> 'layer1_conv_Conv')."""
    name = re.sub(r"^node_", "", name or "")
    name = re.sub(r"\W+", "_", name).strip("_")
    if not name:
        name = fallback
    if name[0].isdigit():
        name = f"n{name}"
    if keyword.iskeyword(name):
        name += "_"
    return name


# Ops folded with onnx's reference implementation when all their inputs are constants (weights stored as
# computations, shape arithmetic of the legacy exporter).  Ops that can create large tensors are size-checked.
FOLDABLE = frozenset({
    "Identity", "Cast", "CastLike", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Gather", "Slice",
    "Add", "Sub", "Mul", "Div", "Neg", "Sqrt", "Reciprocal", "Pow", "Abs", "Exp", "Log", "Flatten", "Shape", "Size",
    "Min", "Max", "Equal", "Less", "Greater", "Where", "Not", "And", "Or", "Floor", "Ceil", "Round", "Clip",
    "ReduceProd", "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "MatMul", "Range", "ConstantOfShape",
    "Expand", "Tile", "DequantizeLinear", "Split", "Sign", "Mod",
})
MAX_FOLD_ELEMENTS = 50_000_000
_WEIGHT_OPS = ("Conv", "Gemm", "MatMul", "BatchNormalization")


class _Builder:
    """Holds the fx graph under construction, the ONNX value environment and the example evaluation."""

    def __init__(self, opset: int, fixed_batch: int | None, notes: list[str]):
        self.opset = opset
        self.fixed_batch = fixed_batch
        self.notes = notes
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.env: dict[str, Any] = {}
        self.ex: dict[fx.Node, Any] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.keep: set[str] = set()  # values that must survive (the selected output)
        self.cur: onnx.NodeProto | None = None
        self.traced: list[tuple[str, fx.Node, onnx.NodeProto]] = []  # (onnx value, fx node, producer) for diagnostics
        self.folded_pads: dict[str, tuple[Val, list[int], list[int]]] = {}

    # ---- errors ---------------------------------------------------------------------------------------------------
    def fail(self, what: str, advice: str = "") -> OnnxImportError:
        n = self.cur
        where = f"{node_label(n)}, opset {self.opset}: " if n is not None else ""
        return OnnxImportError(f"{where}{what}{'. ' + advice if advice else ''}")

    # ---- inputs ---------------------------------------------------------------------------------------------------
    def inp(self, i: int) -> Any:
        """Input ``i`` of the current node (None when absent or given as '')."""
        n = self.cur
        if i >= len(n.input) or not n.input[i]:
            return None
        if n.input[i] not in self.env:
            raise self.fail(f"input {n.input[i]!r} is not produced by any node, initializer or graph input",
                            "the model is malformed or uses a second graph input; re-export it")
        return self.env[n.input[i]]

    def val(self, i: int) -> Val:
        v = self.inp(i)
        if not isinstance(v, Val):
            raise self.fail(f"input {i} ({self.cur.input[i] if i < len(self.cur.input) else 'missing'!r}) must be a "
                            "tensor computed from the network input, got a constant",
                            "simplify the model (e.g. onnxsim) so constant sub-graphs are folded")
        return v

    def const(self, i: int, what: str, default: Any = None) -> np.ndarray | None:
        v = self.inp(i)
        if v is None:
            return default
        if not is_const(v):
            raise self.fail(f"the {what} (input {i}, {self.cur.input[i]!r}) must be a constant (initializer), but it "
                            "is computed from the network input" if isinstance(v, Val) else
                            f"the {what} (input {i}) depends on the batch size",
                            "synopt imports static weights only; re-export with weights as initializers")
        return v

    def shape(self, v: Val) -> tuple[int, ...]:
        """Per-sample shape of a runtime value."""
        return tuple(self.ex[v.node].shape[1:])

    def rank(self, v: Val) -> int:
        return self.ex[v.node].dim()

    # ---- graph construction ---------------------------------------------------------------------------------------
    def unique_name(self, base: str) -> str:
        name, k = base, 1
        while hasattr(self.root, name) or hasattr(fx.GraphModule, name) or name in ("graph", "code", "meta"):
            k += 1
            name = f"{base}_{k}"
        return name

    def module_name(self, suffix: str = "") -> str:
        """A name from the layer's weight (dynamo exports: 'layer1.0.conv1.weight' -> 'layer1_0_conv1') or else
        from the node name (legacy exports: '/layer1/layer1.0/conv1/Conv' -> 'layer1_layer1_0_conv1_Conv')."""
        n = self.cur
        weight = n.input[1] if len(n.input) > 1 and n.op_type in _WEIGHT_OPS else ""
        m = re.fullmatch(r"([A-Za-z_][\w.]*)\.weight", weight)
        base = sanitize(m.group(1), "") if m else ""
        base = (base or sanitize(n.name, n.op_type.lower())) + suffix
        return self.unique_name(base)

    def emit(self, op: str, target: Any, args: tuple = (), kwargs: dict | None = None) -> fx.Node:
        kwargs = kwargs or {}
        node = self.graph.create_node(op, target, args, kwargs)
        try:
            self.ex[node] = self._evaluate(node)
        except Exception as exc:  # noqa: BLE001 - any failure of the example run is the node's fault
            raise self.fail(f"the imported operation does not run on an example batch ({type(exc).__name__}: {exc})",
                            "the model's shapes are inconsistent with the input shape; pass input_shape") from None
        return node

    def _evaluate(self, node: fx.Node) -> Any:
        args = fx.node.map_arg(node.args, lambda a: self.ex[a])
        kwargs = fx.node.map_arg(node.kwargs, lambda a: self.ex[a])
        with torch.no_grad():
            if node.op == "call_module":
                return self.root.get_submodule(node.target)(*args, **kwargs)
            if node.op == "call_function":
                return node.target(*args, **kwargs)
            if node.op == "call_method":
                return getattr(args[0], node.target)(*args[1:], **kwargs)
            if node.op == "get_attr":
                return getattr(self.root, node.target)
        raise AssertionError(node.op)

    def reevaluate(self, node: fx.Node) -> None:
        self.ex[node] = self._evaluate(node)

    def module(self, mod: nn.Module, *args: Any, suffix: str = "") -> Val:
        mod.eval()
        name = self.module_name(suffix)
        self.root.add_module(name, mod)
        return Val(self.emit("call_module", name, tuple(self._node(a) for a in args)))

    def function(self, fn: Callable, *args: Any, **kwargs: Any) -> Val:
        return Val(self.emit("call_function", fn, tuple(self._node(a) for a in args), kwargs))

    def method(self, name: str, *args: Any) -> Val:
        return Val(self.emit("call_method", name, tuple(self._node(a) for a in args)))

    def buffer(self, array: np.ndarray, suffix: str = "const") -> fx.Node:
        name = self.module_name(f"_{suffix}")
        self.root.register_buffer(name, torch.from_numpy(np.array(array, dtype=np.float32)))
        return self.emit("get_attr", name)

    @staticmethod
    def _node(a: Any) -> Any:
        if isinstance(a, Val):
            return a.node
        if isinstance(a, (list, tuple)):
            return type(a)(_Builder._node(x) for x in a)
        return a

    def n_consumers(self, value: str) -> int:
        return len(self.consumers.get(value, ())) + (1 if value in self.keep else 0)

    # ---- per-sample reshapes --------------------------------------------------------------------------------------
    def reshape(self, v: Val, per_sample: tuple[int, ...]) -> Val:
        """``v`` reshaped to ``(batch, *per_sample)`` for any batch: flatten(1) when the target is flat."""
        src = self.shape(v)
        per_sample = tuple(int(s) for s in per_sample)
        if math.prod(src) != math.prod(per_sample):
            raise self.fail(f"cannot reshape a per-sample shape {src} to {per_sample}")
        if per_sample == src:
            return v
        if len(per_sample) == 1:
            return self.method("flatten", v, 1)
        return self.method("reshape", v, -1, *per_sample)

    # ---- constants ------------------------------------------------------------------------------------------------
    def fold(self, n: onnx.NodeProto, inputs: list[Any]) -> list[np.ndarray]:
        """Evaluate a node whose inputs are all constants with onnx's reference implementation."""
        self._check_fold_size(n, inputs)
        from onnx.reference import ReferenceEvaluator

        feeds = {name: value for name, value in zip(n.input, inputs) if name}
        info = lambda name: helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)  # noqa: E731
        graph = helper.make_graph([n], "fold", [info(i) for i in feeds], [info(o) for o in n.output if o])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        try:
            outs = ReferenceEvaluator(model).run(None, feeds)
        except Exception as exc:  # noqa: BLE001
            raise self.fail(f"cannot evaluate this constant computation ({type(exc).__name__}: {exc})",
                            "simplify the model (e.g. onnxsim) or re-export it") from None
        return [np.asarray(o) for o in outs]

    def _check_fold_size(self, n: onnx.NodeProto, inputs: list[Any]) -> None:
        size = None
        try:
            if n.op_type == "ConstantOfShape":
                size = math.prod(int(s) for s in np.asarray(inputs[0]).ravel())
            elif n.op_type == "Expand":
                size = math.prod(np.broadcast_shapes(inputs[0].shape, tuple(int(s) for s in inputs[1].ravel())))
            elif n.op_type == "Tile":
                size = math.prod(int(a) * int(r) for a, r in zip(inputs[0].shape, inputs[1].ravel()))
            elif n.op_type == "Range":
                start, limit, delta = (float(np.asarray(x)) for x in inputs[:3])
                size = max(0, math.ceil((limit - start) / delta)) if delta else math.inf
        except (ValueError, TypeError, IndexError) as exc:
            raise self.fail(f"invalid constant computation ({exc})") from None
        if size is not None and size > MAX_FOLD_ELEMENTS:
            raise self.fail(f"this constant computation would create {size:.3g} elements; refusing",
                            "the file is malformed or not a model this importer is meant for")


def constant_value(b: _Builder, n: onnx.NodeProto) -> np.ndarray:
    """The value of a ``Constant`` node."""
    for a in n.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    raise b.fail("Constant without a numeric value (sparse or string constants are not supported)")
