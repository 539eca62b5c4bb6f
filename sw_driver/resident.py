"""Resident mode on the host: loading a model into the device's resident units, and the
integer decoder a loaded image stands for.

:func:`load_model` writes every BitLinear's trits into the banks where ``hw.placement`` puts
them (WRITE_WEIGHTS, as offload mode does) and every other tensor the resident core reads with
LOAD_TENSOR (``hw.resident_core.ResidentCore.image``). :func:`image_decoder` goes the other way,
from what a device holds (its tensors' items and its banks' trits) to
``golden.integer.IntegerModel``: the behavioural device generates with it, so it answers
GENERATE from what was loaded, as the RTL does.
"""

import dataclasses

import numpy as np
from amaranth.lib import data

from golden import integer_formats
from golden.bitlinear import bitlinear_int
from golden.fixedpoint import Dyadic, build_tables
from golden.integer import (GAIN_BITS, WEIGHT_FRACTION_BITS, IntegerModel, IntegerWeights,
                            LinearScale, NormGain, SoftmaxScale)
from golden.model import ModelConfig, norm_sizes
from hw.commands import TENSOR_PORTS, Tensor
from hw.resident_core import LINEARS, NORMS, layout_core
from hw.words import unpack_ints

from .mapper import write_matrix

__all__ = ["model_config", "load_model", "image_decoder"]


def model_config(config):
    """golden's ``ModelConfig`` of the resident units' shape (``rope_theta`` and ``eps`` enter
    only through the loaded steps and constants)."""
    return ModelConfig(**dataclasses.asdict(config.resident))


def load_model(accelerator, weights, prepared):
    """Load a model into ``accelerator``'s resident units: the trits of ``weights``
    (``golden.ModelWeights``) into the banks, ``prepared`` (its ``IntegerWeights``) into the
    resident memories."""
    core = layout_core(accelerator.config)
    for name, placement in core.placements.items():
        write_matrix(accelerator, placement, weights.linears[name].trits)
    image = core.image(prepared)
    for tensor, port in TENSOR_PORTS.items():
        accelerator.load_tensor(tensor, image[port])


def _dyadic(fields):
    return Dyadic(np.int64(fields.mantissa), np.int64(fields.exponent))


def image_decoder(config, tensors, bank_trits):
    """The integer decoder of a device's image: ``tensors`` ``{Tensor: [item, ...]}`` as
    loaded, ``bank_trits`` the banks' trits ``(banks, depth, lanes)``."""
    cfg = model_config(config)
    core = layout_core(config)
    lanes, head_lanes, banks = config.pim.lanes, core.head_lanes, config.pim.banks
    records = [data.Const(core.constants_layout, bits) for bits in tensors[Tensor.CONSTANTS]]
    layers, model = [r.layer for r in records[:-1]], records[-1].model
    gain_words = np.array(tensors[Tensor.GAINS], dtype=object)
    norms = {}
    for name, size in norm_sizes(cfg).items():
        if name == "norm":
            fields = model.norm
        else:
            layer, part = name.split(".", 2)[1:]
            fields = layers[int(layer)].norms[NORMS.index(part)]
        words = gain_words[core.bases[name]:core.bases[name] + -(-size // lanes)]
        gain = unpack_ints(words, GAIN_BITS, lanes).reshape(-1)[:size]
        norms[name] = NormGain(gain, int(fields.fraction), _dyadic(fields.eps_k))
    # The decoder reads the fractions of v (attention's output exponent) and of gate and up
    # (only as 2 gate's + up's): the records carry exactly that much.
    linears = {}
    for i, layer in enumerate(layers):
        fractions = {"self_attn.v_proj": -int(layer.o_exponent) - WEIGHT_FRACTION_BITS,
                     "mlp.up_proj": -int(layer.down_offset)}
        for j, name in enumerate(LINEARS):
            linears[f"layers.{i}.{name}"] = LinearScale(_dyadic(layer.linears[j]),
                                                        fractions.get(name, 0))
    residual_fraction = -int(model.residual_exponent)
    embedding = unpack_ints(np.array(tensors[Tensor.EMBEDDING], dtype=object), 8, head_lanes)
    prepared = IntegerWeights(
        formats=integer_formats(cfg), tables=build_tables(),
        embedding=embedding.reshape(cfg.vocab, cfg.hidden),
        row_scales=np.array(tensors[Tensor.ROW_SCALES], np.int64),
        row_scale_fraction=int(model.embed_shift) + residual_fraction,
        residual_fraction=residual_fraction, norms=norms, linears=linears,
        softmax=tuple(SoftmaxScale(int(layer.softmax.gap_limit), int(layer.softmax.gap_shift),
                                   _dyadic(layer.softmax.scale)) for layer in layers),
        rope_steps=np.array(tensors[Tensor.ROPE_STEPS], np.int64),
        head_scale=_dyadic(model.head))
    trits = {}
    for name, placement in core.placements.items():
        span = bank_trits[:, placement.base:placement.base + placement.words]
        rows = span.reshape(banks, placement.rows, -1).transpose(1, 0, 2).reshape(
            placement.rows * banks, -1)
        trits[name] = rows[:placement.n, :placement.k]
    return IntegerModel.from_prepared(cfg, prepared,
                                      lambda name, x_q: bitlinear_int(x_q, trits[name]))
