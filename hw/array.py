"""Weight-stationary systolic tensor unit.

Dataflow: the reduction index ``k`` runs down the rows and the output index ``n`` across the
columns. PE ``(r, c)`` holds ``W_t[n=c, k=r]``. A token's activations enter row ``r`` skewed by
``r`` cycles and move right one column per cycle; partial sums move down one row per cycle; the
bottom of column ``c`` is de-skewed by ``cols - 1 - c`` cycles, so a whole output vector leaves at
once, ``rows + cols - 1`` cycles after its token was accepted.

Weight-stationary was chosen because a ternary weight is 2 bits: holding it costs less than
moving it, and the activations (int8) and partial sums flow instead.

Flow control is credit based, so the PE grid never stalls and carries no enable net: a token is
accepted only while the result FIFOs have room for it and every token already in flight. With the
consumer ready, tokens stream at one per cycle with no bubbles, and a stream of ``M`` tokens
takes ``M + rows + cols`` cycles from the first token in to the last result out. The result
FIFOs are first-word-fall-through (``SyncFIFO``) to keep that bound; they are small (``rows +
cols + 1`` entries) and map to distributed RAM. There is one per column, at the bottom of its
column, so that no FIFO's write enable has to reach across the die with the columns.

Weights load as ``rows`` beats of ``cols`` trits, ``k = 0`` first, beat ``r`` into row ``r``, and
only while no token is in flight (the array finishes the previous tile first). Tokens are
accepted once a full tile has been loaded.

For timing, every signal that fans out across the grid or back to the producer comes from a
flip-flop: a weight beat is registered before it is written, and so is each row's load enable
(one enable per row, not one for the whole grid). Both ``ready`` outputs are registered flags
(grid empty, room for a token) derived from next-state counts. None of this changes when a beat
or a token is taken. ``docs/timing.md`` has the builds that led here.
"""

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.widths import signed_bits_for

from .config import Config
from .pe import PE_KINDS
from .queues import registered_r_rdy

__all__ = ["SystolicArray"]


