"""Import trained ANNs from ONNX into ``torch.fx.GraphModule``s of stock, trainable torch modules.

Only the op subset that ANN->SNN conversion needs is supported (conv/linear layers, batch norm, ReLU-like
activations, pooling, residual additions, concatenation, flatten/reshape, input normalisation; see
``docs/onnx.md``).  Every weight becomes an ``nn.Parameter`` of an ``nn.Conv*d`` / ``nn.Linear`` /
``nn.BatchNorm*d``; every Relu node gets its own ``nn.ReLU``; the module takes NCHW input of any batch size and is
countable by :func:`synopt.energy.analyze`.  Each import is checked against onnxruntime on random input.

ONNX files are treated as untrusted data: parse errors, checker failures and external-data paths that leave the
model's folder are refused with :class:`OnnxImportError`; nothing is executed and nothing is written to disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch
import torch.fx as fx
from onnx import helper, numpy_helper

from .onnx_builder import (EXAMPLE_BATCH, FOLDABLE, OnnxImportError, Val, _Builder, attrs, constant_value, is_const,
                           is_sym, node_label, sanitize)
from .onnx_ops import OPS, _advice, symbolic

__all__ = ["import_onnx", "ImportedModel", "OnnxImportError", "MIN_OPSET", "MAX_TESTED_OPSET"]

MIN_OPSET = 11
MAX_TESTED_OPSET = 23


@dataclass
class ImportedModel:
    """The result of :func:`import_onnx`."""

    module: fx.GraphModule
    input_name: str
    input_shape: tuple[int, ...]  # per-sample C, H, W of the module's (NCHW) input
    layout: str  # 'NCHW' | 'NHWC': the ONNX file's input layout
    output_name: str
    opset: int
    notes: list[str] = field(default_factory=list)
    max_abs_diff: float | None = None


def load_onnx(source: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """Parse an ONNX model safely, with its external data (only from next to the file), and run the checker."""
    model, base = _load(source)
    _load_external_data(model, base)
    _run_checker(model)
    return model


def import_onnx(source: str | os.PathLike | bytes | onnx.ModelProto, *, output: str | int | None = None,
                check: bool = True, tol: float = 1e-4, check_batch: int = 3,
                input_shape: Sequence[int] | None = None) -> ImportedModel:
    """Import an ONNX model (path, bytes or ``onnx.ModelProto``) into a ``torch.fx.GraphModule``.

    * ``output``: which graph output the module returns (name or index); needed when the graph has several. Any
      other value name of the graph is accepted too (the module then ends there).
    * ``check``: run onnxruntime and the module on the same random input (batch ``check_batch``, or the file's fixed
      batch) and fail if the max abs difference exceeds ``tol`` (times the output's magnitude when it is above 1).
    * ``input_shape``: the per-sample input shape (C, H, W) of the module; required when the file leaves non-batch
      input dimensions dynamic.

    The returned module is in eval mode (batch norm uses the file's running statistics), takes NCHW input (an NHWC
    file's input transpose is removed: ``layout == 'NHWC'``) and runs on any batch size.
    """
    model = load_onnx(source)
    notes: list[str] = []
    model, opset = _opset(model, notes)
    graph = model.graph
    target = _select_output(graph, output, notes)
    producers = {o: n for n in graph.node for o in n.output if o}
    softmax = producers.get(target)
    build_target = target
    if softmax is not None and softmax.op_type in ("Softmax", "LogSoftmax") and softmax.input:
        build_target = softmax.input[0]
        named = repr(softmax.name) if softmax.name else "(unnamed)"
        notes.append(f"dropped {softmax.op_type} {named} at output {target!r}: the module returns the logits "
                     f"{build_target!r}")
    cone = _cone(graph, producers, build_target)
    _prescan(cone, opset)
    initializers = {t.name: t for t in graph.initializer}
    input_name, info = _graph_input(graph, cone, initializers, build_target)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in cone:
        for i in n.input:
            if i:
                consumers.setdefault(i, []).append(n)
    nhwc = _detect_nhwc(input_name, info, cone, consumers, initializers)
    module_shape, fixed_batch = _input_shape(input_name, info, nhwc, input_shape, notes)

    b = _Builder(opset, fixed_batch, notes)
    b.consumers = consumers
    b.keep = {build_target}
    gm = _build(b, cone, initializers, input_name, module_shape, nhwc, build_target)
    result = ImportedModel(gm, input_name, module_shape, "NHWC" if nhwc else "NCHW", target, opset, notes)
    if check:
        batch = fixed_batch if fixed_batch is not None else int(check_batch)
        result.max_abs_diff = _check(model, gm, b, input_name, build_target, nhwc, module_shape, batch, tol)
    return result


# --------------------------------------------------------------------------------------------------------------------
# Loading untrusted files
# --------------------------------------------------------------------------------------------------------------------


def _load(source) -> tuple[onnx.ModelProto, Path | None]:
    base = None
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        return model, None
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise OnnxImportError(f"no such ONNX file: {str(path)!r}")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise OnnxImportError(f"cannot read {str(path)!r}: {exc}") from None
        base = path.resolve().parent
    else:
        raise OnnxImportError(f"expected a path, bytes or onnx.ModelProto, got {type(source).__name__}")
    if not data:
        raise OnnxImportError("not a valid ONNX model: the file is empty")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise OnnxImportError(f"not a valid ONNX model: {type(exc).__name__}: {exc}") from None
    return model, base


def _all_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for n in graph.node:
        for a in n.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from _all_tensors(a.g)
            for g in a.graphs:
                yield from _all_tensors(g)


def _load_external_data(model: onnx.ModelProto, base: Path | None) -> None:
    external = [t for t in _all_tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]
    if not external:
        return
    if base is None:
        raise OnnxImportError(f"the model keeps tensor {external[0].name!r} in an external data file; pass the path "
                              "of the .onnx file (external data is only read next to it)")
    for t in external:
        location = {e.key: e.value for e in t.external_data}.get("location", "")
        target = (base / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(base):
            raise OnnxImportError(f"tensor {t.name!r} refers to external data {location!r} outside the model's folder "
                                  f"{str(base)!r}; refusing to read it")
        if not target.is_file():
            raise OnnxImportError(f"tensor {t.name!r}: external data file {location!r} is missing next to the model")
    try:
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, str(base))
    except Exception as exc:  # noqa: BLE001
        raise OnnxImportError(f"cannot load the model's external data: {type(exc).__name__}: {exc}") from None


def _run_checker(model: onnx.ModelProto) -> None:
    if not model.HasField("graph") or not model.opset_import:
        raise OnnxImportError("not a valid ONNX model: no graph or no opset (is this an ONNX file?)")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001
        msg = str(exc).strip().splitlines()
        raise OnnxImportError(f"not a valid ONNX model (onnx.checker): {msg[0] if msg else type(exc).__name__}") \
            from None


def _opset(model: onnx.ModelProto, notes: list[str]) -> tuple[onnx.ModelProto, int]:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise OnnxImportError("the model imports no standard ONNX opset (only custom domains); re-export it")
    opset = int(versions[0])
    if opset < MIN_OPSET:
        try:
            from onnx import version_converter

            model = version_converter.convert_version(model, MIN_OPSET)
        except Exception as exc:  # noqa: BLE001
            raise OnnxImportError(f"opset {opset} is older than the supported {MIN_OPSET}-{MAX_TESTED_OPSET} and "
                                  f"could not be upgraded ({type(exc).__name__}: {exc}); re-export with opset >= "
                                  f"{MIN_OPSET}") from None
        notes.append(f"upgraded the model from opset {opset} to {MIN_OPSET} with onnx.version_converter")
        opset = MIN_OPSET
    elif opset > MAX_TESTED_OPSET:
        notes.append(f"opset {opset} is newer than the tested {MIN_OPSET}-{MAX_TESTED_OPSET}")
    return model, opset


# --------------------------------------------------------------------------------------------------------------------
# Graph analysis: output, cone, input, layout and shape
# --------------------------------------------------------------------------------------------------------------------


def _select_output(graph: onnx.GraphProto, output, notes: list[str]) -> str:
    outs = [o.name for o in graph.output]
    if output is None:
        if len(outs) == 1:
            return outs[0]
        raise OnnxImportError(f"the model has {len(outs)} outputs {outs}; choose one with output=NAME or INDEX (--onnx-output on the command line)")
    if isinstance(output, (int, np.integer)) and not isinstance(output, bool):
        if not -len(outs) <= int(output) < len(outs):
            raise OnnxImportError(f"output index {output} is out of range; the model's outputs are {outs}")
        return outs[int(output)]
    if isinstance(output, str):
        if output in outs:
            return output
        if output.lstrip("-").isdigit():  # an index given as text (the command line)
            return _select_output(graph, int(output), notes)
        produced = {o for n in graph.node for o in n.output}
        if output in produced:
            notes.append(f"the module ends at the intermediate value {output!r} (not a graph output)")
            return output
        raise OnnxImportError(f"output {output!r} does not exist; the model's outputs are {outs}")
    raise OnnxImportError(f"output must be a name or an index, got {type(output).__name__}")


def _cone(graph: onnx.GraphProto, producers: dict, target: str) -> list[onnx.NodeProto]:
    """The nodes the target value depends on, in the file's (topological) order."""
    needed: set[int] = set()
    stack = [target]
    seen: set[str] = set()
    index = {id(n): i for i, n in enumerate(graph.node)}
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        n = producers.get(v)
        if n is None:
            continue
        needed.add(index[id(n)])
        stack.extend(i for i in n.input if i)
    return [graph.node[i] for i in sorted(needed)]


def _prescan(cone: list[onnx.NodeProto], opset: int) -> None:
    """Name the first op the importer cannot handle before anything else (the most useful error)."""
    b = _Builder(opset, None, [])
    for n in cone:
        b.cur = n
        if n.domain not in ("", "ai.onnx"):
            raise b.fail(f"ops of the custom domain {n.domain!r} are not supported", _advice())
        if n.op_type not in OPS and n.op_type not in FOLDABLE and n.op_type != "Constant":
            raise b.fail("this op is not supported by synopt's ONNX importer", _advice())


def _graph_input(graph, cone, initializers, target) -> tuple[str, onnx.ValueInfoProto]:
    used = {i for n in cone for i in n.input} | {target}
    inputs = [i for i in graph.input if i.name not in initializers and i.name in used]
    if not inputs:
        raise OnnxImportError(f"the selected output {target!r} does not depend on any graph input")
    if len(inputs) > 1:
        raise OnnxImportError(f"the selected output depends on {len(inputs)} inputs {[i.name for i in inputs]}; "
                              "synopt imports single-input networks")
    info = inputs[0]
    tt = info.type.tensor_type if info.type.HasField("tensor_type") else None
    if tt is None:
        raise OnnxImportError(f"input {info.name!r} is not a tensor")
    if tt.elem_type != onnx.TensorProto.FLOAT:
        raise OnnxImportError(f"input {info.name!r} has element type "
                              f"{onnx.TensorProto.DataType.Name(tt.elem_type)}; synopt imports float32 models")
    return info.name, info


def _dims(info: onnx.ValueInfoProto) -> list[int | str | None] | None:
    tt = info.type.tensor_type
    if not tt.HasField("shape"):
        return None
    out: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or None)
    return out


def _detect_nhwc(input_name, info, cone, consumers, initializers) -> bool:
    """True when the input reaches a Transpose perm [0, 3, 1, 2] through elementwise ops with constants only."""
    dims = _dims(info)
    if dims is not None and len(dims) != 4:
        return False
    static = set(initializers)
    for n in cone:
        if n.op_type == "Constant" or (n.input and all(not i or i in static for i in n.input)):
            static.update(o for o in n.output if o)
    v = input_name
    for _ in range(64):
        users = consumers.get(v, [])
        if len(users) != 1:
            return False
        n = users[0]
        if n.op_type == "Transpose":
            return [int(p) for p in attrs(n).get("perm", [])] == [0, 3, 1, 2]
        if n.op_type in ("Sub", "Div", "Mul", "Add") and len(n.input) == 2:
            other = n.input[1] if n.input[0] == v else n.input[0]
            if other not in static or (n.op_type == "Div" and n.input[0] != v):
                return False
        elif n.op_type not in ("Identity",):
            return False
        v = n.output[0]
    return False


MAX_INPUT_ELEMENTS = 50_000_000  # per sample; the importer evaluates the graph on an example batch


def _input_shape(name, info, nhwc, given, notes) -> tuple[tuple[int, ...], int | None]:
    shape, fixed = _input_shape_unchecked(name, info, nhwc, given, notes)
    if int(np.prod(shape, dtype=np.float64)) > MAX_INPUT_ELEMENTS:
        raise OnnxImportError(f"input {name!r} of per-sample shape {shape} is too large to import "
                              f"(more than {MAX_INPUT_ELEMENTS:,} elements)")
    return shape, fixed


def _input_shape_unchecked(name, info, nhwc, given, notes) -> tuple[tuple[int, ...], int | None]:
    dims = _dims(info)
    if dims is not None and len(dims) < 2:
        raise OnnxImportError(f"input {name!r} has rank {len(dims)}; expected a batch axis and at least one more")
    fixed = None
    if dims is not None:
        if isinstance(dims[0], int):
            fixed = dims[0]
            notes.append(f"fixed batch {fixed} in the file; the module accepts any batch")
        elif dims[0] is None:
            notes.append("the file's input has no batch size; the module accepts any batch")
        per_file = dims[1:]
        per = [per_file[2], per_file[0], per_file[1]] if nhwc else list(per_file)
    else:
        per = None
    if given is not None:
        shape = tuple(int(s) for s in given)
        if per is not None and len(shape) == len(per) + 1:
            shape = shape[1:]
        if per is not None and len(shape) != len(per):
            raise OnnxImportError(f"input_shape {tuple(given)} does not match input {name!r} of rank {len(per) + 1}; "
                                  f"give the per-sample shape ({'C, H, W' if len(per) == 3 else 'without batch'})")
        if any(s <= 0 for s in shape):
            raise OnnxImportError(f"input_shape {tuple(given)} must be positive sizes")
        if per is not None:
            for want, have in zip(per, shape):
                if isinstance(want, int) and want != have:
                    raise OnnxImportError(f"input_shape {shape} contradicts the file's input {name!r} "
                                          f"(per-sample {tuple(per)}{', NCHW order' if nhwc else ''})")
        return shape, fixed
    if per is None or not all(isinstance(s, int) for s in per):
        shown = "unknown" if per is None else tuple(s if isinstance(s, int) else (s or "?") for s in per)
        raise OnnxImportError(f"input {name!r} has dynamic dimensions other than the batch (per-sample {shown}); "
                              "pass input_shape=(C, H, W) to fix them (--input CxHxW on the command line)")
    return tuple(per), fixed


# --------------------------------------------------------------------------------------------------------------------
# Building the fx graph
# --------------------------------------------------------------------------------------------------------------------


def _build(b: _Builder, cone, initializers, input_name, module_shape, nhwc, target) -> fx.GraphModule:
    placeholder = b.graph.placeholder(sanitize(input_name, "x"))
    gen = torch.Generator().manual_seed(0)
    b.ex[placeholder] = torch.randn((EXAMPLE_BATCH, *module_shape), generator=gen)
    b.env[input_name] = Val(placeholder, nhwc=nhwc)
    used = {i for n in cone for i in n.input}
    for name in used & set(initializers):
        b.env[name] = numpy_helper.to_array(initializers[name])
    for n in cone:
        b.cur = n
        if n.domain not in ("", "ai.onnx"):
            raise b.fail(f"ops of the custom domain {n.domain!r} are not supported", _advice())
        for i in n.input:
            if i and i in b.env and b.env[i] is None and i not in b.folded_pads:
                raise b.fail(f"uses {i!r}, an output that synopt does not support (a MaxPool index, dropout mask, "
                             "...)", _advice())
        ins = [b.env.get(i) if i else None for i in n.input]
        present = [v for v in ins if v is not None]
        if n.op_type == "Constant":
            outs = [constant_value(b, n)]
        elif present and all(is_const(v) for v in present) and n.op_type in FOLDABLE:
            outs = b.fold(n, ins)
        elif any(is_sym(v) for v in present) and not any(isinstance(v, Val) for v in present):
            outs = symbolic(b)
        elif n.op_type in OPS:
            outs = OPS[n.op_type](b)
        else:
            raise b.fail("this op is not supported by synopt's ONNX importer", _advice())
        for name, v in zip(n.output, outs):
            if name:
                b.env[name] = v
                if isinstance(v, Val) and not v.nhwc:
                    b.traced.append((name, v.node, n))
    b.cur = None
    result = b.env.get(target)
    if not isinstance(result, Val):
        raise OnnxImportError(f"the selected output {target!r} is a constant, not computed from the input")
    if result.nhwc:
        raise OnnxImportError(f"the selected output {target!r} is still NHWC (before the input transpose)")
    b.graph.output(result.node)
    gm = fx.GraphModule(b.root, b.graph, class_name="ImportedOnnx")
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm.eval()


# --------------------------------------------------------------------------------------------------------------------
# Checking against onnxruntime
# --------------------------------------------------------------------------------------------------------------------


def _ort_run(model: onnx.ModelProto, input_name: str, feed: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name: o for o in m.graph.output}
    infos = [existing[o] if o in existing else helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None)
             for o in outputs]
    del m.graph.output[:]
    m.graph.output.extend(infos)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return sess.run(outputs, {input_name: feed})
    except Exception as exc:  # noqa: BLE001
        raise OnnxImportError(f"onnxruntime cannot run the model for the check ({type(exc).__name__}: "
                              f"{str(exc).strip()[:500]}); pass check=False to import without checking") from None


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(d.max()) if d.size else 0.0


