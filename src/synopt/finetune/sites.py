"""Where the spiking sites of a single-step network sit in its graph: the BN and weight layer feeding each neuron."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from synopt import energy
from synopt.finetune.bn_stats import BN_TYPES
from synopt.finetune.neuron import SingleStepNeuron, ThresholdNeuron

_LINEAR = energy.WEIGHT_TYPES

def call_counts(gm) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    return counts


@dataclass
class SiteLink:
    site: str
    bn: str | None = None  # BN module feeding the site (its only user), called once
    linear: str | None = None  # conv/linear feeding that BN (its only user), called once


def site_links(model: nn.Module) -> list[SiteLink]:
    """For each single-step neuron: the BN right before it and the weight layer right before that, if exclusive."""
    gm = energy.trace(model)
    modules = dict(model.named_modules())
    counts = call_counts(gm)
    links = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), (SingleStepNeuron, ThresholdNeuron)):
            continue
        if counts[node.target] != 1:
            raise ValueError(f"neuron module {node.target!r} is called at {counts[node.target]} places; give every "
                             "activation site its own module")
        link = SiteLink(node.target)
        src = node.args[0] if node.args else None
        if (getattr(src, "op", None) == "call_module" and isinstance(modules.get(src.target), BN_TYPES)
                and len(src.users) == 1 and counts[src.target] == 1):
            link.bn = src.target
            pre = src.args[0] if src.args else None
            if (getattr(pre, "op", None) == "call_module" and isinstance(modules.get(pre.target), _LINEAR)
                    and len(pre.users) == 1 and counts[pre.target] == 1):
                link.linear = pre.target
        links.append(link)
    return links


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
