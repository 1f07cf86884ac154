"""Robust weight scaling (Rueckauer et al. 2017), the baseline of the conversion route (section 2.1.1 of 003_*).

``robust_scale(net, data, input_shape)`` returns a copy of a prepared ReLU network (BN folded, every activation site
its own ``nn.ReLU`` module) whose activation at every site l is the original one divided by

    lambda_l = the p-th percentile (default 99.9) of the NON-ZERO activations of site l on training samples,

so that, fed with rate coding (the input x injected every step, IF threshold 1), each neuron fires at a rate
activation / lambda_l <= ~1 spike per step.  The rule per weight layer (conv/linear) is

    W <- W * lambda_in / lambda_out,    b <- b / lambda_out,

with ``lambda_in`` the scale of the site(s) whose spikes reach the layer (through pooling, flatten, concatenation...),
``lambda_out`` the scale of the site its output drives (1 for the output layer by default).  Scales that must agree
for the network to stay a rescaled copy of itself are merged into groups (union-find over the fx graph):

* all contributions summed into one site (several weight layers, or a residual identity edge from another site)
  carry that site's scale: an identity edge from site u into the add before site t puts u and t in one group;
* all sites whose spikes reach one weight layer (concatenation, add of two spike tensors) share a scale, since the
  layer can only multiply its input by one factor;
* a weight layer whose output reaches two places gives them one scale.

A group's lambda is the MAXIMUM of its members' percentiles (every member then fires at <= 1 spike per step at its own
percentile; conservative). A group containing the network input uses lambda_0 (1 by default, since images are in
[0, 1]); one containing the output uses lambda_out (1 by default). With lambda_out = 1 the scaled network computes
exactly the original logits.

The percentile is exact and memory-bounded: one pass over the data keeps, per site, only the largest
``ceil((1 - p/100) * N * neurons) + 2`` values seen (N = number of samples) in a streaming top-k buffer, which always
contains the two order statistics that the linear-interpolation percentile (``torch.quantile``'s default) of the
non-zero values needs, whatever their number turns out to be. See docs/scaling.md.
"""

from __future__ import annotations

import copy
import math
import operator
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from synopt import energy

__all__ = ["robust_scale", "ScalingResult", "ScalingError", "SilentLayerWarning", "scale_groups",
           "StreamingPercentile"]

_WEIGHT_TYPES = energy.WEIGHT_TYPES
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d,
             nn.InstanceNorm2d, nn.InstanceNorm3d)
# modules f with f(c x) = c f(x) for c > 0 that pass spikes on unchanged in kind
_HOMOGENEOUS_MODULES = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity, nn.Flatten, nn.Unflatten,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.ZeroPad2d, nn.Upsample,
)
_OUTPUT_ONLY_MODULES = (nn.Softmax, nn.LogSoftmax)
_SHAPE_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze, torch.cat,
    torch.concat, torch.stack, torch.chunk, torch.split, operator.getitem, torch.clone, F.dropout, F.dropout2d,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.max_pool1d, F.max_pool2d, F.max_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, torch.mean, torch.sum,
}
_SHAPE_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze", "clone",
    "float", "to", "type_as", "__getitem__", "chunk", "split", "expand", "repeat", "unflatten", "mean", "sum",
}
_ADD_FUNCTIONS = {operator.add, torch.add, operator.sub, torch.sub, operator.iadd, operator.isub}
_ADD_METHODS = {"add", "add_", "sub", "sub_"}
_MUL_FUNCTIONS = {operator.mul, torch.mul, operator.imul}
_DIV_FUNCTIONS = {operator.truediv, torch.div, operator.itruediv}
_MUL_METHODS = {"mul", "mul_"}
_DIV_METHODS = {"div", "div_"}
_OUTPUT_FUNCTIONS = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax}
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_}

INPUT = ("input",)
OUTPUT = ("output",)
Key = tuple  # ("input",), ("output",), ("site", name) or ("weight", name)


class ScalingError(ValueError):
    """A network robust scaling cannot rescale exactly; the message names the node and what to do."""


