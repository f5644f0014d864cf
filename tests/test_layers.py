"""The package's shape: no import cycle among dmutils modules (imports inside functions included), and the
layers contract of pyproject.toml (import-linter) kept: each layer imports only the layers below it."""
import ast
import subprocess
import sys
from pathlib import Path


SRC = Path(__file__).resolve().parents[1] / "src"


def import_graph(package: str = "dmutils") -> dict[str, set[str]]:
    """module -> the dmutils modules it imports anywhere in its body (a module importing its own package is no edge)."""
    files = {}
    for f in (SRC / package).rglob("*.py"):
        parts = f.relative_to(SRC).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph = {m: set() for m in files}
    for mod, f in files.items():
        here = mod.split(".") if f.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in files:
                    t = t.rpartition(".")[0]
                if t and t != mod and not mod.startswith(t + "."):
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_dmutils_modules():
    graph = import_graph()
    assert len(graph) > 50 and "dmutils.dataset.generate" in graph["dmutils.commands.generate"]
    assert cycles(graph) == []


def test_layers_contract_is_kept():
    """`lint-imports` (also run by `make test`): the layers contract of pyproject.toml."""
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--no-cache"], cwd=SRC.parent, capture_output=True, text=True)
    assert proc.returncode == 0 and "1 kept, 0 broken" in proc.stdout, proc.stdout[-3000:]


def test_each_real_data_kind_has_its_reader_and_its_check():
    """``real.kind`` is named in three places (the schema's choices, the readers, the preflight checks): a kind added to
    one and not the others would train on nothing or go unchecked."""
    import typing

    from dmutils.config.schema import RealDataParams
    from dmutils.preflight.data import REAL_DATA_CHECKS
    from dmutils.segment.data import READERS

    kinds = set(typing.get_args(RealDataParams.model_fields["kind"].annotation))
    assert set(REAL_DATA_CHECKS) == kinds, f"preflight checks {sorted(REAL_DATA_CHECKS)} vs schema kinds {sorted(kinds)}"
    assert set(READERS) | {"toy"} == kinds, f"readers {sorted(READERS)} (+ toy, rendered) vs schema kinds {sorted(kinds)}"
