"""Functional coverage of the device, with cocotb-coverage: what the command stream exercised.

:class:`DeviceCoverage` is the model: its cover points and bins for one configuration, a bin
that cannot be hit on it left out with the reason. :class:`CoverageMonitor` samples it from
what crossed the device's ports and nothing else: the command words the device took (framed
into commands by a behavioural device of its own), the response words the host took, the
cycles each side waited, and the status port when a reset came.

Cover points (under ``top.``):

- ``command``: the opcode (``unknown`` for one outside :class:`~hw.commands.Opcode`) crossed
  with the error code the command raised (``NONE``: it was valid);
- ``gemv.words_per_row``: 1, banks - 1, banks, banks + 1 and the whole activation buffer;
- ``gemm.tokens``: 1, rows, the array's result FIFO depth, and more than it;
- ``activations``: -128, 127 and 0 in an activation chunk or a token taken;
- ``weights.bank_word`` and ``weights.tile_row``: all -1, all +1, all 0 or mixed;
- ``flow.back_pressure`` (per response) and ``flow.host_idle`` (per command of more than one
  word): none, some (at most one waiting cycle a word) or heavy;
- ``reset``: a reset while the device was busy in each kind of command.
"""

from cocotb.triggers import ReadOnly, RisingEdge
from cocotb_coverage.coverage import CoverCross, CoverPoint, coverage_db

from golden import trits
from hw.array import SystolicArray
from hw.commands import (ARGUMENT_WORDS, COMMANDS, RESIDENT_ERRORS, RESIDENT_OPCODES, ErrorCode,
                         Opcode, unpack_header)
from hw.device import DEVICE_STATUS
from hw.words import unpack_ints
from sw_driver.behavioural import BehaviouralDevice

__all__ = ["words_per_row_corners", "token_corners", "impossible_outcomes", "impossible_errors",
           "DeviceCoverage",
           "CoverageMonitor"]

UNKNOWN = "unknown"
OPCODES = [op.name for op in Opcode] + [UNKNOWN]
FLOW = ["none", "some", "heavy"]
PATTERNS = ["all -1", "all +1", "all 0", "mixed"]
EXTREMES = [-128, 127, 0]
REGISTER_READ = "register read"
# The kinds of command a reset may interrupt (the others never leave FETCH).
RESET_KINDS = {Opcode.WRITE_WEIGHTS: "WRITE_WEIGHTS", Opcode.LOAD_ACTS: "LOAD_ACTS",
               Opcode.LOAD_TILE: "LOAD_TILE", Opcode.GEMV: "GEMV", Opcode.GEMM: "GEMM",
               Opcode.READ_STATUS: REGISTER_READ, Opcode.READ_COUNTERS: REGISTER_READ}


def words_per_row_corners(fmt):
    """The GEMV row lengths (words per row) the coverage names, by label."""
    return {"1": 1, "banks-1": fmt.banks - 1, "banks": fmt.banks, "banks+1": fmt.banks + 1,
            "max": fmt.act_words}


def token_corners(fmt):
    """The GEMM lengths (tokens) the coverage names, by label; the last is a lower bound."""
    depth = SystolicArray.fifo_depth_for(fmt.config)
    return {"1": 1, "rows": fmt.rows, "FIFO depth": depth, "beyond the FIFO": depth + 1}


def impossible_outcomes(fmt):
    """``{(opcode, error): reason}`` for the pairs no command can raise on ``fmt``'s device,
    read off :data:`~hw.commands.COMMANDS` (what each opcode's header fields and arguments
    are) and whether the device has resident units."""
    reasons = {}
    for label in OPCODES:
        for code in ErrorCode:
            reason = _impossible(label, code, resident=bool(fmt.tensors))
            if reason:
                reasons[label, code.name] = reason
    return reasons


def impossible_errors(fmt):
    """``{error: reason}`` for the error codes no command can raise on ``fmt``'s device."""
    if fmt.tensors:
        return {}
    return {code.name: "the device has no resident units" for code in RESIDENT_ERRORS}


