"""What every settings class shares: an environment prefix, the ``.env`` file, and unknown variables ignored.

A module of its own so that ``core/settings.py`` and the settings split from it (``core/settings_sandbox.py``) read
the environment the same way without importing each other.
"""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict


def env_config(prefix: str) -> SettingsConfigDict:
    """The ``model_config`` of a settings class whose variables start with ``prefix``."""
    return SettingsConfigDict(env_prefix=prefix, env_file=".env", extra="ignore")
