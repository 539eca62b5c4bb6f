"""Boards: a device behind a UART bridge, clocked by a PLL, with status on the LEDs.

A *device* is what the board hosts: a :class:`wiring.Component` made by a factory
``device(config)``, with ``i_stream: In(stream.Signature(32))`` (command words),
``o_stream: Out(stream.Signature(32))`` (response words) and, optionally,
``status: Out(DEVICE_STATUS)``. :data:`DEVICES` names the factories the command line offers:
``bittern``, the accelerator (:class:`hw.device.Device`), and ``echo``, a link-test device for
bringing up a board's UART before the accelerator.

:class:`LinkCore` is the board logic without clock or pins (what simulation tests);
:class:`BoardTop` adds the PLL, the reset and the pins of a :class:`Board`.
"""

import math
from dataclasses import dataclass

from amaranth import ClockDomain, Elaboratable, Instance, Module, Mux, Signal
from amaranth.lib import cdc, data, fifo, io, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from .commands import WORD_BITS
from .device import DEVICE_STATUS, Device
from .uart import DEFAULT_BAUD, UARTBridge, baud_divisor

__all__ = ["DEVICE_STATUS", "LEDS", "Ecp5Pll", "Ice40Pll", "PllError", "EchoDevice",
           "DEVICES", "DEFAULT_DEVICE", "LinkCore", "Board", "BOARDS", "BoardError", "board",
           "board_clock", "BoardTop"]

LEDS = data.StructLayout({"heartbeat": 1, "rx": 1, "tx": 1, "busy": 1, "error": 1})


# PLLs: dividers computed here, so the achieved frequency is known before any tool runs.

class PllError(ValueError):
    """No divider setting reaches the requested frequency."""


PLL_TOLERANCE = 0.05           # the nearest setting may miss the asked frequency by this much


def _best(candidates, fout_hz, what):
    """The candidate closest to ``fout_hz``; ties go to the VCO nearest its mid-range."""
    best = min(candidates, key=lambda pll: (round(abs(pll.fout_hz - fout_hz)),
                                            abs(pll.fvco_hz - pll.VCO_MID_HZ)), default=None)
    if best is None or abs(best.fout_hz - fout_hz) > PLL_TOLERANCE * fout_hz:
        nearest = f"; the nearest is {best.fout_hz / 1e6:g} MHz" if best else ""
        raise PllError(f"the {what} PLL cannot make {fout_hz / 1e6:g} MHz within "
                       f"{PLL_TOLERANCE:.0%}{nearest}")
    return best


@dataclass(frozen=True)
class Ecp5Pll:
    """ECP5 ``EHXPLLL`` with ``CLKOP`` fed back: ``fout = fin * clkfb_div / clki_div``."""
    fin_hz: float
    clki_div: int
    clkfb_div: int
    clkop_div: int

    PFD_HZ = (3.125e6, 400e6)
    VCO_HZ = (400e6, 800e6)
    VCO_MID_HZ = 600e6

    @property
    def fout_hz(self):
        return self.fin_hz * self.clkfb_div / self.clki_div

    @property
    def fvco_hz(self):
        return self.fout_hz * self.clkop_div

    @classmethod
    def solve(cls, fin_hz, fout_hz):
        """The setting nearest ``fout_hz`` (the search of Trellis' ``ecppll``)."""
        def candidates():
            for clki_div in range(1, 129):
                if not cls.PFD_HZ[0] <= fin_hz / clki_div <= cls.PFD_HZ[1]:
                    continue
                for clkfb_div in range(1, 81):
                    for clkop_div in range(1, 129):
                        pll = cls(fin_hz, clki_div, clkfb_div, clkop_div)
                        if cls.VCO_HZ[0] <= pll.fvco_hz <= cls.VCO_HZ[1]:
                            yield pll
        return _best(candidates(), fout_hz, "ECP5")

    def elaborate_into(self, m, pin, clk_out, locked):
        """Add the PLL to ``m``, fed from the oscillator ``pin`` (a requested ``dir="-"`` port)."""
        m.submodules.osc_buffer = osc = io.Buffer("i", pin)
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=f"{self.fin_hz / 1e6:g}",
            a_FREQUENCY_PIN_CLKOP=f"{self.fout_hz / 1e6:g}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8",
            a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
            p_CLKI_DIV=self.clki_div, p_CLKFB_DIV=self.clkfb_div,
            p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=self.clkop_div,
            p_CLKOP_CPHASE=self.clkop_div - 1, p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
            i_CLKI=osc.i, i_CLKFB=clk_out, i_RST=0, i_STDBY=0, i_PHASESEL0=0, i_PHASESEL1=0,
            i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0,
            o_CLKOP=clk_out, o_LOCK=locked)


