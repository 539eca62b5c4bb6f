"""The code's layering: ``golden <- hw <- (sw_driver, sim)``, the CLI the one place above both.

Every import of every module is read from its source (module-level and function-level alike:
a deferred import is still a dependency), so a cycle or a crossed layer fails here before it
confuses a reader.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("golden", "hw", "sw_driver", "sim")
CLI = "sw_driver.cli"
# What each layer may import (besides itself).
ALLOWED = {
    "golden": set(),
    "hw": {"golden"},
    "sw_driver": {"golden", "hw"},
    "sim": {"golden", "hw", "sw_driver"},
    CLI: {"golden", "hw", "sw_driver", "sim"},
}


def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for package in PACKAGES
           for path in sorted((ROOT / package).rglob("*.py"))}


def _layer(module):
    if module == CLI or module.startswith(CLI + "."):
        return CLI
    return module.split(".")[0]


def _imports(module, path):
    """The project modules ``module`` imports, anywhere in its source."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from package import module`` imports the module; ``from module import name``
            # imports the module.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                     for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] in PACKAGES)
    found.discard(module)
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def test_every_package_is_read():
    assert {"golden.trits", "hw.device", "sw_driver.flow", "sim.device_tb",
            "sw_driver.cli.main"} <= set(GRAPH)


def _crossings(graph):
    """``(module, imported)`` pairs that cross a layer."""
    return sorted((module, name) for module, names in graph.items() for name in names
                  if _layer(name) != _layer(module) and _layer(name) not in ALLOWED[_layer(module)])


def _cycles(graph):
    """Tarjan's strongly connected components; each of more than one module is a cycle."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for name in graph[module]:
            if name not in graph:
                continue
            if name not in index:
                visit(name)
                low[module] = min(low[module], low[name])
            elif name in on_stack:
                low[module] = min(low[module], index[name])
        if low[module] == index[module]:
            component = []
            while True:
                name = stack.pop()
                on_stack.discard(name)
                component.append(name)
                if name == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_imports_keep_to_the_layers():
    assert not _crossings(GRAPH)


def test_no_import_cycles():
    assert not _cycles(GRAPH)


def test_the_checks_see_a_crossed_layer_and_a_cycle():
    """Not vacuous: made-up graphs with each fault fail them."""
    assert _crossings({"sw_driver.run": {"sim.units"}, "sim.units": set()}) == [
        ("sw_driver.run", "sim.units")]
    assert _crossings({"hw.device": {"sw_driver.flow"}, "sw_driver.flow": set()})
    assert not _crossings({"sw_driver.cli.main": {"sim.units"}, "sim.units": {"hw.pe"},
                           "hw.pe": set()})
    assert _cycles({"hw.a": {"hw.b"}, "hw.b": {"hw.c"}, "hw.c": {"hw.a"}, "hw.d": {"hw.a"}}) \
        == [["hw.a", "hw.b", "hw.c"]]
