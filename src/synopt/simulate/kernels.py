"""A fused integrate-and-fire time loop for inference (numba), with a plain torch fallback.

Both compute, for input currents ``x[b, t, i]`` and per step t: ``v += x; s = spikes(v); v -= s·θ; v = max(v, v_min)``
with ``spikes(v) = max(floor(v/θ), 0)`` (multi-spike) or ``v >= θ`` (single spike). The numba kernel keeps the
membrane of one sample in a buffer and sweeps neurons contiguously, so one pass over memory does what sinabs does
with five tensor operations per step.
"""

from __future__ import annotations

import math

import torch

try:  # numba is optional: the torch loop gives identical results, only slower
    import numba

    @numba.njit(parallel=True, fastmath=False, cache=True)
    def _if_loop(x, out, v, theta, v_min, single):  # pragma: no cover - compiled
        n_batch, n_steps, n_neurons = x.shape
        th = x.dtype.type(theta)
        lo = x.dtype.type(v_min)  # -inf when unbounded
        zero = x.dtype.type(0.0)
        one = x.dtype.type(1.0)
        for b in numba.prange(n_batch):
            vb = v[b]
            for t in range(n_steps):
                xt = x[b, t]
                ot = out[b, t]
                for i in range(n_neurons):  # branch-free body: LLVM vectorises it
                    vi = vb[i] + xt[i]
                    if single:
                        s = one if vi >= th else zero
                    else:
                        s = max(math.floor(vi / th), zero)
                    vb[i] = max(vi - s * th, lo)
                    ot[i] = s

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False


def if_forward(x: torch.Tensor, v: torch.Tensor, theta: float | torch.Tensor,
               v_min: float | torch.Tensor | None = None, single_spike: bool = False,
               use_numba: bool | None = None) -> torch.Tensor:
    """Spikes for currents ``x`` of shape [B, T, ...]; the membrane ``v`` [B, ...] is updated in place (so calls
    with T = 1 step a network through time). Inference only: no autograd.

    ``theta`` (and ``v_min``) may be tensors broadcastable to the per-sample shape ``x.shape[2:]`` (per-neuron
    thresholds, e.g. batch norm folded into thresholds); those run the torch loop, scalars the numba kernel."""
    theta, v_min = _scalar_if_single(theta), _scalar_if_single(v_min)
    per_neuron = isinstance(theta, torch.Tensor) or isinstance(v_min, torch.Tensor)
    use_numba = (HAVE_NUMBA if use_numba is None else use_numba) and not per_neuron
    b, t = x.shape[:2]
    if use_numba and x.dtype in (torch.float32, torch.float64) and x.device.type == "cpu" and v.is_contiguous() \
            and v.dtype == x.dtype:
        xf = x.detach().reshape(b, t, -1).contiguous()
        out = torch.empty_like(xf)
        _if_loop(xf.numpy(), out.numpy(), v.view(b, -1).numpy(), float(theta),
                 float(v_min) if v_min is not None else -math.inf, bool(single_spike))
        return out.reshape(x.shape)
    if isinstance(theta, torch.Tensor):
        theta = theta.to(device=x.device, dtype=x.dtype)
    if isinstance(v_min, torch.Tensor):
        v_min = v_min.to(device=x.device, dtype=x.dtype).expand_as(v)
    out = torch.empty_like(x)
    for step in range(t):
        v.add_(x[:, step])
        s = (v >= theta).to(v.dtype) if single_spike else torch.floor(v / theta).clamp_(min=0)
        v.sub_(s * theta)
        if v_min is not None:
            v.clamp_(min=v_min)
        out[:, step] = s
    return out


def _scalar_if_single(value):
    """A one-element tensor becomes a Python float (the scalar fast path); other values are returned as they are."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    return value
