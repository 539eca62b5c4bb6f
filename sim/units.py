"""The simulatable units: what to build for a configuration and which testbench checks it."""

from dataclasses import dataclass

from . import verilator

__all__ = ["UNITS", "simulate"]


@dataclass(frozen=True)
class Unit:
    """A hardware unit with its cocotb testbench module."""
    name: str
    test_module: str
    description: str

    def component(self, config, **overrides):
        if self.name == "array":
            from hw.array import SystolicArray
            return SystolicArray(config, **overrides)
        if self.name == "pim":
            from hw.pim import PimBankGroup
            return PimBankGroup(config, **overrides)
        if self.name == "top":
            from hw.device import Device
            return Device(config, **overrides)
        raise AssertionError(self.name)


UNITS = {unit.name: unit for unit in [
    Unit("array", "sim.array_tb", "systolic tensor unit (GEMM tiles)"),
    Unit("pim", "sim.pim_tb", "processing-in-memory bank group (GEMV)"),
    Unit("top", "sim.device_tb", "the whole device through its command stream"),
]}


def simulate(unit_name, config, *, seed=0, tiles=8, waves=False, progress=None, pe=None,
             extra_params=None):
    """Build (or reuse) ``unit_name`` for ``config`` and run its testbench.

    ``pe`` replaces the configured PE class (to try a new PE, or to prove the tests catch a
    broken one). Returns a :class:`sim.verilator.SimResult`.
    """
    unit = UNITS[unit_name]
    overrides = {"pe": pe} if pe else {}
    sim_build = verilator.build(unit.component(config, **overrides), unit=unit.name,
                                waves=waves, metadata={"config": config.to_dict()},
                                progress=progress)
    run_params = {"config": config.to_dict(), "seed": seed, "tiles": tiles,
                  **(extra_params or {})}
    if progress:
        progress(f"simulating {unit.name} (seed {seed}) ...")
    return verilator.run(sim_build, test_module=unit.test_module,
                         name=f"seed{seed}-tiles{tiles}", params=run_params)
