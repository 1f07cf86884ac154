"""Where a model comes from: a zoo name (+ checkpoint), an ONNX file, or an nn.Module from Python."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn

from synopt import zoo
from synopt.runs import load_checkpoint


@dataclass
class ModelSource:
    """A recipe that rebuilds the same float network: recorded in run folders so `synopt simulate` can reload it."""

    kind: str  # 'zoo' | 'torchvision' | 'onnx'
    name: str | None = None  # zoo or torchvision name
    checkpoint: str | None = None
    onnx: str | None = None  # path of the ONNX file (a copy inside the run folder)
    onnx_output: str | int | None = None
    overrides: dict = field(default_factory=dict)  # zoo: in_channels, input_size, num_classes; torchvision:
    #                                                 num_classes, input_shape; onnx: input_shape

    def to_dict(self) -> dict:
        return {k: v for k, v in vars(self).items()}


def load_model(source: ModelSource) -> tuple[nn.Module, tuple[int, ...], list[str]]:
    """The float model, its per-sample input shape and notes (e.g. what the importer dropped)."""
    if source.kind == "zoo":
        spec = zoo.get_spec(source.name)
        model = zoo.build(source.name, **source.overrides)
        shape = (source.overrides.get("in_channels", spec.in_channels),
                 *source.overrides.get("input_size", spec.input_size))
        notes = []
        if source.checkpoint:
            state = load_checkpoint(source.checkpoint)["state_dict"]
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                raise ValueError(f"checkpoint {source.checkpoint} does not fit zoo model {source.name!r}: "
                                 f"{str(exc).splitlines()[0]}") from exc
        else:
            notes.append(f"no checkpoint given: {source.name} starts from random weights")
        return model, tuple(shape), notes
    if source.kind == "torchvision":
        import torchvision

        if source.name not in torchvision.models.list_models():
            raise ValueError(f"unknown torchvision model {source.name!r}; see torchvision.models.list_models()")
        kwargs = {"weights": None}
        if "num_classes" in source.overrides:
            kwargs["num_classes"] = source.overrides["num_classes"]
        model = torchvision.models.get_model(source.name, **kwargs)
        if not source.checkpoint:
            raise ValueError("a torchvision model needs --checkpoint with its trained state_dict (nothing is "
                             "downloaded)")
        try:
            model.load_state_dict(load_checkpoint(source.checkpoint)["state_dict"])
        except RuntimeError as exc:
            sizes = "; ".join(line.strip() for line in str(exc).splitlines()[1:3] if line.strip())
            hint = " (a different number of classes? give --num-classes)" if "fc" in str(exc) or "classifier" in \
                str(exc) else ""
            raise ValueError(f"checkpoint {source.checkpoint} does not fit torchvision {source.name!r}{hint}: "
                             f"{sizes or str(exc).splitlines()[0]}") from exc
        shape = tuple(source.overrides.get("input_shape", (3, 224, 224)))
        return model, shape, [f"torchvision {source.name}; input {shape}"]
    if source.kind == "onnx":
        from synopt.graph import import_onnx

        imported = import_onnx(source.onnx, output=source.onnx_output,
                               input_shape=source.overrides.get("input_shape"))
        notes = list(imported.notes)
        if imported.max_abs_diff is not None:
            notes.append(f"import checked against onnxruntime: max abs difference {imported.max_abs_diff:.2e}")
        return imported.module, tuple(imported.input_shape), notes
    raise ValueError(f"unknown model source kind {source.kind!r}")


def keep_copy(source: ModelSource, folder: Path) -> ModelSource:
    """Copy the files a source needs into a run folder, so the run stays re-runnable if the originals move."""
    folder.mkdir(parents=True, exist_ok=True)
    out = ModelSource(**source.to_dict())
    if source.onnx:
        dst = folder / "model.onnx"
        if Path(source.onnx).resolve() != dst.resolve():
            import onnx

            from synopt.graph import load_onnx

            onnx.save(load_onnx(source.onnx), str(dst))  # self-contained: external data inlined
        out.onnx = str(dst)
    if source.checkpoint:
        dst = folder / "ann.pt"
        if Path(source.checkpoint).resolve() != dst.resolve():
            shutil.copyfile(source.checkpoint, dst)
        out.checkpoint = str(dst)
    return out
