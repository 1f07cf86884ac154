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
from synopt.convert.bias_timing import Clock, biased_layers, check_timing, timed_biases
from synopt.convert.qrelu import spike_count_score
from synopt.convert.temporal import input_offsets
from synopt.simulate.kernels import if_forward

ENCODINGS = ("count", "rate", "poisson", "events")


class IFSqueeze(sl.IAFSqueeze):
    """sinabs ``IAFSqueeze`` with a fused time loop for inference and a configurable initial membrane.

    Dynamics per step t (subtractive reset, MultiSpike): ``v += x_t; s = max(floor(v / θ), 0); v -= s θ;
    v = max(v, v_min)``; SingleSpike emits at most one spike per step (``synopt.simulate.kernels``). Every call starts
    from the membrane left by the previous call until ``reset_membrane()`` (``SpikingNetwork`` resets before every
    batch), so the network can be stepped through time one step per call. With gradients enabled it
    defers to sinabs' own implementation, so training through it keeps sinabs' surrogate gradients.
    """

    def __init__(self, spike_threshold: float | torch.Tensor = 1.0, single_spike: bool = False,
                 min_v_mem: float | torch.Tensor | None = None, init_v_fraction: float = 0.0, num_timesteps: int = 1,
                 input_sign: torch.Tensor | None = None):
        spike_fn = sinabs.activation.SingleSpike if single_spike else sinabs.activation.MultiSpike
        super().__init__(num_timesteps=num_timesteps, spike_threshold=_threshold_value(spike_threshold),
                         spike_fn=spike_fn, min_v_mem=None if min_v_mem is None else _threshold_value(min_v_mem))
        # ±1 per neuron (broadcast to the per-sample shape): -1 negates every synapse into that neuron, the IF form
        # of a neuron that fires for x <= θ (a folded negative BN γ after a residual addition, docs/direct.md)
        self.register_buffer("input_sign", None if input_sign is None else torch.as_tensor(input_sign).clone())
        self.single_spike = single_spike
        self.init_v_fraction = float(init_v_fraction)
        self._v: torch.Tensor | None = None  # membrane of the inference path; None = start from the initial value

    def reset_membrane(self) -> None:
        """Forget the membrane: the next call starts from the initial value (a new batch)."""
        self._v = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t_steps = self.num_timesteps
        if t_steps is None or x.shape[0] % t_steps:
            raise ValueError(f"IFSqueeze needs num_timesteps dividing the batch axis; got {x.shape[0]} and {t_steps}")
        if self.input_sign is not None:
            x = x * self.input_sign.to(x.dtype)
        if torch.is_grad_enabled() and x.requires_grad:
            return super().forward(x)
        xs = x.reshape(x.shape[0] // t_steps, t_steps, *x.shape[1:])
        theta = _threshold_value(self.spike_threshold.detach())
        v_min = None if self.min_v_mem is None else _threshold_value(self.min_v_mem.detach())
        v = self._v
        if v is None or v.shape != xs[:, 0].shape or v.dtype != xs.dtype:
            if isinstance(theta, torch.Tensor):  # per-neuron thresholds
                v = (torch.zeros_like(xs[:, 0]) + self.init_v_fraction * theta.to(xs.dtype)).contiguous()
            else:
                v = torch.full_like(xs[:, 0], self.init_v_fraction * theta).contiguous()
            self._v = v
        out = if_forward(xs, v, theta, v_min, self.single_spike)
        return out.reshape_as(x)


class SpikingNetwork(nn.Module):
    """A converted network that runs on ``[B, T, C, H, W]`` input and returns output currents and spikes.

    ``encoding`` records how static inputs must be presented (``count``: x/T per step for QReLU-trained networks,
    ``rate``: x per step for percentile-normalised networks); it is a property of the prepared model.
    ``bias_timing`` says when the weight layers' biases enter the neurons over the T steps (``bias_timing.py``).
    """

    def __init__(self, body: nn.Module, encoding: str, readout: str = "spikes", out_threshold: float = 1.0,
                 single_spike: bool = False, min_v_mem: float | None = None, init_v_fraction: float = 0.0,
                 bias_timing: str = "spread"):
        super().__init__()
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; choose one of {ENCODINGS}")
        self.bias_timing = check_timing(bias_timing)
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
        """``x_seq`` [B, T, ...] -> (output current [B, T, K], output spikes [B, T, K] or None).

        Without gradients the network is stepped one time step at a time (each step is one ANN-sized pass, the
        cheapest order on CPU); with gradients all steps go through at once as ``[B*T, ...]`` (sinabs' layout).
        """
        b, t_steps = x_seq.shape[:2]
        layers = self.if_layers()
        sinabs.reset_states(self)
        for layer in layers:
            layer.reset_membrane()
        stepwise = not (torch.is_grad_enabled() and x_seq.requires_grad)
        for layer in layers:
            layer.num_timesteps = 1 if stepwise else t_steps
        with self._constant_currents(t_steps) as (overrides, clock):
            def body(x: torch.Tensor) -> torch.Tensor:
                return torch.func.functional_call(self.body, overrides, (x,), strict=False) if overrides \
                    else self.body(x)

            if stepwise:
                currents = []
                for t in range(t_steps):
                    clock.step = t
                    currents.append(body(x_seq[:, t]))
                spikes = [self.output_if(c) for c in currents] if self.output_if is not None else None
                current = torch.stack(currents, 1)
                return current, None if spikes is None else torch.stack(spikes, 1)
            current = body(x_seq.reshape(b * t_steps, *x_seq.shape[2:]))
        out = self.output_if(current) if self.output_if is not None else None
        current = current.reshape(b, t_steps, *current.shape[1:])
        return current, None if out is None else out.reshape(b, t_steps, *out.shape[1:])

    @contextlib.contextmanager
    def _constant_currents(self, t_steps: int):
        """The constant currents over the T steps; yields (parameter overrides, clock) for ``timed_biases``.

        Count coding (and events) spreads the ANN's total charge over T steps: input offsets enter as b/T per step,
        and so do the biases under the ``spread`` timing (divided in place: the fastest path); rate coding injects
        both every step (a bias's charge is then T·b). Other timings move each bias's charge by forward hooks.
        """
        spread_input = self.encoding not in ("rate", "poisson")
        biases = [mod.bias for _, mod in biased_layers(self.body)]
        timed = self.bias_timing != "spread" and t_steps > 1 and bool(biases)
        constants = [] if not spread_input or t_steps == 1 else \
            [self.body.get_buffer(name) for name in input_offsets(self.body)]
        if spread_input and t_steps > 1 and not timed:
            constants += biases
        saved = [c.detach().clone() for c in constants]
        with torch.no_grad():
            for c in constants:
                c.div_(t_steps)
        try:
            if timed:
                with timed_biases(self.body, t_steps, self.bias_timing, 1.0 if spread_input else t_steps) as pair:
                    yield pair
            else:
                yield {}, Clock(t_steps)
        finally:
            with torch.no_grad():
                for c, value in zip(constants, saved):
                    c.copy_(value)

    @staticmethod
    def scores(current: torch.Tensor, spikes: torch.Tensor | None) -> torch.Tensor:
        """Class scores after every time step, [B, T, K] (cumulative over time)."""
        cur = current.cumsum(1)
        return cur if spikes is None else spike_count_score(spikes.cumsum(1), cur)


def _threshold_value(value) -> float | torch.Tensor:
    """A scalar threshold as a float; a per-neuron threshold tensor (more than one element) as a float tensor."""
    if isinstance(value, torch.Tensor) and value.numel() > 1:
        return value.detach().clone().float() if not value.is_floating_point() else value.detach().clone()
    return float(value)


def to_sinabs(net: nn.Module, *, encoding: str, thresholds: float | Mapping[str, float | torch.Tensor] = 1.0,
              single_spike: bool = False, min_v_mem: float | None = None, init_v_fraction: float = 0.0,
              readout: str = "spikes", out_threshold: float = 1.0,
              polarity: Mapping[str, torch.Tensor] | None = None, bias_timing: str = "spread") -> SpikingNetwork:
    """Convert ``net`` (activation sites = ReLU/QReLU modules, BN folded) into a :class:`SpikingNetwork`.

    ``thresholds``: one value or ``{site name: θ}``, where θ is a number or a tensor broadcastable to the site's
    per-sample shape (per-neuron thresholds, e.g. ``[C, 1, 1]`` per channel; such layers run the torch IF loop
    instead of the numba kernel); ``min_v_mem``: lower bound of the membrane in units of the
    threshold (e.g. -1.0 means v >= -θ), None for unbounded; ``init_v_fraction``: initial membrane in units of θ
    (0.5 starts at θ/2); ``polarity``: ``{site name: ±1 tensor}`` for neurons that fire for x <= θ (the folded
    direct route, ``ThresholdNeuron``): their IF neuron integrates -x against the threshold -θ, i.e. every synapse
    into it is negated; ``bias_timing``: when the biases enter over the T steps (``bias_timing.py``). Module names
    are kept, so ``synopt.energy`` counts the SNN with the ANN's fan-out.
    """
    body = copy.deepcopy(net).eval()
    sites = [(name, mod) for name, mod in body.named_modules() if energy.is_activation_site(mod)]
    if not sites:
        raise ValueError("the network has no activation sites (ReLU/QReLU modules) to turn into IF neurons")
    polarity = dict(polarity or {})
    for what, given in (("thresholds", thresholds if isinstance(thresholds, Mapping) else {}), ("polarity", polarity)):
        unknown = set(given) - {n for n, _ in sites}
        if unknown:
            raise ValueError(f"{what} given for unknown sites {sorted(unknown)}")
    for name, _ in sites:
        theta = thresholds.get(name, 1.0) if isinstance(thresholds, Mapping) else float(thresholds)
        theta = _threshold_value(theta)
        sign = polarity.get(name)
        if sign is not None:
            sign = torch.as_tensor(sign)
            if not bool(((sign == 1) | (sign == -1)).all()):
                raise ValueError(f"polarity of {name} must be ±1 per neuron")
            theta = sign * torch.as_tensor(theta)  # x <= θ  <=>  -x >= -θ
        v_min = None if min_v_mem is None else min_v_mem * theta
        parent_name, _, child = name.rpartition(".")
        parent = body.get_submodule(parent_name) if parent_name else body
        setattr(parent, child, IFSqueeze(theta, single_spike, v_min, init_v_fraction, input_sign=sign))
    if isinstance(body, torch.fx.GraphModule):
        body.recompile()
    v_min_out = None if min_v_mem is None else min_v_mem * out_threshold
    return SpikingNetwork(body, encoding, readout, out_threshold, single_spike, v_min_out, init_v_fraction,
                          bias_timing)
