"""Status of ``amaranth.lib.fifo`` queues as flip-flops, for consumers across the die."""

from amaranth import Mux, Signal

__all__ = ["registered_r_rdy"]


def registered_r_rdy(m, queue, *, name):
    """A flip-flop equal to ``queue.r_rdy`` of a first-word-fall-through ``SyncFIFO``.

    It is worked out a cycle ahead from the queue's level and that cycle's write and read,
    so a consumer far from the queue gets it with no logic in front (``level != 0`` is one
    or two LUTs deep).
    """
    ready = Signal(name=name)
    written = queue.w_en & queue.w_rdy
    read = queue.r_en & ready
    m.d.sync += ready.eq(Mux(written, 1, Mux(read, queue.level != 1, queue.level != 0)))
    return ready
