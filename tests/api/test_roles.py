"""Who may call what: a role × route matrix read from the OpenAPI document, against a live API.

Every operation of the document must declare its access (``x-devart-role``): a new route without one fails here.
Each operation is then called with no token, a wrong token, a viewer's, a supervisor's and an admin's token, and by
the admin of another organisation; each answer must match the declared role (401 without a valid token, 403 naming
the role for one too low, neither for one high enough). The calls carry no body and name no existing object, so
an allowed call ends in 404 or 422 and changes nothing; they run on an API of their own database all the same
(``tests.api.isolated``), so that nothing they do reaches other tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devart.api.auth import AGENT, GITHUB, PUBLIC, ROLE_KEY
from devart.domain.identity import Role
from tests.api.isolated import isolated_api
from tests.stack import Stack

ROLES = [r.value for r in Role]
#: What each caller may do, by the rank of its role (the outsider is an admin, of another organisation).
CALLERS = {"viewer": Role.VIEWER, "supervisor": Role.SUPERVISOR, "admin": Role.ADMIN, "outsider": Role.ADMIN}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def roles_api(stack: Stack) -> Iterator[str]:
    with isolated_api(stack, "roles") as url:
        yield url


@pytest.fixture(scope="module")
def tokens(roles_api: str, stack: Stack) -> dict[str, str]:
    """A token per caller: members of the default organisation in each role, and an outsider."""
    admin = stack.env["DEVART_ADMIN_TOKEN"]
    found = {"admin": admin}
    with httpx.Client(base_url=roles_api, headers=bearer(admin), timeout=30.0) as client:
        for role in ("viewer", "supervisor"):
            added = client.post("/v1/users", json={"name": f"{role}-member", "role": role})
            assert added.status_code == 201, added.text
            found[role] = added.json()["token"]
        assert client.post("/v1/orgs", json={"id": "elsewhere"}).status_code == 201
        there = client.post("/v1/tokens", json={"org": "elsewhere", "name": "elsewhere"})
        assert there.status_code == 201, there.text
        outsider = client.post("/v1/users", headers=bearer(there.json()["token"]),
                               json={"name": "outsider", "role": "admin"})
        assert outsider.status_code == 201, outsider.text
        found["outsider"] = outsider.json()["token"]
    return found


def operations(url: str) -> list[tuple[str, str, dict[str, Any]]]:
    document = httpx.get(f"{url}/openapi.json", timeout=30.0).json()
    return [(path, method.upper(), op) for path, item in document["paths"].items()
            for method, op in item.items() if method in ("get", "post", "put", "patch", "delete")]


def concrete(path: str, op: dict[str, Any]) -> str:
    """The path with every parameter naming nothing that exists."""
    for param in op.get("parameters", []):
        if param["in"] == "path":
            value = "999999999" if param.get("schema", {}).get("type") == "integer" else "no-such-thing"
            path = path.replace("{" + param["name"] + "}", value)
    return path


def status(client: httpx.Client, method: str, path: str, headers: dict[str, str]) -> int:
    """The answer's status; the body is not read (an allowed live feed would stream for ever)."""
    with client.stream(method, path, headers=headers) as response:
        return response.status_code


def test_every_route_declares_its_access(roles_api: str) -> None:
    undeclared = [f"{m} {p}" for p, m, op in operations(roles_api) if op.get(ROLE_KEY) not in
                  {*ROLES, AGENT, GITHUB, PUBLIC}]
    assert not undeclared, f"routes without a declared role ({ROLE_KEY}): {undeclared}"
    declared = {op[ROLE_KEY] for _, _, op in operations(roles_api)}
    assert {*ROLES, AGENT, GITHUB, PUBLIC} <= declared


def expectations(declared: str, tokens: dict[str, str]) -> list[tuple[str, dict[str, str], set[int], bool]]:
    """(caller, headers, statuses, whether the status must be one of them or none of them) for a declared access."""
    if declared == PUBLIC:
        return [("none", {}, {200}, True)]
    if declared == GITHUB:  # unsigned: refused, or the webhook is not configured here
        return [("none", {}, {401, 503}, True)]
    wrong = {"none": {}, "wrong": bearer("dvt_" + "x" * 43), "malformed": bearer("not a token")}
    checks = [(caller, headers, {401}, True) for caller, headers in wrong.items()]
    if declared == AGENT:  # a person's token is not an agent's key
        return [*checks, ("admin", bearer(tokens["admin"]), {401}, True)]
    needed = Role(declared)
    for caller, role in CALLERS.items():
        allowed = role.allows(needed)
        checks.append((caller, bearer(tokens[caller]), {401, 403} if allowed else {403}, not allowed))
    return checks


