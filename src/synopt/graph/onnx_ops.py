"""ONNX op handlers of the importer: each maps one ONNX node onto stock torch modules / fx calls.

A handler takes the builder (whose ``cur`` is the node) and returns the node's outputs: :class:`Val` for runtime
tensors, numpy arrays for constants and symbolic shapes, ``None`` for outputs that are not supported (an error is
raised only if something consumes them).
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from .onnx_builder import BATCH, Val, _Builder, attrs, is_sym

# --------------------------------------------------------------------------------------------------------------------
# What is supported (also shown in error messages and docs/onnx.md)
# --------------------------------------------------------------------------------------------------------------------

SUPPORTED = {
    "Conv": "nn.Conv1d/2d/3d (group, dilation, strides, pads, auto_pad); asymmetric pads -> nn.ZeroPad2d first",
    "Gemm": "nn.Linear (transA=0, transB 0/1, alpha, beta)",
    "MatMul": "nn.Linear with a constant 2-D weight (a following Add of a constant becomes its bias)",
    "BatchNormalization": "nn.BatchNorm1d/2d/3d with the file's running statistics (inference mode)",
    "Relu": "a new nn.ReLU per node",
    "Clip": "min 0: nn.ReLU (no max), nn.ReLU6 (max 6) or nn.Hardtanh(0, max)",
    "AveragePool": "nn.AvgPool1d/2d/3d (count_include_pad, ceil_mode, pads)",
    "MaxPool": "nn.MaxPool1d/2d/3d",
    "GlobalAveragePool": "nn.AdaptiveAvgPool2d(1)",
    "ReduceMean": "over spatial axes: nn.AdaptiveAvgPool2d(1) (+ flatten if keepdims=0); other axes: torch.mean",
    "Add": "a + b between tensors; + constant: folded into the bias of a preceding Conv/Gemm/MatMul, else x + c",
    "Sum": "a + b + ...",
    "Sub": "x - c / c - x with c a constant buffer (input normalisation); a - b between tensors",
    "Mul": "x * c with c a constant buffer",
    "Div": "x / c with c a constant buffer",
    "Concat": "torch.cat along a non-batch axis",
    "Flatten": "flatten(1) (axis=1)",
    "Reshape": "per-sample reshapes only: [N, -1], [0, K], Shape->Gather->Unsqueeze->Concat chains and fixed-batch "
               "constants such as [1, K] all become flatten(1)",
    "Transpose": "permute of non-batch axes; an NHWC->NCHW Transpose right after the input is removed",
    "Squeeze": "shape-only (non-batch axes)",
    "Unsqueeze": "shape-only (non-batch axes)",
    "Pad": "constant 0 on spatial axes: merged into the next Conv/AveragePool, else nn.ZeroPad2d",
    "Dropout": "identity",
    "Identity": "identity",
    "Constant": "constant",
    "Shape": "shape arithmetic on constants and the batch size (Gather, Slice, Concat, Cast, ... are folded)",
    "Softmax": "only as the final op: dropped (the module returns logits; noted)",
    "LogSoftmax": "only as the final op: dropped (noted)",
}


def supported_list() -> str:
    return ", ".join(SUPPORTED)


def _advice() -> str:
    return (f"synopt imports these ops: {supported_list()}. Re-export the model with only these ops, or simplify it "
            "(e.g. `python -m onnxsim in.onnx out.onnx`), which folds shape computations into constants; "
            "if the op is a head after the features you need, select an earlier value with output=NAME")


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
_AVG = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_MAX = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_ADAPTIVE = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
_ZEROPAD = {1: nn.ZeroPad1d, 2: nn.ZeroPad2d, 3: nn.ZeroPad3d}
_CONSTPAD = {1: nn.ConstantPad1d, 2: nn.ConstantPad2d, 3: nn.ConstantPad3d}


def _param(t: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(t, dtype=np.float32, copy=True))


def _axes(b: _Builder, input_index: int, rank: int, attr_name: str = "axes") -> list[int] | None:
    """Axes from the attribute (old opsets) or the input (newer opsets), normalised to [0, rank)."""
    a = attrs(b.cur)
    if attr_name in a:
        axes = a[attr_name]
    else:
        c = b.const(input_index, "axes")
        if c is None:
            return None
        axes = [int(x) for x in np.asarray(c).ravel()]
    out = []
    for ax in axes:
        ax = int(ax)
        if not -rank <= ax < rank:
            raise b.fail(f"axis {ax} is out of range for a rank-{rank} tensor")
        out.append(ax % rank)
    return out


def _spatial_pads(b: _Builder, a: dict, in_spatial: tuple[int, ...], kernel: list[int], strides: list[int],
                  dilations: list[int]) -> tuple[list[int], list[int]]:
    d = len(kernel)
    auto = a.get("auto_pad", "NOTSET") or "NOTSET"
    if auto == "NOTSET":
        pads = [int(p) for p in a.get("pads", [0] * 2 * d)]
        if len(pads) != 2 * d:
            raise b.fail(f"pads {pads} do not match the {d} spatial axes")
        begin, end = pads[:d], pads[d:]
    elif auto == "VALID":
        begin, end = [0] * d, [0] * d
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, dil in zip(in_spatial, kernel, strides, dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * dil + 1 - size)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        if any(s > 1 for s in strides):  # with stride 1 the padding does not depend on the size
            b.notes.append(f"{b.cur.op_type} {b.cur.name!r}: auto_pad {auto} resolved for input size {in_spatial}; "
                           "the module pads for that size only")
    else:
        raise b.fail(f"unknown auto_pad {auto!r}")
    if any(p < 0 for p in begin + end):
        raise b.fail(f"negative pads {begin + end} (cropping) are not supported", "re-export without cropping")
    return begin, end


def _torch_pad(begin: list[int], end: list[int]) -> tuple[int, ...]:
    """ONNX per-axis (begin, end) lists -> F.pad order (last axis first)."""
    out: list[int] = []
    for lo, hi in zip(reversed(begin), reversed(end)):
        out += [int(lo), int(hi)]
    return tuple(out)


def _pad_module(b: _Builder, x: Val, begin: list[int], end: list[int], value: float = 0.0) -> Val:
    d = len(begin)
    if not any(begin) and not any(end):
        return x
    if d not in _ZEROPAD:
        raise b.fail(f"padding of {d} spatial axes is not supported")
    mod = _ZEROPAD[d](_torch_pad(begin, end)) if value == 0 else _CONSTPAD[d](_torch_pad(begin, end), value)
    return b.module(mod, x, suffix="_pad")


def _take_folded_pad(b: _Builder, index: int) -> tuple[Val, list[int] | None, list[int] | None]:
    name = b.cur.input[index]
    if name in b.folded_pads:
        return b.folded_pads[name]
    return b.val(index), None, None


def _check_spatial_input(b: _Builder, x: Val, d: int) -> tuple[int, ...]:
    if b.rank(x) != d + 2:
        raise b.fail(f"expects a rank-{d + 2} input (N, C, spatial...), got rank {b.rank(x)}")
    return b.shape(x)[1:]


def _broadcast_const(b: _Builder, x: Val, c: np.ndarray) -> np.ndarray:
    """A constant operand of an elementwise op, checked not to broadcast over the batch (and transposed to NCHW
    when ``x`` is the NHWC input prefix)."""
    if is_sym(c):
        raise b.fail("the constant operand depends on the batch size", _advice())
    c = np.asarray(c, dtype=np.float32)
    rank = b.rank(x)
    if c.ndim > rank:
        raise b.fail(f"the constant of shape {c.shape} has more axes than the tensor (rank {rank})")
    if c.ndim == rank and c.shape[0] != 1:
        if b.fixed_batch is not None and c.shape[0] == b.fixed_batch and np.all(c == c[:1]):
            c = c[:1]
        else:
            raise b.fail(f"the constant of shape {c.shape} varies along the batch axis",
                         "constants must broadcast over the batch")
    if x.nhwc:
        c = c.reshape((1,) * (4 - c.ndim) + c.shape).transpose(0, 3, 1, 2)
    full = (1, *b.shape(x))
    try:
        out_shape = np.broadcast_shapes(full, c.shape)
    except ValueError:
        raise b.fail(f"the constant of shape {c.shape} does not broadcast to the tensor's shape {full}") from None
    if tuple(out_shape[1:]) != tuple(full[1:]):
        raise b.fail(f"the constant of shape {c.shape} would enlarge the tensor {full} (broadcasting it)")
    return c


# --------------------------------------------------------------------------------------------------------------------
# Weight layers
# --------------------------------------------------------------------------------------------------------------------


def conv(b: _Builder) -> list:
    a = attrs(b.cur)
    x, pre_begin, pre_end = _take_folded_pad(b, 0)
    w = b.const(1, "weight")
    bias = b.const(2, "bias")
    d = w.ndim - 2
    if d not in _CONV:
        raise b.fail(f"{d}-D convolution is not supported")
    kernel = [int(k) for k in a.get("kernel_shape", w.shape[2:])]
    if tuple(kernel) != tuple(w.shape[2:]):
        raise b.fail(f"kernel_shape {kernel} does not match the weight {w.shape}")
    strides = [int(s) for s in a.get("strides", [1] * d)]
    dilations = [int(s) for s in a.get("dilations", [1] * d)]
    groups = int(a.get("group", 1))
    in_spatial = _check_spatial_input(b, x, d)
    c_in = b.shape(x)[0]
    if w.shape[1] * groups != c_in:
        raise b.fail(f"weight {w.shape} with group={groups} does not fit {c_in} input channels")
    if pre_begin is not None:  # a Pad merged into this conv: the conv's own auto_pad sees the padded size
        in_spatial = tuple(s + lo + hi for s, lo, hi in zip(in_spatial, pre_begin, pre_end))
    begin, end = _spatial_pads(b, a, in_spatial, kernel, strides, dilations)
    if pre_begin is not None:
        begin = [p + q for p, q in zip(begin, pre_begin)]
        end = [p + q for p, q in zip(end, pre_end)]
    sym = [min(lo, hi) for lo, hi in zip(begin, end)]
    x = _pad_module(b, x, [lo - s for lo, s in zip(begin, sym)], [hi - s for hi, s in zip(end, sym)])
    mod = _CONV[d](c_in, w.shape[0], tuple(kernel), stride=tuple(strides), padding=tuple(sym),
                   dilation=tuple(dilations), groups=groups, bias=bias is not None)
    with torch.no_grad():
        mod.weight.copy_(_param(w))
        if bias is not None:
            mod.bias.copy_(_param(bias).reshape(-1))
    return [b.module(mod, x)]


def gemm(b: _Builder) -> list:
    a = attrs(b.cur)
    x = b.val(0)
    if int(a.get("transA", 0)):
        raise b.fail("transA=1 is not supported (the batch must be the rows of A)", "re-export the model")
    if b.rank(x) != 2:
        raise b.fail(f"Gemm needs a 2-D input, got rank {b.rank(x)}")
    w = b.const(1, "weight B")
    if w.ndim != 2:
        raise b.fail(f"weight of shape {w.shape} is not a matrix")
    w = w if int(a.get("transB", 0)) else w.T  # torch Linear stores (out, in)
    w = w * float(a.get("alpha", 1.0))
    c = b.const(2, "bias C")
    bias = None
    if c is not None:
        bias = _row_bias(b, np.asarray(c, dtype=np.float32), w.shape[0]) * float(a.get("beta", 1.0))
    if w.shape[1] != b.shape(x)[0]:
        raise b.fail(f"weight {w.shape} does not fit {b.shape(x)[0]} input features")
    return [b.module(_linear(w, bias), x)]


def _row_bias(b: _Builder, c: np.ndarray, n_out: int) -> np.ndarray:
    if c.ndim == 2 and c.shape[0] > 1:
        if not np.all(c == c[:1]):
            raise b.fail(f"the bias C of shape {c.shape} differs between rows (batch items)")
        c = c[:1]
    try:
        return np.broadcast_to(c, (1, n_out))[0].copy()
    except ValueError:
        raise b.fail(f"the bias of shape {c.shape} does not fit {n_out} outputs") from None


def _linear(w: np.ndarray, bias: np.ndarray | None) -> nn.Linear:
    mod = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        mod.weight.copy_(_param(w))
        if bias is not None:
            mod.bias.copy_(_param(bias))
    return mod


def matmul(b: _Builder) -> list:
    if not isinstance(b.inp(0), Val):
        raise b.fail("only `activations @ constant weight` is supported (the first operand is a constant)")
    x = b.val(0)
    w = b.const(1, "weight")
    if w.ndim != 2 or b.rank(x) < 2:
        raise b.fail(f"only `tensor @ matrix` is supported (weight shape {w.shape}, input rank {b.rank(x)})")
    if w.shape[0] != b.shape(x)[-1]:
        raise b.fail(f"weight {w.shape} does not fit the last axis ({b.shape(x)[-1]})")
    return [b.module(_linear(np.ascontiguousarray(w.T), None), x)]


def batchnorm(b: _Builder) -> list:
    a = attrs(b.cur)
    if int(a.get("training_mode", 0)):
        raise b.fail("training_mode=1 (batch statistics) is not supported", "export the model in eval mode")
    if any(o for o in b.cur.output[1:]) and any(b.n_consumers(o) for o in b.cur.output[1:] if o):
        raise b.fail("the running-statistics outputs are used", "export the model in eval mode")
    x = b.val(0)
    scale, shift, mean, var = (b.const(i, what) for i, what in
                               ((1, "scale"), (2, "bias"), (3, "running mean"), (4, "running variance")))
    rank = b.rank(x)
    if rank not in _BN:
        raise b.fail(f"BatchNormalization of a rank-{rank} tensor is not supported")
    c = b.shape(x)[0]
    momentum = float(a.get("momentum", 0.9))
    mod = _BN[rank](c, eps=float(a.get("epsilon", 1e-5)), momentum=1.0 - momentum if 0 < momentum < 1 else 0.1)
    with torch.no_grad():
        mod.weight.copy_(_param(scale).reshape(-1))
        mod.bias.copy_(_param(shift).reshape(-1))
        mod.running_mean.copy_(_param(mean).reshape(-1))
        mod.running_var.copy_(_param(var).reshape(-1))
    return [b.module(mod, x)]


# --------------------------------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------------------------------


def relu(b: _Builder) -> list:
    return [b.module(nn.ReLU(), b.val(0))]


def clip(b: _Builder) -> list:
    a = attrs(b.cur)
    x = b.val(0)
    lo = a.get("min", b.const(1, "min"))
    hi = a.get("max", b.const(2, "max"))
    lo = -math.inf if lo is None else float(np.asarray(lo))
    hi = math.inf if hi is None else float(np.asarray(hi))
    if lo != 0.0 or not hi > 0:
        raise b.fail(f"Clip({lo:g}, {hi:g}) is not a ReLU-like activation; only Clip(0, max) is supported",
                     "use ReLU or ReLU6 in the model")
    if math.isinf(hi):
        return [b.module(nn.ReLU(), x)]
    mod = nn.ReLU6() if hi == 6.0 else nn.Hardtanh(0.0, hi)
    mod.synopt_neuron = True  # an activation site for synopt.energy (its output becomes spikes)
    return [b.module(mod, x)]


# --------------------------------------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------------------------------------


def _pool_geometry(b: _Builder, x: Val, a: dict):
    kernel = [int(k) for k in a["kernel_shape"]]
    d = len(kernel)
    in_spatial = _check_spatial_input(b, x, d)
    strides = [int(s) for s in a.get("strides", [1] * d)]
    dilations = [int(s) for s in a.get("dilations", [1] * d)]
    return kernel, d, in_spatial, strides, dilations


def avgpool(b: _Builder) -> list:
    a = attrs(b.cur)
    include = bool(int(a.get("count_include_pad", 0)))
    if include:
        x, pre_begin, pre_end = _take_folded_pad(b, 0)
    else:
        x, pre_begin, pre_end = b.val(0), None, None
    kernel, d, in_spatial, strides, dilations = _pool_geometry(b, x, a)
    if any(dl != 1 for dl in dilations):
        raise b.fail("dilated average pooling is not supported")
    if d not in _AVG:
        raise b.fail(f"{d}-D average pooling is not supported")
    if pre_begin is not None:
        in_spatial = tuple(s + lo + hi for s, lo, hi in zip(in_spatial, pre_begin, pre_end))
    begin, end = _spatial_pads(b, a, in_spatial, kernel, strides, dilations)
    if pre_begin is not None:
        begin = [p + q for p, q in zip(begin, pre_begin)]
        end = [p + q for p, q in zip(end, pre_end)]
    ceil = bool(int(a.get("ceil_mode", 0)))
    if begin == end and all(p <= k // 2 for p, k in zip(begin, kernel)):
        padding = begin
    elif include:  # zeros are counted anyway: pad explicitly
        x = _pad_module(b, x, begin, end)
        padding = [0] * d
    else:
        raise b.fail(f"pads {begin + end} with count_include_pad=0 cannot be expressed with torch's average pooling",
                     "export with symmetric padding or count_include_pad=1")
    mod = _AVG[d](tuple(kernel), stride=tuple(strides), padding=tuple(padding), ceil_mode=ceil,
                  count_include_pad=include)
    return [b.module(mod, x)]


def maxpool(b: _Builder) -> list:
    a = attrs(b.cur)
    if len(b.cur.output) > 1 and b.cur.output[1] and b.n_consumers(b.cur.output[1]):
        raise b.fail("the Indices output of MaxPool is not supported")
    x = b.val(0)
    kernel, d, in_spatial, strides, dilations = _pool_geometry(b, x, a)
    if d not in _MAX:
        raise b.fail(f"{d}-D max pooling is not supported")
    begin, end = _spatial_pads(b, a, in_spatial, kernel, strides, dilations)
    ceil = bool(int(a.get("ceil_mode", 0)))
    eff = [(k - 1) * dl + 1 for k, dl in zip(kernel, dilations)]
    if begin == end and all(p <= e // 2 for p, e in zip(begin, eff)):
        padding = begin
    else:
        x = _pad_module(b, x, begin, end, value=-math.inf)
        padding = [0] * d
    mod = _MAX[d](tuple(kernel), stride=tuple(strides), padding=tuple(padding), dilation=tuple(dilations),
                  ceil_mode=ceil)
    return [b.module(mod, x)]


def global_avgpool(b: _Builder) -> list:
    x = b.val(0)
    d = b.rank(x) - 2
    if d not in _ADAPTIVE:
        raise b.fail(f"GlobalAveragePool of a rank-{b.rank(x)} tensor is not supported")
    return [b.module(_ADAPTIVE[d](1), x)]


def reduce_mean(b: _Builder) -> list:
    x = b.val(0)
    rank = b.rank(x)
    a = attrs(b.cur)
    axes = _axes(b, 1, rank)
    keep = bool(int(a.get("keepdims", 1)))
    if not axes:
        if int(a.get("noop_with_empty_axes", 0)):
            return [x]
        raise b.fail("ReduceMean over all axes (including the batch) is not supported")
    if 0 in axes:
        raise b.fail("ReduceMean over the batch axis is not supported")
    axes = sorted(set(axes))
    d = rank - 2
    if d in _ADAPTIVE and axes == list(range(2, rank)):
        y = b.module(_ADAPTIVE[d](1), x)
        return [y if keep else b.method("flatten", y, 1)]
    return [b.function(torch.mean, x, tuple(axes), keep)]


# --------------------------------------------------------------------------------------------------------------------
# Elementwise
# --------------------------------------------------------------------------------------------------------------------


def add(b: _Builder) -> list:
    x, y = b.inp(0), b.inp(1)
    if isinstance(x, Val) and isinstance(y, Val):
        if x.nhwc or y.nhwc:
            raise b.fail("adding two tensors before the input's NHWC->NCHW transpose is not supported")
        return [b.function(operator.add, x, y)]
    if not isinstance(x, Val):
        x, y = y, x
    c = _broadcast_const(b, x, np.asarray(y))
    folded = _fold_bias(b, x, c) if not x.nhwc else None
    if folded is not None:
        return [folded]
    return [Val(b.function(operator.add, x, b.buffer(c)).node, nhwc=x.nhwc)]


def _fold_bias(b: _Builder, x: Val, c: np.ndarray) -> Val | None:
    """x + c where x is the output of a Conv/Linear used only here: c becomes (part of) the layer's bias."""
    node = x.node
    if node.op != "call_module" or node.users:
        return None
    aliases = [name for name, v in b.env.items() if isinstance(v, Val) and v.node is node]
    if sum(b.n_consumers(name) for name in aliases) != 1:
        return None
    mod = b.root.get_submodule(node.target)
    rank = b.rank(x)
    if isinstance(mod, nn.Linear):
        n_out = mod.out_features
        if rank != 2:
            return None
    elif isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        n_out = mod.out_channels
    else:
        return None
    full = np.asarray(c, dtype=np.float32).reshape((1,) * (rank - c.ndim) + c.shape)
    if full.shape[0] != 1 or any(s != 1 for s in full.shape[2:]) or full.shape[1] not in (1, n_out):
        return None
    extra = np.broadcast_to(full.reshape(-1), (n_out,))
    with torch.no_grad():
        if mod.bias is None:
            mod.bias = nn.Parameter(_param(extra))
        else:
            mod.bias.add_(_param(extra))
    b.reevaluate(node)
    return x


