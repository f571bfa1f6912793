"""The ``build`` skill: build a wheel the way the project's authors do, install it in a fresh virtualenv, import it.

The wheel is built with PEP 517 build isolation (``uv build``): the backend and plugins the project declares
(``flit_core``, ``hatchling`` with ``hatch-vcs``, ``setuptools`` with ``setuptools-scm`` and C extensions,
``pdm-backend``, ``poetry-core``, ...) come from the package index into a throwaway build environment, so two
projects pinning different backends both build. The wheel is then installed with its dependencies into a fresh
virtualenv and its top-level modules imported from there, and handed on to the run's later stages (the test
stage installs it rather than testing the raw checkout).

Inputs: ``path`` (optional), the project directory inside the repository; ``timeout`` (seconds per step);
``exclude_newer`` (a date: resolve as the index was then).
"""

from __future__ import annotations

import json
import re

from devart.core.contracts import StageResult
from devart.core.errors import SkillError
from devart.sandboxes import artifacts
from devart.workers.skills.base import SkillContext
from devart.workers.skills.common import Commands, input_float, input_subdir
from devart.workers.skills.environments import base_python, create_venv, failure, install, uv_binary, uv_env

#: The throwaway virtualenv the wheel is installed into, at the workspace root.
VENV = ".devart-venv"
#: Where the wheel is written: devart's own folder, not the project's ``dist/`` (which may hold stale files).
DIST = ".devart/dist"
#: Default limit for each step, in seconds.
STEP_TIMEOUT = 600.0

#: Prints {"wheel", "size", "top_level"} for the wheel just built (argv: dist dir, wheel name or "").
_INSPECT_WHEEL = r"""
import json, os, sys, zipfile
dist, name = sys.argv[1], sys.argv[2]
if not name:
    wheels = [f for f in os.listdir(dist) if f.endswith(".whl")]
    name = max(wheels, key=lambda f: os.path.getmtime(os.path.join(dist, f))) if wheels else ""
if not name:
    print(json.dumps(None)); sys.exit(0)
path = os.path.join(dist, name)
with zipfile.ZipFile(path) as wheel:
    files = wheel.namelist()
    declared = [f for f in files if f.endswith(".dist-info/top_level.txt")]
    if declared:
        top = wheel.read(declared[0]).decode().split()
    else:
        top = set()
        for f in files:
            first = f.split("/", 1)[0]
            if first.endswith((".dist-info", ".data")) or first == "__pycache__" or first.endswith(".pth"):
                continue
            if "/" in f:
                top.add(first)
            elif f.endswith(".py"):
                top.add(first[:-3])
            elif f.endswith((".so", ".pyd")):
                top.add(first.split(".", 1)[0])
print(json.dumps({"wheel": name, "size": os.path.getsize(path), "top_level": sorted(top)}))
"""

#: Imports each module given in argv and prints the interpreter version and where each module came from.
_VERIFY = r"""
import importlib, json, sys
print(json.dumps({"python": sys.version.split()[0],
                  "modules": {n: getattr(importlib.import_module(n), "__file__", None) for n in sys.argv[1:]}}))
"""


async def run(ctx: SkillContext) -> StageResult:
    project = input_subdir(ctx)
    timeout = input_float(ctx, "timeout", STEP_TIMEOUT)
    cmd = Commands(ctx)

    built = await cmd.run("build", [uv_binary(), "build", "--wheel", "--python", base_python(), "--out-dir", DIST,
                                    project], env=uv_env(ctx), timeout=timeout)
    if built.exit_code != 0 or built.timed_out:
        raise failure("build", built, ctx, cmd, error_type="BuildFailed", output={"step_seconds": cmd.steps})
    match = re.search(r"Successfully built \S*?([^/\s]+\.whl)", built.output)
    wheel = await cmd.python_json("inspect wheel", _INSPECT_WHEEL, DIST, match.group(1) if match else "")
    if not wheel:
        raise SkillError(f"build failed: no wheel in {DIST} after a successful build", error_type="BuildFailed",
                         non_retryable=True, output={"failed_step": "build"}, log_tail=cmd.log_tail)
    ctx.progress(f"built {wheel['wheel']}")

    venv_python = await create_venv(ctx, cmd, VENV, timeout=timeout, error_type="BuildFailed")
    await install(ctx, cmd, venv_python, [f"{DIST}/{wheel['wheel']}"], timeout=timeout, error_type="InstallFailed")
    # -I keeps the workspace off sys.path: the import must come from the installed wheel, not the checkout.
    verified = await cmd.run("verify", [venv_python, "-I", "-c", _VERIFY, *wheel["top_level"]], timeout=timeout)
    if verified.exit_code != 0 or verified.timed_out:
        why = explain_import(verified.output) or f"exited with code {verified.exit_code}"
        raise SkillError(f"build failed: the installed wheel does not import: {why}", error_type="BuildFailed",
                         non_retryable=True, output={"failed_step": "verify", "step_seconds": cmd.steps},
                         log_tail=cmd.log_tail)
    imported = _last_json_line(verified.output)
    python = imported.get("python", "")
    handed_on = await _hand_on(ctx, cmd, f"{DIST}/{wheel['wheel']}", wheel["wheel"], wheel["size"])

    return StageResult(
        status="succeeded",
        summary=f"built {wheel['wheel']} ({_size(wheel['size'])}); installed and imported "
                f"{', '.join(wheel['top_level']) or 'nothing'} on Python {python}",
        output={
            "wheel": wheel["wheel"],
            "wheel_path": f"{DIST}/{wheel['wheel']}",
            "size_bytes": wheel["size"],
            "top_level": wheel["top_level"],
            "modules": imported.get("modules", {}),
            "venv": VENV,
            "venv_python": python,
            "artifacts": [wheel["wheel"]] if handed_on else [],
            "step_seconds": cmd.steps.copy(),
        },
        log_tail=cmd.log_tail,
        usage=cmd.usage(),
    )


async def _hand_on(ctx: SkillContext, cmd: Commands, path: str, name: str, size: int) -> bool:
    """Store the wheel for the run's later stages; False (noted in the log) when it cannot be passed on."""
    if size > artifacts.MAX_BYTES:
        cmd.note(f"[the wheel is {_size(size)}, over {_size(artifacts.MAX_BYTES)}: not handed on; later stages "
                 "install the project from source]")
        return False
    data = await cmd.read_bytes(path)
    if data is None or not await ctx.sandbox.store_artifact(ctx.task.sandbox, name, data):
        cmd.note("[the wheel could not be handed on: later stages install the project from source]")
        return False
    return True


def explain_import(output: str) -> str:
    """The exception line of a failed import (``ModuleNotFoundError: No module named 'x'``)."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^\w+(Error|Exception)\b", line)]
    return (errors or lines or [""])[-1][:400]


def _last_json_line(output: str) -> dict:
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def _size(size: int) -> str:
    return f"{size / 1024:.1f} KiB" if size >= 1024 else f"{size} B"
