"""The single accounting of synopt: fan-out, MACs, SynOps, penalties and energy.

Every SynOp, fan-out, MAC and energy figure in the project comes from this module: the SynOp-target loss of the
conversion route, the Omega penalties of the direct route, the SynOps measured on a sinabs simulation and every report.

How the count works (see ``docs/energy.md``):

* An *activation site* is a module whose output is spikes (or spike counts, or the activations that will become
  spikes): ``nn.ReLU``, synopt's QReLU and single-step neurons (any module with ``synopt_neuron = True``) and sinabs
  spiking layers. The network input is a pseudo-site ``"input"`` (used when the input itself is events).
* The model is traced with ``torch.fx`` and interpreted twice in one pass: once on real values (for shapes) and once in
  "ones space", where the spikes of every site are leaf tensors of ones and every weight layer is replaced by its
  structural twin ``L_ones`` (all weights 1, no bias).  A spike travels through structural ops (dropout, BN, flatten,
  pooling, concatenation, additions) until it reaches a weight layer (conv/linear: every synapse there is one SynOp,
  ``L_ones(s).sum()``) or another activation site directly (an identity/residual edge: one SynOp per spike).
* The count is linear in the spikes, so ``psi = d count / d s`` is exact per neuron, including padding borders,
  strides, dilation, groups, pooling and several consumers.  It is computed once; afterwards the SynOps of any
  activity ``s`` are ``sum(psi * s)``: a differentiable scalar that costs one multiply-add per neuron.

Two conventions:

* ``"exact"`` (default): average pooling in front of a weight layer is a *sum* pool, as on neuromorphic hardware (the
  1/k^2 is folded into the next weights), so each spike reaches every synapse of the pooled position.
* ``"eq7"``: the per-layer average of Eq. 7 of ``000_*`` (Suetake et al.), i.e. psi = FLOPs of the consumer / number
  of neurons (Eq. 8): pooling is a mean and a conv contributes ``C_out k^2 H'W'/(HW)`` per input neuron.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "AccountingError",
    "EnergyModel",
    "ENERGY_MODELS",
    "get_energy_model",
    "LayerAccount",
    "WeightAccount",
    "NetworkAccount",
    "analyze",
    "is_activation_site",
    "ActivityRecorder",
    "synops",
    "omega",
    "firing_rate",
    "trace",
]

CONVENTIONS = ("exact", "eq7")
# the modules whose weights are synapses: every fan-out, SynOp and MAC of the accounting sits on one of these
WEIGHT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class AccountingError(ValueError):
    """A model the accounting cannot count through; the message names the node and what to do."""


# --------------------------------------------------------------------------------------------------------------------
# Energy models
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnergyModel:
    """Energy per synaptic operation (accumulate, E_AC) and per multiply-accumulate (E_MAC), in picojoules."""

    name: str
    e_ac_pj: float
    e_mac_pj: float
    source: str = "user-defined"

    def snn_joules(self, synops: float) -> float:
        """E_SNN = E_AC * SynOps (Eq. 11-12 of 000_*, with T folded into the measured SynOps)."""
        return float(synops) * self.e_ac_pj * 1e-12

    def ann_joules(self, macs: float) -> float:
        """E_ANN = E_MAC * MACs (App. B of 004_*)."""
        return float(macs) * self.e_mac_pj * 1e-12


ENERGY_MODELS: dict[str, EnergyModel] = {
    "cmos45nm": EnergyModel("cmos45nm", 0.9, 4.6, "45 nm CMOS, 32-bit float (App. B of 004_*, after Horowitz 2014)"),
}


def get_energy_model(name: str = "cmos45nm", e_ac_pj: float | None = None, e_mac_pj: float | None = None) -> EnergyModel:
    """A named energy model, or a user-defined one when ``e_ac_pj`` and/or ``e_mac_pj`` are given (e.g. a chip's
    measured energy per SynOp); a value not given comes from the named model."""
    for flag, value in (("--e-ac", e_ac_pj), ("--e-mac", e_mac_pj)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{flag} is an energy per operation in picojoules and must be positive, got {value:g}")
    base = ENERGY_MODELS.get(name)
    if e_ac_pj is not None or (e_mac_pj is not None and base is not None):
        return EnergyModel("custom" if base else name,
                           float(e_ac_pj if e_ac_pj is not None else base.e_ac_pj),
                           float(e_mac_pj if e_mac_pj is not None else base.e_mac_pj if base else float("nan")))
    if name not in ENERGY_MODELS:
        raise ValueError(f"unknown energy model {name!r}; choose one of {sorted(ENERGY_MODELS)} "
                         "or give --e-ac (pJ per SynOp) for your chip")
    return ENERGY_MODELS[name]


# --------------------------------------------------------------------------------------------------------------------
# Which modules are neurons
# --------------------------------------------------------------------------------------------------------------------

_SITE_TYPES: tuple[type, ...] = (nn.ReLU,)


def _sinabs_spiking_types() -> tuple[type, ...]:
    try:  # sinabs.layers only; never sinabs.backend.dynapcnn (it imports samna)
        import sinabs.layers as sl
    except ImportError:  # pragma: no cover - sinabs is a hard dependency
        return ()
    return (sl.LIF, sl.ALIF)  # IAF/IAFSqueeze/LIFSqueeze derive from LIF


def is_activation_site(module: nn.Module) -> bool:
    """True for modules whose output is (or becomes) spikes: ReLU, synopt neurons, sinabs spiking layers."""
    if getattr(module, "synopt_neuron", False):
        return True
    if isinstance(module, _SITE_TYPES):
        return True
    sinabs_types = _sinabs_spiking_types()
    if sinabs_types and isinstance(module, sinabs_types):
        import sinabs.layers as sl

        return not isinstance(module, sl.ExpLeak)
    return False


class _Tracer(fx.Tracer):
    """Keeps activation sites and sinabs layers as leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if is_activation_site(m) or type(m).__module__.startswith("sinabs"):
            return True
        return super().is_leaf_module(m, qualname)


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - re-raised with advice
        raise AccountingError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}). "
            "Data-dependent control flow is not supported; import the model from ONNX or wrap the dynamic part "
            "in a leaf module."
        ) from exc
    return fx.GraphModule(model, graph)


