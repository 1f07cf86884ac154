"""When a weight layer's bias enters its IF neurons over the T steps of one inference (docs/conversion.md).

A QReLU neuron computes ``floor(relu(Wx + b))`` (Eq. 3 of 003_*) from its total charge, but an IF neuron's count is
``floor(max_t V_t)`` over its running charge (``qrelu.if_spike_counts``): a spike cannot be taken back. A negative
bias spread as b/T per step cannot cancel the spikes that early input has already caused, so at low activity the
SNN fires far more, and worse, than its QReLU network (``benchmarks/probe_bias_timing.py``: 12% against 70% on
CIFAR-10). The timing of the constant charge is therefore a choice of the conversion:

* ``spread``         -- b/T every step (the conversion as published; count and event coding);
* ``negative-first`` -- a negative bias all at the first step (the neuron's initial membrane potential), a positive
  one spread as b/T per step. DynapCNN/Speck can run this: per-neuron ``neurons_initial_value`` plus the bias added
  on every leak-clock tick (``sinabs.backend.dynapcnn.chips.dynapcnn``);
* ``signed``         -- negative at the first step, positive at the last: the running charge peaks as late as it
  can, so the count comes closest to ``floor(relu(total))``. Needs a one-step current at the end of the inference
  (a clocked simulator, or a hardware timer input); an event-driven chip has no "last step".

Under rate coding (x every step) a bias's charge over T steps is T·b; the timings move that charge alike.
Folded input offsets (``graph.inputs``) are part of the input and follow its encoding, not these timings.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn

from synopt.energy import WEIGHT_TYPES

BIAS_TIMINGS = ("spread", "negative-first", "signed")


def check_timing(timing: str) -> str:
    if timing not in BIAS_TIMINGS:
        raise ValueError(f"unknown bias timing {timing!r}; choose one of {', '.join(BIAS_TIMINGS)}")
    return timing


def step_currents(total: torch.Tensor, steps: int, timing: str) -> torch.Tensor:
    """``[steps, *total.shape]``: the currents per step by which the constant charge ``total`` enters under
    ``timing`` (they sum to ``total``; differentiable in ``total``)."""
    check_timing(timing)
    if steps < 1:
        raise ValueError(f"need at least one time step, got {steps}")
    if timing == "spread" or steps == 1:
        return (total / steps).expand(steps, *total.shape)
    step = torch.arange(steps, device=total.device).view(steps, *(1,) * total.dim())
    zero = torch.zeros((), dtype=total.dtype, device=total.device)
    negative = torch.where(step == 0, total.clamp(max=0), zero)
    positive = total.clamp(min=0)
    positive = torch.where(step == steps - 1, positive, zero) if timing == "signed" else \
        (positive / steps).expand(steps, *total.shape)
    return negative + positive


def biased_layers(body: nn.Module) -> list[tuple[str, nn.Module]]:
    """The weight layers of ``body`` with a bias, by module name."""
    return [(name, mod) for name, mod in body.named_modules()
            if isinstance(mod, WEIGHT_TYPES) and mod.bias is not None]


@dataclass
class Clock:
    """Which step the next forward call runs: ``None`` for all ``steps`` at once as batch-major ``[B*steps, ...]``
    rows, ``t`` for step t alone (a network stepped one call per step)."""

    steps: int
    step: int | None = None


@contextlib.contextmanager
def timed_biases(body: nn.Module, steps: int, timing: str, charge_per_bias: float = 1.0):
    """Inside the block, every biased weight layer of ``body`` adds the step currents of ``timing`` for the charge
    ``charge_per_bias * b`` to its output (``step_currents``, computed from the live parameter, so gradients reach
    b). Yields ``(overrides, clock)``: run ``body`` through ``torch.func.functional_call`` with ``overrides``
    (every bias zero) and set ``clock.step`` before each call."""
    check_timing(timing)
    clock = Clock(steps)
    layers = biased_layers(body)

    def hook(bias: torch.Tensor, channel_last: bool):  # the live parameter (functional_call swaps mod.bias)
        def add_current(_mod: nn.Module, _inputs, out: torch.Tensor) -> torch.Tensor:
            per_step = step_currents(bias * charge_per_bias, steps, timing).to(out.dtype)  # [T, C]
            tail = (1,) * (out.dim() - 2)
            per_step = per_step.reshape(steps, *tail, -1) if channel_last else per_step.reshape(steps, -1, *tail)
            if clock.step is not None:
                return out + per_step[clock.step]
            if out.shape[0] % steps:
                raise ValueError(f"a batch-major [B*T, ...] batch needs a multiple of T = {steps} rows, got "
                                 f"{out.shape[0]}")
            return (out.reshape(-1, steps, *out.shape[1:]) + per_step).reshape(out.shape)
        return add_current

    hooks = [mod.register_forward_hook(hook(mod.bias, isinstance(mod, nn.Linear))) for _, mod in layers]
    try:
        yield {f"{name}.bias" if name else "bias": torch.zeros_like(mod.bias) for name, mod in layers}, clock
    finally:
        for h in hooks:
            h.remove()
