"""The ``build`` skill: build a wheel the way the project's authors do, install it in a fresh virtualenv, import it.

The wheel is built with PEP 517 build isolation (``uv build``): the backend and plugins the project declares
(``flit_core``, ``hatchling`` with ``hatch-vcs``, ``setuptools`` with ``setuptools-scm`` and C extensions,
``pdm-backend``, ``poetry-core``, ...) come from the package index into a throwaway build environment, so two
projects pinning different backends both build. The wheel is then installed with its dependencies into a fresh
virtualenv and its top-level modules imported from there, and handed on to the run's later stages (the test
stage installs it rather than testing the raw checkout).

With no network (``network: none``) the isolated build cannot fetch its backend. A self-healing stage's retry then
gets the ``build_without_isolation`` remedy: ``build_isolation: false`` builds with ``--no-build-isolation`` in
the agent's own environment, with the backend the project declares if that environment holds it (every
``build-system.requires`` satisfied), and says which it used; if it does not, the build fails for good, naming
what is missing. The stage's network is never widened.

Inputs: ``path`` (optional), the project directory inside the repository; ``timeout`` (seconds per step);
``exclude_newer`` (a date: resolve as the index was then); ``build_isolation`` (default true).
"""

from __future__ import annotations

import json
import re
from typing import Any

from devart.core.contracts import StageResult
from devart.core.errors import SkillError
from devart.domain.remedies import BUILD_BACKEND_OFFLINE
from devart.sandboxes import artifacts
from devart.sandboxes.base import ExecResult
from devart.workers.skills.base import SkillContext
from devart.workers.skills.common import Commands, input_bool, input_float, input_subdir
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

#: Prints the project's declared backend and the requirements of it the running interpreter lacks (argv: project).
_DECLARED_BACKEND = r"""
import importlib.metadata as md, importlib.util, json, os, re, sys, tomllib
path = os.path.join(sys.argv[1], "pyproject.toml")
system = {}
if os.path.exists(path):
    with open(path, "rb") as f:
        system = tomllib.load(f).get("build-system", {})
backend = system.get("build-backend") or "setuptools.build_meta:__legacy__"
requires = system.get("requires", ["setuptools>=40.8.0"])
missing = []
for req in requires:
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    try:
        version = md.version(name.group(1)) if name else None
    except md.PackageNotFoundError:
        version = None
    if version is None:
        missing.append(req)
        continue
    try:
        from packaging.requirements import Requirement
        wanted = Requirement(req)
        if (not wanted.marker or wanted.marker.evaluate()) and not wanted.specifier.contains(version, True):
            missing.append(f"{req} (the agent has {version})")
    except ImportError:
        pass
top = backend.split(":")[0].split(".")[0]
if not missing and "backend-path" not in system and importlib.util.find_spec(top) is None:
    missing.append(backend)
print(json.dumps({"backend": backend, "requires": requires, "missing": sorted(set(missing))}))
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

    isolated = input_bool(ctx, "build_isolation", default=True)
    backend = None if isolated else await _declared_backend(ctx, cmd, project)
    python = base_python() if isolated else ctx.python
    built = await cmd.run("build", [uv_binary(), "build", "--wheel", "--python", python, "--out-dir", DIST,
                                    *([] if isolated else ["--no-build-isolation"]), project],
                          env=uv_env(ctx), timeout=timeout)
    if built.exit_code != 0 or built.timed_out:
        raise _build_failure(ctx, cmd, built, isolated)
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
    how = "" if backend is None else f" without build isolation ({backend['backend']} from the agent's environment)"
    handed_on = await _hand_on(ctx, cmd, f"{DIST}/{wheel['wheel']}", wheel["wheel"], wheel["size"])

    return StageResult(
        status="succeeded",
        summary=f"built {wheel['wheel']} ({_size(wheel['size'])}){how}; installed and imported "
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
            "build_isolation": isolated,
            **({"backend": backend} if backend is not None else {}),
        },
        log_tail=cmd.log_tail,
        usage=cmd.usage(),
    )


def _build_failure(ctx: SkillContext, cmd: Commands, built: ExecResult, isolated: bool) -> SkillError:
    """The build step's error. An isolated build that failed only for want of the network (its backend could not
    be fetched) is diagnosed as such: a self-healing stage's retry may then build without isolation."""
    error = failure("build", built, ctx, cmd, error_type="BuildFailed", output={"step_seconds": cmd.steps})
    if error.error_type != "BuildFailed" or not error.output.get("offline") or not isolated:
        return error
    healing = ctx.task.self_heal == "apply"
    note = " (a retry builds without isolation, with the declared backend if the agent's environment has it)"
    return SkillError(f"{error}{note if healing else ''}", error_type="BuildFailed", non_retryable=not healing,
                      output={**error.output, "cause": BUILD_BACKEND_OFFLINE}, log_tail=error.log_tail)


async def _declared_backend(ctx: SkillContext, cmd: Commands, project: str) -> dict[str, Any]:
    """The backend the project declares, checked in the agent's environment before a build without isolation.

    Raises:
        SkillError: ``BuildFailed`` (final) when that environment lacks a declared build requirement.
    """
    declared: dict[str, Any] = await cmd.python_json("find the build backend", _DECLARED_BACKEND, project)
    if declared["missing"]:
        cmd.note(f"the agent's environment lacks {', '.join(declared['missing'])}")
        raise SkillError(f"build failed: cannot build without isolation either: the agent's environment lacks "
                         f"{', '.join(declared['missing'])} (give the stage `sandbox: {{network: packages}}`, or "
                         "install the backend beside the agent)", error_type="BuildFailed", non_retryable=True,
                         output={"failed_step": "build", "build_isolation": False, "backend": declared},
                         log_tail=cmd.log_tail)
    ctx.progress(f"building without isolation with {declared['backend']}")
    return {"backend": declared["backend"], "requires": declared["requires"]}


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
