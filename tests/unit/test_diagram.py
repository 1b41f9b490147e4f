from __future__ import annotations

from evloop_httpd.diagram import splice

from ..helpers import REPO


def test_state_machine_doc_matches_transition_table() -> None:
    path = REPO / "docs" / "state-machine.md"
    text = path.read_text(encoding="utf-8")
    assert splice(text) == text, (
        "docs/state-machine.md is stale: run python -m evloop_httpd.diagram --write "
        "docs/state-machine.md"
    )
