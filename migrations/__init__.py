"""Alembic migrations of devart's schema (``devart db upgrade`` applies them)."""
