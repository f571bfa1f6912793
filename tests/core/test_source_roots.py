"""Which folders a run's local repository may lie in: those an operator lists, or the project of the state folder."""

from __future__ import annotations

from pathlib import Path

from devart.core.settings import SourceSettings


def test_unset_the_project_holding_the_state_folder(tmp_path: Path) -> None:
    assert SourceSettings(local_roots="").roots(tmp_path / "project" / ".devart") == [tmp_path / "project"]


def test_listed_folders_resolved_through_links(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    roots = SourceSettings(local_roots=f" {tmp_path / 'link'} ,/srv/checkouts").roots(tmp_path / ".devart")
    assert roots == [(tmp_path / "real").resolve(), Path("/srv/checkouts")]
