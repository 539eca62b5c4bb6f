"""The device's registers: status (``READ_STATUS``) and performance counters (``READ_COUNTERS``)."""

from amaranth import Array, Const, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .commands import STATUS, STATUS_FLAGS, STATUS_MAGIC, WORD_BITS, CommandFormat, ErrorCode

__all__ = ["CYCLE_KIND", "READ_GROUP_BITS", "RegisterFile"]

CYCLE_KIND = data.StructLayout({"busy": 1, "idle": 1, "stalled": 1})
READ_GROUP_BITS = 3             # a read selects among 2**READ_GROUP_BITS registers, then groups


class RegisterFile(wiring.Component):
    """Every register of :attr:`CommandFormat.registers`, in that order, and how they are read.

    Status: ``magic`` (:data:`STATUS_MAGIC`), ``error`` (the first error since ``clear``),
    ``errors`` (how many since), ``flags`` (:data:`STATUS_FLAGS`). An error raised in ``fail``
    is recorded a cycle later, from a register, so that the controller's verdict is not the
    start of a path through a 32-bit adder; ``clear`` wins over an error recorded in its cycle.

    Counters (32-bit, wrapping), in ``CommandFormat.counter_names`` order: cycles by kind,
    ``macs``, words read per bank. A cycle's increments are registered first and added the
    cycle after, so the control logic that classifies a cycle never ends in a 32-bit adder.

    A read sees every cycle before the one that takes it, as if counted at once (a read adds
    what is still on its way in). It selects in two steps: taking a register (``take``) stores,
    for each group of ``2**READ_GROUP_BITS`` registers, the one the index's low bits name; the
    ``word`` out is then the group its high bits name. ``index`` is the register the next
    ``take`` reads; ``restart`` sets it.

    Parameters
    ----------
    format : CommandFormat
    max_macs : int
        The most multiply-accumulates the device does in a cycle.

    Members
    -------
    cycle : In(CYCLE_KIND)
        What this cycle is: exactly one of busy, idle or stalled.
    macs : In(range(max_macs + 1))
        Multiply-accumulates done this cycle (non-zero weights met; zero ones are skips).
    words_read : In(ArrayLayout(1, banks))
        Bit ``b``: bank ``b`` read a weight word this cycle.
    fail : In(8)
        The :class:`ErrorCode` raised this cycle (``NONE``: none).
    clear : In(1)
        Forget the errors (``CLEAR_ERRORS``).
    flags : In(STATUS_FLAGS)
        The status flags.
    error : Out(8)
        The sticky error, as response headers carry it.
    error_set : Out(1)
        An error is set, or being recorded (for the status LED).
    restart : In(1)
        Set ``index`` to ``restart_at``.
    restart_at : In(range(len(registers)))
    take : In(1)
        Take register ``index`` into ``word`` (the next cycle) and step ``index``.
    index : Out(range(len(registers) + 1))
    word : Out(32)
        The register taken last.
    """

    def __init__(self, format, *, max_macs):
        if not isinstance(format, CommandFormat):
            raise TypeError(f"format must be a CommandFormat, not {format!r}")
        if isinstance(max_macs, bool) or not isinstance(max_macs, int) or max_macs < 1:
            raise ValueError(f"max_macs must be a positive integer, not {max_macs!r}")
        self._format = format
        registers = len(format.registers)
        super().__init__({
            "cycle": In(CYCLE_KIND),
            "macs": In(range(max_macs + 1)),
            "words_read": In(data.ArrayLayout(1, format.banks)),
            "fail": In(8),
            "clear": In(1),
            "flags": In(STATUS_FLAGS),
            "error": Out(8),
            "error_set": Out(1),
            "restart": In(1),
            "restart_at": In(range(registers)),
            "take": In(1),
            "index": Out(range(registers + 1)),
            "word": Out(WORD_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        fmt = self._format
        none = ErrorCode.NONE.value

        errors = Signal(WORD_BITS)
        fail_q = Signal(8)
        m.d.sync += fail_q.eq(self.fail)
        with m.If(fail_q != none):
            m.d.sync += errors.eq(errors + 1)
            with m.If(self.error == none):
                m.d.sync += self.error.eq(fail_q)
        with m.If(self.clear):
            m.d.sync += [self.error.eq(none), errors.eq(0)]
        error_now = Mux(self.error != none, self.error, fail_q)
        m.d.comb += self.error_set.eq(error_now != none)
        status = {"magic": Const(STATUS_MAGIC, WORD_BITS), "error": error_now,
                  "errors": errors + (fail_q != none), "flags": self.flags.as_value()}

        increments = [self.cycle.busy, self.cycle.idle, self.cycle.stalled, self.macs,
                      *self.words_read]
        counters = []
        for name, increment in zip(fmt.counter_names, increments, strict=True):
            count = Signal(WORD_BITS, name=name)
            pending = Signal.like(self.macs, name=f"{name}_pending")
            m.d.sync += [pending.eq(increment), count.eq(count + pending)]
            counters.append(count + pending)
        registers = [status[name] for name in STATUS] + counters

        group_size = 1 << READ_GROUP_BITS
        groups = [registers[n:n + group_size] for n in range(0, len(registers), group_size)]
        fetched = Array(Signal(WORD_BITS, name=f"fetched{n}") for n in range(len(groups)))
        fetched_group = Signal(range(len(groups)))
        m.d.comb += self.word.eq(fetched[fetched_group])
        with m.If(self.take):
            low = self.index[:READ_GROUP_BITS]
            for group, values in zip(fetched, groups):
                padded = values + [Const(0, WORD_BITS)] * (group_size - len(values))
                m.d.sync += group.eq(Array(padded)[low])
            m.d.sync += [fetched_group.eq(self.index[READ_GROUP_BITS:]),
                         self.index.eq(self.index + 1)]
        with m.If(self.restart):
            m.d.sync += self.index.eq(self.restart_at)
        return m
