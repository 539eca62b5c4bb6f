"""The LM head and the greedy choice: logits over the tied int8 embedding, and their arg max
(the ``values`` and ``argmax`` of ``golden.integer.IntegerModel``'s head, bit for bit).

For each vocabulary row ``v``: ``logit[v] = (x_q . embedding[v]) * row_scale[v]``, ``lanes``
int8 x int8 products a cycle (one multiplier each), then one multiply by the row's 17-bit
scale; the largest logit wins, the lowest index among equals. The token's own scale (``rho``
times the head's constant) is positive and common to every row, so it cannot change the arg max
and the unit does not apply it.
"""

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.fixedpoint import MANTISSA_BITS
from golden.integer import ACT_MAX, EMBEDDING_BITS
from golden.widths import signed_bits_for

from .pim import AdderTree, delayed

__all__ = ["LmHead"]

_PRODUCT_MAGNITUDE = 1 << (2 * EMBEDDING_BITS - 2)      # -128 x -128: any int8 code


class LmHead(wiring.Component):
    """``start`` scans every row once and offers the winning token and its logit.

    Rows are read one ``lanes``-wide word a cycle, so a scan takes ``vocab x words`` cycles plus
    :attr:`latency`. Writes to the activation, the embedding and the scales are taken only
    while no scan runs or waits to be read (their ``ready`` is low then).

    Parameters
    ----------
    config : hw.config.Config
        The device; the head has as many lanes (multipliers) as a bank unless ``lanes`` says.
    hidden, vocab : int
        The model's width and vocabulary.
    lanes : int
        Products a cycle.

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
    """

    def __init__(self, config, *, hidden, vocab, lanes=None):
        lanes = config.pim.lanes if lanes is None else lanes
        for name, value in (("hidden", hidden), ("vocab", vocab), ("lanes", lanes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        self._hidden, self._vocab, self._lanes = hidden, vocab, lanes
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
        })

    @property
    def words(self):
        """Words a row: ``ceil(hidden / lanes)``."""
        return self._words

    @property
    def latency(self):
        """Cycles from a scan's last read to its result offered."""
        return 6 + AdderTree.latency_for(self._lanes)

    def elaborate(self, platform):
        m = Module()
        lanes, words, vocab = self._lanes, self._words, self._vocab
        word = data.ArrayLayout(signed(EMBEDDING_BITS), lanes)
        m.submodules.embedding = embedding = Memory(shape=word, depth=vocab * words, init=[])
        m.submodules.activation = activation = Memory(shape=word, depth=words, init=[])
        m.submodules.scales = scales = Memory(shape=MANTISSA_BITS, depth=vocab, init=[])

        busy = Signal()             # from a scan's start until its result is taken
        idle = ~busy
        for port, stream_ in ((embedding.write_port(), self.emb_stream),
                              (scales.write_port(), self.scale_stream)):
            m.d.comb += [stream_.ready.eq(idle), port.en.eq(stream_.valid & idle),
                         port.addr.eq(stream_.payload.addr), port.data.eq(stream_.payload.data)]
        x_write = activation.write_port()
        m.d.comb += [self.x_stream.ready.eq(idle), x_write.en.eq(self.x_stream.valid & idle),
                     x_write.addr.eq(self.x_stream.payload.index),
                     x_write.data.eq(self.x_stream.payload.data)]

        # The scan: one embedding word a cycle, its activation word and its row's scale read
        # with it.
        running = Signal()
        addr = Signal(range(vocab * words))
        column = Signal(range(words))
        row = Signal(range(vocab))
        last_column = column == words - 1
        final = last_column & (row == vocab - 1)
        m.d.comb += self.start.ready.eq(idle)
        with m.If(self.start.valid & idle):
            m.d.sync += [busy.eq(1), running.eq(1), addr.eq(0), column.eq(0), row.eq(0)]
        with m.Elif(running):
            m.d.sync += [addr.eq(addr + 1), column.eq(Mux(last_column, 0, column + 1))]
            with m.If(last_column):
                m.d.sync += row.eq(row + 1)
            with m.If(final):
                m.d.sync += running.eq(0)
        emb_read, x_read, scale_read = (embedding.read_port(), activation.read_port(),
                                        scales.read_port())
        m.d.comb += [emb_read.addr.eq(addr), x_read.addr.eq(column), scale_read.addr.eq(row)]

        control = Signal(data.StructLayout({"valid": 1, "first": 1, "last": 1, "final": 1,
                                            "row": range(vocab)}))
        m.d.comb += [control.valid.eq(running), control.first.eq(column == 0),
                     control.last.eq(last_column), control.final.eq(final), control.row.eq(row)]
        # Cycle 1: the reads' data. Cycle 2: operands registered. Cycle 3: the products.
        with_data = delayed(m, control, 1, "read")
        operand_e = Signal(word, reset_less=True)
        operand_x = Signal(word, reset_less=True)
        m.d.sync += [operand_e.eq(emb_read.data), operand_x.eq(x_read.data)]
        tree = m.submodules.tree = AdderTree(count=lanes, magnitude=_PRODUCT_MAGNITUDE)
        for lane in range(lanes):
            product = Signal(signed(2 * EMBEDDING_BITS), name=f"product{lane}", reset_less=True)
            m.d.sync += product.eq(operand_e[lane] * operand_x[lane])
            m.d.comb += tree.i[lane].eq(product)
        at_acc = delayed(m, with_data, 2 + tree.latency, "acc")
        scale = delayed(m, scale_read.data, 2 + tree.latency, "scale")

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
        logit = Signal(signed(self.logit_bits), reset_less=True)
        logit_control = Signal.like(control)
        m.d.sync += [logit.eq(dot * dot_scale), logit_control.eq(dot_control)]

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
