"""The shape of the house: data flows one way through the layers, with no import circle (in `bench/` either),
files stay small, and the map (docs/ARCHITECTURE.md) names every module."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mirror"
BENCH = PACKAGE.parent / "bench"
MAX_LINES = 400
ARCHITECTURE = PACKAGE.parent / "docs" / "ARCHITECTURE.md"

# Each module may import its own package and the layers below it, never above or beside.
LAYERS = [
    {
        "mirror",
        "mirror.registry",
        "mirror.requestid",
    },  # the spec's grammar: the config checks names, digests and patterns with it
    {"mirror.signatures"},  # containers-policy.json: the config checks a policy file with it
    {"mirror.stats", "mirror.config"},
    {"mirror.traffic", "mirror.link", "mirror.logins"},
    {"mirror.cache", "mirror.upstream"},  # side by side: neither imports the other
    {"mirror.transfer"},  # bytes in motion, into the cache
    {"mirror.proxy", "mirror.fleet"},  # side by side: the fleet answers the proxy's coordination seam unseen
    {"mirror.warmer"},
    {"mirror.pinning"},  # the pins' keeper fetches with the warmer
    {"mirror.composition"},
    {"mirror.http"},
    {"mirror.commands"},
    {"mirror.__main__"},
]


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The layer unit a module belongs to: its package below `mirror`, or itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


def layer(module: str) -> int:
    for number, units in enumerate(LAYERS):
        if unit(module) in units:
            return number
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def imports(path: Path, package: Path = PACKAGE) -> set[str]:
    """Every module of `package` a file imports, TYPE_CHECKING blocks and imports inside functions included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(package.name):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith(package.name))
    modules = {module_name(p, package) for p in package.rglob("*.py")}
    return {name for name in found if name in modules}


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    return {module_name(path, package): imports(path, package) for path in package.rglob("*.py")}


def test_data_flows_down_the_layers() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in graph().items()
        for target in targets
        if unit(target) != unit(module) and target != "mirror" and layer(target) >= layer(module)
    ]
    assert not wrong, "imports against the flow http → proxy → cache | upstream:\n" + "\n".join(sorted(wrong))


def assert_no_circle(package: Path) -> None:
    edges = graph(package)
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges.get(module, ())):
            if target == module or target == package.name:
                continue
            if state.get(target) == "open":
                cycle = [*path[path.index(target) :], target] if target in path else [module, target]
                raise AssertionError("import circle: " + " → ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_no_import_circle() -> None:
    assert_no_circle(PACKAGE)


def test_no_import_circle_in_the_benchmark() -> None:
    assert_no_circle(BENCH)


def test_modules_stay_small() -> None:
    large = {
        str(path.relative_to(PACKAGE.parent)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not large, f"split these by role (over {MAX_LINES} lines): {large}"


def test_the_map_names_every_module() -> None:
    """A module the architecture page does not name is one a newcomer cannot find from it."""
    text = ARCHITECTURE.read_text()
    unnamed = [
        relative
        for path in sorted(PACKAGE.rglob("*.py"))
        if (relative := str(path.relative_to(PACKAGE))) and f"`{relative}`" not in text
        if f"`mirror/{relative}`" not in text
    ]
    assert not unnamed, f"name these in {ARCHITECTURE.name} (as `package/module.py`): {unnamed}"
