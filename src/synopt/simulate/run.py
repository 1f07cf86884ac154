"""T-step simulation of a converted network: accuracy per time step, SynOps per layer, firing rates, warnings."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from synopt import energy
from synopt.convert.to_sinabs import SpikingNetwork


def encode(x: torch.Tensor, timesteps: int, encoding: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Static input [B, C, H, W] -> [B, T, C, H, W].

    ``count``: x/T each step (total charge = x: an IF neuron with θ = 1 fires floor(activation) times in total, the
    count a QReLU computes); ``rate``: x each step (a normalised activation in [0, 1] becomes a rate);
    ``poisson``: Bernoulli(x) spikes each step (x clipped to [0, 1]).
    """
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    if encoding == "count":
        return (x / timesteps).unsqueeze(1).expand(-1, timesteps, *x.shape[1:])
    if encoding == "rate":
        return x.unsqueeze(1).expand(-1, timesteps, *x.shape[1:])
    if encoding == "poisson":
        p = x.clamp(0, 1).unsqueeze(1).expand(-1, timesteps, *x.shape[1:])
        return torch.bernoulli(p, generator=generator)
    raise ValueError(f"unknown encoding {encoding!r} for static input; choose count, rate or poisson")


@dataclass
class SimResult:
    timesteps: int
    encoding: str
    samples: int
    accuracy_per_step: list[float]
    synops: float  # per inference, all spiking layers (input excluded)
    synops_per_layer: dict[str, float]
    input_synops: float  # per inference, from input events (0 for current-injected static input)
    firing_rate: dict[str, float]  # spikes per neuron per time step
    output_spikes: float  # per inference
    silent_layers: list[str] = field(default_factory=list)
    silent_output_fraction: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.accuracy_per_step[-1]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["accuracy"] = self.accuracy
        d["synops_total_with_input"] = self.synops + self.input_synops
        return d


@torch.no_grad()
def simulate(snn: SpikingNetwork, data: Dataset, timesteps: int, input_shape, *, encoding: str | None = None,
             batch_size: int = 64, samples: int | None = None, progress: bool = True, seed: int = 0,
             collate_fn=None) -> SimResult:
    """Run ``snn`` for ``timesteps`` steps on ``data`` and measure it with ``synopt.energy``.

    Static samples ([C, H, W]) are encoded with ``encoding`` (default: the network's own); event samples
    ([T', C, H, W] frames) are fed as they are, one frame per step, and ``timesteps`` is ignored for them.
    """
    encoding = encoding or snn.encoding
    if samples is not None:
        data = Subset(data, range(min(samples, len(data))))
    account = energy.analyze(snn.body, input_shape)
    gen = torch.Generator().manual_seed(seed)
    dl = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    correct = None
    seen = 0
    per_layer = {layer.name: 0.0 for layer in account.layers}
    spikes = {layer.name: 0.0 for layer in account.layers}
    input_synops = out_spikes = silent_out = 0.0
    steps_seen = timesteps
    snn.eval()
    with energy.ActivityRecorder(snn.body, account, detach=True) as rec:
        for batch in tqdm(dl, desc=f"simulate T={timesteps}", disable=None if progress else True, leave=False):
            x, y = batch[0], batch[1]
            if x.dim() == len(input_shape) + 1:  # static images
                x_seq = encode(x, timesteps, encoding, gen)
            elif x.dim() == len(input_shape) + 2:  # event frames [B, T, C, H, W]
                x_seq = x.float()
                input_synops += float(energy.synops(account, {"input": x_seq}, n_samples=1))
            else:
                raise ValueError(f"input batch of shape {tuple(x.shape)} does not match the network input "
                                 f"{tuple(input_shape)} (static) or [T, *input] (events)")
            steps_seen = x_seq.shape[1]
            rec.activity = {}
            current, out = snn(x_seq)
            scores = SpikingNetwork.scores(current, out)
            hits = (scores.argmax(-1) == y[:, None]).sum(0).double()
            correct = hits if correct is None else correct[: len(hits)] + hits[: len(correct)]
            for name, s in rec.activity.items():
                per_layer[name] += float(energy.synops(account, {name: s}, n_samples=1))
                spikes[name] += float(s.double().sum())
            if out is not None:
                total_out = out.sum((1, 2))
                out_spikes += float(total_out.sum())
                silent_out += float((total_out == 0).sum())
            seen += len(y)
    if seen == 0:
        raise ValueError("no samples to simulate")
    synops_per_layer = {k: v / seen for k, v in per_layer.items()}
    rates = {layer.name: spikes[layer.name] / (layer.neurons * seen * steps_seen) for layer in account.layers}
    silent = [name for name, r in rates.items() if r == 0.0]
    result = SimResult(
        timesteps=steps_seen, encoding=encoding if x.dim() == len(input_shape) + 1 else "events", samples=seen,
        accuracy_per_step=[float(c) / seen for c in correct], synops=sum(synops_per_layer.values()),
        synops_per_layer=synops_per_layer, input_synops=input_synops / seen, firing_rate=rates,
        output_spikes=out_spikes / seen, silent_layers=silent,
        silent_output_fraction=silent_out / seen if snn.output_if is not None else 0.0)
    if silent:
        warnings.warn(f"silent layers (no spike on {seen} samples): {', '.join(map(repr, silent))} — the network "
                      "is under-driven there (conversion: raise rho or the SynOp target; direct route: lower the "
                      "penalty)", stacklevel=2)
    if result.silent_output_fraction > 0.5:
        warnings.warn(f"the output layer was silent for {100 * result.silent_output_fraction:.0f}% of the samples; "
                      "predictions fall back to the accumulated current — increase T or the activity", stacklevel=2)
    return result
