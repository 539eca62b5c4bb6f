"""Bittern's golden model: BitNet b1.58 in NumPy, the single source of numeric truth."""

from golden.bitlinear import (
    bitlinear, bitlinear_int, quantize_activations, quantize_weights, rescale,
)
from golden.integer import IntegerLogits, IntegerModel, IntegerWeights, integer_formats
from golden.model import (
    BITNET_B158_2B4T, CoreCall, Model, ModelConfig, ModelWeights, RecordingCore, TernaryWeight,
    WeightsCore, input_groups, linear_shapes, norm_sizes, random_float_tensors,
)

__all__ = [
    "bitlinear", "bitlinear_int", "quantize_activations", "quantize_weights", "rescale",
    "BITNET_B158_2B4T", "CoreCall", "Model", "ModelConfig", "ModelWeights", "RecordingCore",
    "TernaryWeight", "WeightsCore", "input_groups", "linear_shapes", "norm_sizes",
    "random_float_tensors",
    "IntegerLogits", "IntegerModel", "IntegerWeights", "integer_formats",
]
