"""No import cycles in fedticket: every module can be understood (and imported) after the
ones it needs, never in a circle. Imports inside functions count (a lazy import is still
a dependency); those under ``if TYPE_CHECKING:`` do not run and do not count."""

import ast
from pathlib import Path

import fedticket

SRC = Path(fedticket.__file__).parent


def module_name(path: Path) -> str:
    parts = ["fedticket", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:``."""
    out: set[int] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.If) and getattr(n.test, "id", getattr(n.test, "attr", "")) \
                == "TYPE_CHECKING":
            for child in n.body:
                out.update(id(x) for x in ast.walk(child))
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the fedticket modules it imports (``from P import name`` names the
    module ``P.name`` where that is a module, else ``P``)."""
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_only(tree)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                           for a in node.names]
            graph[mod].update(t for t in targets if t in files and t != mod)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_lazy_imports_and_a_made_up_cycle():
    graph = import_graph()
    assert "fedticket.federated.messages" in graph["fedticket.federated.strategy"]
    assert len(graph) > 40
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_there_is_no_import_cycle():
    assert cycles(import_graph()) == []


def _code_strings(tree: ast.Module) -> list[ast.Constant]:
    """The string constants of a module that are not docstrings."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
            and n.body and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)}
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and id(n) not in docs]


def test_no_method_name_is_written_outside_the_preset_table():
    """Method names live in the preset table (spec.METHODS, with the default baseline)
    and in the configs that name them; the study, the report and the engines take them
    from there. A string in the code equal to a preset's name must be a part's name in a
    registry (the ``fedavg`` aggregation, the ``feddst`` round rule) or an exported name."""
    from fedticket.parts import REGISTRIES
    from fedticket.spec import METHODS

    parts = {name for registry in REGISTRIES.values() for name in registry.names()}
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "spec.py":
            continue
        tree = ast.parse(path.read_text())
        exported = {e.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                    and any(getattr(t, "id", "") == "__all__" for t in n.targets)
                    for e in ast.walk(n.value) if isinstance(e, ast.Constant)}
        found += [f"{path.relative_to(SRC)}:{c.lineno} {c.value!r}" for c in _code_strings(tree)
                  if c.value in METHODS and c.value not in parts and c.value not in exported]
    assert found == []


def test_no_code_branches_on_a_parts_name():
    """The round loop, the runner, the stages, the client and the engines call parts
    through their registries: no comparison anywhere outside ``spec.py`` tests a setting
    that names a part (``pretrain.kind``, ``federate.compute``, ...) against one of its
    registered names. (A registry's own module may name its parts where it adds them.)"""
    from fedticket.parts import REGISTRIES

    fields = {setting.rpartition(".")[2]: set(reg.names()) for setting, reg in
              REGISTRIES.items()}
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "spec.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            attrs = {s.attr for s in sides if isinstance(s, ast.Attribute)}
            names = {c.value for s in sides for c in ast.walk(s)
                     if isinstance(c, ast.Constant) and isinstance(c.value, str)}
            for attr in attrs & set(fields):
                if names & fields[attr]:
                    found.append(f"{path.relative_to(SRC)}:{node.lineno} "
                                 f".{attr} vs {sorted(names & fields[attr])}")
    assert found == []
