"""Design-space sweeps: every combination of varied config fields, each point's performance
(:func:`sw_driver.perf.perf`), area (Yosys) and, if asked, Fmax (nextpnr), on Dask.

A point is one configuration. Its row says what it gives (tokens per second at its clock,
cycles a token, prefill cycles), what it costs (the device's cells in the board family's area
metrics) and whether it fits: a point whose banks cannot hold the model, or whose cells exceed
the board's, stays in the table with the reason. Points run as Dask tasks on a local cluster
(the machine's cores) or on an existing one (``scheduler``); Yosys and nextpnr results are
cached by design hash (:mod:`sw_driver.flow`), so a rerun costs nothing.
"""

import csv
import itertools
import time
from pathlib import Path

from hw.config import ConfigError, apply_overrides

__all__ = ["grid", "evaluate", "pareto_front", "run_sweep", "write_csv", "plot_pareto"]


def grid(base, varies):
    """Every combination of ``varies`` (``{key: [value text, ...]}``) on ``base``: a list of
    ``(settings, config or the ConfigError's message)``."""
    keys = list(varies)
    points = []
    for values in itertools.product(*(varies[key] for key in keys)):
        settings = dict(zip(keys, values))
        try:
            config = apply_overrides(base, [f"{k}={v}" for k, v in settings.items()])
        except ConfigError as error:
            config = str(error)
        points.append((settings, config))
    return points


def evaluate(settings, config, *, model, prompt_tokens, tokens, board_name, fmax):
    """One point's row (run as a Dask task: everything it needs is in its arguments)."""
    from hw.boards import DEVICES
    from hw.boards import board as find_board
    from hw.placement import MappingError
    from hw.uart import DEFAULT_BAUD

    from .perf import perf
    from .run import load_model
    from .synth import area, synth_board

    row = {**settings, "fits": True, "reason": ""}
    if isinstance(config, str):
        return {**row, "fits": False, "reason": config}
    board = find_board(board_name)
    model_config, weights = load_model(model)
    try:
        result = perf(config, model_config, prompt_tokens=prompt_tokens, tokens=tokens,
                      baud=DEFAULT_BAUD, weights=weights)
        row.update(tokens_per_s=result.device_tokens_per_s,
                   cycles_per_token=result.cycles_per_token,
                   prefill_cycles=result.prefill_cycles,
                   bank_bound_fraction=result.bank_bound_fraction)
    except MappingError as error:
        row.update(fits=False, reason=f"the banks cannot hold the model: {error}")
    (device,) = area(config, units=["device"], target=board.family, device=DEVICES["bittern"])
    row.update(device.metrics)
    over = [f"{metric} {device.metrics[metric]:,} > {available:,}"
            for metric, available in board.resources.items()
            if device.metrics.get(metric, 0) > available]
    if over:
        row.update(fits=False, reason="; ".join([row["reason"], f"does not fit the {board_name}: "
                                                 + ", ".join(over)]).strip("; "))
    if fmax and not over:
        summary = synth_board(board, config, device=DEVICES["bittern"], device_name="bittern",
                              baud=DEFAULT_BAUD).summary
        row.update(fmax_mhz=summary["fmax_mhz"], timing_met=summary["timing_met"])
    return row


def pareto_front(rows, *, cost):
    """The rows no other row beats on both tokens per second (more) and ``cost`` (less)."""
    candidates = [row for row in rows if row["fits"] and row.get("tokens_per_s")]
    return [row for row in candidates
            if not any(other["tokens_per_s"] >= row["tokens_per_s"] and other[cost] <= row[cost]
                       and (other["tokens_per_s"], other[cost]) != (row["tokens_per_s"],
                                                                     row[cost])
                       for other in candidates)]


def run_sweep(points, *, scheduler=None, workers=None, progress=None, **options):
    """Evaluate ``points`` (from :func:`grid`) on Dask; rows in point order."""
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None if scheduler else LocalCluster(n_workers=workers, threads_per_worker=1,
                                                  dashboard_address=None)
    with Client(scheduler or cluster) as client:
        futures = {client.submit(evaluate, settings, config, pure=False, **options): index
                   for index, (settings, config) in enumerate(points)}
        rows, start = [None] * len(points), time.monotonic()
        for done, future in enumerate(as_completed(futures), start=1):
            rows[futures[future]] = future.result()
            if progress:
                elapsed = time.monotonic() - start
                left = elapsed / done * (len(points) - done)
                bar = "#" * (20 * done // len(points))
                progress(f"[{bar:<20}] {done}/{len(points)} points, {elapsed:.0f} s, "
                         f"about {left:.0f} s left")
    if cluster:
        cluster.close()
    return rows


def write_csv(rows, path):
    """One row per point; columns in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def plot_pareto(rows, front, path, *, cost, title):
    """Tokens per second against ``cost``, the front joined, points that do not fit crossed."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    shown = [row for row in rows if row.get("tokens_per_s") and row.get(cost)]
    fits = [row for row in shown if row["fits"]]
    axes.scatter([r[cost] for r in fits], [r["tokens_per_s"] for r in fits], label="fits")
    misfits = [row for row in shown if not row["fits"]]
    if misfits:
        axes.scatter([r[cost] for r in misfits], [r["tokens_per_s"] for r in misfits],
                     marker="x", label="does not fit")
    front = sorted(front, key=lambda row: row[cost])
    axes.plot([r[cost] for r in front], [r["tokens_per_s"] for r in front], "o-",
              label="Pareto front")
    axes.set_xlabel(cost)
    axes.set_ylabel("tokens/s (device-bound, decode)")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(Path(path))
    pyplot.close(figure)
