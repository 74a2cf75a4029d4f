"""qatfhe: FHE-friendly neural networks in C.

Quantization-aware training with Brevitas semantics, pruning, compilation to exact
integer circuits and accumulator bit-width analysis, over NumPy arrays."""
from . import datasets, nn, optim, prune
from .compile import BitWidthError, QuantizedModule, compile_model, compile_qat_model
from .io import load
from .onnx_export import export_onnx
from .torch_interop import convert, from_torch, to_torch
from .train import DivergenceError

__version__ = "0.1.0"
__all__ = ["nn", "optim", "prune", "datasets", "load", "compile_model", "compile_qat_model",
           "QuantizedModule", "BitWidthError", "from_torch", "convert", "to_torch", "export_onnx",
           "DivergenceError", "__version__"]