@dataclass(frozen=True)
class Ice40Pll:
    """iCE40 ``SB_PLL40_PAD``, simple feedback: ``fout = fin * (divf+1) / ((divr+1) * 2**divq)``.

    The pad variant takes the oscillator pin itself, which must be the PLL's input pad (on the
    iCEBreaker the 12 MHz clock is on pin 35, the UP5K's PLL pad).
    """
    fin_hz: float
    divr: int
    divf: int
    divq: int

    PFD_HZ = (10e6, 133e6)
    VCO_HZ = (533e6, 1066e6)
    VCO_MID_HZ = 800e6

    @property
    def fpfd_hz(self):
        return self.fin_hz / (self.divr + 1)

    @property
    def fvco_hz(self):
        return self.fpfd_hz * (self.divf + 1)

    @property
    def fout_hz(self):
        return self.fvco_hz / (1 << self.divq)

    @property
    def filter_range(self):
        """Loop filter setting for the PFD frequency (as IceStorm's ``icepll`` picks it)."""
        bounds = [17e6, 26e6, 44e6, 66e6, 101e6]
        return 1 + sum(self.fpfd_hz >= bound for bound in bounds)

    @classmethod
    def solve(cls, fin_hz, fout_hz):
        """The setting nearest ``fout_hz`` (the search of IceStorm's ``icepll``)."""
        def candidates():
            for divr in range(16):
                if not cls.PFD_HZ[0] <= fin_hz / (divr + 1) <= cls.PFD_HZ[1]:
                    continue
                for divf in range(128):
                    for divq in range(1, 7):
                        pll = cls(fin_hz, divr, divf, divq)
                        if cls.VCO_HZ[0] <= pll.fvco_hz <= cls.VCO_HZ[1]:
                            yield pll
        return _best(candidates(), fout_hz, "iCE40")

    def elaborate_into(self, m, pin, clk_out, locked):
        """Add the PLL to ``m``, fed from the oscillator ``pin`` (a requested ``dir="-"`` port)."""
        m.submodules.pll = Instance(
            "SB_PLL40_PAD",
            p_FEEDBACK_PATH="SIMPLE", p_DIVR=self.divr, p_DIVF=self.divf, p_DIVQ=self.divq,
            p_FILTER_RANGE=self.filter_range,
            io_PACKAGEPIN=pin.io, i_RESETB=1, i_BYPASS=0,
            o_PLLOUTGLOBAL=clk_out, o_LOCK=locked)


# The devices a board can host.

class EchoDevice(wiring.Component):
    """Link-test device: answers every word with the word plus one (modulo 2**32).

    Any 32-bit pattern is a valid word to it, so it checks a UART link's byte order and timing
    on its own (``bittern synth --device echo`` builds a board with nothing else behind the link).

    Members
    -------
    i_stream : In(stream.Signature(32))
        Command words.
    o_stream : Out(stream.Signature(32))
        One response word per command word, in order.
    status : Out(DEVICE_STATUS)
        ``busy`` while a response waits; ``error`` is never set.
    """
    i_stream: In(stream.Signature(WORD_BITS))
    o_stream: Out(stream.Signature(WORD_BITS))
    status: Out(DEVICE_STATUS)

    def __init__(self, config=None):
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [self.i_stream.ready.eq(~self.o_stream.valid | self.o_stream.ready),
                     self.status.busy.eq(self.o_stream.valid)]
        with m.If(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)
        with m.If(self.i_stream.valid & self.i_stream.ready):
            m.d.sync += [self.o_stream.valid.eq(1),
                         self.o_stream.payload.eq(self.i_stream.payload + 1)]
        return m


DEVICES = {
    "bittern": Device,
    "echo": EchoDevice,
}
DEFAULT_DEVICE = "bittern"


# The board logic and the boards.

