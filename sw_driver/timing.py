"""Busy cycles of each command, for the behavioural device: what it adds to ``cycles_busy``
with a host that sends every word of it back to back and takes every response word at once.

Loads, register reads and rejected commands have a closed form (one cycle per word and one per
state they pass through), and so has GENERATE, over the resident core's cycle model. GEMV and GEMM
depend on the pipelines' credit and the result path; their figures come from the cycle model
(:class:`sw_driver.cycles.DeviceCycles`, checked against the RTL under any host) run once per
configuration and shape and cached for the process, so a whole model runs at the speed of a
dictionary lookup per command, and a second run or a second device pays nothing.
"""

from functools import lru_cache

import numpy as np

from hw.commands import ARGUMENT_WORDS, STATUS, CommandFormat, Opcode, Tensor
from hw.resident_core import layout_core

from .cycles import DeviceCycles

__all__ = ["CommandTiming"]


class CommandTiming:
    """Busy cycles of each command for one configuration."""

    def __init__(self, config):
        self.config = config
        self.format = CommandFormat(config)

    def simple(self, opcode, b=0, a=0):
        """Commands with no pipeline: loads, status, counter and logit reads, NOP."""
        fmt = self.format
        if opcode is Opcode.LOAD_TENSOR:
            return ARGUMENT_WORDS[opcode] + 1 + b * fmt.tensors[Tensor(a)][1] + 1
        if opcode is Opcode.WRITE_WEIGHTS:
            return ARGUMENT_WORDS[opcode] + 1 + b * fmt.weight_word_words + 1
        if opcode is Opcode.LOAD_ACTS:
            return ARGUMENT_WORDS[opcode] + 1 + b * fmt.act_chunk_words + 1
        if opcode is Opcode.LOAD_TILE:
            return fmt.rows * fmt.tile_row_words + 1
        if opcode is Opcode.READ_STATUS:
            return 1 + len(STATUS)
        if opcode is Opcode.READ_COUNTERS:
            return 1 + len(fmt.counter_names)
        if opcode is Opcode.READ_LOGITS:          # the argument, the check, the header
            return ARGUMENT_WORDS[opcode] + 2 + b * fmt.logit_words
        return 0

    def generate(self, prompt_length, count):
        """GENERATE of a prompt of ``prompt_length`` tokens and ``count`` more (``count`` 0: its
        prompt refused, BAD_TOKEN): the argument, the check, a cycle a prompt word and one
        after them; then the response header, the prompt on the core
        (``ResidentCore.prompt_cycles``: its starts offered back to back) and a cycle, each
        decoded token's run (``ResidentCore.token_cycles``, a greedy token written as it is
        offered) and a cycle, and two cycles for the last token to leave."""
        prompt = ARGUMENT_WORDS[Opcode.GENERATE] + 1 + prompt_length + 1
        if not count:
            return prompt
        core = layout_core(self.config)
        return (prompt + 1 + core.prompt_cycles(prompt_length) + 1
                + sum(core.token_cycles(position, True) + 1
                      for position in range(prompt_length, prompt_length + count - 1)) + 2)

    def rejected_after_arguments(self, opcode):
        """A command refused by its argument checks: its argument words and the check."""
        return ARGUMENT_WORDS[opcode] + 1

    def gemv(self, rows, words_per_row):
        """ARGUMENTS, CHECK (bank command issued), RESPOND, then results until the last beat."""
        return _gemv_cycles(self.config, rows, words_per_row)

    def gemm(self, tokens):
        """RESPOND, then tokens in (``token_words`` words each) while results go out."""
        return _gemm_cycles(self.config, tokens)


def _busy(config, words, *, tile=False):
    """Busy cycles of ``words`` (one command) on an idle device of ``config``; with ``tile``, a
    tile is loaded first (not counted)."""
    model = DeviceCycles(config)
    if tile:
        fmt = model.format
        model.feed(fmt.load_tile(np.zeros((fmt.cols, fmt.rows), np.int64)))
        model.run()
    before = model.totals["cycles_busy"]
    model.feed(words)
    model.run()
    return model.totals["cycles_busy"] - before


@lru_cache(maxsize=None)
def _gemv_cycles(config, rows, words_per_row):
    return _busy(config, CommandFormat(config).gemv(0, rows, words_per_row))


@lru_cache(maxsize=None)
def _gemm_cycles(config, tokens):
    return _busy(config, CommandFormat(config).gemm([0] * tokens), tile=True)
