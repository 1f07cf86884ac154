"""Re-estimate BatchNorm statistics of a trained network as it will run: dropout off.

A network trained with dropout in front of a BatchNorm (conv -> BN -> ReLU -> dropout -> conv -> BN ...) stores
running variances measured on dropped-out inputs; at test time, dropout off, the inputs have a smaller variance and
every BN rescales them wrongly (the "variance shift" of Li et al. 2019, *Understanding the disharmony between
dropout and batch normalization*).  Conversion folds those running statistics into weights and biases, so the SNN
inherits the shift.  ``recalibrate_batchnorm`` measures the statistics again on training images with dropout off:
each BN gets the exact mean and (unbiased) variance of its input over the images, as ``torch.nn.BatchNorm``'s
cumulative average (``momentum=None``) defines them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from synopt.finetune.train import loader, seeded_subset

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)  # the norms with running statistics


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: Dataset, samples: int, batch_size: int = 256,
                          seed: int = 0) -> int:
    """Replace the running mean/variance of every BatchNorm in ``model`` by their values over ``samples`` items of
    ``data`` (a seeded subset) with every other module in eval mode (dropout off).  Returns the number of BN layers
    re-estimated (0: the model has none and is left as it was).  Weights, biases and the modules' train/eval modes
    are unchanged.

    With ``batch_size`` >= ``samples`` the result is the exact statistic over the subset; with smaller batches it is
    the average of the per-batch means and unbiased variances (BatchNorm's cumulative average).  If the forward
    pass fails, the old statistics are put back.
    """
    if samples < 2:
        raise ValueError(f"BN recalibration needs at least 2 training samples (a variance), got {samples}")
    if batch_size < 2:
        raise ValueError(f"BN recalibration needs batches of at least 2 samples (a variance), got {batch_size}")
    bns = [m for m in model.modules() if isinstance(m, BN_TYPES)]
    if not bns:
        return 0
    untracked = [n for n, m in model.named_modules() if isinstance(m, BN_TYPES) and not m.track_running_stats]
    if untracked:
        raise ValueError(f"BatchNorm layer(s) {untracked} keep no running statistics (track_running_stats=False): "
                         "nothing to recalibrate; they normalise every batch by itself")
    modes = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in bns}
    saved = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in bns]
    try:
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the batches
            bn.train()
        subset = seeded_subset(data, min(samples, len(data)), seed)
        for x, _ in loader(subset, batch_size, shuffle=False):
            if len(x) > 1:  # a single-item tail batch has no variance
                model(x)
    except BaseException:
        for bn, (mean, var, n) in zip(bns, saved):
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(n)
        raise
    finally:
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        for m, training in modes.items():
            m.train(training)
    return len(bns)
