"""Members, roles and personal tokens through the API: shown once, stored hashed, expiring, revocable, audited."""

from __future__ import annotations

import hashlib

import httpx

from tests.helpers import unique
from tests.stack import Stack, sql


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def member(api: httpx.AsyncClient, role: str) -> tuple[str, str]:
    name = unique(role)
    added = await api.post("/v1/users", json={"name": name, "role": role})
    assert added.status_code == 201, added.text
    return name, added.json()["token"]


async def test_a_token_is_shown_once_and_stored_only_hashed(api: httpx.AsyncClient) -> None:
    name, token = await member(api, "viewer")
    assert token.startswith("dvt_") and len(token) > 40
    rows = sql("SELECT t.prefix, t.token_hash FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE u.name = :n",
               n=name)
    assert rows == [{"prefix": token[:12], "token_hash": hashlib.sha256(token.encode()).hexdigest()}]
    dump = str(sql("SELECT * FROM api_tokens")) + str(sql("SELECT * FROM audit_log"))
    assert token not in dump
    listed = (await api.get("/v1/tokens", params={"all": True})).json()
    assert all("token" not in t for t in listed) and any(t["user"] == name for t in listed)


async def test_expired_revoked_and_removed_tokens_get_401(api: httpx.AsyncClient) -> None:
    name, token = await member(api, "supervisor")
    async with httpx.AsyncClient(base_url=str(api.base_url), headers=bearer(token)) as own:
        me = (await own.get("/v1/me")).json()
        assert (me["user"], me["org"], me["role"]) == (name, "default", "supervisor")
        # a second token, revoked by its owner
        second = (await own.post("/v1/tokens", json={"name": "laptop", "days": 1})).json()
        assert (await api.get("/v1/me", headers=bearer(second["token"]))).status_code == 200
        assert (await own.delete(f"/v1/tokens/{second['id']}")).status_code == 204
        assert (await api.get("/v1/me", headers=bearer(second["token"]))).status_code == 401
        # a third one, past its expiry
        third = (await own.post("/v1/tokens", json={"name": "ci", "days": 1})).json()
        sql("UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = :i", i=third["id"])
        answer = await api.get("/v1/runs", headers=bearer(third["token"]))
        assert answer.status_code == 401 and "expired or revoked" in answer.json()["detail"]
        listed = {t["id"]: t["active"] for t in (await own.get("/v1/tokens")).json()}
        assert listed[second["id"]] is False and listed[third["id"]] is False
        # a role change applies to the next request
        assert (await api.put(f"/v1/users/{name}", json={"role": "viewer"})).status_code == 200
        refused = await own.post("/v1/runs", json={"pipeline": "x", "repo": "."})
        assert refused.status_code == 403 and "needs the supervisor role" in refused.json()["detail"]
        # and a member removed has no working token left
        assert (await api.delete(f"/v1/users/{name}")).status_code == 204
        assert (await own.get("/v1/me")).status_code == 401
    assert sql("SELECT count(*) AS n FROM api_tokens t JOIN users u ON u.id = t.user_id "
               "WHERE u.name = :n AND t.revoked_at IS NULL", n=name) == [{"n": 0}]


async def test_bad_input_is_refused_and_nothing_is_half_written(api: httpx.AsyncClient) -> None:
    before = sql("SELECT count(*) AS n FROM users")[0]["n"]
    for body in ({"name": "x y", "role": "viewer"}, {"name": unique("u"), "role": "owner"},
                 {"name": unique("u"), "role": "viewer", "token_days": 0}):
        assert (await api.post("/v1/users", json=body)).status_code == 422, body
    assert sql("SELECT count(*) AS n FROM users")[0]["n"] == before
    name, _ = await member(api, "viewer")
    again = await api.post("/v1/users", json={"name": name, "role": "admin"})
    assert again.status_code == 409 and "already a member" in again.json()["detail"]
    assert (await api.put("/v1/users/nobody-here", json={"role": "viewer"})).status_code == 404
    assert (await api.post("/v1/orgs", json={"id": "Not A Slug"})).status_code == 422
    assert (await api.delete("/v1/tokens/999999999")).status_code == 404


async def test_the_last_admin_cannot_leave(api: httpx.AsyncClient) -> None:
    org = unique("org")
    assert (await api.post("/v1/orgs", json={"id": org})).status_code == 201
    token = (await api.post("/v1/tokens", json={"org": org})).json()["token"]
    async with httpx.AsyncClient(base_url=str(api.base_url), headers=bearer(token)) as there:
        refused = await there.put("/v1/users/admin", json={"role": "viewer"})
        assert refused.status_code == 409 and "no admin left" in refused.json()["detail"]
        assert (await there.delete("/v1/users/admin")).status_code == 409
        assert (await there.get("/v1/me")).json()["role"] == "admin"


async def test_every_write_is_audited_with_who_and_role(api: httpx.AsyncClient, stack: Stack) -> None:
    name, token = await member(api, "viewer")
    async with httpx.AsyncClient(base_url=str(api.base_url), headers=bearer(token)) as viewer:
        assert (await viewer.post("/v1/pipelines", json={"name": "x", "stages": []})).status_code == 403
        assert (await viewer.post("/v1/tokens", json={"name": "mine"})).status_code == 201
        assert (await viewer.get("/v1/audit")).status_code == 403
    entries = (await api.get("/v1/audit", params={"user": name})).json()
    assert [(e["method"], e["route"], e["status"], e["role"]) for e in entries] == [
        ("POST", "/v1/tokens", 201, "viewer"), ("POST", "/v1/pipelines", 403, "viewer")]
    added = (await api.get("/v1/audit", params={"user": "admin", "limit": 50})).json()
    assert any(e["route"] == "/v1/users" and e["status"] == 201 and e["role"] == "admin" for e in added)
