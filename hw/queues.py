"""Status of ``amaranth.lib.fifo`` queues as flip-flops, for consumers across the die."""

from amaranth import Mux, Signal

__all__ = ["registered_r_rdy", "registered_room"]


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


def registered_room(m, queue, words, *, name):
    """A flip-flop: ``queue`` (a ``SyncFIFO``) has room for ``words`` more words.

    Worked out a cycle ahead from the queue's level and that cycle's write and read, like
    :func:`registered_r_rdy`, so it does not start behind the queue's level logic.
    """
    room = Signal(init=1, name=name)
    written = queue.w_en & queue.w_rdy
    read = queue.r_en & queue.r_rdy
    limit = queue.depth - words
    m.d.sync += room.eq(Mux(written & ~read, queue.level < limit,
                            Mux(read & ~written, queue.level <= limit + 1,
                                queue.level <= limit)))
    return room
