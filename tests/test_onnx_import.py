"""synopt.graph.import_onnx: torch exports of both exporters, hand-made graphs in other exporters' styles, bad input.

Every imported model is compared with onnxruntime (and with the torch model when there is one) and counted with
synopt.energy.analyze.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper

import onnx_models as om
from synopt import energy
from synopt.graph import ImportedModel, OnnxImportError, import_onnx

TOL = 1e-5


# --------------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------------


def ort_run(model, x_nchw: torch.Tensor, nhwc: bool = False, output: str | None = None) -> np.ndarray:
    """An independent onnxruntime reference (the importer's own check is not trusted by the tests)."""
    if isinstance(model, (str, Path)):
        model = onnx.load(str(model))
    m = copy.deepcopy(model)
    if output is not None and output not in [o.name for o in m.graph.output]:
        m.graph.output.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = x_nchw.permute(0, 2, 3, 1) if nhwc else x_nchw
    return sess.run([output] if output else None, {sess.get_inputs()[0].name: x.contiguous().numpy()})[0]


def check_imported(im: ImportedModel, tol: float = TOL) -> energy.NetworkAccount:
    """Accuracy vs onnxruntime, trainable stock weights, any batch, backward; countable by synopt.energy."""
    assert im.max_abs_diff is not None and im.max_abs_diff <= tol, im.max_abs_diff
    gm = im.module
    assert isinstance(gm, torch.fx.GraphModule)
    params = dict(gm.named_parameters())
    assert params and all(p.requires_grad for p in params.values())
    owners = {name.rsplit(".", 1)[0] for name in params}
    assert all(isinstance(gm.get_submodule(o), (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d))
               for o in owners)
    for name, buf in gm.named_buffers():  # BN statistics and normalisation constants only
        assert name.endswith(("running_mean", "running_var", "num_batches_tracked", "_const")), name
    for batch in (1, 7, 64):
        with torch.no_grad():
            y = gm(torch.randn(batch, *im.input_shape))
        assert y.shape[0] == batch and torch.isfinite(y).all()
    gm.zero_grad()
    gm(torch.randn(5, *im.input_shape)).square().sum().backward()
    weights = [m.weight for m in gm.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    assert weights and all(w.grad is not None and torch.isfinite(w.grad).all() for w in weights)
    gm.zero_grad()
    acc = energy.analyze(gm, im.input_shape)
    assert acc.layers and acc.macs > 0
    return acc


def op_types(path_or_model) -> set[str]:
    m = onnx.load(str(path_or_model)) if isinstance(path_or_model, (str, Path)) else path_or_model
    return {n.op_type for n in m.graph.node}


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


# --------------------------------------------------------------------------------------------------------------------
# torch exports: the dynamo exporter (opset 18+) and the legacy TorchScript exporter (opset 11..17)
# --------------------------------------------------------------------------------------------------------------------

# name: (model factory, exporter, opset, batch: "dynamic" | int, extra export kwargs, op that must be in the file)
EXPORTS = {
    "cnn_bn/dynamo/dynamic": (lambda: om.SmallCNN(bn=True), "dynamo", None, "dynamic", {}, None),
    "cnn_bn/dynamo-unoptimized/batch1": (lambda: om.SmallCNN(bn=True), "dynamo", None, 1, {"optimize": False},
                                         "BatchNormalization"),
    "cnn_bn/legacy11/dynamic": (lambda: om.SmallCNN(bn=True), "legacy", 11, "dynamic", {}, "Flatten"),
    "cnn_bn/legacy17-nofold/batch1": (lambda: om.SmallCNN(bn=True), "legacy", 17, 1,
                                      {"do_constant_folding": False}, "BatchNormalization"),
    "cnn/dynamo/batch1": (lambda: om.SmallCNN(bn=False), "dynamo", None, 1, {}, "Reshape"),
    "cnn/legacy13/batch1": (lambda: om.SmallCNN(bn=False), "legacy", 13, 1, {}, None),
    "cnn_maxpool/dynamo/dynamic": (lambda: om.SmallCNN(bn=True, pool="max"), "dynamo", None, "dynamic", {},
                                   "MaxPool"),
    "cnn_maxpool/legacy15/dynamic": (lambda: om.SmallCNN(bn=True, pool="max"), "legacy", 15, "dynamic", {},
                                     "MaxPool"),
    "residual/dynamo/dynamic": (om.ResidualNet, "dynamo", None, "dynamic", {}, "Add"),
    "residual/legacy11/dynamic": (om.ResidualNet, "legacy", 11, "dynamic", {}, "Shape"),
    "residual/legacy16/batch1": (om.ResidualNet, "legacy", 16, 1, {}, "Reshape"),
    "gap/dynamo23/dynamic": (om.GapNet, "dynamo", 23, "dynamic", {}, "ReduceMean"),
    "gap/legacy12/dynamic": (om.GapNet, "legacy", 12, "dynamic", {}, "GlobalAveragePool"),
}
INPUTS = {"cnn_bn": (1, 8, 8), "cnn": (1, 8, 8), "cnn_maxpool": (1, 8, 8), "residual": (3, 8, 8), "gap": (2, 6, 6),
          "resnet20": (3, 16, 16)}


@contextlib.contextmanager
def _quiet_export():
    """No warnings, and torch's structured trace log kept away from pytest's log capture (it costs seconds)."""
    trace = logging.getLogger("torch.__trace")
    propagate = trace.propagate
    trace.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        trace.propagate = propagate


def export(model: nn.Module, path: Path, exporter: str, opset, batch, input_shape, **kw) -> Path:
    x = torch.randn(2 if batch == "dynamic" else batch, *input_shape)
    with _quiet_export():
        if exporter == "dynamo":
            if batch == "dynamic":
                kw["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
            if opset is not None:
                kw["opset_version"] = opset
            torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False, **kw)
        else:
            if batch == "dynamic":
                kw.update(input_names=["x"], dynamic_axes={"x": {0: "batch"}})
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset, **kw)
    return path


class _Exports:
    """Exports each variant once per test module, on first use."""

    def __init__(self, root: Path):
        self.root = root
        self.cache: dict[str, tuple[nn.Module, Path]] = {}

    def get(self, name: str) -> tuple[nn.Module, Path]:
        if name not in self.cache:
            factory, exporter, opset, batch, kw, _ = EXPORTS[name]
            torch.manual_seed(len(name))
            model = om.randomize_bn(factory())
            path = self.root / (name.replace("/", "_") + ".onnx")
            self.cache[name] = (model, export(model, path, exporter, opset, batch, INPUTS[name.split("/")[0]],
                                              **dict(kw)))
        return self.cache[name]


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> _Exports:
    return _Exports(tmp_path_factory.mktemp("onnx_exports"))


@pytest.mark.parametrize("name", list(EXPORTS))
def test_torch_export(exports, name):
    model, path = exports.get(name)
    must_have = EXPORTS[name][5]
    if must_have:
        assert must_have in op_types(path), op_types(path)
    im = import_onnx(path)
    check_imported(im)
    kind = name.split("/")[0]
    assert im.layout == "NCHW" and im.input_shape == INPUTS[kind]
    assert im.opset == EXPORTS[name][2] if EXPORTS[name][2] else im.opset >= 18
    x = torch.randn(6, *im.input_shape)
    with torch.no_grad():
        assert torch.allclose(im.module(x), model(x), atol=TOL, rtol=0)
    if EXPORTS[name][3] == 1:
        assert any("fixed batch 1" in n for n in im.notes)
    # every ReLU call site has its own module; sites = ReLU modules
    relus = [m for m in im.module.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == len({id(m) for m in relus}) == len(energy.analyze(im.module, im.input_shape).layers)


def test_old_opset_is_upgraded(tmp_path):
    model = om.randomize_bn(om.ResidualNet())
    path = export(model, tmp_path / "res9.onnx", "legacy", 9, "dynamic", INPUTS["residual"])
    im = import_onnx(path)
    check_imported(im)
    assert im.opset == 11 and any("upgraded the model from opset 9" in n for n in im.notes)


def test_resnet20_dynamo(tmp_path):
    torch.manual_seed(0)
    model = om.randomize_bn(om.ResNet20())
    path = export(model, tmp_path / "resnet20.onnx", "dynamo", None, "dynamic", INPUTS["resnet20"])
    im = import_onnx(path)
    acc = check_imported(im)
    assert im.input_shape == (3, 16, 16)
    assert len(acc.layers) == 19  # stem + 9 blocks x 2 ReLUs, one module each
    convs = [m for m in im.module.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 21 and sum(m.kernel_size == (1, 1) and m.stride == (2, 2) for m in convs) == 2
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(im.module(x), model(x), atol=TOL, rtol=0)


# --------------------------------------------------------------------------------------------------------------------
# Hand-made graphs in other exporters' styles
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opset,head", [(11, "flatten"), (13, "flatten"), (23, "flatten"), (13, "gap"), (18, "gap")])
def test_keras_nhwc(opset, head):
    model = om.keras_nhwc(opset, head)
    im = import_onnx(model)
    check_imported(im)
    assert im.layout == "NHWC" and im.input_shape == (3, 8, 8) and im.output_name == "dense"
    assert any("Softmax" in n for n in im.notes)
    assert not [n for n in im.module.graph.nodes if n.op == "call_method" and n.target == "permute"
                and n.args[1:] == (0, 3, 1, 2)]  # the input transpose is gone
    x = torch.rand(5, 3, 8, 8)
    with torch.no_grad():
        y = im.module(x).numpy()
    assert np.abs(y - ort_run(model, x, nhwc=True, output="logits")).max() <= TOL


@pytest.mark.parametrize("batch", [1, 10])
def test_fixed_batch_reshape_and_outputs(batch):
    model = om.fixed_batch_head(batch=batch)
    with pytest.raises(OnnxImportError, match=r"2 outputs \['logits', 'probs'\]"):
        import_onnx(model)
    im = import_onnx(model, output="logits")
    check_imported(im)
    assert any(f"fixed batch {batch}" in n for n in im.notes)
    assert [n for n in im.module.graph.nodes if n.target == "flatten"]  # Reshape [batch, K] -> flatten(1)
    x = torch.randn(batch, 1, 8, 8)
    with torch.no_grad():
        assert np.abs(im.module(x).numpy() - ort_run(model, x, output="logits")).max() <= TOL
        y7 = im.module(torch.randn(7, 1, 8, 8))
    assert y7.shape == (7, 3)
    by_index = import_onnx(model, output=1)
    assert by_index.output_name == "probs" and any("dropped Softmax" in n for n in by_index.notes)
    check_imported(by_index)
    with pytest.raises(OnnxImportError, match=r"output 'nope' does not exist.*'logits', 'probs'"):
        import_onnx(model, output="nope")
    with pytest.raises(OnnxImportError, match="out of range"):
        import_onnx(model, output=5)
    cut = import_onnx(model, output="h")  # any intermediate value
    assert any("intermediate" in n for n in cut.notes) and cut.max_abs_diff <= TOL


def test_chainer_style_gemm_transb_bias_pad_folding():
    model = om.chainer_style()
    im = import_onnx(model)
    check_imported(im)
    mods = dict(im.module.named_modules())
    assert isinstance(mods["Convolution2DFunction_0"], nn.Conv2d) and mods["Convolution2DFunction_0"].bias is not None
    assert mods["Convolution2DFunction_1"].padding == (1, 1)  # the Pad node merged into the conv
    assert isinstance(mods["BatchNormalization_0"], nn.BatchNorm2d)
    assert not any(isinstance(m, (nn.ZeroPad2d, nn.Dropout)) for m in mods.values())
    fns = [n.target.__name__ for n in im.module.graph.nodes if n.op == "call_function"]
    assert sorted(fns) == ["sub", "truediv"]  # the input normalisation stays; the bias Add is folded
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert np.abs(im.module(x).numpy() - ort_run(model, x)).max() <= TOL


def test_mobilenet_style_clip_constant_identity():
    im = import_onnx(om.mobilenet_style())
    acc = check_imported(im)
    relu6 = [m for m in im.module.modules() if isinstance(m, nn.ReLU6)]
    assert len(relu6) == 2 and all(m.synopt_neuron for m in relu6)
    assert len(acc.layers) == 4  # 2 x ReLU6, Clip(0, inf) -> ReLU, Relu
    dw = [m for m in im.module.modules() if isinstance(m, nn.Conv2d) and m.groups == 6]
    assert len(dw) == 1


@pytest.mark.parametrize("opset", [11, 13, 17, 18, 23])
def test_opsets_reduce_mean_squeeze(opset):
    im = import_onnx(om.gap_head(opset))
    check_imported(im)
    assert im.opset == opset
    assert any(isinstance(m, nn.AdaptiveAvgPool2d) for m in im.module.modules())


def test_asymmetric_padding():
    im = import_onnx(om.tf_same_padding())
    check_imported(im)
    pads = [m for m in im.module.modules() if isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d))]
    assert len(pads) == 3
    assert any("SAME_UPPER" in n for n in im.notes)


def test_dynamic_spatial_dims_need_input_shape():
    model = om.dynamic_spatial()
    with pytest.raises(OnnxImportError, match="input_shape"):
        import_onnx(model)
    im = import_onnx(model, input_shape=(1, 9, 7))
    check_imported(im)
    assert im.input_shape == (1, 9, 7)
    with pytest.raises(OnnxImportError, match="contradicts"):
        import_onnx(model, input_shape=(2, 9, 7))


def test_sources_and_check_off(tmp_path):
    model = om.gap_head(13)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    for source in (model, model.SerializeToString(), str(path), path):
        assert import_onnx(source).max_abs_diff <= TOL
    assert import_onnx(path, check=False).max_abs_diff is None


def test_check_failure_names_the_node(monkeypatch):
    from synopt.graph import onnx_ops

    # a wrong translation of Relu: the check must catch it and name the first differing node
    monkeypatch.setitem(onnx_ops.OPS, "Relu", lambda b: [b.module(nn.LeakyReLU(0.5), b.val(0))])
    with pytest.raises(OnnxImportError, match=r"differs from onnxruntime.*node 'relu' \(Relu\)"):
        import_onnx(om.gap_head(13))


# --------------------------------------------------------------------------------------------------------------------
# Bad input: clear errors, nothing written
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def clean_dir(tmp_path, monkeypatch):
    """Runs the test in an empty working directory and checks nothing is written there."""
    monkeypatch.chdir(tmp_path)
    before = files_under(tmp_path)
    yield tmp_path
    assert files_under(tmp_path) == before


def test_not_onnx(clean_dir):
    junk = clean_dir / "junk.onnx"
    junk.write_bytes(b"\x00\xffthis is not an ONNX model\n" * 10)
    before = files_under(clean_dir)
    for source in (junk, b"hello world", junk.read_bytes()):
        with pytest.raises(OnnxImportError, match="not a valid ONNX model"):
            import_onnx(source)
    with pytest.raises(OnnxImportError, match="no such ONNX file"):
        import_onnx(clean_dir / "missing.onnx")
    (clean_dir / "empty.onnx").write_bytes(b"")
    with pytest.raises(OnnxImportError, match="empty"):
        import_onnx(clean_dir / "empty.onnx")
    (clean_dir / "empty.onnx").unlink()
    assert files_under(clean_dir) == before
    junk.unlink()


def test_truncated_file(clean_dir):
    data = om.mobilenet_style().SerializeToString()
    path = clean_dir / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxImportError, match="not a valid ONNX model"):
        import_onnx(path)
    path.unlink()


