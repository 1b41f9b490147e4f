"""docs/tutorial.md shows real --trace output: regenerate it and compare (issue 16).

The script starts real servers on 127.0.0.1 port 0 and plays each scenario; any change to what
the loop does or says (a state, a byte count, an extra wake-up) makes this fail until the
tutorial is regenerated (``python docs/tutorial_gen.py --write``) and its prose checked."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ..helpers import REPO

TIMEOUT_S = 120  # six scenarios, each a server start and a few round trips (about 3 s total)


@pytest.mark.slow
def test_the_tutorial_traces_are_what_the_server_prints_today() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "docs" / "tutorial_gen.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_check_notices_a_stale_block() -> None:
    # The comparison itself: one changed line in a generated block is a difference.
    sys.path.insert(0, str(REPO / "docs"))
    try:
        import tutorial_gen
    finally:
        sys.path.pop(0)
    doc = (REPO / "docs" / "tutorial.md").read_text()
    blocks = {m.group("name"): m.group("body") for m in tutorial_gen.BLOCK.finditer(doc)}
    assert set(blocks) == set(tutorial_gen.SCENARIOS)
    assert tutorial_gen.render(doc, blocks) == doc
    stale = dict(blocks, pipelined=blocks["pipelined"].replace("sent 528 B", "sent 264 B"))
    assert stale["pipelined"] != blocks["pipelined"]
    assert tutorial_gen.render(doc, stale) != doc
