"""Which folders a run's local repository may lie in: those an operator lists, or the project of the state folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from devart.core.settings import SourceSettings


def test_unset_the_project_holding_the_state_folder(tmp_path: Path) -> None:
    assert SourceSettings(local_roots="").roots(tmp_path / "project" / ".devart") == [tmp_path / "project"]


def test_listed_folders_resolved_through_links(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    roots = SourceSettings(local_roots=f" {tmp_path / 'link'} ,/srv/checkouts").roots(tmp_path / ".devart")
    assert roots == [(tmp_path / "real").resolve(), Path("/srv/checkouts")]


def test_a_link_inside_a_root_to_a_folder_outside_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from devart.core import settings
    from devart.core.errors import InvalidPipeline
    from devart.domain.sources import check_source

    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "etc").symlink_to("/etc")
    monkeypatch.setenv("DEVART_SOURCE_LOCAL_ROOTS", str(tmp_path / "root"))
    settings.source.cache_clear()
    try:
        assert check_source(str(tmp_path / "root"), None).repo == str(tmp_path / "root")
        for repo in (str(tmp_path / "root" / "etc"), f"{tmp_path}/root/../root/etc/ssl", f"file://{tmp_path}/root/etc"):
            with pytest.raises(InvalidPipeline, match="is outside the folders runs may use"):
                check_source(repo, None)
    finally:
        settings.source.cache_clear()
