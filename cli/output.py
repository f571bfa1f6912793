"""Shared CLI output: errors on stderr with a non-zero exit, and an HTTP client for the API.

Every CLI module imports this one, so it imports nothing but typer and rich at the top: the HTTP client and the
settings load when a command first calls the API.
"""

from __future__ import annotations

from typing import Any, NoReturn

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def admin_token() -> str:
    """DEVART_ADMIN_TOKEN, or the token ``devart up`` generated in the state folder."""
    from devart.core import settings

    token = settings.admin().admin_token
    stored = settings.state().root / "admin-token"
    if not token and stored.exists():
        token = stored.read_text().strip()
    if not token:
        fail("no administrator token: set DEVART_ADMIN_TOKEN (devart up writes one to <DEVART_HOME>/admin-token)")
    return token


def api_call(method: str, path: str, *, admin: bool = False, **kwargs: Any) -> Any:
    """Call the API; any refusal becomes a CLI error line naming the problem, and exit code 1 (2 if unreachable)."""
    import httpx

    from devart.core import settings

    url = settings.api().url.rstrip("/")
    if admin:
        kwargs["headers"] = {**kwargs.get("headers", {}), "Authorization": f"Bearer {admin_token()}"}
    try:
        response = httpx.request(method, url + path, timeout=30.0, **kwargs)
    except httpx.TransportError:
        fail(f"the devart API is not reachable at {url}: start the stack with `devart up` (or set DEVART_API_URL)", 2)
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text}
        detail = body.get("detail", body)
        problems = body.get("problems")
        if isinstance(detail, list):  # FastAPI's validation errors
            detail = "; ".join(f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg')}" for e in detail)
        fail(str(detail) if not problems else "\n  - ".join([str(detail).split(":")[0] + ":", *problems]))
    return response.json() if response.content else None
