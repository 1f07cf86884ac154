"""Graph preparation passes: make a trained ANN convertible to an SNN without changing what it computes.

Every pass takes an ``nn.Module`` (usually the ``fx.GraphModule`` of :func:`to_graph` or of the ONNX importer) and
returns a NEW ``fx.GraphModule``; the input is never modified.  What a pass did (folded, kept, replaced, removed) is
appended as one-line strings to ``gm.meta['synopt_notes']`` (read them with :func:`notes_of`); notes carry over from
pass to pass.  A graph a pass cannot handle raises :class:`GraphPassError` (a ``ValueError``) naming the node.
Every result passes ``gm.graph.lint()``, is recompiled, and can be counted by :func:`synopt.energy.analyze`.

:func:`prepare` runs them in order::

    to_graph -> replace_bounded_relu -> one_module_per_call_site -> remove_softmax_head -> fold_input_normalization
             -> fold_batchnorm -> replace_maxpool -> bias_policy

See docs/passes.md for what each pass does, when it is exact and the choices made.
"""

from __future__ import annotations

import copy
import operator
import warnings
from typing import Any, Mapping

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .. import energy
from ._passutil import (BN_TYPES, NOTES_KEY, WEIGHT_TYPES, GraphPassError, finish, functionalize_after, notes_of,
                        parent_path, start, to_graph, unique_attr)
from .bnfold import fold_batchnorm
from .inputs import InputConvention, fold_input_normalization

__all__ = [
    "GraphPassError",
    "MaxPoolReplacedWarning",
    "BoundedReLUReplacedWarning",
    "InputConvention",
    "to_graph",
    "notes_of",
    "replace_bounded_relu",
    "one_module_per_call_site",
    "fold_batchnorm",
    "replace_maxpool",
    "remove_softmax_head",
    "fold_input_normalization",
    "bias_policy",
    "prepare",
    "NOTES_KEY",
]


class MaxPoolReplacedWarning(UserWarning):
    """Max pooling was replaced by average pooling (the model's output changes; fine-tune afterwards)."""


class BoundedReLUReplacedWarning(UserWarning):
    """A bounded ReLU (ReLU6, Hardtanh(0, t), clamp(0, t)) became a ReLU (the output changes; fine-tune afterwards)."""


# --------------------------------------------------------------------------------------------------------------------
# 0. bounded ReLUs (ReLU6, Hardtanh(0, t), clamp(0, t)) -> ReLU
# --------------------------------------------------------------------------------------------------------------------

_HARDTANH_FUNCS = {F.hardtanh, F.relu6}
_CLAMP_FUNCS = {torch.clamp, torch.clip}


