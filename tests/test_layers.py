"""The import contract: ecc_yolo's layers import downward only, and no two modules import each other.

Read from the source with `ast` (every import counts, a lazy one inside a function too), so nothing is imported.
The layers, lowest first, are those of docs/ARCHITECTURE.md; a module may import its own layer and the ones below.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ecc_yolo"

# layer -> module prefixes (a prefix covers its submodules); lowest first
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("routes", "spec", "codec", "policy", "pareto", "quality", "zoo", "data")),
    ("config", ("args", "deploy")),
    ("model", ("nn", "payload", "infer")),
    ("runtime", ("costs", "checkpoint", "edge")),
    ("evaluation and objectives", ("eval", "losses")),
    ("training and serving", ("engine", "serve")),
    ("applications", ("cli", "demo", "zoo_pipeline", "__main__")),
]
# besides the layer order: serving must not reach into training
FORBIDDEN = {"serve": ("engine", "losses")}
# import cycles still to be removed by their owners' change (issue 18); `test_pending_cycles_are_still_there` fails
# once one is gone, so that it is deleted from here and the contract gets strict again
PENDING_CYCLES: list[set[str]] = []


def _modules() -> dict[str, Path]:
    """Module name (without the `ecc_yolo.` prefix) -> file; the package root, a facade that imports its public
    names lazily, is left out (every module may read `ecc_yolo.__version__`)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `name` imports (any `import` or `from ... import` statement, anywhere in the file)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["ecc_yolo", *package.split(".")] if package else ["ecc_yolo"]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" for a in node.names] + [module]
        else:
            continue
        for target in targets:
            if target.startswith("ecc_yolo."):
                target = target[len("ecc_yolo."):]
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(name: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(f"{p}.") for p in prefixes):
            return i
    raise AssertionError(f"ecc_yolo.{name} is in no layer of tests/test_layers.py: add it where it belongs")


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_imports_only_its_layer_and_below():
    graph = _graph()
    upward = [f"ecc_yolo.{a} ({LAYERS[_layer(a)][0]}) imports ecc_yolo.{b} ({LAYERS[_layer(b)][0]})"
              for a, targets in sorted(graph.items()) for b in sorted(targets) if _layer(b) > _layer(a)]
    assert not upward, "imports that go up the layers:\n" + "\n".join(upward)


def test_serving_does_not_import_training():
    graph = _graph()
    bad = [f"ecc_yolo.{a} imports ecc_yolo.{b}" for a, targets in sorted(graph.items()) for b in sorted(targets)
           for src, banned in FORBIDDEN.items()
           if (a == src or a.startswith(f"{src}.")) and any(b == x or b.startswith(f"{x}.") for x in banned)]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    cycles = [c for c in _cycles(_graph()) if c not in PENDING_CYCLES]
    assert not cycles, f"import cycles: {cycles}"


def test_pending_cycles_are_still_there():
    cycles = _cycles(_graph())
    gone = [c for c in PENDING_CYCLES if c not in cycles]
    assert not gone, f"{gone} no longer form a cycle: delete them from PENDING_CYCLES"


def test_the_contract_sees_a_cycle_and_an_upward_import():
    """The checks can fail: a made-up graph with both defects is caught."""
    graph = {"routes": {"nn.ecc_model"}, "nn.ecc_model": {"routes"}}
    assert _cycles(graph) == [{"routes", "nn.ecc_model"}]
    assert _layer("nn.ecc_model") > _layer("routes")


def test_the_docs_point_at_homes_that_exist():
    """Every module the README's concept table and docs/ARCHITECTURE.md name as a home is there."""
    import re

    root = PACKAGE.parent
    readme = (root / "README.md").read_text()
    table = readme[readme.index("## Concepts"):readme.index("The architectures, as in Eccentric")]
    text = table + (root / "docs" / "ARCHITECTURE.md").read_text()
    paths = set(re.findall(r"`(ecc_yolo/[\w/]+\.(?:py|yaml))`", text))
    assert len(paths) >= 10
    missing = sorted(p for p in paths if not (root / p).is_file())
    assert not missing, f"named as homes but missing: {missing}"
