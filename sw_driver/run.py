"""Whole-model inference through a device: the host runs the float steps (golden), the device
every BitLinear's integer core. The same function serves every transport."""

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from golden import Model, input_groups
from golden.bitlinear import bitlinear_int
from hw.commands import WORD_BYTES, Opcode
from hw.uart import DEFAULT_BAUD

from .driver import Accelerator, Transport
from .mapper import DeviceCore
from .timing import CommandTiming

__all__ = ["load_model", "RunResult", "CheckingCore", "uart_link", "run", "run_resident",
           "bank_bound_cycles_per_token"]


def load_model(source):
    """``(ModelConfig, ModelWeights)`` of ``"tiny"`` (shipped) or of a checkpoint path."""
    if source == "tiny":
        from .models import load_tiny
        return load_tiny()
    from .checkpoint import load_checkpoint
    return load_checkpoint(source)


class CheckingCore:
    """Wraps a device core; compares every result with golden's integer core."""

    def __init__(self, core, linears):
        self.core, self.linears = core, linears
        self.calls = self.mismatches = 0
        self.first_mismatch = None

    def __call__(self, name, x_q):
        got = self.core(name, x_q)
        expected = bitlinear_int(x_q, self.linears[name].trits)
        self.calls += 1
        if not np.array_equal(got, expected):
            self.mismatches += 1
            if self.first_mismatch is None:
                bad = np.argwhere(got != expected)[0]
                self.first_mismatch = (f"{name} call {self.calls}, index {tuple(bad)}: "
                                       f"device {got[tuple(bad)]}, golden {expected[tuple(bad)]}")
        return got


class _CountedLink(Transport):
    """A transport that counts the words it moves each way."""

    def __init__(self, inner):
        self.inner, self.burst_words = inner, inner.burst_words
        self.to_device = self.from_device = 0

    def transact(self, words, count):
        self.to_device += len(words)
        self.from_device += count
        return self.inner.transact(words, count)

    def moved(self):
        return np.array([self.to_device, self.from_device])


@dataclass
class RunResult:
    """What ``bittern run`` reports. Prefill (the prompt in one forward pass) and decode (each
    later token) are apart; ``cycles_per_token`` and what follows from it are decode's (``None``
    when only one token is generated, which has no decode step). Projections: the device alone
    at the preset's clock (``device_tokens_per_s``), and the board link alone
    (``link_tokens_per_s``: the busier direction's words at the link's word rate, ``link``)."""
    text: str
    tokens: list
    prefill_tokens: int
    prefill_cycles: int
    prefill_wall_s: float
    decode_tokens: int
    cycles_per_token: float | None
    decode_wall_s: float
    decode_tokens_per_s: float | None
    device_tokens_per_s: float | None
    link: str
    link_words_per_token: dict | None
    link_tokens_per_s: float | None
    bank_bound_cycles_per_token: float
    bank_bound_fraction: float | None
    sim_cycles_per_s: float
    wall_s: float
    checked: bool | None = None
    calls: dict = field(default_factory=dict)
    first_mismatch: str | None = None

    def to_dict(self):
        return asdict(self)


def uart_link(baud):
    """``(description, words per second each way)`` of a UART at ``baud``, 8N1, full duplex."""
    words_per_s = baud / (10 * WORD_BYTES)          # 10 bits a byte: start, 8 data, stop
    return f"UART 8N1 at {baud} baud, full duplex: {words_per_s:.0f} words/s each way", \
        words_per_s


