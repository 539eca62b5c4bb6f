"""The device in a simulation harness, driven by a compiled loop: words in blocks, the clock in C.

:class:`SimHarness` wraps the device for Verilator; ``sim/harness.cpp`` is its host, built with
it into a shared library (:func:`build`); :class:`HarnessTransport` is the driver's transport to
that library, in the calling process. A transaction is one call: the C++ loop offers the
command words, one every cycle the device takes one, and collects every response word the
cycle it leaves the device, so the device sees a host that never pauses and never refuses a
word (the host the behavioural device's cycle counts assume), and Python runs once a
transaction, never once a cycle.

Why a compiled host rather than cocotb, measured on the ulx3s-85f device on a shared
two-core machine: cocotb's ``Clock`` is a Python coroutine unless asked for its GPI
implementation (``impl="gpi"``, toggled in C), and even then cocotb's loop around Verilator
cost about 1 us a cycle beside the device's own evaluation; the driver, a blocking function,
runs in a thread (``cocotb.task.bridge``), and each transaction's two thread switches cost
about 0.6 ms; a 32-bit word moved through VPI cost 2 to 5 us (0.3 us in 1024-bit rows). In a
compiled loop called in-process none of these remain: what is left is Verilator evaluating the
device (docs/design.md, "Simulation speed", has the figures).
"""

import ctypes
import time
from pathlib import Path

import numpy as np
from amaranth import ClockDomain, ClockSignal, Module
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from hw.commands import WORD_BITS
from sw_driver.driver import DeviceError, Transport

__all__ = ["SimHarness", "build", "HarnessHang", "HarnessTransport"]

HOST_SOURCE = Path(__file__).with_name("harness.cpp")


class SimHarness(wiring.Component):
    """``device`` behind a host port that a compiled testbench drives every cycle.

    Verilator evaluates the logic that follows from a top-level input at every evaluation, two
    a cycle; so nothing of the device follows from one: its command words come from a buffer's
    flip-flops and its ``o_stream.ready`` is held high. The harness has no reset (a reset input
    would reach every register's next-state logic): every register starts from its initial
    value, the state a reset gives.

    Parameters
    ----------
    device : wiring.Component
        Has ``i_stream: In(stream.Signature(32))`` and ``o_stream: Out(stream.Signature(32))``.
    depth : int
        Command words the buffer holds, at least 2 (so that it takes a word every cycle).

    Members
    -------
    The ports are single signals, not streams, for the C++ host to name (Verilator escapes the
    ``__`` of a stream's member names).

    clk : In(1)
        The clock.
    i_valid : In(1)
        The host offers the command word ``i_word``; the buffer takes it if ``i_ready``.
    i_word : In(32)
    i_ready : Out(1)
    o_valid : Out(1)
        The device offers the response word ``o_word``; it is taken.
    o_word : Out(32)
    pending : Out(1)
        The buffer holds words the device has not taken.
    """

    clk: In(1)
    i_valid: In(1)
    i_word: In(WORD_BITS)
    i_ready: Out(1)
    o_valid: Out(1)
    o_word: Out(WORD_BITS)
    pending: Out(1)

    def __init__(self, device, *, depth=4):
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 2:
            raise ValueError(f"Buffer depth must be an integer of at least 2, not {depth!r}")
        self._device = device
        self._depth = depth
        super().__init__()

    @property
    def device(self):
        return self._device

    @property
    def depth(self):
        return self._depth

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = ClockDomain(reset_less=True)
        m.d.comb += ClockSignal().eq(self.clk)
        device = m.submodules.device = self._device
        buffer = m.submodules.buffer = fifo.SyncFIFOBuffered(width=WORD_BITS, depth=self._depth)
        m.d.comb += [
            buffer.w_data.eq(self.i_word),
            buffer.w_en.eq(self.i_valid),
            self.i_ready.eq(buffer.w_rdy),
            device.i_stream.payload.eq(buffer.r_data),
            device.i_stream.valid.eq(buffer.r_rdy),
            buffer.r_en.eq(device.i_stream.ready),
            self.pending.eq(buffer.level != 0),
            device.o_stream.ready.eq(1),
            self.o_valid.eq(device.o_stream.valid),
            self.o_word.eq(device.o_stream.payload),
        ]
        return m


def build(config, *, waves=False, progress=None):
    """The device of ``config`` in a :class:`SimHarness`, built with its host into a shared
    library unless it was before: a :class:`sw_driver.flow.SimLibrary`. With ``waves`` (or
    ``WAVES=1``) the library can write a VCD."""
    from hw.device import Device
    from sw_driver import flow

    return flow.verilator_library(SimHarness(Device(config)), unit="harness", host=HOST_SOURCE,
                                  waves=waves, metadata={"config": config.to_dict()},
                                  progress=progress)


class HarnessHang(DeviceError):
    """The simulated device moved no word for longer than the transport's patience."""


class HarnessTransport(Transport):
    """Words to and from the device in the harness library at ``path`` (:func:`build`),
    simulated in this process from cycle 0.

    ``trace`` names a VCD to write (the library must be built with waves); ``simulating_s``
    counts the wall seconds spent in the compiled loop (the rest of a run is Python's). A
    transaction in
    which no word moves for ``patience`` cycles raises :class:`HarnessHang`: a hung device ends
    the run with a message instead of stalling it. Use as a context manager, or :meth:`close`.
    """

    def __init__(self, path, *, trace=None, patience=100_000):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"Patience must be a positive integer, not {patience!r}")
        lib = self._lib = ctypes.CDLL(str(path))
        lib.harness_open.restype = ctypes.c_void_p
        lib.harness_open.argtypes = [ctypes.c_char_p]
        lib.harness_close.argtypes = [ctypes.c_void_p]
        lib.harness_cycles.restype = ctypes.c_uint64
        lib.harness_cycles.argtypes = [ctypes.c_void_p]
        lib.harness_transact.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64,
                                         ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64,
                                         ctypes.c_void_p]
        if trace is not None and not lib.harness_traces():
            raise ValueError(f"{path} was built without waves; it cannot write {trace}")
        self._patience = patience
        self.simulating_s = 0.0             # wall seconds spent in the compiled loop
        self._sim = lib.harness_open(None if trace is None else str(trace).encode())

    def close(self):
        """End the simulation (and write out its VCD)."""
        if self._sim is not None:
            self._lib.harness_close(self._sim)
            self._sim = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def cycle(self):
        """Clock cycles simulated so far."""
        return self._lib.harness_cycles(self._sim)

    def transact(self, words, count):
        words = np.ascontiguousarray(words, np.uint32)
        out = np.empty(count, np.uint32)
        moved = np.zeros(2, np.uint64)
        start = time.perf_counter()
        hung = self._lib.harness_transact(self._sim, words.ctypes.data, len(words),
                                          out.ctypes.data, count, self._patience,
                                          moved.ctypes.data)
        self.simulating_s += time.perf_counter() - start
        if hung:
            raise HarnessHang(f"no word moved for {self._patience} cycles, at cycle "
                              f"{self.cycle()}: the harness took {moved[0]} of {len(words)} "
                              f"command words, the device sent {moved[1]} of {count} response "
                              f"words")
        return out.tolist()
