"""First-layer scaling by rho (section 2.1.1 and 2.4.3 of 003_*, Sorbaro et al. 2020).

``scale_first_layer(model, rho)`` multiplies the weights of the layer(s) reading the input by rho; to keep the ReLU
network's function, every later bias is multiplied by rho too (activations of a bias-carrying ReLU net are only
homogeneous if biases scale with them), and the weight layer(s) producing the output are divided by rho
("the weights of the last weighted layer were scaled by 1/rho, in order to adapt the classification loss back to its
original range"). With rho > 1 a QReLU / spiking network carries rho times more spikes, so less information is lost to
quantization; with rho < 1 it carries fewer.
"""

from __future__ import annotations

import copy

import torch
import torch.fx as fx
import torch.nn as nn

from synopt import energy

_WEIGHT_TYPES = energy.WEIGHT_TYPES


def _weight_nodes(gm: fx.GraphModule) -> dict[fx.Node, nn.Module]:
    mods = dict(gm.named_modules())
    return {n: mods[n.target] for n in gm.graph.nodes
            if n.op == "call_module" and isinstance(mods[n.target], _WEIGHT_TYPES)}


def input_and_output_layers(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the weight layers that read the network input and of those whose output reaches the network output
    without passing another weight layer."""
    gm = energy.trace(model)
    weights = _weight_nodes(gm)
    first, last = [], []
    # forward from the input: the first weight layers met on every path
    stack = [n for n in gm.graph.nodes if n.op == "placeholder"]
    seen: set[fx.Node] = set()
    while stack:
        node = stack.pop()
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            if user in weights:
                first.append(user.target)
            else:
                stack.append(user)
    # backward from the output
    out = next(n for n in gm.graph.nodes if n.op == "output")
    stack, seen = list(out.all_input_nodes), set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node in weights:
            last.append(node.target)
        else:
            stack.extend(node.all_input_nodes)
    return sorted(set(first)), sorted(set(last))


@torch.no_grad()
def scale_first_layer(model: nn.Module, rho: float, compensate_output: bool = True) -> nn.Module:
    """A copy of ``model`` with the input layer(s) scaled by ``rho`` (see the module docstring)."""
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho}")
    first, last = input_and_output_layers(model)
    out = copy.deepcopy(model)
    mods = dict(out.named_modules())
    for name, mod in mods.items():
        if not isinstance(mod, _WEIGHT_TYPES):
            continue
        if name in first:
            mod.weight.mul_(rho)
        if mod.bias is not None:
            mod.bias.mul_(rho)
        if compensate_output and name in last:
            mod.weight.div_(rho)
            if mod.bias is not None:
                mod.bias.div_(rho)
    return out
