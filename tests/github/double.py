"""A local double of GitHub's REST API for the endpoints devart calls, held to GitHub's published schema.

Each request body is validated against githubkit's request models (unknown fields included) plus the rules GitHub
enforces beyond the schema (50 annotations per request, review comments only on lines of the diff, a body for a
COMMENT review); a refusal answers 422 like GitHub and is kept in ``rejected`` so a test can insist there were
none (devart swallows GitHub errors by design, so a silent 422 would otherwise go unnoticed). Every answer is
built as GitHub's JSON and parsed with githubkit's response model before it is sent.

Auth: a static token (``Authorization: token …``), or GitHub App auth: a JWT signed with the App's key buys an
installation token at ``POST /app/installations/{id}/access_tokens``.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Union

import jwt
import uvicorn
from githubkit.compat import type_validate_python
from githubkit_schemas.latest import models as m
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.github.payloads import user
from tests.github.rules import Refused, commentable, strict

WEB, API = "https://github.com", "https://api.github.com"
CHECK_CREATE = Union[m.ReposOwnerRepoCheckRunsPostBodyOneof0, m.ReposOwnerRepoCheckRunsPostBodyOneof1]  # noqa: UP007
CHECK_UPDATE = Union[m.ReposOwnerRepoCheckRunsCheckRunIdPatchBodyAnyof0,  # noqa: UP007
                     m.ReposOwnerRepoCheckRunsCheckRunIdPatchBodyAnyof1]
REVIEW_STATES = {"COMMENT": "COMMENTED", "APPROVE": "APPROVED", "REQUEST_CHANGES": "CHANGES_REQUESTED"}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(value: Any) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(value, datetime) else value


APP = {"id": 1001, "slug": "devart", "node_id": "A_1001", "client_id": "Iv1.devart", "name": "devart",
       "owner": user("acme", 5, "Organization"), "description": "devart pipelines", "external_url": "https://devart.example",
       "html_url": f"{WEB}/apps/devart", "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
       "permissions": {"checks": "write", "pull_requests": "write", "contents": "read", "metadata": "read"},
       "events": ["pull_request", "check_run", "issue_comment"]}
BOT = user("devart[bot]", 1002, "Bot")


@dataclass
class Pull:
    repo: str
    number: int
    head_sha: str
    base_sha: str
    lines: set[tuple[str, int]]
    heads: set[str] = field(default_factory=set)


@dataclass
class CheckRun:
    id: int
    repo: str
    data: dict[str, Any]
    annotations: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Review:
    id: int
    repo: str
    pr: int
    data: dict[str, Any]
    comments: list[dict[str, Any]]
    history: list[dict[str, Any]] = field(default_factory=list)


class GitHubDouble:
    """Serve on 127.0.0.1:``port`` in a thread; tests read the state under ``lock``."""

    def __init__(self, port: int, token: str, app_id: int | None = None, app_public_key: str | None = None) -> None:
        self.port, self.token = port, token
        self.app_id, self.app_public_key = app_id, app_public_key
        self.url = f"http://127.0.0.1:{port}"
        self.lock = threading.Lock()
        self.check_runs: dict[int, CheckRun] = {}
        self.reviews: dict[int, Review] = {}
        self.pulls: dict[tuple[str, int], Pull] = {}
        self.rejected: list[tuple[str, str, int, str]] = []
        self.requests: list[tuple[str, str, int]] = []
        self.refused: set[str] = set()
        self.down: set[str] = set()
        self.installation_tokens: set[str] = set()
        self._ids = iter(range(7_000_000_001, 8_000_000_000))  # GitHub's ids are past 2**31 by now
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # --- what tests set up and read ---

    def add_pull(self, repo: str, number: int, head_sha: str, base_sha: str, diff: str) -> None:
        with self.lock:
            pull = self.pulls.get((repo, number))
            heads = (pull.heads if pull else set()) | {head_sha}
            self.pulls[(repo, number)] = Pull(repo, number, head_sha, base_sha, commentable(diff), heads)

    def refuse(self, repo: str) -> None:
        """Answer 403 to every call on ``repo`` (an App that lost access)."""
        with self.lock:
            self.refused.add(repo)

    def outage(self, repo: str, down: bool = True) -> None:
        """Answer 503 to every call on ``repo`` (GitHub down for it) until called again with ``down=False``."""
        with self.lock:
            (self.down.add if down else self.down.discard)(repo)

    def checks_for(self, repo: str, head_sha: str) -> dict[str, CheckRun]:
        with self.lock:
            runs = [c for c in self.check_runs.values() if c.repo == repo and c.data["head_sha"] == head_sha]
        return {c.data["name"]: c for c in sorted(runs, key=lambda c: c.id)}

    def reviews_for(self, repo: str, pr: int) -> list[Review]:
        with self.lock:
            return [r for r in self.reviews.values() if r.repo == repo and r.pr == pr]

    # --- the server ---

    def start(self) -> GitHubDouble:
        routes = [
            Route("/app/installations/{installation}/access_tokens", self._token, methods=["POST"]),
            Route("/repos/{owner}/{repo}/check-runs", self._create_check, methods=["POST"]),
            Route("/repos/{owner}/{repo}/check-runs/{id:int}", self._check, methods=["GET", "PATCH"]),
            Route("/repos/{owner}/{repo}/pulls/{pr:int}/reviews", self._reviews, methods=["GET", "POST"]),
            Route("/repos/{owner}/{repo}/pulls/{pr:int}/reviews/{id:int}", self._update_review, methods=["PUT"]),
        ]
        config = uvicorn.Config(Starlette(routes=routes), host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve()), daemon=True)  # type: ignore[union-attr]
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the GitHub double did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)

    async def _handle(self, request: Request, handler: Any, *args: Any) -> JSONResponse:
        body: Any = None
        try:
            if request.method in ("POST", "PATCH", "PUT"):
                raw = await request.body()
                body = await request.json() if raw else {}
            status, answer = handler(request, body, *args)
        except Refused as exc:
            status, answer = exc.status, {"message": exc.message,
                                          "documentation_url": "https://docs.github.com/rest"}
            if exc.status in (400, 404, 422):
                with self.lock:
                    self.rejected.append((request.method, request.url.path, exc.status, exc.message))
        except Exception as exc:  # the double's own bug, e.g. an answer that does not fit GitHub's schema
            status, answer = 500, {"message": f"{type(exc).__name__}: {exc}"}
            with self.lock:
                self.rejected.append((request.method, request.url.path, 500, answer["message"]))
        with self.lock:
            self.requests.append((request.method, request.url.path, status))
        return JSONResponse(answer, status_code=status)

    def _auth(self, request: Request, repo: str | None = None) -> None:
        given = request.headers.get("Authorization", "")
        if given not in (f"token {self.token}", f"Bearer {self.token}") and given.removeprefix("token ") not in \
                self.installation_tokens:
            raise Refused(401, "Bad credentials")
        if repo is not None and repo in self.refused:
            raise Refused(403, "Resource not accessible by integration")
        if repo is not None and repo in self.down:
            raise Refused(503, "Service Unavailable")

    # --- App installation tokens ---

    async def _token(self, request: Request) -> JSONResponse:
        return await self._handle(request, self._issue_token)

    def _issue_token(self, request: Request, body: Any) -> tuple[int, dict[str, Any]]:
        if not self.app_public_key:
            raise Refused(404, "Not Found")
        try:
            claims = jwt.decode(request.headers.get("Authorization", "").removeprefix("Bearer "),
                                self.app_public_key, algorithms=["RS256"])
        except jwt.PyJWTError as exc:
            raise Refused(401, f"A JSON web token could not be decoded: {exc}") from None
        if str(claims.get("iss")) != str(self.app_id) or claims["exp"] - claims["iat"] > 600:
            raise Refused(401, "'Issuer' claim ('iss') or expiry of the JWT is wrong")
        strict(m.AppInstallationsInstallationIdAccessTokensPostBody, body or {})
        token = "ghs_" + secrets.token_hex(18)
        with self.lock:
            self.installation_tokens.add(token)
        expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        answer = {"token": token, "expires_at": expires, "repository_selection": "all",
                  "permissions": {"checks": "write", "pull_requests": "write", "contents": "read"}}
        type_validate_python(m.InstallationToken, answer)
        return 201, answer

    # --- check runs ---

    async def _create_check(self, request: Request) -> JSONResponse:
        return await self._handle(request, self._do_create_check)

    async def _check(self, request: Request) -> JSONResponse:
        return await self._handle(request, self._do_check)

    def _repo(self, request: Request) -> str:
        repo = f"{request.path_params['owner']}/{request.path_params['repo']}".lower()
        self._auth(request, repo)
        return repo

    def _do_create_check(self, request: Request, body: Any) -> tuple[int, dict[str, Any]]:
        repo = self._repo(request)
        strict(CHECK_CREATE, body)
        notes = self._annotations(body)
        with self.lock:
            run = CheckRun(next(self._ids), repo, {"name": body["name"], "head_sha": body["head_sha"],
                                                   "status": "queued", "conclusion": None, "started_at": _now(),
                                                   "completed_at": None, "external_id": None,
                                                   "details_url": None, "output": {}})
            self._apply(run, body, notes)
            self.check_runs[run.id] = run
            return 201, self._check_json(run)

    def _do_check(self, request: Request, body: Any) -> tuple[int, dict[str, Any]]:
        repo = self._repo(request)
        with self.lock:
            run = self.check_runs.get(request.path_params["id"])
        if run is None or run.repo != repo:
            raise Refused(404, "Not Found")
        if request.method == "PATCH":
            strict(CHECK_UPDATE, body)
            notes = self._annotations(body)
            with self.lock:
                self._apply(run, body, notes)
        with self.lock:
            return 200, self._check_json(run)

    @staticmethod
    def _annotations(body: dict[str, Any]) -> list[dict[str, Any]]:
        notes = (body.get("output") or {}).get("annotations") or []
        if len(notes) > 50:
            raise Refused(422, "Only 50 annotations are allowed per request")
        for note in notes:
            if len(note.get("title", "")) > 255 or len(note["message"].encode()) > 64 * 1024:
                raise Refused(422, "annotation title over 255 characters or message over 64 KB")
        return list(notes)

    def _apply(self, run: CheckRun, body: dict[str, Any], notes: list[dict[str, Any]]) -> None:
        data = run.data
        for key in ("name", "details_url", "external_id", "started_at"):
            if key in body:
                data[key] = body[key]
        if body.get("status") in ("queued", "in_progress"):  # a re-run resets the check run (GitHub's advice)
            data.update(status=body["status"], conclusion=None, completed_at=None)
        if body.get("conclusion"):
            data.update(status="completed", conclusion=body["conclusion"],
                        completed_at=body.get("completed_at") or _now())
        if "output" in body:
            data["output"] = {k: v for k, v in body["output"].items() if k != "annotations"}
        run.annotations += notes
        run.history.append(body)

    def _check_json(self, run: CheckRun) -> dict[str, Any]:
        url = f"{API}/repos/{run.repo}/check-runs/{run.id}"
        out = run.data.get("output") or {}
        pulls = [p for p in self.pulls.values() if p.repo == run.repo and run.data["head_sha"] in p.heads]
        minimal = [{"id": p.number * 1000 + 7, "number": p.number, "url": f"{API}/repos/{p.repo}/pulls/{p.number}",
                    "head": {"ref": "feature", "sha": p.head_sha, "repo": {"id": 1, "url": API, "name": p.repo}},
                    "base": {"ref": "main", "sha": p.base_sha, "repo": {"id": 1, "url": API, "name": p.repo}}}
                   for p in pulls]
        answer = {"id": run.id, "head_sha": run.data["head_sha"], "node_id": f"CR_{run.id}",
                  "external_id": run.data["external_id"], "url": url, "html_url": f"{WEB}/{run.repo}/runs/{run.id}",
                  "details_url": run.data["details_url"], "status": run.data["status"],
                  "conclusion": run.data["conclusion"], "started_at": _iso(run.data["started_at"]),
                  "completed_at": _iso(run.data["completed_at"]),
                  "output": {"title": out.get("title"), "summary": out.get("summary"), "text": out.get("text"),
                             "annotations_count": len(run.annotations), "annotations_url": f"{url}/annotations"},
                  "name": run.data["name"], "check_suite": {"id": 5_000_000_001}, "app": APP,
                  "pull_requests": minimal}
        type_validate_python(m.CheckRun, answer)  # what GitHub answers must parse as GitHub's schema says
        return answer

    # --- pull request reviews ---

    async def _reviews(self, request: Request) -> JSONResponse:
        return await self._handle(request, self._do_reviews)

    async def _update_review(self, request: Request) -> JSONResponse:
        return await self._handle(request, self._do_update_review)

    def _pull(self, request: Request) -> tuple[str, Pull]:
        repo = self._repo(request)
        with self.lock:
            pull = self.pulls.get((repo, request.path_params["pr"]))
        if pull is None:
            raise Refused(404, "Not Found")
        return repo, pull

    def _do_reviews(self, request: Request, body: Any) -> tuple[int, Any]:
        repo, pull = self._pull(request)
        if request.method == "GET":
            with self.lock:
                return 200, [r.data for r in self.reviews.values() if r.repo == repo and r.pr == pull.number]
        strict(m.ReposOwnerRepoPullsPullNumberReviewsPostBody, body)
        event = body.get("event")
        if event in ("COMMENT", "REQUEST_CHANGES") and not body.get("body"):
            raise Refused(422, f"Unprocessable Entity: body is required for {event}")
        commit = body.get("commit_id") or pull.head_sha
        if commit not in pull.heads:
            raise Refused(422, f"Unprocessable Entity: commit {commit} is not part of the pull request")
        for comment in body.get("comments") or []:
            if comment.get("line") is None or comment.get("side", "RIGHT") != "RIGHT":
                raise Refused(422, "Unprocessable Entity: give each comment a line on the RIGHT side")
            if (comment["path"], comment["line"]) not in pull.lines:
                raise Refused(422, "Unprocessable Entity: Pull request review thread line must be part of the diff "
                                   f"({comment['path']}:{comment['line']})")
        with self.lock:
            rid = next(self._ids)
            html = f"{WEB}/{repo}/pull/{pull.number}#pullrequestreview-{rid}"
            data = {"id": rid, "node_id": f"PRR_{rid}", "user": BOT, "body": body.get("body") or "",
                    "state": REVIEW_STATES.get(event or "", "PENDING"), "html_url": html,
                    "pull_request_url": f"{API}/repos/{repo}/pulls/{pull.number}",
                    "_links": {"html": {"href": html}, "pull_request": {"href": f"{API}/repos/{repo}/pulls/"
                                                                                f"{pull.number}"}},
                    "submitted_at": _now() if event else None, "commit_id": commit, "author_association": "NONE"}
            type_validate_python(m.PullRequestReview, data)
            self.reviews[rid] = Review(rid, repo, pull.number, data, list(body.get("comments") or []), [body])
            return 200, data

    def _do_update_review(self, request: Request, body: Any) -> tuple[int, Any]:
        repo, pull = self._pull(request)
        strict(m.ReposOwnerRepoPullsPullNumberReviewsReviewIdPutBody, body)
        with self.lock:
            review = self.reviews.get(request.path_params["id"])
            if review is None or review.repo != repo or review.pr != pull.number:
                raise Refused(404, "Not Found")
            review.data["body"] = body["body"]
            review.history.append(body)
            type_validate_python(m.PullRequestReview, review.data)
            return 200, review.data