def sum_(b: _Builder) -> list:
    vals = [b.val(i) for i in range(len(b.cur.input))]
    out = vals[0]
    for v in vals[1:]:
        out = b.function(operator.add, out, v)
    return [out]


def _scale(fn: Callable, name: str, const_first_ok: bool) -> Callable[[_Builder], list]:
    def handler(b: _Builder) -> list:
        x, y = b.inp(0), b.inp(1)
        if isinstance(x, Val) and isinstance(y, Val):
            if fn is operator.sub and not (x.nhwc or y.nhwc):
                return [b.function(operator.sub, x, y)]
            raise b.fail(f"{name} of two tensors computed from the input is not supported "
                         "(only scaling/shifting by constants)", _advice())
        if isinstance(x, Val):
            out = b.function(fn, x, b.buffer(_broadcast_const(b, x, y)))
            return [Val(out.node, nhwc=x.nhwc)]
        if not const_first_ok:
            raise b.fail(f"constant {name} tensor is not supported (only tensor {name} constant)")
        out = b.function(fn, b.buffer(_broadcast_const(b, y, x)), y)
        return [Val(out.node, nhwc=y.nhwc)]

    return handler


# --------------------------------------------------------------------------------------------------------------------
# Shape ops on runtime tensors
# --------------------------------------------------------------------------------------------------------------------


