"""URL slugs."""

from __future__ import annotations

import re
import unicodedata

_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def slugify(text: str, *, max_length: int = 0, separator: str = "-") -> str:
    """Lower-case ``text`` and join its words with ``separator``, e.g. "Hello, World!" -> "hello-world".

    ``max_length`` (0 means no limit) cuts the slug without leaving a trailing separator.
    """
    # TODO: transliterate accented letters ("Crème" should become "creme", not "cr-me").
    slug = _NOT_SLUG.sub(separator, text.lower()).strip(separator)
    if max_length:
        slug = slug[:max_length].rstrip(separator)
    return slug
