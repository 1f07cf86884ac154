"""Train a ReLU ANN from the zoo: the starting point of both routes (and the README's first job)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from synopt import data, energy, zoo
from synopt.finetune.train import TrainConfig, evaluate, fit, loader, seeded_subset
from synopt.runs import RunDir, cleans_up_early_failures, save_checkpoint, write_text


def measure_synops(model: torch.nn.Module, account: energy.NetworkAccount, dataset, samples: int = 1000,
                   batch_size: int = 256) -> tuple[dict[str, float], dict[str, float]]:
    """Per-layer SynOps per inference and firing rates R(l) (Eq. 9 of 000_*) of ``model``'s activations."""
    model.eval()
    synops: dict[str, float] = {}
    spikes: dict[str, float] = {}
    seen = 0
    with torch.no_grad(), energy.ActivityRecorder(model, account, detach=True) as rec:
        for x, _ in loader(dataset, batch_size, shuffle=False):
            x = x[: samples - seen]
            rec.activity = {}
            model(x)
            for name, value in rec.synops_per_layer(1).items():
                synops[name] = synops.get(name, 0.0) + value
            for name, s in rec.activity.items():
                spikes[name] = spikes.get(name, 0.0) + float(s.double().sum())
            seen += len(x)
            if seen >= samples:
                break
    rates = {name: spikes[name] / (account.layer(name).neurons * seen) for name in spikes}
    return {k: v / seen for k, v in synops.items()}, rates


@cleans_up_early_failures
def train_ann(model: str = "digitsnet", dataset: str = "digits", data_root: str | None = None,
              out: str | Path = "runs/ann", epochs: int = 20, lr: float = 1e-3, batch_size: int = 64,
              weight_decay: float = 0.0, seed: int = 0, progress: bool = True,
              train_samples: int | None = None, augment: bool | str = False) -> dict:
    """Train zoo ``model`` (ReLU) on ``dataset``; write a run folder; return metrics and a printable summary.

    ``train_samples``: train on a seeded subset of the training split (a sweep's shared budget); ``augment``: the
    training augmentation of :func:`synopt.data.load` (e.g. ``'crop+flip'``, or ``'prefix'`` for event data)."""
    torch.manual_seed(seed)  # before building: the initial weights depend on it
    splits = data.load(dataset, data_root, split_seed=seed, augment=augment)  # augments the train split only
    train_set = seeded_subset(splits.train, train_samples, seed)
    spec = zoo.get_spec(model)
    c, h, w = splits.input_shape
    net = zoo.build(model, in_channels=c, input_size=(h, w), num_classes=splits.num_classes)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
                      progress=progress)
    run = RunDir(out, {"command": "train", "model": model, "dataset": dataset, "data_root": data_root,
                       "train_samples": train_samples, "augment": augment,
                       "train": {k: v for k, v in asdict(cfg).items() if k != "progress"}})
    history = fit(net, train_set, splits.val, cfg, checkpoint_dir=run.path / "checkpoints", desc=model)
    test_acc = evaluate(net, splits.test)
    account = energy.analyze(net, splits.input_shape)
    layer_synops, rates = measure_synops(net, account, splits.test)
    save_checkpoint(run.file("model.pt"), {"state_dict": net.state_dict(), "model": model,
                                          "input_shape": list(splits.input_shape),
                                          "num_classes": splits.num_classes, "source": spec.source})
    table = account.table(activity_synops=layer_synops)
    write_text(run.file("layers.txt"), table + "\n")
    metrics = {"test_acc": test_acc, "history": history.epochs, "synops_per_inference": sum(layer_synops.values()),
               "macs": account.macs, "firing_rate": rates, "accounting": account.to_dict(activity_synops=layer_synops)}
    run.write_metrics(metrics)
    summary = (f"{model} on {dataset}: test accuracy {100 * test_acc:.2f}% "
               f"({len(splits.test)} test samples)\n{table}\nrun folder: {run.path}")
    return {"metrics": metrics, "summary": summary, "run": run.path}
