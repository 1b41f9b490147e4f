"""docs/architecture.md against the code: every module is named, and the ones it calls pure are.

"Pure" (the doc's word): bytes and numbers in, decisions out. Checked here the cheap way that
still catches drift: a pure module imports nothing that does I/O, from the standard library or
from the package, except the pure pieces named below.
"""

from __future__ import annotations

import ast
import re

from ..helpers import REPO

DOC = REPO / "docs" / "architecture.md"
PACKAGE = REPO / "evloop_httpd"
IO_STDLIB = {"os", "io", "socket", "select", "selectors", "ssl", "subprocess", "shutil"}
IO_STDLIB |= {"pathlib", "tempfile", "signal", "resource", "mmap", "fcntl", "threading"}
# Impure modules whose named parts are pure: what a pure module may take from them.
PURE_PARTS = {
    "config": {"Limits"},  # a frozen dataclass of numbers
    "errors": {"HttpError", "bad_request"},
    "files": {"is_upload_temp"},  # a test on a name, no file system
}


def pure_modules() -> list[str]:
    """The modules the doc's "... are pure" sentence names."""
    text = " ".join(DOC.read_text().split())
    sentence = re.search(r"Of the modules right of the connection, (.+?) are pure", text)
    assert sentence, "the doc no longer says which modules are pure"
    return re.findall(r"`(\w+)\.py`", sentence.group(1))


def imports(module: str) -> tuple[set[str], dict[str, set[str]]]:
    """(standard-library top-level names, {package module: names taken from it})."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    stdlib: set[str] = set()
    package: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            stdlib |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            name = node.module or ""
            package.setdefault(name, set()).update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            stdlib.add(node.module.split(".")[0])
    return stdlib, package


def test_every_module_is_named_in_the_doc() -> None:
    text = DOC.read_text()
    private = {"__init__", "__main__"}
    modules = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in private)
    assert [m for m in modules if f"{m}.py" not in text] == []


def test_the_modules_called_pure_import_nothing_that_does_io() -> None:
    pure = pure_modules()
    assert {"parser", "body", "multipart", "proxyproto"} <= set(pure), pure
    for module in pure:
        stdlib, package = imports(module)
        assert not stdlib & IO_STDLIB, (module, stdlib & IO_STDLIB)
        for name, taken in package.items():
            if name in pure or name == "":  # "from . import grammar"
                continue
            assert taken <= PURE_PARTS.get(name, set()), (module, name, taken)


def test_the_check_sees_an_io_import() -> None:
    # The check itself: a module that opens files is caught.
    stdlib, package = imports("upload")
    assert stdlib & IO_STDLIB
    assert "files" in package and not package["files"] <= PURE_PARTS["files"]