def run(transport, hw_config, model_config, weights, prompt_tokens, n_tokens, *, check=False,
        decode=bytes, progress=None, sim_cycles=None, prefill="auto", baud=DEFAULT_BAUD):
    """Generate ``n_tokens`` greedily after ``prompt_tokens`` with every BitLinear on the device.

    ``sim_cycles()`` (optional) gives the simulated clock cycles so far, for the simulation
    speed; without it, the device's own working cycles are used. ``prefill`` is where the
    prompt's BitLinears run (:class:`~sw_driver.mapper.DeviceCore`); ``baud`` is the board
    link's rate, for the link-bound projection.
    """
    start_wall = time.perf_counter()
    link = _CountedLink(transport)
    accelerator = Accelerator(link, hw_config)
    accelerator.status()
    accelerator.clear_errors()
    device_core = DeviceCore(accelerator, weights.linears, groups=input_groups(model_config),
                             prefill=prefill, progress=progress)
    core = CheckingCore(device_core, weights.linears) if check else device_core
    model = Model(model_config, weights, core=core)
    measured = _meter(accelerator, link, hw_config)

    def forward(tokens, start):
        """A forward pass: its logits, working cycles and words moved each way."""
        return measured(lambda: model.forward(tokens, start))

    if progress:
        progress(f"prefill: {len(prompt_tokens)} tokens")
    sim_start = sim_cycles() if sim_cycles else 0
    prefill_start = time.perf_counter()
    logits, prefill_cycles, _ = forward(np.asarray(prompt_tokens), 0)
    decode_start = time.perf_counter()
    generated, per_token, words = [], [], []
    while True:
        token = int(np.argmax(logits[-1]))
        generated.append(token)
        if len(generated) == n_tokens:
            break
        if progress:
            progress(f"token {len(generated)}/{n_tokens}: {decode(bytes(generated))!r}")
        logits, cycles, moved = forward(np.array([token]),
                                        len(prompt_tokens) + len(generated) - 1)
        per_token.append(cycles)
        words.append(moved)
    end = time.perf_counter()
    accelerator.check()

    simulated = (sim_cycles() - sim_start) if sim_cycles else prefill_cycles + sum(per_token)
    result = _result(
        hw_config, weights, baud, text=decode(bytes(generated)), tokens=generated,
        prefill_tokens=len(prompt_tokens), prefill_cycles=prefill_cycles,
        decode_tokens=len(per_token),
        cycles_per_token=float(np.mean(per_token)) if per_token else None,
        per_token_words=np.mean(words, axis=0) if words else None, simulated=simulated,
        times=(start_wall, prefill_start, decode_start, end, end - decode_start),
        calls=dict(device_core.calls))
    if check:
        reference = Model(model_config, weights).generate(list(prompt_tokens), n_tokens)
        result.checked = core.mismatches == 0 and reference == generated
        result.first_mismatch = core.first_mismatch or (
            None if reference == generated else
            f"tokens differ: device {generated}, golden {reference}")
    return result


def run_resident(transport, hw_config, model_config, weights, prompt_tokens, n_tokens, *,
                 check=False, decode=bytes, progress=None, sim_cycles=None,
                 baud=DEFAULT_BAUD):
    """Generate ``n_tokens`` greedily after ``prompt_tokens`` on the device's resident units:
    the model loaded once (trits into the banks, the rest with LOAD_TENSOR), then GENERATE.

    A GENERATE runs the prompt and every token after it in one command, so the figures take
    two: ``GENERATE(prompt, 1)`` gives the prefill's cycles (the prompt's last token includes
    the LM head's scan); ``GENERATE(prompt, n_tokens)`` gives the text, and its cycles less the
    prefill's, per decoded token, give decode's. Link words a decoded token are that second
    command's words each way over its decoded tokens. ``check`` compares the tokens, and the
    logits the last one was chosen from (read back after the figures are taken), with golden's
    integer decoder.
    """
    from golden import IntegerModel

    from .resident import load_model as load_resident

    start_wall = time.perf_counter()
    link = _CountedLink(transport)
    accelerator = Accelerator(link, hw_config)
    accelerator.status()
    accelerator.clear_errors()
    golden = IntegerModel(model_config, weights)
    if progress:
        progress("loading the model into the resident units")
    load_resident(accelerator, weights, golden.prepared)
    accelerator.check()
    measured = _meter(accelerator, link, hw_config)
    prompt = [int(token) for token in prompt_tokens]

    def generate(count):
        return measured(lambda: accelerator.generate(prompt, count))

    if progress:
        progress(f"prefill: {len(prompt)} tokens")
    sim_start = sim_cycles() if sim_cycles else 0
    prefill_start = time.perf_counter()
    _, prefill_cycles, _ = generate(1)
    if progress:
        progress(f"generating {n_tokens} tokens")
    decode_start = time.perf_counter()
    generated, cycles, moved = generate(n_tokens)
    end = time.perf_counter()
    logits = accelerator.read_logits() if check else None
    accelerator.check()

    decoded = n_tokens - 1
    simulated = (sim_cycles() - sim_start) if sim_cycles else cycles
    result = _result(
        hw_config, weights, baud, text=decode(bytes(generated)), tokens=generated,
        prefill_tokens=len(prompt), prefill_cycles=prefill_cycles, decode_tokens=decoded,
        cycles_per_token=(cycles - prefill_cycles) / decoded if decoded else None,
        per_token_words=moved / decoded if decoded else None, simulated=simulated,
        times=(start_wall, prefill_start, decode_start, end,
               (end - decode_start) * decoded / n_tokens),
        calls={"generate": 2})
    if check:
        reference, reference_logits = golden.generate(prompt, n_tokens, logits=True)
        rows = np.flatnonzero(logits != reference_logits)
        result.checked = reference == generated and not rows.size
        result.first_mismatch = (
            f"tokens differ: device {generated}, golden's integer decoder {reference}"
            if reference != generated else
            f"the last position's logits differ in {rows.size} of {len(logits)} rows, first "
            f"row {rows[0]}: device {logits[rows[0]]}, golden's integer decoder "
            f"{reference_logits[rows[0]]}" if rows.size else None)
    return result


