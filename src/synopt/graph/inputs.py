"""Fold the input convention of a model into its first weight layer(s) (see docs/passes.md).

synopt's datasets deliver ``x01`` in [0, 1], NCHW.  Models in the wild expect ``x_model = (x01 (hi - lo) + lo - mean)
/ std`` per channel, possibly with 3 channels where the data set has one, and some carry ``x - c``, ``x / c``,
``x * c`` nodes on their input (ONNX exports of Keras/TF models).  All of these compose into one per-channel affine
map ``x_model = A x01 + B``, which is folded into the conv/linear layer(s) that consume the input so that
``new(x01) == old(convention(x01))``:

* no zero padding (or linear, or reflect/replicate/circular padding): ``W' = W A`` (per input channel),
  ``b' = b + sum W B``.  Exact.
* zero padding: a border of zeros in ``x01`` space is not a border of zeros in model space, so ``B`` cannot become a
  bias.  ``conv_W(pad0(A x + B)) = conv_{W A}(pad0(x + B / A))``: the weights take ``A`` and the offset ``B / A``
  stays as one explicit constant add (buffer ``input_offset``) in front of the conv.  Exact.  In the SNN that add is a
  constant input current, like a bias (``gm.meta['synopt_input']['offset']`` names it for the converter).
* ``grayscale_to_rgb``: the data set has 1 channel and the model expects ``C``: the weights are summed over input
  channels (``sum_i W_i A_i``), exact; with zero padding and per-channel offsets ``B_i / A_i`` that differ, one
  channel cannot carry them, so the input is expanded to ``C`` channels before the offset add instead.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from ._passutil import (CONV_TYPES, GraphPassError, finish, get_attr_value, module_call_counts, set_param, start,
                        zero_padding_involved)

__all__ = ["fold_input_normalization", "InputConvention"]

_PASS = "fold_input_normalization"

_ADD = {operator.add, torch.add}
_SUB = {operator.sub, torch.sub}
_MUL = {operator.mul, torch.mul}
_DIV = {operator.truediv, torch.div, torch.true_divide}
_FLATTEN_FUNCS = {torch.flatten}


class InputConvention:
    """The user's statement of what the model expects, as keyword arguments of :func:`fold_input_normalization`.

    >>> InputConvention(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))   # ImageNet-style  # doctest: +SKIP
    >>> InputConvention(input_range=(0, 255))                                      # raw bytes       # doctest: +SKIP
    """

    def __init__(self, mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None,
                 input_range: tuple[float, float] = (0.0, 1.0), grayscale_to_rgb: bool = False,
                 input_sub_div: bool = True):
        self.mean, self.std, self.input_range = mean, std, tuple(input_range)
        self.grayscale_to_rgb, self.input_sub_div = bool(grayscale_to_rgb), bool(input_sub_div)

    def kwargs(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "input_range": self.input_range,
                "grayscale_to_rgb": self.grayscale_to_rgb, "input_sub_div": self.input_sub_div}

    def __repr__(self) -> str:
        return "InputConvention(" + ", ".join(f"{k}={v!r}" for k, v in self.kwargs().items()) + ")"


def _vec(value, default: float, name: str) -> torch.Tensor:
    if value is None:
        return torch.tensor([default], dtype=torch.float64)
    t = torch.as_tensor(value, dtype=torch.float64).flatten()
    if t.numel() == 0 or not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite numbers, got {value!r}")
    return t


def _broadcast(*vs: torch.Tensor) -> list[torch.Tensor]:
    n = max(v.numel() for v in vs)
    out = []
    for v in vs:
        if v.numel() not in (1, n):
            raise ValueError(f"per-channel values of lengths {[x.numel() for x in vs]} do not match")
        out.append(v.expand(n).clone() if v.numel() == 1 else v)
    return out


# --------------------------------------------------------------------------------------------------------------------
# constant affine nodes on the input
# --------------------------------------------------------------------------------------------------------------------


def _constant(gm: fx.GraphModule, arg: Any) -> torch.Tensor | None:
    if isinstance(arg, bool):
        return None
    if isinstance(arg, (int, float)):
        return torch.tensor(float(arg), dtype=torch.float64)
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        value = get_attr_value(gm, arg.target)
        if isinstance(value, torch.Tensor):
            return value.detach().to(torch.float64)
    return None


def _affine_step(gm: fx.GraphModule, node: fx.Node, cur: fx.Node) -> tuple[str, torch.Tensor] | None:
    """If ``node`` is ``cur (+,-,*,/) constant`` (or ``constant (+,-,*) cur``), return (op, constant)."""
    if node.op == "call_function":
        kind = ("add" if node.target in _ADD else "sub" if node.target in _SUB else
                "mul" if node.target in _MUL else "div" if node.target in _DIV else
                "neg" if node.target in (operator.neg, torch.neg) else None)
    elif node.op == "call_method":
        kind = node.target if node.target in ("add", "sub", "mul", "div", "neg") else None
    else:
        kind = None
    if kind is None:
        return None
    if kind == "neg":
        if node.args == (cur,) and not node.kwargs:
            return "mul", torch.tensor(-1.0, dtype=torch.float64)
        return None
    if node.kwargs or len(node.args) != 2:
        return None  # alpha=, rounding_mode=, out=: not a plain affine op
    a, b = node.args
    if a is cur and b is not cur:
        const = _constant(gm, b)
        return None if const is None else (kind, const)
    if b is cur and a is not cur:
        const = _constant(gm, a)
        if const is None or kind == "div":
            return None  # c / x is not affine
        return ("rsub", const) if kind == "sub" else (kind, const)
    return None


def _per_channel(const: torch.Tensor, rank: int | None, node_name: str) -> torch.Tensor:
    """A constant broadcast against the (N, C, ...) input as a per-channel vector (length 1 or C)."""
    if const.numel() == 1:
        return const.reshape(1)
    if rank is None:
        rank = const.dim()
        if rank < 2:
            raise GraphPassError(_PASS, node_name, f"constant of shape {tuple(const.shape)} on an input whose rank is "
                                 "unknown (it feeds a flatten); cannot tell whether it is per channel")
    if const.dim() > rank:
        raise GraphPassError(_PASS, node_name, f"constant of shape {tuple(const.shape)} has more dims than the input")
    shape = [1] * (rank - const.dim()) + list(const.shape)
    if any(s != 1 for i, s in enumerate(shape) if i != 1):
        raise GraphPassError(_PASS, node_name, f"constant of shape {tuple(const.shape)} is not per channel on an "
                             f"input of rank {rank}; only per-channel (N, C, ...) constants can be folded")
    return const.reshape(-1)


# --------------------------------------------------------------------------------------------------------------------
# consumers of the input
# --------------------------------------------------------------------------------------------------------------------


def _is_flatten_1(gm: fx.GraphModule, node: fx.Node, cur: fx.Node) -> bool:
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        return isinstance(mod, nn.Flatten) and mod.start_dim == 1 and mod.end_dim == -1 and node.args == (cur,)
    if node.op == "call_function" and node.target in _FLATTEN_FUNCS:
        start_dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end_dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return node.args[0] is cur and start_dim == 1 and end_dim == -1
    if node.op == "call_method" and node.target == "flatten":
        start_dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end_dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return node.args[0] is cur and start_dim == 1 and end_dim == -1
    return False


def _consumers(gm: fx.GraphModule, cur: fx.Node) -> list[tuple[str, fx.Node, fx.Node, nn.Module]]:
    """(kind, node that reads the input, weight-layer node, weight module) for every user of the input."""
    calls = module_call_counts(gm)
    found = []
    for user in list(cur.users):
        kind, layer_node = None, None
        if user.op == "call_module" and isinstance(gm.get_submodule(user.target), (*CONV_TYPES, nn.Linear)):
            if user.args != (cur,) or user.kwargs:
                raise GraphPassError(_PASS, user, "weight layer called with extra arguments")
            kind = "linear" if isinstance(gm.get_submodule(user.target), nn.Linear) else "conv"
            layer_node = user
        elif _is_flatten_1(gm, user, cur) and len(user.users) == 1:
            nxt = next(iter(user.users))
            if (nxt.op == "call_module" and isinstance(gm.get_submodule(nxt.target), nn.Linear)
                    and nxt.args == (user,) and not nxt.kwargs):
                kind, layer_node = "flatten-linear", nxt
        if kind is None:
            raise GraphPassError(_PASS, user, "the input (after its constant ops) feeds this node, which is not a "
                                 "conv/linear (or flatten -> linear); only the first weight layers can absorb an "
                                 "input convention")
        mod = gm.get_submodule(layer_node.target)
        if calls[id(mod)] != 1:
            raise GraphPassError(_PASS, layer_node, f"module {layer_node.target!r} is called at {calls[id(mod)]} "
                                 "sites; folding the input convention into it would change the other calls")
        found.append((kind, user, layer_node, mod))
    return found


def _rank(consumers) -> int | None:
    ranks = {2 if kind == "linear" else (mod.weight.dim() if kind == "conv" else None)
             for kind, _, _, mod in consumers}
    ranks.discard(None)
    if len(ranks) > 1:
        raise GraphPassError(_PASS, None, f"the input feeds layers expecting different ranks {sorted(ranks)}")
    return ranks.pop() if ranks else None


# --------------------------------------------------------------------------------------------------------------------
# the pass
# --------------------------------------------------------------------------------------------------------------------


def fold_input_normalization(gm: nn.Module, *, mean=None, std=None, input_range: tuple[float, float] = (0.0, 1.0),
                             grayscale_to_rgb: bool = False, input_sub_div: bool = True) -> fx.GraphModule:
    """Fold ``x_model = ((x01 (hi - lo) + lo) - mean) / std`` (per channel) into the first weight layer(s).

    ``input_range=(lo, hi)`` is the range the model was trained on for inputs in [0, 1] (``(0, 255)``, ``(-1, 1)``),
    ``mean``/``std`` its normalisation (scalars or one value per channel), applied after the range.
    ``grayscale_to_rgb``: the data are 1-channel, the model expects ``C``; the new model takes 1 channel.
    ``input_sub_div``: also fold the model's own ``x - c``, ``x + c``, ``x * c``, ``x / c`` (``-x``) nodes sitting
    directly on the input (``c`` a number or a per-channel constant tensor).  Returns a NEW GraphModule with
    ``new(x01) == old(convention(x01))``; raises :class:`GraphPassError` when a consumer of the input is not a
    conv/linear.
    """
    gm = start(gm)
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise GraphPassError(_PASS, None, f"expects a model with one input, this graph has {len(placeholders)}")
    x = placeholders[0]
    lo, hi = (float(v) for v in input_range)
    if hi == lo or not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"input_range must be two different finite numbers, got {input_range!r}")
    mean_t, std_t = _vec(mean, 0.0, "mean"), _vec(std, 1.0, "std")
    if (std_t == 0).any():
        raise ValueError("std must be nonzero")
    mean_t, std_t = _broadcast(mean_t, std_t)
    scale, shift = (hi - lo) / std_t, (lo - mean_t) / std_t  # x_model = scale * x01 + shift, per channel
    notes: list[str] = []
    stated = mean is not None or std is not None or (lo, hi) != (0.0, 1.0) or grayscale_to_rgb
    if stated:
        offset = _fmt(shift)
        offset = f"- {offset[1:]}" if offset.startswith("-") else f"+ {offset}"
        notes.append(f"input convention x_model = {_fmt(scale)} * x01 {offset} (range {(lo, hi)}, mean "
                     f"{mean!r}, std {std!r}{', 1 -> C channels' if grayscale_to_rgb else ''})")

    # 1. the model's own constant ops on the input
    chain: list[tuple[fx.Node, str, torch.Tensor]] = []
    cur = x
    if input_sub_div:
        while len(cur.users) == 1:
            user = next(iter(cur.users))
            step = _affine_step(gm, user, cur)
            if step is None:
                break
            chain.append((user, *step))
            cur = user
    if not chain and not stated:
        notes.append("nothing to fold (no input convention given, no constant ops on the input)")
        return finish(gm, _PASS, notes)

    # 2. who consumes it, at which rank
    consumers = _consumers(gm, cur)
    if not consumers:
        raise GraphPassError(_PASS, cur, "the input reaches no weight layer")
    rank = _rank(consumers)
    for node, kind, const in chain:
        c = _per_channel(const, rank, node.name)
        if kind in ("add", "sub"):
            scale, c = _broadcast(scale, c)
            shift, c = _broadcast(shift, c)
            shift = shift + c if kind == "add" else shift - c
        elif kind == "rsub":
            scale, c = _broadcast(scale, c)
            shift, c = _broadcast(shift, c)
            scale, shift = -scale, c - shift
        else:
            if kind == "div" and (c == 0).any():
                raise GraphPassError(_PASS, node, "division by zero in a constant op on the input")
            c = 1.0 / c if kind == "div" else c
            scale, c = _broadcast(scale, c)
            shift, c = _broadcast(shift, c)
            scale, shift = scale * c, shift * c
        notes.append(f"folded the model's constant op {node.name!r} ({kind} "
                     f"{_fmt(_per_channel(const, rank, node.name))}) on the input")

    # 3. fold into each consumer
    offset_users: list[tuple[fx.Node, int, int, bool]] = []  # (reading node, channels, rank, expand)
    offsets: list[torch.Tensor] = []
    data_channels: int | None = None
    for kind, reader, layer_node, mod in consumers:
        name = layer_node.target
        if kind == "conv":
            cin = mod.in_channels
            a, b = _to_channels(scale, shift, cin, layer_node)
            if grayscale_to_rgb and mod.groups != 1:
                raise GraphPassError(_PASS, layer_node, "grayscale_to_rgb needs a conv with groups=1")
            if grayscale_to_rgb and cin == 1:
                raise GraphPassError(_PASS, layer_node, "grayscale_to_rgb: the model already takes 1 channel")
            w = mod.weight.detach().double()
            cout, cin_g = w.shape[0], w.shape[1]
            idx = (torch.arange(cout).div(cout // mod.groups, rounding_mode="floor") * cin_g).view(-1, 1) \
                + torch.arange(cin_g).view(1, -1)
            shape = (cout, cin_g, *([1] * (w.dim() - 2)))
            w_a = w * a[idx].view(shape)
            if not zero_padding_involved(mod):
                bias = _bias(mod) + (w * b[idx].view(shape)).flatten(1).sum(1)
                set_param(mod, "bias", bias, mod.bias if mod.bias is not None else mod.weight)
                new_w, expand = (w_a.sum(1, keepdim=True) if grayscale_to_rgb else w_a), False
                notes.append(f"folded the input map into {type(mod).__name__} {name!r} (weights and bias; exact)")
            else:
                if (a == 0).any():
                    raise GraphPassError(_PASS, layer_node, "a zero input scale with zero padding cannot be folded")
                d = b / a
                uniform = bool((d == d[0]).all())
                expand = grayscale_to_rgb and not uniform
                new_w = w_a.sum(1, keepdim=True) if grayscale_to_rgb and not expand else w_a
                if bool((d != 0).any()):
                    offsets.append(d[:1] if grayscale_to_rgb and uniform else d)
                    offset_users.append((reader, cin, w.dim(), expand))
                    notes.append(
                        f"{type(mod).__name__} {name!r} zero-pads its input: folded the scale into its weights and "
                        f"kept the offset {_fmt(offsets[-1])} as an explicit add before it (exact; a constant input "
                        "current in the SNN)" + (f"; the 1-channel input is expanded to {cin} channels because "
                                                 "the per-channel offsets differ" if expand else ""))
                else:
                    notes.append(f"folded the input scale into {type(mod).__name__} {name!r} (no offset; exact)")
            set_param(mod, "weight", new_w, mod.weight)
            if grayscale_to_rgb and not expand:
                mod.in_channels = 1
            channels = 1 if grayscale_to_rgb else cin
        else:
            fin = mod.in_features
            if kind == "linear":
                if grayscale_to_rgb:
                    raise GraphPassError(_PASS, layer_node, "grayscale_to_rgb needs an image input (conv or "
                                         "flatten -> linear), not a linear layer on the raw input")
                a, b = _to_channels(scale, shift, fin, layer_node)
                per, cin = 1, fin
            else:
                cin = scale.numel() if scale.numel() > 1 else (3 if grayscale_to_rgb else 1)
                if fin % cin:
                    raise GraphPassError(_PASS, layer_node, f"{fin} features do not split into {cin} channels")
                per = fin // cin
                a, b = _to_channels(scale, shift, cin, layer_node)
                a, b = a.repeat_interleave(per), b.repeat_interleave(per)
            w = mod.weight.detach().double()
            bias = _bias(mod) + w @ b
            new_w = w * a.view(1, -1)
            if grayscale_to_rgb:
                new_w = new_w.view(w.shape[0], cin, per).sum(1)
                mod.in_features = per
            set_param(mod, "bias", bias, mod.bias if mod.bias is not None else mod.weight)
            set_param(mod, "weight", new_w, mod.weight)
            notes.append(f"folded the input map into Linear {name!r} (weights and bias; exact)")
            channels = 1 if grayscale_to_rgb else (cin if kind == "flatten-linear" else fin)
        if data_channels is not None and channels != data_channels:
            raise GraphPassError(_PASS, layer_node, "the input's consumers disagree on its channel count")
        data_channels = channels

    # 4. rewire: consumers read the raw input (or input + offset); drop the constant ops
    offset_attr = None
    offset_nodes: dict[tuple, fx.Node] = {}
    for (reader, cin, rank_c, expand), d in zip(offset_users, offsets):
        key = (tuple(d.tolist()), expand, cin, rank_c)
        if key not in offset_nodes:
            offset_attr = _unique_buffer(gm, "input_offset")
            dtype = next((p.dtype for p in gm.parameters()), torch.float32)
            gm.register_buffer(offset_attr, d.to(dtype).view(1, -1, *([1] * (rank_c - 2))).clone())
            with graph.inserting_after(x):
                get = graph.get_attr(offset_attr)
            base = x
            if expand:
                with graph.inserting_after(get):
                    base = graph.call_method("expand", (x, -1, cin, *([-1] * (rank_c - 2))))
            with graph.inserting_after(base if expand else get):
                offset_nodes[key] = graph.call_function(operator.add, (base, get))
        reader.replace_input_with(cur, offset_nodes[key])
    for kind, reader, _, _ in consumers:
        if cur in reader.all_input_nodes:
            reader.replace_input_with(cur, x)
    operands = [a for node, _, _ in chain for a in node.args if isinstance(a, fx.Node) and a.op == "get_attr"]
    for node, _, _ in reversed(chain):
        graph.erase_node(node)
    for node in dict.fromkeys(operands):
        if not node.users:
            graph.erase_node(node)
    gm.meta["synopt_input"] = {"range": (0.0, 1.0), "channels": data_channels,
                               "offset": sorted(n.args[1].target for n in offset_nodes.values()) or None}
    return finish(gm, _PASS, notes)


def _to_channels(scale: torch.Tensor, shift: torch.Tensor, channels: int, node: fx.Node):
    if scale.numel() not in (1, channels):
        raise GraphPassError(_PASS, node, f"{scale.numel()} per-channel values for a layer with {channels} input "
                             "channels")
    return scale.expand(channels).clone(), shift.expand(channels).clone()


def _bias(mod: nn.Module) -> torch.Tensor:
    if mod.bias is None:
        return torch.zeros(mod.weight.shape[0], dtype=torch.float64)
    return mod.bias.detach().double()


def _unique_buffer(gm: fx.GraphModule, base: str) -> str:
    name, k = base, 1
    while hasattr(gm, name):
        name = f"{base}_{k}"
        k += 1
    return name


def _fmt(t: torch.Tensor) -> str:
    vals = [float(v) for v in t.flatten()]
    if len(vals) == 1:
        return f"{vals[0]:.6g}"
    return "[" + ", ".join(f"{v:.6g}" for v in vals) + "]"