class LinkCore(wiring.Component):
    """A device behind a UART bridge, with status LEDs: everything on a board but clock and pins.

    Parameters
    ----------
    device : wiring.Component
        The hosted device (see the module docstring for its contract).
    clk_hz : float
        ``sync`` clock frequency (sets the baud divisor and the LED timings).
    baud : int
        UART line rate.

    Members
    -------
    rx : In(1)
        UART from the host.
    tx : Out(1)
        UART to the host.
    leds : Out(LEDS)
        ``heartbeat`` blinks at 1 Hz; ``rx`` / ``tx`` light for 50 ms per byte; ``busy`` is the
        device's; ``error`` is the device's error or the bridge's overrun, framing error or
        resync flag (sticky).
    """
    rx: In(1, init=1)
    tx: Out(1, init=1)
    leds: Out(LEDS)

    def __init__(self, device, *, clk_hz, baud=DEFAULT_BAUD):
        if not (isinstance(device, wiring.Component)
                and {"i_stream", "o_stream"} <= set(device.signature.members)):
            raise TypeError(f"device must be a wiring.Component with i_stream and o_stream, "
                            f"not {device!r}")
        baud_divisor(clk_hz, baud)
        self._device = device
        self._clk_hz, self._baud = clk_hz, baud
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        bridge = m.submodules.bridge = UARTBridge(clk_hz=self._clk_hz, baud=self._baud)
        device = m.submodules.device = self._device
        m.d.comb += [bridge.rx.eq(self.rx), self.tx.eq(bridge.tx)]
        # A FIFO each way between the bridge and the device: the device is spread over the
        # die, the bridge sits by its pins. The link is slower than the device by three orders
        # of magnitude; the cycles each costs are nothing.
        self._link_fifo(m, bridge.o_stream, device.i_stream, name="command")
        self._link_fifo(m, device.o_stream, bridge.i_stream, name="response")

        half_second = max(1, round(self._clk_hz / 2))
        heartbeat = Signal(range(half_second))
        m.d.sync += heartbeat.eq(Mux(heartbeat == half_second - 1, 0, heartbeat + 1))
        with m.If(heartbeat == half_second - 1):
            m.d.sync += self.leds.heartbeat.eq(~self.leds.heartbeat)
        for led, pulse in ((self.leds.rx, bridge.rx_byte), (self.leds.tx, bridge.tx_byte)):
            m.d.comb += led.eq(self._stretch(m, pulse, cycles=max(1, round(self._clk_hz / 20))))

        status = device.status if "status" in device.signature.members else None
        m.d.comb += [
            self.leds.busy.eq(status.busy if status is not None else 0),
            self.leds.error.eq(bridge.overrun | bridge.framing_error | bridge.resync
                               | (status.error if status is not None else 0)),
        ]
        return m

    @staticmethod
    def _link_fifo(m, source, sink, *, name):
        """``source`` to ``sink`` through a three-entry FIFO, still a word per cycle. Each
        side's ``ready`` comes from the FIFO's own state, so no path runs from the bridge's FIFO
        or shift registers into the device's control or back. The sink's word comes from a
        register, not out of a distributed RAM: the device checks a command word as it
        arrives. A word takes a cycle longer to cross, which a UART link does not see."""
        buffer = m.submodules[name] = fifo.SyncFIFOBuffered(width=len(source.payload), depth=3)
        wiring.connect(m, source, buffer.w_stream)
        wiring.connect(m, buffer.r_stream, sink)

    @staticmethod
    def _stretch(m, pulse, *, cycles):
        """High for ``cycles`` after each ``pulse`` (registered first: the LEDs are far from
        the logic whose pulses they show)."""
        pulse_q = Signal()
        timer = Signal(range(cycles + 1))
        m.d.sync += [pulse_q.eq(pulse),
                     timer.eq(Mux(pulse_q, cycles, Mux(timer != 0, timer - 1, 0)))]
        return timer != 0


class BoardError(ValueError):
    """An unknown board, or a clock the board cannot make."""


_FAMILIES = {"ecp5": (Ecp5Pll, "bit"), "ice40": (Ice40Pll, "bin")}     # PLL, bitstream suffix


@dataclass(frozen=True)
class Board:
    """A supported board: its Amaranth platform, FPGA family, default preset and LED use."""
    name: str
    description: str
    platform: type
    family: str                 # "ecp5" or "ice40"
    default_preset: str
    leds: tuple                 # a field of LEDS per ("led", i) resource, in order
    resources: dict             # what the FPGA holds, in the area metrics of its family

    @property
    def pll(self):
        """The PLL class of the family (``solve(fin_hz, fout_hz)``)."""
        return _FAMILIES[self.family][0]

    @property
    def bitstream(self):
        """File name suffix of the bitstream."""
        return _FAMILIES[self.family][1]

    @property
    def osc_hz(self):
        """The board oscillator's frequency (the platform's default clock)."""
        return self.platform().default_clk_constraint.frequency


