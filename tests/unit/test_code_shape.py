"""The shape of the package (docs/design.md, "The shape of the code"): no import cycle,
counting every import (inside functions and under ``TYPE_CHECKING`` too), no class over
300 lines, no function body over 60, no outside document named in the code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "wsrt"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_the_graph_sees_imports_inside_functions_and_type_checking() -> None:
    edges = graph()
    assert "wsrt.config" in edges["wsrt.app"]
    assert edges["wsrt.cli.serve"]  # its imports are inside the command function


def test_no_module_imports_itself_back() -> None:
    # Also through a package's __init__, which Python runs before any submodule.
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


MAX_CLASS_LINES = 300
MAX_BODY_LINES = 60


def oversized() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    found.append(f"class {module_name(path)}.{node.name}: {size} lines")
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                body = node.body
                first = body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    body = body[1:]  # the docstring
                if body:
                    size = (body[-1].end_lineno or 0) - body[0].lineno + 1
                    if size > MAX_BODY_LINES:
                        found.append(f"def {module_name(path)}.{node.name}: {size} lines")
    return found


def test_classes_and_functions_read_in_one_sitting() -> None:
    assert oversized() == []


def test_the_code_points_at_no_document_outside_the_repository() -> None:
    """Design references go to docs/design.md, which is in the repository."""
    said = [
        f"{path.relative_to(PACKAGE.parent)}:{n}"
        for path in sorted(PACKAGE.rglob("*"))
        if path.suffix in (".py", ".js", ".html", ".css")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if (re.search(r"\bsection \d", line, re.I) and "RFC" not in line) or "shared/" in line
    ]
    assert said == []


def test_every_design_reference_names_a_section_of_docs_design() -> None:
    design = (PACKAGE.parent / "docs" / "design.md").read_text()
    sections = set(re.findall(r"^## (.+)$", design, re.M))
    named = {
        title
        for path in PACKAGE.rglob("*.py")
        for title in re.findall(r'docs/design\.md,?\s+"([^"]+)"', path.read_text())
    }
    assert named and named <= sections, named - sections
