"""The first administrator: made when the schema is prepared, so a fresh install can be used at once.

``devart up`` generates a token once and keeps it in the state folder (mode 0600) for the CLI; a deployment sets
``DEVART_ADMIN_TOKEN`` for its migration job (``devart db upgrade``). Either way the token becomes the personal
token of user ``admin``, admin of the default organisation. Running it again changes nothing: a token already
known is left as it is, revoked or not, and a demoted first admin stays demoted.
"""

from __future__ import annotations

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from devart.core.errors import Invalid
from devart.core.security import MIN_TOKEN_LENGTH, TOKEN_DISPLAY, hash_key
from devart.domain.identity import DEFAULT_ORG, FIRST_ADMIN


def bootstrap_admin(token: str, url: str) -> None:
    """Make user ``admin`` an admin of the default organisation holding ``token`` (idempotent)."""
    if len(token) < MIN_TOKEN_LENGTH:
        raise Invalid(f"DEVART_ADMIN_TOKEN is too short to be safe: use at least {MIN_TOKEN_LENGTH} random characters")
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            # Row-level security applies to the tables' owner too (it is forced): act as devart's own services.
            conn.execute(text("SELECT set_config('devart.role', 'system', true)"))
            user_id = conn.execute(text(
                "INSERT INTO users (name) VALUES (:name) ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name "
                "RETURNING id"), {"name": FIRST_ADMIN}).scalar_one()
            conn.execute(text(
                "INSERT INTO memberships (user_id, org_id, role) VALUES (:user, :org, 'admin') "
                "ON CONFLICT (user_id, org_id) DO NOTHING"), {"user": user_id, "org": DEFAULT_ORG})
            conn.execute(text(
                "INSERT INTO api_tokens (user_id, org_id, name, prefix, token_hash) "
                "VALUES (:user, :org, 'first administrator', :prefix, :hash) ON CONFLICT (token_hash) DO NOTHING"),
                {"user": user_id, "org": DEFAULT_ORG, "prefix": token[:TOKEN_DISPLAY], "hash": hash_key(token)})
    finally:
        engine.dispose()


def grant_login(url: str, role: str, password: str) -> None:
    """Let the application role (made NOLOGIN by migration 0009) log in with ``password``. The password travels as
    a bound parameter and is quoted by PostgreSQL (``format('%L')``), never pasted into the statement."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT set_config('devart.app_password', :pw, true)"), {"pw": password})
            conn.execute(text("SELECT set_config('devart.app_role', :role, true)"), {"role": role})
            conn.execute(text(
                "DO $$ BEGIN EXECUTE format('ALTER ROLE %I LOGIN PASSWORD %L', current_setting('devart.app_role'), "
                "current_setting('devart.app_password')); END $$"))
    finally:
        engine.dispose()


def prepare_schema() -> list[str]:
    """Migrate the schema, then make the first administrator if ``DEVART_ADMIN_TOKEN`` names one; returns the
    revisions applied. What ``devart db upgrade``, ``devart up`` and the tests' stack run before any service."""
    from devart.core import settings
    from devart.core.database import db

    applied = db.upgrade()
    role = settings.DatabaseSettings().app_role
    if role and not settings.DatabaseSettings().app_database_url:
        grant_login(db.database_url(), role, db.app_password(create=True))
    # Read afresh, not through the cached settings: `devart up` sets the variable after it first read them.
    token = settings.AdminSettings().admin_token
    if token:
        bootstrap_admin(token, db.database_url())
    return applied
