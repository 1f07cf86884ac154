"""When should a bias enter an IF neuron? A probe on the QReLU points of a CIFAR-10 run (bench_conversion_cifar.py).

Under count coding the SNN injects every bias (and the input x) as b/T per step. An IF neuron's count is
floor(max_t V_t), not floor(V_T) (qrelu.if_spike_counts), so a negative bias spread over T steps cannot stop the
spikes that early positive input already caused. This probe runs each point's network three ways on count-coded
test images, all through the exact IF counts of ``temporal.py`` (``uniform`` reproduces the pipeline's time-aware
estimate, which equals the sinabs simulation):

* ``static``  -- the QReLU network on the whole image (Eq. 3 of 003_*; what static QAT trains),
* ``uniform`` -- biases as b/T per step (the SNN as synopt converts it),
* ``signed``  -- negative biases all at the first step (an initial membrane potential), positive ones at the last.

    python benchmarks/probe_bias_timing.py --run /tmp/cifar25/qrelu-rel --points 4 --static-phase
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from common import write_section

MODES = ("static", "uniform", "signed")


def bias_schedule(bias: torch.Tensor, steps: int, batch: int, mode: str) -> torch.Tensor:
    """``[batch*steps, C]`` bias current per step (batch-major) for ``mode`` uniform or signed."""
    step = torch.arange(steps).repeat(batch)[:, None]
    if mode == "uniform":
        return (bias / steps).expand(len(step), -1)
    zero = torch.zeros_like(bias)
    return torch.where(step == 0, bias.clamp(max=0), zero) + torch.where(step == steps - 1, bias.clamp(min=0), zero)


def output_current(body: torch.nn.Module, x_seq: torch.Tensor, mode: str) -> torch.Tensor:
    """``[B, T, K]`` output current of the QReLU network ``body`` in time mode with the biases of ``mode``."""
    from synopt.convert.temporal import _WEIGHT_TYPES, per_step_constants, stepped

    if mode == "static":
        x_seq = x_seq.sum(1, keepdim=True)
    b, t = x_seq.shape[:2]
    consts = per_step_constants(body)
    if not all(c.endswith(".bias") for c in consts):
        raise SystemExit(f"folded input offsets ({consts}) are not handled by this probe")
    state = dict(body.named_parameters())
    hooks = []
    for name, mod in body.named_modules():
        if isinstance(mod, _WEIGHT_TYPES) and mod.bias is not None:
            sched = bias_schedule(state[f"{name}.bias"], t, b, "uniform" if mode == "static" else mode)
            sched = sched.reshape(*sched.shape, *(1,) * (mod.weight.dim() - 2))
            hooks.append(mod.register_forward_hook(lambda m, i, o, s=sched: o + s))
    try:
        with stepped(body, t):
            out = torch.func.functional_call(body, {n: torch.zeros_like(state[n]) for n in consts},
                                             (x_seq.reshape(b * t, *x_seq.shape[2:]),), strict=False)
    finally:
        for h in hooks:
            h.remove()
    return out.reshape(b, t, *out.shape[1:])


def sinabs_accuracy(net: torch.nn.Module, loader, mode: str) -> float:
    """Accuracy of ``net`` converted by ``to_sinabs`` and stepped in sinabs as ``SpikingNetwork.forward`` does, but
    with the per-step bias currents of ``mode``: an independent check of the IF counts of ``output_current``."""
    import sinabs

    from synopt.convert.temporal import _WEIGHT_TYPES
    from synopt.convert.to_sinabs import SpikingNetwork, to_sinabs

    snn = to_sinabs(net, encoding="count")
    layers = [m for m in snn.body.modules() if isinstance(m, _WEIGHT_TYPES) and m.bias is not None]
    saved = [m.bias.detach().clone() for m in layers]
    correct = seen = 0
    with torch.no_grad():
        try:
            for x, y in loader:
                b, t = x.shape[:2]
                sinabs.reset_states(snn)
                for layer in snn.if_layers():
                    layer.reset_membrane()
                    layer.num_timesteps = 1
                currents, spikes = [], []
                schedules = [bias_schedule(bias, t, 1, mode) for bias in saved]
                for step in range(t):
                    for m, sched in zip(layers, schedules):
                        m.bias.copy_(sched[step])
                    currents.append(snn.body(x[:, step]))
                    spikes.append(snn.output_if(currents[-1]))
                scores = SpikingNetwork.scores(torch.stack(currents, 1), torch.stack(spikes, 1))[:, -1]
                correct += int((scores.argmax(1) == y).sum())
                seen += len(y)
        finally:
            for m, bias in zip(layers, saved):
                m.bias.copy_(bias)
    return correct / seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="the QAT run folder of bench_conversion_cifar.py (under its --work)")
    ap.add_argument("--points", default="4", help="comma-separated point indices")
    ap.add_argument("--static-phase", action="store_true",
                    help="the weights at the end of each point's static epochs (before its time-aware epoch)")
    ap.add_argument("--samples", type=int, default=2000, help="first test images")
    ap.add_argument("--sinabs", action="store_true",
                    help="also simulate the uniform and signed modes in sinabs (accuracy column 'sinabs')")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--section", default="probe-bias-timing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from torch.utils.data import DataLoader, Subset

    from synopt import data, energy
    from synopt.convert.pipeline import prepare_options
    from synopt.convert.qat import qrelu_network
    from synopt.convert.source import ModelSource, load_model
    from synopt.convert.temporal import CountCoded, temporal_scores
    from synopt.graph import prepare
    from synopt.runs import load_checkpoint

    run = Path(args.run)
    cfg = json.loads((run / "config.json").read_text())["config"]
    m = json.loads((run / "metrics.json").read_text())
    prepared, _ = prepare(load_model(ModelSource(**cfg["source"]))[0], **prepare_options(cfg))
    prepared.eval()
    account = energy.analyze(prepared, tuple(m["input_shape"]))
    steps = cfg["timesteps"]
    test = data.load(cfg["dataset"], cfg["data_root"], split_seed=cfg["seed"]).test
    test = Subset(CountCoded(test, steps), range(min(args.samples, len(test))))
    rows = []
    for i in (int(k) for k in args.points.split(",")):
        qnet = qrelu_network(prepared, m["rho"])
        if args.static_phase:
            sd = load_checkpoint(run / "checkpoints" / f"point{i}-static" / "last.pt")["state_dict"]
            qnet.load_state_dict({k.removeprefix("qnet."): v for k, v in sd.items()})
        else:
            qnet.load_state_dict(load_checkpoint(run / "points" / f"point{i}.pt")["state_dict"])
        qnet.eval()
        for mode in MODES:
            correct = seen = 0
            synops = 0.0
            with torch.no_grad(), energy.ActivityRecorder(qnet.net, account, detach=True) as rec:
                for x, y in DataLoader(test, batch_size=250):
                    rec.activity = {}
                    correct += int((temporal_scores(output_current(qnet.net, x, mode)).argmax(1) == y).sum())
                    synops += sum(rec.synops_per_layer(1).values())
                    seen += len(y)
            check = ""
            if args.sinabs:
                check = " - |" if mode == "static" else \
                    f" {100 * sinabs_accuracy(qnet.net, DataLoader(test, batch_size=250), mode):.2f}% |"
            rows.append(f"| {i} | {mode} | {100 * correct / seen:.2f}% |{check} {synops / seen:,.0f} | "
                        f"{synops / seen / m['macs']:.3f} |")
            print(rows[-1], flush=True)
    p = m["points"]
    body = "\n".join([
        f"Run {run.name}: {'the weights after the static epochs of each point (before its time-aware epoch)' if args.static_phase else 'the saved points'}; "
        f"first {len(test):,} test images, T = {steps}, count coding; {m['macs']:,} MACs. For reference the "
        "pipeline's own time-aware estimate / sinabs simulation of the saved points: "
        + "; ".join(f"point {i}: {100 * p[i].get('qrelu_time_aware_accuracy', float('nan')):.2f}% / "
                    f"{100 * p[i]['sim_accuracy']:.2f}%" for i in (int(k) for k in args.points.split(","))
                    if i < len(p)) + ".", "",
        "| point | biases | acc |" + (" sinabs acc |" if args.sinabs else "") + " SynOps | SynOps / MACs |",
        "|---|---|---|" + ("---|" if args.sinabs else "") + "---|---|", *rows])
    write_section(args.section, "Probe: when the biases enter the IF neurons (CIFAR-10 QAT points)", body)


if __name__ == "__main__":
    main()
