"""The organisation's secret store: values kept encrypted at rest, named by stages as ``secret:NAME``.

A value is encrypted with Fernet (AES-128-CBC and HMAC-SHA256) under a key that lives outside the database
(``DEVART_SECRETS_KEY``), so the database, its backups and its logs hold ciphertext only. The API writes and lists
names; no route returns a value to a person. The only reader is the agent holding the claim on a task whose stage
names the secret (``api.routes.secrets``): values never travel through Temporal's history or the task messages,
which carry the references only. Nothing here logs a value.

The local stack (``devart up``, which keeps the database password in the state folder) needs no configuration: a
key is generated once into the state folder (``secrets-key``, 0600). A deployment configured through the
environment must set ``DEVART_SECRETS_KEY``, or every process would make its own key and read nothing the others
wrote.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from devart.core import settings
from devart.core.database import db
from devart.core.database.models import utcnow
from devart.core.database.models_secrets import StoredSecret
from devart.core.errors import NotFound, Unavailable

#: The file of the state folder holding the local stack's generated key.
KEY_FILE = "secrets-key"
#: The largest value a secret may hold (a certificate chain or a service account's JSON fits).
MAX_VALUE_BYTES = 64 * 1024
#: A secret's name: a variable name, as the stages' ``secret:NAME`` references spell it.
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
KEYGEN = "set DEVART_SECRETS_KEY (generate one with `devart secrets keygen`)"


class SecretsKeyMissing(Unavailable):
    """No key to encrypt or decrypt the store with; the message says how to set one."""


class SecretNotFound(NotFound):
    """The organisation has no secret of that name."""


@dataclass(frozen=True)
class SecretInfo:
    """What may be shown of a secret: never its value."""

    name: str
    created_at: datetime
    updated_at: datetime
    updated_by: str


def keygen() -> str:
    """A new random Fernet key (32 bytes, URL-safe base64)."""
    return Fernet.generate_key().decode()


def _local_stack(root: Path) -> bool:
    """Whether the state folder is a local stack's: one whose database password it keeps (``devart up``, the test
    stack). A deployment passes its password (and so must pass the key) through the environment."""
    return (root / db.APP_PASSWORD_FILE).exists()


def _stored_key(root: Path, *, create: bool) -> str | None:
    stored = root / KEY_FILE
    if not stored.exists() and create and _local_stack(root):
        from devart.core.devstack.statedir import write_private

        # Written under a name of its own, then linked into place only if no other process got there first: two
        # processes writing at once keep one key between them, never a key a secret was encrypted with replaced.
        candidate = root / f".{KEY_FILE}.{os.getpid()}.new"
        write_private(candidate, keygen())
        try:
            os.link(candidate, stored)
        except FileExistsError:
            pass
        finally:
            candidate.unlink(missing_ok=True)
    try:
        return stored.read_text().strip() or None
    except FileNotFoundError:
        return None


def cipher(*, create: bool = False) -> Fernet:
    """The store's cipher: ``DEVART_SECRETS_KEY``, else the local stack's key (made when ``create``)."""
    key = settings.SecretSettings().key or _stored_key(settings.state().root, create=create)
    if not key:
        raise SecretsKeyMissing(f"the secret store has no key: {KEYGEN}")
    try:
        return Fernet(key.encode())
    except ValueError:
        raise SecretsKeyMissing(f"DEVART_SECRETS_KEY is not a Fernet key (32 url-safe base64-encoded bytes): "
                                f"{KEYGEN}") from None


async def put(session: AsyncSession, name: str, value: str, *, by: str) -> SecretInfo:
    """Create or replace the secret ``name`` of the session's organisation."""
    ciphertext = cipher(create=True).encrypt(value.encode())
    now = utcnow()
    table = StoredSecret.__table__  # type: ignore[attr-defined]
    upsert = insert(table).values(name=name, ciphertext=ciphertext, created_at=now, updated_at=now,
                                  updated_by=by).on_conflict_do_update(
        index_elements=[table.c.org_id, table.c.name],
        set_={"ciphertext": ciphertext, "updated_at": now, "updated_by": by},
    ).returning(table.c.name, table.c.created_at, table.c.updated_at, table.c.updated_by)
    row = (await session.execute(upsert)).one()
    return SecretInfo(name=row.name, created_at=row.created_at, updated_at=row.updated_at, updated_by=row.updated_by)


async def remove(session: AsyncSession, name: str) -> None:
    """Delete the secret ``name``; a stage naming it fails from then on (``SecretMissing``)."""
    table = StoredSecret.__table__  # type: ignore[attr-defined]
    result = await session.execute(delete(table).where(table.c.name == name).returning(table.c.name))
    if result.first() is None:
        raise SecretNotFound(f"no secret named {name!r} in this organisation")


async def names(session: AsyncSession) -> list[SecretInfo]:
    """The organisation's secrets, by name: names and times only."""
    rows = await session.exec(
        select(StoredSecret.name, StoredSecret.created_at, StoredSecret.updated_at, StoredSecret.updated_by)
        .order_by(col(StoredSecret.name)))
    return [SecretInfo(name=n, created_at=c, updated_at=u, updated_by=b) for n, c, u, b in rows.all()]


async def resolve(session: AsyncSession, wanted: set[str]) -> tuple[dict[str, str], list[str]]:
    """The decrypted values of the ``wanted`` secrets the session's organisation has, and the names it lacks."""
    if not wanted:
        return {}, []
    rows = (await session.exec(select(StoredSecret.name, StoredSecret.ciphertext)
                               .where(col(StoredSecret.name).in_(sorted(wanted))))).all()
    values: dict[str, str] = {}
    if rows:
        fernet = cipher()
        for name, ciphertext in rows:
            try:
                values[name] = fernet.decrypt(bytes(ciphertext)).decode()
            except InvalidToken:
                raise SecretsKeyMissing(f"secret {name!r} was encrypted with another key: set DEVART_SECRETS_KEY to "
                                        "the key it was written with, or set the secret again") from None
    return values, sorted(wanted - set(values))

