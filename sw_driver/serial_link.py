"""The driver's transport over a serial link: a board running :class:`hw.boards.BoardTop`.

Words cross the link as :class:`hw.uart.UARTBridge` frames them: 32 bits, least significant byte
first, in both directions. The transport needs only a *byte port* with pyserial's interface:
``write(data: bytes)``, ``flush()`` (optional: wait until written bytes have left) and
``read(n) -> bytes``, which returns fewer than ``n`` bytes when its timeout passes first.
:meth:`SerialTransport.open` opens a real port with pyserial; a testbench passes a port backed by
a UART model instead (``sim.uart_tb``), so the same driver runs on both.

The link has no flow control: the board buffers :data:`hw.uart.RX_FIFO_WORDS` command words for a
device that is not taking them, and loses what comes after. :attr:`SerialTransport.burst_words`
tells the driver so (it splits commands whose words could pile up, see
:attr:`sw_driver.driver.Transport.burst_words`).
"""

from hw.commands import WORD_BYTES
from hw.uart import DEFAULT_BAUD, RX_FIFO_WORDS

from .driver import DeviceError, Transport

__all__ = ["SerialTransport"]


class SerialTransport(Transport):
    """Command words out of ``port``, response words back; a silent device raises, never hangs.

    Parameters
    ----------
    port
        A byte port with pyserial's ``write(bytes)``, ``read(n) -> bytes`` (returning early, short,
        when the port's timeout passes) and, if it has one, ``flush()`` (wait until the written
        bytes have left, so that the timeout counts from the end of a long command).
    burst_words : int
        Command words the board buffers for a device that is not taking them (its bridge's
        ``rx_fifo_words``).
    """

    def __init__(self, port, *, burst_words=RX_FIFO_WORDS):
        if not (callable(getattr(port, "write", None)) and callable(getattr(port, "read", None))):
            raise TypeError(f"port must have write(bytes) and read(n) methods, not {port!r}")
        if isinstance(burst_words, bool) or not isinstance(burst_words, int) or burst_words < 2:
            raise ValueError(f"burst_words must be an integer of at least 2, not {burst_words!r}")
        self.port = port
        self.burst_words = burst_words

    @classmethod
    def open(cls, name, *, baud=DEFAULT_BAUD, timeout=2.0, **kwargs):
        """A transport on the serial port ``name`` (``/dev/ttyUSB0``, ``COM3``) through pyserial.

        ``timeout`` (seconds) is how long the device may stay silent while a response is owed.
        Raises pyserial's ``SerialException`` if the port cannot be opened.
        """
        import serial          # only a board needs pyserial

        port = serial.Serial(name, baud, timeout=timeout)
        port.reset_input_buffer()          # bytes a previous session left unread
        return cls(port, **kwargs)

    def close(self):
        """Close the port (if it can be closed)."""
        close = getattr(self.port, "close", None)
        if close:
            close()

    def transact(self, words, count):
        data = b"".join(word.to_bytes(WORD_BYTES, "little") for word in words)
        if data:
            written = self.port.write(data)
            if written is not None and written != len(data):
                raise DeviceError(f"serial link: wrote {written} of {len(data)} bytes")
            flush = getattr(self.port, "flush", None)
            if count and flush:
                flush()
        wanted = WORD_BYTES * count
        received = bytearray()
        while len(received) < wanted:
            chunk = self.port.read(wanted - len(received))
            if not chunk:
                raise DeviceError(
                    f"serial link: the device went silent after {len(received)} of {wanted} "
                    f"response bytes ({count} words); is the board programmed with this "
                    f"configuration, and is the baud rate right?")
            received += chunk
        return [int.from_bytes(received[i:i + WORD_BYTES], "little")
                for i in range(0, wanted, WORD_BYTES)]
