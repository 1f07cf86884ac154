"""Batch norm folded into per-neuron thresholds (Eq. 27 of 004_*), the T = 1 sinabs export and its folder."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from synopt import zoo
from synopt.finetune.neuron import ThresholdNeuron
from synopt.finetune.sites import set_module, site_links
from synopt.runs import load_checkpoint, save_checkpoint, write_json

SNN_FORMAT = "synopt.direct-snn/1"

@dataclass
class FoldResult:
    """A folded network (no BN before neurons; :class:`ThresholdNeuron` sites) and what the folding did."""

    net: nn.Module
    thresholds: dict[str, torch.Tensor]
    polarity: dict[str, torch.Tensor]  # only sites with a γ < 0 channel that could not be folded into weights
    removed_bn: list[str]
    negated: dict[str, list[int]]  # weight layer -> output channels whose sign was flipped (γ < 0)
    constant: dict[str, dict[str, list[int]]]  # site -> {"always": [...], "never": [...]} channels (γ = 0)
    u_th: dict[str, float]


def fold_thresholds(model: nn.Module) -> FoldResult:
    """Fold every ``BN -> SingleStepNeuron`` into a per-neuron threshold (Eq. 27 of 004_*), exactly.

    With σ = sqrt(running_var + eps): H(γ(x - μ)/σ + β - u_th) equals

    * γ > 0: H(x - θ'), θ' = μ + σ(u_th - β)/γ;
    * γ < 0: the inequality flips, s = [x <= θ'] = H(-x - (-θ')): the output channel of the conv/linear feeding the
      BN is negated (weights and bias; exact in floating point) and θ = -θ'.  If no such exclusive weight layer
      exists (e.g. the BN after a residual addition) the neuron keeps a polarity of -1; the IF export negates every
      synapse into it instead (``IFSqueeze.input_sign``, threshold -θ'), exact as well;
    * γ = 0: s = H(β - u_th) is constant: θ = -max float (always fires) or +max float (never fires).

    Thresholds are computed in float64 and stored in the model's dtype.  The BN modules become ``nn.Identity`` (so
    the module names, the state_dict keys of the weights and the energy accounting are unchanged).  Sites without
    a BN right before them get θ = u_th.  The input ``model`` is not modified.
    """
    net = copy.deepcopy(model).eval()
    modules = dict(net.named_modules())
    links = site_links(net)
    if not links:
        raise ValueError("the network has no single-step neurons to fold")
    thresholds, polarity, negated, constant, u_ths, removed = {}, {}, {}, {}, {}, []
    for link in links:
        neuron = modules[link.site]
        if isinstance(neuron, ThresholdNeuron):
            raise ValueError(f"site {link.site!r} is already folded")
        if neuron.bipolar:
            raise ValueError(f"site {link.site!r} emits ±1 ({neuron.surrogate}); folding and the IF export need "
                             "{0, 1} spikes")
        u_th = neuron.u_th
        u_ths[link.site] = u_th
        param = next(net.parameters())
        dtype = param.dtype
        big = float(torch.finfo(torch.float32).max)
        if link.bn is None:
            thresholds[link.site] = torch.tensor(u_th, dtype=dtype)
            set_module(net, link.site, ThresholdNeuron(thresholds[link.site]))
            continue
        bn = modules[link.bn]
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(f"batch norm {link.bn!r} keeps no running statistics; it cannot be folded")
        mu = bn.running_mean.detach().double()
        sigma = torch.sqrt(bn.running_var.detach().double() + bn.eps)
        gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(mu)
        beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(mu)
        neg, zero = gamma < 0, gamma == 0
        safe_gamma = torch.where(zero, torch.ones_like(gamma), gamma)
        theta = mu + sigma * (u_th - beta) / safe_gamma
        pol = torch.ones_like(theta)
        if bool(neg.any()):
            channels = neg.nonzero().flatten().tolist()
            if link.linear is not None:
                lin = modules[link.linear]
                with torch.no_grad():
                    lin.weight[channels] = -lin.weight[channels]
                    if lin.bias is not None:
                        lin.bias[channels] = -lin.bias[channels]
                theta = torch.where(neg, -theta, theta)
                negated[link.linear] = channels
            else:
                pol = torch.where(neg, -torch.ones_like(pol), pol)
        fires = beta.to(bn.weight.dtype if bn.affine else dtype).double() >= u_th
        if bool(zero.any()):
            theta = torch.where(zero & fires, torch.full_like(theta, -big), theta)
            theta = torch.where(zero & ~fires, torch.full_like(theta, big), theta)
            pol = torch.where(zero, torch.ones_like(pol), pol)
            constant[link.site] = {"always": (zero & fires).nonzero().flatten().tolist(),
                                   "never": (zero & ~fires).nonzero().flatten().tolist()}
        # per channel, broadcast over the positions of the BN's input ([C] for BatchNorm1d on features)
        dims = {nn.BatchNorm1d: 0, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}[type(bn)] if type(bn) in (
            nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d) else 0
        shape = (-1,) + (1,) * dims
        theta_t = theta.clamp(-big, big).to(dtype).reshape(shape)
        pol_t = pol.to(dtype).reshape(shape) if bool((pol < 0).any()) else None
        thresholds[link.site] = theta_t
        if pol_t is not None:
            polarity[link.site] = pol_t
        set_module(net, link.bn, nn.Identity())
        removed.append(link.bn)
        set_module(net, link.site, ThresholdNeuron(theta_t, pol_t))
    return FoldResult(net.eval(), thresholds, polarity, removed, negated, constant, u_ths)


def export_sinabs(fold: FoldResult):
    """The folded network as a T = 1 sinabs network (``IFSqueeze`` with per-neuron thresholds, single spike).

    Count coding at T = 1 injects the input once; ``readout="current"``: the logits are the output current, as in
    the single-step network.  ``simulate(snn, data, timesteps=1, input_shape)`` then reproduces the folded network's
    predictions and spikes exactly.
    """
    return _t1_network(fold.net, fold.thresholds, fold.polarity)


def _t1_network(net: nn.Module, thresholds: dict[str, torch.Tensor], polarity: dict[str, torch.Tensor]):
    """The T = 1 IF network of a folded net: per-neuron thresholds, single spike, current readout."""
    from synopt.convert.to_sinabs import to_sinabs

    return to_sinabs(net, encoding="count", thresholds=dict(thresholds), single_spike=True, readout="current",
                     polarity=dict(polarity))


def save_snn(folder: str | Path, fold: FoldResult, spec: dict) -> None:
    """``folder/weights.pt`` (folded state_dict + thresholds) and ``folder/spec.json`` (see docs/direct.md)."""
    folder = Path(folder)
    save_checkpoint(folder / "weights.pt", {"state_dict": fold.net.state_dict(),
                                            "thresholds": {k: v.detach().clone() for k, v in fold.thresholds.items()},
                                            "polarity": {k: v.detach().clone() for k, v in fold.polarity.items()}})
    full = {"format": SNN_FORMAT, "route": "direct", **spec,
            "encoding": "count", "timesteps": 1, "single_spike": True, "readout": "current", "min_v_mem": None,
            "init_v_fraction": 0.0, "sites": list(fold.thresholds), "removed_batchnorm": fold.removed_bn,
            "negated_channels": fold.negated, "constant_neurons": fold.constant, "u_th": fold.u_th,
            "exportable": True}
    write_json(folder / "spec.json", full)


def load_folded(folder: str | Path) -> tuple[nn.Module, dict, dict[str, torch.Tensor]]:
    """The folded network of a direct run's ``snn/`` folder, its spec and its thresholds."""
    folder = Path(folder)
    spec_path = folder / "spec.json"
    if not spec_path.is_file():
        raise FileNotFoundError(f"{spec_path} not found: pass the snn folder of a `synopt finetune --direct` run")
    spec = json.loads(spec_path.read_text())
    if spec.get("format") != SNN_FORMAT:
        raise ValueError(f"{spec_path} is not a direct-route SNN ({spec.get('format')!r})")
    src = spec["source"]
    net = zoo.build(src["name"], act=ThresholdNeuron, **src.get("overrides", {}))
    for name in spec["removed_batchnorm"]:
        set_module(net, name, nn.Identity())
    payload = load_checkpoint(folder / "weights.pt")
    net.load_state_dict(payload["state_dict"])
    thresholds = payload.get("thresholds", {})
    polarity = payload.get("polarity", {}) or {}
    for name, theta in thresholds.items():
        net.get_submodule(name).set_threshold(theta, polarity.get(name))
    return net.eval(), spec, thresholds


def load_snn(folder: str | Path):
    """The exported T = 1 sinabs network of a direct run's ``snn/`` folder, and its spec."""
    net, spec, thresholds = load_folded(folder)
    polarity = {name: mod.polarity for name, mod in net.named_modules()
                if isinstance(mod, ThresholdNeuron) and mod.polarity is not None}
    return _t1_network(net, thresholds, polarity), spec
