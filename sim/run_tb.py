"""Whole-model inference on the RTL: the blocking driver runs in a thread (``cocotb.task.bridge``)
and its transport hands each transaction to the simulation (``cocotb.task.resume``).

Parameters (``BITTERN_PARAMS``): ``config``, ``model`` ("tiny" or a checkpoint path),
``prompt_tokens``, ``tokens``, ``check``, ``prefill``.
"""

import cocotb
from cocotb.task import bridge, resume

from hw.config import Config
from hw.uart import DEFAULT_BAUD
from sim.tb import TB, StreamSink, StreamSource, params, write_report
from sw_driver.driver import Transport
from sw_driver.run import load_model, run
from sw_driver.tokenizer import decode


class RtlTransport(Transport):
    """Words to and from the simulated device; the host side is ideal (no pauses)."""

    def __init__(self, tb):
        self.tb = tb
        self.source = StreamSource(tb.dut, "i_stream", rng=tb.rng)
        self.sink = StreamSink(tb.dut, "o_stream", rng=tb.rng)

    async def _transact(self, words, count):
        receiver = cocotb.start_soon(self.sink.receive(count, self.tb.cycle, timeout=100_000))
        await self.source.send(words, self.tb.cycle)
        return await receiver

    def transact(self, words, count):
        return resume(self._transact)(words, count)


@cocotb.test()
async def inference(dut):
    """Generate text with every BitLinear on the RTL; with ``check``, fail on any difference
    from golden (each integer result and each token)."""
    p = params()
    tb = TB(dut, seed=0)
    await tb.reset()
    transport = RtlTransport(tb)
    model_config, weights = load_model(p["model"])
    result = await bridge(run)(transport, Config.from_dict(p["config"]), model_config, weights,
                               p["prompt_tokens"], p["tokens"], check=p["check"],
                               decode=decode, sim_cycles=tb.cycle,
                               prefill=p.get("prefill", "auto"), baud=p.get("baud", DEFAULT_BAUD))
    write_report(result.to_dict())
    assert result.checked is not False, result.first_mismatch
