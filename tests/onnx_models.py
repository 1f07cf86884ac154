"""Builders of test ONNX models: tiny torch networks to export, and hand-made graphs in other exporters' styles.

The hand-made graphs imitate what tf2onnx (Keras), Chainer/CNTK, MobileNet-style exporters and fixed-batch exports
emit, built with ``onnx.helper``; each builder returns a checked ``onnx.ModelProto``.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

# --------------------------------------------------------------------------------------------------------------------
# torch networks (exported by the tests with both torch exporters)
# --------------------------------------------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    """conv-BN-relu-pool-conv-BN-relu-flatten-linear (BN and max pooling optional)."""

    def __init__(self, bn: bool = True, pool: str = "avg"):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4) if bn else nn.Identity()
        self.pool = nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(6) if bn else nn.Identity()
        self.fc = nn.Linear(6 * 2 * 2, 5)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


class ResidualNet(nn.Module):
    """A stem and one basic block with an identity shortcut; the head uses view(x.size(0), -1)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(y)) + x)
        x = self.pool(x)
        return self.fc(x.view(x.size(0), -1))


class GapNet(nn.Module):
    """Global average pooling head (AdaptiveAvgPool2d(1) and mean over H, W)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, groups=2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.conv2(x))
        z = self.gap(y).flatten(1) + x.mean((2, 3))
        return self.fc(z)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:  # 1x1 stride-2 projection
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20: 3 stages of 3 basic blocks (16, 32, 64 channels), projection shortcuts."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, c = [], 16
        for i, width in enumerate((16, 32, 64)):
            for j in range(3):
                blocks.append(BasicBlock(c, width, 2 if i > 0 and j == 0 else 1))
                c = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.blocks(torch.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so that BN mistakes show in the comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


# --------------------------------------------------------------------------------------------------------------------
# Hand-made graphs
# --------------------------------------------------------------------------------------------------------------------

_RNG = np.random.default_rng(0)


def _seed(seed: int = 0) -> None:
    """Each builder starts from its own seed: the weights do not depend on which tests ran before."""
    global _RNG
    _RNG = np.random.default_rng(seed)


def _w(*shape: int, scale: float = 0.3) -> np.ndarray:
    return (_RNG.standard_normal(shape) * scale).astype(np.float32)


def make(nodes, inputs, outputs, inits: dict[str, np.ndarray], opset: int, name: str = "g") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs,
                              initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="synopt-tests")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(model)
    return model


def _in(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _axes_input(opset: int, since: int, name: str, axes, inits: dict) -> tuple[list[str], dict]:
    """Axes as an input (opset >= since) or as an attribute."""
    if opset >= since:
        inits[name] = np.array(axes, dtype=np.int64)
        return [name], {}
    return [], {"axes": list(axes)}


def keras_nhwc(opset: int = 13, head: str = "flatten", classes: int = 5) -> onnx.ModelProto:
    """tf2onnx style: NHWC input, Rescaling (Mul) and per-channel Sub, Transpose to NCHW, convs, NCHW->NHWC
    Transpose before the Flatten (Reshape [-1, K]) or GlobalAveragePooling2D (ReduceMean over axes 1, 2 of the
    NHWC tensor), MatMul + Add head, Softmax output."""
    _seed()
    features = 4 * 4 * 6 if head == "flatten" else 6
    inits = {
        "scale": np.array(1 / 255, dtype=np.float32), "mean": np.array([0.4, 0.5, 0.6], np.float32),
        "W1": _w(4, 3, 3, 3), "B1": _w(4), "W2": _w(6, 4, 3, 3), "B2": _w(6),
        "flat_shape": np.array([-1, 4 * 4 * 6], np.int64), "Wd": _w(features, classes, scale=0.1),
        "Bd": _w(classes),
    }
    if head == "flatten":
        head_nodes = [helper.make_node("Reshape", ["nhwc", "flat_shape"], ["flat"], name="model/flatten/Reshape")]
    else:
        rm_in, rm_attr = _axes_input(opset, 18, "rm_axes", [1, 2], inits)
        head_nodes = [helper.make_node("ReduceMean", ["nhwc", *rm_in], ["flat"], keepdims=0,
                                       name="model/global_average_pooling2d/Mean", **rm_attr)]
    nodes = [
        helper.make_node("Mul", ["input_1", "scale"], ["rescaled"], name="model/rescaling/mul"),
        helper.make_node("Sub", ["rescaled", "mean"], ["centered"], name="model/normalization/sub"),
        helper.make_node("Transpose", ["centered"], ["nchw"], name="model/conv2d/Conv2D__6", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "W1", "B1"], ["c1"], name="model/conv2d/Conv2D", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="model/conv2d/Relu"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="model/max_pooling2d/MaxPool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Conv", ["p1", "W2", "B2"], ["c2"], name="model/conv2d_1/Conv2D", kernel_shape=[3, 3],
                         auto_pad="SAME_UPPER"),
        helper.make_node("Relu", ["c2"], ["r2"], name="model/conv2d_1/Relu"),
        helper.make_node("Transpose", ["r2"], ["nhwc"], name="model/conv2d_1/Relu__20", perm=[0, 2, 3, 1]),
        *head_nodes,
        helper.make_node("MatMul", ["flat", "Wd"], ["mm"], name="model/dense/MatMul"),
        helper.make_node("Add", ["mm", "Bd"], ["logits"], name="model/dense/BiasAdd"),
        helper.make_node("Softmax", ["logits"], ["dense"], name="model/dense/Softmax", axis=-1),
    ]
    return make(nodes, [_in("input_1", ["unk__12", 8, 8, 3])], [_in("dense", ["unk__13", classes])], inits, opset,
                "keras")


def fixed_batch_head(opset: int = 12, batch: int = 1, classes: int = 3) -> onnx.ModelProto:
    """Fixed batch (1 or 10), Reshape to the constant [batch, K], MatMul + Add head, two outputs (logits and Softmax
    probs)."""
    _seed()
    inits = {"W": _w(4, 1, 3, 3), "B": _w(4), "shape": np.array([batch, 4 * 4 * 4], np.int64),
             "Wm": _w(64, 8, scale=0.2), "Bm": _w(8), "Wg": _w(classes, 8), "Bg": _w(classes)}
    nodes = [
        helper.make_node("Conv", ["image", "W", "B"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu0"),
        helper.make_node("AveragePool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p", "shape"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "Wm"], ["mm"], name="fc1_matmul"),
        helper.make_node("Add", ["mm", "Bm"], ["h"], name="fc1_add"),
        helper.make_node("Relu", ["h"], ["hr"], name="relu1"),
        helper.make_node("Gemm", ["hr", "Wg", "Bg"], ["logits"], name="fc2", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    return make(nodes, [_in("image", [batch, 1, 8, 8])], [_in("logits", [batch, classes]), _in("probs", [batch, classes])],
                inits, opset, "fixed")


def chainer_style(opset: int = 11, classes: int = 3) -> onnx.ModelProto:
    """Chainer/CNTK style: Sub/Div input normalisation, Conv without bias + Add bias, BatchNormalization, Pad before
    a VALID conv, AveragePool with pads (count_include_pad=0), Flatten, Gemm transB=1 with alpha/beta, Dropout."""
    _seed()
    inits = {
        "mean": np.array([0.5, 0.4, 0.3], np.float32).reshape(1, 3, 1, 1),
        "std": np.array([0.2, 0.25, 0.3], np.float32).reshape(1, 3, 1, 1),
        "W1": _w(4, 3, 3, 3), "b1": _w(1, 4, 1, 1), "scale": _w(4) + 1, "shift": _w(4),
        "rmean": _w(4, scale=0.1), "rvar": np.abs(_w(4)) + 0.5,
        "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
        "W2": _w(6, 4, 3, 3), "B2": _w(6), "Wf": _w(7, 6 * 4 * 4, scale=0.1), "Bf": _w(7), "Wo": _w(7, classes),
        "Bo": _w(classes),
    }
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["xs"], name="Sub_0"),
        helper.make_node("Div", ["xs", "std"], ["xn"], name="Div_0"),
        helper.make_node("Conv", ["xn", "W1"], ["c1"], name="Convolution2DFunction_0",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c1", "b1"], ["c1b"], name="Convolution2DFunction_0_bias"),
        helper.make_node("BatchNormalization", ["c1b", "scale", "shift", "rmean", "rvar"], ["bn"],
                         name="BatchNormalization_0", epsilon=2e-5),
        helper.make_node("Relu", ["bn"], ["r1"], name="ReLU_0"),
        helper.make_node("Pad", ["r1", "pads"], ["padded"], name="Pad_0", mode="constant"),
        helper.make_node("Conv", ["padded", "W2", "B2"], ["c2"], name="Convolution2DFunction_1", kernel_shape=[3, 3],
                         strides=[2, 2], auto_pad="VALID"),
        helper.make_node("Relu", ["c2"], ["r2"], name="ReLU_1"),
        helper.make_node("AveragePool", ["r2"], ["p"], name="AveragePooling2D_0", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], count_include_pad=0),
        helper.make_node("Flatten", ["p"], ["flat"], name="Reshape_0", axis=1),
        helper.make_node("Gemm", ["flat", "Wf", "Bf"], ["fc"], name="LinearFunction_0", transB=1, alpha=0.5,
                         beta=2.0),
        helper.make_node("Dropout", ["fc"], ["drop"], name="Dropout_0"),
        helper.make_node("Relu", ["drop"], ["r3"], name="ReLU_2"),
        helper.make_node("Gemm", ["r3", "Wo", "Bo"], ["out"], name="LinearFunction_1"),
    ]
    return make(nodes, [_in("x", ["N", 3, 8, 8])], [_in("out", ["N", classes])], inits, opset, "chainer")


def mobilenet_style(opset: int = 11) -> onnx.ModelProto:
    """Clip as ReLU6 (min/max as Constant inputs), Constant weights, Identity nodes, depthwise conv, Clip(0, inf),
    channel Concat, MaxPool, GlobalAveragePool, Flatten, Gemm."""
    _seed()
    def const(name, value):
        return helper.make_node("Constant", [], [name], name=f"const_{name}",
                                value=numpy_helper.from_array(np.asarray(value), name))

    nodes = [
        const("W1", _w(6, 3, 3, 3)), const("B1", _w(6)),
        const("zero", np.array(0.0, np.float32)), const("six", np.array(6.0, np.float32)),
        helper.make_node("Identity", ["W1"], ["W1i"], name="weight_identity"),
        helper.make_node("Conv", ["x", "W1i", "B1"], ["c1"], name="features.0.conv", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Clip", ["c1", "zero", "six"], ["a1"], name="features.0.relu6"),
        helper.make_node("Conv", ["a1", "Wdw", "Bdw"], ["dw"], name="features.1.dw", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], group=6),
        helper.make_node("Identity", ["dw"], ["dwi"], name="activation_identity"),
        helper.make_node("Clip", ["dwi", "zero", "six"], ["a2"], name="features.1.relu6"),
        helper.make_node("Conv", ["a2", "Wpw", "Bpw"], ["pw"], name="features.1.pw", kernel_shape=[1, 1]),
        helper.make_node("Clip", ["pw", "zero"], ["a3"], name="features.1.relu"),
        helper.make_node("Conv", ["a1", "Wb", "Bb"], ["br"], name="branch.conv", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["br"], ["a4"], name="branch.relu"),
        helper.make_node("Concat", ["a3", "a4"], ["cat"], name="concat", axis=1),
        helper.make_node("MaxPool", ["cat"], ["mp"], name="maxpool", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["mp"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "Wfc", "Bfc"], ["logits"], name="classifier", transB=1),
    ]
    inits = {"Wdw": _w(6, 1, 3, 3), "Bdw": _w(6), "Wpw": _w(8, 6, 1, 1), "Bpw": _w(8), "Wb": _w(4, 6, 1, 1),
             "Bb": _w(4), "Wfc": _w(5, 12), "Bfc": _w(5)}
    return make(nodes, [_in("x", ["batch", 3, 10, 10])], [_in("logits", ["batch", 5])], inits, opset, "mobilenet")


def gap_head(opset: int) -> onnx.ModelProto:
    """Conv-BN-Relu, ReduceMean over H, W (axes attribute before opset 18, input from 18), Squeeze/Unsqueeze with
    axes attributes or inputs (opset 13), Flatten, Gemm; valid for opsets 11..23."""
    _seed()
    inits = {"W": _w(5, 2, 3, 3), "B": _w(5), "s": _w(5) + 1, "t": _w(5), "m": _w(5, scale=0.1),
             "v": np.abs(_w(5)) + 0.5, "Wg": _w(5, 4), "Bg": _w(4)}
    rm_in, rm_attr = _axes_input(opset, 18, "rm_axes", [2, 3], inits)
    sq_in, sq_attr = _axes_input(opset, 13, "sq_axes", [2, 3], inits)
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "t", "m", "v"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("ReduceMean", ["r", *rm_in], ["gap"], name="reduce_mean", keepdims=1, **rm_attr),
        helper.make_node("Squeeze", ["gap", *sq_in], ["sq"], name="squeeze", **sq_attr),
        helper.make_node("Unsqueeze", ["sq", *sq_in], ["unsq"], name="unsqueeze", **sq_attr),
        helper.make_node("Flatten", ["unsq"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "Wg", "Bg"], ["y"], name="gemm"),
    ]
    return make(nodes, [_in("x", ["N", 2, 6, 6])], [_in("y", ["N", 4])], inits, opset, f"gap{opset}")


def tf_same_padding(opset: int = 13) -> onnx.ModelProto:
    """Asymmetric padding: Conv SAME_UPPER with stride 2 on an even size, AveragePool with asymmetric pads
    (count_include_pad=1), Pad before a MaxPool."""
    _seed()
    inits = {"W": _w(4, 2, 3, 3), "B": _w(4), "pads": np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64),
             "Wg": _w(3, 4 * 2 * 2), "Bg": _w(3)}
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv_same", kernel_shape=[3, 3], strides=[2, 2],
                         auto_pad="SAME_UPPER"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("AveragePool", ["r"], ["p"], name="avgpool", kernel_shape=[2, 2], strides=[1, 1],
                         pads=[0, 0, 1, 1], count_include_pad=1),
        helper.make_node("Pad", ["p", "pads"], ["pp"], name="pad"),
        helper.make_node("MaxPool", ["pp"], ["mp"], name="maxpool", kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Flatten", ["mp"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "Wg", "Bg"], ["y"], name="fc", transB=1),
    ]
    return make(nodes, [_in("x", ["N", 2, 8, 8])], [_in("y", ["N", 3])], inits, opset, "same")


def single_op(op_type: str, opset: int = 13, name: str = "the_node", **kw) -> onnx.ModelProto:
    """Conv -> <op_type> -> Flatten: for unsupported-op errors."""
    _seed()
    inits = {"W": _w(2, 1, 3, 3), "B": _w(2)}
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", kernel_shape=[3, 3]),
             helper.make_node(op_type, ["c"], ["a"], name=name, **kw),
             helper.make_node("Flatten", ["a"], ["y"], name="flatten")]
    return make(nodes, [_in("x", ["N", 1, 5, 5])], [_in("y", ["N", 18])], inits, opset, "single")


def dynamic_spatial(opset: int = 13) -> onnx.ModelProto:
    """Input with dynamic H and W (needs input_shape)."""
    _seed()
    inits = {"W": _w(2, 1, 3, 3), "B": _w(2)}
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["y"], name="flatten")]
    return make(nodes, [_in("x", ["N", 1, "H", "W"])], [_in("y", ["N", 2])], inits, opset, "dyn_hw")
