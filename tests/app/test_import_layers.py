"""The package's import graph, read from the source (ast), has no cycle and never imports upward.

Floors (DESIGN §3): base -> core (models, adapter, probe scores, selection, config) -> data -> distributed
stages -> pipeline/cli. A module may import its own floor or lower ones. Imports inside functions count
(they run too); imports only for type checkers (`if TYPE_CHECKING:`) do not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "imagelora_dist"
ROOT = "imagelora_dist"

# floor -> module prefixes; a module belongs to the floor of its longest matching prefix.
FLOORS: dict[str, tuple[str, ...]] = {
    "base": ("errors", "lazy_import", "offline_env", "faults", "ray_quiet", "resources"),
    "core": ("models", "adapter", "selection", "probe", "probe.scores", "config", "speed"),
    "data": ("data",),
    "stages": (
        "probe.distributed",
        "probe.zero3",
        "train",
        "eval",
        "tracking",
        "run_queries",
        "ray_runtime",
        "hand_out",
    ),
    "app": ("pipeline", "infer", "compare", "study", "plan", "cli", "__main__", ""),
}
ORDER = list(FLOORS)


def package_modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def lazy_export_table(path: Path) -> dict[str, str]:
    """A package's PEP 562 table (`_EXPORTS = {name: module}` handed to lazy_exports), else {}."""
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        if any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in targets) and node.value is not None:
            table = ast.literal_eval(node.value)
            assert isinstance(table, dict), f"{path}: _EXPORTS is not a dict literal"
            return {str(k): str(v) for k, v in table.items()}
    return {}


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package modules it imports at run time (with the packages Python runs on the way).
    `from pkg import name` of a lazily exported name runs the module that defines it: that is the edge."""
    exports = {name: lazy_export_table(path) for name, path in modules.items() if path.name == "__init__.py"}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
                continue
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                lazy = exports.get(base, {}).get(alias.name)
                targets.add(sub if sub in modules else lazy or base)
        edges = set()
        for target in targets:
            if target != ROOT and not target.startswith(ROOT + "."):
                continue
            parts = target.split(".")
            # Importing a.b.c runs the packages a.b on the way (the top package's lazy __init__ aside).
            edges.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
        # A module's own packages are imported before it runs: not an edge of its own.
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        graph[name] = {e for e in edges - own if e in modules}
    return graph


def floor_of(module: str) -> str:
    """The floor of a dotted module name (longest matching prefix)."""
    rel = module[len(ROOT) + 1 :] if module != ROOT else ""
    best, best_len = None, -1
    for floor, prefixes in FLOORS.items():
        for prefix in prefixes:
            matches = (
                rel == prefix or (prefix and rel.startswith(prefix + ".")) or (prefix == "" and rel == "")
            )
            if matches and len(prefix) > best_len:
                best, best_len = floor, len(prefix)
    if best is None:
        raise AssertionError(f"{module}: no floor; add its prefix to FLOORS in {__file__}")
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a (floor) -> b (floor)' for every import of a higher floor."""
    bad = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if ORDER.index(floor_of(target)) > ORDER.index(floor_of(module)):
                bad.append(f"{module} ({floor_of(module)}) -> {target} ({floor_of(target)})")
    return bad


def test_the_package_has_no_import_cycle():
    assert cycles(import_graph(package_modules())) == []


def test_no_module_imports_a_higher_floor():
    assert upward_imports(import_graph(package_modules())) == []


def test_the_package_never_imports_the_research_tests_or_benchmarks():
    # experiments/ may import the package, never the reverse (DESIGN §3); nor may tests/ or bench/ code
    # leak into what the wheel ships.
    outside = {
        "fidelity",
        "experiments",
        "tests",
        "bench",
        "conftest",
        "vlm_batches",
        "gui_layouts",
        "ray_cluster",
        "s3_server",
        "mlflow_stub",
    }
    found = []
    for module, path in package_modules().items():
        for node in _runtime_imports(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [
                f"{module}: {n}"
                for n in names
                if not getattr(node, "level", 0) and n.split(".")[0] in outside
            ]
    assert found == []


def test_every_module_has_a_floor():
    for module in package_modules():
        floor_of(module)


def test_no_module_is_over_600_lines():
    long = {m: n for m, p in package_modules().items() if (n := len(p.read_text().splitlines())) > 600}
    assert long == {}


def _write(tmp: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        path = tmp / ROOT / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package_modules(tmp / ROOT)


@pytest.mark.parametrize(
    "files, expect_cycle, expect_upward",
    [
        # a function-level import closing a cycle still counts
        (
            {
                "__init__.py": "",
                "pipeline.py": "import imagelora_dist.cli\n",
                "cli.py": "def f():\n    from imagelora_dist import pipeline\n",
            },
            True,
            False,
        ),
        # core importing the pipeline is upward, also through `from package import module`
        ({"__init__.py": "", "selection.py": "from imagelora_dist import pipeline\n", "pipeline.py": ""}, False, True),
        # a relative import resolves against the package
        (
            {"__init__.py": "", "data/__init__.py": "", "data/reader.py": "from ..train import loop\n",
             "train/__init__.py": "", "train/loop.py": ""},
            False,
            True,
        ),
        # a name the package root exports lazily (its _EXPORTS table) runs its defining module: upward
        (
            {"__init__.py": '_EXPORTS = {"run": "imagelora_dist.pipeline"}\n', "pipeline.py": "",
             "errors.py": "from imagelora_dist import run\n"},
            False,
            True,
        ),
        # ... also through a subpackage's table: a cycle (one floor, no upward edge)
        (
            {"__init__.py": "", "eval/__init__.py": '_EXPORTS = {"evaluate": "imagelora_dist.eval.run"}\n',
             "eval/run.py": "import imagelora_dist.train\n", "train/__init__.py": "from imagelora_dist.eval import evaluate\n"},
            True,
            False,
        ),
        # type-checking-only imports are not run: no edge
        (
            {"__init__.py": "", "selection.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
             "    from imagelora_dist.pipeline import x\n", "pipeline.py": "import imagelora_dist.selection\n"},
            False,
            False,
        ),
    ],
)  # fmt: skip
def test_the_checker_sees_what_it_must(tmp_path, files, expect_cycle, expect_upward):
    graph = import_graph(_write(tmp_path, files))
    assert bool(cycles(graph)) is expect_cycle
    assert bool(upward_imports(graph)) is expect_upward