class SilentLayerWarning(UserWarning):
    """An activation site had no non-zero activation on the calibration samples."""


# --------------------------------------------------------------------------------------------------------------------
# Exact streaming percentile of the non-zero values
# --------------------------------------------------------------------------------------------------------------------


class StreamingPercentile:
    """The p-th percentile (linear interpolation, as ``torch.quantile``) of the positive values of a stream.

    ``max_values`` bounds the number of values the stream can contain (e.g. samples x neurons). Only the largest
    ``ceil((1 - p/100) * max_values) + 2`` values are kept: the interpolation at position ``p/100 * (n - 1)`` of the
    n sorted positive values needs the order statistics at ranks ``n - floor(pos)`` and one above it from the top,
    and ``n - floor(pos) < n (1 - p/100) + 2 <= capacity`` for every n <= max_values.  Exact, one pass.
    """

    def __init__(self, percentile: float, max_values: int):
        if not 0 <= percentile <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {percentile}")
        self.q = float(percentile) / 100.0
        self.capacity = max(2, math.ceil((1.0 - self.q) * int(max_values)) + 2)
        self.count = 0
        self.buffer = torch.empty(0)

    def update(self, x: torch.Tensor) -> None:
        v = x.detach().reshape(-1)
        v = v[v > 0]
        self.count += v.numel()
        if v.numel() == 0:
            return
        if self.buffer.numel() >= self.capacity:  # full: only values above the current k-th largest can enter
            v = v[v > self.buffer.min()]
            if v.numel() == 0:
                return
        merged = torch.cat([self.buffer.to(v.dtype), v])
        if merged.numel() > self.capacity:
            merged = torch.topk(merged, self.capacity, sorted=False).values
        self.buffer = merged

    @property
    def nbytes(self) -> int:
        return self.buffer.numel() * self.buffer.element_size()

    def value(self) -> float | None:
        """The percentile, or None if no positive value was seen."""
        n = self.count
        if n == 0:
            return None
        top = torch.sort(self.buffer.double(), descending=True).values
        pos = self.q * (n - 1)
        lo = min(int(math.floor(pos)), n - 1)
        hi = min(lo + 1, n - 1)
        a_lo, a_hi = float(top[n - 1 - lo]), float(top[n - 1 - hi])
        return a_lo + (pos - lo) * (a_hi - a_lo)


# --------------------------------------------------------------------------------------------------------------------
# Which scales must be equal: union-find over the fx graph
# --------------------------------------------------------------------------------------------------------------------


class _UnionFind:
    def __init__(self):
        self.parent: dict[Key, Key] = {}
        self.order: dict[Key, int] = {}  # first appearance in the graph

    def add(self, k: Key) -> Key:
        if k not in self.parent:
            self.parent[k] = k
            self.order[k] = len(self.order)
        return k

    def find(self, k: Key) -> Key:
        self.add(k)
        root = k
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[k] != root:
            self.parent[k], k = root, self.parent[k]
        return root

    def union(self, a: Key, b: Key) -> Key:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if self.order[rb] < self.order[ra]:
                ra, rb = rb, ra
            self.parent[rb] = ra
        return ra

    def classes(self) -> list[list[Key]]:
        out: dict[Key, list[Key]] = {}
        for k in sorted(self.parent, key=self.order.__getitem__):
            out.setdefault(self.find(k), []).append(k)
        return sorted(out.values(), key=lambda members: self.order[members[0]])


@dataclass
class _WeightUse:
    name: str
    module: nn.Module
    inp: Key
    out: Key


