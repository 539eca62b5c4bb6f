"""Attention of the integer decoder, with the KV cache in block RAM (``golden.integer.attention``
for one query position and one or more query heads of a KV head, bit for bit).

The cache holds, for every layer, position and KV head, a key (after RoPE) and a value of
``head_dim`` int16 elements, one word each; the sequencer writes them. A query is one head's
``q`` at position ``pos`` (it sees positions ``0 .. pos``) with its layer's softmax constants
(:class:`golden.integer.SoftmaxScale`, which the sequencer holds per layer and sends with each
query, so the unit keeps no table of them). The unit runs four passes:

1. scores: one key a cycle, ``head_dim`` products and an adder tree; each score goes to the
   score buffer, and the largest is kept;
2. probabilities: two scores a cycle, ``gap = top - score``, ``min(gap, gap_limit)`` shifted
   by ``gap_shift``, times the scale (``t``, in 2**-10 octaves), ``p = exp2_lookup(t)`` from
   the exp2 ROM; ``p`` replaces its score in the buffer, and the sum of every ``p`` is kept
   (a buffer word holds a pair of positions, ``2 i`` and ``2 i + 1``, so the pass reads and
   writes both in one cycle; pass 1 writes one half of a word, pass 4 reads one);
3. normalise: the sum as a dyadic (``golden.fixedpoint.dyadic``) and its reciprocal from the
   reciprocal ROM;
4. output: one position a cycle, ``weight = round(p * rcp)`` and ``head_dim`` products with the
   value, accumulated per element; then the vector is offered.

Passes 1 and 4 never overlap, so they share the ``head_dim`` multipliers (``q[d] x K[s][d]``,
then ``weight x V[s][d]``): ``head_dim + 2`` multipliers a query head of a pass, where golden's
multiplier count (``score`` and ``weighted_sum`` per element) would be ``2 head_dim + 2``. The
query heads of a KV group read the same keys: ``heads_per_pass`` of them together cost that
many times the multipliers and take the cycles of one. Pass 2 has two lanes a head, one a
position of the pair: a multiplier each. A query carries its vectors with its
position, heads and constants, so that one transfer starts it and no order between two streams
has to be kept.
"""

