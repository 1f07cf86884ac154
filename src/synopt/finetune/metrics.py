"""Metrics of a single-step SNN: Table 2 of 000_* (accuracy, E_SNN, dead rate, R, R(l), E_SNN(l)) and
E_Full/E_Method of App. B of 004_*, all counted by :mod:`synopt.energy`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset

from synopt import energy
from synopt.finetune.penalty import SpikeRecorder
from synopt.finetune.train import loader

@dataclass
class Measurement:
    """Raw measurements of a single-step network on a dataset (T = 1)."""

    samples: int
    accuracy: float
    synops_per_layer: dict[str, float]  # per inference (float64-exact)
    spikes_per_layer: dict[str, float]  # total over the samples
    ever_fired: dict[str, torch.Tensor] = field(repr=False)  # per neuron: fired on some sample
    predictions: torch.Tensor = field(repr=False)

    @property
    def synops(self) -> float:
        return float(sum(self.synops_per_layer.values()))


@torch.no_grad()
def measure(net: nn.Module, account: energy.NetworkAccount, data: Dataset, batch_size: int = 64,
            samples: int | None = None) -> Measurement:
    """Accuracy, SynOps per layer (E_SNN(l)/E_AC with T = 1), spike counts and per-neuron "ever fired" masks.

    Works on the training form (BN + :class:`SingleStepNeuron`) and the folded form (:class:`ThresholdNeuron`).
    SynOps are accumulated in float64 from the {0, 1} spikes, so they are exact integers times 1/samples.
    """
    if samples is not None:
        data = Subset(data, range(min(samples, len(data))))
    net.eval()
    synops = {layer.name: 0.0 for layer in account.layers}
    spikes = {layer.name: 0.0 for layer in account.layers}
    fired = {layer.name: torch.zeros(layer.shape, dtype=torch.bool) for layer in account.layers}
    preds, correct, seen = [], 0, 0
    with SpikeRecorder(net, account, detach=True) as rec:
        for x, y in loader(data, batch_size, shuffle=False):
            logits = net(x)
            pred = logits.argmax(1)
            preds.append(pred)
            correct += int((pred == y).sum())
            seen += len(y)
            for name, s in rec.activity.items():
                s64 = s.double()
                synops[name] += float(energy.synops(account, {name: s64}, n_samples=1))
                spikes[name] += float(s64.sum())
                fired[name] |= (s64 > 0).any(0).reshape(fired[name].shape)
    if seen == 0:
        raise ValueError("no samples to measure")
    return Measurement(seen, correct / seen, {k: v / seen for k, v in synops.items()}, spikes, fired,
                       torch.cat(preds))


def direct_metrics(m: Measurement, account: energy.NetworkAccount, energy_model: energy.EnergyModel | None = None,
                   e_baseline_j: float | None = None) -> dict[str, Any]:
    """The metrics of Table 2 of 000_* and App. B of 004_* from a :class:`Measurement` (T = 1).

    * ``e_snn_j`` = E_AC · SynOps per inference (Eq. 11-12; the first layer's analog input is not a spike);
      ``e_snn_per_layer_j`` = E_SNN(l) with l the spiking layer whose spikes cause the SynOps.
    * ``e_snn_over_baseline`` = E_SNN / E_baseline (Table 2), if ``e_baseline_j`` is given.
    * ``dead_rate`` (Def. 3.1): neurons that never fire on any of the samples / all neurons; also per layer.
    * ``firing_rate`` R(l) (Eq. 9) and ``R`` (Eq. 10, mean over the L spiking layers).
    * ``e_full_over_method`` (App. B of 004_*): E_Full = E_MAC · Σ_l FLOPs(l) = E_MAC · MACs of the same
      architecture as a full-precision ANN, E_Method = E_AC · Σ_l FLOPs(l) R(l) = E_SNN (per neuron exact ψ
      instead of layer averages). ``e_full_over_method_incl_input_layer`` also charges the weight layer(s) fed by
      the analog input densely at E_MAC (a conservative reading, see docs/direct.md).
    """
    em = energy_model or energy.ENERGY_MODELS["cmos45nm"]
    n = m.samples
    layers = account.layers
    rates = {layer.name: m.spikes_per_layer[layer.name] / (layer.neurons * n) for layer in layers}
    dead_per_layer = {layer.name: 1.0 - float(m.ever_fired[layer.name].double().mean()) for layer in layers}
    dead = sum(int((~m.ever_fired[layer.name]).sum()) for layer in layers)
    e_snn = em.snn_joules(m.synops)
    e_full = em.ann_joules(account.macs)
    input_consumers = set(account.input_layer.consumers)
    first_macs = sum(w.macs for w in account.weights if w.name in input_consumers)
    e_method_in = e_snn + em.ann_joules(first_macs)
    omega_total = sum(m.spikes_per_layer.values()) / n
    omega_balance = sum(m.spikes_per_layer[layer.name] / layer.neurons for layer in layers) / n
    out = {
        "samples": n,
        "accuracy": m.accuracy,
        "synops": m.synops,
        "synops_per_layer": dict(m.synops_per_layer),
        "e_snn_j": e_snn,
        "e_snn_pj": e_snn * 1e12,
        "e_snn_per_layer_j": {k: em.snn_joules(v) for k, v in m.synops_per_layer.items()},
        "e_snn_over_baseline": (e_snn / e_baseline_j) if e_baseline_j else None,
        "e_baseline_j": e_baseline_j,
        "dead_rate": dead / account.neurons,
        "dead_neurons": dead,
        "neurons": account.neurons,
        "dead_rate_per_layer": dead_per_layer,
        "firing_rate": rates,
        "R": sum(rates.values()) / len(rates),
        "omega_total": omega_total,
        "omega_balance": omega_balance,
        "omega_syn": m.synops,  # p = 1: Ω_syn = SynOps per sample (Theorem 3.4)
        "macs": account.macs,
        "e_full_j": e_full,
        "e_full_over_method": e_full / e_snn if e_snn > 0 else math.inf,
        "e_full_over_method_incl_input_layer": e_full / e_method_in if e_method_in > 0 else math.inf,
        "energy_model": {"name": em.name, "e_ac_pj": em.e_ac_pj, "e_mac_pj": em.e_mac_pj},
    }
    return out