# A valid GENERATE needs every resident tensor loaded to its end, and READ_LOGITS a GENERATE
# finished (its arguments are checked only then), which random commands do not do: the device
# testbench's resident_generation runs these.
_NEEDS_A_MODEL = "needs a whole model loaded (the device testbench's resident_generation)"


def _impossible(label, code, *, resident):
    if label == UNKNOWN:
        return None if code is ErrorCode.UNKNOWN_OPCODE else "an unknown opcode is only that"
    command = COMMANDS[Opcode[label]]
    if command.opcode in RESIDENT_OPCODES and not resident:
        return None if code is ErrorCode.UNKNOWN_OPCODE else "the device has no resident units"
    if code in RESIDENT_ERRORS and not resident:
        return "the device has no resident units"
    if command.opcode is Opcode.GENERATE and code in (ErrorCode.NONE, ErrorCode.BAD_TOKEN):
        return _NEEDS_A_MODEL
    if command.opcode is Opcode.READ_LOGITS and code in (ErrorCode.NONE, ErrorCode.BAD_ADDRESS):
        return _NEEDS_A_MODEL
    return {
        ErrorCode.UNKNOWN_OPCODE: "the opcode is known",
        ErrorCode.RESERVED_FIELD: "0" not in (command.a, command.b) and "no field must be 0",
        ErrorCode.BAD_BANK: command.a != "bank" and "it names no bank",
        ErrorCode.BAD_ADDRESS: ("addr" not in command.arguments and "base" not in
                                command.arguments) and "it takes no address",
        ErrorCode.BAD_LENGTH: command.b == "0" and "it has no count",
        ErrorCode.BAD_SHAPE: "words_per_row" not in command.arguments and "it has no shape",
        ErrorCode.NO_TILE: command.opcode is not Opcode.GEMM and "it does not use the tile",
        ErrorCode.BAD_TENSOR: command.a != "tensor" and "it names no tensor",
        ErrorCode.NOT_LOADED: command.opcode is not Opcode.GENERATE and "it runs no model",
        ErrorCode.BAD_TOKEN: command.opcode is not Opcode.GENERATE and "it takes no prompt",
        ErrorCode.NO_LOGITS: command.opcode is not Opcode.READ_LOGITS and "it reads no logits",
    }.get(code) or None


def _pattern(weights):
    """A weight word's or tile row's pattern (a label of :data:`PATTERNS`)."""
    for label, value in (("all -1", -1), ("all +1", 1), ("all 0", 0)):
        if (weights == value).all():
            return label
    return "mixed"


def _flow(waits, words):
    """How much one side waited over ``words`` words: none, some (at most a cycle a word) or
    heavy."""
    return "none" if waits == 0 else "some" if waits <= words else "heavy"


