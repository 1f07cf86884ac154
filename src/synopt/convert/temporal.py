"""The time-aware QReLU network for event input (issue 3; Eq. 3-4 of 003_* extended over time steps).

A QReLU network trained on the time-collapsed image of a recording predicts ``floor(relu(total charge))`` per
neuron, but the SNN sees the events frame by frame: an IF neuron fires whenever its running charge crosses an
integer, so its count is ``max_t floor(V_t)`` (``qrelu.if_spike_counts``), not ``floor(V_T)``. This module runs a
QReLU network exactly as its IF twin runs on frames ``[B, T, C, H, W]`` (every QReLU in time mode, every bias
injected per step as the conversion's bias timing (``bias_timing.py``; b/T per step by default), every folded input
offset as b/T per step, the output layer an IF layer read out by spike count), so that

* the SynOp estimate on frames equals the simulated SynOps (``estimate`` dispatches here for frame data), and
* QAT can train on random framings of each recording (``RandomFraming``) with the SynOp loss of Eq. 2 of 003_*
  counting the spikes the SNN will emit.

Valid for the QReLU conversion's neurons: multi-spike, threshold 1, subtractive reset, membrane from 0, no lower
bound (``exact_for``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from synopt.convert.bias_timing import biased_layers, timed_biases
from synopt.convert.qrelu import QReLU, if_spike_counts, spike_count_score


def exact_for(single_spike: bool = False, min_v_mem: float | None = None, init_v_fraction: float = 0.0) -> bool:
    """True if the time-aware count equals the simulated IF count for these neuron options (``to_sinabs``)."""
    return not single_spike and min_v_mem is None and init_v_fraction == 0.0


def per_step_constants(body: nn.Module) -> list[str]:
    """Names of the constant currents of ``body`` (weight-layer biases and folded input offsets) that the SNN
    injects as b/T per step under count coding and the ``spread`` bias timing
    (``SpikingNetwork._constant_currents`` of to_sinabs.py)."""
    return [f"{name}.bias" if name else "bias" for name, _ in biased_layers(body)] + input_offsets(body)


def input_offsets(body: nn.Module) -> list[str]:
    """Buffer names of the input offsets kept by ``graph.inputs.fold_input_normalization`` (constant input)."""
    return list(getattr(body, "meta", {}).get("synopt_input", {}).get("offset") or [])


@contextlib.contextmanager
def stepped(net: nn.Module, steps: int):
    """Put every QReLU of ``net`` in time mode for ``[B*steps, ...]`` batches (``QReLU.steps``) for the block."""
    sites = [m for m in net.modules() if isinstance(m, QReLU)]
    if not sites:
        raise ValueError("the network has no QReLU sites; build it with qat.qrelu_network first")
    saved = [getattr(m, "steps", None) for m in sites]
    for m in sites:
        m.steps = steps
    try:
        yield
    finally:
        for m, s in zip(sites, saved):
            m.steps = s


def temporal_current(body: nn.Module, x_seq: torch.Tensor, bias_timing: str = "spread") -> torch.Tensor:
    """Output current per step ``[B, T, K]`` of the QReLU network ``body`` fed frames ``x_seq`` ``[B, T, ...]``.

    Every QReLU emits the spikes per step of its IF twin (``if_spike_counts``), every bias enters as
    ``bias_timing`` says (``bias_timing.step_currents``; ``spread``: b/T per step), every folded input offset as
    b/T per step, all differentiably (the parameters themselves are not touched). Without constants and with
    T = 1 this is the plain QReLU forward.
    """
    b, t = x_seq.shape[:2]
    x = x_seq.reshape(b * t, *x_seq.shape[2:])
    state = {**dict(body.named_parameters()), **dict(body.named_buffers())}
    with stepped(body, t), contextlib.ExitStack() as stack:
        if t == 1:
            overrides = {}
        elif bias_timing == "spread":
            overrides = {name: state[name] / t for name in per_step_constants(body)}
        else:
            overrides, _ = stack.enter_context(timed_biases(body, t, bias_timing))
            overrides.update({name: state[name] / t for name in input_offsets(body)})
        out = torch.func.functional_call(body, overrides, (x,), strict=False)
    return out.reshape(b, t, *out.shape[1:])


def temporal_scores(current: torch.Tensor) -> torch.Tensor:
    """Class scores ``[B, K]`` of the spiking output layer after all steps: its spike count (``if_spike_counts`` of
    the output current), ties broken by the total current (``spike_count_score``), as the SNN's readout."""
    return spike_count_score(if_spike_counts(current).sum(1), current.sum(1))