class _ScaleGraph(fx.Interpreter):
    """Runs the graph once on an example and assigns every tensor a scale class; see the module docstring."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.mods = dict(gm.named_modules())
        self.uf = _UnionFind()
        self.uf.add(INPUT)
        self.key: dict[fx.Node, Key | None] = {}
        self.is_tensor: dict[fx.Node, bool] = {}
        self.sites: list[str] = []
        self.weights: dict[str, _WeightUse] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.is_tensor[n] = _has_tensor(result)
        return result

    def classify_all(self) -> None:
        """After ``run``: the scale class of every node (outside the interpreter, so errors stay plain)."""
        for n in self.graph.nodes:
            self.key[n] = self._classify(n)

    def _fail(self, n: fx.Node, what: str) -> ScalingError:
        return ScalingError(f"robust scaling cannot rescale through node {n.name!r} ({what}). It needs a ReLU "
                            "network whose only operations between activation sites and weight layers are positively "
                            "homogeneous (pooling, flatten/reshape, concat, add of spike tensors, dropout, scaling by "
                            "constants); fold BN and give every ReLU its own module first (synopt.graph).")

    def _merge(self, keys: list[Key]) -> Key:
        for k in keys[1:]:
            self.uf.union(keys[0], k)
        return keys[0]

    def _classify(self, n: fx.Node) -> Key | None:
        if n.op == "placeholder":
            return INPUT if self.is_tensor.get(n, False) else None
        if n.op == "get_attr":
            return None
        srcs = [self.key[a] for a in n.all_input_nodes if self.key.get(a) is not None]
        if n.op == "output":
            self.uf.add(OUTPUT)
            for k in srcs:
                self.uf.union(k, OUTPUT)
            return None
        if n.op == "call_module":
            mod = self.mods[n.target]
            if energy.is_activation_site(mod):
                if not isinstance(mod, nn.ReLU):
                    raise self._fail(n, f"activation {type(mod).__name__}: robust scaling is for ReLU networks "
                                        "(a QReLU network is count-coded and needs no scaling)")
                if n.target in self.sites:
                    raise self._fail(n, f"ReLU module {n.target!r} called at several places")
                key = self.uf.add(("site", n.target))
                self.sites.append(n.target)
                for k in srcs:
                    self.uf.union(k, key)
                return key
            if not srcs or not self.is_tensor[n]:
                return None
            if isinstance(mod, _WEIGHT_TYPES):
                inp = self._merge(srcs)
                out = self.uf.add(("weight", n.target))
                prev = self.weights.get(n.target)
                if prev is not None:  # one module called twice: both calls must scale the same way
                    self.uf.union(prev.inp, inp)
                    self.uf.union(prev.out, out)
                else:
                    self.weights[n.target] = _WeightUse(n.target, mod, inp, out)
                return out
            if isinstance(mod, _BN_TYPES):
                raise self._fail(n, f"{type(mod).__name__} is affine, not homogeneous: fold it into the adjacent "
                                    "conv/linear first (synopt.graph.bnfold)")
            if isinstance(mod, _HOMOGENEOUS_MODULES):
                return self._merge(srcs)
            if isinstance(mod, _OUTPUT_ONLY_MODULES):
                return self._to_output(srcs)
            raise self._fail(n, f"module {type(mod).__name__}")
        if not srcs or not self.is_tensor[n]:
            return None  # constants, shapes, sizes
        target = n.target
        if n.op == "call_function":
            if target in _RELU_FUNCTIONS:
                raise self._fail(n, "functional relu: give every activation its own nn.ReLU module")
            if target in _ADD_FUNCTIONS:
                self._check_no_constant_term(n)
                return self._merge(srcs)
            if target in _MUL_FUNCTIONS or target in _DIV_FUNCTIONS:
                return self._scaled(n, srcs, target in _DIV_FUNCTIONS)
            if target in _SHAPE_FUNCTIONS:
                return self._merge(srcs)
            if target in _OUTPUT_FUNCTIONS:
                return self._to_output(srcs)
            raise self._fail(n, f"function {getattr(target, '__name__', target)}")
        if n.op == "call_method":
            if target == "relu":
                raise self._fail(n, "method .relu(): give every activation its own nn.ReLU module")
            if target in _ADD_METHODS:
                self._check_no_constant_term(n)
                return self._merge(srcs)
            if target in _MUL_METHODS or target in _DIV_METHODS:
                return self._scaled(n, srcs, target in _DIV_METHODS)
            if target in _SHAPE_METHODS:
                return self._merge(srcs)
            if target in ("softmax", "log_softmax"):
                return self._to_output(srcs)
            raise self._fail(n, f"method .{target}()")
        raise self._fail(n, n.op)

    def _to_output(self, srcs: list[Key]) -> Key:
        """softmax is not homogeneous: only allowed where the scale is the output's."""
        self.uf.add(OUTPUT)
        key = self._merge(srcs)
        self.uf.union(key, OUTPUT)
        return key

    def _check_no_constant_term(self, n: fx.Node) -> None:
        for a in list(n.args) + [v for k, v in n.kwargs.items() if k != "alpha"]:
            if isinstance(a, fx.Node):
                if self.key.get(a) is None and self.is_tensor.get(a, False):
                    raise self._fail(n, f"adding the constant tensor {a.name!r} to activations")
            elif isinstance(a, (int, float)) and a != 0 and not isinstance(a, bool):
                raise self._fail(n, f"adding the constant {a} to activations")

    def _scaled(self, n: fx.Node, srcs: list[Key], divide: bool) -> Key:
        spiking = [a for a in n.all_input_nodes if self.key.get(a) is not None]
        if len(spiking) > 1:
            raise self._fail(n, "product or quotient of two activation tensors")
        if divide and not (isinstance(n.args[0], fx.Node) and n.args[0] is spiking[0]):
            raise self._fail(n, "division by activations")
        return srcs[0]


