"""Shared CLI output: errors on stderr with a non-zero exit, and an HTTP client for the API that sends the caller's
personal token with every call.

Every CLI module imports this one, so it imports nothing but typer and rich at the top: the HTTP client and the
settings load when a command first calls the API.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


#: Where a token came from, for the error line when the API refuses it.
_ENV_TOKEN, _ADMIN_ENV = "DEVART_TOKEN", "DEVART_ADMIN_TOKEN"


def credentials_path() -> Path:
    """The file ``devart login`` keeps tokens in: ``$DEVART_CONFIG``, else ``credentials.json`` in devart's folder of
    the XDG config home, so a shared machine's users each keep their own."""
    if configured := os.environ.get("DEVART_CONFIG"):
        return Path(configured).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home).expanduser() / "devart" / "credentials.json"


def saved_tokens() -> dict[str, str]:
    """The tokens saved by ``devart login``, keyed by API URL; an unreadable file is an error rather than ignored,
    so a broken file is not mistaken for being logged out."""
    path = credentials_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError) as exc:
        fail(f"cannot read the credentials file {path}: {exc} (remove it and run `devart login`)")
    tokens = data.get("tokens", {}) if isinstance(data, dict) else {}
    return {str(k): str(v) for k, v in tokens.items()} if isinstance(tokens, dict) else {}


def api_url() -> str:
    """The API's base URL without a trailing slash: also the key of its saved token."""
    from devart.core import settings

    return settings.api().url.rstrip("/")


def find_token() -> tuple[str, str]:
    """The token to send and where it came from: ``DEVART_TOKEN``, the login saved for this API, then the first
    administrator's (``DEVART_ADMIN_TOKEN`` or the state folder's ``admin-token`` of a local install)."""
    from devart.core import settings

    if token := os.environ.get(_ENV_TOKEN, "").strip():
        return token, _ENV_TOKEN
    if token := saved_tokens().get(api_url(), ""):
        return token, f"the login saved in {credentials_path()}"
    if token := (settings.admin().admin_token or "").strip():
        return token, _ADMIN_ENV
    stored = settings.state().root / "admin-token"
    if stored.exists() and (token := stored.read_text().strip()):
        return token, str(stored)
    fail("no token: run `devart login` or set DEVART_TOKEN")


def _refusal(response: Any, source: str) -> str:
    """The error line of a refused call: the API's detail, or its list of problems, or, for a refused token,
    which token it was and how to get a good one."""
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text}
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if response.status_code == 401:
        return (f"the API refused the token from {source} (missing, unknown, expired or revoked): run `devart login` "
                "with a valid token (an admin gives one with `devart users add` or `devart tokens create`)")
    problems = body.get("problems") if isinstance(body, dict) else None
    if isinstance(detail, list):  # FastAPI's validation errors
        detail = "; ".join(f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg')}" for e in detail)
    return str(detail) if not problems else "\n  - ".join([str(detail).split(":")[0] + ":", *problems])


def auth_headers(token: str | None = None) -> dict[str, str]:
    """The Authorization header every call to the API carries (``token``, else the one ``find_token`` finds)."""
    return {"Authorization": f"Bearer {token or find_token()[0]}"}


def api_call(method: str, path: str, *, token: str | None = None, **kwargs: Any) -> Any:
    """Call the API with a bearer token (``token``, else ``find_token``'s); any refusal becomes a CLI error line
    naming the problem, and exit code 1 (2 if unreachable)."""
    import httpx

    url = api_url()
    sent, source = (token, "--token") if token else find_token()
    kwargs["headers"] = {**kwargs.get("headers", {}), **auth_headers(sent)}
    try:
        response = httpx.request(method, url + path, timeout=30.0, **kwargs)
    except httpx.TransportError:
        fail(f"the devart API is not reachable at {url}: start the stack with `devart up` (or set DEVART_API_URL)", 2)
    if response.status_code >= 400:
        fail(_refusal(response, source))
    return response.json() if response.content else None
