"""The simulatable units: what to build for a configuration and which testbench checks it."""

import importlib
from dataclasses import dataclass, field

from sw_driver import flow

__all__ = ["UNITS", "simulate"]


@dataclass(frozen=True)
class Unit:
    """A hardware unit: its component (``"module:Class"``), its cocotb testbench module, and
    constructor options beside the config (a resident unit's model shape). A ``resident``
    unit is built for ``config.resident``: a run of every unit leaves it out without one."""
    name: str
    component_path: str
    test_module: str
    description: str
    options: dict = field(default_factory=dict)
    resident: bool = False

    def component(self, config, **overrides):
        """The unit built for ``config``; ``overrides`` go to its constructor (``pe=``...)."""
        module, _, name = self.component_path.partition(":")
        return getattr(importlib.import_module(module), name)(config,
                                                               **{**self.options, **overrides})

    def test_names(self):
        """The names of the testbench's cocotb tests, found as cocotb's regression finds them
        (without building anything): what :func:`simulate`'s ``testcase`` may name."""
        from cocotb.regression import Test, TestGenerator

        module = importlib.import_module(self.test_module)
        return [name for name, value in vars(module).items()
                if isinstance(value, (Test, TestGenerator))]


UNITS = {unit.name: unit for unit in [
    Unit("array", "hw.array:SystolicArray", "sim.array_tb", "systolic tensor unit (GEMM tiles)"),
    Unit("pim", "hw.pim:PimBankGroup", "sim.pim_tb", "processing-in-memory bank group (GEMV)"),
    Unit("scalar", "sim.units:scalar_unit", "sim.scalar_tb",
         "dyadic scalar unit of the resident decoder (factors, rsqrt, reciprocal)",
         options={"value_bits": 48}),
    Unit("epilogue", "hw.epilogue:Epilogue", "sim.epilogue_tb",
         "BitLinear epilogue of the resident decoder (rescale, residual add)"),
    Unit("norm", "hw.norm:NormQuantizer", "sim.norm_tb",
         "RMSNorm and int8 quantisation of the resident decoder (the shipped model's width)",
         options={"size": 128, "lanes": 8}),
    Unit("ffn", "hw.ffn:FfnInner", "sim.ffn_tb",
         "FFN inner product relu(gate)**2 x up of the resident decoder (the shipped model's "
         "width, the BitLinear block's 4 lanes)", options={"ffn": 384, "lanes": 4}),
    Unit("norm-stage", "hw.norm_stage:NormStage", "sim.norm_stage_tb",
         "norm stage of the resident decoder: RMSNorm, x_q, rho and the BitLinears' factors "
         "(the shipped model's shape, 8 lanes)",
         options={"hidden": 128, "ffn": 384, "layers": 2, "lanes": 8}),
    Unit("head", "hw.head:LmHead", "sim.head_tb",
         "LM head and greedy choice of the resident decoder (the shipped model's shape)",
         options={"hidden": 128, "vocab": 256}),
    Unit("rope", "hw.rope:Rope", "sim.rope_tb",
         "RoPE of the resident decoder (factors, rotation; the shipped model's shape, two "
         "pairs a beat)", options={"head_dim": 32, "max_seq": 256, "lanes": 2}),
    Unit("attention", "hw.attention:Attention", "sim.attention_tb",
         "attention with the KV cache of the resident decoder (the shipped model's shape, both "
         "query heads of a KV head a pass)",
         options={"heads": 4, "kv_heads": 2, "head_dim": 32, "max_seq": 256, "layers": 2,
                  "heads_per_pass": 2}),
    Unit("linear-stage", "sim.linear_stage_tb:LinearStageTop", "sim.linear_stage_tb",
         "linear stage of the resident decoder (GEMV on the bank group, rescale, residual)",
         options={"out_bits": 16, "lanes": 4}),
    Unit("bitlinear-block", "sim.bitlinear_block_tb:BitLinearBlockTop", "sim.bitlinear_block_tb",
         "a norm and the BitLinears that read it on the bank group, the resident decoder's layer "
         "program step (a small model: K not a multiple of the banks' lanes)",
         options={"hidden": 18, "ffn": 90, "layers": 1, "out_bits": 32, "lanes": 4}),
    Unit("resident-core", "sim.resident_core_tb:ResidentCoreTop", "sim.resident_core_tb",
         "the resident decoder's core: a random model of the preset's resident shape through "
         "every stage, prefill and greedy decode", resident=True),
    Unit("top", "hw.device:Device", "sim.device_tb",
         "the whole device through its command stream"),
]}


def scalar_unit(config, *, value_bits):
    """:class:`hw.dyadic.ScalarUnit`, which has no device parameters (``config`` only names
    the build)."""
    from hw.dyadic import ScalarUnit

    return ScalarUnit(value_bits=value_bits)


def simulate(unit_name, config, *, seed=0, tiles=8, waves=False, progress=None, pe=None,
             options=None, extra_params=None, x_seed=None, testcase=None):
    """Build (or reuse) ``unit_name`` for ``config`` and run its testbench.

    ``pe`` replaces the configured PE class (to try a new PE, or to prove the tests catch a
    broken one); ``options`` go to the unit's constructor (``out_bits=`` of the epilogue).
    ``x_seed`` runs an X build (:func:`sw_driver.flow.verilator_build`'s ``x_random``) with
    that seed; ``testcase`` names the one test to run (default: all). Returns a
    :class:`sw_driver.flow.SimResult`.
    """
    unit = UNITS[unit_name]
    overrides = {**(options or {}), **({"pe": pe} if pe else {})}
    x_random = x_seed is not None
    sim_build = flow.verilator_build(unit.component(config, **overrides), unit=unit.name,
                                     waves=waves, x_random=x_random,
                                     metadata={"config": config.to_dict()}, progress=progress)
    run_params = {"config": config.to_dict(), "seed": seed, "tiles": tiles,
                  "options": {**unit.options, **(options or {})},
                  "pe_module": pe.__module__ if pe else None, **(extra_params or {})}
    if progress:
        progress(f"simulating {unit.name} (seed {seed}"
                 + (f", x-seed {x_seed}" if x_random else "") + ") ...")
    return flow.verilator_run(sim_build, test_module=unit.test_module,
                              name=f"seed{seed}-tiles{tiles}", params=run_params,
                              testcase=testcase, x_seed=x_seed)
