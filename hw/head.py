"""The LM head and the greedy choice: logits over the tied int8 embedding, and their arg max
(the ``values`` and ``argmax`` of ``golden.integer.IntegerModel``'s head, bit for bit); and the
embedding lookup that starts a token's residual stream, from the same memory
(``golden.integer.embed_values``).

For each vocabulary row ``v``: ``logit[v] = (x_q . embedding[v]) * row_scale[v]``, ``lanes``
int8 x int8 products a cycle (one multiplier each), then one multiply by the row's 17-bit
scale; the largest logit wins, the lowest index among equals. The token's own scale (``rho``
times the head's constant) is positive and common to every row, so it cannot change the arg max
and the unit does not apply it.

A lookup reads the token's row one word at a time and offers its elements ``embed_lanes`` a
cycle: ``shift_round(embedding[token][j] * row_scale[token], shift)``, int32. The residual
stream takes them where the epilogue writes its results, ``embed_lanes`` (the core's 4) a
beat, not a word a cycle: each lane needs a rounding shifter (about 290 LUT4-eq), and H is
written a beat at a time anyway. The products are the first ``embed_lanes`` lanes'
multipliers (8 x 8 in a scan, 8 x 18 in a lookup: one MULT18X18D either way), each fed its
element of the word by a select over the word's lane groups.
"""

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.fixedpoint import MANTISSA_BITS
from golden.integer import ACT_MAX, EMBEDDING_BITS, RESIDUAL_BITS
from golden.widths import signed_bits_for

from .pim import AdderTree, delayed

__all__ = ["EMBED_LEFT_MAX", "EMBED_SHIFT", "LmHead"]

_PRODUCT_MAGNITUDE = 1 << (2 * EMBEDDING_BITS - 2)      # -128 x -128: any int8 code
_SCALE_OPERAND = signed(MANTISSA_BITS + 1)              # a row scale on a signed port
_EMBED_PRODUCT_BITS = EMBEDDING_BITS + MANTISSA_BITS    # int8 x uint17
# A lookup's shift, row_scale_fraction - residual_fraction, is at least -EMBED_LEFT_MAX (8):
# IntegerWeights bounds the residual by the embedding's largest product too, 127 times a row
# scale of at least 2**16, and the residual is int32. Every shift from 25 on rounds every product
# to 0, so the sequencer sends min(shift, 31): the shift is signed(6), from -8 to 31.
EMBED_LEFT_MAX = RESIDUAL_BITS - 1 - (ACT_MAX << (MANTISSA_BITS - 1)).bit_length()
EMBED_SHIFT = signed(6)


