"""The training loop shared by ANN training, QAT (conversion route) and direct single-step training.

Penalties (SynOp-target loss, Omega_*) plug in through ``extra_loss``; everything they count comes from
``synopt.energy``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from synopt.runs import load_checkpoint, save_checkpoint

ExtraLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"  # adam | sgd (momentum 0.9)
    schedule: str = "cosine"  # cosine | constant
    label_smoothing: float = 0.0
    seed: int = 0
    num_workers: int = 0
    progress: bool = True
    bf16: bool = False  # CPU bfloat16 autocast of forward + loss (plain training only; weights stay float32)


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)

    def best(self, key: str = "val_acc") -> dict:
        return max(self.epochs, key=lambda e: e.get(key, -math.inf)) if self.epochs else {}


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose adam or sgd")


def seeded_subset(ds: Dataset, samples: int | None, seed: int) -> Dataset:
    """``samples`` items of ``ds`` drawn without replacement by ``seed`` (all of it when ``samples`` is falsy)."""
    if not samples:
        return ds
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:samples]
    return Subset(ds, perm.tolist())


def loader(ds: Dataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=num_workers)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset | DataLoader, batch_size: int = 256,
             forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None) -> float:
    """Top-1 accuracy (fraction) of ``model`` on a dataset or loader."""
    model.eval()
    dl = data if isinstance(data, DataLoader) else loader(data, batch_size, shuffle=False)
    correct = total = 0
    for x, y in dl:
        logits = forward(model, x) if forward else model(x)
        correct += int((logits.argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def fit(model: nn.Module, train: Dataset, val: Dataset | None, cfg: TrainConfig,
        extra_loss: ExtraLoss | None = None, checkpoint_dir: str | Path | None = None,
        param_groups: list[dict] | None = None, desc: str = "train",
        on_epoch_end: Callable[[int, dict], None] | None = None,
        on_epoch_start: Callable[[int], None] | None = None) -> History:
    """Train ``model`` with cross-entropy (+ ``extra_loss``); checkpoint each epoch and resume from the last one.

    ``extra_loss(model, x, logits)`` returns a scalar added to the loss and a dict of numbers shown live and logged.
    """
    if cfg.bf16 and extra_loss is not None:
        raise ValueError("bf16 autocast is for plain training only: a penalty such as the SynOp loss counts "
                         "activations that bfloat16 would round; train it with bf16=False")
    torch.manual_seed(cfg.seed)
    opt = make_optimizer(param_groups or model.parameters(), cfg)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1), eta_min=0.0) \
        if cfg.schedule == "cosine" else None
    history = History()
    start = 0
    ckpt = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    if ckpt is not None and ckpt.exists():
        state = load_checkpoint(ckpt)
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None and "scheduler" in state:
            sched.load_state_dict(state["scheduler"])
        start = int(state["epoch"]) + 1
        history.epochs = list(state.get("history", []))
        if "rng_state" in state:  # dropout and other draws continue as if never interrupted
            torch.set_rng_state(state["rng_state"])
    for epoch in range(start, cfg.epochs):
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        model.train()
        dl = loader(train, cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch, num_workers=cfg.num_workers)
        sums: dict[str, float] = {}
        n = correct = 0
        t0 = time.perf_counter()
        bar = tqdm(dl, desc=f"{desc} {epoch + 1}/{cfg.epochs}", disable=None if cfg.progress else True, leave=False)
        for x, y in bar:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            logs = {"ce": float(loss.detach())}
            if extra_loss is not None:
                extra, more = extra_loss(model, x, logits)
                loss = loss + extra
                logs.update(more)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            b = len(y)
            n += b
            correct += int((logits.detach().argmax(1) == y).sum())
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v * b
            bar.set_postfix({"acc": f"{correct / n:.3f}", **{k: f"{v / n:.3g}" for k, v in sums.items()}})
        if sched is not None:
            sched.step()
        row = {"epoch": epoch + 1, "train_acc": correct / max(n, 1), "seconds": time.perf_counter() - t0,
               **{k: v / max(n, 1) for k, v in sums.items()}}
        if val is not None:
            row["val_acc"] = evaluate(model, val, batch_size=max(cfg.batch_size, 256))
        history.epochs.append(row)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
        if ckpt is not None:
            save_checkpoint(ckpt, {"state_dict": model.state_dict(), "optimizer": opt.state_dict(),
                                   "scheduler": sched.state_dict() if sched else {}, "epoch": epoch,
                                   "history": history.epochs, "config": asdict(cfg),
                                   "rng_state": torch.get_rng_state()})
        if cfg.progress:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch")
            tqdm.write(f"{desc} epoch {epoch + 1}/{cfg.epochs}: {shown}")
    return history
