"""``ruff check --fix`` as a proposal: fixes made on a copy of the workspace, handed back as a unified diff.

The ``ruff_fix`` remedy's retry, or any lint task with ``propose_fix: true``, gets the patch in its output; the
repository itself is never changed (the copy lives in the sandbox's private ``/tmp``), nothing is committed or
pushed, and a person or a later stage decides whether to apply it. The lint verdict is unaffected: it judges the
repository as given.
"""

from __future__ import annotations

from typing import Any

from devart.workers.skills.base import SkillContext
from devart.workers.skills.common import Commands

#: Characters of diff kept in the output; a longer one is cut and marked so.
MAX_PATCH_CHARS = 200_000

#: Copies the workspace (without devart's folders and .git) to a temporary folder, runs ruff --fix there and prints
#: {"diff", "files", "remaining"} (argv: the interpreter with ruff, devart's folders to leave out).
_PROPOSE = r"""
import difflib, json, os, shutil, subprocess, sys, tempfile
python, exclude = sys.argv[1], sys.argv[2]
top_level = set(exclude.split(",")) | {".git"}

def ignore(folder, names):
    return [n for n in names if n in top_level or n == ".git"] if os.path.samefile(folder, ".") else \
        [n for n in names if n == ".git"]

ruff = [python, "-m", "ruff", "check", "--exit-zero", "--quiet", "--no-cache", "--extend-exclude", exclude]
with tempfile.TemporaryDirectory() as tmp:
    copy = os.path.join(tmp, "copy")
    shutil.copytree(".", copy, symlinks=True, ignore=ignore)
    subprocess.run([*ruff, "--fix", "."], cwd=copy, capture_output=True, check=True)
    left = subprocess.run([*ruff, "--output-format", "json", "."], cwd=copy, capture_output=True, text=True,
                          check=True).stdout
    diff, files = [], []
    for top, dirs, names in os.walk(copy):
        dirs.sort()
        for name in sorted(names):
            fixed = os.path.join(top, name)
            rel = os.path.relpath(fixed, copy)
            if not name.endswith((".py", ".pyi")) or os.path.islink(fixed):
                continue
            try:
                with open(rel, encoding="utf-8") as f:
                    old = f.read()
                with open(fixed, encoding="utf-8") as f:
                    new = f.read()
            except (OSError, UnicodeDecodeError):
                continue
            if old != new:
                files.append(rel)
                diff += difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"a/{rel}", f"b/{rel}")
print(json.dumps({"diff": "".join(diff), "files": files, "remaining": len(json.loads(left[left.index("["):]))}))
"""


async def propose_fix(ctx: SkillContext, cmd: Commands, exclude: str) -> dict[str, Any]:
    """ruff's safe fixes as a patch against the workspace: ``{diff, files, remaining, truncated, applied}``, where
    ``remaining`` counts the findings the patched copy still has and ``applied`` is always False."""
    ctx.progress("ruff --fix on a copy of the workspace")
    found: dict[str, Any] = await cmd.python_json("propose ruff --fix", _PROPOSE, ctx.python, exclude)
    diff = str(found["diff"])
    cmd.note(f"ruff --fix on a copy proposes changes to {len(found['files'])} files (not applied); "
             f"{found['remaining']} findings would remain")
    return {"diff": diff[:MAX_PATCH_CHARS], "truncated": len(diff) > MAX_PATCH_CHARS, "files": found["files"],
            "remaining": found["remaining"], "applied": False}
