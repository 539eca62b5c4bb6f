"""Shared cocotb testbench pieces: parameters, reports, clock/reset and stream models.

A stream is driven and sampled in the ReadOnly phase before each rising edge, so a transfer is
recorded exactly when ``valid & ready`` hold at the edge, whatever the simulator's event order.
"""

import importlib
import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge
from cocotb.utils import get_sim_time

__all__ = ["params", "write_report", "payload_layout", "TB", "StreamSource", "StreamSink"]

CLOCK_NS = 10


def params():
    """Testbench parameters passed by :func:`sw_driver.flow.verilator_run` (``BITTERN_PARAMS``).

    ``pe_module``, if given, is imported first: the module that defines (and registers) the PE
    kind the design was built with, so that the configuration may name it."""
    values = json.loads(os.environ.get("BITTERN_PARAMS", "{}"))
    if values.get("pe_module"):
        importlib.import_module(values["pe_module"])
    return values


def write_report(report):
    """Hand measurements back to the process that ran the simulation."""
    path = os.environ.get("BITTERN_REPORT")
    if path:
        with open(path, "w") as file:
            json.dump(report, file)


def payload_layout(component, port):
    """The payload layout of ``component``'s stream ``port``: testbenches pack a payload with
    ``layout.const(values).as_bits()`` and read one with ``layout.from_bits(word)``."""
    return component.signature.members[port].signature.members["payload"].shape


class StreamSource:
    """Drives ``<prefix>__valid/payload`` beats; idles before a beat with probability ``pause``.

    A beat refused for ``patience`` cycles in a row fails the test: a hung device ends the run
    with a message instead of stalling it.
    """

    def __init__(self, dut, prefix, *, rng, pause=0.0, patience=50_000):
        self._prefix, self._patience = prefix, patience
        self._clk = dut.clk
        self._valid = getattr(dut, f"{prefix}__valid")
        self._ready = getattr(dut, f"{prefix}__ready")
        self._payload = getattr(dut, f"{prefix}__payload")
        self._rng, self.pause = rng, pause
        self._valid.value = 0
        self.accepted_cycles = []

    async def send(self, payloads, cycle):
        """Send every payload in order; ``cycle()`` gives the current cycle for the log."""
        for payload in payloads:
            while self.pause and self._rng.random() < self.pause:
                self._valid.value = 0
                await RisingEdge(self._clk)
            self._valid.value = 1
            self._payload.value = payload
            for refused in range(self._patience + 1):
                await ReadOnly()
                fired = bool(self._ready.value)
                if fired:
                    self.accepted_cycles.append(cycle())
                await RisingEdge(self._clk)
                if fired:
                    break
            assert fired, (f"{self._prefix} refused a beat for {refused} cycles at cycle "
                           f"{cycle()}: the device hangs")
        self._valid.value = 0


class StreamSink:
    """Accepts ``<prefix>__payload`` beats; refuses a cycle with probability ``backpressure``."""

    def __init__(self, dut, prefix, *, rng, backpressure=0.0):
        self._clk = dut.clk
        self._valid = getattr(dut, f"{prefix}__valid")
        self._ready = getattr(dut, f"{prefix}__ready")
        self._payload = getattr(dut, f"{prefix}__payload")
        self._rng, self.backpressure = rng, backpressure
        self._ready.value = 0
        self.beat_cycles = []

    async def receive(self, count, cycle, *, timeout):
        """Collect ``count`` payloads as ints; fail after ``timeout`` cycles without one."""
        beats, idle = [], 0
        while len(beats) < count:
            ready = not (self.backpressure and self._rng.random() < self.backpressure)
            self._ready.value = int(ready)
            await ReadOnly()
            if ready and self._valid.value:
                beats.append(int(self._payload.value))
                self.beat_cycles.append(cycle())
                idle = 0
            else:
                idle += 1
                assert idle < timeout, f"no result for {timeout} cycles ({len(beats)}/{count})"
            await RisingEdge(self._clk)
        self._ready.value = 0
        return beats


class TB:
    """Clock, reset and the cycle count of a DUT with ``clk`` and ``rst``."""

    def __init__(self, dut, *, seed):
        self.dut = dut
        self.rng = random.Random(seed)
        cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())

    @staticmethod
    def cycle():
        """Index of the clock period now running (the edge that ends it is number ``cycle()+1``)."""
        return int(get_sim_time(unit="ns")) // CLOCK_NS

    async def reset(self, cycles=3):
        self.dut.rst.value = 1
        for _ in range(cycles):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)