def _bounds(node: fx.Node, gm: fx.GraphModule) -> tuple[Any, Any, bool] | None:
    """(low, high, inplace) of a bounded-ReLU-shaped node (ReLU6/Hardtanh module, F.relu6, F.hardtanh, clamp with
    both bounds), else None."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if isinstance(mod, nn.Hardtanh):  # nn.ReLU6 is a Hardtanh(0, 6)
            return mod.min_val, mod.max_val, bool(mod.inplace)
        return None
    if node.op == "call_function" and node.target in _HARDTANH_FUNCS:
        if node.target is F.relu6:
            return 0.0, 6.0, bool(dict(zip(("input", "inplace"), node.args)).get("inplace",
                                                                                 node.kwargs.get("inplace", False)))
        bound = dict(zip(("input", "min_val", "max_val", "inplace"), node.args))
        bound.update(node.kwargs)
        return bound.get("min_val", -1.0), bound.get("max_val", 1.0), bool(bound.get("inplace", False))
    clamp = (node.op == "call_function" and node.target in _CLAMP_FUNCS) or (
        node.op == "call_method" and node.target in ("clamp", "clip", "clamp_", "clip_"))
    if not clamp:
        return None
    args = list(node.args[1:])
    lo = args[0] if args else node.kwargs.get("min")
    hi = args[1] if len(args) > 1 else node.kwargs.get("max")
    if hi is None:
        return None  # clamp(min=0) alone is a ReLU (one_module_per_call_site)
    return lo, hi, node.op == "call_method" and node.target.endswith("_")


def replace_bounded_relu(gm: nn.Module) -> fx.GraphModule:
    """Replace every bounded ReLU -- ``nn.ReLU6``, ``nn.Hardtanh(0, t)``, ``F.relu6``, ``F.hardtanh(x, 0, t)``,
    ``clamp(x, 0, t)`` (the importer's ``Clip(0, t)``) -- by a plain ReLU.

    An integrate-and-fire neuron has no ceiling on its spike count: the SNN computes ReLU at these sites whatever the
    ANN did. Replacing the bound here makes QAT, the SynOp estimates and calibration see the function the SNN runs.
    The output changes wherever an activation exceeded its bound (fine-tune afterwards); each replacement is named in
    a :class:`BoundedReLUReplacedWarning` and a note. Module names are kept. A lower bound other than 0 (e.g.
    ``Hardtanh(-1, 1)``) is not ReLU-like and raises :class:`GraphPassError`.
    """
    gm = start(gm)
    graph = gm.graph
    notes: list[str] = []
    replaced: set[str] = set()
    for node in list(graph.nodes):
        found = _bounds(node, gm)
        if found is None:
            continue
        lo, hi, inplace = found
        if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float))):
            raise GraphPassError("replace_bounded_relu", node, "clamp bounds that are tensors, not numbers")
        if lo != 0:
            raise GraphPassError("replace_bounded_relu", node,
                                 f"an activation clipped to [{lo:g}, {hi:g}] is not ReLU-like (spiking neurons need "
                                 "a lower bound of 0); use ReLU or ReLU6 in the model")
        if node.op == "call_module":
            if node.target not in replaced:
                parent, _, leaf = node.target.rpartition(".")
                setattr(gm.get_submodule(parent) if parent else gm, leaf, nn.ReLU(inplace=inplace))
                replaced.add(node.target)
            what = f"module {node.target!r}"
        else:
            with graph.inserting_before(node):
                new = graph.call_function(F.relu, (_first_arg(node),), {"inplace": inplace})
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            graph.erase_node(node)
            what = f"node {node.name!r}"
        msg = (f"activation clipped to [0, {hi:g}] at {what} replaced by ReLU (IF neurons have no upper bound); the "
               "model's output changes where activations exceeded the bound, fine-tune before converting")
        warnings.warn(f"replace_bounded_relu: {msg}", BoundedReLUReplacedWarning, stacklevel=2)
        notes.append(msg)
    return finish(gm, "replace_bounded_relu", notes)


# --------------------------------------------------------------------------------------------------------------------
# 1. one activation module per call site (and no in-place ops)
# --------------------------------------------------------------------------------------------------------------------

_RELU_FUNCS = {F.relu, torch.relu}
_RELU_INPLACE_FUNCS = {torch.relu_, F.relu_}
_INPLACE_OPERATORS = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                      operator.itruediv: operator.truediv}
_INPLACE_METHODS = {"add_": "add", "sub_": "sub", "mul_": "mul", "div_": "div", "relu_": "relu", "clamp_": "clamp",
                    "clamp_min_": "clamp_min"}


def _first_arg(node: fx.Node) -> Any:
    if node.args:
        return node.args[0]
    return node.kwargs.get("input", node.kwargs.get("self"))


def _is_clamp_relu(node: fx.Node) -> bool:
    """torch.clamp(x, min=0) / x.clamp(min=0) / x.clamp_min(0) with no upper bound: exactly a ReLU."""
    if node.op == "call_function" and node.target in (torch.clamp, torch.clip):
        name = "clamp"
    elif node.op == "call_function" and node.target is torch.clamp_min:
        name = "clamp_min"
    elif node.op == "call_method" and node.target in ("clamp", "clip", "clamp_min"):
        name = "clamp_min" if node.target == "clamp_min" else "clamp"
    else:
        return False
    args = list(node.args[1:])
    lo = args[0] if args else node.kwargs.get("min")
    hi = None if name == "clamp_min" else (args[1] if len(args) > 1 else node.kwargs.get("max"))
    extra = set(node.kwargs) - {"min", "max"}
    return not extra and isinstance(lo, (int, float)) and not isinstance(lo, bool) and lo == 0 and hi is None


def one_module_per_call_site(gm: nn.Module) -> fx.GraphModule:
    """Give every activation call site its own module, and remove in-place operations.

    * ``F.relu`` / ``torch.relu`` / ``Tensor.relu`` (and ``clamp(min=0)``) calls become new ``nn.ReLU`` modules
      (registered next to the code that called them, e.g. ``layer1.0.relu_2``);
    * an activation-site module (``synopt.energy.is_activation_site``) called at several nodes keeps the first call;
      every further call gets a deep copy (``<name>_1``, ...), so sinabs makes one IF layer per site;
    * ``inplace=True`` modules/keyword arguments become ``inplace=False``, ``x += y``-style operators and
      ``add_``/``mul_``/``relu_``... methods their out-of-place forms; later readers of the modified tensor are
      rewired to the new result, so the function computed is unchanged.  Exact.
    """
    gm = start(gm)
    graph = gm.graph
    notes: list[str] = []
    modules = dict(gm.named_modules())

    # -- in-place modules and ops
    for name, mod in modules.items():
        if isinstance(getattr(mod, "inplace", None), bool) and mod.inplace:
            mod.inplace = False
            notes.append(f"{type(mod).__name__} {name!r}: inplace=True -> inplace=False")
            for node in graph.nodes:
                if node.op == "call_module" and modules.get(node.target) is mod and isinstance(_first_arg(node),
                                                                                                fx.Node):
                    functionalize_after(gm, node, _first_arg(node), "one_module_per_call_site")
    for node in list(graph.nodes):
        mutated = _first_arg(node) if node.op in ("call_function", "call_method") else None
        if not isinstance(mutated, fx.Node):
            continue
        if node.op == "call_function" and node.target in _INPLACE_OPERATORS:
            node.target = _INPLACE_OPERATORS[node.target]
        elif node.op == "call_function" and node.target in _RELU_INPLACE_FUNCS:
            node.target = torch.relu
        elif node.op == "call_method" and node.target in _INPLACE_METHODS:
            node.target = _INPLACE_METHODS[node.target]
        elif node.op == "call_function" and node.kwargs.get("inplace") is True:
            node.kwargs = {**node.kwargs, "inplace": False}
        else:
            continue
        functionalize_after(gm, node, mutated, "one_module_per_call_site")
        notes.append(f"node {node.name!r}: in-place op -> {getattr(node.target, '__name__', node.target)}")

    # -- functional ReLUs -> modules
    for node in list(graph.nodes):
        is_relu = ((node.op == "call_function" and node.target in _RELU_FUNCS)
                   or (node.op == "call_method" and node.target == "relu") or _is_clamp_relu(node))
        if not is_relu:
            continue
        inp = _first_arg(node)
        if not isinstance(inp, fx.Node):
            raise GraphPassError("one_module_per_call_site", node, "relu of a non-tensor argument")
        parent = parent_path(gm, node)
        target = unique_attr(gm, parent, "relu")
        gm.add_submodule(target, nn.ReLU())
        with graph.inserting_before(node):
            new = graph.call_module(target, (inp,))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        notes.append(f"{getattr(node.target, '__name__', node.target)} call {node.name!r} -> new nn.ReLU module "
                     f"{target!r}")

    # -- shared activation modules -> one copy per call site
    seen: set[int] = set()
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        if not energy.is_activation_site(mod):
            continue
        if id(mod) not in seen:
            seen.add(id(mod))
            continue
        parent, _, leaf = node.target.rpartition(".")
        target = unique_attr(gm, parent, leaf)
        clone = copy.deepcopy(mod)
        gm.add_submodule(target, clone)
        extra = " (its parameters are now separate copies)" if any(True for _ in clone.parameters()) else ""
        notes.append(f"{type(mod).__name__} {node.target!r} is called again at node {node.name!r}: that call now "
                     f"uses its own copy {target!r}{extra}")
        node.target = target
        seen.add(id(clone))
    return finish(gm, "one_module_per_call_site", notes)


# --------------------------------------------------------------------------------------------------------------------
# 3. max pooling -> average pooling
# --------------------------------------------------------------------------------------------------------------------

_MAXPOOL_MODULES = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}
_ADAPTIVE_MAX_MODULES = {nn.AdaptiveMaxPool1d: nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool2d: nn.AdaptiveAvgPool2d,
                         nn.AdaptiveMaxPool3d: nn.AdaptiveAvgPool3d}
_MAXPOOL_FUNCS = {F.max_pool1d: F.avg_pool1d, F.max_pool2d: F.avg_pool2d, F.max_pool3d: F.avg_pool3d,
                  torch.max_pool1d: F.avg_pool1d, torch.max_pool2d: F.avg_pool2d, torch.max_pool3d: F.avg_pool3d}
_ADAPTIVE_MAX_FUNCS = {F.adaptive_max_pool1d: F.adaptive_avg_pool1d, F.adaptive_max_pool2d: F.adaptive_avg_pool2d,
                       F.adaptive_max_pool3d: F.adaptive_avg_pool3d}
_MAXPOOL_PARAMS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def _all_ones(v: Any) -> bool:
    return all(int(d) == 1 for d in (v if isinstance(v, (tuple, list)) else (v,)))


def replace_maxpool(gm: nn.Module, keep: bool = False) -> fx.GraphModule:
    """Replace every max pooling (module or function) by average pooling of the same kernel/stride/padding/ceil_mode.

    The replacement uses ``count_include_pad=True``: every window is divided by the full k^2, so the pool is exactly
    a sum pool times 1/k^2 everywhere (what the accounting and neuromorphic hardware assume: the 1/k^2 goes into the
    next weights).  With padding, border windows therefore average in zeros (max pooling ignored its -inf padding).
    Adaptive max pooling becomes adaptive average pooling.  The output changes (fine-tune afterwards); each replaced
    node is named in a :class:`MaxPoolReplacedWarning`.  ``keep=True`` leaves max pooling (its error on spikes does
    not shrink with T) and only notes where it is.  Dilated pooling and ``return_indices`` raise GraphPassError.
    """
    gm = start(gm)
    graph = gm.graph
    notes: list[str] = []
    replaced_modules: dict[str, nn.Module] = {}
    for node in list(graph.nodes):
        desc = None
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if type(mod) in _MAXPOOL_MODULES:
                if not _all_ones(mod.dilation):
                    raise GraphPassError("replace_maxpool", node, "dilated max pooling has no average-pool twin")
                if mod.return_indices:
                    raise GraphPassError("replace_maxpool", node, "max pooling with return_indices")
                stride = mod.stride if mod.stride is not None else mod.kernel_size
                desc = f"{type(mod).__name__}(kernel={mod.kernel_size}, stride={stride}, padding={mod.padding})"
                if not keep and node.target not in replaced_modules:
                    replaced_modules[node.target] = _MAXPOOL_MODULES[type(mod)](
                        mod.kernel_size, stride, mod.padding, ceil_mode=mod.ceil_mode, count_include_pad=True)
            elif type(mod) in _ADAPTIVE_MAX_MODULES:
                if mod.return_indices:
                    raise GraphPassError("replace_maxpool", node, "adaptive max pooling with return_indices")
                desc = f"{type(mod).__name__}(output_size={mod.output_size})"
                if not keep and node.target not in replaced_modules:
                    replaced_modules[node.target] = _ADAPTIVE_MAX_MODULES[type(mod)](mod.output_size)
            where = f"module {node.target!r}"
        elif node.op == "call_function" and node.target in _MAXPOOL_FUNCS:
            bound = dict(zip(_MAXPOOL_PARAMS, node.args))
            bound.update(node.kwargs)
            kernel = bound["kernel_size"]
            stride = bound.get("stride") or kernel  # None and [] (torch.max_pool2d's default) mean the kernel
            padding = bound.get("padding", 0)
            if not _all_ones(bound.get("dilation", 1)):
                raise GraphPassError("replace_maxpool", node, "dilated max pooling has no average-pool twin")
            if bound.get("return_indices", False):
                raise GraphPassError("replace_maxpool", node, "max pooling with return_indices")
            fname = getattr(node.target, "__name__", "max_pool")
            desc = f"{fname}(kernel={kernel}, stride={stride}, padding={padding})"
            where = "function call"
            if not keep:
                node.target = _MAXPOOL_FUNCS[node.target]
                node.args = (bound["input"], kernel)
                node.kwargs = {"stride": stride, "padding": padding, "ceil_mode": bool(bound.get("ceil_mode", False)),
                               "count_include_pad": True}
        elif node.op == "call_function" and node.target in _ADAPTIVE_MAX_FUNCS:
            bound = dict(zip(("input", "output_size", "return_indices"), node.args))
            bound.update(node.kwargs)
            if bound.get("return_indices", False):
                raise GraphPassError("replace_maxpool", node, "adaptive max pooling with return_indices")
            desc = f"adaptive max pooling(output_size={bound['output_size']})"
            where = "function call"
            if not keep:
                node.target = _ADAPTIVE_MAX_FUNCS[node.target]
                node.args = (bound["input"], bound["output_size"])
                node.kwargs = {}
        if desc is None:
            continue
        if keep:
            notes.append(f"kept max pooling at node {node.name!r} ({where}, {desc}): max-pooling spikes has an "
                         "error that does not shrink with T")
            continue
        msg = (f"max pooling at node {node.name!r} ({where}, {desc}) replaced by average pooling "
               "(count_include_pad=True); the model's output changes, fine-tune before converting")
        warnings.warn(f"replace_maxpool: {msg}", MaxPoolReplacedWarning, stacklevel=2)
        notes.append(msg)
    for target, new in replaced_modules.items():
        parent, _, leaf = target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, new)
    return finish(gm, "replace_maxpool", notes)


# --------------------------------------------------------------------------------------------------------------------
# 4. softmax at the output
# --------------------------------------------------------------------------------------------------------------------

_SOFTMAX_FUNCS = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, torch.special.softmax,
                  torch.special.log_softmax}
_SOFTMAX_MODULES = (nn.Softmax, nn.LogSoftmax, nn.Softmax2d)


def _is_softmax(gm: fx.GraphModule, node: Any) -> bool:
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_function":
        return node.target in _SOFTMAX_FUNCS
    if node.op == "call_method":
        return node.target in ("softmax", "log_softmax")
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), _SOFTMAX_MODULES)
    return False


def remove_softmax_head(gm: nn.Module) -> fx.GraphModule:
    """Drop Softmax/LogSoftmax (module, function or method) whose result is returned directly: the SNN reads out
    logits (the argmax is unchanged; spike counts are not probabilities).  Softmax elsewhere is left and noted."""
    gm = start(gm)
    graph = gm.graph
    notes: list[str] = []
    out = next(n for n in graph.nodes if n.op == "output")
    removed: list[fx.Node] = []

    def strip(arg):
        if _is_softmax(gm, arg):
            removed.append(arg)
            return _first_arg(arg)
        return arg

    out.args = (fx.node.map_arg(out.args[0], strip),)
    for node in dict.fromkeys(removed):
        kind = (f"{type(gm.get_submodule(node.target)).__name__} module" if node.op == "call_module"
                else getattr(node.target, "__name__", node.target))
        if not node.users:
            graph.erase_node(node)
            notes.append(f"removed {kind} {node.name!r} feeding the output (the model now returns logits)")
        else:
            notes.append(f"the output no longer goes through {kind} {node.name!r} (still used by other nodes)")
    for node in graph.nodes:
        if _is_softmax(gm, node):
            notes.append(f"left {node.name!r}: a softmax that does not feed the output directly")
    if removed:
        for target in {n.target for n in removed if n.op == "call_module"}:
            if not any(n.op == "call_module" and n.target == target for n in graph.nodes):
                gm.delete_submodule(target)
    else:
        notes.append("no softmax at the output")
    return finish(gm, "remove_softmax_head", notes)


# --------------------------------------------------------------------------------------------------------------------
# 6. biases
# --------------------------------------------------------------------------------------------------------------------


def bias_policy(gm: nn.Module, mode: str = "keep") -> fx.GraphModule:
    """``mode='keep'``: leave conv/linear biases (in the SNN each is a constant input current injected every time
    step; the converter must scale it like the input, e.g. b/T per step under count coding).  ``mode='remove'``:
    set them to None (the output changes; fine-tune afterwards) and note the largest |bias| removed, also in
    ``gm.meta['synopt_max_abs_bias_removed']``."""
    if mode not in ("keep", "remove"):
        raise ValueError(f"bias mode must be 'keep' or 'remove', got {mode!r}")
    gm = start(gm)
    notes: list[str] = []
    layers = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if isinstance(mod, WEIGHT_TYPES) and getattr(mod, "bias", None) is not None:
                layers.setdefault(node.target, mod)
    if mode == "keep":
        if layers:
            notes.append(f"kept the biases of {len(layers)} layer(s) ({', '.join(layers)}): constant input currents "
                         "in the SNN")
        else:
            notes.append("no conv/linear has a bias")
    else:
        largest, where = 0.0, None
        for name, mod in layers.items():
            m = float(mod.bias.detach().abs().max()) if mod.bias.numel() else 0.0
            if m >= largest:
                largest, where = m, name
            mod.bias = None
            notes.append(f"removed the bias of {type(mod).__name__} {name!r} (max |b| = {m:.4g})")
        notes.append(f"removed {len(layers)} bias(es); largest |bias| removed = {largest:.4g}"
                     + (f" in {where!r}" if where else ""))
        gm.meta["synopt_max_abs_bias_removed"] = largest
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), BN_TYPES):
            notes.append(f"batch norm {node.target!r} was not folded: its shift is a bias too (not removed)")
    offset = gm.meta.get("synopt_input", {}).get("offset")
    if offset:
        notes.append(f"the input offset {offset} (fold_input_normalization) is a constant input current too "
                     "(not removed)")
    return finish(gm, "bias_policy", notes)


# --------------------------------------------------------------------------------------------------------------------
# 7. all of them
# --------------------------------------------------------------------------------------------------------------------


def prepare(model: nn.Module, *, fold_bn: bool = True, maxpool: str = "avg", softmax: str = "remove",
            bias: str = "keep", input_convention: InputConvention | Mapping[str, Any] | None = None,
            bounded_relu: str = "relu") -> tuple[fx.GraphModule, list[str]]:
    """Run the preparation passes in order and return ``(graph_module, notes)``.

    ``to_graph -> replace_bounded_relu -> one_module_per_call_site -> remove_softmax_head -> fold_input_normalization
    -> fold_batchnorm -> replace_maxpool -> bias_policy``.  ``input_convention`` (an :class:`InputConvention` or a
    dict of :func:`fold_input_normalization` keywords) is folded into the first layer(s); with ``None`` only the
    model's own constant ``x - c`` / ``x / c`` / ``x * c`` ops on the input are folded, when there are any and they
    can be (otherwise they stay, with a note).  ``maxpool``: ``'avg'`` or ``'keep'``; ``softmax``: ``'remove'`` or
    ``'keep'``; ``bias``: ``'keep'`` or ``'remove'``; ``bounded_relu``: ``'relu'`` (ReLU6 & co. become ReLU, what an
    IF neuron computes) or ``'keep'`` (the model's own function, e.g. to measure it; not convertible).
    """
    if maxpool not in ("avg", "keep"):
        raise ValueError(f"maxpool must be 'avg' or 'keep', got {maxpool!r}")
    if softmax not in ("remove", "keep"):
        raise ValueError(f"softmax must be 'remove' or 'keep', got {softmax!r}")
    if bias not in ("keep", "remove"):
        raise ValueError(f"bias must be 'keep' or 'remove', got {bias!r}")
    if bounded_relu not in ("relu", "keep"):
        raise ValueError(f"bounded_relu must be 'relu' or 'keep', got {bounded_relu!r}")
    gm = to_graph(model)
    if bounded_relu == "relu":
        gm = replace_bounded_relu(gm)
    gm = one_module_per_call_site(gm)
    if softmax == "remove":
        gm = remove_softmax_head(gm)
    if input_convention is not None:
        kwargs = input_convention.kwargs() if isinstance(input_convention, InputConvention) else dict(input_convention)
        gm = fold_input_normalization(gm, **kwargs)
    else:
        try:
            gm = fold_input_normalization(gm)
        except GraphPassError as exc:
            gm.meta[NOTES_KEY].append(f"fold_input_normalization: left the constant ops on the input ({exc})")
    if fold_bn:
        gm = fold_batchnorm(gm)
    gm = replace_maxpool(gm, keep=(maxpool == "keep"))
    gm = bias_policy(gm, bias)
    return gm, notes_of(gm)