@pytest.mark.parametrize("op", ["Sigmoid", "LeakyRelu", "Tanh"])
def test_unsupported_op(clean_dir, op):
    with pytest.raises(OnnxImportError) as info:
        import_onnx(om.single_op(op, name="act_unsupported"))
    msg = str(info.value)
    assert "'act_unsupported'" in msg and f"({op})" in msg and "opset 13" in msg
    assert "Conv" in msg and "onnxsim" in msg


def test_unsupported_lstm(clean_dir):
    rng = np.random.default_rng(0)
    inits = {"W": rng.standard_normal((1, 8, 3)).astype(np.float32),
             "R": rng.standard_normal((1, 8, 2)).astype(np.float32)}
    node = helper.make_node("LSTM", ["x", "W", "R"], ["y"], name="rnn/lstm", hidden_size=2)
    model = om.make([node], [om._in("x", [5, "N", 3])], [om._in("y", [5, 1, "N", 2])], inits, 14)
    with pytest.raises(OnnxImportError, match=r"node 'rnn/lstm' \(LSTM\), opset 14.*not supported"):
        import_onnx(model)


def test_clip_not_relu_like():
    inits = {"W": np.ones((1, 1, 1, 1), np.float32), "lo": np.array(-1.0, np.float32),
             "hi": np.array(1.0, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
             helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="hardtanh")]
    model = om.make(nodes, [om._in("x", ["N", 1, 2, 2])], [om._in("y", ["N", 1, 2, 2])], inits, 13)
    with pytest.raises(OnnxImportError, match=r"'hardtanh' \(Clip\).*Clip\(-1, 1\)"):
        import_onnx(model)


