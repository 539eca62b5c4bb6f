"""Attention of the integer decoder, with the KV cache in block RAM (``golden.integer.attention``
for one query and one head, bit for bit).

The cache holds, for every layer, position and KV head, a key (after RoPE) and a value of
``head_dim`` int16 elements, one word each; the sequencer writes them. A query is one head's
``q`` at position ``pos`` (it sees positions ``0 .. pos``) with its layer's softmax constants
(:class:`golden.integer.SoftmaxScale`, which the sequencer holds per layer and sends with each
query, so the unit keeps no table of them). The unit runs four passes:

1. scores: one key a cycle, ``head_dim`` products and an adder tree; each score goes to the
   score buffer, and the largest is kept;
2. probabilities: one score a cycle, ``gap = top - score``, ``min(gap, gap_limit)`` shifted by
   ``gap_shift``, times the scale (``t``, in 2**-10 octaves), ``p = exp2_lookup(t)`` from the
   exp2 ROM; ``p`` replaces its score in the buffer, and the sum of every ``p`` is kept;
3. normalise: the sum as a dyadic (``golden.fixedpoint.dyadic``) and its reciprocal from the
   reciprocal ROM;
4. output: one position a cycle, ``weight = round(p * rcp)`` and ``head_dim`` products with the
   value, accumulated per element; then the vector is offered.

Passes 1 and 4 never overlap, so they share the ``head_dim`` multipliers (``q[d] x K[s][d]``,
then ``weight x V[s][d]``): ``head_dim + 2`` multipliers in all, where golden's multiplier
count (``score`` and ``weighted_sum`` per element) would be ``2 head_dim + 2``. The query heads
of a KV group read the same keys; a unit taking them together would read each key once for all
of them, at ``group`` times the multipliers, where one head at a time shares them between the
passes instead. A query carries its vector with its position, head and constants, so that one
transfer starts it and no order between two streams has to be kept.
"""

from amaranth import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.fixedpoint import EXP2_FRACTION_BITS, MANTISSA_BITS, build_tables
from golden.integer import PROJECTION_BITS, WEIGHT_FRACTION_BITS, integer_formats
from golden.model import ModelConfig
from golden.widths import signed_bits_for

from .dyadic import DYADIC, bit_length
from .pim import AdderTree, delayed
from .rounding import register_half, rounding_shift

__all__ = ["CacheKind", "Attention"]

_PRODUCT_MAGNITUDE = 1 << (2 * PROJECTION_BITS - 2)       # -32768 x -32768: any int16 pair
# golden.fixedpoint.dyadic_reciprocal: 1 / (m 2**e) is table[i] * 2**(-33 - e), the table
# holding 2**17 / x for x = m / 2**16 in [1, 2).
_RECIPROCAL_EXPONENT = 2 * MANTISSA_BITS - 1
# Pipeline stages after a position's issue (stage 0): the shared products (passes 1 and 4),
# and pass 2's p; the normalisation's cycles between passes 2 and 4.
_PRODUCTS = 7
_PROBABILITY = 14
_NORMALISE = 5


class CacheKind(enum.Enum, shape=1):
    KEY = 0
    VALUE = 1


class _Pass(enum.Enum, shape=2):
    SCORES = 0
    PROBABILITIES = 1
    OUTPUT = 2