def identity(b: _Builder) -> list:
    return [b.inp(0)]


def cast(b: _Builder) -> list:
    if int(attrs(b.cur).get("to", 0)) != 1:
        raise b.fail("Cast of a tensor to a type other than float32 is not supported")
    return [b.inp(0)]


def dropout(b: _Builder) -> list:
    if len(b.cur.output) > 1 and b.cur.output[1] and b.n_consumers(b.cur.output[1]):
        raise b.fail("the mask output of Dropout is used", "export the model in eval mode")
    return [b.inp(0), None]


def flatten(b: _Builder) -> list:
    x = b.val(0)
    axis = int(attrs(b.cur).get("axis", 1))
    rank = b.rank(x)
    axis = axis % rank if axis < 0 else axis
    if axis != 1:
        shape = b.shape(x)
        if axis > 1 and all(s == 1 for s in shape[: axis - 1]):
            pass  # leading size-1 axes: still a per-sample flatten
        else:
            raise b.fail(f"Flatten(axis={axis}) mixes the batch axis with other axes", "only axis=1 is supported")
    return [b.reshape(x, (math.prod(b.shape(x)),))]


def reshape(b: _Builder) -> list:
    x = b.val(0)
    target = b.inp(1)
    if isinstance(target, Val) or target is None:
        raise b.fail("the target shape is computed from tensor values", _advice())
    allowzero = bool(int(attrs(b.cur).get("allowzero", 0)))
    t = list(np.asarray(target).ravel())
    src = b.shape(x)
    n = math.prod(src)
    if not t:
        raise b.fail("reshape to a scalar is not supported")

    def is_batch(e: Any) -> bool:
        return e is BATCH

    first = t[0]
    rest = t[1:]
    if any(is_batch(e) for e in rest):
        raise b.fail(f"the target shape {t} moves the batch size to a non-leading axis")
    resolved = []
    for i, e in enumerate(rest, start=1):
        e = int(e)
        if e == 0 and not allowzero:
            if i > len(src):
                raise b.fail(f"target shape {t} copies axis {i}, which the input does not have")
            e = src[i - 1]
        resolved.append(e)
    known = math.prod(e for e in resolved if e != -1)
    if resolved.count(-1) > 1 or any(e < -1 or (e == 0) for e in resolved):
        raise b.fail(f"unsupported target shape {t}")
    batch_ok = (is_batch(first) or (int(first) == 0 and not allowzero)
                or (b.fixed_batch is not None and int(first) == b.fixed_batch)
                or (int(first) == -1 and -1 not in resolved and known == n))
    if not batch_ok:
        raise b.fail(f"the target shape {[str(e) for e in t]} changes the batch axis (per-sample size {n})",
                     "synopt keeps axis 0 as the batch; export with a flatten/view(N, -1)")
    if -1 in resolved:
        if known == 0 or n % known:
            raise b.fail(f"target shape {t} does not fit per-sample size {n}")
        resolved[resolved.index(-1)] = n // known
    if math.prod(resolved) != n:
        raise b.fail(f"target shape {[str(e) for e in t]} does not keep the per-sample size {n} (shape {src})",
                     "synopt keeps axis 0 as the batch")
    return [b.reshape(x, tuple(resolved))]