import itertools

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
    """``heads_per_pass`` query heads of a KV head at a time against the KV cache.

    A query taken in cycle ``c`` has its output offered in cycle ``c + cycles(pos)``, with
    ``cycles(pos) = 2 (pos + 1) + ceil((pos + 1) / 2) + latency`` (:meth:`cycles`): passes 1
    and 4 read one position a cycle and pass 2 two, and
    ``latency = 35 + AdderTree.latency_for(head_dim)`` is the score
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
        Elements a head (even, as RoPE's pairs need).
    heads_per_pass : int
        Query heads a query holds, all of one KV head (a divisor of ``heads / kv_heads``): the
        unit makes ``heads_per_pass x head_dim`` products a cycle.
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
    query : In(stream.Signature(StructLayout({"layer", "position",
                                             "head": range(heads / heads_per_pass),
                                             "q": ArrayLayout(ArrayLayout(signed(16), head_dim),
                                                              heads_per_pass),
                                             "softmax": StructLayout({"gap_limit",
                                                                      "gap_shift",
                                                                      "scale": DYADIC})})))
        Query heads ``head x heads_per_pass + j``'s vectors ``q[j]``, their position and the
        layer's SoftmaxScale. ``gap_limit`` is at
        most ``2**score_bits - 1`` (a larger limit never binds, as no gap reaches it: the
        sequencer saturates it).
    o_stream : Out(stream.Signature(ArrayLayout(ArrayLayout(signed(attention_out bits),
                                                            head_dim), heads_per_pass)))
        ``sum_s weight_s V[s]`` of each of the query's heads, golden's ``out`` for that head
        (real value ``out * 2**-(15 + v fraction)``).
    formats : golden.integer.IntegerFormats
        Golden's widths for this shape.
    score_bits : int
        Width of a score (and of a gap, unsigned).
    """

    def __init__(self, config, *, heads, kv_heads, head_dim, max_seq, layers,
                 heads_per_pass=1):
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
        group = heads // kv_heads
        if isinstance(heads_per_pass, bool) or not isinstance(heads_per_pass, int) \
                or not 1 <= heads_per_pass <= group or group % heads_per_pass:
            raise ValueError(f"heads_per_pass must be a divisor of heads / kv_heads ({group}) "
                             f"in [1, {group}], not {heads_per_pass!r}")
        self._heads, self._kv_heads, self._head_dim = heads, kv_heads, head_dim
        self._max_seq, self._layers, self.heads_per_pass = max_seq, layers, heads_per_pass
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
                "layer": range(layers), "position": range(max_seq),
                "head": range(heads // heads_per_pass),
                "q": data.ArrayLayout(word, heads_per_pass),
                "softmax": data.StructLayout({
                    "gap_limit": unsigned(self.score_bits),
                    "gap_shift": range(self.score_bits + 1), "scale": DYADIC})}))),
            "o_stream": Out(stream.Signature(data.ArrayLayout(data.ArrayLayout(
                signed(self.formats.widths["attention_out"].bits), head_dim),
                heads_per_pass))),
        })

    @property
    def latency(self):
        """Cycles of a query beyond its three passes' reads (see the class)."""
        # Pass 1's last score (registered after the tree), pass 2's last p, the normalisation
        # and pass 4's last products, and one cycle: four hops (taken to issue, pass 1 to 2,
        # 2 to the normalisation, pass 4 to the output) beyond the passes' issue cycles.
        return (_PRODUCTS + AdderTree.latency_for(self._head_dim) + 1 + _PROBABILITY
                + _NORMALISE + _PRODUCTS + 1)

    def cycles(self, position):
        """Cycles from a query at ``position`` taken to its output offered."""
        return 2 * (position + 1) + (position + 2) // 2 + self.latency

    def elaborate(self, platform):
        m = Module()
        widths, tables = self.formats.widths, build_tables()
        head_dim, max_seq, per_pass = self._head_dim, self._max_seq, self.heads_per_pass
        heads = range(per_pass)             # the query's heads, each with a lane of its own
        word = data.ArrayLayout(signed(PROJECTION_BITS), head_dim)

        # The cache's address is Cat(kind, KV head, layer, position): a scan's addresses are
        # the positions over fixed low bits.
        head_bits = (self._kv_heads - 1).bit_length()
        layer_bits = (self._layers - 1).bit_length()
        row_bits = 1 + head_bits + layer_bits
        m.submodules.cache = cache = Memory(shape=word, depth=max_seq << row_bits, init=[])
        # Pass 1's scores, each replaced by its p in pass 2: a word holds every head's of a pair
        # of positions, 2 i in half 0 and 2 i + 1 in half 1.
        scores = data.ArrayLayout(signed(self.score_bits), per_pass)
        m.submodules.buffer = buffer = Memory(shape=data.ArrayLayout(scores, 2),
                                              depth=(max_seq + 1) // 2, init=[])
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
        passes_a_kv_head = self._heads // self._kv_heads // per_pass
        taken = self.query.valid & self.query.ready
        m.d.comb += self.query.ready.eq(~running & ~self.o_stream.valid)
        with m.If(taken):
            m.d.sync += [command.eq(self.query.payload),
                         kv_head.eq(Array(h // passes_a_kv_head
                                          for h in range(self._heads // per_pass))[
                             self.query.payload.head])]

        # Issue: a position a cycle of the pass in ``step``, 0 .. pos; in pass 2 a pair of
        # positions, ``index`` and ``index + 1`` (``second``: the latter is within pos).
        issuing = Signal()
        step = Signal(_Pass)
        index = Signal(range(max_seq))
        pairs = step == _Pass.PROBABILITIES
        last = Mux(pairs, (index | 1) >= command.position, index == command.position)
        control = data.StructLayout({"valid": 1, "step": _Pass, "first": 1, "last": 1,
                                     "second": 1, "index": range(max_seq)})
        token = Signal(control)
        m.d.comb += [token.valid.eq(issuing), token.step.eq(step), token.first.eq(index == 0),
                     token.last.eq(last), token.second.eq(index != command.position),
                     token.index.eq(index)]
        with m.If(issuing):
            m.d.sync += index.eq(index + Mux(pairs, 2, 1))
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
        buffer_read, buffer_write = buffer.read_port(), buffer.write_port(granularity=1)
        cache_read = cache.read_port()
        # Pass 4 reads a cycle ahead of its issue (its first word while the normalisation ends,
        # when ``index`` is 0), so that its position's half is picked from a registered word
        # into a register of its own: a multiplexer in front of the weight's multiplier kept
        # the unit under 100 MHz.
        ahead = issuing & (step == _Pass.OUTPUT)
        m.d.comb += buffer_read.addr.eq(Mux(ahead, index + 1, index) >> 1)
        fetched = Signal.like(buffer_read.data, reset_less=True)    # stage 2 of pass 2, 1 of 4
        chosen = Signal(scores, reset_less=True)                    # stage 2 of pass 4
        m.d.sync += [fetched.eq(buffer_read.data),
                     chosen.eq(Mux(stages[1].index[0], fetched[1], fetched[0]))]
        # The cache is read in stage 4 of passes 1 (keys) and 4 (values): its word arrives in
        # stage 5 with pass 4's weights.
        m.d.comb += cache_read.addr.eq(Cat(stages[4].step == _Pass.OUTPUT, kv_head,
                                           command.layer, stages[4].index))

        # The shared products, passes 1 and 4: q[d] or the weight times the cache word's
        # element, a row of them a head, operands in stage 6, products in stage 7 (_PRODUCTS).
        weight = [Signal(widths["weight"].bits, name=f"weight{j}", reset_less=True)
                  for j in heads]
        coefficient_bits = max(PROJECTION_BITS, widths["weight"].bits + 1)
        coefficient = Signal(data.ArrayLayout(data.ArrayLayout(signed(coefficient_bits),
                                                               head_dim), per_pass),
                             reset_less=True)
        element = Signal(word, reset_less=True)
        products = Signal(data.ArrayLayout(data.ArrayLayout(
            signed(coefficient_bits + PROJECTION_BITS), head_dim), per_pass), reset_less=True)
        output = stages[5].step == _Pass.OUTPUT
        m.d.sync += element.eq(cache_read.data)
        for j in heads:
            for d in range(head_dim):
                m.d.sync += [coefficient[j][d].eq(Mux(output, weight[j], command.q[j][d])),
                             products[j][d].eq(coefficient[j][d] * element[d])]

        # Pass 1: each head's tree sum is registered as its score, in stage _PRODUCTS + tree
        # latency + 1 (the tree's terms are as wide as q[d] x K[s][d] needs; pass 4's wider
        # products go to the accumulators).
        score = Signal(scores, reset_less=True)
        for j in heads:
            tree = m.submodules[f"tree{j}"] = AdderTree(count=head_dim,
                                                        magnitude=_PRODUCT_MAGNITUDE)
            m.d.comb += [tree.i[d].eq(products[j][d]) for d in range(head_dim)]
            m.d.sync += score[j].eq(tree.o)
        scored = delayed(m, stages[_PRODUCTS], AdderTree.latency_for(head_dim) + 1, "scored")
        top = Signal.like(score, reset_less=True)
        scoring = scored.valid & (scored.step == _Pass.SCORES)

        # Pass 2, two lanes a head (a position of the pair each): stage 2 the score, 3 the gap,
        # 4 the clipped gap, 5 plus the half, 6 shifted, 7 times the scale, 8 plus t's half, 9
        # and 10 t's right and left shifts (t, the exp2 ROM's address), 11 t's octave, 12 the
        # table's entry and the octave's half, 13 plus the half, 14 (_PROBABILITY) p. The
        # shifts' amounts and halves come from the query's constants, registered long before
        # the pass starts. From octave EXP2_TABLE_BITS + 2 on, exp2_lookup is 0, and so is the
        # biased entry (of entry_bits + 1 = EXP2_TABLE_BITS + 2 bits) shifted that far: p needs
        # no cut of its own.
        softmax = command.softmax
        exponent = softmax.scale.exponent
        shifted_bits = widths["gap_shifted"].bits
        scaled_bits = shifted_bits + MANTISSA_BITS
        t_bits = widths["exponent"].bits
        # A right shift beyond the product's width rounds every value to 0, as one of its
        # width + 1 does; a left shift beyond t's width leaves nothing of t.
        limit = scaled_bits + 1
        t_right = Signal(range(limit + 1), reset_less=True)
        t_left = Signal(range(t_bits + 1), reset_less=True)
        m.d.sync += [t_right.eq(Mux(exponent < -limit, limit, Mux(exponent < 0, -exponent, 0))),
                     t_left.eq(Mux(exponent > t_bits, t_bits, Mux(exponent > 0, exponent, 0)))]
        gap_half = register_half(m, softmax.gap_shift, self.score_bits, "gap_half")
        t_half = register_half(m, t_right, scaled_bits, "t_half")
        entry_bits = self.formats.tables["exp2"][1]
        p = Signal(data.ArrayLayout(data.ArrayLayout(widths["probability"].bits, per_pass), 2),
                   reset_less=True)
        total = [Signal(widths["probability_sum"].bits, name=f"total{j}", reset_less=True)
                 for j in heads]
        def lane(name, width, half, j):
            return Signal(width, name=f"{name}{half}_{j}", reset_less=True)

        for half, j in itertools.product(range(2), heads):
            gap = lane("gap", self.score_bits, half, j)
            clipped = lane("clipped", self.score_bits, half, j)
            gap_biased = lane("gap_biased", self.score_bits + 1, half, j)
            shifted = lane("shifted", shifted_bits, half, j)
            scaled = lane("scaled", scaled_bits, half, j)
            t_biased = lane("t_biased", scaled_bits + 1, half, j)
            t_right_shifted, t = lane("t_right_shifted", t_bits, half, j), lane("t", t_bits,
                                                                                 half, j)
            entry = lane("entry", entry_bits, half, j)
            entry_biased = lane("entry_biased", entry_bits + 1, half, j)
            exp2_read = exp2.read_port()
            octave = delayed(m, t[EXP2_FRACTION_BITS:], 1, f"octave{half}_{j}")    # stage 11
            entry_half = register_half(m, octave, entry_bits,
                                       f"entry_half{half}_{j}")                      # stage 12
            octaves = delayed(m, octave, 2, f"octave_held{half}_{j}")         # stages 12, 13
            m.d.sync += [
                gap.eq(top[j] - fetched[half][j]),
                clipped.eq(Mux(gap > softmax.gap_limit, softmax.gap_limit, gap)),
                scaled.eq(shifted * softmax.scale.mantissa),
                entry.eq(exp2_read.data),
            ]
            rounding_shift(m, clipped, half=gap_half, right=softmax.gap_shift,
                           biased=gap_biased, right_shifted=shifted)
            rounding_shift(m, scaled, half=t_half, right=t_right, biased=t_biased,
                           right_shifted=t_right_shifted, left=t_left, left_shifted=t)
            rounding_shift(m, entry, half=entry_half, right=octaves, biased=entry_biased,
                           right_shifted=p[half][j])
            m.d.comb += exp2_read.addr.eq(t[:EXP2_FRACTION_BITS])
        # A pair's second p counts only within pos (past it, the half holds an old score).
        finished = stages[_PROBABILITY]
        probabilities = at(_PROBABILITY, _Pass.PROBABILITIES)
        for j in heads:
            with m.If(probabilities):
                m.d.sync += total[j].eq(Mux(finished.first, 0, total[j]) + p[0][j]
                                        + Mux(finished.second, p[1][j], 0))

        # Both passes write the buffer: each score to its half of its pair's word in pass 1,
        # then a pair's p over both halves in pass 2 (the words written lag the words read, so
        # no score is lost).
        m.d.comb += [
            buffer_write.en.eq(Mux(scoring, Mux(scored.index[0], 0b10, 0b01),
                                   Mux(probabilities, 0b11, 0b00))),
            buffer_write.addr.eq(Mux(scoring, scored.index, finished.index) >> 1),
        ]
        for half, j in itertools.product(range(2), heads):
            m.d.comb += buffer_write.data[half][j].eq(Mux(scoring, score[j], p[half][j]))
        for j in heads:
            with m.If(scoring):
                m.d.sync += top[j].eq(Mux(scored.first | (score[j] > top[j]), score[j],
                                          top[j]))

        # Pass 3 (_NORMALISE states), a lane a head: the sum's bit length, the shift and its
        # half, the half added, the shift, then the dyadic (the largest score's p is 2**16, so
        # the sum has at least 17 bits and is rounded right, never shifted left). The
        # reciprocal ROM's word is registered, two cycles after the mantissa, in time for pass
        # 4's stage 2. Pass 4: stage 2 p, 3 p x rcp, 4 plus the half, 5 the weight (with the
        # value word); stage 7 (_PRODUCTS) the products, accumulated.
        sum_bits = len(total[0])
        total_bits = [Signal(range(sum_bits + 1), name=f"total_bits{j}", reset_less=True)
                      for j in heads]
        normalise_shift = [Signal(range(sum_bits + 1), name=f"normalise_shift{j}",
                                  reset_less=True) for j in heads]
        rounded = [Signal(MANTISSA_BITS + 1, name=f"rounded{j}", reset_less=True)
                   for j in heads]
        mantissa = [Signal(MANTISSA_BITS, name=f"mantissa{j}", reset_less=True) for j in heads]
        weight_right = [Signal(range(_RECIPROCAL_EXPONENT + sum_bits), name=f"weight_right{j}",
                               reset_less=True) for j in heads]
        for j in heads:
            reciprocal_read = reciprocal.read_port()
            rcp = Signal.like(reciprocal_read.data, name=f"rcp{j}", reset_less=True)
            m.d.comb += reciprocal_read.addr.eq(mantissa[j][
                MANTISSA_BITS - 1 - len(reciprocal_read.addr):MANTISSA_BITS - 1])
            m.d.sync += rcp.eq(reciprocal_read.data)
            weighted = Signal(widths["probability_product"].bits, name=f"weighted{j}",
                              reset_less=True)
            weighted_biased = Signal(len(weighted) + 1, name=f"weighted_biased{j}",
                                     reset_less=True)
            weight_half = register_half(m, weight_right[j], len(weighted), f"weight_half{j}")
            m.d.sync += weighted.eq(chosen[j][:len(p[0][j])] * rcp)
            rounding_shift(m, weighted, half=weight_half, right=weight_right[j],
                           biased=weighted_biased, right_shifted=weight[j])
        out = self.o_stream.payload
        with m.If(at(_PRODUCTS, _Pass.OUTPUT)):
            for j in heads:
                for d in range(head_dim):
                    m.d.sync += out[j][d].eq(Mux(stages[_PRODUCTS].first, 0, out[j][d])
                                             + products[j][d])
            with m.If(stages[_PRODUCTS].last):
                m.d.sync += [self.o_stream.valid.eq(1), running.eq(0)]
        with m.If(self.o_stream.valid & self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)

        normalise_half = []
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
                m.d.sync += [total_bits[j].eq(bit_length(total[j])) for j in heads]
                m.next = "SHIFT"
            with m.State("SHIFT"):
                for j in heads:
                    shift = (total_bits[j] - MANTISSA_BITS).as_unsigned()
                    m.d.sync += normalise_shift[j].eq(shift)
                    normalise_half.append(register_half(m, shift, sum_bits,
                                                        f"normalise_half{j}"))
                m.next = "BIAS"
            with m.State("BIAS"):
                m.next = "ROUND"
            with m.State("ROUND"):
                m.next = "DYADIC"
            with m.State("DYADIC"):
                # golden.fixedpoint.dyadic: a rounding up to 2**17 adds a bit. The weight's
                # shift is -(reciprocal exponent + 15), the reciprocal exponent -33 - e.
                for j in heads:
                    carry = rounded[j][MANTISSA_BITS]
                    m.d.sync += [
                        mantissa[j].eq(Mux(carry, rounded[j] >> 1, rounded[j])),
                        weight_right[j].eq(_RECIPROCAL_EXPONENT - WEIGHT_FRACTION_BITS
                                           + normalise_shift[j] + carry),
                    ]
                m.d.sync += [issuing.eq(1), step.eq(_Pass.OUTPUT)]
                m.next = "OUTPUT"
            with m.State("OUTPUT"):
                with m.If(at(_PRODUCTS, _Pass.OUTPUT) & stages[_PRODUCTS].last):
                    m.next = "IDLE"
        # The sum's half added (BIAS) and its shift (ROUND) run every cycle: the sum, its shift
        # and half hold still from SHIFT on, and only DYADIC reads the result.
        for j in heads:
            rounding_shift(m, total[j], half=normalise_half[j], right=normalise_shift[j],
                           biased=Signal(sum_bits + 1, name=f"total_biased{j}",
                                         reset_less=True),
                           right_shifted=rounded[j])
        return m
