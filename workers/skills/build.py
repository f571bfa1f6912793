"""The ``build`` skill: build a wheel offline, install it into a fresh virtualenv and import it.

Inputs: ``path`` (optional), the project directory inside the repository.
"""

from __future__ import annotations

import json
import re

from core.contracts import StageResult
from core.errors import SkillError
from sandboxes.base import ExecResult
from workers.skills.base import SkillContext
from workers.skills.common import Commands, input_float, input_subdir

#: The throwaway virtualenv the wheel is installed into, at the workspace root.
VENV = ".devart-venv"
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
    dist = f"{project}/dist" if project != "." else "dist"
    venv_python = f"{VENV}/bin/python"
    cmd = Commands(ctx)

    def check(step: str, result: ExecResult) -> None:
        if result.exit_code != 0 or result.timed_out:
            why = f"timed out after {timeout:g}s" if result.timed_out else f"exited with code {result.exit_code}"
            raise SkillError(f"build failed: {step} {why}", error_type="BuildFailed", non_retryable=True,
                             output={"failed_step": step, "step_seconds": cmd.steps}, log_tail=cmd.log_tail)

    built = await cmd.run("build", [ctx.python, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist,
                                    project], timeout=timeout)
    check("build", built)
    match = re.search(r"Successfully built (\S+\.whl)", built.output)
    wheel = await cmd.python_json("inspect wheel", _INSPECT_WHEEL, dist, match.group(1) if match else "")
    if not wheel:
        raise SkillError(f"build failed: no wheel in {dist} after a successful build", error_type="BuildFailed",
                         non_retryable=True, output={"failed_step": "build"}, log_tail=cmd.log_tail)
    ctx.progress(f"built {wheel['wheel']}")

    # The venv comes second so that a broken project fails before the slowest step (ensurepip).
    check("venv", await cmd.run("venv", [ctx.python, "-m", "venv", "--clear", VENV], timeout=timeout))
    check("install", await cmd.run("install", [venv_python, "-m", "pip", "install", "--no-index", "--no-deps",
                                               "--disable-pip-version-check", f"{dist}/{wheel['wheel']}"],
                                   timeout=timeout))
    # -I keeps the workspace off sys.path: the import must come from the installed wheel, not the checkout.
    verified = await cmd.run("verify", [venv_python, "-I", "-c", _VERIFY, *wheel["top_level"]], timeout=timeout)
    check("verify", verified)
    imported = _last_json_line(verified.output)
    python = imported.get("python", "")

    return StageResult(
        status="succeeded",
        summary=f"built {wheel['wheel']} ({_size(wheel['size'])}); installed and imported "
                f"{', '.join(wheel['top_level']) or 'nothing'} on Python {python}",
        output={
            "wheel": wheel["wheel"],
            "wheel_path": f"{dist}/{wheel['wheel']}",
            "size_bytes": wheel["size"],
            "top_level": wheel["top_level"],
            "modules": imported.get("modules", {}),
            "venv": VENV,
            "venv_python": python,
            "step_seconds": cmd.steps.copy(),
        },
        log_tail=cmd.log_tail,
        usage=cmd.usage(),
    )


def _last_json_line(output: str) -> dict:
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def _size(size: int) -> str:
    return f"{size / 1024:.1f} KiB" if size >= 1024 else f"{size} B"
