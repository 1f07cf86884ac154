"""Batch-norm folding on the fx graph, with trainable folded parameters (see docs/passes.md).

In eval mode a BatchNorm is the per-channel affine map ``y = s * x + t`` with ``s = gamma / sqrt(var + eps)`` and
``t = beta - mean * s``.  It is folded

* **backward** into the conv/linear that produces its input, when that layer's output has no other user and the layer
  module is called only there: ``W' = s W`` (per output channel), ``b' = s (b - mean) + beta``.  Exact.
* else **forward** into the conv/linear that is its only user: ``W'[o, i] = W[o, i] s[i]``,
  ``b' = b + sum_{i,k} W[o, i, k] t[i]``.  Exact only if the conv does not zero-pad (a zero-padded border of ``x`` is
  not a zero-padded border of ``s x + t``); reflect/replicate/circular padding commutes with the per-channel map, so
  those fold too.  With zero padding the BN is kept.

Anything else is kept and reported (e.g. the ``add -> BN -> ReLU`` of pre-activation ResNets).  ``torch.fx``'s own
``fuse`` is not used: it leaves folded biases untrainable and re-traces custom modules away.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn

from ._passutil import (BN_TYPES, CONV_TYPES, WEIGHT_TYPES, delete_if_unused, finish, module_call_counts,
                        set_param, start, zero_padding_involved)

__all__ = ["fold_batchnorm"]

_PASS = "fold_batchnorm"


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) in float64 with BN_eval(x) = s * x + t per channel."""
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    s = torch.rsqrt(var + bn.eps)
    if bn.affine and bn.weight is not None:
        s = s * bn.weight.detach().double()
    t = -mean * s
    if bn.affine and bn.bias is not None:
        t = t + bn.bias.detach().double()
    return s, t


_BN_FOR = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d),
           (nn.Linear, nn.BatchNorm1d))


def _dims_match(layer: nn.Module, bn: nn.Module) -> bool:
    """Conv{n}d pairs with BatchNorm{n}d; Linear with BatchNorm1d (assumed on (N, features) activations)."""
    return any(isinstance(layer, lt) and isinstance(bn, bt) for lt, bt in _BN_FOR)


def _fold_into_preceding(layer: nn.Module, bn: nn.Module) -> None:
    s, t = _bn_affine(bn)
    w = layer.weight.detach().double()
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    new_w = w * s.view(-1, *([1] * (w.dim() - 1)))
    new_b = b * s + t
    like_b = layer.bias if layer.bias is not None else layer.weight
    set_param(layer, "weight", new_w, layer.weight)
    set_param(layer, "bias", new_b, like_b)


def _fold_into_following(layer: nn.Module, bn: nn.Module) -> None:
    s, t = _bn_affine(bn)
    w = layer.weight.detach().double()
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    if isinstance(layer, nn.Linear):
        new_w = w * s.view(1, -1)
        new_b = b + w @ t
    else:
        groups = layer.groups
        cout, cin_g = w.shape[0], w.shape[1]
        # input channel seen by weight [o, j]: group of o times channels per group, plus j
        idx = (torch.arange(cout).div(cout // groups, rounding_mode="floor") * cin_g).view(-1, 1) \
            + torch.arange(cin_g).view(1, -1)
        shape = (cout, cin_g, *([1] * (w.dim() - 2)))
        new_w = w * s[idx].view(shape)
        new_b = b + (w * t[idx].view(shape)).flatten(1).sum(1)
    like_b = layer.bias if layer.bias is not None else layer.weight
    set_param(layer, "weight", new_w, layer.weight)
    set_param(layer, "bias", new_b, like_b)


def _layer_of(gm: fx.GraphModule, node: object) -> nn.Module | None:
    if isinstance(node, fx.Node) and node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if isinstance(mod, WEIGHT_TYPES):
            return mod
    return None


def fold_batchnorm(gm: nn.Module) -> fx.GraphModule:
    """Fold every eval-mode BatchNorm that can be folded exactly into a neighbouring conv/linear; keep the rest.

    Returns a NEW GraphModule; notes (``gm.meta['synopt_notes']``) list every BN folded (and where) and every BN
    kept (and why).  Folded weights and biases are fresh trainable ``nn.Parameter``s (a bias is created where the
    layer had none).  The result equals the input in eval mode; in train mode the folded BNs no longer normalise
    with batch statistics (fine-tune the folded model, or fold after fine-tuning).
    """
    gm = start(gm)
    notes: list[str] = []
    graph = gm.graph
    calls = module_call_counts(gm)
    folded_targets: list[str] = []
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        bn = gm.get_submodule(node.target)
        if not isinstance(bn, BN_TYPES):
            continue
        label = f"{node.target!r} ({type(bn).__name__})"
        if bn.running_mean is None or bn.running_var is None or len(node.args) != 1 or node.kwargs:
            notes.append(f"kept {label}: no running statistics (it normalises with batch statistics even in eval "
                         "mode), so it is not an affine map")
            continue
        src = node.args[0]
        prev = _layer_of(gm, src)
        why_not_prev = None
        if prev is None:
            why_not_prev = f"its input {getattr(src, 'name', src)!r} is not a conv/linear module"
        elif len(src.users) != 1:
            why_not_prev = f"the output of {src.target!r} has {len(src.users)} users"
        elif calls[id(prev)] != 1:
            why_not_prev = f"{src.target!r} is called at {calls[id(prev)]} sites"
        elif not _dims_match(prev, bn) or _out_features(prev) != bn.num_features:
            why_not_prev = f"{src.target!r} ({type(prev).__name__}) does not match its channels"
        if why_not_prev is None:
            _fold_into_preceding(prev, bn)
            node.replace_all_uses_with(src)
            graph.erase_node(node)
            folded_targets.append(node.target)
            notes.append(f"folded {label} into the preceding {type(prev).__name__} {src.target!r}")
            continue
        users = list(node.users)
        nxt = _layer_of(gm, users[0]) if len(users) == 1 else None
        why_not_next = None
        if len(users) != 1:
            why_not_next = f"its output has {len(users)} users"
        elif nxt is None:
            why_not_next = f"its output feeds {users[0].name!r}, not a conv/linear module"
        elif users[0].args[:1] != (node,) or len(users[0].args) != 1 or users[0].kwargs:
            why_not_next = f"{users[0].target!r} is called with other arguments"
        elif calls[id(nxt)] != 1:
            why_not_next = f"{users[0].target!r} is called at {calls[id(nxt)]} sites"
        elif not _dims_match(nxt, bn) or _in_features(nxt) != bn.num_features:
            why_not_next = f"{users[0].target!r} ({type(nxt).__name__}) does not match its channels"
        elif isinstance(nxt, CONV_TYPES) and zero_padding_involved(nxt):
            why_not_next = (f"the following conv {users[0].target!r} zero-pads its input, which a folded offset "
                            "cannot reproduce at the borders")
        if why_not_next is None:
            _fold_into_following(nxt, bn)
            users[0].replace_input_with(node, src)
            graph.erase_node(node)
            folded_targets.append(node.target)
            notes.append(f"folded {label} into the following {type(nxt).__name__} {users[0].target!r}")
            continue
        notes.append(f"kept {label}: cannot fold backward ({why_not_prev}) nor forward ({why_not_next})")
    for target in dict.fromkeys(folded_targets):
        delete_if_unused(gm, target)
    return finish(gm, _PASS, notes)


def _out_features(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _in_features(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
