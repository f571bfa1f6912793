"""What GitHub refuses, for the double: request bodies checked with githubkit's request models (unknown fields
included), and the lines of a diff a review comment may sit on."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def strict(model: Any, body: Any) -> Any:
    """Validate ``body`` with a githubkit request model, refusing fields the model does not know."""
    adapter: TypeAdapter[Any] = TypeAdapter(model)
    try:
        value = adapter.validate_python(body)
    except ValidationError as exc:
        raise Refused(422, f"Invalid request: {exc.errors(include_url=False)}") from None
    unknown: list[str] = []
    _unknown(body, adapter.dump_python(value, mode="json", by_alias=True, exclude_unset=True), "", unknown)
    _extras(value, "", unknown)
    if unknown:
        raise Refused(422, f"Invalid request: unknown fields {sorted(set(unknown))}")
    return value


def _unknown(given: Any, kept: Any, path: str, out: list[str]) -> None:
    if isinstance(given, dict) and isinstance(kept, dict):
        for key, value in given.items():
            if key not in kept:
                out.append(f"{path}{key}")
            else:
                _unknown(value, kept[key], f"{path}{key}.", out)
    elif isinstance(given, list) and isinstance(kept, list):
        for i, (a, b) in enumerate(zip(given, kept, strict=False)):
            _unknown(a, b, f"{path}{i}.", out)


def _extras(value: Any, path: str, out: list[str]) -> None:
    if isinstance(value, BaseModel):
        out += [f"{path}{k}" for k in (value.model_extra or {})]
        for name in type(value).model_fields:
            _extras(getattr(value, name), f"{path}{name}.", out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _extras(item, f"{path}{i}.", out)


def commentable(diff: str) -> set[tuple[str, int]]:
    """(path, line) pairs on the RIGHT side of a unified diff's hunks: where GitHub accepts a line comment."""
    lines: set[tuple[str, int]] = set()
    path, number = "", 0
    for text in diff.splitlines():
        if text.startswith("+++ "):
            path = text[6:] if text.startswith("+++ b/") else ""
        elif text.startswith("@@"):
            found = re.match(r"@@ -\S+ \+(\d+)", text)
            number = int(found.group(1)) if found else 0
        elif path and number and text[:1] in (" ", "+"):
            lines.add((path, number))
            number += 1
    return lines
