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

Resynchronisation. A byte lost, added or corrupted on the line puts the device's words out of
step with the host's and may leave the device inside a command made of garbage. Two rules bring
it back: the bridge drops a part-assembled word when no byte arrives for
:data:`hw.uart.RESYNC_BITS` bit times (10 ms at 115,200 baud; a host writes each command's bytes
back to back), and the device finishes every command in a bounded number of words. So when the
device goes silent while a response is owed, or answers with a header that is not the one owed
(:class:`sw_driver.driver.Accelerator` checks each), the transport
(:meth:`SerialTransport.resynchronise`):

1. reads until the device has been silent for the port's timeout, which must be longer than the
   bridge's gap: the bridge has then dropped any part word;
2. sends ``READ_STATUS`` in bursts of 1, 2, 4, ... words (at most ``burst_words``, which the
   board's buffer holds), reading what comes back, until it ends in whole ``STATUS`` responses
   with the right magic: the device has then answered a command, so it is at a command boundary.
   Everything before them is discarded;
3. reports a :class:`~sw_driver.driver.DeviceError` saying what happened: the response that was
   wrong, the stray bytes discarded and the device's sticky error. No response data is returned.

It gives up with a :class:`~sw_driver.driver.DeviceError` asking for a reset after ``resync_words``
``READ_STATUS`` words, or when the device goes on sending for :data:`STRAY_BYTES` bytes; a device
that has not sent a byte since the port was opened is not resynchronised (a board that is not
programmed, or runs another configuration or baud rate, would only make it wait). A corrupted
byte inside data (weights, activations, results) is not detected: the command format carries no
checksum, only headers and arguments are checked.
"""

from hw.commands import (STATUS, STATUS_MAGIC, WORD_BYTES, ErrorCode, Opcode, pack_header,
                         unpack_header)
from hw.uart import DEFAULT_BAUD, RESYNC_BITS, RX_FIFO_WORDS

from .driver import DeviceError, Transport

__all__ = ["RESYNC_WORDS", "STRAY_BYTES", "SerialTransport"]

# READ_STATUS words one resynchronisation may send: as many as the longest WRITE_WEIGHTS or
# LOAD_ACTS of the presets has data words (2,048 on ulx3s-85f), which a garbage header can start.
# A device silent throughout costs a port timeout per burst: 38 bursts, 76 s at the default 2 s.
RESYNC_WORDS = 2048
# Bytes one wait for silence may discard: four times the largest response of the presets (a GEMV
# over all 1,024 rows of ulx3s-85f's 16 banks, 64 KiB).
STRAY_BYTES = 1 << 18

_READ_STATUS = pack_header(Opcode.READ_STATUS).to_bytes(WORD_BYTES, "little")
_STATUS_BYTES = WORD_BYTES * (1 + len(STATUS))       # the response: its header, then STATUS


def _word(data, index):
    return int.from_bytes(data[WORD_BYTES * index:WORD_BYTES * (index + 1)], "little")


def _is_status(response):
    header = unpack_header(_word(response, 0))
    return (header["opcode"] == Opcode.READ_STATUS.value and header["b"] == len(STATUS)
            and _word(response, 1 + STATUS.index("magic")) == STATUS_MAGIC)


def _trailing_statuses(data):
    """Where the whole ``STATUS`` responses that ``data`` ends in begin (``None``: it does not)."""
    start = len(data)
    while start >= _STATUS_BYTES and _is_status(data[start - _STATUS_BYTES:start]):
        start -= _STATUS_BYTES
    return start if start < len(data) else None


class SerialTransport(Transport):
    """Command words out of ``port``, response words back; a silent device raises, never hangs.

    Parameters
    ----------
    port
        A byte port with pyserial's ``write(bytes)``, ``read(n) -> bytes`` (returning early, short,
        when the port's timeout passes) and, if it has one, ``flush()`` (wait until the written
        bytes have left, so that the timeout counts from the end of a long command). The timeout
        must be longer than the board's resynchronisation gap (:data:`hw.uart.RESYNC_BITS`).
    burst_words : int
        Command words the board buffers for a device that is not taking them (its bridge's
        ``rx_fifo_words``).
    resync_words : int
        ``READ_STATUS`` words a resynchronisation may send before it gives up.
    """

    def __init__(self, port, *, burst_words=RX_FIFO_WORDS, resync_words=RESYNC_WORDS):
        if not (callable(getattr(port, "write", None)) and callable(getattr(port, "read", None))):
            raise TypeError(f"port must have write(bytes) and read(n) methods, not {port!r}")
        if isinstance(burst_words, bool) or not isinstance(burst_words, int) or burst_words < 2:
            raise ValueError(f"burst_words must be an integer of at least 2, not {burst_words!r}")
        if isinstance(resync_words, bool) or not isinstance(resync_words, int) or resync_words < 1:
            raise ValueError(f"resync_words must be a positive integer, not {resync_words!r}")
        self.port = port
        self.burst_words = burst_words
        self.resync_words = resync_words
        self._heard = False                  # has the device sent a byte since the port opened?

    @classmethod
    def open(cls, name, *, baud=DEFAULT_BAUD, timeout=2.0, **kwargs):
        """A transport on the serial port ``name`` (``/dev/ttyUSB0``, ``COM3``) through pyserial.

        ``timeout`` (seconds) is how long the device may stay silent while a response is owed;
        it must be longer than the board's resynchronisation gap. Raises :class:`ValueError` for a
        timeout that is not, pyserial's ``SerialException`` if the port cannot be opened.
        """
        import serial          # only a board needs pyserial

        gap = RESYNC_BITS / baud
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= gap:
            raise ValueError(f"timeout must be longer than the board's resynchronisation gap "
                             f"({RESYNC_BITS} bit times, {gap * 1e3:.3g} ms at {baud} baud), "
                             f"not {timeout!r}")
        port = serial.Serial(name, baud, timeout=timeout)
        port.reset_input_buffer()          # bytes a previous session left unread
        return cls(port, **kwargs)

    def close(self):
        """Close the port (if it can be closed)."""
        close = getattr(self.port, "close", None)
        if close:
            close()

    def transact(self, words, count):
        self._write(b"".join(word.to_bytes(WORD_BYTES, "little") for word in words),
                    flush=count > 0)
        wanted = WORD_BYTES * count
        received = self._read(wanted)
        if len(received) < wanted:
            silent = (f"serial link: the device went silent after {len(received)} of {wanted} "
                      f"response bytes ({count} words)")
            if not self._heard:
                raise DeviceError(f"{silent}; is the board programmed with this configuration, "
                                  f"at this baud rate (and reset, if an earlier session was cut "
                                  f"short)?")
            raise DeviceError(f"{silent}, as after a command it refused, or bytes lost, added or "
                              f"corrupted on the way; {self._recover()}")
        return [_word(received, i) for i in range(count)]

    def resynchronise(self):
        """Bring the link back to a command boundary after a response that is not the one owed
        (see the module docstring); return what happened, for the caller's error."""
        return f"bytes lost, added or corrupted on the serial link; {self._recover()}"

    def _write(self, data, *, flush):
        if not data:
            return
        written = self.port.write(data)
        if written is not None and written != len(data):
            raise DeviceError(f"serial link: wrote {written} of {len(data)} bytes")
        if flush and callable(getattr(self.port, "flush", None)):
            self.port.flush()

    def _read(self, wanted):
        """Up to ``wanted`` bytes: fewer once the port's timeout passes with none arriving."""
        received = bytearray()
        while len(received) < wanted:
            chunk = self.port.read(wanted - len(received))
            if not chunk:
                break
            received += chunk
            self._heard = True
        return received

    def _drain(self):
        """The bytes that arrive until the device has been silent for the port's timeout."""
        received = bytearray()
        while chunk := self.port.read(4096):
            received += chunk
            if len(received) > STRAY_BYTES:
                raise DeviceError(f"serial link: the device sent more than {STRAY_BYTES} bytes "
                                  f"that answer nothing while resynchronising; reset the board")
        return received

    def _recover(self):
        """Resynchronise (steps 1 and 2 of the module docstring); say how it went."""
        stray, sent, burst = len(self._drain()), 0, 1
        while sent < self.resync_words:
            burst = min(burst, self.resync_words - sent)
            self._write(_READ_STATUS * burst, flush=True)
            sent += burst
            received = self._read(_STATUS_BYTES * burst)
            if received and _trailing_statuses(received) != 0:
                received += self._drain()    # not one STATUS per READ_STATUS: more may follow
            start = _trailing_statuses(received)
            if start is not None:
                error = _word(received[-_STATUS_BYTES:], 1 + STATUS.index("error"))
                return (f"resynchronised ({stray + start} stray bytes discarded, {sent} "
                        f"READ_STATUS sent); " + (
                            "the device reports no error" if error == ErrorCode.NONE.value else
                            f"device error {_error_name(error)} (sticky until clear_errors)"))
            stray += len(received)
            burst = min(2 * burst, self.burst_words)
        raise DeviceError(f"serial link: no STATUS response to {sent} READ_STATUS words after "
                          f"bytes were lost, added or corrupted ({stray} stray bytes "
                          f"discarded): the device may be inside a long command; reset the board")


def _error_name(code):
    return ErrorCode(code).name if code in {e.value for e in ErrorCode} else f"{code:#04x}"