class Attention(wiring.Component):
    """One query head at a time against the KV cache.

    A query taken in cycle ``c`` has its output offered in cycle ``c + cycles(pos)``, with
    ``cycles(pos) = 3 (pos + 1) + latency`` (:meth:`cycles`): passes 1, 2 and 4 read one
    position a cycle, and ``latency = 35 + AdderTree.latency_for(head_dim)`` is the score
    pipeline (8 and the tree's registers), the probability pipeline (14), the normalisation
    (5), the output pipeline (7) and a cycle. Every rounding shift takes stages of its own and
    every block RAM word is registered before use, for 100 MHz on the ECP5. The next query is
    taken once the output has left. Cache writes
    are taken only while no query runs (their ``ready`` is low then).

    The unit's score path is exact for any int16 ``q`` and key (golden's ``score`` width bounds
    it by ``head_dim x 32767**2``, which a -32768 in both could pass); every other width is
    golden's (:attr:`formats`).

    Parameters
    ----------
    config : hw.config.Config
        The device (names the build; the unit has ``head_dim`` lanes).
    heads, kv_heads : int
        Query heads and KV heads; query head ``h`` reads KV head ``h // (heads / kv_heads)``.
    head_dim : int
        Elements a head (even, as RoPE's pairs need): products a cycle.
    max_seq : int
        Positions the cache holds per layer.
    layers : int
        Layers the cache holds.

    Members
    -------
    kv_stream : In(stream.Signature(StructLayout({"layer": range(layers),
                                                  "position": range(max_seq),
                                                  "head": range(kv_heads), "kind": CacheKind,
                                                  "data": ArrayLayout(signed(16), head_dim)})))
        Cache writes: one key or value word.
    query : In(stream.Signature(StructLayout({"layer", "position", "head": range(heads),
                                             "q": ArrayLayout(signed(16), head_dim),
                                             "softmax": StructLayout({"gap_limit",
                                                                      "gap_shift",
                                                                      "scale": DYADIC})})))
        A query head's vector, its position and the layer's SoftmaxScale. ``gap_limit`` is at
        most ``2**score_bits - 1`` (a larger limit never binds, as no gap reaches it: the
        sequencer saturates it).
    o_stream : Out(stream.Signature(ArrayLayout(signed(attention_out bits), head_dim)))
        ``sum_s weight_s V[s]``, golden's ``out`` for this head (real value
        ``out * 2**-(15 + v fraction)``).
    formats : golden.integer.IntegerFormats
        Golden's widths for this shape.
    score_bits : int
        Width of a score (and of a gap, unsigned).
    """

    def __init__(self, config, *, heads, kv_heads, head_dim, max_seq, layers):
        for name, value in (("heads", heads), ("max_seq", max_seq), ("layers", layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if isinstance(kv_heads, bool) or not isinstance(kv_heads, int) \
                or not 1 <= kv_heads <= heads or heads % kv_heads:
            raise ValueError(f"kv_heads must be a divisor of heads ({heads}) in [1, {heads}], "
                             f"not {kv_heads!r}")
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 2 \
                or head_dim % 2:
            raise ValueError(f"head_dim must be an even integer of at least 2, not {head_dim!r}")
        self._heads, self._kv_heads, self._head_dim = heads, kv_heads, head_dim
        self._max_seq, self._layers = max_seq, layers
        # Golden's formats for this shape (hidden and ffn do not enter attention's widths).
        self.formats = integer_formats(ModelConfig(
            hidden=heads * head_dim, layers=layers, heads=heads, kv_heads=kv_heads,
            ffn=heads * head_dim, vocab=1, max_seq=max_seq))
        self.score_bits = signed_bits_for(head_dim * _PRODUCT_MAGNITUDE)
        word = data.ArrayLayout(signed(PROJECTION_BITS), head_dim)
        super().__init__({
            "kv_stream": In(stream.Signature(data.StructLayout({
                "layer": range(layers), "position": range(max_seq), "head": range(kv_heads),
                "kind": CacheKind, "data": word}))),
            "query": In(stream.Signature(data.StructLayout({
                "layer": range(layers), "position": range(max_seq), "head": range(heads),
                "q": word,
                "softmax": data.StructLayout({
                    "gap_limit": unsigned(self.score_bits),
                    "gap_shift": range(self.score_bits + 1), "scale": DYADIC})}))),
            "o_stream": Out(stream.Signature(data.ArrayLayout(
                signed(self.formats.widths["attention_out"].bits), head_dim))),
        })

    @property
    def latency(self):
        """Cycles of a query beyond its three passes' reads (see the class)."""
        # Pass 1's last score (registered after the tree), pass 2's last p, the normalisation
        # and pass 4's last products, and one cycle: four hops (taken to issue, pass 1 to 2,
        # 2 to the normalisation, pass 4 to the output) beyond the three of 3 (pos + 1).
        return (_PRODUCTS + AdderTree.latency_for(self._head_dim) + 1 + _PROBABILITY
                + _NORMALISE + _PRODUCTS + 1)

    def cycles(self, position):
        """Cycles from a query at ``position`` taken to its output offered."""
        return 3 * (position + 1) + self.latency

    def elaborate(self, platform):
        m = Module()
        widths, tables = self.formats.widths, build_tables()
        head_dim, max_seq = self._head_dim, self._max_seq
        word = data.ArrayLayout(signed(PROJECTION_BITS), head_dim)

        # The cache's address is Cat(kind, KV head, layer, position): a scan's addresses are
        # the positions over fixed low bits.
        head_bits = (self._kv_heads - 1).bit_length()
        layer_bits = (self._layers - 1).bit_length()
        row_bits = 1 + head_bits + layer_bits
        m.submodules.cache = cache = Memory(shape=word, depth=max_seq << row_bits, init=[])
        # Pass 1's scores, each replaced by its p in pass 2.
        m.submodules.buffer = buffer = Memory(shape=signed(self.score_bits), depth=max_seq,
                                              init=[])
        entries, entry_bits = self.formats.tables["exp2"]
        m.submodules.exp2 = exp2 = Memory(shape=entry_bits, depth=entries,
                                          init=[int(v) for v in tables.exp2])
        entries, entry_bits = self.formats.tables["reciprocal"]
        m.submodules.reciprocal = reciprocal = Memory(shape=entry_bits, depth=entries,
                                                      init=[int(v) for v in tables.reciprocal])

        running = Signal()          # from a query taken until its output is offered
        cache_write = cache.write_port()
        kv = self.kv_stream.payload
        m.d.comb += [self.kv_stream.ready.eq(~running),
                     cache_write.en.eq(self.kv_stream.valid & ~running),
                     cache_write.addr.eq(Cat(kv.kind, kv.head, kv.layer, kv.position)),
                     cache_write.data.eq(kv.data)]

        command = Signal.like(self.query.payload)
        kv_head = Signal(range(self._kv_heads))
        group = self._heads // self._kv_heads
        taken = self.query.valid & self.query.ready
        m.d.comb += self.query.ready.eq(~running & ~self.o_stream.valid)
        with m.If(taken):
            m.d.sync += [command.eq(self.query.payload),
                         kv_head.eq(Array(h // group for h in range(self._heads))[
                             self.query.payload.head])]

        # Issue: one position a cycle of the pass in ``step``, 0 .. pos.
        issuing = Signal()
        step = Signal(_Pass)
        index = Signal(range(max_seq))
        last = index == command.position
        control = data.StructLayout({"valid": 1, "step": _Pass, "first": 1, "last": 1,
                                     "index": range(max_seq)})
        token = Signal(control)
        m.d.comb += [token.valid.eq(issuing), token.step.eq(step), token.first.eq(index == 0),
                     token.last.eq(last), token.index.eq(index)]
        with m.If(issuing):
            m.d.sync += index.eq(index + 1)
            with m.If(last):
                m.d.sync += [issuing.eq(0), index.eq(0)]
        stages = [token]
        for n in range(1, _PROBABILITY + 1):
            stages.append(delayed(m, stages[-1], 1, f"stage{n}"))

        def at(n, pass_):
            return stages[n].valid & (stages[n].step == pass_)

        # Every rounding shift (golden's shift_round) is spread over stages (hw.rounding): the
        # half, from the shift amount, in a register of its own; the half added; the right
        # shift; the left shift. A block RAM's word is registered before anything is done with
        # it (a DP16KD without its output register delivers it late in the cycle).
        buffer_read, buffer_write = buffer.read_port(), buffer.write_port()
        cache_read = cache.read_port()
        exp2_read, reciprocal_read = exp2.read_port(), reciprocal.read_port()
        m.d.comb += buffer_read.addr.eq(index)
        fetched = Signal.like(buffer_read.data, reset_less=True)    # stage 2: passes 2 and 4
        m.d.sync += fetched.eq(buffer_read.data)
        # The cache is read in stage 4 of passes 1 (keys) and 4 (values): its word arrives in
        # stage 5 with pass 4's weight.
        m.d.comb += cache_read.addr.eq(Cat(stages[4].step == _Pass.OUTPUT, kv_head,
                                           command.layer, stages[4].index))

        # The shared products, passes 1 and 4: q[d] or the weight times the cache word's
        # element, operands in stage 6, products in stage 7 (_PRODUCTS).
        weight = Signal(widths["weight"].bits, reset_less=True)
        coefficient_bits = max(PROJECTION_BITS, widths["weight"].bits + 1)
        coefficient = Signal(data.ArrayLayout(signed(coefficient_bits), head_dim),
                             reset_less=True)
        element = Signal(word, reset_less=True)
        products = Signal(data.ArrayLayout(signed(coefficient_bits + PROJECTION_BITS),
                                           head_dim), reset_less=True)
        output = stages[5].step == _Pass.OUTPUT
        for d in range(head_dim):
            m.d.sync += [coefficient[d].eq(Mux(output, weight, command.q[d])),
                         element[d].eq(cache_read.data[d]),
                         products[d].eq(coefficient[d] * element[d])]

        # Pass 1: the tree's sum is registered as the score, in stage _PRODUCTS + tree latency
        # + 1 (the tree's terms are as wide as q[d] x K[s][d] needs; pass 4's wider products go
        # to the accumulators).
        tree = m.submodules.tree = AdderTree(count=head_dim, magnitude=_PRODUCT_MAGNITUDE)
        for d in range(head_dim):
            m.d.comb += tree.i[d].eq(products[d])
        score = Signal.like(tree.o, reset_less=True)
        m.d.sync += score.eq(tree.o)
        scored = delayed(m, stages[_PRODUCTS], tree.latency + 1, "scored")
        top = Signal(signed(self.score_bits), reset_less=True)
        scoring = scored.valid & (scored.step == _Pass.SCORES)

        # Pass 2: stage 2 the score, 3 the gap, 4 the clipped gap, 5 plus the half, 6 shifted,
        # 7 times the scale, 8 plus t's half, 9 and 10 t's right and left shifts (t, the exp2
        # ROM's address), 11 t's octave, 12 the table's entry and the octave's half, 13 plus the
        # half, 14 (_PROBABILITY) p. The shifts' amounts and halves come from the query's
        # constants, registered long before the pass starts. From octave EXP2_TABLE_BITS + 2 on,
        # exp2_lookup is 0, and so is the biased entry (of entry_bits + 1 = EXP2_TABLE_BITS + 2
        # bits) shifted that far: p needs no cut of its own.
        softmax = command.softmax
        gap = Signal(self.score_bits, reset_less=True)
        clipped = Signal(self.score_bits, reset_less=True)
        gap_biased = Signal(self.score_bits + 1, reset_less=True)
        shifted = Signal(widths["gap_shifted"].bits, reset_less=True)
        scaled = Signal(widths["gap_shifted"].bits + MANTISSA_BITS, reset_less=True)
        t_biased = Signal(len(scaled) + 1, reset_less=True)
        t_right_shifted = Signal(widths["exponent"].bits, reset_less=True)
        t = Signal(widths["exponent"].bits, reset_less=True)
        entry_bits = self.formats.tables["exp2"][1]
        entry = Signal(entry_bits, reset_less=True)
        entry_biased = Signal(entry_bits + 1, reset_less=True)
        p = Signal(widths["probability"].bits, reset_less=True)
        total = Signal(widths["probability_sum"].bits, reset_less=True)
        exponent = softmax.scale.exponent
        # A right shift beyond the product's width rounds every value to 0, as one of its
        # width + 1 does; a left shift beyond t's width leaves nothing of t.
        limit = len(scaled) + 1
        t_right = Signal(range(limit + 1), reset_less=True)
        t_left = Signal(range(len(t) + 1), reset_less=True)
        m.d.sync += [t_right.eq(Mux(exponent < -limit, limit, Mux(exponent < 0, -exponent, 0))),
                     t_left.eq(Mux(exponent > len(t), len(t), Mux(exponent > 0, exponent, 0)))]
        gap_half = register_half(m, softmax.gap_shift, len(clipped), "gap_half")
        t_half = register_half(m, t_right, len(scaled), "t_half")
        octave = delayed(m, t[EXP2_FRACTION_BITS:], 1, "octave")           # stage 11
        entry_half = register_half(m, octave, entry_bits, "entry_half")   # stage 12
        octaves = delayed(m, octave, 2, "octave_held")                    # stages 12 and 13
        m.d.sync += [
            gap.eq(top - fetched),
            clipped.eq(Mux(gap > softmax.gap_limit, softmax.gap_limit, gap)),
            scaled.eq(shifted * softmax.scale.mantissa),
            entry.eq(exp2_read.data),
        ]
        rounding_shift(m, clipped, half=gap_half, right=softmax.gap_shift, biased=gap_biased,
                       right_shifted=shifted)
        rounding_shift(m, scaled, half=t_half, right=t_right, biased=t_biased,
                       right_shifted=t_right_shifted, left=t_left, left_shifted=t)
        rounding_shift(m, entry, half=entry_half, right=octaves, biased=entry_biased,
                       right_shifted=p)
        m.d.comb += exp2_read.addr.eq(t[:EXP2_FRACTION_BITS])
        with m.If(at(_PROBABILITY, _Pass.PROBABILITIES)):
            m.d.sync += total.eq(Mux(stages[_PROBABILITY].first, 0, total) + p)

        # Both passes write the buffer: scores in pass 1, then p over them in pass 2 (the
        # entries written lag the entries read, so no score is lost).
        m.d.comb += [
            buffer_write.en.eq(scoring | at(_PROBABILITY, _Pass.PROBABILITIES)),
            buffer_write.addr.eq(Mux(scoring, scored.index, stages[_PROBABILITY].index)),
            buffer_write.data.eq(Mux(scoring, score, p)),
        ]
        with m.If(scoring):
            m.d.sync += top.eq(Mux(scored.first | (score > top), score, top))

        # Pass 3 (_NORMALISE states): the sum's bit length, the shift and its half, the half
        # added, the shift, then the dyadic (the largest score's p is 2**16, so the sum has at
        # least 17 bits and is rounded right, never shifted left). The reciprocal ROM's word
        # is registered, two cycles after the mantissa, in time for pass 4's stage 2.
        total_bits = Signal(range(len(total) + 1), reset_less=True)
        normalise_shift = Signal(range(len(total) + 1), reset_less=True)
        total_biased = Signal(len(total) + 1, reset_less=True)
        rounded = Signal(MANTISSA_BITS + 1, reset_less=True)
        mantissa = Signal(MANTISSA_BITS, reset_less=True)
        weight_right = Signal(range(_RECIPROCAL_EXPONENT + len(total)), reset_less=True)
        rcp = Signal.like(reciprocal_read.data, reset_less=True)
        m.d.comb += reciprocal_read.addr.eq(mantissa[MANTISSA_BITS - 1 - len(
            reciprocal_read.addr):MANTISSA_BITS - 1])
        m.d.sync += rcp.eq(reciprocal_read.data)
        carry = rounded[MANTISSA_BITS]

        # Pass 4: stage 2 p, 3 p x rcp, 4 plus the half, 5 the weight (with the value word);
        # stage 7 (_PRODUCTS) the products, accumulated.
        weighted = Signal(widths["probability_product"].bits, reset_less=True)
        weighted_biased = Signal(len(weighted) + 1, reset_less=True)
        weight_half = register_half(m, weight_right, len(weighted), "weight_half")
        m.d.sync += weighted.eq(fetched[:len(p)] * rcp)
        rounding_shift(m, weighted, half=weight_half, right=weight_right,
                       biased=weighted_biased, right_shifted=weight)
        out = self.o_stream.payload
        with m.If(at(_PRODUCTS, _Pass.OUTPUT)):
            for d in range(head_dim):
                m.d.sync += out[d].eq(Mux(stages[_PRODUCTS].first, 0, out[d]) + products[d])
            with m.If(stages[_PRODUCTS].last):
                m.d.sync += [self.o_stream.valid.eq(1), running.eq(0)]
        with m.If(self.o_stream.valid & self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(taken):
                    m.d.sync += [running.eq(1), issuing.eq(1), step.eq(_Pass.SCORES)]
                    m.next = "SCORES"
            with m.State("SCORES"):
                with m.If(scoring & scored.last):
                    m.d.sync += [issuing.eq(1), step.eq(_Pass.PROBABILITIES)]
                    m.next = "PROBABILITIES"
            with m.State("PROBABILITIES"):
                with m.If(at(_PROBABILITY, _Pass.PROBABILITIES) & stages[_PROBABILITY].last):
                    m.next = "LENGTH"
            with m.State("LENGTH"):
                m.d.sync += total_bits.eq(bit_length(total))
                m.next = "SHIFT"
            with m.State("SHIFT"):
                shift = (total_bits - MANTISSA_BITS).as_unsigned()
                m.d.sync += normalise_shift.eq(shift)
                normalise_half = register_half(m, shift, len(total), "normalise_half")
                m.next = "BIAS"
            with m.State("BIAS"):
                m.next = "ROUND"
            with m.State("ROUND"):
                m.next = "DYADIC"
            with m.State("DYADIC"):
                # golden.fixedpoint.dyadic: a rounding up to 2**17 adds a bit. The weight's
                # shift is -(reciprocal exponent + 15), the reciprocal exponent -33 - e.
                m.d.sync += [
                    mantissa.eq(Mux(carry, rounded >> 1, rounded)),
                    weight_right.eq(_RECIPROCAL_EXPONENT - WEIGHT_FRACTION_BITS
                                    + normalise_shift + carry),
                    issuing.eq(1), step.eq(_Pass.OUTPUT),
                ]
                m.next = "OUTPUT"
            with m.State("OUTPUT"):
                with m.If(at(_PRODUCTS, _Pass.OUTPUT) & stages[_PRODUCTS].last):
                    m.next = "IDLE"
        # The sum's half added (BIAS) and its shift (ROUND) run every cycle: the sum, its shift
        # and half hold still from SHIFT on, and only DYADIC reads the result.
        rounding_shift(m, total, half=normalise_half, right=normalise_shift,
                       biased=total_biased, right_shifted=rounded)
        return m