class DeviceCoverage:
    """The device's cover points for one command format, in cocotb-coverage's database (one
    per process: the tests of a simulation add to the same bins).

    :attr:`excluded` maps ``(point, bin)`` to the reason a bin cannot be hit here.
    """

    PREFIX = "top"
    _instance = None

    @classmethod
    def get(cls, fmt):
        """This process's model, made for ``fmt`` the first time."""
        if cls._instance is None:
            cls._instance = cls(fmt)
        return cls._instance

    @classmethod
    def current(cls):
        """This process's model, or None if nothing made one."""
        return cls._instance

    def __init__(self, fmt):
        self.format = fmt
        self.excluded = {}
        corners = words_per_row_corners(fmt)
        for label, value in corners.items():
            reason = (f"{label} = {value}: a row has at least one word" if value < 1 else
                      f"{label} = {value} is beyond the activation buffer ({fmt.act_words})"
                      if value > fmt.act_words else
                      f"{label} = {value} is beyond a bank ({fmt.depth} words)"
                      if value > fmt.depth else None)
            if reason:
                self.excluded["gemv.words_per_row", label] = reason
        for point, size in (("weights.bank_word", fmt.lanes), ("weights.tile_row", fmt.cols)):
            if size == 1:
                self.excluded[point, "mixed"] = "one weight is never mixed"
        tokens = token_corners(fmt)
        beyond = tokens["beyond the FIFO"]

        self.words_per_row = self._point(
            "gemv.words_per_row", corners, rel=lambda value, label: value == corners[label])
        self.tokens = self._point(
            "gemm.tokens", tokens, rel=lambda value, label: value >= beyond
            if label == "beyond the FIFO" else value == tokens[label])
        self.activations = self._point("activations", [str(x) for x in EXTREMES],
                                       rel=lambda values, label: int(label) in values)
        self.bank_word = self._point("weights.bank_word", PATTERNS)
        self.tile_row = self._point("weights.tile_row", PATTERNS)
        self.back_pressure = self._point("flow.back_pressure", FLOW)
        self.host_idle = self._point("flow.host_idle", FLOW)
        self.reset = self._point("reset", dict.fromkeys(RESET_KINDS.values()))
        self.impossible = impossible_outcomes(fmt)
        self.excluded.update({("command.outcome", f"{op} x {code}"): reason
                              for (op, code), reason in self.impossible.items()})
        name = f"{self.PREFIX}.command"

        @CoverPoint(f"{name}.opcode", xf=lambda op, code: op, bins=OPCODES)
        @CoverPoint(f"{name}.error", xf=lambda op, code: code,
                    bins=[code.name for code in ErrorCode
                          if code.name not in impossible_errors(fmt)])
        @CoverCross(f"{name}.outcome", items=[f"{name}.opcode", f"{name}.error"],
                    ign_bins=list(self.impossible))
        def command(opcode, error):
            pass
        self.command = command

    def _point(self, name, bins, rel=None):
        """A sampling function for point ``name`` (bins: labels, those excluded left out)."""
        labels = [label for label in bins if (name, label) not in self.excluded]

        @CoverPoint(f"{self.PREFIX}.{name}", bins=labels, rel=rel, inj=False)
        def sample(value):
            pass
        return sample

    def report(self):
        """Bins and hits: ``{"hit", "bins", "percent", "points": {point: {"bins": {label:
        hits}, "excluded": {label: reason}}}}``; a cross's bins are labelled ``op x error``."""
        points = {}
        for name, item in sorted(coverage_db.items()):
            if not name.startswith(self.PREFIX + ".") or not hasattr(item, "_hits"):
                continue
            point = name[len(self.PREFIX) + 1:]
            hits = item.detailed_coverage
            points[point] = {
                "bins": {" x ".join(label) if isinstance(label, tuple) else str(label): count
                         for label, count in hits.items()},
                "excluded": {label: reason for (where, label), reason in self.excluded.items()
                             if where == point}}
        total = coverage_db[self.PREFIX]
        return {"hit": total.coverage, "bins": total.size,
                "percent": round(100 * total.coverage / total.size, 2), "points": points}


