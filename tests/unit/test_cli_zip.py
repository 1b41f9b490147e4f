"""The command line's part in folder ZIPs: the cap flag and what the descriptor budget sets
aside for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from evloop_httpd.cli import build_parser, config_from
from evloop_httpd.descriptors import FD_RESERVE, FDS_PER_ZIP, needed, plan
from evloop_httpd.handler import attachment


def test_max_zip_downloads_flag(tmp_path: Path) -> None:
    parser = build_parser()
    assert config_from(parser.parse_args(["-d", str(tmp_path)]), parser).max_zips == 4
    args = parser.parse_args(["-d", str(tmp_path), "--max-zip-downloads", "9"])
    assert config_from(args, parser).max_zips == 9
    with pytest.raises(SystemExit):
        parser.parse_args(["-d", str(tmp_path), "--max-zip-downloads", "0"])


def test_the_budget_sets_descriptors_aside_for_zip_downloads() -> None:
    assert needed(100, 4) == needed(100) + 4 * FDS_PER_ZIP
    # 10,000 connections, 30,000 + 4 walks' worth of descriptors: the uploads get what the
    # same limit without ZIPs would give them.
    with_zips = plan(10_000, 30_000 + 4 * FDS_PER_ZIP, 4).max_uploads
    assert with_zips == plan(10_000, 30_000).max_uploads == 30_000 - FD_RESERVE - 20_000
    assert plan(1000, 3 * 1000 + FD_RESERVE, 4).max_uploads is not None  # short by the walks


def test_content_disposition_escapes_the_fallback_and_encodes_the_name() -> None:
    assert attachment('a"b\\c%d é.zip') == (
        b"attachment; filename=\"a_b_c_d _.zip\"; filename*=UTF-8''a%22b%5Cc%25d%20%C3%A9.zip"
    )
