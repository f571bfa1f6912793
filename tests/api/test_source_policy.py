"""An organisation's admin narrows where its runs' sources may come from: folders within the operator's, and hosts."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.cli.test_cli import devart
from tests.helpers import unique
from tests.stack import Stack, sql


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_an_organisations_runs_keep_to_its_folders_and_hosts(
    api: httpx.AsyncClient, stack: Stack, tmp_path: Path
) -> None:
    org = unique("org")
    assert (await api.post("/v1/orgs", json={"id": org})).status_code == 201
    token = (await api.post("/v1/tokens", json={"org": org})).json()["token"]
    allowed, other = tmp_path / "allowed", tmp_path / "other"
    for folder in (allowed / "repo", other):
        folder.mkdir(parents=True)
    async with httpx.AsyncClient(base_url=str(api.base_url), headers=bearer(token), timeout=30.0) as admin:
        # An admin may narrow, not widen: a folder outside the operator's and a malformed host are refused
        refused = await admin.put("/v1/orgs/current/sources", json={"roots": ["/etc"], "hosts": ["not a host"]})
        assert refused.status_code == 422, refused.text
        assert "/etc" in refused.text and "not a host" in refused.text
        for hostile in ({"roots": [str(allowed) + "\x00x"]}, {"hosts": ["github.com\x00"]}, {"roots": ["x" * 5000]},
                        {"roots": [str(allowed)] * 33}):
            answer = await admin.put("/v1/orgs/current/sources", json=hostile)
            assert answer.status_code == 422, (hostile, answer.text)
        for hostile_name in ("a\x00b", "x" * 101):
            answer = await admin.post("/v1/tokens", json={"name": hostile_name})
            assert answer.status_code == 422, answer.text
        policy = {"roots": [str(allowed)], "hosts": ["github.com"]}
        put = await admin.put("/v1/orgs/current/sources", json=policy)
        assert put.status_code == 200 and put.json() == policy, put.text
        assert (await admin.get("/v1/orgs/current/sources")).json() == policy
        before = sql("SELECT count(*) AS n FROM runs")[0]["n"]
        for repo, why in ((str(other), "outside the folders this organisation's runs may use"),
                          ("https://gitlab.com/acme/app.git", "repository host 'gitlab.com' is not one"),
                          ("git@gitlab.com:acme/app.git", "repository host 'gitlab.com' is not one")):
            answer = await admin.post("/v1/runs", json={"pipeline": "build-test-review", "repo": repo})
            assert answer.status_code == 422 and why in answer.text, (repo, answer.text)
        assert sql("SELECT count(*) AS n FROM runs")[0]["n"] == before  # nothing recorded
        for repo in (str(allowed / "repo"), "https://github.com/acme/app.git"):
            started = await admin.post("/v1/runs", json={"pipeline": "build-test-review", "repo": repo})
            assert started.status_code == 201, started.text
            run_id = started.json()["run_id"]
            assert (await admin.post(f"/v1/runs/{run_id}/cancel")).status_code == 202
            assert sql("SELECT org_id FROM runs WHERE id = :r", r=run_id) == [{"org_id": org}]
    # The CLI shows it and clears it
    shown = devart("orgs", "sources", "--json", env={**stack.env, "DEVART_TOKEN": token})
    assert shown.returncode == 0 and json.loads(shown.stdout) == policy, shown.stderr
    cleared = devart("orgs", "sources", "--clear", env={**stack.env, "DEVART_TOKEN": token})
    assert cleared.returncode == 0 and "any public host" in cleared.stdout, cleared.stderr
    # The default organisation's policy is its own: untouched
    assert (await api.get("/v1/orgs/current/sources")).json() == {"roots": [], "hosts": []}
