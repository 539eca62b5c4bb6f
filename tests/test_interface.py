# amaranth: UnusedElaboratable=no
"""``bittern generate``: the Verilog, the metadata, the C header (compiled with the system C
compiler and every value checked against ``hw.commands``) and the interface page.

(The linter line above: interfaces are read from devices that are never elaborated.)
"""

import json
import re
import shutil
import subprocess
import sys

import pytest

from golden import trits
from hw.commands import (ARGUMENT_WORDS, COMMANDS, HEADER, STATUS, STATUS_FLAGS, STATUS_MAGIC,
                         WORD_BITS, WORD_BYTES, CommandFormat, ErrorCode, Opcode)
from hw.config import preset
from hw.device import Device
from sw_driver.interface import c_header, generate, generator_version, ports

CONFIG = preset("tiny")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("generated")
    return {path.suffix: path for path in generate(CONFIG, out)}


def _expected_constants():
    """Every ``BITTERN_*`` value the header must define, from the one source of each."""
    fmt = CommandFormat(CONFIG)
    expected = {"WORD_BITS": WORD_BITS, "WORD_BYTES": WORD_BYTES,
                "STATUS_WORDS": len(STATUS), "COUNTER_WORDS": len(fmt.counter_names),
                "STATUS_MAGIC": STATUS_MAGIC, "TRIT_BITS": trits.CODE_BITS,
                "TRIT_ZERO": trits.CODE_ZERO, "TRIT_POS": trits.CODE_POS,
                "TRIT_NEG": trits.CODE_NEG, "BANKS": fmt.banks, "LANES": fmt.lanes,
                "DEPTH": fmt.depth, "ROWS": fmt.rows, "COLS": fmt.cols,
                "ACT_BITS": CONFIG.act_bits, "MAX_K": CONFIG.max_k, "ACC_BITS": CONFIG.acc_bits,
                "ACT_WORDS": fmt.act_words, "WEIGHT_BITS": fmt.weight_bits,
                "WEIGHT_WORD_WORDS": fmt.weight_word_words,
                "ACT_CHUNK_WORDS": fmt.act_chunk_words, "TILE_ROW_WORDS": fmt.tile_row_words,
                "TOKEN_WORDS": fmt.token_words, "CLOCK_KHZ": round(CONFIG.clock_mhz * 1000)}
    for op in Opcode:
        expected[f"OP_{op.name}"] = op.value
        expected[f"ARGS_{op.name}"] = ARGUMENT_WORDS.get(op, 0)
    for code in ErrorCode:
        expected[f"ERR_{code.name}"] = code.value
    for name, field in HEADER:
        expected[f"HEADER_{name.upper()}_SHIFT"] = field.offset
        expected[f"HEADER_{name.upper()}_MASK"] = (1 << field.width) - 1
    for n, name in enumerate(STATUS):
        expected[f"STATUS_WORD_{name.upper()}"] = n
    for n, name in enumerate(fmt.counter_names):
        expected[f"COUNTER_WORD_{name.upper()}"] = n
    for name, field in STATUS_FLAGS:
        expected[f"FLAG_{name.upper()}_BIT"] = field.offset
    return expected


def test_c_header_compiles_and_every_value_matches(generated, tmp_path):
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler, "a C compiler (cc or gcc) is needed: the machine has gcc"
    header = generated[".h"]
    defined = re.findall(r"^#define BITTERN_(\w+) [^\"]", header.read_text(), re.M)
    expected = _expected_constants()
    assert set(expected) <= set(defined), sorted(set(expected) - set(defined))
    program = tmp_path / "check.c"
    prints = "\n".join(f'    printf("\\"{name}\\": %lu,\\n", (unsigned long)(BITTERN_{name}));'
                       for name in expected)
    program.write_text(f'#include <stdio.h>\n#include "{header}"\nint main(void) {{\n'
                       f'    printf("{{\\n");\n{prints}\n'
                       f'    printf("\\"HEADER\\": %lu\\n}}\\n", '
                       f'(unsigned long)BITTERN_HEADER(BITTERN_OP_GEMV, 3, 0xBEEF));\n'
                       f'    return 0;\n}}\n')
    binary = tmp_path / "check"
    subprocess.run([compiler, "-std=c99", "-Wall", "-Werror", "-o", str(binary), str(program)],
                   check=True, capture_output=True)
    values = json.loads(subprocess.run([str(binary)], check=True, capture_output=True,
                                       text=True).stdout)
    from hw.commands import pack_header
    assert values.pop("HEADER") == pack_header(Opcode.GEMV, 3, 0xBEEF)
    assert values == expected


def test_header_names_the_generator():
    text = c_header(Device(CONFIG))
    version = generator_version()
    assert f'#define BITTERN_GENERATOR_VERSION "{version["version"]}"' in text
    assert f'#define BITTERN_GENERATOR_COMMIT "{version["commit"]}"' in text


def test_metadata_ports_come_from_the_signature(generated):
    meta = json.loads(generated[".json"].read_text())
    names = [port["name"] for port in meta["ports"]]
    assert names == ["clk", "rst", "i_stream__payload", "i_stream__valid", "i_stream__ready",
                     "o_stream__payload", "o_stream__valid", "o_stream__ready", "status"]
    verilog = generated[".v"].read_text()
    module = re.search(r"module bittern_top\((.*?)\);", verilog, re.S)[1]
    assert sorted(names) == sorted(name.strip() for name in module.split(","))
    assert meta["ports"] == ports(Device(CONFIG))
    assert meta["commands"]["argument_words"] == {"WRITE_WEIGHTS": 1, "LOAD_ACTS": 1, "GEMV": 2,
                                                  "LOAD_TENSOR": 1, "GENERATE": 1,
                                                  "READ_LOGITS": 1}


def test_interface_page_describes_every_command(generated):
    page = generated[".md"].read_text()
    fmt = CommandFormat(CONFIG)
    for opcode, command in COMMANDS.items():
        row = next(line for line in page.splitlines() if line.startswith(f"| `{opcode.name}`"))
        assert f"0x{opcode.value:02X}" in row
        for argument in command.arguments:
            assert argument in row
    assert f"{fmt.rows} tile rows (k = 0 first) of {fmt.tile_row_words} word(s)" in page
    assert "synchronous and active high" in page and "`clk`, rising edge" in page
    assert "bit 0: busy, bit 1: error" in page
    assert generator_version()["commit"] in page


def test_generate_reports_progress_and_paths(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sw_driver.cli", "generate", "--preset",
                             "tiny", "-o", str(tmp_path)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "converting the device (4 x 4 array, 2 banks of 4 lanes) to Verilog" in result.stderr
    assert [line.split()[-1] for line in result.stdout.splitlines()] == [
        str(tmp_path / f"bittern_top.{suffix}") for suffix in ("v", "json", "h", "md")]