BOARDS = {board.name: board for board in [
    Board("ulx3s-85f", "Radiona ULX3S, ECP5 LFE5U-85F, 25 MHz oscillator, FTDI UART",
          ULX3S_85F_Platform, "ecp5", "ulx3s-85f",
          leds=("heartbeat", "rx", "tx", "busy", "error"),
          resources={"LUT4-eq": 83_640, "TRELLIS_FF": 83_640, "DP16KD": 208,
                     "MULT18X18D": 156}),
    Board("icebreaker", "1BitSquared iCEBreaker, iCE40UP5K, 12 MHz oscillator, FTDI UART",
          ICEBreakerPlatform, "ice40", "icebreaker",
          leds=("error", "heartbeat"),          # led 0 is red, led 1 green
          resources={"SB_LUT4": 5_280, "SB_DFF*": 5_280, "SB_RAM40_4K": 30,
                     "SB_SPRAM256KA": 4, "SB_MAC16": 8}),
]}


def board(name):
    """The named :class:`Board`, or :class:`BoardError` listing the known ones."""
    try:
        return BOARDS[name]
    except KeyError:
        raise BoardError(f"unknown board {name!r}; known boards: {', '.join(BOARDS)}") from None


def board_clock(board, config, *, baud):
    """The PLL setting that clocks ``config`` on ``board``, checked to carry ``baud``.

    Raises :class:`BoardError` (call it before making a :class:`BoardTop` to fail early).
    """
    try:
        pll = board.pll.solve(board.osc_hz, config.clock_mhz * 1e6)
        baud_divisor(pll.fout_hz, baud)
    except ValueError as error:                 # PllError, or a baud the clock cannot make
        raise BoardError(f"{board.name}: {error}") from None
    return pll


class BoardTop(Elaboratable):
    """What a board's bitstream holds: PLL, reset, :class:`LinkCore` and its pins.

    The ``sync`` domain runs at the PLL frequency nearest ``config.clock_mhz`` (see
    :attr:`pll`) and is held in reset until the PLL has locked and 20 us more have passed (iCE40
    block RAM reads zeroes for ~3 us after configuration). nextpnr derives the clock's
    constraint from the oscillator's and the PLL's settings.

    The reset comes straight from a flip-flop and, on ECP5, is put on a global net (``DCCA``):
    nextpnr-ecp5 promotes only clocks by itself, and in fabric routing the reset's fan-out
    (every flip-flop of the device) does not fit a cycle. nextpnr-ice40 promotes high-fan-out
    resets to a global buffer on its own.
    """
    POR_SECONDS = 20e-6

    def __init__(self, board, config, device, *, baud=DEFAULT_BAUD):
        self._board = board
        self._pll = board_clock(board, config, baud=baud)
        self._config, self._device, self._baud = config, device, baud

    @property
    def pll(self):
        return self._pll

    def elaborate(self, platform):
        m = Module()
        clk = Signal()
        locked = Signal()
        locked_sync = Signal()
        reset = Signal(init=1)
        self._pll.elaborate_into(m, platform.request(platform.default_clk, dir="-"),
                                 clk, locked)
        m.domains.sync = sync = ClockDomain("sync")
        m.domains.por = por = ClockDomain("por", reset_less=True)
        m.d.comb += [sync.clk.eq(clk), por.clk.eq(clk)]
        if self._board.family == "ecp5":
            m.submodules.reset_buffer = Instance("DCCA", i_CLKI=reset, i_CE=1, o_CLKO=sync.rst)
        else:
            m.d.comb += sync.rst.eq(reset)

        m.submodules.lock_sync = cdc.FFSynchronizer(locked, locked_sync, o_domain="por")
        delay = math.ceil(self.POR_SECONDS * self._pll.fout_hz)
        count = Signal(range(delay + 1))
        m.d.por += [count.eq(Mux(locked_sync, Mux(count == delay, delay, count + 1), 0)),
                    reset.eq(count != delay)]

        core = m.submodules.core = LinkCore(self._device(self._config),
                                            clk_hz=self._pll.fout_hz, baud=self._baud)
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = uart_rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = uart_tx = io.Buffer("o", uart.tx)
        m.d.comb += [core.rx.eq(uart_rx.i), uart_tx.o.eq(core.tx)]
        for index, field in enumerate(self._board.leds):
            led = m.submodules[f"led_{index}"] = io.Buffer("o", platform.request("led", index,
                                                                                 dir="-"))
            m.d.comb += led.o.eq(getattr(core.leds, field))
        return m