class LmHead(wiring.Component):
    """``start`` scans every row once and offers the winning token and its logit; ``embed``
    looks one row up.

    Rows are read one ``lanes``-wide word a cycle, so a scan takes ``vocab x words`` cycles plus
    :attr:`latency`. A lookup offers ``hidden`` elements ``embed_lanes`` a cycle, the first
    :attr:`EMBED_LATENCY` cycles after it is taken; its pipeline holds whole while a beat is
    refused. One operation runs at a time: ``start`` and ``embed`` are taken only while
    neither runs nor waits to be read (a ``start`` offered with an ``embed`` goes first), and
    so are writes to the activation, the embedding and the scales.

    Parameters
    ----------
    config : hw.config.Config
        The device; the head has as many lanes (multipliers) as a bank unless ``lanes`` says.
    hidden, vocab : int
        The model's width and vocabulary.
    lanes : int
        Products a cycle.
    embed_lanes : int
        Elements a lookup offers a cycle: a divisor of ``lanes`` and of ``hidden``.

    Members
    -------
    x_stream : In(stream.Signature(StructLayout({"index": range(words), "data": lanes x int8})))
        The token's ``x_q``, word ``index`` (element ``index * lanes + i`` in lane ``i``; lanes
        beyond ``hidden`` zero).
    emb_stream : In(stream.Signature(StructLayout({"addr": range(vocab * words), ...})))
        Embedding words: row ``v``'s word ``w`` at ``v * words + w``.
    scale_stream : In(stream.Signature(StructLayout({"addr": range(vocab), "data": 17})))
        Row scales.
    start : In(stream.Signature(0))
    o_stream : Out(stream.Signature(StructLayout({"token": range(vocab),
                                                  "logit": signed(logit_bits)})))
    embed : In(stream.Signature(StructLayout({"token": range(vocab), "shift": EMBED_SHIFT})))
        A token to look up, and the model's ``row_scale_fraction - residual_fraction``, from
        -8 to 31 (:data:`EMBED_SHIFT`).
    residual : Out(stream.Signature(ArrayLayout(signed(32), embed_lanes)))
        The token's residual stream, elements ``0`` to ``hidden - 1``, in order.
    logit_addr : In(range(vocab));  logit : Out(signed(logit_bits))
        The last scan's logit of row ``logit_addr``, the cycle after (each scan writes every
        row's logit into a memory of its own as it goes; read it between scans).
    """

    EMBED_LATENCY = 7

    def __init__(self, config, *, hidden, vocab, lanes=None, embed_lanes=1):
        lanes = config.pim.lanes if lanes is None else lanes
        for name, value in (("hidden", hidden), ("vocab", vocab), ("lanes", lanes),
                            ("embed_lanes", embed_lanes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if lanes % embed_lanes or hidden % embed_lanes:
            raise ValueError(f"embed_lanes must divide lanes ({lanes}) and hidden ({hidden}), "
                             f"not {embed_lanes}")
        self._hidden, self._vocab, self._lanes = hidden, vocab, lanes
        self.embed_lanes = embed_lanes
        self._words = -(-hidden // lanes)
        word = data.ArrayLayout(signed(EMBEDDING_BITS), lanes)
        # golden.integer's logit_dot and logit widths.
        self._dot_bits = signed_bits_for(ACT_MAX * ACT_MAX * hidden)
        self.logit_bits = self._dot_bits + MANTISSA_BITS
        super().__init__({
            "x_stream": In(stream.Signature(data.StructLayout({
                "index": range(self._words), "data": word}))),
            "emb_stream": In(stream.Signature(data.StructLayout({
                "addr": range(vocab * self._words), "data": word}))),
            "scale_stream": In(stream.Signature(data.StructLayout({
                "addr": range(vocab), "data": MANTISSA_BITS}))),
            "start": In(stream.Signature(0)),
            "o_stream": Out(stream.Signature(data.StructLayout({
                "token": range(vocab), "logit": signed(self.logit_bits)}))),
            "embed": In(stream.Signature(data.StructLayout({
                "token": range(vocab), "shift": EMBED_SHIFT}))),
            "residual": Out(stream.Signature(data.ArrayLayout(signed(RESIDUAL_BITS),
                                                              embed_lanes))),
            "logit_addr": In(range(vocab)),
            "logit": Out(signed(self.logit_bits)),
        })

    @property
    def words(self):
        """Words a row: ``ceil(hidden / lanes)``."""
        return self._words

    @property
    def embed_cycles(self):
        """Cycles after a lookup is taken that its last beat is offered, without
        back-pressure."""
        return self.EMBED_LATENCY + self._hidden // self.embed_lanes - 1

    @property
    def latency(self):
        """Cycles from a scan's last read to its result offered."""
        return 8 + AdderTree.latency_for(self._lanes)

    def elaborate(self, platform):
        m = Module()
        lanes, words, vocab = self._lanes, self._words, self._vocab
        embed_lanes = self.embed_lanes
        word = data.ArrayLayout(signed(EMBEDDING_BITS), lanes)
        m.submodules.embedding = embedding = Memory(shape=word, depth=vocab * words, init=[])
        m.submodules.activation = activation = Memory(shape=word, depth=words, init=[])
        m.submodules.scales = scales = Memory(shape=MANTISSA_BITS, depth=vocab, init=[])

        busy = Signal()             # from a scan's start until its result is taken, or from a
        idle = ~busy                # lookup's until its last element is
        for port, stream_ in ((embedding.write_port(), self.emb_stream),
                              (scales.write_port(), self.scale_stream)):
            m.d.comb += [stream_.ready.eq(idle), port.en.eq(stream_.valid & idle),
                         port.addr.eq(stream_.payload.addr), port.data.eq(stream_.payload.data)]
        x_write = activation.write_port()
        m.d.comb += [self.x_stream.ready.eq(idle), x_write.en.eq(self.x_stream.valid & idle),
                     x_write.addr.eq(self.x_stream.payload.index),
                     x_write.data.eq(self.x_stream.payload.data)]

        # A lookup's pipeline moves when its last stage can: an element leaves, or there is
        # none (always, in a scan).
        advance = ~self.residual.valid | self.residual.ready

        # The scan: one embedding word a cycle, its activation word and its row's scale read
        # with it. A lookup: its row's words, each read once and held for its lanes' elements,
        # ``embed_lanes`` a cycle (``lane``: the first's), and its row's scale.
        running = Signal()          # a scan is reading
        lookup = Signal()           # from a lookup's start until its last element is taken
        issuing = Signal()          # a lookup is reading
        addr = Signal(range(vocab * words))
        column = Signal(range(words))
        row = Signal(range(vocab))
        lane = Signal(range(lanes))
        last_column = column == words - 1
        final = last_column & (row == vocab - 1)
        lookup_end = last_column & (lane == (self._hidden - 1) % lanes - (embed_lanes - 1))
        word_end = (lane == lanes - embed_lanes) | lookup_end
        # A lookup's shift, from -8 to 31, as one right shift of the product moved left by 9,
        # then rounding half up: (floor(p 2**(1 - shift)) + 1) >> 1. An increment, and no
        # decoder for the half.
        right = Signal(range(2 ** (EMBED_SHIFT.width - 1) + EMBED_LEFT_MAX))
        m.d.comb += [self.start.ready.eq(idle), self.embed.ready.eq(idle & ~self.start.valid)]
        with m.If(self.start.valid & idle):
            m.d.sync += [busy.eq(1), running.eq(1), addr.eq(0), column.eq(0), row.eq(0)]
        with m.Elif(self.embed.valid & self.embed.ready):
            token, shift = self.embed.payload.token, self.embed.payload.shift
            m.d.sync += [busy.eq(1), lookup.eq(1), issuing.eq(1),
                         addr.eq(_times(token, words)), column.eq(0), row.eq(token),
                         right.eq(shift + EMBED_LEFT_MAX)]
        with m.Elif(running):
            m.d.sync += [addr.eq(addr + 1), column.eq(Mux(last_column, 0, column + 1))]
            with m.If(last_column):
                m.d.sync += row.eq(row + 1)
            with m.If(final):
                m.d.sync += running.eq(0)
        with m.Elif(issuing & advance):
            m.d.sync += lane.eq(Mux(word_end, 0, lane + embed_lanes))
            with m.If(word_end):
                m.d.sync += [addr.eq(addr + 1), column.eq(column + 1)]
            with m.If(lookup_end):
                m.d.sync += [issuing.eq(0), column.eq(0)]
        emb_read, x_read, scale_read = (embedding.read_port(), activation.read_port(),
                                        scales.read_port())
        m.d.comb += [emb_read.addr.eq(addr), x_read.addr.eq(column), scale_read.addr.eq(row),
                     emb_read.en.eq(advance & (lane == 0))]

        control = Signal(data.StructLayout({"valid": 1, "first": 1, "last": 1, "final": 1,
                                            "row": range(vocab)}))
        m.d.comb += [control.valid.eq(running), control.first.eq(column == 0),
                     control.last.eq(last_column), control.final.eq(final), control.row.eq(row)]
        issued = Signal(data.StructLayout({"valid": 1, "lane": range(lanes), "last": 1}))
        m.d.comb += [issued.valid.eq(issuing), issued.lane.eq(lane), issued.last.eq(lookup_end)]
        # Cycle 1: the reads' data. Cycle 2: the words in registers (a DP16KD without its
        # output register delivers its word late in the cycle; the lane select and the
        # multiplexers after it would follow it). Cycle 3: operands registered. Cycle 4: the
        # products. Lane j < embed_lanes takes a lookup's element (the word's lane
        # ``lane + j``; lane j in a scan) and the row's scale in place of the activation.
        # Cycle 5: a lookup's products shifted right. Cycle 6: rounded and offered. The shift
        # and the increment each take a cycle: together, a barrel shifter and a carry chain.
        with_data = delayed(m, control, 2, "read")
        looked_up = [Signal.like(issued, name=f"lookup{n}") for n in range(1, 6)]
        word_e = Signal(word, reset_less=True)
        word_x = Signal(word, reset_less=True)
        word_scale = Signal(MANTISSA_BITS, reset_less=True)
        operand_e = Signal(word, reset_less=True)
        operand_x = [Signal(_SCALE_OPERAND if n < embed_lanes else signed(EMBEDDING_BITS),
                            name=f"operand_x{n}", reset_less=True) for n in range(lanes)]
        products = [Signal(signed(_EMBED_PRODUCT_BITS if n < embed_lanes
                                  else 2 * EMBEDDING_BITS),
                           name=f"product{n}", reset_less=True) for n in range(lanes)]
        # The products moved left by EMBED_LEFT_MAX + 1, shifted right by up to 39.
        moved = [Signal(signed(_EMBED_PRODUCT_BITS + EMBED_LEFT_MAX + 1), name=f"moved{n}",
                        reset_less=True) for n in range(embed_lanes)]
        tree = m.submodules.tree = AdderTree(count=lanes, magnitude=_PRODUCT_MAGNITUDE)
        last_taken = Signal()
        with m.If(advance):
            m.d.sync += [
                looked_up[0].eq(issued),
                *(looked_up[n].eq(looked_up[n - 1]) for n in range(1, len(looked_up))),
                word_e.eq(emb_read.data), word_x.eq(x_read.data),
                word_scale.eq(scale_read.data),
                operand_e.eq(word_e),
                *(operand_e[n].eq(word_e[looked_up[1].lane + n]) for n in range(embed_lanes)),
                *(operand_x[n].eq(Mux(lookup, word_scale, word_x[n]))
                  for n in range(embed_lanes)),
                *(operand_x[n].eq(word_x[n]) for n in range(embed_lanes, lanes)),
                *(products[n].eq(operand_e[n] * operand_x[n]) for n in range(lanes)),
                *(moved[n].eq((products[n] << (EMBED_LEFT_MAX + 1)) >> right)
                  for n in range(embed_lanes)),
                self.residual.valid.eq(looked_up[4].valid),
                *(self.residual.payload[n].eq((moved[n] + 1) >> 1)
                  for n in range(embed_lanes)),
                last_taken.eq(looked_up[4].last),
            ]
        with m.If(self.residual.valid & self.residual.ready & last_taken):
            m.d.sync += [busy.eq(0), lookup.eq(0)]
        for n in range(lanes):
            m.d.comb += tree.i[n].eq(products[n])   # a scan's products fit the tree's inputs
        at_acc = delayed(m, with_data, 2 + tree.latency, "acc")
        scale = delayed(m, word_scale, 2 + tree.latency, "scale")

        # The row's dot product over its words; then its logit; then the running best.
        dot_bits = self._dot_bits
        acc = Signal(signed(dot_bits), reset_less=True)
        total = Signal(signed(dot_bits))
        m.d.comb += total.eq(Mux(at_acc.first, 0, acc) + tree.o)
        with m.If(at_acc.valid):
            m.d.sync += acc.eq(total)
        dot = Signal(signed(dot_bits), reset_less=True)
        dot_scale = Signal(MANTISSA_BITS, reset_less=True)
        dot_control = Signal.like(control)
        m.d.sync += [dot.eq(total), dot_scale.eq(scale),
                     dot_control.eq(Mux(at_acc.valid & at_acc.last, at_acc.as_value(), 0))]
        # The logit's product in two, each on a multiplier of its own and registered before
        # they are added: the dot's low bits, unsigned as wide as the scale, and its high bits
        # (at least its sign). As one product, the two multipliers' outputs went through the
        # adder that joins them in the same cycle.
        low_bits = min(MANTISSA_BITS, dot_bits - 1)
        low = Signal(low_bits + MANTISSA_BITS, reset_less=True)
        high = Signal(signed(self.logit_bits - low_bits), reset_less=True)
        product_control = Signal.like(control)
        m.d.sync += [low.eq(dot[:low_bits] * dot_scale),
                     high.eq(dot[low_bits:].as_signed() * dot_scale),
                     product_control.eq(dot_control)]
        logit = Signal(signed(self.logit_bits), reset_less=True)
        logit_control = Signal.like(control)
        m.d.sync += [logit.eq((high << low_bits) + low), logit_control.eq(product_control)]

        # Every row's logit, for a read-back of the scan's.
        m.submodules.logits = logits = Memory(shape=signed(self.logit_bits), depth=vocab,
                                              init=[])
        logit_write, logit_read = logits.write_port(), logits.read_port()
        m.d.comb += [logit_write.en.eq(logit_control.valid),
                     logit_write.addr.eq(logit_control.row), logit_write.data.eq(logit),
                     logit_read.addr.eq(self.logit_addr), self.logit.eq(logit_read.data)]

        best = self.o_stream.payload
        have = Signal()             # a row has been compared in this scan
        with m.If(logit_control.valid):
            with m.If(~have | (logit > best.logit)):
                m.d.sync += [best.logit.eq(logit), best.token.eq(logit_control.row)]
            m.d.sync += have.eq(~logit_control.final)
            with m.If(logit_control.final):
                m.d.sync += self.o_stream.valid.eq(1)
        with m.If(self.o_stream.valid & self.o_stream.ready):
            m.d.sync += [self.o_stream.valid.eq(0), busy.eq(0)]
        return m


def _times(value, constant):
    """``value * constant`` as shifts and adds: a constant multiple needs no multiplier."""
    total = 0
    for bit in range(constant.bit_length()):
        if constant >> bit & 1:
            total = total + (value << bit)
    return total