def trace(model: nn.Module) -> fx.GraphModule:
    """``model`` as an fx GraphModule whose activation sites and sinabs layers are leaf modules."""
    return _trace(model)


# --------------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class LayerAccount:
    """One activation site: its neurons and the exact fan-out psi of each (per sample)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    psi: torch.Tensor
    consumers: list[str] = field(default_factory=list)

    _cast: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def neurons(self) -> int:
        return int(self.psi.numel())

    def psi_as(self, like: torch.Tensor) -> torch.Tensor:
        """psi in the dtype/device of ``like`` (cached: no copy per training step)."""
        key = (like.dtype, like.device)
        if key not in self._cast:
            self._cast[key] = self.psi.to(device=like.device, dtype=like.dtype)
        return self._cast[key]

    @property
    def synapses(self) -> float:
        """Sum of psi: the SynOps if every neuron spikes once (FLOPs(l) of Eq. 8)."""
        return float(self.psi.double().sum())

    @property
    def psi_mean(self) -> float:
        return self.synapses / max(self.neurons, 1)


@dataclass
class WeightAccount:
    """One weight layer (conv/linear): its dense ANN cost."""

    name: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    macs: int
    params: int


@dataclass
class NetworkAccount:
    """The accounting of one network at one input shape. ``layers`` excludes the input pseudo-site."""

    input_shape: tuple[int, ...]
    convention: str
    layers: list[LayerAccount]
    weights: list[WeightAccount]
    input_layer: LayerAccount

    # ---- static totals --------------------------------------------------------------------------------------------
    @property
    def macs(self) -> int:
        """MACs of one ANN inference: sum over weight layers of output elements x fan-in (padding included)."""
        return int(sum(w.macs for w in self.weights))

    @property
    def neurons(self) -> int:
        return int(sum(layer.neurons for layer in self.layers))

    def layer(self, name: str) -> LayerAccount:
        for layer in self.layers:
            if layer.name == name:
                return layer
        if name == "input":
            return self.input_layer
        raise KeyError(f"no activation site named {name!r}; sites: {[layer.name for layer in self.layers]}")

    def omega_all_firing(self, kind: str = "syn", p: float = 1.0) -> float:
        """Omega_*(1): the penalty with every neuron spiking (Table 1 of 000_*; normaliser of Eq. 21)."""
        ones = {layer.name: torch.ones(layer.shape, dtype=torch.float64) for layer in self.layers}
        return float(omega(self, ones, kind=kind, p=p, n_samples=1))

    # ---- activity-dependent --------------------------------------------------------------------------------------
    def synops(self, activity: dict[str, torch.Tensor], n_samples: int = 1) -> torch.Tensor:
        """SynOps per sample for recorded activity (site name -> spikes, any leading batch/time dims)."""
        return synops(self, activity, n_samples=n_samples)

    # ---- presentation ---------------------------------------------------------------------------------------------
    def to_dict(self, energy: EnergyModel | None = None, activity_synops: dict[str, float] | None = None) -> dict:
        energy = energy or ENERGY_MODELS["cmos45nm"]
        out = {
            "input_shape": list(self.input_shape),
            "convention": self.convention,
            "energy_model": {"name": energy.name, "e_ac_pj": energy.e_ac_pj, "e_mac_pj": energy.e_mac_pj},
            "input": {"neurons": self.input_layer.neurons, "psi_mean": self.input_layer.psi_mean,
                      "synapses": self.input_layer.synapses, "consumers": self.input_layer.consumers},
            "layers": [],
            "weights": [
                {"name": w.name, "kind": w.kind, "in_shape": list(w.in_shape), "out_shape": list(w.out_shape),
                 "macs": w.macs, "params": w.params}
                for w in self.weights
            ],
        }
        for layer in self.layers:
            row = {"name": layer.name, "kind": layer.kind, "shape": list(layer.shape), "neurons": layer.neurons,
                   "psi_mean": layer.psi_mean, "psi_min": float(layer.psi.min()), "psi_max": float(layer.psi.max()),
                   "synapses": layer.synapses, "consumers": layer.consumers}
            if activity_synops is not None:
                row["synops"] = activity_synops.get(layer.name, 0.0)
            out["layers"].append(row)
        totals = {
            "neurons": self.neurons,
            "activation_sites": len(self.layers),
            "macs": self.macs,
            "omega_syn_1": self.omega_all_firing("syn"),
            "omega_total_1": self.omega_all_firing("total"),
            "omega_balance_1": self.omega_all_firing("balance"),
            "e_ann_joules": energy.ann_joules(self.macs),
            "e_snn_all_firing_joules": energy.snn_joules(self.omega_all_firing("syn")),
        }
        if activity_synops is not None:
            total = float(sum(activity_synops.values()))
            totals.update({"synops": total, "e_snn_joules": energy.snn_joules(total),
                           "synops_per_mac": total / max(self.macs, 1)})
        out["totals"] = totals
        return out

    def table(self, energy: EnergyModel | None = None, activity_synops: dict[str, float] | None = None) -> str:
        """A human-readable per-layer table with totals."""
        d = self.to_dict(energy, activity_synops)
        head = f"{'site':<28}{'kind':<12}{'shape':<16}{'neurons':>10}{'psi mean':>11}{'synapses':>15}"
        if activity_synops is not None:
            head += f"{'SynOps':>15}"
        lines = [f"SynOp accounting ({d['convention']} fan-out), input {tuple(self.input_shape)}", head,
                 "-" * len(head)]
        for row in d["layers"]:
            line = (f"{row['name'][:27]:<28}{row['kind'][:11]:<12}{'x'.join(map(str, row['shape'])):<16}"
                    f"{row['neurons']:>10,}{row['psi_mean']:>11.2f}{row['synapses']:>15,.0f}")
            if activity_synops is not None:
                line += f"{row['synops']:>15,.0f}"
            lines.append(line)
        lines.append("-" * len(head))
        t = d["totals"]
        lines += [
            f"{'weight layers':<28}{len(self.weights):>10}     MACs (ANN): {t['macs']:,}",
            f"activation sites: {t['activation_sites']}   neurons: {t['neurons']:,}",
            f"Omega_syn(1) = {t['omega_syn_1']:,.0f}   Omega_total(1) = {t['omega_total_1']:,.0f}   "
            f"Omega_balance(1) = {t['omega_balance_1']:,.0f}",
            f"energy ({d['energy_model']['name']}: E_AC {energy_str(d['energy_model']['e_ac_pj'])}, "
            f"E_MAC {energy_str(d['energy_model']['e_mac_pj'])}): E_ANN = {t['e_ann_joules'] * 1e6:.4g} uJ, "
            f"E_SNN(all firing once) = {t['e_snn_all_firing_joules'] * 1e6:.4g} uJ",
        ]
        if activity_synops is not None:
            lines.append(f"measured SynOps/inference = {t['synops']:,.0f} ({t['synops_per_mac']:.3f} per MAC), "
                         f"E_SNN = {t['e_snn_joules'] * 1e6:.4g} uJ")
        return "\n".join(lines)


def energy_str(pj: float) -> str:
    return "n/a" if math.isnan(pj) else f"{pj:g} pJ"


# --------------------------------------------------------------------------------------------------------------------
# The interpreter: real values (shapes) and ones-space values (spike reach) in one pass
# --------------------------------------------------------------------------------------------------------------------

_PASSTHROUGH_MODULES = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Softmax, nn.LogSoftmax,
)
_SHAPE_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze", "clone",
    "float", "to", "type_as", "__getitem__", "chunk", "split", "expand", "repeat", "unflatten",
}
_SHAPE_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze, torch.cat,
    torch.concat, torch.stack, torch.chunk, torch.split, operator.getitem, torch.clone, F.dropout, F.dropout2d,
    torch.nn.functional.softmax, torch.nn.functional.log_softmax, torch.softmax, torch.log_softmax,
}
_PAD_FUNCTIONS = {F.pad}
_ADD_FUNCTIONS = {operator.add, torch.add, operator.sub, torch.sub, operator.iadd}
_SCALE_FUNCTIONS = {operator.mul, torch.mul, operator.truediv, torch.div}
_RELU_FUNCTIONS = {F.relu, torch.relu}


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _map(fn: Callable[[Any], Any], obj: Any) -> Any:
    return fx.node.map_aggregate(obj, fn)


def _sum_pool_nd(x: torch.Tensor, kernel, stride, padding, ceil_mode: bool, dims: int) -> torch.Tensor:
    """The sum of every pooling window (zero padding; a ceil_mode window that overhangs the input sums only what it
    covers): average pooling with divisor 1 (avg x k^2 would overcount those overhanging windows)."""
    k = _tuple(kernel, dims)
    s = _tuple(stride if stride is not None else k, dims)
    pad = _tuple(padding, dims)
    if dims == 1:  # avg_pool1d has no divisor_override: pool a height-1 image
        out = F.avg_pool2d(x.unsqueeze(-2), (1, *k), (1, *s), (0, *pad), ceil_mode, True, divisor_override=1)
        return out.squeeze(-2)
    pool = {2: F.avg_pool2d, 3: F.avg_pool3d}[dims]
    return pool(x, k, s, pad, ceil_mode, True, divisor_override=1)


def _tuple(v, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * n


def _adaptive_bins(in_size: int, out_size: int) -> torch.Tensor:
    starts = [(i * in_size) // out_size for i in range(out_size)]
    ends = [-((-(i + 1) * in_size) // out_size) for i in range(out_size)]
    return torch.tensor([e - s for s, e in zip(starts, ends)], dtype=torch.float64)


def _adaptive_sum_pool(x: torch.Tensor, output_size, dims: int) -> torch.Tensor:
    pool = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[dims]
    out = pool(x, output_size)
    scale = torch.ones((), dtype=x.dtype)
    for axis in range(dims):
        size_in, size_out = x.shape[-dims + axis], out.shape[-dims + axis]
        shape = [1] * out.dim()
        shape[out.dim() - dims + axis] = size_out
        scale = scale * _adaptive_bins(size_in, size_out).to(x.dtype).view(shape)
    return out * scale


class _Account(fx.Interpreter):
    """Runs the graph on (real, ones) pairs; see the module docstring."""

    def __init__(self, gm: fx.GraphModule, convention: str):
        super().__init__(gm)
        self.convention = convention
        self.modules = dict(gm.named_modules())
        self.count = torch.zeros((), dtype=torch.float64)
        self.sites: dict[str, tuple[torch.Tensor, str, list[str]]] = {}
        self.reach: dict[str, set[str]] = {}  # which sites' spikes a value carries
        self.weights: list[WeightAccount] = []

    # Each env value is a tuple (real, ones, reach:set[str]) for tensors, or a plain python value.
    def run_node(self, n: fx.Node) -> Any:
        self._node = n
        return super().run_node(n)

    def _split(self, args, kwargs):
        real_args = _map(lambda a: a[0] if isinstance(a, _Val) else a, args)
        real_kwargs = _map(lambda a: a[0] if isinstance(a, _Val) else a, kwargs)
        return real_args, real_kwargs

    def _val_args(self, args) -> list[_Val]:
        found: list[_Val] = []
        _map(lambda a: found.append(a) if isinstance(a, _Val) else None, args)
        return found

    # -- placeholders / attributes --------------------------------------------------------------------------------
    def placeholder(self, target, args, kwargs):
        real = super().placeholder(target, args, kwargs)
        if not _is_tensor(real):
            return real
        return self._new_site("input", "input", real)

    def get_attr(self, target, args, kwargs):
        real = super().get_attr(target, args, kwargs)
        if _is_tensor(real):
            return _Val(real, torch.zeros_like(real, dtype=torch.float64), frozenset())
        return real

    def output(self, target, args, kwargs):
        return args[0]

    def _new_site(self, name: str, kind: str, real: torch.Tensor) -> _Val:
        leaf = torch.ones_like(real, dtype=torch.float64).requires_grad_(True)
        self.sites[name] = (leaf, kind, [])
        return _Val(real, leaf, frozenset({name}))

    def _arrive(self, v: _Val, consumer: str, amount: torch.Tensor) -> None:
        self.count = self.count + amount
        for src in v.reach:
            if consumer not in self.sites[src][2]:
                self.sites[src][2].append(consumer)

    def _fail(self, what: str) -> AccountingError:
        n = self._node
        return AccountingError(
            f"synopt.energy cannot count synapses through node {n.name!r} ({n.op} {what}). Supported between "
            "neurons: conv/linear, BN, dropout, avg/max/adaptive pooling, flatten/reshape, add, concat, scaling by "
            "constants. Replace the op, make it a leaf module, or open an issue with the model."
        )

    # -- modules --------------------------------------------------------------------------------------------------
    def call_module(self, target, args, kwargs):
        mod = self.modules[target]
        vals = self._val_args(args)
        real_args, real_kwargs = self._split(args, kwargs)
        if is_activation_site(mod):
            x = vals[0]
            name = target if target not in self.sites else f"{target}@{self._node.name}"  # module called twice
            self._arrive(x, name, x.ones.sum())  # identity edges: spikes reaching a neuron directly
            return self._new_site(name, type(mod).__name__, x.real)
        real = mod(*real_args, **real_kwargs)
        if not vals:
            return self._wrap_const(real)
        x = vals[0]
        if isinstance(mod, WEIGHT_TYPES):
            return self._weight_layer(target, mod, x, real)
        if not any(v.reach for v in vals) and _is_tensor(real):  # no spikes pass here (e.g. a readout head)
            return self._wrap_const(real)
        if isinstance(mod, _PASSTHROUGH_MODULES):
            return _Val(real, x.ones, x.reach)
        if isinstance(mod, (nn.Flatten, nn.Unflatten, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d,
                            nn.ConstantPad2d, nn.ConstantPad3d)):
            if isinstance(mod, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)):  # padding is no spike
                return _Val(real, F.pad(x.ones, mod.padding), x.reach)
            return _Val(real, mod(x.ones), x.reach)
        dims = _pool_dims(mod)
        if isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
            if getattr(mod, "dilation", 1) not in (1, (1,) * dims):
                raise self._fail(f"{type(mod).__name__} with dilation")
            return _Val(real, self._pool(x.ones, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode, dims),
                        x.reach)
        if isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
            return _Val(real, self._adaptive(x.ones, mod.output_size, dims), x.reach)
        if type(mod).__name__ == "SumPool2d" and type(mod).__module__.startswith("sinabs"):
            return _Val(real, self._pool(x.ones, mod.kernel_size, mod.stride, 0, mod.ceil_mode, 2), x.reach)
        raise self._fail(f"module {type(mod).__name__}")

    def _pool(self, ones, kernel, stride, padding, ceil_mode, dims):
        if self.convention == "exact":
            return _sum_pool_nd(ones, kernel, stride, padding, ceil_mode, dims)
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[dims]
        return pool(ones, kernel, stride, padding, ceil_mode, True)

    def _adaptive(self, ones, output_size, dims):
        if self.convention == "exact":
            return _adaptive_sum_pool(ones, output_size, dims)
        pool = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[dims]
        return pool(ones, output_size)

    def _weight_layer(self, name: str, mod: nn.Module, x: _Val, real: torch.Tensor) -> _Val:
        weight = mod.weight
        if isinstance(mod, nn.Linear):
            fan_in = mod.in_features
            structural = lambda t: F.linear(t, torch.ones_like(weight, dtype=torch.float64))  # noqa: E731
        else:
            fan_in = weight.shape[1] * math.prod(weight.shape[2:])
            structural = lambda t: mod._conv_forward(t, torch.ones_like(weight, dtype=torch.float64), None)  # noqa: E731,SLF001
        self._record_weight(name, type(mod).__name__, x.real, real, fan_in, sum(p.numel() for p in mod.parameters()))
        self._count_weight(name, x, structural, real, fan_in)
        return _Val(real, torch.zeros_like(real, dtype=torch.float64), frozenset())

    def _record_weight(self, name, kind, inp, out, fan_in, params):
        self.weights.append(WeightAccount(name, kind, tuple(inp.shape[1:]), tuple(out.shape[1:]),
                                          int(out[0].numel() * fan_in), int(params)))

    def _count_weight(self, name: str, x: _Val, structural: Callable, real_out: torch.Tensor, fan_in: int) -> None:
        if not x.reach:
            return
        if self.convention == "exact":
            amount = structural(x.ones).sum()
        else:  # Eq. 7/8: each input element carries MACs / numel(input)
            macs = real_out[0].numel() * fan_in
            amount = x.ones.sum() * (macs / x.real[0].numel())
        self._arrive(x, name, amount)

    # -- functions and methods -------------------------------------------------------------------------------------
    def call_function(self, target, args, kwargs):
        vals = self._val_args(args) + self._val_args(kwargs)
        real_args, real_kwargs = self._split(args, kwargs)
        real = target(*real_args, **real_kwargs)
        if not vals:
            return self._wrap_const(real)
        reach = frozenset().union(*(v.reach for v in vals))
        if target in _RELU_FUNCTIONS:
            x = vals[0]
            self._arrive(x, self._node.name, x.ones.sum())
            return self._new_site(self._node.name, "relu()", x.real)
        if target in _ADD_FUNCTIONS:
            ones = sum((v.ones for v in vals[1:]), vals[0].ones)
            return _Val(real, ones.expand_as(real) if _is_tensor(real) else ones, reach)
        if target in _SCALE_FUNCTIONS:
            spiking = [v for v in vals if v.reach]
            if len(spiking) > 1:
                raise self._fail("product of two spiking tensors")
            src = spiking[0] if spiking else vals[0]
            return _Val(real, src.ones.expand_as(real), reach)
        if target in _PAD_FUNCTIONS:  # zero (or constant) padding carries no spikes
            pad = real_args[1] if len(real_args) > 1 else real_kwargs["pad"]
            return _Val(real, F.pad(vals[0].ones, pad), vals[0].reach)
        if target in _SHAPE_FUNCTIONS:
            ones_args = _map(lambda a: a.ones if isinstance(a, _Val) else a, args)
            ones_kwargs = _map(lambda a: a.ones if isinstance(a, _Val) else a, kwargs)
            return self._wrap(real, target(*ones_args, **ones_kwargs), reach)
        if target in (F.conv1d, F.conv2d, F.conv3d, F.linear):
            return self._functional_weight(target, args, kwargs, real)
        if target in (torch.matmul, operator.matmul):
            return self._matmul(args, real)
        if target in (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.max_pool1d, F.max_pool2d, F.max_pool3d):
            dims = int(target.__name__[-2])
            x = vals[0]
            p = _pool_args(real_args, real_kwargs)
            return _Val(real, self._pool(x.ones, p["kernel"], p["stride"], p["padding"], p["ceil"], dims), x.reach)
        if target in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d):
            dims = int(target.__name__[-2])
            return _Val(real, self._adaptive(vals[0].ones, real_args[1], dims), vals[0].reach)
        if target in (torch.mean, torch.sum):
            return self._reduce(target, vals[0], real_args, real_kwargs, real)
        if target is getattr:
            return real
        if not reach and _is_tensor(real):  # no spikes pass here
            return self._wrap_const(real)
        raise self._fail(f"function {getattr(target, '__name__', target)}")

    def call_method(self, target, args, kwargs):
        vals = self._val_args(args) + self._val_args(kwargs)
        real_args, real_kwargs = self._split(args, kwargs)
        self_obj, *rest = real_args
        real = getattr(self_obj, target)(*rest, **real_kwargs)
        if not vals:
            return self._wrap_const(real)
        if target in ("size", "dim", "numel"):
            return real
        reach = frozenset().union(*(v.reach for v in vals))
        if target in _SHAPE_METHODS:
            ones_args = _map(lambda a: a.ones if isinstance(a, _Val) else a, args)
            ones_kwargs = _map(lambda a: a.ones if isinstance(a, _Val) else a, kwargs)
            if target in ("float", "to", "type_as"):
                return _Val(real, ones_args[0], reach)
            obj, *orest = ones_args
            return self._wrap(real, getattr(obj, target)(*orest, **ones_kwargs), reach)
        if target in ("mean", "sum"):
            return self._reduce(target, vals[0], real_args, real_kwargs, real)
        if target == "relu":
            x = vals[0]
            self._arrive(x, self._node.name, x.ones.sum())
            return self._new_site(self._node.name, "relu()", x.real)
        if target in ("add", "add_", "sub"):
            ones = sum((v.ones for v in vals[1:]), vals[0].ones)
            return _Val(real, ones.expand_as(real), reach)
        if target in ("mul", "div", "mul_", "div_"):
            return _Val(real, vals[0].ones.expand_as(real), reach)
        if not reach and _is_tensor(real):
            return self._wrap_const(real)
        raise self._fail(f"method .{target}()")

    def _reduce(self, target, x: _Val, real_args, real_kwargs, real):
        """mean/sum over spatial dims (ReduceMean in ONNX = global average pooling)."""
        dims = real_kwargs.get("dim", real_args[1] if len(real_args) > 1 else None)
        keepdim = real_kwargs.get("keepdim", real_args[2] if len(real_args) > 2 else False)
        if dims is None or 0 in _tuple(dims, 1):
            raise self._fail("reduction over the batch axis")
        is_mean = getattr(target, "__name__", target) == "mean"
        if is_mean and self.convention == "eq7":
            ones = x.ones.mean(dim=dims, keepdim=keepdim)
        else:
            ones = x.ones.sum(dim=dims, keepdim=keepdim)
        return _Val(real, ones, x.reach)

    def _functional_weight(self, target, args, kwargs, real):
        real_args, real_kwargs = self._split(args, kwargs)
        x = args[0] if isinstance(args[0], _Val) else None
        weight = real_args[1] if len(real_args) > 1 else real_kwargs["weight"]
        if x is None:
            raise self._fail("weights computed from spikes")
        name = self._node.name
        if target is F.linear:
            fan_in = weight.shape[1]
            structural = lambda t: F.linear(t, torch.ones_like(weight, dtype=torch.float64))  # noqa: E731
        else:
            opts = {k: v for k, v in zip(("stride", "padding", "dilation", "groups"), real_args[3:])}
            opts.update({k: v for k, v in real_kwargs.items() if k in ("stride", "padding", "dilation", "groups")})
            fan_in = weight.shape[1] * math.prod(weight.shape[2:])
            structural = lambda t: target(t, torch.ones_like(weight, dtype=torch.float64), None, **opts)  # noqa: E731
        self._record_weight(name, target.__name__, x.real, real, fan_in, weight.numel())
        self._count_weight(name, x, structural, real, fan_in)
        return _Val(real, torch.zeros_like(real, dtype=torch.float64), frozenset())

    def _matmul(self, args, real):
        a, b = args
        if not isinstance(a, _Val) or not isinstance(b, _Val) or b.reach:
            raise self._fail("matmul other than activations @ constant weight")
        weight = b.real
        if weight.dim() != 2:
            raise self._fail("matmul with a non-matrix weight")
        name = self._node.name
        structural = lambda t: t @ torch.ones_like(weight, dtype=torch.float64)  # noqa: E731
        self._record_weight(name, "MatMul", a.real, real, weight.shape[0], weight.numel())
        self._count_weight(name, a, structural, real, weight.shape[0])
        return _Val(real, torch.zeros_like(real, dtype=torch.float64), frozenset())

    def _wrap(self, real, ones, reach):
        if isinstance(real, (tuple, list)):
            return type(real)(_Val(r, o, reach) for r, o in zip(real, ones))
        return _Val(real, ones, reach)

    @staticmethod
    def _wrap_const(real):
        if _is_tensor(real):
            return _Val(real, torch.zeros_like(real, dtype=torch.float64), frozenset())
        return real


@dataclass(frozen=True)
class _Val:
    real: torch.Tensor
    ones: torch.Tensor
    reach: frozenset

    def __getitem__(self, i):  # lets the interpreter index tuples of values uniformly
        return (self.real, self.ones)[i]


def _pool_dims(mod: nn.Module) -> int:
    name = type(mod).__name__
    return int(name[-2]) if name[-2].isdigit() else 2


def _pool_args(args, kwargs) -> dict:
    names = ("input", "kernel_size", "stride", "padding")
    bound = dict(zip(names, args))
    bound.update(kwargs)
    kernel = bound["kernel_size"]
    return {"kernel": kernel, "stride": bound.get("stride") or kernel, "padding": bound.get("padding", 0),
            "ceil": bool(bound.get("ceil_mode", False))}


# --------------------------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------------------------


def analyze(model: nn.Module, input_shape: Sequence[int], convention: str = "exact") -> NetworkAccount:
    """Trace ``model`` at one sample of ``input_shape`` (C, H, W without batch) and return its accounting.

    psi per neuron is exact for ``convention="exact"`` and the Eq. 7 (000_*) layer average for ``"eq7"``.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose one of {CONVENTIONS}")
    input_shape = tuple(int(s) for s in input_shape)
    if not input_shape or any(s <= 0 for s in input_shape):
        raise ValueError(f"input shape must be positive sizes without the batch axis, got {input_shape}")
    gm = model if isinstance(model, fx.GraphModule) and _all_sites_are_leaves(model) else _trace(model)
    param = next(model.parameters(), None)
    example = torch.zeros((1, *input_shape), dtype=param.dtype if param is not None else torch.float32)
    interp = _Account(gm, convention)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # psi is the gradient of the ones-space count, even inside no_grad callers
            interp.run(example)
    except AccountingError:
        raise
    except RuntimeError as exc:
        raise AccountingError(f"model does not run on input of shape {input_shape}: {exc}") from exc
    finally:
        model.train(was_training)
    names = list(interp.sites)
    leaves = [interp.sites[n][0] for n in names]
    if interp.count.requires_grad:
        with torch.enable_grad():
            grads = torch.autograd.grad(interp.count, leaves, allow_unused=True)
    else:
        grads = [None] * len(leaves)
    accounts = []
    for name, leaf, grad in zip(names, leaves, grads):
        psi = (grad if grad is not None else torch.zeros_like(leaf)).detach()[0]  # float64: exact integers
        _, kind, consumers = interp.sites[name]
        accounts.append(LayerAccount(name, kind, tuple(leaf.shape[1:]), psi, list(consumers)))
    input_layer = accounts[0] if accounts and accounts[0].name == "input" else LayerAccount(
        "input", "input", input_shape, torch.zeros(input_shape, dtype=torch.float64))
    layers = [a for a in accounts if a.name != "input"]
    if not layers:
        raise AccountingError(
            f"{type(model).__name__} has no activation sites (nn.ReLU, QReLU, spiking layers); nothing to count. "
            "Functional activations other than relu must be replaced by modules first."
        )
    return NetworkAccount(input_shape, convention, layers, interp.weights, input_layer)


