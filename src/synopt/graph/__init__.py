"""Graph import and preparation: ONNX -> torch.fx (``onnx_import``) and graph passes."""

from synopt.graph.onnx_import import ImportedModel, OnnxImportError, import_onnx, load_onnx
from synopt.graph.passes import (BoundedReLUReplacedWarning, GraphPassError, InputConvention, MaxPoolReplacedWarning,
                                 bias_policy, fold_batchnorm, fold_input_normalization, notes_of,
                                 one_module_per_call_site, prepare, remove_softmax_head, replace_bounded_relu,
                                 replace_maxpool, to_graph)

__all__ = ["import_onnx", "load_onnx", "ImportedModel", "OnnxImportError", "GraphPassError", "InputConvention",
           "MaxPoolReplacedWarning", "BoundedReLUReplacedWarning", "replace_bounded_relu", "bias_policy", "fold_batchnorm", "fold_input_normalization", "notes_of",
           "one_module_per_call_site", "prepare", "remove_softmax_head", "replace_maxpool", "to_graph"]
