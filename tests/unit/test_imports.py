"""Function-local imports only where they break a real import cycle, or are lazy on purpose,
each saying so (issue 8, §4; docs/design.md, "The kernel: boot, ownership, hooks"): an import
inside a function needs a comment on its own line or on the line just above it."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "passthru"

# Files whose function-local imports are not yet commented, each to be resolved by its owner.
# (Empty: every function-local import in src/passthru says why.)
EXCLUDED: frozenset[str] = frozenset()


def uncommented_local_imports(source: str) -> list[int]:
    """The line numbers of the imports inside a function body that have no comment on their
    first line and no comment-only line just above."""
    trailing: set[int] = set()  # lines with a comment after code
    alone: set[int] = set()  # lines that are only a comment
    code: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            (trailing if tok.start[0] in code else alone).add(tok.start[0])
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code.add(tok.start[0])
    found: list[int] = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and in_function:
                line = child.lineno
                if line not in trailing and line - 1 not in alone:
                    found.append(line)
            walk(child, in_function or isinstance(child, (ast.FunctionDef,
                                                          ast.AsyncFunctionDef, ast.Lambda)))

    walk(ast.parse(source), False)
    return sorted(found)


def test_the_scan_tells_commented_from_uncommented_local_imports() -> None:
    source = (
        "import os\n"
        "def f():\n"
        "    import json\n"
        "    # breaks the cycle a -> b -> a\n"
        "    from . import a\n"
        "    from . import b  # lazy: start-up time\n"
        "    x = 1  # a comment about x, not the import below\n"
        "    import sys\n"
        "    '# not a comment'; import re\n"
        "class C:\n"
        "    import typing\n"
        "    def m(self):\n"
        "        if True:\n"
        "            from .c import (\n"
        "                d,  # a comment on a later line of the statement\n"
        "            )\n"
    )
    assert uncommented_local_imports(source) == [3, 8, 9, 14]


def test_every_function_local_import_says_why() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel in EXCLUDED:
            continue
        for line in uncommented_local_imports(path.read_text()):
            offenders.append(f"src/passthru/{rel}:{line}")
    assert not offenders, (
        "function-local imports without a comment saying which cycle they break (or why they "
        "are lazy); move them to the top of the module, or comment them: "
        + ", ".join(offenders))