class SystolicArray(wiring.Component):
    """``rows`` x ``cols`` array computing ``y[m] = W_t @ x[m]`` for a stream of tokens ``m``.

    Parameters
    ----------
    config : Config
        Uses ``array.rows``, ``array.cols``, ``array.pe`` and ``act_bits``.
    pe : type, optional
        PE class overriding ``config.array.pe`` (how a new or a faulty PE is tried).

    Members
    -------
    w_stream : In(stream.Signature(ArrayLayout(pe.weight_shape, cols)))
        Weights, one array row (one ``k``) per beat, ``k = 0`` first.
    i_stream : In(stream.Signature(ArrayLayout(signed(act_bits), rows)))
        Activations, one token (``rows`` values of ``k``) per beat.
    o_stream : Out(stream.Signature(ArrayLayout(signed(psum_bits), cols)))
        Results, one token (``cols`` values of ``n``) per beat, in token order.
    busy : Out(1)
        A token is in the grid or a result waits in the FIFO.
    macs : Out(range(rows * cols + 1))
        Multiply-accumulates of the token taken this cycle: the loaded tile's non-zero weights
        (a zero weight is a skip). 0 when no token is taken.
    """

    def __init__(self, config, *, pe=None):
        if not isinstance(config, Config):
            raise TypeError(f"config must be a Config, not {config!r}")
        self._config = config
        self._pe = pe or PE_KINDS[config.array.pe]
        rows, cols = config.array.rows, config.array.cols
        super().__init__({
            "w_stream": In(stream.Signature(data.ArrayLayout(self._pe.weight_shape, cols))),
            "i_stream": In(stream.Signature(data.ArrayLayout(signed(config.act_bits), rows))),
            "o_stream": Out(stream.Signature(data.ArrayLayout(signed(self.psum_bits), cols))),
            "busy": Out(1),
            "macs": Out(range(rows * cols + 1)),
        })

    @property
    def config(self):
        return self._config

    def psum_bits_after(self, terms):
        """Width of a partial sum of ``terms`` products: overflow is impossible."""
        return signed_bits_for(terms * self._pe.max_product(self._config.act_bits)) \
            if terms else 0

    @property
    def psum_bits(self):
        """Width of a finished column sum (``rows`` products)."""
        return self.psum_bits_after(self._config.array.rows)

    @staticmethod
    def latency_for(config):
        """:attr:`latency` of an array built for ``config``."""
        return config.array.rows + config.array.cols - 1

    @property
    def latency(self):
        """Cycles from accepting a token to writing its result into the output FIFO."""
        return self.latency_for(self._config)

    @classmethod
    def fifo_depth_for(cls, config):
        """:attr:`fifo_depth` of an array built for ``config``."""
        return cls.latency_for(config) + 2

    @property
    def fifo_depth(self):
        """Entries of each column's result FIFO: every token in flight plus one being read."""
        return self.fifo_depth_for(self._config)

    def elaborate(self, platform):
        m = Module()
        rows, cols = self._config.array.rows, self._config.array.cols
        act_bits = self._config.act_bits

        results = [fifo.SyncFIFO(width=self.psum_bits, depth=self.fifo_depth)
                   for _ in range(cols)]
        for c, column_results in enumerate(results):
            m.submodules[f"results{c}"] = column_results
        in_flight = Signal(range(self.fifo_depth + 1))     # tokens taken, results not in FIFO
        occupancy = Signal(range(self.fifo_depth + 1))     # tokens taken, results not read
        grid_empty = Signal(init=1)                        # in_flight == 0, registered
        room = Signal(init=1)                              # occupancy < fifo_depth, registered
        loaded_rows = Signal(range(rows + 1))
        tile_loaded = loaded_rows == rows
        w_pending = Signal()                               # a weight beat is written this cycle
        w_rows = Signal(rows)                              # ... into this row (one-hot)
        next_row = Signal(rows, init=1)                    # the next beat's row (one-hot)
        w_beat = Signal.like(self.w_stream.payload)

        take_token = Signal()
        m.d.comb += [
            # A token never meets a half-shifted tile: not while a beat is pending.
            self.i_stream.ready.eq(tile_loaded & room & ~w_pending),
            take_token.eq(self.i_stream.valid & self.i_stream.ready),
            # Weights change only with the grid empty, and never under a token being taken.
            self.w_stream.ready.eq(grid_empty & ~take_token),
        ]
        w_taken = self.w_stream.valid & self.w_stream.ready
        m.d.sync += [w_pending.eq(w_taken), w_rows.eq(Mux(w_taken, next_row, 0))]
        with m.If(w_taken):
            # Only when taken: else it is one flip-flop with every other register of the
            # producer's word, and one net from the array to the banks (see ``hw.pim``).
            m.d.sync += [w_beat.eq(self.w_stream.payload), next_row.eq(next_row.rotate_left(1))]
        # The tile's non-zero weights, counted row by row as they load (a beat after a whole
        # tile starts the next one).
        tile_nonzero = Signal(range(rows * cols + 1))
        row_nonzero = sum(self._pe.weight_is_nonzero(w_beat[c]) for c in range(cols))
        with m.If(w_pending):
            m.d.sync += [loaded_rows.eq(Mux(tile_loaded, 1, loaded_rows + 1)),
                         tile_nonzero.eq(Mux(tile_loaded, 0, tile_nonzero) + row_nonzero)]

        # Token valid bits follow the data through the grid: one bit per cycle of latency.
        valid_line = Signal(self.latency)
        m.d.sync += valid_line.eq(Cat(take_token, valid_line[:-1]))
        result_ready = valid_line[-1]

        grid = [[self._pe(act_bits=act_bits, psum_in_bits=self.psum_bits_after(r),
                          psum_out_bits=self.psum_bits_after(r + 1))
                 for c in range(cols)] for r in range(rows)]
        for r in range(rows):
            for c in range(cols):
                pe = m.submodules[f"pe_{r}_{c}"] = grid[r][c]
                m.d.comb += [pe.w_load.eq(w_rows[r]), pe.w_in.eq(w_beat[c])]
                m.d.comb += pe.x_in.eq(self._skewed(m, self.i_stream.payload[r], delay=r)
                                       if c == 0 else grid[r][c - 1].x_out)
                if r:
                    m.d.comb += pe.psum_in.eq(grid[r - 1][c].psum_out)

        for c, column_results in enumerate(results):
            m.d.comb += [
                column_results.w_en.eq(result_ready),
                column_results.w_data.eq(self._skewed(m, grid[rows - 1][c].psum_out,
                                                      delay=cols - 1 - c)),
                column_results.r_en.eq(self.o_stream.ready),
            ]

        # The flags' next values are comparisons of the registered counts, selected by this
        # cycle's events: a token taken and a result read arrive late (from the controller,
        # across the die), so they select a flag rather than pass through an adder and a
        # comparison.
        result_read = self.o_stream.valid & self.o_stream.ready
        m.d.sync += [
            in_flight.eq(in_flight + take_token - result_ready),
            grid_empty.eq(Mux(take_token, result_ready & (in_flight == 0),
                              Mux(result_ready, in_flight == 1, in_flight == 0))),
            occupancy.eq(occupancy + take_token - result_read),
            room.eq(Mux(take_token, Mux(result_read, occupancy < self.fifo_depth,
                                        occupancy < self.fifo_depth - 1),
                        Mux(result_read, 1, occupancy < self.fifo_depth))),
        ]
        # The FIFOs are written and read together, so column 0's stands for all of them.
        m.d.comb += [
            self.o_stream.valid.eq(registered_r_rdy(m, results[0], name="result_waiting")),
            self.o_stream.payload.eq(Cat(column_results.r_data for column_results in results)),
            self.busy.eq(~grid_empty | results[0].r_rdy | w_pending),
            self.macs.eq(Mux(take_token, tile_nonzero, 0)),
        ]
        return m

    @staticmethod
    def _skewed(m, value, *, delay):
        """``value`` delayed by ``delay`` registers (a skew or de-skew line)."""
        for _ in range(delay):
            stage = Signal.like(value)
            m.d.sync += stage.eq(value)
            value = stage
        return value
