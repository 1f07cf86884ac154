"""Conversion of a prepared (Q)ReLU network into an integrate-and-fire network of sinabs layers.

Every activation site becomes an :class:`IFSqueeze` (a sinabs ``IAFSqueeze``: batch-major ``[B*T, ...]`` input,
subtractive reset, threshold 1 or a per-layer value, multi- or single-spike, optional lower bound of the membrane
relative to the threshold, initial membrane 0 or θ/2). The output layer is an IF layer too (``readout="spikes"``:
class scores are spike counts, ties broken by the accumulated input current, as ``OutputQReLU`` does on the ANN), or
no neuron at all (``readout="current"``: the accumulated output current).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Mapping

import sinabs
import sinabs.layers as sl
import torch
import torch.nn as nn

from synopt import energy
from synopt.convert.qrelu import spike_count_score

ENCODINGS = ("count", "rate", "poisson", "events")


class IFSqueeze(sl.IAFSqueeze):
    """sinabs ``IAFSqueeze`` with a lean time loop for inference and a configurable initial membrane.

    Dynamics per step t (subtractive reset, MultiSpike): ``v += x_t; s = max(floor(v / θ), 0); v -= s θ;
    v = max(v, v_min)``; SingleSpike emits at most one spike per step. With gradients enabled it defers to sinabs'
    own implementation, so training through it keeps sinabs' surrogate gradients.
    """

    def __init__(self, spike_threshold: float = 1.0, single_spike: bool = False, min_v_mem: float | None = None,
                 init_v_fraction: float = 0.0, num_timesteps: int = 1):
        spike_fn = sinabs.activation.SingleSpike if single_spike else sinabs.activation.MultiSpike
        super().__init__(num_timesteps=num_timesteps, spike_threshold=float(spike_threshold), spike_fn=spike_fn,
                         min_v_mem=None if min_v_mem is None else float(min_v_mem))
        self.single_spike = single_spike
        self.init_v_fraction = float(init_v_fraction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t_steps = self.num_timesteps
        if t_steps is None or x.shape[0] % t_steps:
            raise ValueError(f"IFSqueeze needs num_timesteps dividing the batch axis; got {x.shape[0]} and {t_steps}")
        if torch.is_grad_enabled() and x.requires_grad:
            return super().forward(x)
        xs = x.reshape(x.shape[0] // t_steps, t_steps, *x.shape[1:])
        theta = float(self.spike_threshold)
        v = torch.full_like(xs[:, 0], self.init_v_fraction * theta)
        out = torch.empty_like(xs)
        v_min = self.min_v_mem
        for t in range(t_steps):
            v.add_(xs[:, t])
            if self.single_spike:
                s = (v >= theta).to(v.dtype)
            else:
                s = torch.floor(v / theta).clamp_(min=0)
            v.sub_(s * theta)
            if v_min is not None:
                v.clamp_(min=float(v_min))
            out[:, t] = s
        self.v_mem = v
        return out.reshape_as(x)


class SpikingNetwork(nn.Module):
    """A converted network that runs on ``[B, T, C, H, W]`` input and returns output currents and spikes.

    ``encoding`` records how static inputs must be presented (``count``: x/T per step for QReLU-trained networks,
    ``rate``: x per step for percentile-normalised networks); it is a property of the prepared model.
    """

    def __init__(self, body: nn.Module, encoding: str, readout: str = "spikes", out_threshold: float = 1.0,
                 single_spike: bool = False, min_v_mem: float | None = None, init_v_fraction: float = 0.0):
        super().__init__()
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; choose one of {ENCODINGS}")
        if readout not in ("spikes", "current"):
            raise ValueError(f"unknown readout {readout!r}; choose spikes or current")
        self.body = body
        self.encoding = encoding
        self.readout = readout
        self.output_if = IFSqueeze(out_threshold, single_spike, min_v_mem, init_v_fraction) \
            if readout == "spikes" else None

    def if_layers(self) -> list[IFSqueeze]:
        return [m for m in self.modules() if isinstance(m, IFSqueeze)]

    def forward(self, x_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x_seq`` [B, T, ...] -> (output current [B, T, K], output spikes [B, T, K] or None)."""
        b, t_steps = x_seq.shape[:2]
        for layer in self.if_layers():
            layer.num_timesteps = t_steps
        sinabs.reset_states(self)
        with self._bias_per_step(t_steps):
            current = self.body(x_seq.reshape(b * t_steps, *x_seq.shape[2:]))
        spikes = self.output_if(current) if self.output_if is not None else None
        current = current.reshape(b, t_steps, *current.shape[1:])
        return current, None if spikes is None else spikes.reshape(b, t_steps, *spikes.shape[1:])

    @contextlib.contextmanager
    def _bias_per_step(self, t_steps: int):
        """Count coding (and events) spreads the ANN's total charge over T steps, so each bias is injected as b/T per
        step; rate coding injects b every step."""
        if self.encoding == "rate" or self.encoding == "poisson" or t_steps == 1:
            yield
            return
        saved = []
        with torch.no_grad():
            for mod in self.body.modules():
                if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and mod.bias is not None:
                    saved.append((mod, mod.bias.detach().clone()))
                    mod.bias.div_(t_steps)
        try:
            yield
        finally:
            with torch.no_grad():
                for mod, bias in saved:
                    mod.bias.copy_(bias)

    @staticmethod
    def scores(current: torch.Tensor, spikes: torch.Tensor | None) -> torch.Tensor:
        """Class scores after every time step, [B, T, K] (cumulative over time)."""
        cur = current.cumsum(1)
        return cur if spikes is None else spike_count_score(spikes.cumsum(1), cur)


def to_sinabs(net: nn.Module, *, encoding: str, thresholds: float | Mapping[str, float] = 1.0,
              single_spike: bool = False, min_v_mem: float | None = None, init_v_fraction: float = 0.0,
              readout: str = "spikes", out_threshold: float = 1.0) -> SpikingNetwork:
    """Convert ``net`` (activation sites = ReLU/QReLU modules, BN folded) into a :class:`SpikingNetwork`.

    ``thresholds``: one value or ``{site name: θ}``; ``min_v_mem``: lower bound of the membrane in units of the
    threshold (e.g. -1.0 means v >= -θ), None for unbounded; ``init_v_fraction``: initial membrane in units of θ
    (0.5 starts at θ/2). Module names are kept, so ``synopt.energy`` counts the SNN with the ANN's fan-out.
    """
    body = copy.deepcopy(net).eval()
    sites = [(name, mod) for name, mod in body.named_modules() if energy.is_activation_site(mod)]
    if not sites:
        raise ValueError("the network has no activation sites (ReLU/QReLU modules) to turn into IF neurons")
    if isinstance(thresholds, Mapping):
        unknown = set(thresholds) - {n for n, _ in sites}
        if unknown:
            raise ValueError(f"thresholds given for unknown sites {sorted(unknown)}")
    for name, _ in sites:
        theta = thresholds.get(name, 1.0) if isinstance(thresholds, Mapping) else float(thresholds)
        v_min = None if min_v_mem is None else min_v_mem * theta
        parent_name, _, child = name.rpartition(".")
        parent = body.get_submodule(parent_name) if parent_name else body
        setattr(parent, child, IFSqueeze(theta, single_spike, v_min, init_v_fraction))
    if isinstance(body, torch.fx.GraphModule):
        body.recompile()
    v_min_out = None if min_v_mem is None else min_v_mem * out_threshold
    return SpikingNetwork(body, encoding, readout, out_threshold, single_spike, v_min_out, init_v_fraction)