def _has_tensor(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, (tuple, list)):
        return any(isinstance(v, torch.Tensor) for v in x)
    return False


def _analyse_graph(model: nn.Module, input_shape: Sequence[int]) -> _ScaleGraph:
    try:
        gm = energy.trace(model)
    except energy.AccountingError as exc:
        raise ScalingError(str(exc)) from exc
    param = next(model.parameters(), None)
    example = torch.zeros((1, *input_shape), dtype=param.dtype if param is not None else torch.float32,
                          device=param.device if param is not None else None)
    interp = _ScaleGraph(gm)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            interp.run(example)
    finally:
        model.train(was_training)
    interp.classify_all()
    if not interp.sites:
        raise ScalingError(f"{type(model).__name__} has no nn.ReLU activation sites to scale")
    return interp


def scale_groups(net: nn.Module, input_shape: Sequence[int]) -> list[list[str]]:
    """The activation sites of ``net`` that must share one lambda, in graph order (singletons included)."""
    interp = _analyse_graph(copy.deepcopy(net), tuple(int(s) for s in input_shape))
    return [[k[1] for k in members if k[0] == "site"] for members in interp.uf.classes()
            if any(k[0] == "site" for k in members)]


# --------------------------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ScalingResult:
    """A robust-scaled copy of a network and how it was scaled.

    ``lambdas``: the lambda applied at each site (its group's); ``percentiles``: each site's own measured percentile
    (None = silent); ``groups``: sites sharing one lambda (graph order, singletons included); ``layer_scales``:
    ``{weight layer: (lambda_in, lambda_out)}`` (W was multiplied by lambda_in / lambda_out, b divided by lambda_out);
    ``input_lambda``: the scaled network expects the input divided by it (1 by default: feed x as it is);
    ``encoding``: how the converted network must be fed (``"rate"``: x every step).
    """

    module: nn.Module
    lambdas: dict[str, float]
    groups: list[list[str]]
    notes: list[str] = field(default_factory=list)
    encoding: str = "rate"
    percentiles: dict[str, float | None] = field(default_factory=dict)
    layer_scales: dict[str, tuple[float, float]] = field(default_factory=dict)
    input_lambda: float = 1.0
    output_lambda: float = 1.0
    silent: list[str] = field(default_factory=list)
    percentile: float = 99.9
    samples: int = 0

    def to_dict(self) -> dict:
        return {"lambdas": self.lambdas, "groups": self.groups, "notes": self.notes, "encoding": self.encoding,
                "percentiles": self.percentiles, "layer_scales": {k: list(v) for k, v in self.layer_scales.items()},
                "input_lambda": self.input_lambda, "output_lambda": self.output_lambda, "silent": self.silent,
                "percentile": self.percentile, "samples": self.samples}