def transpose(b: _Builder) -> list:
    x = b.val(0)
    rank = b.rank(x)
    perm = [int(p) for p in attrs(b.cur).get("perm", list(range(rank))[::-1])]
    if x.nhwc:
        if perm == [0, 3, 1, 2]:
            return [Val(x.node)]  # the input's NHWC->NCHW transpose: the module takes NCHW already
        raise b.fail(f"unexpected transpose {perm} of the NHWC input")
    if sorted(perm) != list(range(rank)) or perm[0] != 0:
        raise b.fail(f"Transpose perm {perm} moves the batch axis", "only permutations of non-batch axes are supported")
    if perm == list(range(rank)):
        return [x]
    return [b.method("permute", x, *perm)]


def squeeze(b: _Builder) -> list:
    x = b.val(0)
    rank = b.rank(x)
    axes = _axes(b, 1, rank)
    shape = (None, *b.shape(x))
    if axes is None:
        if b.fixed_batch == 1:
            raise b.fail("Squeeze without axes would drop the fixed batch axis of size 1",
                         "export with explicit axes")
        axes = [i for i in range(1, rank) if shape[i] == 1]
    if 0 in axes:
        raise b.fail("Squeeze of the batch axis is not supported")
    if any(shape[i] != 1 for i in axes):
        raise b.fail(f"cannot squeeze axes {axes} of shape {shape[1:]}")
    return [b.reshape(x, tuple(s for i, s in enumerate(shape) if i and i not in axes))]


