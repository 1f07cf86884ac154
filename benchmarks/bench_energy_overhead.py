"""Cost of the exact SynOp term in a training step: (step with synops loss) / (plain step), median of runs.

Target (issue 2): <= 1.05. Models: CNN7 (1x28x28, batch 100) and VGG11 (3x32x32, batch 32).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from common import paired_ratio, write_section
from synopt import energy, zoo


def step_fn(model, x, y, opt, account=None, penalty=None, recorded=None):
    """One training step; with ``account`` the loss adds ``penalty(recorder)`` (default: the SynOp term) computed
    from the activity of ``recorded`` (default: ``model``)."""
    penalty = penalty or (lambda rec: 1e-9 * rec.synops(len(x)))

    def step():
        if account is None:
            loss = F.cross_entropy(model(x), y)
        else:
            with energy.ActivityRecorder(recorded or model, account) as rec:
                logits = model(x)
            loss = F.cross_entropy(logits, y) + penalty(rec)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=31, help="back-to-back plain/penalised step pairs; median ratio")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for name, batch in (("cnn7", 100), ("vgg11", 32)):
        spec = zoo.get_spec(name)
        model = zoo.build(name)
        shape = (spec.in_channels, *spec.input_size)
        t0 = time.perf_counter()
        account = energy.analyze(model, shape)
        analyze_s = time.perf_counter() - t0
        x = torch.rand(batch, *shape)
        y = torch.randint(0, spec.num_classes, (batch,))
        opt = torch.optim.Adam(model.parameters(), 1e-4)
        med, ratios, plain, pen = paired_ratio(step_fn(model, x, y, opt, account), step_fn(model, x, y, opt),
                                               args.pairs)
        q = statistics.quantiles(ratios, n=4)
        rows.append((name, batch, plain * 1e3, pen * 1e3, med, analyze_s, q[0], q[2]))
        print(f"{name}: plain {plain * 1e3:.1f} ms, with SynOp term {pen * 1e3:.1f} ms, paired ratio {med:.3f} "
              f"(IQR {q[0]:.3f}-{q[2]:.3f}); analyze() {analyze_s:.2f} s")
    # a QAT step of the conversion route: QReLU network + SynOp loss (Eq. 2 of 003_*) vs a plain ReLU ANN step
    from synopt.convert.qat import SynOpLoss, qrelu_network

    spec = zoo.get_spec("cnn7")
    ann = zoo.build("cnn7")
    shape = (spec.in_channels, *spec.input_size)
    qnet = qrelu_network(ann)
    q_account = energy.analyze(qnet.net, shape)
    loss_fn = SynOpLoss(q_account, target=1e6)
    x = torch.rand(100, *shape)
    y = torch.randint(0, 10, (100,))
    opt_a = torch.optim.Adam(ann.parameters(), 1e-4)
    opt_q = torch.optim.Adam(qnet.parameters(), 1e-4)
    qnet.train()

    qat_step = step_fn(qnet, x, y, opt_q, q_account, lambda rec: loss_fn(rec.synops(len(x))), recorded=qnet.net)

    med, ratios, plain, qat = paired_ratio(qat_step, step_fn(ann, x, y, opt_a), args.pairs)
    q = statistics.quantiles(ratios, n=4)
    print(f"cnn7 QAT step {qat * 1e3:.1f} ms vs ReLU step {plain * 1e3:.1f} ms: paired ratio {med:.3f} "
          f"(IQR {q[0]:.3f}-{q[2]:.3f})")
    # a direct-route step: single-step CNN7 (S2NN surrogate) + Omega_syn (p = 1) vs the same ReLU step (issue 4)
    from synopt.finetune.direct import build_snn

    snn = build_snn("cnn7", shape, 10, "s2nn")
    s_account = energy.analyze(snn, shape)
    omega_one = s_account.omega_all_firing("syn")
    opt_s = torch.optim.Adam(snn.parameters(), 1e-4)

    direct_step = step_fn(snn, x, y, opt_s, s_account, lambda rec: 64 / omega_one * rec.omega("syn", 1.0, len(x)))

    d_med, d_ratios, d_plain, d_step = paired_ratio(direct_step, step_fn(ann, x, y, opt_a), args.pairs)
    dq = statistics.quantiles(d_ratios, n=4)
    print(f"cnn7 direct step {d_step * 1e3:.1f} ms vs ReLU step {d_plain * 1e3:.1f} ms: paired ratio {d_med:.3f} "
          f"(IQR {dq[0]:.3f}-{dq[2]:.3f})")
    body = ("Training step (forward + backward + Adam) with the exact SynOp term `rec.synops()` added to the loss, "
            f"divided by the same step without it: median over {args.pairs} back-to-back pairs (order alternating), "
            "with the interquartile range. Target: <= 1.05.\n\n"
            "| model | batch | plain step [ms] | with SynOp term [ms] | ratio (median) | IQR | one-off analyze() [s] |\n"
            "|---|---|---|---|---|---|---|\n")
    body += "\n".join(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.3f} | {r[6]:.3f}-{r[7]:.3f} | {r[5]:.2f} |"
                       for r in rows)
    body += (f"\n\nQAT step of the conversion route (CNN7, batch 100: QReLU network + SynOp loss, Eq. 2 of 003_*) "
             f"vs a plain ReLU ANN step: {qat * 1e3:.1f} ms vs {plain * 1e3:.1f} ms, paired ratio **{med:.3f}** "
             f"(IQR {q[0]:.3f}-{q[2]:.3f}). Target (issue 3): <= 1.15.")
    body += (f"\n\nDirect-route step (CNN7, batch 100: single-step neurons with the S2NN surrogate + Omega_syn, p = 1, "
             f"lambda' = 64) vs a plain ReLU CNN7 step: {d_step * 1e3:.1f} ms vs {d_plain * 1e3:.1f} ms, paired ratio "
             f"**{d_med:.3f}** (IQR {dq[0]:.3f}-{dq[2]:.3f}). Target (issue 4): <= 1.15.")
    write_section("energy-overhead", "SynOp term overhead in a training step", body)


if __name__ == "__main__":
    main()