def _batches(data: Dataset, samples: int, batch_size: int, seed: int) -> tuple[DataLoader, int]:
    n = len(data)
    if n == 0:
        raise ValueError("robust scaling needs calibration samples; the dataset is empty")
    if samples < n:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:samples].sort().values.tolist()
        data = Subset(data, idx)
        n = samples
    return DataLoader(data, batch_size=batch_size, shuffle=False), n


def _inputs(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _output_tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [o for o in out if isinstance(o, torch.Tensor)]
    if isinstance(out, dict):
        return [o for o in out.values() if isinstance(o, torch.Tensor)]
    return []


@torch.no_grad()
def robust_scale(net: nn.Module, data: Dataset, input_shape: Sequence[int], percentile: float = 99.9,
                 samples: int = 25600, batch_size: int = 256, *, input_lambda: float | str = 1.0,
                 output_lambda: float | str = 1.0, seed: int = 0, memory_warning_bytes: int = 2 ** 30
                 ) -> ScalingResult:
    """Robust (percentile) weight scaling of a prepared ReLU network; ``net`` itself is not modified.

    ``data`` yields ``(x, y)`` (or ``x``) training samples; ``samples`` of them (a seeded random subset when the
    dataset is larger; all of them when smaller) are run in batches of ``batch_size``.  ``percentile`` (0-100] of the
    non-zero activations of each site gives its lambda.  ``input_lambda``: the scale of the network input (1: images
    in [0, 1] are rates already; ``"percentile"``: the percentile of the non-zero input values, in which case the
    scaled network expects ``x / result.input_lambda``). ``output_lambda``: 1 (the scaled network's logits equal
    the original's) or ``"percentile"`` (of the positive outputs).
    """
    input_shape = tuple(int(s) for s in input_shape)
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    if samples < 1 or batch_size < 1:
        raise ValueError("samples and batch_size must be >= 1")
    for name, val in (("input_lambda", input_lambda), ("output_lambda", output_lambda)):
        if isinstance(val, str):
            if val != "percentile":
                raise ValueError(f"{name} must be a positive number or 'percentile', got {val!r}")
        elif not (val > 0 and math.isfinite(val)):
            raise ValueError(f"{name} must be a positive number or 'percentile', got {val!r}")

    model = copy.deepcopy(net).eval()
    interp = _analyse_graph(model, input_shape)
    uf = interp.uf
    account = energy.analyze(model, input_shape)
    loader, n_samples = _batches(data, samples, batch_size, seed)
    notes = [f"lambda = {percentile:g}th percentile of the non-zero activations of each site over {n_samples} "
             "training samples (exact, streaming top-k)"]
    if n_samples < samples:
        notes.append(f"the dataset has only {n_samples} samples (asked for {samples}); all are used")

    # ---- 1. measure ------------------------------------------------------------------------------------------------
    streams = {layer.name: StreamingPercentile(percentile, n_samples * layer.neurons) for layer in account.layers}
    missing = set(interp.sites) - set(streams)
    if missing:  # pragma: no cover - both walks see the same leaf modules
        raise ScalingError(f"sites {sorted(missing)} are not seen by synopt.energy")
    measure_in = input_lambda == "percentile"
    measure_out = output_lambda == "percentile"
    in_stream = StreamingPercentile(percentile, n_samples * math.prod(input_shape)) if measure_in else None
    out_stream: StreamingPercentile | None = None
    capacity = sum(s.capacity for s in streams.values()) * 4
    if capacity > memory_warning_bytes:
        warnings.warn(f"robust scaling keeps up to {capacity / 2 ** 30:.2f} GiB of activations for the "
                      f"{percentile:g}th percentile over {n_samples} samples; lower `samples` or raise the "
                      "percentile to use less", ResourceWarning, stacklevel=2)
    param = next(model.parameters(), None)
    with energy.ActivityRecorder(model, account, detach=True) as rec:
        for batch in loader:
            x = _inputs(batch)
            if param is not None:
                x = x.to(device=param.device, dtype=param.dtype)
            rec.activity = {}
            out = model(x)
            for name, act in rec.activity.items():
                streams[name].update(act)
            if in_stream is not None:
                in_stream.update(x)
            if measure_out:
                outs = _output_tensors(out)
                if out_stream is None:
                    out_stream = StreamingPercentile(percentile, n_samples * sum(o[0].numel() for o in outs))
                for o in outs:
                    out_stream.update(o)
            rec.activity = {}
    measured: dict[Key, float | None] = {("site", s): streams[s].value() for s in interp.sites}
    if in_stream is not None:
        measured[INPUT] = in_stream.value()
    if out_stream is not None:
        measured[OUTPUT] = out_stream.value()

    # ---- 2. one lambda per group ------------------------------------------------------------------------------------
    fixed = {}
    if not measure_in:
        fixed[INPUT] = float(input_lambda)
    if not measure_out:
        fixed[OUTPUT] = float(output_lambda)
    preds: dict[Key, set[Key]] = {}  # class -> classes feeding the weight layers that drive it
    for use in interp.weights.values():
        preds.setdefault(uf.find(use.out), set()).add(uf.find(use.inp))
    lam: dict[Key, float] = {}
    silent: list[str] = []
    groups: list[list[str]] = []
    for members in uf.classes():
        root = uf.find(members[0])
        sites = [k[1] for k in members if k[0] == "site"]
        pinned = [k for k in (INPUT, OUTPUT) if k in members and k in fixed]
        values = [measured[k] for k in members if k in measured and measured[k] is not None]
        quiet = [k[1] for k in members if k[0] == "site" and measured[k] is None]
        if pinned:
            value = fixed[pinned[0]]
            if len(pinned) == 2 and fixed[INPUT] != fixed[OUTPUT]:
                notes.append(f"the input reaches the output without a weight layer; lambda {value:g} of the input "
                             "is used for both")
            if sites:
                notes.append(f"sites {sites} share the fixed scale {value:g} of the network "
                             f"{'input' if pinned[0] == INPUT else 'output'}")
            source = "fixed"
        elif values:
            value = max(values)
            source = "measured"
        else:
            before = [lam[p] for p in preds.get(root, ()) if p in lam]
            value = max(before) if before else 1.0
            source = "the preceding layer" if before else "1 (no preceding layer)"
        if not (value > 0 and math.isfinite(value)):  # pragma: no cover - values are positive by construction
            raise ScalingError(f"non-positive lambda {value} for sites {sites}")
        lam[root] = value
        for name in quiet:
            silent.append(name)
            msg = (f"activation site {name!r} had no non-zero activation on {n_samples} samples: it will be silent "
                   f"in the SNN; lambda = {value:.6g} taken from "
                   f"{'its group' if source in ('measured', 'fixed') else source}")
            warnings.warn(msg, SilentLayerWarning, stacklevel=2)
            notes.append(msg)
        if sites:
            groups.append(sites)
            if len(sites) > 1:
                notes.append(f"sites {sites} share lambda = {value:.6g} (max of their percentiles)")

    # ---- 3. rescale the weight layers ------------------------------------------------------------------------------
    layer_scales: dict[str, tuple[float, float]] = {}
    for name, use in interp.weights.items():
        lam_in, lam_out = lam[uf.find(use.inp)], lam[uf.find(use.out)]
        mod = use.module
        mod.weight.mul_(lam_in / lam_out)
        if mod.bias is not None:
            mod.bias.div_(lam_out)
        layer_scales[name] = (lam_in, lam_out)

    in_lam = lam[uf.find(INPUT)]
    out_lam = lam[uf.find(OUTPUT)] if OUTPUT in uf.parent else 1.0
    if in_lam != 1.0:
        notes.append(f"input_lambda = {in_lam:.6g}: feed x / {in_lam:.6g} to keep the scaled activations in range")
    if out_lam != 1.0:
        notes.append(f"output_lambda = {out_lam:.6g}: the logits are divided by it")
    return ScalingResult(
        module=model, lambdas={s: lam[uf.find(("site", s))] for s in interp.sites}, groups=groups, notes=notes,
        encoding="rate", percentiles={s: measured[("site", s)] for s in interp.sites}, layer_scales=layer_scales,
        input_lambda=in_lam, output_lambda=out_lam, silent=silent, percentile=float(percentile), samples=n_samples)
