"""Plots, per-layer table and Markdown summary of a conversion run folder."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from synopt import energy  # noqa: E402
from synopt.runs import write_text  # noqa: E402


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=120)
    fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)


def plot_accuracy_per_step(points: list[dict], path: Path) -> None:
    """Accuracy vs time step (Fig. 4/5 of 003_*)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for p in points:
        steps = range(1, len(p["accuracy_per_step"]) + 1)
        ax.plot(steps, [100 * a for a in p["accuracy_per_step"]], marker=".", label=p["label"])
    ax.set_xlabel("time step")
    ax.set_ylabel("accuracy [%]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_synops_per_layer(baseline: dict, optimised: dict, path: Path) -> None:
    """SynOps per layer, baseline vs optimised (Fig. 2 right of 003_*)."""
    names = list(baseline["synops_per_layer"])
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(names) + 2), 3.5))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [baseline["synops_per_layer"][n] for n in names], 0.4, label=baseline["label"])
    ax.bar([x + 0.2 for x in xs], [optimised["synops_per_layer"].get(n, 0.0) for n in names], 0.4,
           label=optimised["label"])
    ax.set_xticks(list(xs), names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("SynOps per inference")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_accuracy_vs_synops(metrics: dict, path: Path) -> None:
    """Accuracy vs SynOps, log x, the ANN's MACs marked (Fig. 3 of 003_*)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    b = metrics["baseline"]
    ax.scatter([b["sim_synops"]], [100 * b["sim_accuracy"]], marker="*", s=120, c="red", label="baseline SNN")
    pts = metrics["points"]
    if pts:
        ax.plot([p["sim_synops"] for p in pts], [100 * p["sim_accuracy"] for p in pts], "o-", label="SNN (sim)")
        est = [p for p in pts if "qrelu_synops" in p]
        if est:
            ax.plot([p["qrelu_synops"] for p in est], [100 * p["qrelu_accuracy"] for p in est], "x--",
                    label="QReLU ANN estimate")
    ax.axvline(metrics["macs"], color="grey", ls=":", label="ANN MACs")
    ax.axhline(100 * metrics["ann_accuracy"], color="grey", ls="--", lw=0.8, label="ANN accuracy")
    ax.set_xscale("log")
    ax.set_xlabel("SynOps per inference")
    ax.set_ylabel("accuracy [%]")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    _save(fig, path)


def write_conversion_report(run_dir: Path, metrics: dict, account: energy.NetworkAccount) -> None:
    """plots/*.png|svg, layers.txt (with the final point's measured SynOps) and summary.md."""
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    final = metrics["points"][-1] if metrics["points"] else metrics["baseline"]
    plot_accuracy_per_step([metrics["baseline"], *metrics["points"]], plots / "accuracy_per_step")
    plot_synops_per_layer(metrics["baseline"], final, plots / "synops_per_layer")
    plot_accuracy_vs_synops(metrics, plots / "accuracy_vs_synops")
    write_text(run_dir / "layers.txt", account.table(activity_synops=final["synops_per_layer"]) + "\n")
    b = metrics["baseline"]
    lines = [
        "# Conversion summary", "",
        f"ANN accuracy {100 * metrics['ann_accuracy']:.2f}%, {metrics['macs']:,} MACs per inference."
        + (f" SNNs simulated for T = {metrics['timesteps']} steps, biases entering `{metrics['bias_timing']}` "
           "(`--bias-timing`, docs/conversion.md)." if "bias_timing" in metrics else ""), "",
        "| model | accuracy (SNN) | SynOps/inference | SynOps/MAC | ANN estimate acc | ANN estimate SynOps |",
        "|---|---|---|---|---|---|",
        f"| {b['label']} | {100 * b['sim_accuracy']:.2f}% | {b['sim_synops']:,.0f} | "
        f"{b['sim_synops'] / metrics['macs']:.3f} | | |",
    ]
    for p in metrics["points"]:
        est_acc = f"{100 * p['qrelu_accuracy']:.2f}%" if "qrelu_accuracy" in p else ""
        est_syn = f"{p['qrelu_synops']:,.0f}" if "qrelu_synops" in p else ""
        lines.append(f"| {p['label']} | {100 * p['sim_accuracy']:.2f}% | {p['sim_synops']:,.0f} | "
                     f"{p['sim_synops'] / metrics['macs']:.3f} | {est_acc} | {est_syn} |")
    if metrics["points"]:
        ratio = final["sim_synops"] / max(b["sim_synops"], 1e-9)
        lines += ["", f"Final model: {ratio:.3g}x the SynOps of the baseline SNN (plain ANN weights, threshold 1) at "
                      f"{100 * (final['sim_accuracy'] - b['sim_accuracy']):+.2f} points accuracy; "
                      f"{final['sim_synops'] / metrics['macs']:.3g} SynOps per ANN MAC."]
    if metrics.get("notes"):
        lines += ["", "Notes:", *[f"- {n}" for n in metrics["notes"]]]
    lines += ["", "Plots: `plots/accuracy_vs_synops.png`, `plots/accuracy_per_step.png`, "
                  "`plots/synops_per_layer.png`; per-layer table: `layers.txt`."]
    write_text(run_dir / "summary.md", "\n".join(lines) + "\n")
