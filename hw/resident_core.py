"""The resident decoder's core: one token through the whole integer decoder
(``golden.integer.IntegerModel``, bit for bit), its weights and constants resident on chip.

The core runs the layer program of docs/design.md ("Resident core") with the stages built
for it: the embedding lookup and LM head (:class:`hw.head.LmHead`), the
:class:`hw.bitlinear_block.BitLinearBlock` (a norm and the BitLinears that read its ``x_q``,
on a bank group the core shares with the device's offload commands), :class:`hw.rope.Rope`,
:class:`hw.attention.Attention` with the KV cache and :class:`hw.ffn.FfnInner`. One FSM starts
them one after another and moves vectors between them through registers: ``H`` (the residual
stream, int32), the raw and rotated query and key heads and the value heads (int16).

Everything that depends on the weights rather than the shape sits in the constants memory,
one record a layer and one for the model (:meth:`ResidentCore.constant_records` packs them
from ``golden.integer.IntegerWeights``); the matrices' places in the banks
(:func:`hw.placement.place`) and the loop counts are fixed by the shape at elaboration.
"""

import functools

import numpy as np
from amaranth import Array, Cat, Module, Mux, Shape, Signal, signed
from amaranth.hdl import Fragment
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.integer import (EMBEDDING_BITS, GAIN_BITS, PROJECTION_BITS, RESIDUAL_BITS,
                            WEIGHT_FRACTION_BITS)
from golden.model import ATTENTION_INPUTS, MLP_INPUTS, linear_shapes, norm_sizes

from .attention import Attention, CacheKind
from .bitlinear_block import BitLinearBlock
from .dyadic import DYADIC
from .ffn import FfnInner
from .head import EMBED_SHIFT, LmHead
from .norm_stage import X_EXPONENT_BITS, NormStage, gain_bases
from .placement import MappingError, place
from .rope import Rope
from .words import pack_ints

__all__ = ["LAYER_STAGES", "NORMS", "LINEARS", "LOAD_PORTS", "ResidentCore",
           "largest_divisor", "layout_core", "load_ports"]

# A layer's norms and BitLinears in the order of its constants record.
NORMS = ("input_layernorm", "self_attn.attn_sub_norm", "post_attention_layernorm",
         "mlp.ffn_sub_norm")
LINEARS = tuple(f"self_attn.{name}" for name in ATTENTION_INPUTS + ("o_proj",)) \
    + tuple(f"mlp.{name}" for name in MLP_INPUTS + ("down_proj",))

# The stages of a layer in ResidentCore.stage_cycles, in the order they run.
LAYER_STAGES = ("loads", "qkv", "cache", "attention", "o", "gate_up", "down")

_EMBED_SHIFT_MAX = (1 << (EMBED_SHIFT.width - 1)) - 1
_HEAD_LANES = 128


def largest_divisor(count, most):
    """The largest divisor of ``count`` up to ``most``: the attention units a core builds for
    ``count`` KV heads (each unit its share of them), and the query heads of a KV head that a
    unit takes a pass."""
    return max(n for n in range(1, most + 1) if not count % n)


@functools.lru_cache(maxsize=None)
def layout_core(config):
    """The core of ``config``, elaborated once (so that it is used) for what the host needs
    of it: its load ports' layouts, gain bases, placements and :meth:`ResidentCore.image`."""
    core = ResidentCore(config)
    Fragment.get(core, None)
    return core


# The ports the host loads the core's memories through, each with the field that addresses an
# item (hw.commands names them as LOAD_TENSOR's tensors).
LOAD_PORTS = {"gain_stream": "index", "emb_stream": "addr", "scale_stream": "addr",
              "step_stream": "addr", "const_stream": "addr"}


def load_ports(config):
    """``{port: (items, item bits)}`` of the core's :data:`LOAD_PORTS`, read off its ports."""
    members = layout_core(config).signature.members
    ports = {}
    for port, address in LOAD_PORTS.items():
        payload = members[port].signature.members["payload"].shape
        items = payload[address].shape
        ports[port] = (items.stop if isinstance(items, range) else 1 << items.width,
                       Shape.cast(payload["data"].shape).width)
    return ports


class _Op:
    """The block operations of the layer program (a norm and the BitLinears reading it); KV is
    QKV without q, for the last layer of a prompt token before the last."""
    QKV, O, GATE_UP, DOWN, FINAL, KV = range(6)


