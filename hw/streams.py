"""Width conversion between the device's 32-bit word streams and its units' wide beats.

:class:`WordAssembler` joins command words into a unit's beat (a weight word, an activation
chunk, a tile row, a token); :class:`ResultSerialiser` splits a unit's result beat into response
words. Both keep every signal that crosses the die on a flip-flop or behind at most a gate: the
units they serve are spread over the die, and the controller's state is kept off their paths.
"""

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.hdl import Shape
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .commands import WORD_BITS

__all__ = ["WordAssembler", "ResultSerialiser", "RESPONSE_WORD"]

# A word for the response FIFO: the word, and whether it is the last of its result beat.
RESPONSE_WORD = data.StructLayout({"word": WORD_BITS, "ends_beat": 1})


def _check_count(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")


class WordAssembler(wiring.Component):
    """Joins every ``words`` consecutive words of ``i_stream`` into one ``o_stream`` beat, the
    first word least significant.

    The first ``words - 1`` words wait in a register; the last passes through, so a beat is
    offered in the cycle its last word is, and a beat moves per ``words`` input words with no
    bubble. The beat's data is wired in every cycle and only ``valid`` depends on the input's,
    so a consumer may take the data straight to its registers. Whether the next word is a beat's
    last is a flip-flop (``last``): it is on the path from the consumer's ``ready`` back to the
    word stream's.

    Parameters
    ----------
    words : int
        Words per beat, at least 1.

    Members
    -------
    i_stream : In(stream.Signature(32))
        Words.
    o_stream : Out(stream.Signature(unsigned(32 * words)))
        Beats.
    """

    def __init__(self, *, words):
        _check_count("words", words)
        self._words = words
        super().__init__({
            "i_stream": In(stream.Signature(WORD_BITS)),
            "o_stream": Out(stream.Signature(unsigned(WORD_BITS * words))),
        })

    @property
    def words(self):
        return self._words

    def elaborate(self, platform):
        m = Module()
        words = self._words
        i, o = self.i_stream, self.o_stream
        chunk = Signal(range(words))
        low = Signal((words - 1) * WORD_BITS)
        last = Signal(init=words == 1)                  # chunk == words - 1, registered
        m.d.comb += [
            o.payload.eq(Cat(low, i.payload)),
            o.valid.eq(i.valid & last),
            i.ready.eq(~last | o.ready),
        ]
        # The low words' enable leaves ``o.ready`` out (it is 1 when ``~last``): it fans out to
        # every bit of the beat.
        with m.If(i.valid & ~last):
            m.d.sync += [chunk.eq(chunk + 1), low.eq(Cat(low[WORD_BITS:], i.payload)),
                         last.eq(chunk == words - 2)]
        with m.If(o.valid & o.ready):
            m.d.sync += [chunk.eq(0), last.eq(words == 1)]
        return m


class ResultSerialiser(wiring.Component):
    """Sends ``count``-element result beats as sign-extended words, element 0 first.

    While ``enable`` is high and a beat waits, one word is written per cycle into the response
    FIFO (``o_stream``; it has no ``ready``: ``room`` says in advance whether the FIFO has room).
    A beat starts only when ``room`` says the FIFO has room for all of it, so once started it
    never waits; a cycle in which a word waits for room is ``blocked``.

    Element 0 is written while the others are loaded into a shift register (``rest``) whose
    head is the next word, and the beat leaves ``i_stream`` the cycle after, taken by a
    flip-flop (``pop``): the beat's source, spread over the die, sees a registered ``ready``.
    Register ``e`` of ``rest`` loads the beat or takes its neighbour's word under its own flag
    (``load``), so no single net reaches every bit of it. The flags are a thermometer code: all
    up until a beat starts, then each rises once its register's word has gone. When it rises
    does not matter to the data, but it makes each flag a different function, which no
    synthesis step can merge back into one net. A one-element beat (one bank, one column: no
    die to cross) leaves with its word, as a registered ``pop`` would cost it a bubble.

    Parameters
    ----------
    count : int
        Elements per beat, at least 1.
    element_shape : ShapeLike
        A signed shape of at most 32 bits.

    Members
    -------
    i_stream : In(stream.Signature(ArrayLayout(element_shape, count)))
        Result beats.
    enable : In(1)
        Send words. It must stay high from a beat's first word to its last: ``rest`` shifts
        every cycle of a beat, with no enable. (A flip-flop, for timing: it also selects this
        serialiser's word into the response FIFO's write data.)
    room : In(1)
        The response FIFO has room for ``count`` more words (a registered flag).
    o_stream : Out(stream.Signature(RESPONSE_WORD, always_ready=True))
        The word written into the response FIFO this cycle. The payload is wired in every cycle.
    blocked : Out(1)
        A word waits for room.
    """

    def __init__(self, *, count, element_shape):
        _check_count("count", count)
        shape = Shape.cast(element_shape)
        if not shape.signed or shape.width > WORD_BITS:
            raise ValueError(f"element_shape must be signed and at most {WORD_BITS} bits wide, "
                             f"not {element_shape!r}")
        self._count = count
        super().__init__({
            "i_stream": In(stream.Signature(data.ArrayLayout(shape, count))),
            "enable": In(1),
            "room": In(1),
            "o_stream": Out(stream.Signature(RESPONSE_WORD, always_ready=True)),
            "blocked": Out(1),
        })

    @property
    def count(self):
        return self._count

    def elaborate(self, platform):
        m = Module()
        count = self._count
        source = self.i_stream
        elements = source.payload
        element = Signal(range(count))
        first = Signal(init=1)                          # element == 0, registered
        last = Signal(init=count == 1)                  # element == count - 1, registered
        word = Signal(WORD_BITS)                        # the element, sign-extended
        if count > 1:
            pop = Signal()                              # element 0 left last cycle
            m.d.sync += pop.eq(0)
            m.d.comb += source.ready.eq(pop)
            # rest[e] holds element e + 1 + (the words sent after element 0); the top one is
            # needed only in the cycle after element 0, so it always loads.
            rest = Signal(data.ArrayLayout(elements.shape().elem_shape, count - 1),
                          reset_less=True)
            if count > 2:
                load = Signal(count - 2, init=-1)
            for e in range(count - 1):
                m.d.sync += rest[e].eq(elements[e + 1] if e == count - 2 else
                                       Mux(load[e], elements[e + 1], rest[e + 1]))
            m.d.comb += word.eq(Mux(first, elements[0], rest[0]))
        else:
            m.d.comb += word.eq(elements[0])
        has_word = Mux(first, source.valid, 1)          # after element 0, it is in ``rest``
        room = Mux(first, self.room, 1)                 # a started beat has its room
        m.d.comb += [self.o_stream.payload.word.eq(word),
                     self.o_stream.payload.ends_beat.eq(last)]

        with m.If(self.enable & has_word):
            m.d.comb += [self.o_stream.valid.eq(room), self.blocked.eq(~room)]
            with m.If(room):
                m.d.sync += [element.eq(Mux(last, 0, element + 1)), first.eq(last),
                             last.eq(Mux(last, count == 1, element == count - 2))]
                if count > 2:
                    m.d.sync += load.eq(Mux(last, -1, Mux(first, 0, Cat(load[1:], 1))))
                if count > 1:
                    m.d.sync += pop.eq(first)
                else:
                    m.d.comb += source.ready.eq(1)
        return m
