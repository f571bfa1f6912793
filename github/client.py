"""GitHub: settings, the githubkit client (App installation or token auth), webhook signatures, and errors.

Shared by the API (webhooks) and the pipeline worker, whose workflow sends every report to GitHub as an activity.
``DEVART_GITHUB_API_URL`` points at GitHub Enterprise (``https://ghe.example.com/api/v3``) or, in the tests, at a
local double of GitHub's REST API.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from githubkit import AppAuthStrategy, GitHub, TokenAuthStrategy, webhooks
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from devart.core.contracts import GITHUB_TRIGGER
from devart.core.errors import DevartError, Malformed, NotFound, Unauthenticated, Unavailable

#: The ``trigger`` of runs started by a webhook; only those are reported back to GitHub.
TRIGGER = GITHUB_TRIGGER
#: Who may ask for a re-run with a ``/devart rerun`` comment (GitHub's ``author_association``).
PERMITTED_ASSOCIATIONS = frozenset({"OWNER", "MEMBER", "COLLABORATOR"})
#: What the GitHub App needs, for ``devart github setup``'s manifest.
APP_PERMISSIONS = {"checks": "write", "pull_requests": "write", "contents": "read"}
APP_EVENTS = ["pull_request", "check_run", "issue_comment"]


class GitHubError(DevartError):
    """Base of the GitHub integration's errors."""


class GitHubNotConfigured(GitHubError):
    """No credentials to call GitHub with (or none that fit this call)."""


class WebhookDisabled(GitHubError, Unavailable):
    """The webhook secret is not set, so no delivery can be trusted."""


class WebhookSignatureInvalid(GitHubError, Unauthenticated):
    """``X-Hub-Signature-256`` is missing or does not match the body."""


class WebhookInvalid(GitHubError, Malformed):
    """A signed delivery that is not a well-formed GitHub event (missing headers, unparseable payload)."""


class MappingNotFound(GitHubError, NotFound):
    """No pipeline is mapped to that repository."""


class GitHubSettings(BaseSettings):
    """How devart talks to GitHub (or GitHub Enterprise) and how GitHub reaches devart."""

    model_config = SettingsConfigDict(env_prefix="DEVART_GITHUB_", env_file=".env", extra="ignore")
    webhook_secret: str | None = Field(
        default=None, description="The App's webhook secret; unset, the webhook refuses every delivery."
    )
    app_id: int | None = Field(default=None, description="GitHub App id (App auth; needs a private key).")
    private_key: str | None = Field(default=None, description="The App's private key, PEM text.")
    private_key_path: Path | None = Field(default=None, description="The App's private key, as a PEM file.")
    token: str | None = Field(default=None, description="A token instead of an App (must be allowed to write checks).")
    api_url: str = Field(default="https://api.github.com", description="REST API base URL (GitHub Enterprise).")
    public_url: str | None = Field(
        default=None, description="devart's URL as GitHub users reach it, for links (default: DEVART_API_URL)."
    )
    trace_url: str | None = Field(
        default=None, description="Link to a run's trace, with {trace_id} and {run_id}, e.g. a Jaeger trace page."
    )
    check_prefix: str = Field(default="devart", description="Check runs are named '<prefix> / <stage>'.")
    timeout: float = Field(default=10.0, gt=0, description="Seconds one GitHub request may take.")

    @field_validator("webhook_secret")
    @classmethod
    def _strong_secret(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 16:
            raise ValueError("the webhook secret must be at least 16 characters: generate one with "
                             "`openssl rand -hex 32` and set it on the GitHub App too")
        return value

    def app_key(self) -> str | None:
        """The App's private key, from the variable or the file."""
        if self.private_key:
            return self.private_key.replace("\\n", "\n")  # one-line env values carry escaped newlines
        if self.private_key_path:
            return self.private_key_path.expanduser().read_text()
        return None

    @property
    def auth_mode(self) -> str | None:
        """``app``, ``token`` or None (reporting disabled)."""
        if self.app_id and (self.private_key or self.private_key_path):
            return "app"
        return "token" if self.token else None


@lru_cache
def settings() -> GitHubSettings:
    return GitHubSettings()


def client(installation_id: int | None = None, cfg: GitHubSettings | None = None) -> GitHub[Any]:
    """A githubkit client: as the App's installation when App auth is configured, else with the token.

    Raises:
        GitHubNotConfigured: neither is configured, or App auth has no installation to act as.
    """
    cfg = cfg or settings()
    options: dict[str, Any] = {"base_url": cfg.api_url, "timeout": cfg.timeout, "http_cache": False,
                               "user_agent": "devart"}
    if cfg.auth_mode == "app":
        if installation_id is None:
            raise GitHubNotConfigured("GitHub App auth needs the installation id, which the webhook delivery "
                                      "did not carry: was the delivery sent by the App's own webhook?")
        key = cfg.app_key() or ""
        return GitHub(AppAuthStrategy(cfg.app_id, key).as_installation(installation_id), **options)
    if cfg.auth_mode == "token":
        return GitHub(TokenAuthStrategy(cfg.token or ""), **options)
    raise GitHubNotConfigured("no GitHub credentials: set DEVART_GITHUB_APP_ID and DEVART_GITHUB_PRIVATE_KEY(_PATH), "
                              "or DEVART_GITHUB_TOKEN")


def signature(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body`` (githubkit's signing)."""
    return webhooks.sign(secret, body, "sha256")


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """githubkit's constant-time check of ``X-Hub-Signature-256``; only SHA-256 signatures are accepted (githubkit
    would also take the legacy SHA-1 ``X-Hub-Signature``)."""
    if not header or not header.startswith("sha256="):
        return False
    return webhooks.verify(secret, body, header)


def split_repo(full_name: str) -> tuple[str, str]:
    owner, _, repo = full_name.partition("/")
    return owner, repo


def external_id(run_id: str, stage: str) -> str:
    """What a check run's ``external_id`` says: the run and stage it reports (re-runs take it over)."""
    return f"{run_id}:{stage}"


def check_name(stage: str, cfg: GitHubSettings | None = None) -> str:
    return f"{(cfg or settings()).check_prefix} / {stage}"
