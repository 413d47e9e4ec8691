"""Reading the code as data: which top-level package imports which, and where tables are written.

Used by ``test_layers.py``; kept apart so the checks can be tested on snippets too.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Bottom to top: a package may import only packages before it in this list.
LAYERS = (
    "registry_types",
    "adapters",
    "registry_store",
    "mappings",
    "registry_adapter",
    "scheduler",
    "review",
)
STORE = "registry_store"

_SQL_WRITE = re.compile(r"\b(INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+[\"\w.]+\s+SET|DELETE\s+FROM)\b", re.I)
_WRITE_NAMES = {"insert", "update", "delete", "upsert"}
_SQL_PACKAGES = ("sqlalchemy", "sqlmodel")
_SESSION_WRITES = {"add", "add_all", "merge", "delete"}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def python_files(package: str) -> Iterator[Path]:
    yield from sorted((ROOT / package).rglob("*.py"))


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def imported_modules(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every absolute import in the module, at any depth (lazy imports inside functions and
    ``TYPE_CHECKING`` blocks count: they are dependencies all the same)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def package_imports(packages: tuple[str, ...] = LAYERS) -> dict[str, dict[str, list[str]]]:
    """package → imported package → where ("path:line module")."""
    edges: dict[str, dict[str, list[str]]] = {p: defaultdict(list) for p in packages}
    for package in packages:
        for path in python_files(package):
            for line, module in imported_modules(ast.parse(path.read_text(encoding="utf-8"))):
                top = module.split(".")[0]
                if top in packages and top != package:
                    edges[package][top].append(f"{_rel(path)}:{line} imports {module}")
    return edges


def cycles(edges: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The strongly connected groups of more than one package (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def _sqlalchemy_names(tree: ast.AST) -> tuple[set[str], set[str], bool]:
    """Names this module binds to SQLAlchemy's insert/update/delete, names bound to
    SQLAlchemy modules (``sa``, ``postgresql``...), and whether it uses an ORM session."""
    writes: set[str] = set()
    modules: set[str] = set()
    orm = False
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in _SQL_PACKAGES:
            for alias in node.names:
                if alias.name in _WRITE_NAMES:
                    writes.add(alias.asname or alias.name)
                elif alias.name in ("postgresql", "sqlite", "mysql", "dialects"):
                    modules.add(alias.asname or alias.name)
                elif alias.name == "Session":
                    orm = True
        elif isinstance(node, ast.ImportFrom) and node.module == f"{STORE}.db":
            # The store's generic upsert is for its own modules; others call named writes.
            writes.update(alias.asname or alias.name for alias in node.names if alias.name == "upsert")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in _SQL_PACKAGES:
                    modules.add(alias.asname or alias.name.split(".")[0])
    return writes, modules, orm


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _receiver(node: ast.expr) -> str:
    """The dotted name a method is called on (``self.session`` → "self.session"), or ""."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _receiver(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def table_writes(source: str, path: str = "<snippet>") -> list[Finding]:
    """Statements in ``source`` that write a table: SQLAlchemy ``insert()``/``update()``/
    ``delete()`` (imported, or from a dialect or ``sa``), ``TABLE.insert()`` on a table handle,
    ORM ``session.add/merge/delete``, and SQL text that inserts, updates or deletes."""
    tree = ast.parse(source)
    writes, modules, orm = _sqlalchemy_names(tree)
    docstrings = _docstrings(tree)
    found: list[Finding] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in writes:
                found.append(Finding(path, node.lineno, f"{func.id}()"))
            elif isinstance(func, ast.Attribute) and func.attr in _WRITE_NAMES:
                receiver = _receiver(func.value)
                head = receiver.split(".")[0]
                last = receiver.split(".")[-1]
                # A table handle (CASES.insert()), a dialect (postgresql.insert(...)), or a
                # variable holding one (``dialect = postgresql if ... else sqlite``).
                if head in modules or last.isupper() or last in ("dialect", "table", "tbl"):
                    found.append(Finding(path, node.lineno, f"{receiver}.{func.attr}()"))
            if (
                orm
                and isinstance(func, ast.Attribute)
                and func.attr in _SESSION_WRITES
                and "session" in _receiver(func.value).lower()
            ):
                found.append(Finding(path, node.lineno, f"ORM {_receiver(func.value)}.{func.attr}()"))
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and _SQL_WRITE.search(node.value)
        ):
            found.append(Finding(path, node.lineno, f"SQL text {node.value.strip()[:40]!r}"))
    return found


def writes_outside_store(packages: tuple[str, ...] = LAYERS) -> list[Finding]:
    found: list[Finding] = []
    for package in packages:
        if package == STORE:
            continue
        for path in python_files(package):
            found.extend(table_writes(path.read_text(encoding="utf-8"), _rel(path)))
    return found