class CoverageMonitor:
    """Samples a :class:`DeviceCoverage` from the ports of the device under ``dut``.

    Commands are framed by a behavioural device fed every word the device takes: a command ends
    when that device raises an error (its code is the command's) or after its header, arguments
    and :meth:`~hw.commands.CommandFormat.data_words`. The monitor clears that device's sticky
    error after each rejection, so that the next shows its own code.
    """

    def __init__(self, dut, fmt, coverage):
        self.dut, self.format, self.coverage = dut, fmt, coverage
        self.shadow = BehaviouralDevice(fmt.config)
        self._busy_bit = DEVICE_STATUS["busy"].offset
        self._after_reset()

    def _after_reset(self):
        self.shadow.reset()
        self.command = []               # words of the command being taken
        self.length = 0                 # its words in all, once its header passed
        self.idle = 0                   # cycles the host left it waiting for a word
        self.kind = None                # the kind of the last command that passed its header
        self.response = 0               # words of the response being taken still to come
        self.response_words = 0
        self.refused = 0                # cycles the host refused a response word

    async def run(self):
        """Watch the device: every cycle, in the read-only phase before the clock edge."""
        dut, in_reset = self.dut, True
        while True:
            await ReadOnly()
            if dut.rst.value:
                if not in_reset and (int(dut.status.value) >> self._busy_bit) & 1 \
                        and self.kind in RESET_KINDS:
                    self.coverage.reset(RESET_KINDS[self.kind])
                in_reset = True
            else:
                if in_reset:
                    self._after_reset()
                in_reset = False
                self._cycle()
            await RisingEdge(dut.clk)

    def _cycle(self):
        dut = self.dut
        if dut.i_stream__valid.value and dut.i_stream__ready.value:
            self._word(int(dut.i_stream__payload.value))
        elif self.command and dut.i_stream__ready.value:
            self.idle += 1
        if dut.o_stream__valid.value:
            if dut.o_stream__ready.value:
                self._response_word(int(dut.o_stream__payload.value))
            else:
                self.refused += 1

    def _word(self, word):
        shadow = self.shadow
        self.command.append(word)
        shadow.feed([word])
        if shadow.error != ErrorCode.NONE.value:
            self._finish(ErrorCode(shadow.error))
            shadow.error = ErrorCode.NONE.value
        elif len(self.command) == 1:
            header = unpack_header(word)
            op = Opcode(header["opcode"])
            self.kind = op
            # GENERATE's data (its prompt) is counted by its argument, framed when it comes.
            self.length = 1 + ARGUMENT_WORDS.get(op, 0) + (0 if op is Opcode.GENERATE else
                                                            self.format.data_words(
                                                                op, header["b"], header["a"]))
        elif len(self.command) == 2 and self.kind is Opcode.GENERATE:
            self.length += word
        if self.command and len(self.command) == self.length:
            self._finish(ErrorCode.NONE)

    def _finish(self, error):
        """The command in :attr:`command` ended, raising ``error``: sample it."""
        fmt, words = self.format, self.command
        header = unpack_header(words[0])
        valid = header["opcode"] in {op.value for op in Opcode}
        op = Opcode(header["opcode"]) if valid else None
        self.coverage.command(op.name if op else UNKNOWN, error.name)
        if len(words) > 1:
            self.coverage.host_idle(_flow(self.idle, len(words) - 1))
        if error is ErrorCode.NONE:
            data = words[1 + ARGUMENT_WORDS.get(op, 0):]
            if op is Opcode.GEMV:
                self.coverage.words_per_row(words[2])
            elif op is Opcode.GEMM:
                self.coverage.tokens(header["b"])
                self._activations(data, fmt.token_words, fmt.rows)
            elif op is Opcode.LOAD_ACTS:
                self._activations(data, fmt.act_chunk_words, fmt.lanes)
            elif op is Opcode.WRITE_WEIGHTS:
                for value in self._items(data, fmt.weight_word_words):
                    word = value & ((1 << fmt.config.word_bits) - 1)
                    self.coverage.bank_word(_pattern(trits.unpack_words(
                        word, fmt.lanes, invalid_as_zero=True)))
            elif op is Opcode.LOAD_TILE:
                for value in self._items(data, fmt.tile_row_words):
                    self.coverage.tile_row(_pattern(fmt.tile_row_weights(value)))
        else:
            self.kind = None
        self.command, self.length, self.idle = [], 0, 0

    @staticmethod
    def _items(words, per_item):
        """Join ``words`` into values of ``per_item`` words, least significant first."""
        return [sum(w << (32 * n) for n, w in enumerate(words[i:i + per_item]))
                for i in range(0, len(words), per_item)]

    def _activations(self, words, per_item, count):
        bits = self.format.config.act_bits
        for values in unpack_ints(self._items(words, per_item), bits, count):
            self.coverage.activations(tuple(int(x) for x in values))

    def _response_word(self, word):
        if self.response == 0:                      # a header
            header = unpack_header(word)
            self.response = self.format.response_words(Opcode(header["opcode"]), header["b"])
            self.response_words = self.response + 1
        else:
            self.response -= 1
        if self.response == 0:
            self.coverage.back_pressure(_flow(self.refused, self.response_words))
            self.refused = 0
