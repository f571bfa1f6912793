"""The organisation's secret store (migration 0010): names and Fernet ciphertext, never a value in clear.

Encryption, decryption and who may read what are ``domain.secrets``'s; this class is the typed view of the table.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, FetchedValue, ForeignKey, LargeBinary, String
from sqlmodel import Field, SQLModel

from devart.core.database.models import _created


def _org_key() -> Any:
    """The row's organisation, part of the key: left unset, PostgreSQL fills in the transaction's."""
    return Field(default=None, sa_column=Column(String, ForeignKey("organisations.id"), FetchedValue(),
                                                primary_key=True, nullable=False))


class StoredSecret(SQLModel, table=True):
    """One secret of one organisation: its name, its encrypted value, and who wrote it last, when."""

    __tablename__ = "secrets"
    org_id: str | None = _org_key()
    name: str = Field(primary_key=True)
    ciphertext: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = _created()
    updated_at: datetime = _created()
    updated_by: str
