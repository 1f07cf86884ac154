"""The single-step spiking neuron of S²NN (004_*) and 000_*, with selectable surrogate gradients.

Forward (Eq. 16 of 004_*, Eq. 2 of 000_*)::

    s = H(u - u_th) = 1 if u >= u_th else 0

Backward: ``ds/du`` is replaced by a surrogate ``g(u)`` (all are functions of the membrane u and the threshold):

==================  =======================================================================  ======================
name                g(u)                                                                     source
==================  =======================================================================  ======================
``s2nn``            1/(τ u) for u >= u_th; (1/α) σ_α(u)(1 - σ_α(u)) below,                  Eq. 23 of 004_*,
                    σ_α(u) = 1/(1 + exp((-u + u_th)/α))                                     Eq. 3-5 of 000_*
``pwl``             max(1 - |u - u_th|, 0)                                                   Eq. 23 of 000_*
``sigmoid``         (1/α) σ_α(u)(1 - σ_α(u)) everywhere                                      Eq. 24 of 000_*
``fast_sigmoid``    (1 + β0 |u - u_th|)^-2                                                   Eq. 24 of 004_*
``slayer``          α1 exp(-β1 |u - u_th|)                                                   Eq. 25 of 004_*
``ste_s``           1 if |u - c| <= 1 else 0, c = u_th = 1; spikes in {0, 1}                 Table 3 of 004_*
``ste_b``           1 if |u - c| <= 1 else 0, c = u_th = 0; output in {-1, +1}               Table 3 of 004_*
==================  =======================================================================  ======================

Defaults: u_th = 1 (u_th = 0 for ``ste_b``, Table 3 of 004_*); α = 0.25, τ = 0.6 for ``s2nn`` (Table 6 of 000_*,
CNN7/Adam); α = 0.45 for ``sigmoid`` (Table 6, CNN7/Adam/Eq. 24); β0 = 1 (not given in 004_*: chosen, like
SLAYER's α1 = β1 = 1 of App. A of 004_*, so that g(u_th) = 1 and ∫g = 2, the values of the STE); α1 = β1 = 1 for
``slayer`` (App. A of 004_*). See docs/direct.md for the STE reading.

STE-b emits ±1 (``2 H(u) - 1``); its *spikes* for the energy accounting are the neurons with u >= u_th (App. B of
004_*: "spikes represent neurons such that u >= u_th"), i.e. ``(a + 1)/2``: :meth:`SingleStepNeuron.spikes`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

__all__ = [
    "SURROGATES",
    "SingleStepNeuron",
    "ThresholdNeuron",
    "neuron_factory",
    "surrogate_grad",
    "heaviside",
]


# ---------------------------------------------------------------------------------------------------------------------
# Surrogate gradients g(u)
# ---------------------------------------------------------------------------------------------------------------------


def _scaled_sigmoid_grad(u: torch.Tensor, u_th: float, alpha: float) -> torch.Tensor:
    sig = torch.sigmoid((u - u_th) / alpha)  # = 1 / (1 + exp((-u + u_th)/alpha)), Eq. 4 of 000_*
    return sig * (1 - sig) / alpha


def _g_s2nn(u, u_th, alpha, tau):
    below = _scaled_sigmoid_grad(u, u_th, alpha)
    fired = u >= u_th
    # 1/(tau u) only where u >= u_th > 0; the masked-out branch is kept finite so that where() has no inf/nan
    safe_u = torch.where(fired, u, torch.ones_like(u))
    return torch.where(fired, 1.0 / (tau * safe_u), below)


def _g_pwl(u, u_th):
    return torch.clamp(1 - (u - u_th).abs(), min=0)


def _g_sigmoid(u, u_th, alpha):
    return _scaled_sigmoid_grad(u, u_th, alpha)


def _g_fast_sigmoid(u, u_th, beta0):
    return (1 + beta0 * (u - u_th).abs()).pow(-2)


def _g_slayer(u, u_th, alpha1, beta1):
    return alpha1 * torch.exp(-beta1 * (u - u_th).abs())


def _g_ste(u, u_th, center=None):
    c = u_th if center is None else center
    return ((u - c).abs() <= 1).to(u.dtype)


@dataclass(frozen=True)
class Surrogate:
    """One surrogate: its g(u), default hyperparameters, default threshold and output range."""

    name: str
    grad: Callable[..., torch.Tensor]
    defaults: dict
    u_th: float = 1.0
    bipolar: bool = False  # output in {-1, +1} (STE-b) instead of {0, 1}
    source: str = ""


SURROGATES: dict[str, Surrogate] = {
    s.name: s for s in (
        Surrogate("s2nn", _g_s2nn, {"alpha": 0.25, "tau": 0.6}, 1.0, False, "Eq. 23 of 004_* = Eq. 3 of 000_*"),
        Surrogate("pwl", _g_pwl, {}, 1.0, False, "Eq. 23 of 000_* (Esser et al. 2016)"),
        Surrogate("sigmoid", _g_sigmoid, {"alpha": 0.45}, 1.0, False, "Eq. 24 of 000_* (Pellegrini et al. 2021)"),
        Surrogate("fast_sigmoid", _g_fast_sigmoid, {"beta0": 1.0}, 1.0, False, "Eq. 24 of 004_* (SuperSpike)"),
        Surrogate("slayer", _g_slayer, {"alpha1": 1.0, "beta1": 1.0}, 1.0, False, "Eq. 25 of 004_*, App. A"),
        Surrogate("ste_s", _g_ste, {"center": None}, 1.0, False, "STE-s, Table 3 of 004_*"),
        Surrogate("ste_b", _g_ste, {"center": None}, 0.0, True, "STE-b, Table 3 of 004_*"),
    )
}


def _check_hyper(name: str, hyper: dict) -> dict:
    if name not in SURROGATES:
        raise ValueError(f"unknown surrogate {name!r}; choose one of {', '.join(SURROGATES)}")
    sur = SURROGATES[name]
    unknown = set(hyper) - set(sur.defaults)
    if unknown:
        allowed = ", ".join(sur.defaults) or "none"
        raise ValueError(f"surrogate {name!r} has no hyperparameter(s) {', '.join(sorted(unknown))} "
                         f"(accepted: {allowed})")
    merged = {**sur.defaults, **{k: v for k, v in hyper.items() if v is not None}}
    for key, value in merged.items():
        if key == "center":
            if value is not None and not math.isfinite(float(value)):
                raise ValueError(f"{key} must be a finite number, got {value}")
            continue
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"hyperparameter {key} of surrogate {name!r} must be a positive number, got {value!r}")
    return merged


def surrogate_grad(name: str, u: torch.Tensor, u_th: float | None = None, **hyper) -> torch.Tensor:
    """g(u) of surrogate ``name`` (the value the backward pass multiplies the incoming gradient by)."""
    merged = _check_hyper(name, hyper)
    sur = SURROGATES[name]
    return sur.grad(u, sur.u_th if u_th is None else float(u_th), **merged)


class _Spike(torch.autograd.Function):
    """H(u - u_th) forward (2H - 1 when bipolar); g(u) backward (for STE-b the hardtanh STE of sign(u))."""

    @staticmethod
    def forward(ctx, u, u_th, grad_fn, hyper, bipolar):  # noqa: D401 - autograd signature
        ctx.save_for_backward(u)
        ctx.u_th, ctx.grad_fn, ctx.hyper, ctx.bipolar = u_th, grad_fn, hyper, bipolar
        s = (u >= u_th).to(u.dtype)
        return 2 * s - 1 if bipolar else s

    @staticmethod
    def backward(ctx, grad_out):
        (u,) = ctx.saved_tensors
        g = ctx.grad_fn(u, ctx.u_th, **dict(ctx.hyper))
        return grad_out * g.to(grad_out.dtype), None, None, None, None


def heaviside(u: torch.Tensor, surrogate: str = "s2nn", u_th: float | None = None, **hyper) -> torch.Tensor:
    """Functional form of :class:`SingleStepNeuron`."""
    merged = _check_hyper(surrogate, hyper)
    sur = SURROGATES[surrogate]
    th = sur.u_th if u_th is None else float(u_th)
    return _Spike.apply(u, th, sur.grad, tuple(sorted(merged.items())), sur.bipolar)


# ---------------------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------------------


class SingleStepNeuron(nn.Module):
    """Single-step spiking neuron ``s = H(u - u_th)`` with a surrogate gradient (training form).

    An activation site for :mod:`synopt.energy` (``synopt_neuron = True``): its output are the spikes that
    ``ActivityRecorder``, ``omega`` and ``synops`` count.  No parameters, no state (T = 1).
    """

    synopt_neuron = True

    def __init__(self, surrogate: str = "s2nn", u_th: float | None = None, **hyper):
        super().__init__()
        self.hyper = _check_hyper(surrogate, hyper)
        sur = SURROGATES[surrogate]
        self.surrogate = surrogate
        self.u_th = float(sur.u_th if u_th is None else u_th)
        if not math.isfinite(self.u_th):
            raise ValueError(f"u_th must be finite, got {u_th}")
        if surrogate == "s2nn" and self.u_th <= 0:
            raise ValueError("the s2nn surrogate 1/(tau u) needs u_th > 0 (Eq. 23 of 004_* uses u_th = 1)")
        self.bipolar = sur.bipolar
        self._grad = sur.grad
        self._hyper_items = tuple(sorted(self.hyper.items(), key=lambda kv: kv[0]))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return _Spike.apply(u, self.u_th, self._grad, self._hyper_items, self.bipolar)

    def spikes(self, out: torch.Tensor) -> torch.Tensor:
        """The {0, 1} spikes of an output of this neuron (the output itself, or (a + 1)/2 for STE-b)."""
        return (out + 1) / 2 if self.bipolar else out

    def extra_repr(self) -> str:
        hyper = ", ".join(f"{k}={v}" for k, v in self.hyper.items() if v is not None)
        return f"surrogate={self.surrogate!r}, u_th={self.u_th:g}" + (f", {hyper}" if hyper else "")


class ThresholdNeuron(nn.Module):
    """Inference form after folding batch norm into thresholds (Eq. 27 of 004_*): ``s = H(x - θ)`` per neuron.

    ``theta`` broadcasts to the per-sample shape of the site (e.g. ``[C, 1, 1]`` per channel).  ``polarity`` (same
    broadcast, ±1) is only set where a negative BN γ could not be folded into a preceding weight layer: there the
    neuron fires for ``x <= θ``.  Thresholds are non-persistent buffers: they travel in ``thresholds`` dicts (and
    the export's ``weights.pt``), not in the state_dict, so one architecture loads any thresholds.
    """

    synopt_neuron = True

    def __init__(self, theta: torch.Tensor | float = 1.0, polarity: torch.Tensor | None = None):
        super().__init__()
        theta = theta.detach().clone() if isinstance(theta, torch.Tensor) else torch.tensor(float(theta))
        self.register_buffer("theta", theta, persistent=False)
        self.register_buffer("polarity", None if polarity is None else torch.as_tensor(polarity).clone(),
                             persistent=False)

    def set_threshold(self, theta: torch.Tensor | float, polarity: torch.Tensor | None = None) -> None:
        self.theta = torch.as_tensor(theta).detach().clone()
        self.polarity = None if polarity is None else torch.as_tensor(polarity).detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.theta.to(x.dtype)
        if self.polarity is None:
            return (x >= theta).to(x.dtype)
        return torch.where(self.polarity > 0, x >= theta, x <= theta).to(x.dtype)

    def spikes(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def extra_repr(self) -> str:
        return f"theta shape={tuple(self.theta.shape)}" + ("" if self.polarity is None else ", polarity")


def neuron_factory(surrogate: str = "s2nn", **hyper) -> Callable[[], SingleStepNeuron]:
    """A zero-argument callable making a new :class:`SingleStepNeuron` per call (the zoo's ``act``).

    >>> from synopt import zoo
    >>> snn = zoo.build("cnn7", act=neuron_factory("s2nn", alpha=0.25, tau=0.6))
    """
    SingleStepNeuron(surrogate, **hyper)  # validate now, not at the first call site
    return functools.partial(SingleStepNeuron, surrogate, **hyper)
