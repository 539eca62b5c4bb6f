"""Write a configuration's Verilog and the metadata the software side needs beside it."""

import json
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Shape

from .commands import HEADER, STATUS, STATUS_FLAGS, STATUS_MAGIC, ErrorCode, Opcode
from .device import Device

__all__ = ["metadata", "generate"]


def metadata(device):
    """Everything a driver needs to talk to ``device``: config, ports, command format."""
    fmt = device.format
    return {
        "generator": "bittern",
        "config": device.config.to_dict(),
        "derived": {"acc_bits": device.config.acc_bits, "word_bits": device.config.word_bits,
                    "act_words": fmt.act_words},
        "ports": [{"name": "__".join(map(str, path)), "direction": member.flow.value,
                   "width": _width(member.shape)}
                  for path, member in device.signature.members.flatten() if member.is_port],
        "commands": {
            "word_bits": 32,
            "header": {name: {"offset": field.offset, "width": field.width}
                       for name, field in HEADER},
            "opcodes": {op.name: op.value for op in Opcode},
            "errors": {code.name: code.value for code in ErrorCode},
            "words_per": {"weight_word": fmt.weight_word_words,
                          "activation_chunk": fmt.act_chunk_words,
                          "tile_row": fmt.tile_row_words, "token": fmt.token_words},
            "status_magic": STATUS_MAGIC,
            "status_flags": {name: field.offset for name, field in STATUS_FLAGS},
        },
        "registers": {"READ_STATUS": STATUS, "READ_COUNTERS": fmt.counter_names},
    }


def _width(shape):
    return Shape.cast(shape).width


def generate(config, out_dir, *, name="bittern_top"):
    """Write ``<name>.v`` and ``<name>.json`` into ``out_dir``; return their paths."""
    device = Device(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = metadata(device)
    verilog_path = out_dir / f"{name}.v"
    verilog_path.write_text(verilog.convert(device, name=name, emit_src=False))
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    return verilog_path, json_path