def unsqueeze(b: _Builder) -> list:
    x = b.val(0)
    rank = b.rank(x)
    n_new = len(attrs(b.cur).get("axes", [])) or np.asarray(b.const(1, "axes")).size
    axes = _axes(b, 1, rank + n_new)
    if 0 in axes:
        raise b.fail("Unsqueeze at axis 0 would create a new batch axis")
    shape = list(b.shape(x))
    for ax in sorted(axes):
        shape.insert(ax - 1, 1)
    return [b.reshape(x, tuple(shape))]


def concat(b: _Builder) -> list:
    vals = [b.inp(i) for i in range(len(b.cur.input))]
    if not all(isinstance(v, Val) for v in vals):
        raise b.fail("concatenation of a tensor with a constant is not supported")
    if any(v.nhwc for v in vals):
        raise b.fail("concatenation before the input's NHWC->NCHW transpose is not supported")
    rank = b.rank(vals[0])
    axis = int(attrs(b.cur)["axis"]) % rank
    if axis == 0:
        raise b.fail("concatenation along the batch axis is not supported")
    return [b.function(torch.cat, [v for v in vals], axis)]


def pad(b: _Builder) -> list:
    a = attrs(b.cur)
    x = b.val(0)
    mode = a.get("mode", "constant")
    if mode != "constant":
        raise b.fail(f"Pad mode {mode!r} is not supported (only constant 0)")
    rank = b.rank(x)
    if "pads" in a:  # opset < 11
        pads, value, axes = list(a["pads"]), float(a.get("value", 0.0)), list(range(rank))
    else:
        pads = [int(p) for p in np.asarray(b.const(1, "pads")).ravel()]
        cv = b.const(2, "constant value")
        value = 0.0 if cv is None or np.asarray(cv).size == 0 else float(np.asarray(cv).ravel()[0])
        axes = _axes(b, 3, rank) or list(range(rank))
    if value != 0.0:
        raise b.fail(f"Pad with value {value:g} is not supported (only 0)")
    full_begin, full_end = [0] * rank, [0] * rank
    k = len(axes)
    for i, ax in enumerate(axes):
        full_begin[ax], full_end[ax] = pads[i], pads[i + k]
    if any(full_begin[:2]) or any(full_end[:2]):
        raise b.fail(f"padding of the batch or channel axis (pads {pads}) is not supported")
    begin, end = full_begin[2:], full_end[2:]
    if any(p < 0 for p in begin + end):
        raise b.fail(f"negative pads {pads} (cropping) are not supported")
    out = b.cur.output[0]
    users = b.consumers.get(out, [])
    user = attrs(users[0]) if len(users) == 1 else {}
    mergeable = len(users) == 1 and (users[0].op_type == "Conv" or (
        users[0].op_type == "AveragePool" and int(user.get("count_include_pad", 0))
        and not int(user.get("ceil_mode", 0))))  # with ceil_mode, torch and ONNX border windows differ
    if out not in b.keep and mergeable and users[0].input[0] == out:
        b.folded_pads[out] = (x, begin, end)  # merged into the consumer's padding
        return [None]
    return [_pad_module(b, x, begin, end)]