def _all_sites_are_leaves(gm: fx.GraphModule) -> bool:
    return all(not list(m.children()) or is_activation_site(m) for _, m in gm.named_modules() if m is not gm
               and is_activation_site(m))


def _per_site(account: NetworkAccount, activity: dict[str, torch.Tensor]) -> Iterator[tuple[LayerAccount, torch.Tensor]]:
    for name, s in activity.items():
        layer = account.layer(name)
        if tuple(s.shape[-len(layer.shape):]) != layer.shape:
            raise ValueError(f"activity of {name!r} has shape {tuple(s.shape)}; expected (..., {layer.shape})")
        yield layer, s


def synops(account: NetworkAccount, activity: dict[str, torch.Tensor], n_samples: int = 1) -> torch.Tensor:
    """SynOps per sample: sum over sites of psi * s, divided by ``n_samples`` (differentiable in ``s``).

    ``activity`` maps site names to spike tensors with any leading batch/time axes (e.g. ``[B*T, C, H, W]``).
    Spike counts (multi-spike) are weighted by their value, as each spike triggers psi SynOps.
    """
    total = None
    for layer, s in _per_site(account, activity):
        psi = layer.psi_as(s).reshape(-1)
        term = s.reshape(-1, psi.numel()).sum(0) @ psi  # reduce the batch first: no [B, N] temporary
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return total / n_samples


