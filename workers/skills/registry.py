"""The built-in skills by name."""

from __future__ import annotations

from devart.core.contracts import BUILTIN_SKILLS
from devart.core.errors import SkillError
from devart.workers.skills import build, lint, review, shell, test
from devart.workers.skills.base import Skill

SKILLS: dict[str, Skill] = {
    "build": build.run,
    "test": test.run,
    "lint": lint.run,
    "review": review.run,
    "shell": shell.run,
}
assert set(SKILLS) == BUILTIN_SKILLS, "core.contracts.BUILTIN_SKILLS and the registry disagree"


def get_skill(name: str) -> Skill:
    """The skill called ``name``.

    Raises:
        SkillError: ``SkillNotFound`` (not retryable) when no such skill exists.
    """
    try:
        return SKILLS[name]
    except KeyError:
        known = ", ".join(sorted(SKILLS))
        raise SkillError(f"unknown skill {name!r} (known skills: {known})", error_type="SkillNotFound",
                         non_retryable=True) from None