class ResidentCore(wiring.Component):
    """``start`` runs one token at a position through every layer, filling the KV cache;
    with ``last`` it also runs the final norm and the LM head and offers the greedy token.

    A prompt is its tokens at positions ``0, 1, ...`` one after another, the last with
    ``last``; each decoded token then goes in at the next position with ``last`` (the cache of
    the positions before it must have been filled by this core). The loads (gains, embedding,
    row scales, RoPE steps, constants, and the weights through the bank group's own port) are
    taken between tokens.

    Parameters
    ----------
    config : hw.config.Config
        The device, with resident units: the core is built for ``config.resident``'s shape
        (``rope_theta`` and ``eps`` reach it only through the loaded steps and constants), and
        its bank group holds every matrix (:func:`hw.placement.place`).
    lanes : int
        The BitLinear block's results a beat, the FFN's elements a beat and the embedding
        lookup's (a power of two dividing ``hidden``, ``ffn``, ``kv_heads * head_dim`` and
        ``pim.lanes``).
    attention_units : int
        At most this many :class:`hw.attention.Attention` units, each with its share of the
        KV heads (its own part of the cache) and their query heads, run a query each at once:
        the core builds the largest count up to it that divides ``kv_heads``
        (:attr:`attention_units`). Each unit adds ``heads_per_pass x (head_dim + 2)``
        multipliers; the cache's block RAM is the same in all.
    heads_per_pass : int
        At most this many query heads of a KV head in one query of a unit, which reads each
        key and value once for all of them: the largest divisor of ``heads / kv_heads`` up to
        it (:attr:`heads_per_pass`).

    Members
    -------
    gain_stream : In
        The norms' gains (:class:`hw.bitlinear_block.BitLinearBlock`, at :attr:`bases`).
    emb_stream, scale_stream : In
        The tied embedding and its row scales (:class:`hw.head.LmHead`).
    step_stream : In
        RoPE's phase steps (:class:`hw.rope.Rope`).
    const_stream : In(stream.Signature(StructLayout({"addr": range(layers + 1),
                                                    "data": constants_layout})))
        Constant records: layer ``l`` at ``l``, the model's at ``layers``
        (:meth:`constant_records`).
    chunk_stream, cmd_stream : Out;  acc_stream : In
        To and from the bank group (:class:`hw.bitlinear_block.BitLinearBlock`).
    start : In(stream.Signature(StructLayout({"token": range(vocab),
                                             "position": range(max_seq), "last": 1})))
    o_stream : Out(stream.Signature(StructLayout({"token": range(vocab), "logit": ...})))
        The greedy token after a ``last`` token, and its integer logit.
    logit_addr : In(range(vocab));  logit : Out(signed(...))
        The last ``last`` token's logits, read back (:class:`hw.head.LmHead`'s, row
        ``logit_addr``'s the cycle after); read them while the core is idle.
    busy : Out(1)
        A token is running.
    attention_units, heads_per_pass : int
        The attention units built, and the query heads each takes a pass.
    head_lanes : int
        The LM head's products a cycle: the largest multiple of ``pim.lanes`` up to 128 that
        divides ``hidden`` (a row in as few words as that allows).
    """

    def __init__(self, config, *, lanes=4, attention_units=2, heads_per_pass=2):
        model = config.resident
        if model is None:
            raise ValueError("config.resident is None: the device has no resident units")
        head_dim = model.head_dim
        if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1 \
                or lanes & (lanes - 1) or any(v % lanes for v in (
                    model.hidden, model.ffn, model.kv_heads * head_dim, config.pim.lanes)):
            raise ValueError(f"lanes must be a power of two dividing hidden, ffn, kv_heads x "
                             f"head_dim and pim.lanes, not {lanes!r}")
        for name, value in (("attention_units", attention_units),
                            ("heads_per_pass", heads_per_pass)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        self._config, self._model, self._head_dim, self.lanes = config, model, head_dim, lanes
        # Config keeps hidden, ffn and head_dim multiples of pim.lanes, and room in the banks.
        self.placements = place(linear_shapes(model), config)
        self._block = BitLinearBlock(config, hidden=model.hidden, ffn=model.ffn,
                                     layers=model.layers, out_bits=RESIDUAL_BITS, lanes=lanes)
        # q's and k's rotations, each on a unit of its own, so that k's pairs need not wait
        # behind q's; two pairs a cycle where a head's pairs divide (a GEMV delivers
        # ``banks / words`` elements a cycle: 4 on the shipped shape, two pairs' worth).
        self._rope_lanes = largest_divisor(head_dim // 2, 2)
        self._ropes = tuple(Rope(config, head_dim=head_dim, max_seq=model.max_seq,
                                 lanes=self._rope_lanes) for _ in range(2))
        self.attention_units = units = largest_divisor(model.kv_heads, attention_units)
        self.heads_per_pass = largest_divisor(model.heads // model.kv_heads, heads_per_pass)
        # Each unit's queries a layer, one a round.
        self._rounds = model.heads // units // self.heads_per_pass
        self._attentions = [Attention(config, heads=model.heads // units,
                                      kv_heads=model.kv_heads // units, head_dim=head_dim,
                                      max_seq=model.max_seq, layers=model.layers,
                                      heads_per_pass=self.heads_per_pass)
                            for _ in range(units)]
        self._attention = self._attentions[0]
        self._ffn = FfnInner(config, ffn=model.ffn, lanes=lanes)
        # The head reads a whole row in as few words as it can: up to _HEAD_LANES products a
        # cycle, a multiple of the banks' lanes (x_q's chunks) dividing hidden.
        self.head_lanes = max(n for n in range(config.pim.lanes, model.hidden + 1,
                                               config.pim.lanes)
                              if not model.hidden % n and n <= max(_HEAD_LANES, config.pim.lanes))
        # A lookup offers as many elements a cycle as the linear stage's beats hold.
        self._head = LmHead(config, hidden=model.hidden, vocab=model.vocab,
                            lanes=self.head_lanes, embed_lanes=lanes)
        self.bases = self._block.bases

        softmax = self._attention.signature.members["query"].signature.members["payload"] \
            .shape["softmax"].shape
        norm = data.StructLayout({"gain_base": range(self._block_gain_words()),
                                  "fraction": signed(X_EXPONENT_BITS),
                                  "eps_k": DYADIC})
        self.layer_layout = data.StructLayout({
            "norms": data.ArrayLayout(norm, len(NORMS)),
            "linears": data.ArrayLayout(DYADIC, len(LINEARS)),
            "o_exponent": signed(X_EXPONENT_BITS),     # -(15 + v's fraction)
            "down_offset": signed(X_EXPONENT_BITS),    # -(2 gate's + up's fraction)
            "softmax": softmax})
        self.model_layout = data.StructLayout({
            "residual_exponent": signed(X_EXPONENT_BITS),  # -residual_fraction
            "embed_shift": EMBED_SHIFT,
            "norm": norm,
            "head": DYADIC})
        self.constants_layout = data.UnionLayout({"layer": self.layer_layout,
                                                  "model": self.model_layout})
        members = {**self._block.signature.members, **self._head.signature.members,
                   **self._ropes[0].signature.members}
        super().__init__({
            "gain_stream": members["gain_stream"],
            "emb_stream": members["emb_stream"],
            "scale_stream": members["scale_stream"],
            "step_stream": members["step_stream"],
            "const_stream": In(stream.Signature(data.StructLayout({
                "addr": range(model.layers + 1), "data": self.constants_layout}))),
            "chunk_stream": members["chunk_stream"],
            "cmd_stream": members["cmd_stream"],
            "acc_stream": members["acc_stream"],
            "start": In(stream.Signature(data.StructLayout({
                "token": range(model.vocab), "position": range(model.max_seq), "last": 1}))),
            "o_stream": Out(self._head.signature.members["o_stream"].signature),
            "logit_addr": self._head.signature.members["logit_addr"],
            "logit": self._head.signature.members["logit"],
            "busy": Out(1),
        })

    def stage_cycles(self, position, last):
        """The cycles of a token at ``position`` by stage, started from IDLE, from its start
        taken to the core idle (``last`` false, no next start offered) or its greedy token
        offered (``last``), without back-pressure on the token: ``{stage: cycles}``, every
        layer's summed (a prompt offered back to back: :meth:`prompt_cycles`). Each is the
        FSM's states over the units' own cycle formulas, one state after another:

        - ``embed``: the start, RoPE's and the lookup's handshakes, then the lookup's latency
          and ``hidden`` elements, :attr:`lanes` a cycle;
        - ``loads``: each operation's command, and in the first layer H into the norm's buffer,
          a bank word a cycle (o and down write their H there as it is made);
        - ``qkv``, ``o``, ``gate_up``, ``down``: :meth:`BitLinearBlock.cycles` and a cycle for
          its busy to fall (the FFN's latency after gate and up instead: its last word goes to
          the norm then); ``qkv`` is q's or k's rotation instead where that ends later (each
          on its RoPE unit, a beat of pairs a cycle, each beat once its last second element's
          beat is in, then the rotation's latency: :meth:`_rotated`);
        - ``cache``: a key and a value word a KV head of a unit, every unit's at once;
        - ``attention``: a round a query of each attention unit (:attr:`heads_per_pass`
          query heads; ``heads / (attention_units x heads_per_pass)`` rounds): the queries'
          handshake, :meth:`Attention.cycles` and the outputs' words into the norm, one unit's
          after another;
        - ``head``: the final norm's command and the norm (a ``norm_only`` operation, until
          its last ``x_q`` word is taken: the head needs no factor), x_q's words, the scan's
          handshake, a row a ``words`` cycles and the head's latency; without ``last``, the
          cycle in which the core goes idle.

        Without ``last`` (a prompt token before the last) the last layer computes only k and v
        (its ``qkv`` is the block's two GEMVs and k's rotation) and stops after its cache
        writes: its query,
        attention, o, gate and up, and down would feed only that token's logits.
        """
        model, lanes = self._model, self._config.pim.lanes
        hidden_words = model.hidden // lanes
        stages = {"embed": self._embed_cycles, **dict.fromkeys(LAYER_STAGES, 0)}
        for layer in self.layer_cycles(position, last):
            for stage, cycles in layer.items():
                stages[stage] += cycles
        if last:
            x_q = NormStage.x_q_cycles(hidden_words, self._config.pim.lanes)
            stages["head"] = (1 + x_q + model.hidden // self.head_lanes
                              + 1 + model.vocab * self._head.words + self._head.latency)
        else:
            stages["head"] = 1
        return stages

    @property
    def _embed_cycles(self):
        """:meth:`stage_cycles`'s ``embed``: from a start taken in IDLE to the first LOAD."""
        return 2 + self._head.embed_cycles

    def layer_cycles(self, position, last):
        """The layer stages of :meth:`stage_cycles` (``loads`` to ``down``), one dict a layer;
        without ``last`` the last layer's has only ``loads``, ``qkv`` (k's and v's GEMVs, and
        k's rotation) and ``cache``."""
        fixed, kv_only = self._fixed_layer_cycles
        units = self.attention_units
        attention = self._rounds * (
            1 + self._attention.cycles(position)
            + units * self.heads_per_pass * (self._head_dim // self._config.pim.lanes))
        full = {stage: attention if stage == "attention" else fixed[stage]
                for stage in LAYER_STAGES}
        layers = [dict(full) for _ in range(self._model.layers - 1)]
        layers.append(dict(full if last else kv_only))
        # Only the first layer loads H into the norm's buffer: after it, each o and down writes
        # its H there as it goes.
        layers[0]["loads"] += self._model.hidden // self._config.pim.lanes
        return layers

    @functools.cached_property
    def _fixed_layer_cycles(self):
        """The stages of :meth:`layer_cycles` that no position changes: a full layer's (all but
        ``attention``) and a KV operation's."""
        model, lanes = self._model, self._config.pim.lanes
        hidden_words, ffn_words = model.hidden // lanes, model.ffn // lanes
        # The linear stage's formula holds while a row slot's reads outlast its result beats.
        banks = self._config.pim.banks
        if min(hidden_words, ffn_words) * self.lanes < banks:
            least = -(-banks // self.lanes) * lanes
            raise MappingError(f"the resident core's cycle model needs resident.hidden and "
                               f"resident.ffn of at least {least} on this device (a row's "
                               f"{banks} results leave {self.lanes} a beat), not "
                               f"{model.hidden} and {model.ffn}")
        block = self._block
        linear = {name.rsplit(".", 1)[1]: placement.n for name, placement
                  in self.placements.items() if name.startswith("layers.0.")}
        q_start, k_start, _ = block.gemv_starts(hidden_words, [linear["q_proj"],
                                                               linear["k_proj"],
                                                               linear["v_proj"]])
        k_elements = model.kv_heads * self._head_dim
        q_rotated = self._rotated(q_start, model.hidden)
        k_rotated = self._rotated(k_start, k_elements)
        k_alone_rotated = self._rotated(block.first_start(hidden_words), k_elements)
        cache = 2 * (model.kv_heads // self.attention_units)    # every unit's at once
        full = {
            # The four commands (and in the first layer H into the norm's buffer: layer_cycles).
            "loads": 4,
            "qkv": max(block.cycles(hidden_words, [linear["q_proj"], linear["k_proj"],
                                                   linear["v_proj"]]) + 1, q_rotated, k_rotated),
            "cache": cache,
            "o": block.cycles(hidden_words, [linear["o_proj"]]) + 1,
            "gate_up": (block.cycles(hidden_words, [linear["gate_proj"], linear["up_proj"]])
                        + self._ffn.latency),
            "down": block.cycles(ffn_words, [linear["down_proj"]]) + 1,
        }
        # Without ``last``, the last layer ends with its cache writes.
        kv_only = {"loads": 1,                                # KV's command
                   "qkv": max(block.cycles(hidden_words, [linear["k_proj"], linear["v_proj"]])
                              + 1, k_alone_rotated),
                   "cache": cache}
        return full, kv_only

    def _rotated(self, start, elements):
        """The cycle a rotation of ``elements`` (whole heads) on its RoPE unit is noted done,
        counted like :meth:`BitLinearBlock.cycles`: a beat of pairs is offered the cycle after
        its last second element's beat (the vector's GEMV starts after ``start`` cycles, its
        row ``e``'s beat :meth:`BitLinearBlock.linear_cycles` ``(words, e + 1)`` later) and
        after the beat before it; then the rotation's latency."""
        words = self._model.hidden // self._config.pim.lanes
        half, step = self._head_dim // 2, self._rope_lanes
        issued = 0
        for head in range(elements // self._head_dim):
            for i in range(step - 1, half, step):
                second = head * self._head_dim + i + half
                issued = max(issued + 1,
                             start + self._block.linear_cycles(words, second + 1) + 1)
        return issued + Rope.LATENCY

    def prompt_cycles(self, length):
        """Cycles of a prompt of ``length`` tokens whose starts are offered back to back (as
        GENERATE offers them), from the first start taken to the greedy token offered.

        Each token after the first is taken ahead, in its predecessor's last layer: that
        layer's KV operation (its command, GEMVs, k's rotation and cache writes) runs while
        the token's embedding is looked up into H. From the last cache write the token takes
        ROPE_START and EMBED_WAIT (at least two cycles, more if the lookup is still running) to
        its first LOAD, where from IDLE it takes the ``embed`` stage of :meth:`stage_cycles`:
        the predecessor's idle cycle (its ``head`` stage) becomes ROPE_START, and ``embed``
        becomes ``max(1, embed - 1 - kv)``, ``kv`` the KV operation's cycles from its command.
        """
        embed = self._embed_cycles
        _, kv = self._fixed_layer_cycles
        kv_cycles = 1 + kv["qkv"] + kv["cache"]
        ahead = max(1, embed - 1 - kv_cycles)
        return (sum(self.token_cycles(position, position + 1 == length)
                    for position in range(length)) - (length - 1) * (embed - ahead))

    def placements_read(self, last):
        """The placements of the matrices a token's GEMVs read, each once: every matrix, but
        without ``last`` not the last layer's after its keys and values (see
        :meth:`stage_cycles`)."""
        skipped = () if last else tuple(f"layers.{self._model.layers - 1}.{name}"
                                         for name in (LINEARS[0], *LINEARS[3:]))
        return [placement for name, placement in self.placements.items() if name not in skipped]

    def token_cycles(self, position, last):
        """Cycles of a token at ``position`` (:meth:`stage_cycles`, summed)."""
        return sum(self.stage_cycles(position, last).values())

    def _block_gain_words(self):
        return gain_bases(hidden=self._model.hidden, ffn=self._model.ffn,
                          layers=self._model.layers, lanes=self._config.pim.lanes)[1]

    def constant_records(self, prepared):
        """The constants memory's records for ``prepared`` (``golden.integer.IntegerWeights``
        of this shape): ``layers + 1`` constants of :attr:`constants_layout`, layer ``l``'s
        then the model's."""
        model, bases = self._model, self.bases
        score_limit = (1 << self._attention.score_bits) - 1

        def norm(name):
            gain = prepared.norms[name]
            return {"gain_base": bases[name], "fraction": gain.fraction,
                    "eps_k": _dyadic(gain.eps_k)}

        records = []
        for i in range(model.layers):
            linears = {name: prepared.linears[f"layers.{i}.{name}"] for name in LINEARS}
            softmax = prepared.softmax[i]
            records.append(self.constants_layout.const({"layer": {
                "norms": [norm(f"layers.{i}.{name}") for name in NORMS],
                "linears": [_dyadic(scale.constant) for scale in linears.values()],
                "o_exponent": -(WEIGHT_FRACTION_BITS
                                + linears["self_attn.v_proj"].out_fraction),
                "down_offset": -(2 * linears["mlp.gate_proj"].out_fraction
                                 + linears["mlp.up_proj"].out_fraction),
                "softmax": {"gap_limit": min(softmax.gap_limit, score_limit),
                            "gap_shift": softmax.gap_shift,
                            "scale": _dyadic(softmax.scale)}}}))
        shift = prepared.row_scale_fraction - prepared.residual_fraction
        records.append(self.constants_layout.const({"model": {
            "residual_exponent": -prepared.residual_fraction,
            "embed_shift": min(shift, _EMBED_SHIFT_MAX),
            "norm": norm("norm"),
            "head": _dyadic(prepared.head_scale)}}))
        return records

    def image(self, prepared):
        """``{port: [item, ...]}``: what the host loads through each of :data:`LOAD_PORTS`
        for ``prepared`` (``golden.integer.IntegerWeights`` of this shape), items as unsigned
        ints."""
        lanes, head_lanes = self._config.pim.lanes, self.head_lanes
        gains = [0] * self._block_gain_words()
        for name in norm_sizes(self._model):
            values = np.zeros(-(-len(prepared.norms[name].gain) // lanes) * lanes, np.int64)
            values[:len(prepared.norms[name].gain)] = prepared.norms[name].gain
            for i, word in enumerate(pack_ints(values.reshape(-1, lanes), GAIN_BITS)):
                gains[self.bases[name] + i] = int(word)
        embedding = pack_ints(prepared.embedding.reshape(-1, head_lanes), EMBEDDING_BITS)
        return {"gain_stream": gains,
                "emb_stream": [int(word) for word in embedding],
                "scale_stream": [int(v) for v in prepared.row_scales],
                "step_stream": [int(v) for v in prepared.rope_steps],
                "const_stream": [record.as_bits() for record in self.constant_records(prepared)]}

    def elaborate(self, platform):
        m = Module()
        config, model, head_dim, lanes = self._config, self._model, self._head_dim, self.lanes
        pim_lanes = config.pim.lanes
        hidden, ffn, heads, kv_heads = model.hidden, model.ffn, model.heads, model.kv_heads
        m.submodules.block = block = self._block
        m.submodules.rope_q, m.submodules.rope_k = ropes = self._ropes
        units = self.attention_units
        for number, unit in enumerate(self._attentions):
            m.submodules[f"attention{number}"] = unit
        m.submodules.ffn = ffn_unit = self._ffn
        m.submodules.head = head = self._head

        # Loads pass through to the units; the constants memory is the core's own.
        m.d.comb += [head.logit_addr.eq(self.logit_addr), self.logit.eq(head.logit)]
        for port, unit in (("gain_stream", block), ("emb_stream", head),
                           ("scale_stream", head)):
            wiring.connect(m, wiring.flipped(getattr(self, port)), getattr(unit, port))
        # Both RoPE units take every phase step (they take them alike: while not busy).
        m.d.comb += self.step_stream.ready.eq(ropes[0].step_stream.ready
                                              & ropes[1].step_stream.ready)
        for rope in ropes:
            m.d.comb += [rope.step_stream.valid.eq(self.step_stream.valid
                                                   & self.step_stream.ready),
                         rope.step_stream.payload.eq(self.step_stream.payload)]
        wiring.connect(m, block.cmd_stream, wiring.flipped(self.cmd_stream))
        wiring.connect(m, wiring.flipped(self.acc_stream), block.acc_stream)
        m.submodules.constants = constants = Memory(
            shape=self.constants_layout, depth=model.layers + 1, init=[])
        const_write = constants.write_port()
        m.d.comb += [self.const_stream.ready.eq(~self.busy),
                     const_write.en.eq(self.const_stream.valid & ~self.busy),
                     const_write.addr.eq(self.const_stream.payload.addr),
                     const_write.data.eq(self.const_stream.payload.data)]

        layer = Signal(range(model.layers))
        # The layer's constants are read without a register: a layer's first command follows
        # the previous layer's last write of H in the cycle after ``layer`` moves on.
        layer_read = constants.read_port(domain="comb")
        model_read = constants.read_port()
        m.d.comb += [layer_read.addr.eq(layer), model_read.addr.eq(model.layers)]
        lc, mc = layer_read.data.layer, model_read.data.model

        token = Signal(self.start.payload.shape())
        op = Signal(range(6))

        # The vectors between stages, as registers of whole elements.
        h = Signal(hidden * RESIDUAL_BITS)                  # residual stream
        q = Signal(hidden * PROJECTION_BITS)                # query heads, raw then rotated
        k = Signal(kv_heads * head_dim * PROJECTION_BITS)   # key heads, raw then rotated
        v = Signal(kv_heads * head_dim * PROJECTION_BITS)   # value heads
        per_pass = self.heads_per_pass
        # A round's outputs, by unit, then by the unit's query head.
        attended = Signal(units * per_pass * head_dim * RESIDUAL_BITS)
        handed = Signal(units)          # the round's queries taken, then outputs taken
        heads_per_unit, kv_per_unit = heads // units, kv_heads // units
        head_bits = head_dim * PROJECTION_BITS
        head_words = head_dim // pim_lanes                  # a head's words in the norm
        pass_words = per_pass * head_words                  # a query's output words
        rounds = self._rounds
        # The norm's word of the round's output word ``count`` in round 0: word ``count %
        # pass_words`` of unit ``count // pass_words``'s first query.
        round_words = Array(number // pass_words * heads_per_unit * head_words
                            + number % pass_words
                            for number in range(units * pass_words))
        ffn_word = Signal(pim_lanes * RESIDUAL_BITS)        # ReLU^2 x up, gathered to a word

        count = Signal(range(max(hidden, ffn, heads * head_dim) + 1))   # a phase's own index
        out_count = Signal.like(count)                      # RoPE's results written back
        head_index = Signal(range(max(heads, 2 * kv_heads) + 1))
        shift = Signal.like(ffn_unit.o_stream.payload.shift)

        # The block's command for the current operation.
        placements = [[self.placements[f"layers.{i}.{name}"] for name in LINEARS]
                      for i in range(model.layers)]
        words = {_Op.QKV: hidden // pim_lanes, _Op.O: hidden // pim_lanes,
                 _Op.GATE_UP: hidden // pim_lanes, _Op.DOWN: ffn // pim_lanes,
                 _Op.FINAL: hidden // pim_lanes, _Op.KV: hidden // pim_lanes}
        matrices = {_Op.QKV: (0, 1, 2), _Op.O: (3,), _Op.GATE_UP: (4, 5), _Op.DOWN: (6,),
                    _Op.FINAL: (), _Op.KV: (1, 2)}
        norm_of = {_Op.QKV: 0, _Op.O: 1, _Op.GATE_UP: 2, _Op.DOWN: 3, _Op.KV: 0}
        cmd = block.cmd.payload
        with m.Switch(op):
            for kind, indices in matrices.items():
                with m.Case(kind):
                    norm = mc.norm if kind == _Op.FINAL else lc.norms[norm_of[kind]]
                    exponent = {_Op.O: lc.o_exponent, _Op.DOWN: shift + lc.down_offset} \
                        .get(kind, mc.residual_exponent)
                    m.d.comb += [cmd.norm.words.eq(words[kind]),
                                 cmd.norm.gain_base.eq(norm.gain_base),
                                 cmd.norm.x_exponent.eq(exponent),
                                 cmd.norm.fraction.eq(norm.fraction),
                                 cmd.norm.eps_k.eq(norm.eps_k),
                                 cmd.norm.count.eq(max(len(indices), 1)),
                                 cmd.norm_only.eq(kind == _Op.FINAL)]
                    if kind == _Op.FINAL:
                        m.d.comb += cmd.norm.constants[0].eq(mc.head)
                    for slot, index in enumerate(indices):
                        # Every layer's matrix at its own base, of the same shape.
                        bases = Array(layer_placements[index].base
                                      for layer_placements in placements)
                        shape = placements[0][index]
                        m.d.comb += [cmd.norm.constants[slot].eq(lc.linears[index]),
                                     cmd.matrices[slot].base.eq(bases[layer]),
                                     cmd.matrices[slot].rows.eq(shape.rows),
                                     cmd.matrices[slot].n.eq(shape.n),
                                     cmd.matrices[slot].add_residual.eq(
                                         kind in (_Op.O, _Op.DOWN))]

        # x_q goes to the banks, or, for the final norm, into a register the head's words are
        # read from.
        chunk = block.chunk_stream
        to_head = op == _Op.FINAL
        x_q = Signal(hidden * 8)
        m.d.comb += [
            self.chunk_stream.payload.eq(chunk.payload),
            self.chunk_stream.valid.eq(chunk.valid & ~to_head),
            chunk.ready.eq(to_head | self.chunk_stream.ready),
        ]
        with m.If(chunk.valid & to_head):
            m.d.sync += x_q.word_select(chunk.payload.addr, pim_lanes * 8).eq(chunk.payload.data)

        results = block.o_stream
        beat = results.payload.index >> (lanes.bit_length() - 1)
        x = block.x_stream
        pairs = head_dim // 2

        def lows(values):
            """A beat's results as int16 (q, k, v, gate and up: golden's projection width)."""
            return Cat(*(values[i][:PROJECTION_BITS] for i in range(lanes)))

        # RoPE walks a vector of heads ``rope_lanes`` pairs a beat: ``index`` is the beat's
        # first element (``head * head_dim + i``), ``within`` its ``i``. A beat is offered
        # once its last second element is in (``filled``: the vector's elements written so
        # far), so the walk follows the GEMV's beats head by head.
        rope_lanes = self._rope_lanes

        def rotate(rope, vector, elements, filled, index, within, written, written_within):
            rotated = rope.o_stream.payload
            m.d.comb += [rope.i_stream.valid.eq((index != elements)
                                                & (index + rope_lanes - 1 + pairs < filled)),
                         rope.o_stream.ready.eq(1)]
            for lane in range(rope_lanes):
                m.d.comb += [
                    rope.i_stream.payload[lane].first.eq(
                        vector.word_select(index + lane, PROJECTION_BITS)),
                    rope.i_stream.payload[lane].second.eq(
                        vector.word_select(index + lane + pairs, PROJECTION_BITS))]
            with m.If(rope.i_stream.valid & rope.i_stream.ready):
                _advance(m, index, within, pairs, rope_lanes)
            done = Signal()
            with m.If(rope.o_stream.valid):
                for lane in range(rope_lanes):
                    m.d.sync += [
                        vector.word_select(written + lane, PROJECTION_BITS)
                        .eq(rotated[lane].first),
                        vector.word_select(written + lane + pairs, PROJECTION_BITS)
                        .eq(rotated[lane].second)]
                _advance(m, written, written_within, pairs, rope_lanes)
                m.d.comb += done.eq(written + pairs + rope_lanes == elements)
            return done

        within, written_within = Signal(range(pairs)), Signal(range(pairs))
        # k's walk, beside q's (``count``, ``within``, ``out_count``, ``written_within``).
        k_index, k_written = Signal(range(kv_heads * head_dim + 1)), \
            Signal(range(kv_heads * head_dim + 1))
        k_within, k_written_within = Signal(range(pairs)), Signal(range(pairs))
        beats_a_word = pim_lanes // lanes                   # the block's beats in a bank word
        filled = Signal(range(beats_a_word))                # FFN beats in ffn_word
        word_full = Signal()
        h_word_full = Signal()                              # word h_word of H is to be copied
        h_word = Signal(range(hidden // pim_lanes))
        widened = [Signal(signed(RESIDUAL_BITS), name=f"inner{i}") for i in range(lanes)]
        m.d.comb += [value.eq(ffn_unit.o_stream.payload.value[i])
                     for i, value in enumerate(widened)]
        ffn_started = Signal()
        # PROJECT: q's and k's elements in, and their rotations done.
        q_filled = Signal(range(hidden + 1))
        k_filled = Signal(range(kv_heads * head_dim + 1))
        q_rotated, k_rotated = Signal(), Signal()

        def first_op(next_layer):
            """A layer's first operation: KV in the last layer of a prompt token before the
            last (nothing reads its query), QKV otherwise."""
            return Mux((next_layer == model.layers - 1) & ~token.last, _Op.KV, _Op.QKV)

        # The embedding lookup runs beside the layer program, into H: a token's own, started
        # from IDLE, or the next prompt token's, taken ahead while this one's last layer runs
        # KV (this token's H is in the norm's buffer by then, and nothing reads H again).
        embed_token = Signal(range(model.vocab))
        embed_go = Signal()
        embed_count = Signal(range(hidden // lanes))       # the lookup's beats into H
        embed_ends = Signal()               # the lookup's last element is written this cycle
        embedded = Signal()                 # it was written, and LOAD has not started since
        ahead = Signal()                    # the next token's start is taken, its lookup begun
        next_token = Signal.like(token)
        with m.FSM(name="embedder") as embedder:
            with m.State("IDLE"):
                with m.If(embed_go):
                    m.next = "REQUEST"
            with m.State("REQUEST"):
                m.d.comb += [head.embed.valid.eq(1), head.embed.payload.token.eq(embed_token),
                             head.embed.payload.shift.eq(mc.embed_shift)]
                with m.If(head.embed.ready):
                    m.next = "RECEIVE"
            with m.State("RECEIVE"):
                m.d.comb += head.residual.ready.eq(1)
                with m.If(head.residual.valid):
                    m.d.sync += [h.word_select(embed_count, lanes * RESIDUAL_BITS)
                                 .eq(head.residual.payload),
                                 embed_count.eq(embed_count + 1)]
                    with m.If(embed_count == hidden // lanes - 1):
                        m.d.comb += embed_ends.eq(1)
                        m.d.sync += [embed_count.eq(0), embedded.eq(1)]
                        m.next = "IDLE"

        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start.valid):
                    m.d.sync += [token.eq(self.start.payload),
                                 embed_token.eq(self.start.payload.token), layer.eq(0)]
                    m.next = "ROPE_START"
            with m.State("ROPE_START"):
                # The position's factors are computed while the token is embedded.
                for rope in ropes:
                    m.d.comb += [rope.start.valid.eq(1), rope.start.payload.eq(token.position)]
                with m.If(ropes[0].start.ready & ropes[1].start.ready):
                    m.d.comb += embed_go.eq(~ahead)
                    m.next = "EMBED_WAIT"
            with m.State("EMBED_WAIT"):
                with m.If(embed_ends | embedded):
                    m.d.sync += [embedded.eq(0), ahead.eq(0), count.eq(0),
                                 op.eq(first_op(0))]
                    m.next = "LOAD"
            with m.State("LOAD"):
                # H into the norm's buffer, a word a cycle.
                m.d.comb += [x.valid.eq(1), x.payload.index.eq(count),
                             x.payload.data.eq(h.word_select(count, pim_lanes * RESIDUAL_BITS))]
                with m.If(x.ready):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == hidden // pim_lanes - 1):
                        m.d.sync += count.eq(0)
                        m.next = "COMMAND"
            with m.State("COMMAND"):
                m.d.comb += block.cmd.valid.eq(1)
                with m.If(block.cmd.ready):
                    m.d.sync += [count.eq(0), out_count.eq(0), within.eq(0),
                                 written_within.eq(0), k_index.eq(0), k_written.eq(0),
                                 k_within.eq(0), k_written_within.eq(0)]
                    with m.Switch(op):
                        with m.Case(_Op.QKV, _Op.KV):
                            m.next = "PROJECT"
                        with m.Case(_Op.O, _Op.DOWN):
                            m.next = "RESIDUAL"
                        with m.Case(_Op.GATE_UP):
                            m.next = "FFN"
                        with m.Case(_Op.FINAL):
                            m.next = "FINAL_NORM"
            with m.State("PROJECT"):
                # q, k and v, each a beat at a time into its registers; q and k are rotated
                # as their pairs come in, each on its RoPE unit, while the GEMVs after them
                # run. (KV's matrices are k and v: its matrix 0 is k.)
                without_q = op == _Op.KV
                vector_index = results.payload.matrix + without_q
                m.d.comb += results.ready.eq(1)
                with m.If(results.valid):
                    with m.Switch(vector_index):
                        for number, (vector, elements_in) in enumerate(
                                ((q, q_filled), (k, k_filled), (v, None))):
                            with m.Case(number):
                                m.d.sync += vector.word_select(beat, lanes * PROJECTION_BITS) \
                                    .eq(lows(results.payload.data))
                                if elements_in is not None:
                                    m.d.sync += elements_in.eq((beat + 1) * lanes)
                with m.If(~without_q & ~q_rotated):
                    with m.If(rotate(ropes[0], q, hidden, q_filled, count, within, out_count,
                                     written_within)):
                        m.d.sync += q_rotated.eq(1)
                with m.If(~k_rotated):
                    with m.If(rotate(ropes[1], k, kv_heads * head_dim, k_filled, k_index,
                                     k_within, k_written, k_written_within)):
                        m.d.sync += k_rotated.eq(1)
                with m.If(~block.busy & k_rotated & (q_rotated | without_q)):
                    m.d.sync += [count.eq(0), out_count.eq(0), within.eq(0),
                                 written_within.eq(0), q_filled.eq(0), k_filled.eq(0),
                                 q_rotated.eq(0), k_rotated.eq(0), head_index.eq(0)]
                    m.next = "CACHE"
            with m.State("CACHE"):
                # Every unit at once: its KV head ``head_index // 2`` of its own, the rotated
                # key, then the value (``handed``: the units that have taken this word).
                local = head_index >> 1
                for number, unit in enumerate(self._attentions):
                    kv_head = number * kv_per_unit + local
                    kv = unit.kv_stream.payload
                    m.d.comb += [kv.layer.eq(layer), kv.position.eq(token.position),
                                 kv.head.eq(local),
                                 kv.kind.eq(Mux(head_index[0], CacheKind.VALUE, CacheKind.KEY)),
                                 kv.data.eq(Mux(head_index[0],
                                                v.word_select(kv_head, head_bits),
                                                k.word_select(kv_head, head_bits)))]
                with m.If(_to_every_unit(m, handed, [unit.kv_stream
                                                     for unit in self._attentions])):
                    m.d.sync += head_index.eq(head_index + 1)
                    with m.If(head_index == 2 * kv_per_unit - 1):
                        m.d.sync += [head_index.eq(0), out_count.eq(0)]
                        # A prompt token before the last needs no more than its last layer's
                        # keys and values (that layer ran KV): what follows them there feeds
                        # only its own logits.
                        with m.If((op == _Op.KV) & ahead):
                            m.d.sync += [token.eq(next_token), layer.eq(0)]
                            m.next = "ROPE_START"
                        with m.Elif(op == _Op.KV):
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "ATTEND"
            with m.State("ATTEND"):
                # A round: query ``head_index`` of every unit (its query heads ``head_index x
                # per_pass`` on), each unit's own (``handed`` those taken so far).
                for number, unit in enumerate(self._attentions):
                    query = unit.query.payload
                    m.d.comb += [query.layer.eq(layer), query.position.eq(token.position),
                                 query.head.eq(head_index),
                                 query.q.eq(q.word_select(head_index + number * rounds,
                                                          per_pass * head_bits)),
                                 query.softmax.eq(lc.softmax)]
                with m.If(_to_every_unit(m, handed, [unit.query for unit in self._attentions])):
                    m.next = "ATTENDED"
            with m.State("ATTENDED"):
                for number, unit in enumerate(self._attentions):
                    m.d.comb += unit.o_stream.ready.eq(~handed[number])
                    with m.If(unit.o_stream.valid & ~handed[number]):
                        m.d.sync += [attended.word_select((number * per_pass + j) * head_dim + i,
                                                          RESIDUAL_BITS)
                                     .eq(unit.o_stream.payload[j][i])
                                     for j in range(per_pass) for i in range(head_dim)]
                arrived = Cat(unit.o_stream.valid for unit in self._attentions)
                m.d.sync += handed.eq(handed | arrived)
                with m.If((handed | arrived).all()):
                    m.d.sync += [handed.eq(0), count.eq(0)]
                    m.next = "ATTENDED_WORDS"
            with m.State("ATTENDED_WORDS"):
                # The round's outputs into the norm's buffer, each head's at its own words.
                m.d.comb += [x.valid.eq(1),
                             x.payload.index.eq(round_words[count] + head_index * pass_words),
                             x.payload.data.eq(attended.word_select(
                                 count, pim_lanes * RESIDUAL_BITS))]
                with m.If(x.ready):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == units * pass_words - 1):
                        m.d.sync += [count.eq(0), head_index.eq(head_index + 1)]
                        with m.If(head_index == rounds - 1):
                            m.d.sync += op.eq(_Op.O)
                            m.next = "COMMAND"
                        with m.Else():
                            m.next = "ATTEND"
            with m.State("RESIDUAL"):
                # o or down, plus H, into H; H's old beats go to the block as they are needed.
                # Each word of the new H also goes to the norm's buffer the cycle after its last
                # beat (the norm is between operations by then), so the next operation, whose
                # norm reads H, starts without a LOAD.
                m.d.comb += [block.r_stream.valid.eq(count != hidden // lanes),
                             block.r_stream.payload.eq(
                                 h.word_select(count, lanes * RESIDUAL_BITS)),
                             results.ready.eq(~h_word_full | x.ready),
                             x.valid.eq(h_word_full), x.payload.index.eq(h_word),
                             x.payload.data.eq(h.word_select(h_word, pim_lanes * RESIDUAL_BITS))]
                with m.If(x.valid & x.ready):
                    m.d.sync += h_word_full.eq(0)
                with m.If(block.r_stream.valid & block.r_stream.ready):
                    m.d.sync += count.eq(count + 1)
                with m.If(results.valid & results.ready):
                    m.d.sync += h.word_select(beat, lanes * RESIDUAL_BITS) \
                        .eq(results.payload.data)
                    with m.If(beat % beats_a_word == beats_a_word - 1):
                        m.d.sync += [h_word_full.eq(1), h_word.eq(beat // beats_a_word)]
                with m.If(~block.busy & ~h_word_full):
                    m.d.sync += count.eq(0)
                    m.next = "COMMAND"
                    with m.If(op == _Op.O):
                        m.d.sync += op.eq(_Op.GATE_UP)
                    with m.Elif(layer != model.layers - 1):
                        m.d.sync += [op.eq(first_op(layer + 1)), layer.eq(layer + 1)]
                    with m.Else():
                        # Only a last token runs DOWN in the last layer (first_op).
                        m.d.sync += op.eq(_Op.FINAL)
            with m.State("FFN"):
                # gate then up, a beat at a time into the FFN; its results, gathered into words,
                # into the norm's buffer (a word leaves in the cycle the next beat comes in).
                m.d.comb += [ffn_unit.cmd.valid.eq(~ffn_started),
                             ffn_unit.cmd.payload.length.eq(ffn)]
                with m.If(ffn_unit.cmd.valid & ffn_unit.cmd.ready):
                    m.d.sync += ffn_started.eq(1)
                m.d.comb += [ffn_unit.i_stream.valid.eq(results.valid),
                             ffn_unit.i_stream.payload.eq(lows(results.payload.data)),
                             results.ready.eq(ffn_unit.i_stream.ready)]
                inner = ffn_unit.o_stream
                m.d.comb += [inner.ready.eq(~word_full | x.ready),
                             x.valid.eq(word_full), x.payload.index.eq(out_count),
                             x.payload.data.eq(ffn_word)]
                with m.If(x.valid & x.ready):
                    m.d.sync += [word_full.eq(0), out_count.eq(out_count + 1)]
                    with m.If(out_count == ffn // pim_lanes - 1):
                        m.d.sync += [ffn_started.eq(0), op.eq(_Op.DOWN)]
                        m.next = "COMMAND"
                with m.If(inner.valid & inner.ready):
                    m.d.sync += [ffn_word.word_select(filled, lanes * RESIDUAL_BITS)
                                 .eq(Cat(*widened)),
                                 filled.eq(filled + 1), shift.eq(inner.payload.shift)]
                    with m.If(filled == beats_a_word - 1):
                        m.d.sync += [filled.eq(0), word_full.eq(1)]
            with m.State("FINAL_NORM"):
                # The head needs x_q alone (the token's scale cannot change the arg max): the
                # block takes its factor by itself, long before the next token's command.
                with m.If(chunk.valid & to_head & (chunk.payload.addr == hidden // pim_lanes - 1)):
                    m.next = "HEAD_WORDS"
            with m.State("HEAD_WORDS"):
                head_lanes = self.head_lanes
                m.d.comb += [head.x_stream.valid.eq(1), head.x_stream.payload.index.eq(count),
                             head.x_stream.payload.data.eq(x_q.word_select(count,
                                                                           head_lanes * 8))]
                with m.If(head.x_stream.ready):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == hidden // head_lanes - 1):
                        m.d.sync += count.eq(0)
                        m.next = "HEAD"
            with m.State("HEAD"):
                m.d.comb += head.start.valid.eq(1)
                with m.If(head.start.ready):
                    m.next = "TOKEN"
            with m.State("TOKEN"):
                wiring.connect(m, head.o_stream, wiring.flipped(self.o_stream))
                with m.If(self.o_stream.valid & self.o_stream.ready):
                    m.next = "IDLE"
        # The next token is taken ahead in the KV layer's command, and its GEMVs and k's
        # rotation (not in its cache writes, which may end in the cycle a start is taken).
        window = (op == _Op.KV) & ~ahead & embedder.ongoing("IDLE") & (
            fsm.ongoing("COMMAND") | fsm.ongoing("PROJECT"))
        m.d.comb += [self.start.ready.eq(fsm.ongoing("IDLE") | window),
                     self.busy.eq(~fsm.ongoing("IDLE"))]
        with m.If(window & self.start.valid):
            m.d.sync += [next_token.eq(self.start.payload),
                         embed_token.eq(self.start.payload.token), ahead.eq(1)]
            m.d.comb += embed_go.eq(1)
        return m


def _to_every_unit(m, handed, streams):
    """Offer a beat on each of ``streams`` until it is taken (``handed``: a bit a stream, set
    once taken); the returned condition is true in the cycle the last one is taken, and
    ``handed`` is then cleared for the next beat."""
    taken = Cat(port.valid & port.ready for port in streams)
    m.d.comb += [port.valid.eq(~handed[number]) for number, port in enumerate(streams)]
    m.d.sync += handed.eq(handed | taken)
    every = (handed | taken).all()
    with m.If(every):
        m.d.sync += handed.eq(0)
    return every


def _advance(m, index, within, pairs, step):
    """The next beat of ``step`` pairs of a walk over whole heads (``index`` its first
    element)."""
    with m.If(within == pairs - step):
        m.d.sync += [index.eq(index + pairs + step), within.eq(0)]
    with m.Else():
        m.d.sync += [index.eq(index + step), within.eq(within + step)]


def _dyadic(value):
    return {"mantissa": int(value.mantissa), "exponent": int(value.exponent)}