def _check(model, gm, b: _Builder, input_name, target, nhwc, module_shape, batch, tol) -> float:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((batch, *module_shape), generator=gen)
    feed = (x.permute(0, 2, 3, 1) if nhwc else x).contiguous().numpy()
    ref = _ort_run(model, input_name, feed, [target])[0]
    with torch.no_grad():
        y = gm(x).numpy()
    diff = _max_diff(y, ref)
    scale = max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
    if not diff <= tol * scale:
        raise _diagnose(model, gm, b, input_name, target, x, feed, diff, tol, scale, y.shape, ref.shape)
    # the module must not depend on the batch: one sample alone gives the same result
    x2 = x[:1] if batch > 1 else torch.cat([x, -x])
    with torch.no_grad():
        y2 = gm(x2).numpy()[:1]
    if not _max_diff(y2, y[:1]) <= tol * scale:
        raise OnnxImportError(f"the imported module's output for one sample depends on the rest of the batch "
                              f"(difference {_max_diff(y2, y[:1]):.3g}); this is a bug in synopt's importer, please "
                              "report it with the model")
    return diff


def _diagnose(model, gm, b, input_name, target, x, feed, diff, tol, scale, shape, ref_shape) -> OnnxImportError:
    last: dict[fx.Node, tuple[str, onnx.NodeProto]] = {}
    for value, node, onnx_node in b.traced:
        last[node] = (value, onnx_node)  # the last ONNX value a node stands for (after folded bias adds)
    values = [(v, node, on) for node, (v, on) in last.items() if node.graph is gm.graph]
    head = (f"the imported module differs from onnxruntime at output {target!r}: max abs diff {diff:.3g} > "
            f"tolerance {tol:g}" + (f" x {scale:.3g}" if scale > 1 else "")
            + (f" (shapes {shape} vs {ref_shape})" if shape != ref_shape else ""))
    try:
        refs = _ort_run(model, input_name, feed, [v for v, _, _ in values])
        env: dict[fx.Node, torch.Tensor] = {}

        class _Keep(fx.Interpreter):
            def run_node(self, n):
                out = super().run_node(n)
                env[n] = out
                return out

        with torch.no_grad():
            _Keep(gm).run(x)
        first, worst = None, None
        for (v, node, on), r in zip(values, refs):
            if node not in env:
                continue
            d = _max_diff(env[node].numpy(), r)
            s = max(1.0, float(np.abs(r).max()) if r.size else 1.0)
            if not d <= tol * s and first is None:
                first = (v, on, d)
            if worst is None or not d <= worst[2]:
                worst = (v, on, d)
        detail = ""
        if first is not None:
            detail = f"; the first differing value is {first[0]!r} of {node_label(first[1])} (diff {first[2]:.3g})"
        if worst is not None and worst is not first:
            detail += f"; the largest difference is at {worst[0]!r} of {node_label(worst[1])} (diff {worst[2]:.3g})"
    except Exception as exc:  # noqa: BLE001 - diagnostics must not hide the real error
        detail = f" (per-node comparison unavailable: {type(exc).__name__})"
    return OnnxImportError(head + detail + ". This is a bug or an unsupported variant of that op in synopt's "
                           "importer; please report it with the model (check=False imports it anyway)")