def shape_(b: _Builder) -> list:
    x = b.val(0)
    full = [BATCH, *b.shape(x)]
    a = attrs(b.cur)
    start, end = int(a.get("start", 0)), a.get("end")
    out = full[start:] if end is None else full[start:int(end)]
    return [_sym(out)]


def softmax_inside(b: _Builder) -> list:
    raise b.fail(f"{b.cur.op_type} is only supported as the last op of the selected output (where it is dropped)",
                 _advice())


OPS: dict[str, Callable[[_Builder], list]] = {
    "Conv": conv, "Gemm": gemm, "MatMul": matmul, "BatchNormalization": batchnorm,
    "Relu": relu, "Clip": clip,
    "AveragePool": avgpool, "MaxPool": maxpool, "GlobalAveragePool": global_avgpool, "ReduceMean": reduce_mean,
    "Add": add, "Sum": sum_,
    "Sub": _scale(operator.sub, "subtraction", True), "Mul": _scale(operator.mul, "multiplication", True),
    "Div": _scale(operator.truediv, "division", False),
    "Identity": identity, "Cast": cast, "Dropout": dropout, "Flatten": flatten, "Reshape": reshape,
    "Transpose": transpose,
    "Squeeze": squeeze, "Unsqueeze": unsqueeze, "Concat": concat, "Pad": pad, "Shape": shape_,
    "Softmax": softmax_inside, "LogSoftmax": softmax_inside,
}


