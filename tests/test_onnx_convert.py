"""ONNX graphs in the styles of other exporters convert end to end on digits, and the imported ANN's accuracy equals
onnxruntime's on the same test set (an independent reference for import + preparation + input-convention folding)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import onnx_models as om
from synopt import data
from synopt.convert.pipeline import ConvertConfig, run_conversion
from synopt.convert.source import ModelSource
from synopt.simulate.reload import simulate_run


def _resnet20(path):
    from test_onnx_import import export

    torch.manual_seed(0)
    model = om.randomize_bn(om.ResNet20(classes=10)).eval()
    return export(model, path, "legacy", 17, "dynamic", (3, 8, 8))


STYLES = {  # name: (builder, NHWC input, channels, output name)
    "keras_nhwc_transpose_softmax": (lambda p: onnx.save(om.keras_nhwc(13, classes=10), p), True, 3, None),
    "fixed_batch1_matmul_add_two_outputs": (lambda p: onnx.save(om.fixed_batch_head(12, batch=1, classes=10), p),
                                            False, 1, "logits"),
    "chainer_sub_div_pad_bn": (lambda p: onnx.save(om.chainer_style(11, classes=10), p), False, 3, None),
    "torch_legacy_resnet20": (_resnet20, False, 3, None),
}


def _onnxruntime_accuracy(path, test, nhwc: bool, channels: int, output: str | None) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    xs = torch.stack([test[i][0] for i in range(len(test))]).numpy()
    ys = np.array([test[i][1] for i in range(len(test))])
    xs = np.repeat(xs, channels, axis=1) if channels == 3 else xs
    xs = xs.transpose(0, 2, 3, 1) if nhwc else xs
    names = [o.name for o in sess.get_outputs()]
    idx = names.index(output) if output else 0
    step = fixed or len(xs)
    logits = np.concatenate([sess.run(None, {inp.name: xs[i:i + step].astype(np.float32)})[idx]
                             for i in range(0, len(xs), step)])
    return float((logits.argmax(1) == ys).mean())


@pytest.mark.parametrize("style", sorted(STYLES))
def test_hand_made_onnx_styles_convert(style, tmp_path):
    build, nhwc, channels, output = STYLES[style]
    path = tmp_path / f"{style}.onnx"
    build(path)
    out = tmp_path / "run"
    cfg = ConvertConfig(source=ModelSource("onnx", onnx=str(path), onnx_output=output), dataset="digits",
                        out=str(out), method="rho", rho=4.0, timesteps=8, eval_samples=60, progress=False,
                        input_convention={"grayscale_to_rgb": True} if channels == 3 else None)
    m = run_conversion(cfg)
    reference = _onnxruntime_accuracy(path, data.load("digits").test, nhwc, channels, output)
    assert m["ann_accuracy"] == pytest.approx(reference, abs=1e-9), "imported ANN disagrees with onnxruntime"
    point = m["points"][0]
    assert point["sim_synops"] > 0 and len(point["accuracy_per_step"]) == 8
    # the run folder is self-contained: the SNN reloads (from the ONNX copy in the run) and measures the same
    again = simulate_run(out / "snn", timesteps=8, samples=60, progress=False)
    assert again.accuracy == point["sim_accuracy"] and again.synops == pytest.approx(point["sim_synops"], rel=1e-9)
    spec = json.loads((out / "snn" / "spec.json").read_text())
    assert spec["source"]["kind"] == "onnx" and (out / "source").is_dir()