def _meter(accelerator, link, hw_config):
    """A function running ``step()`` on ``accelerator`` and returning ``(its result, the
    device's working cycles in it, the words it moved each way)``: the counters are read
    around it, and the read's own cycles are not counted."""
    counter_read = CommandTiming(hw_config).simple(Opcode.READ_COUNTERS)

    def measured(step):
        before, moved = accelerator.counters(), link.moved()
        result = step()
        moved = link.moved() - moved
        return result, (accelerator.counters() - before).cycles_working - counter_read, moved

    return measured


def _result(hw_config, weights, baud, *, text, tokens, prefill_tokens, prefill_cycles,
            decode_tokens, cycles_per_token, per_token_words, simulated, times, calls):
    """A :class:`RunResult` from a run's measurements, with the projections they give:
    ``times`` is (start, prefill start, decode start, end, decode's wall seconds)."""
    start_wall, prefill_start, decode_start, end, decode_wall = times
    link_name, link_rate = uart_link(baud)
    bound = bank_bound_cycles_per_token(hw_config, weights)
    return RunResult(
        text=text, tokens=tokens, prefill_tokens=prefill_tokens,
        prefill_cycles=prefill_cycles, prefill_wall_s=decode_start - prefill_start,
        decode_tokens=decode_tokens, cycles_per_token=cycles_per_token,
        decode_wall_s=decode_wall,
        decode_tokens_per_s=(decode_tokens / decode_wall if decode_tokens and decode_wall
                             else None),
        device_tokens_per_s=(hw_config.clock_mhz * 1e6 / cycles_per_token
                             if cycles_per_token else None),
        link=link_name,
        link_words_per_token=({"to_device": float(per_token_words[0]),
                               "from_device": float(per_token_words[1])}
                              if per_token_words is not None else None),
        link_tokens_per_s=(link_rate / float(per_token_words.max())
                           if per_token_words is not None else None),
        bank_bound_cycles_per_token=bound,
        bank_bound_fraction=bound / cycles_per_token if cycles_per_token else None,
        sim_cycles_per_s=simulated / (end - prefill_start) if end > prefill_start else 0.0,
        wall_s=time.perf_counter() - start_wall, calls=calls)


def bank_bound_cycles_per_token(hw_config, weights):
    """The bank-bandwidth bound of decode: every ternary weight read once a token, ``banks x
    lanes`` of them a cycle."""
    trits = sum(weight.trits.size for weight in weights.linears.values())
    return trits / (hw_config.pim.banks * hw_config.pim.lanes)