def omega(account: NetworkAccount, activity: dict[str, torch.Tensor], kind: str = "syn", p: float = 1.0,
          n_samples: int = 1) -> torch.Tensor:
    """The penalties of 000_* per sample: Omega_syn (Eq. 14-15), Omega_total (Eq. 19), Omega_balance (Eq. 20).

    All are (1/p) * sum of weight * s^p, with weight psi_{l,i}, 1 and 1/d_l respectively. Autograd through ``s^p / p``
    gives the backward of Eq. 18. Sites missing from ``activity`` count as silent.
    """
    if kind not in ("syn", "total", "balance"):
        raise ValueError(f"unknown penalty {kind!r}; choose syn, total or balance")
    if p < 1:
        raise ValueError(f"p must be >= 1 (Definition 3.3 of 000_*), got {p}")
    total = None
    for layer, s in _per_site(account, activity):
        sp = s if p == 1 else s.pow(p)
        if kind == "syn":
            term = (sp * layer.psi_as(s)).sum()
        elif kind == "total":
            term = sp.sum()
        else:
            term = sp.sum() / layer.neurons
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return total / (p * n_samples)


def firing_rate(account: NetworkAccount, activity: dict[str, torch.Tensor], n_samples: int,
                timesteps: int = 1) -> dict[str, float]:
    """R(l) of Eq. 9 (000_*): mean spikes per neuron per sample per time step, for each site."""
    return {layer.name: float(s.detach().double().sum()) / (layer.neurons * n_samples * timesteps)
            for layer, s in _per_site(account, activity)}