def test_each_answer_matches_the_declared_role(roles_api: str, tokens: dict[str, str]) -> None:
    mismatches: list[str] = []
    by_role = 0
    with httpx.Client(base_url=roles_api, timeout=30.0) as client:
        for template, method, op in operations(roles_api):
            path, declared = concrete(template, op), op[ROLE_KEY]
            by_role += declared in ROLES
            for caller, headers, statuses, must_be_one in expectations(declared, tokens):
                got = status(client, method, path, headers)
                if (got in statuses) != must_be_one:
                    mismatches.append(f"{method} {template} ({declared}) as {caller}: {got}")
    assert not mismatches, "\n".join(mismatches)
    assert by_role >= 40, by_role


def test_a_refusal_names_the_role_needed(roles_api: str, tokens: dict[str, str]) -> None:
    with httpx.Client(base_url=roles_api, timeout=30.0) as client:
        response = client.post("/v1/runs", headers=bearer(tokens["viewer"]), json={"pipeline": "x", "repo": "."})
        assert response.status_code == 403
        assert "needs the supervisor role in organisation default" in response.json()["detail"]
        assert "viewer-member is a viewer" in response.json()["detail"]
        response = client.get("/v1/runs")
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"


def test_an_outsider_sees_nothing_of_another_organisation(roles_api: str, tokens: dict[str, str]) -> None:
    with httpx.Client(base_url=roles_api, headers=bearer(tokens["outsider"]), timeout=30.0) as client:
        assert [m["name"] for m in client.get("/v1/users").json()] == ["admin", "outsider"]
        assert client.get("/v1/me").json()["org"] == "elsewhere"
        assert client.delete("/v1/users/viewer-member").status_code == 404
        assert client.put("/v1/users/viewer-member", json={"role": "admin"}).status_code == 404
        for token in httpx.get(f"{roles_api}/v1/tokens", params={"all": True},
                               headers=bearer(tokens["admin"])).json():
            assert client.delete(f"/v1/tokens/{token['id']}").status_code == 404
        other = client.post("/v1/tokens", json={"org": "default"})
        assert other.status_code == 404, other.text
        audit = client.get("/v1/audit").json()
        assert audit and {e["user"] for e in audit} <= {"admin", "outsider"}, audit
        assert all(e["path"].startswith("/v1/") for e in audit)
    viewer = httpx.get(f"{roles_api}/v1/me", headers=bearer(tokens["viewer"])).json()
    assert viewer["role"] == "viewer" and viewer["org"] == "default"


#: The roles the product promises (README, "Who may do what") for the routes that matter most.
POLICY = {
    ("POST", "/v1/runs"): "supervisor", ("POST", "/v1/runs/{run_id}/cancel"): "supervisor",
    ("POST", "/v1/runs/{run_id}/approve"): "supervisor", ("POST", "/v1/pipelines"): "supervisor",
    ("PUT", "/v1/budgets/{scope}/{name}"): "supervisor", ("POST", "/v1/agents/{name}/deactivate"): "supervisor",
    ("POST", "/v1/agents"): "admin", ("POST", "/v1/agents/{name}/rotate-key"): "admin",
    ("POST", "/v1/users"): "admin", ("PUT", "/v1/users/{name}"): "admin", ("GET", "/v1/audit"): "admin",
    ("PUT", "/v1/github/repositories/{owner}/{repo}"): "admin", ("DELETE", "/v1/dlq"): "admin",
    ("GET", "/v1/runs"): "viewer", ("GET", "/v1/events/stream"): "viewer", ("POST", "/v1/tokens"): "viewer",
    ("GET", "/v1/knowledge"): "viewer", ("GET", "/v1/knowledge/search"): "viewer",
    ("POST", "/v1/knowledge"): "supervisor", ("POST", "/v1/knowledge/reembed"): "admin",
    ("POST", "/v1/agent/tasks/{task_id}/complete"): AGENT, ("POST", "/v1/github/webhook"): GITHUB,
    ("GET", "/healthz"): PUBLIC,
}


def test_the_promised_roles_hold(roles_api: str) -> None:
    declared = {(m, p): op[ROLE_KEY] for p, m, op in operations(roles_api)}
    assert {route: declared.get(route) for route in POLICY} == POLICY
