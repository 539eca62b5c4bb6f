"""``bittern formal``: the formal proofs of :mod:`sim.formal`, and a report of them.

A proof that does not hold (a counterexample, an induction that does not close, a cover not
reached, a timeout), or a mutant that its proof does not reject, exits with status 1.
"""

import json
from pathlib import Path

from .common import UserError, progress

__all__ = ["add_commands"]

_ROOT = Path(__file__).resolve().parents[2]


def _where(location):
    """A property's source location, relative to the repository when it is inside it."""
    path, _, line = location.rpartition(":")
    try:
        return f"{Path(path).resolve().relative_to(_ROOT)}:{line}"
    except ValueError:
        return location


def cmd_formal(args):
    from sim.formal import MUTANTS, PROOFS, run_proof

    if args.timeout < 1:
        raise UserError(f"--timeout must be at least 1 second, not {args.timeout}")
    for name in args.proof:
        if name not in PROOFS:
            raise UserError(f"unknown proof {name!r}; known proofs: {', '.join(PROOFS)}")
    names = args.proof or [name for name, proof in PROOFS.items() if proof.quick or not args.quick]
    runs = [(name, None) for name in names]
    if args.mutants:
        runs += [(mutant.proof, mutant.name) for mutant in MUTANTS.values()
                 if mutant.proof in names]

    reports = []
    for name, mutant in runs:
        proof = PROOFS[name]
        result = run_proof(name, mutant=mutant, timeout=args.timeout, progress=progress,
                           rebuild=args.rebuild)
        # A mutant must be rejected by a counterexample, not by an induction left open.
        ok = result.verdict == "FAIL" if mutant else result.passed
        reports.append({
            "proof": name, "mutant": mutant, "mode": proof.mode, "depth": proof.depth,
            "cover_depth": proof.cover_depth, "verdict": result.verdict, "cover": result.cover,
            "failed": [_where(location) for location in result.failed],
            "seconds": result.seconds, "cached": result.cached, "ok": ok,
            "log": str(result.log), "trace": str(result.trace) if result.trace else None,
        })
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        _print(reports)
    return 0 if all(report["ok"] for report in reports) else 1


def _print(reports):
    rows = [("proof", "mode", "depth", "result", "time")]
    for report in reports:
        result = report["verdict"] if report["cover"] == "PASS" or report["verdict"] != "PASS" \
            else f"cover {report['cover']}"
        name = report["proof"]
        if report["mutant"]:
            name = f"  mutant {report['mutant']}"
            result = f"{result} (expected FAIL)"
        seconds = f"{report['seconds']:.1f} s" + (" (reused)" if report["cached"] else "")
        rows.append((name, report["mode"], str(report["depth"]), result, seconds))
    widths = [max(len(row[n]) for row in rows) for n in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    for report in reports:
        if not report["ok"]:
            what = f"mutant {report['mutant']}" if report["mutant"] else report["proof"]
            print(f"{what}: {report['verdict']}, cover {report['cover']}"
                  + (f", at {', '.join(report['failed'])}" if report["failed"] else "")
                  + f"; see {report['log']}")
    passed = sum(report["ok"] for report in reports)
    print(f"{passed} passed, {len(reports) - passed} failed")


def add_commands(subparsers):
    """Register ``formal`` on ``subparsers`` (from ``add_subparsers``)."""
    from sim.formal import PROOFS

    formal = subparsers.add_parser(
        "formal", help="run the formal proofs (SymbiYosys) and report them",
        description="Prove the units' contracts with SymbiYosys: prove (k-induction) or bmc "
                    "(every trace of DEPTH cycles from reset), each with covers that must be "
                    "reached. Results are reused for an unchanged design.")
    formal.add_argument("--proof", action="append", default=[], metavar="NAME",
                        help=f"a proof to run (repeatable; default: all): {', '.join(PROOFS)}")
    formal.add_argument("--quick", action="store_true",
                        help="only the quick proofs (those `make test` runs)")
    formal.add_argument("--mutants", action="store_true",
                        help="also run each mutant of the chosen proofs: each must fail")
    formal.add_argument("--rebuild", action="store_true",
                        help="run again even if this exact job has a result")
    formal.add_argument("--timeout", type=int, default=1800, metavar="SECONDS",
                        help="limit on each proof (default 1800)")
    formal.add_argument("--json", action="store_true", help="print one JSON list")
    formal.set_defaults(handler=cmd_formal)