# --------------------------------------------------------------------------------------------------------------------
# Symbolic shape arithmetic (values that involve the batch size)
# --------------------------------------------------------------------------------------------------------------------


def _sym(values: Any) -> np.ndarray:
    arr = np.empty(len(values), dtype=object) if isinstance(values, list) else None
    if arr is not None:
        for i, v in enumerate(values):
            arr[i] = v if v is BATCH else int(v)
        return _normalize(arr)
    return _normalize(np.asarray(values, dtype=object))


def _normalize(arr: Any) -> np.ndarray:
    """Symbolic arrays without the batch marker become plain int64 constants."""
    if not isinstance(arr, np.ndarray) or arr.dtype != object:
        out = np.empty((), dtype=object)
        out[()] = arr
        arr = out if not isinstance(arr, np.ndarray) else arr.astype(object)
    if any(e is BATCH for e in arr.ravel()):
        return arr
    return np.asarray(arr.tolist(), dtype=np.int64).reshape(arr.shape)


def _obj(v: Any) -> np.ndarray:
    return v if is_sym(v) else np.asarray(v).astype(object)


def symbolic(b: _Builder) -> list:
    """Shape arithmetic on values that contain the batch size."""
    n = b.cur
    op = n.op_type
    a = attrs(n)
    x = b.inp(0)
    if op in ("Identity", "Cast", "CastLike"):
        return [x]
    if op == "Gather":
        idx = b.const(1, "indices")
        return [_normalize(np.take(_obj(x), np.asarray(idx, dtype=np.int64), axis=int(a.get("axis", 0))))]
    if op == "Unsqueeze":
        k = len(a.get("axes", [])) or np.asarray(b.const(1, "axes")).size
        out = _obj(x)
        for ax in sorted(_axes(b, 1, out.ndim + k)):
            out = np.expand_dims(out, ax)
        return [_normalize(out)]
    if op == "Squeeze":
        axes = _axes(b, 1, _obj(x).ndim)
        return [_normalize(np.squeeze(_obj(x), axis=tuple(axes) if axes is not None else None))]
    if op == "Concat":
        parts = [_obj(b.inp(i)) for i in range(len(n.input))]
        return [_normalize(np.concatenate(parts, axis=int(a["axis"])))]
    if op == "Slice":
        data = _obj(x)
        starts = np.asarray(b.const(1, "starts")).ravel()
        ends = np.asarray(b.const(2, "ends")).ravel()
        axes = _axes(b, 3, data.ndim) or list(range(len(starts)))
        steps = b.const(4, "steps")
        steps = np.ones(len(starts), dtype=np.int64) if steps is None else np.asarray(steps).ravel()
        index = [slice(None)] * data.ndim
        for s, e, ax, st in zip(starts, ends, axes, steps):
            index[ax] = slice(int(max(min(s, 2**62), -(2**62))), int(max(min(e, 2**62), -(2**62))), int(st))
        return [_normalize(data[tuple(index)])]
    if op == "Reshape":
        return [_normalize(_obj(x).reshape([int(s) for s in np.asarray(b.const(1, "shape")).ravel()]))]
    if op in ("Mul", "Add", "Sub", "Div"):
        y = b.inp(1)
        if any(e is BATCH for e in list(_obj(x).ravel()) + list(_obj(y).ravel())):
            raise b.fail(f"{op} on the batch size is not supported", _advice())
    raise b.fail(f"{op} on a shape that involves the batch size is not supported", _advice())
