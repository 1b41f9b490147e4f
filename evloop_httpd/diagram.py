"""Render the connection state machine as a Mermaid diagram, straight from ``TRANSITIONS``.

Theory of operation: docs/state-machine.md embeds the output of :func:`mermaid` between two
marker comments, and a test regenerates it and fails when the file is stale, so the picture a
learner reads is always the table the code runs. ``python -m evloop_httpd.diagram --write FILE``
refreshes the file in place.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .states import INTEREST, TRANSITIONS, ConnState

BEGIN = "<!-- BEGIN GENERATED: python -m evloop_httpd.diagram --write docs/state-machine.md -->"
END = "<!-- END GENERATED -->"
_WAITS = {0: "nothing", 1: "read", 2: "write"}


def mermaid() -> str:
    """The state diagram, one edge per table entry, in table order."""
    lines = [
        "```mermaid",
        "stateDiagram-v2",
        "    [*] --> READING_HEADERS: accept",
        "    [*] --> HANDSHAKING: accept (TLS)",
        "    [*] --> PROXY_HEADER: accept (--proxy-protocol)",
    ]
    for (src, inp), dst in TRANSITIONS.items():
        lines.append(f"    {src.name} --> {dst.name}: {inp.name}")
    lines.append("    CLOSED --> [*]")
    lines.append("```")
    lines.append("")
    lines.append("| state | the connection waits for |")
    lines.append("|---|---|")
    for state in ConnState:
        lines.append(f"| `{state.name}` | {_WAITS[INTEREST[state]]} |")
    return "\n".join(lines) + "\n"


def splice(document: str) -> str:
    """``document`` with the generated block replaced by the current diagram."""
    head, sep1, rest = document.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not (sep1 and sep2):
        raise ValueError("markers not found")
    return f"{head}{BEGIN}\n{mermaid()}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evloop_httpd.diagram")
    p.add_argument("--write", type=Path, help="update the generated block of this file")
    args = p.parse_args(argv)
    if args.write is None:
        sys.stdout.write(mermaid())
        return 0
    args.write.write_text(splice(args.write.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