def equal_framing(x_fine: torch.Tensor, steps: int) -> torch.Tensor:
    """``[B, F, ...]`` fine time bins -> ``[B, steps, ...]`` frames of (nearly) equal width (sums of whole bins)."""
    f = x_fine.shape[1]
    if not 1 <= steps <= f:
        raise ValueError(f"cannot frame {f} fine bins into {steps} frames; choose 1 <= steps <= {f}")
    edges = torch.div(torch.arange(steps + 1) * f, steps, rounding_mode="floor")
    return _segments(x_fine, edges.expand(x_fine.shape[0], -1))


def _segments(x_fine: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Sums of fine bins between consecutive ``edges`` ``[B, T+1]`` (0 = start, F = end) -> ``[B, T, ...]``."""
    cs = torch.cat([torch.zeros_like(x_fine[:, :1]), x_fine.cumsum(1)], 1)
    g = cs[torch.arange(x_fine.shape[0])[:, None], edges]
    return g[:, 1:] - g[:, :-1]


@dataclass
class RandomFraming:
    """Random framings of a recording for time-aware QAT. The recording comes as ``fine_bins`` equal time bins; each
    sample draws its number of frames T from ``frames`` (uniformly over the entries, so repeats weight a count) and
    is cut at T - 1 distinct random bin edges. Shorter samples are padded with empty frames at the end, as
    ``collate_frames`` pads a simulated batch."""

    fine_bins: int = 30
    frames: tuple[int, ...] = tuple(range(1, 11))

    def __post_init__(self):
        self.frames = tuple(int(t) for t in self.frames)
        if not self.frames or not all(1 <= t <= self.fine_bins for t in self.frames):
            raise ValueError(f"frame counts must lie in 1..fine_bins ({self.fine_bins}), got {self.frames}")

    def sample(self, x_fine: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[B, fine_bins, ...]`` -> ``[B, max T, ...]``: random T and random cut points per sample."""
        b, f = x_fine.shape[:2]
        if f != self.fine_bins:
            raise ValueError(f"expected {self.fine_bins} fine time bins per sample, got {f}; load the training "
                             f"split with representation='frames', n_time_bins={self.fine_bins}")
        pool = torch.tensor(self.frames)
        t = pool[torch.randint(len(pool), (b,), generator=generator)]
        t_max = int(t.max())
        cuts = torch.rand(b, f - 1, generator=generator).argsort(1)[:, : t_max - 1] + 1
        cuts = torch.where(torch.arange(t_max - 1) < (t - 1)[:, None], cuts, f).sort(1).values  # unused cuts at F
        edges = torch.cat([torch.zeros(b, 1, dtype=torch.long), cuts, torch.full((b, 1), f)], 1)
        return _segments(x_fine, edges)


class EqualFramed(Dataset):
    """A dataset of ``[F, ...]`` fine time bins seen as ``steps`` equal-width frames (``equal_framing``)."""

    def __init__(self, data: Dataset, steps: int):
        self.data, self.steps = data, steps

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        x, y = self.data[i][:2]
        return equal_framing(x[None], self.steps)[0], y


class CountCoded(Dataset):
    """Static images as the SNN receives them under count coding: ``[C, H, W]`` -> ``T`` equal frames ``x / T``
    (``[T, C, H, W]``), so the time-aware estimate and QAT see the IF dynamics of the simulated network."""

    def __init__(self, data: Dataset, steps: int):
        if steps < 1:
            raise ValueError(f"count coding needs T >= 1 steps, got {steps}")
        self.data, self.steps = data, steps

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        x, y = self.data[i][:2]
        x = torch.as_tensor(x, dtype=torch.float32)
        return (x / self.steps).unsqueeze(0).expand(self.steps, *x.shape).contiguous(), y