def test_batch_mixing_reshape_refused():
    inits = {"W": np.ones((2, 1, 1, 1), np.float32), "shape": np.array([-1], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
             helper.make_node("Reshape", ["c", "shape"], ["y"], name="flatten_all")]
    model = om.make(nodes, [om._in("x", ["N", 1, 2, 2])], [om._in("y", [None])], inits, 13)
    with pytest.raises(OnnxImportError, match=r"'flatten_all' \(Reshape\).*batch"):
        import_onnx(model)


def test_external_data_outside_folder_refused(clean_dir):
    model = om.gap_head(13)
    t = next(t for t in model.graph.initializer if t.name == "W")
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="../outside.bin")
    sub = clean_dir / "model"
    sub.mkdir()
    path = sub / "m.onnx"
    path.write_bytes(model.SerializeToString())
    before = files_under(clean_dir)
    with pytest.raises(OnnxImportError, match="outside the model's folder"):
        import_onnx(path)
    with pytest.raises(OnnxImportError, match="external data"):
        import_onnx(model.SerializeToString())
    assert files_under(clean_dir) == before
    path.unlink()
    sub.rmdir()


def test_two_inputs_refused():
    nodes = [helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    model = om.make(nodes, [om._in("a", ["N", 2]), om._in("b", ["N", 2])], [om._in("y", ["N", 2])], {}, 13)
    with pytest.raises(OnnxImportError, match="2 inputs"):
        import_onnx(model)
