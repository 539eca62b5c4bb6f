"""UART (8N1) and the bridge that carries the device's 32-bit command stream over it.

Words cross the link least significant byte first. The host has no flow control: the receive
side buffers ``rx_fifo_words`` words for a device that is not ready, and a byte that finds the
buffer full is lost and sets the sticky ``overrun`` flag.

Resynchronisation: a host writes each command's bytes back to back, so a word whose bytes stop
coming part-way was cut by a lost or an extra byte. When no byte arrives for ``resync_bits`` bit
times while a word is part-assembled, the bridge drops the part word and starts the next word
afresh (sticky ``resync`` flag). A host that sees garbage or silence waits longer than that, then
sends ``READ_STATUS`` until a status arrives (:mod:`sw_driver.serial_link`).
"""

from amaranth import Cat, Const, Module, Signal
from amaranth.lib import cdc, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["DEFAULT_BAUD", "RX_FIFO_WORDS", "RESYNC_BITS", "baud_divisor", "UARTRx", "UARTTx",
           "UARTBridge"]

DEFAULT_BAUD = 115200           # the line rate of every board build unless asked otherwise

BAUD_TOLERANCE = 0.02           # 8N1 samples the stop bit 9.5 bits in: 2 % is a safe mismatch
RX_FIFO_WORDS = 64              # the bridge's default receive buffer (the host's burst limit)
# A part word is dropped after 10 ms without a byte at 115,200 baud. Inside a command the only
# gaps are a USB-serial adapter's between USB transfers, about a 1 ms frame; the host waits its
# read timeout (2 s by default), far longer, before it resynchronises.
RESYNC_BITS = 1152


def baud_divisor(clk_hz, baud):
    """Clock cycles per bit for ``baud`` at ``clk_hz``; :class:`ValueError` when too coarse."""
    if not (isinstance(baud, int) and baud > 0):
        raise ValueError(f"baud must be a positive integer, not {baud!r}")
    divisor = round(clk_hz / baud)
    if divisor < 4:
        raise ValueError(f"baud {baud} is too fast for a {clk_hz / 1e6:g} MHz clock: "
                         f"a bit must last at least 4 cycles, not {clk_hz / baud:.2f}")
    error = abs(clk_hz / divisor - baud) / baud
    if error > BAUD_TOLERANCE:
        raise ValueError(f"baud {baud} is {error:.1%} off at {clk_hz / 1e6:g} MHz "
                         f"(divisor {divisor}); at most {BAUD_TOLERANCE:.0%} works")
    return divisor


class UARTRx(wiring.Component):
    """8N1 receiver: a 2-flop synchroniser, then each bit sampled in its middle.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (:func:`baud_divisor`).

    Members
    -------
    rx : In(1)
        The line, idle high; asynchronous to the clock.
    o_stream : Out(stream.Signature(8))
        Received bytes. A byte that completes while the previous one is still waiting is lost.
    overrun : Out(1)
        Pulses when a byte is lost that way.
    framing_error : Out(1)
        Pulses when a stop bit is low (the byte is dropped).
    """
    rx: In(1, init=1)
    o_stream: Out(stream.Signature(8))
    overrun: Out(1)
    framing_error: Out(1)

    def __init__(self, divisor):
        if not (isinstance(divisor, int) and divisor >= 4):
            raise ValueError(f"divisor must be an integer >= 4, not {divisor!r}")
        self._divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        line = Signal(init=1)
        m.submodules.sync = cdc.FFSynchronizer(self.rx, line, init=1)

        timer = Signal(range(self._divisor))
        bits = Signal(range(8))
        shift = Signal(8)

        with m.If(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)
        with m.If(timer != 0):
            m.d.sync += timer.eq(timer - 1)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(self._divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self._divisor - 1), bits.eq(0)]
                    m.next = "DATA"
                    with m.If(line):                   # a glitch, not a start bit
                        m.next = "IDLE"
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self._divisor - 1), shift.eq(Cat(shift[1:], line)),
                                 bits.eq(bits + 1)]
                    with m.If(bits == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(~line):
                        m.d.comb += self.framing_error.eq(1)
                    with m.Elif(self.o_stream.valid & ~self.o_stream.ready):
                        m.d.comb += self.overrun.eq(1)
                    with m.Else():
                        m.d.sync += [self.o_stream.payload.eq(shift), self.o_stream.valid.eq(1)]
                    m.next = "IDLE"
        return m


class UARTTx(wiring.Component):
    """8N1 transmitter.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (:func:`baud_divisor`).

    Members
    -------
    i_stream : In(stream.Signature(8))
        Bytes to send; one is taken each time the previous stop bit has finished.
    tx : Out(1)
        The line, idle high, driven straight from a register.
    """
    i_stream: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, divisor):
        if not (isinstance(divisor, int) and divisor >= 4):
            raise ValueError(f"divisor must be an integer >= 4, not {divisor!r}")
        self._divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        frame = Signal(10, init=~0)            # start bit, 8 data bits (LSB first), stop bit
        bits_left = Signal(range(11))
        timer = Signal(range(self._divisor))
        m.d.comb += [self.tx.eq(frame[0]), self.i_stream.ready.eq(bits_left == 0)]
        with m.If(bits_left == 0):
            with m.If(self.i_stream.valid):
                m.d.sync += [frame.eq(Cat(Const(0, 1), self.i_stream.payload, Const(1, 1))),
                             bits_left.eq(10), timer.eq(self._divisor - 1)]
        with m.Elif(timer == 0):
            m.d.sync += [frame.eq(Cat(frame[1:], Const(1, 1))), bits_left.eq(bits_left - 1),
                         timer.eq(self._divisor - 1)]
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
        return m