class ActivityRecorder:
    """Forward hooks on the activation-site modules of ``model`` that keep their outputs (with autograd).

    >>> rec = ActivityRecorder(model, account)      # doctest: +SKIP
    >>> with rec: logits = model(x)                  # doctest: +SKIP
    >>> loss = ce + lam * rec.synops(n_samples=len(x))  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, account: NetworkAccount, detach: bool = False):
        self.model = model
        self.account = account
        self.detach = detach
        self.activity: dict[str, torch.Tensor] = {}
        self._handles: list = []
        modules = dict(model.named_modules())
        self._sites = []
        for layer in account.layers:
            if "@" in layer.name:
                raise AccountingError(
                    f"activation module {layer.name.split('@')[0]!r} is used at several call sites; give every call "
                    "site its own module (synopt's graph preparation does this)")
            if layer.name not in modules:
                raise AccountingError(
                    f"activation site {layer.name!r} is a function call, not a module; hooks cannot see it. "
                    "Run synopt's graph preparation (one activation module per call site) first.")
            self._sites.append((layer.name, modules[layer.name]))

    def __enter__(self) -> "ActivityRecorder":
        self.activity = {}
        for name, mod in self._sites:
            self._handles.append(mod.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, name: str):
        def hook(_mod, _inp, out):
            out = out.detach() if self.detach else out
            prev = self.activity.get(name)
            self.activity[name] = out if prev is None else prev + out
        return hook

    def synops(self, n_samples: int) -> torch.Tensor:
        return synops(self.account, self.activity, n_samples)

    def synops_per_layer(self, n_samples: int) -> dict[str, float]:
        return {name: float(synops(self.account, {name: s}, n_samples)) for name, s in self.activity.items()}

    def omega(self, kind: str = "syn", p: float = 1.0, n_samples: int = 1) -> torch.Tensor:
        return omega(self.account, self.activity, kind, p, n_samples)


def iter_sites(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    """Named activation-site modules of ``model`` in registration order."""
    return ((n, m) for n, m in model.named_modules() if is_activation_site(m))
