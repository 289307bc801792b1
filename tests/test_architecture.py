"""The module picture of the README's Architecture section holds: imports run one way (no
cycle), every module of the package is in the picture, nothing imports the CLI, and the pure
layer does no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "exporter"
PURE = ("schedule", "model", "endpoints", "results", "metrics", "exposition")
# Modules through which a module could reach the network, the disk, the clock or the logs.
IO = {"requests", "urllib3", "socket", "ssl", "http", "threading", "logging", "time", "os",
      "subprocess", "pathlib", "io"}


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(exporter modules, top-level outside modules) imported at run time; imports under
    `if TYPE_CHECKING:` are for the type checker only and do not count."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    inner: set[str] = set()
    outer: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "exporter":
                if len(parts) > 1:
                    inner.add(parts[1])
                else:
                    inner.update(a.name for a in node.names if a.name != "__version__")
            else:
                outer.add(parts[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "exporter" and len(parts) > 1:
                    inner.add(parts[1])
                else:
                    outer.add(parts[0])
    return inner, outer


def _graph() -> dict[str, set[str]]:
    return {p.stem: _imports(p)[0] for p in PACKAGE.glob("*.py")
            if p.stem not in ("__init__", "__main__")}


def test_imports_have_no_cycle() -> None:
    graph = _graph()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        assert node not in path, "import cycle: " + " -> ".join([*path, node])
        if node in done:
            return
        for dep in sorted(graph.get(node, ())):
            visit(dep, [*path, node])
        done.add(node)

    for module in sorted(graph):
        visit(module, [])


def test_nothing_imports_the_cli() -> None:
    importers = sorted(m for m, deps in _graph().items() if "cli" in deps)
    assert importers == [], importers


def test_every_module_is_in_the_readme_picture() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Architecture", 1)[1].split("\n## ", 1)[0]
    missing = sorted(m for m in _graph() if m not in section)
    assert missing == [], f"modules missing from the README's Architecture section: {missing}"


def test_the_pure_layer_does_no_io() -> None:
    graph = _graph()
    for module in PURE:
        inner, outer = _imports(PACKAGE / f"{module}.py")
        assert not outer & IO, (module, sorted(outer & IO))
        assert inner <= set(PURE), (module, sorted(inner - set(PURE)))
        assert module in graph
