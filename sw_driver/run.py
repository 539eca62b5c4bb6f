"""Whole-model inference through a device: the host runs the float steps (golden), the device
every BitLinear's integer core. The same function serves every transport."""

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from golden import Model
from golden.bitlinear import bitlinear_int
from hw.commands import Opcode

from .driver import Accelerator
from .mapper import DeviceCore
from .timing import CommandTiming

__all__ = ["load_model", "RunResult", "CheckingCore", "run"]


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


@dataclass
class RunResult:
    """What ``bittern run`` reports."""
    text: str
    tokens: list
    prefill_cycles: int
    cycles_per_token: float
    tokens_per_s: float
    sim_cycles_per_s: float
    projected_tokens_per_s: float
    wall_s: float
    checked: bool | None = None
    calls: dict = field(default_factory=dict)
    first_mismatch: str | None = None

    def to_dict(self):
        return asdict(self)


def run(transport, hw_config, model_config, weights, prompt_tokens, n_tokens, *, check=False,
        decode=bytes, progress=None, sim_cycles=None):
    """Generate ``n_tokens`` greedily after ``prompt_tokens`` with every BitLinear on the device.

    ``sim_cycles()`` (optional) gives the simulated clock cycles so far, for the simulation
    speed; without it, the device's own working cycles are used.
    """
    start_wall = time.perf_counter()
    accelerator = Accelerator(transport, hw_config)
    accelerator.status()
    accelerator.clear_errors()
    device_core = DeviceCore(accelerator, weights.linears, progress=progress)
    core = CheckingCore(device_core, weights.linears) if check else device_core
    model = Model(model_config, weights, core=core)
    counter_read = CommandTiming(hw_config).simple(Opcode.READ_COUNTERS)

    def working_cycles(before):
        return (accelerator.counters() - before).cycles_working - counter_read

    if progress:
        progress(f"prefill: {len(prompt_tokens)} tokens")
    before = accelerator.counters()
    decode_start_wall = time.perf_counter()
    sim_start = sim_cycles() if sim_cycles else 0
    logits = model.forward(np.asarray(prompt_tokens), 0)
    prefill_cycles = working_cycles(before)
    generated, per_token = [], []
    while True:
        token = int(np.argmax(logits[-1]))
        generated.append(token)
        if len(generated) == n_tokens:
            break
        if progress:
            progress(f"token {len(generated)}/{n_tokens}: {decode(bytes(generated))!r}")
        before = accelerator.counters()
        logits = model.forward(np.array([token]), len(prompt_tokens) + len(generated) - 1)
        per_token.append(working_cycles(before))
    wall = time.perf_counter() - decode_start_wall
    accelerator.check()

    device_cycles = prefill_cycles + sum(per_token)
    simulated = (sim_cycles() - sim_start) if sim_cycles else device_cycles
    cycles_per_token = float(np.mean(per_token)) if per_token else float(prefill_cycles)
    result = RunResult(
        text=decode(bytes(generated)), tokens=generated, prefill_cycles=prefill_cycles,
        cycles_per_token=cycles_per_token,
        tokens_per_s=len(generated) / wall if wall else 0.0,
        sim_cycles_per_s=simulated / wall if wall else 0.0,
        projected_tokens_per_s=hw_config.clock_mhz * 1e6 / cycles_per_token,
        wall_s=time.perf_counter() - start_wall, calls=dict(device_core.calls))
    if check:
        reference = Model(model_config, weights).generate(list(prompt_tokens), n_tokens)
        result.checked = core.mismatches == 0 and reference == generated
        result.first_mismatch = core.first_mismatch or (
            None if reference == generated else
            f"tokens differ: device {generated}, golden {reference}")
    return result
