"""Shared plumbing of the graph preparation passes (see :mod:`synopt.graph.passes` and docs/passes.md)."""

from __future__ import annotations

import copy
import operator
from typing import Any, Iterable

import torch
import torch.fx as fx
import torch.nn as nn

from .. import energy

NOTES_KEY = "synopt_notes"

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
WEIGHT_TYPES = energy.WEIGHT_TYPES
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class GraphPassError(ValueError):
    """A graph a preparation pass cannot handle; the message names the pass and the node."""

    def __init__(self, pass_name: str, node: fx.Node | str | None, message: str):
        where = f" at node {_node_label(node)}" if node is not None else ""
        super().__init__(f"{pass_name}{where}: {message}")
        self.pass_name = pass_name
        self.node = node.name if isinstance(node, fx.Node) else node


def _node_label(node: fx.Node | str) -> str:
    if isinstance(node, str):
        return repr(node)
    if node.op == "call_module":
        return f"{node.name!r} (module {node.target!r})"
    if node.op in ("call_function", "call_method"):
        return f"{node.name!r} ({node.op} {getattr(node.target, '__name__', node.target)})"
    return f"{node.name!r} ({node.op})"


def to_graph(model: nn.Module) -> fx.GraphModule:
    """A NEW ``fx.GraphModule`` of ``model``, traced with the accounting's tracer (activation sites stay leaves).

    The model is deep-copied first, so nothing done to the result touches ``model``; a GraphModule is deep-copied
    as it is (with its notes in ``gm.meta``).  Untraceable models raise :class:`GraphPassError`.
    """
    if isinstance(model, fx.GraphModule):
        meta = copy.deepcopy(dict(getattr(model, "meta", {})))
        gm = copy.deepcopy(model)
        gm.meta = meta  # (older torch versions do not copy meta)
        gm.meta.setdefault(NOTES_KEY, [])
        return gm
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_graph expects an nn.Module, got {type(model).__name__}")
    clone = copy.deepcopy(model)
    try:
        gm = energy.trace(clone)
    except energy.AccountingError as exc:
        raise GraphPassError("to_graph", None, str(exc)) from exc
    gm.train(model.training)
    gm.meta[NOTES_KEY] = []
    return gm


def notes_of(gm: fx.GraphModule) -> list[str]:
    """The notes every pass applied so far appended to ``gm.meta['synopt_notes']`` (a copy)."""
    return list(getattr(gm, "meta", {}).get(NOTES_KEY, []))


def start(gm: nn.Module) -> fx.GraphModule:
    """The working copy of a pass: never modify the caller's module."""
    return to_graph(gm)


def finish(gm: fx.GraphModule, pass_name: str, notes: Iterable[str]) -> fx.GraphModule:
    gm.meta.setdefault(NOTES_KEY, []).extend(f"{pass_name}: {n}" for n in notes)
    gm.graph.lint()
    gm.recompile()
    return gm


def unique_attr(gm: fx.GraphModule, parent: str, base: str) -> str:
    """A free attribute path ``parent.base[_k]`` under module ``parent`` of ``gm`` ("" is the root)."""
    owner = gm.get_submodule(parent) if parent else gm
    base = "".join(c if c.isalnum() or c == "_" else "_" for c in base) or "m"
    if base[0].isdigit():
        base = "m_" + base
    name, k = base, 1
    while hasattr(owner, name):
        name = f"{base}_{k}"
        k += 1
    return f"{parent}.{name}" if parent else name


def parent_path(gm: fx.GraphModule, node: fx.Node) -> str:
    """The innermost module (qualified name) whose forward created ``node``, when fx recorded it; else root."""
    stack = node.meta.get("nn_module_stack") or {}
    names = dict(gm.named_modules())
    for key in reversed(list(stack.keys())):
        path = stack[key][0] if isinstance(stack[key], tuple) else key
        if isinstance(path, str) and path in names and not isinstance(names[path], WEIGHT_TYPES):
            return path
    return ""


def module_call_counts(gm: fx.GraphModule) -> dict[int, int]:
    """How many call_module nodes call each module instance (by id; aliases count together)."""
    counts: dict[int, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            counts[id(m)] = counts.get(id(m), 0) + 1
    return counts


def delete_if_unused(gm: fx.GraphModule, target: str) -> None:
    if not any(n.op == "call_module" and n.target == target for n in gm.graph.nodes):
        gm.delete_submodule(target)


def zero_padding_involved(conv: nn.Module) -> bool:
    """True if the conv pads its input with zeros (so a per-channel offset on its input is not a constant bias)."""
    if getattr(conv, "padding_mode", "zeros") != "zeros":
        return False  # reflect/replicate/circular pad with input values: per-channel affine maps commute with them
    pad = conv.padding
    if isinstance(pad, str):
        return pad == "same" and any(int(d) * (int(k) - 1) > 0 for d, k in zip(conv.dilation, conv.kernel_size))
    return any(int(p) != 0 for p in pad)


def set_param(mod: nn.Module, name: str, value: torch.Tensor, like: torch.Tensor) -> None:
    """Store ``value`` as a fresh trainable ``nn.Parameter`` (dtype/device/requires_grad of ``like``)."""
    p = nn.Parameter(value.detach().to(dtype=like.dtype, device=like.device).clone(),
                     requires_grad=like.requires_grad)
    setattr(mod, name, p)


def get_attr_value(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


_VIEW_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "squeeze", "unsqueeze", "expand",
                 "__getitem__", "narrow", "unflatten", "view_as", "t", "select", "chunk", "split", "unbind"}
_VIEW_FUNCTIONS = {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze,
                   operator.getitem, torch.narrow, torch.chunk, torch.split, torch.select, torch.unbind}


def is_view(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _VIEW_METHODS
    if node.op == "call_function":
        return node.target in _VIEW_FUNCTIONS
    return False


def functionalize_after(gm: fx.GraphModule, node: fx.Node, mutated: fx.Node, pass_name: str) -> int:
    """``node`` used to modify ``mutated`` in place; make it out-of-place without changing what later nodes read.

    Every user of ``mutated`` that runs after ``node`` read the modified tensor, i.e. ``node``'s result, so it is
    rewired to ``node``.  If ``mutated`` is a view of another tensor that is read later, the in-place op also changed
    that tensor; this is not rewritten and raises :class:`GraphPassError`.  Returns the number of rewired uses.
    """
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    later = [u for u in mutated.users if u is not node and order[u] > order[node]]
    for u in later:
        u.replace_input_with(mutated, node)
    base = mutated
    while is_view(base) and base.args and isinstance(base.args[0], fx.Node):
        base = base.args[0]
        if any(order[u] > order[node] for u in base.users):
            raise GraphPassError(
                pass_name, node,
                f"modifies {mutated.name!r} in place, which is a view of {base.name!r} that is read afterwards; "
                "rewrite the model without the in-place operation")
    return len(later)