class UARTBridge(wiring.Component):
    """A 32-bit word stream in each direction over one UART, bytes little-endian.

    Parameters
    ----------
    clk_hz : float
        Frequency of the ``sync`` clock.
    baud : int
        Line rate (default :data:`DEFAULT_BAUD`); must be within 2 % of
        ``clk_hz / round(clk_hz / baud)``.
    rx_fifo_words : int
        Received words buffered for a device that is not ready.
    resync_bits : int
        Bit times without a byte after which a part-assembled word is dropped (at least 20:
        back-to-back bytes arrive every 10).

    Members
    -------
    rx : In(1)
        UART line from the host.
    tx : Out(1)
        UART line to the host.
    o_stream : Out(stream.Signature(32))
        Words received (to the device's ``i_stream``).
    i_stream : In(stream.Signature(32))
        Words to send (from the device's ``o_stream``).
    rx_byte, tx_byte : Out(1)
        Pulse once per byte received / started (activity LEDs).
    overrun, framing_error : Out(1)
        Sticky until reset: a received byte was lost / had a low stop bit.
    resync : Out(1)
        Sticky until reset: a part-assembled word was dropped after ``resync_bits`` idle bit
        times (a byte was lost or added on the way).
    """
    rx: In(1, init=1)
    tx: Out(1, init=1)
    o_stream: Out(stream.Signature(32))
    i_stream: In(stream.Signature(32))
    rx_byte: Out(1)
    tx_byte: Out(1)
    overrun: Out(1)
    framing_error: Out(1)
    resync: Out(1)

    def __init__(self, *, clk_hz, baud=DEFAULT_BAUD, rx_fifo_words=RX_FIFO_WORDS,
                 resync_bits=RESYNC_BITS):
        self._divisor = baud_divisor(clk_hz, baud)
        if not (isinstance(rx_fifo_words, int) and rx_fifo_words >= 1):
            raise ValueError(f"rx_fifo_words must be a positive integer, not {rx_fifo_words!r}")
        if not (isinstance(resync_bits, int) and resync_bits >= 20):
            raise ValueError(f"resync_bits must be an integer of at least 20 (two byte frames), "
                             f"not {resync_bits!r}")
        self._rx_fifo_words = rx_fifo_words
        self._resync_bits = resync_bits
        super().__init__()

    @property
    def divisor(self):
        """Clock cycles per bit."""
        return self._divisor

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = uart_rx = UARTRx(self._divisor)
        m.submodules.uart_tx = uart_tx = UARTTx(self._divisor)
        m.submodules.rx_fifo = rx_fifo = fifo.SyncFIFOBuffered(width=32,
                                                                depth=self._rx_fifo_words)
        m.d.comb += [uart_rx.rx.eq(self.rx), self.tx.eq(uart_tx.tx)]
        # A register after the FIFO: a block RAM's read data arrives late in the cycle.
        with m.If(~self.o_stream.valid | self.o_stream.ready):
            m.d.comb += rx_fifo.r_en.eq(1)
            m.d.sync += [self.o_stream.valid.eq(rx_fifo.r_rdy),
                         self.o_stream.payload.eq(rx_fifo.r_data)]

        # Receive: three bytes wait in `low`; the fourth completes a word into the FIFO.
        low = Signal(24)
        count = Signal(range(4))
        last = count == 3
        byte = uart_rx.o_stream
        m.d.comb += [
            byte.ready.eq(~last | rx_fifo.w_rdy),
            rx_fifo.w_data.eq(Cat(low, byte.payload)),
            rx_fifo.w_en.eq(byte.valid & last),
            self.rx_byte.eq(byte.valid & byte.ready),
        ]
        with m.If(byte.valid & byte.ready):
            m.d.sync += [low.eq(Cat(low[8:], byte.payload)), count.eq(count + 1)]

        # Resynchronise: `idle` restarts while a byte is on offer (so a full FIFO never counts as
        # a gap) and counts up from there; its top bit, a register, rises `resync_bits` bit times
        # after the last byte was taken. A part word then is dropped: `count` restarts.
        idle_cycles = self._resync_bits * self._divisor
        idle_width = (idle_cycles - 1).bit_length()
        idle = Signal(idle_width + 1, init=1 << idle_width)
        with m.If(byte.valid):
            m.d.sync += idle.eq((1 << idle_width) - idle_cycles)
        with m.Elif(~idle[-1]):
            m.d.sync += idle.eq(idle + 1)
        with m.Elif(count != 0):
            m.d.sync += [count.eq(0), self.resync.eq(1)]

        # Send: a taken word leaves as four bytes, least significant first.
        word = Signal(32)
        left = Signal(range(5))
        m.d.comb += [
            self.i_stream.ready.eq(left == 0),
            uart_tx.i_stream.valid.eq(left != 0),
            uart_tx.i_stream.payload.eq(word[:8]),
            self.tx_byte.eq(uart_tx.i_stream.valid & uart_tx.i_stream.ready),
        ]
        with m.If(self.i_stream.valid & self.i_stream.ready):
            m.d.sync += [word.eq(self.i_stream.payload), left.eq(4)]
        with m.Elif(uart_tx.i_stream.valid & uart_tx.i_stream.ready):
            m.d.sync += [word.eq(word >> 8), left.eq(left - 1)]

        with m.If(uart_rx.overrun):
            m.d.sync += self.overrun.eq(1)
        with m.If(uart_rx.framing_error):
            m.d.sync += self.framing_error.eq(1)
        return m
