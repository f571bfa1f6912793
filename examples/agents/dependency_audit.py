"""An example custom agent built with devart's SDK: a dependency audit that works offline.

It reads the repository's declared dependencies (``pyproject.toml`` and ``requirements*.txt``) inside the
sandbox and reports, per dependency: unbounded requirements (nothing pins a version), and versions that a small
advisory list below marks as vulnerable. The advisories are real (taken from the public Python advisory
database); a production agent would load the full database instead.

Run it with::

    devart agent --name auditor --module examples.agents.dependency_audit
"""

from __future__ import annotations

import json
import re

from devart_sdk import AgentApp, SkillContext, SkillError, StageResult

app = AgentApp()

#: (package, first fixed version, advisory) — a sample of the public advisory database.
ADVISORIES = [
    ("requests", (2, 31, 0), "CVE-2023-32681: Proxy-Authorization header leaked on redirects"),
    ("urllib3", (1, 26, 18), "CVE-2023-45803: request body not stripped on 303 redirects"),
    ("jinja2", (3, 1, 3), "CVE-2024-22195: xmlattr filter accepts keys with spaces (XSS)"),
    ("pyyaml", (5, 4, 0), "CVE-2020-14343: arbitrary code execution in full_load"),
    ("cryptography", (42, 0, 4), "CVE-2024-26130: NULL dereference in PKCS12 serialization"),
]

_READ = r"""
import json, pathlib, tomllib
deps = []
p = pathlib.Path("pyproject.toml")
if p.exists():
    data = tomllib.loads(p.read_text())
    deps += [("pyproject.toml", d) for d in data.get("project", {}).get("dependencies", [])]
    for group, items in data.get("project", {}).get("optional-dependencies", {}).items():
        deps += [(f"pyproject.toml[{group}]", d) for d in items]
for req in sorted(pathlib.Path(".").glob("requirements*.txt")):
    for line in req.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            deps.append((req.name, line))
print(json.dumps(deps))
"""

_SPEC = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*(.*)$")
_PIN = re.compile(r"==\s*([0-9][0-9A-Za-z.\-]*)")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def audit_requirement(source: str, requirement: str) -> list[dict[str, str]]:
    """Findings for one requirement line."""
    match = _SPEC.match(requirement.split(";")[0])
    if not match:
        return [{"file": source, "package": requirement, "severity": "warning", "message": "unparseable requirement"}]
    name, spec = match.group(1).lower().replace("_", "-"), match.group(2).strip()
    findings = []
    if not spec:
        findings.append({"file": source, "package": name, "severity": "warning",
                         "message": "no version constraint: any release, including a broken one, is accepted"})
    pinned = _PIN.search(spec)
    for package, fixed, advisory in ADVISORIES:
        if name == package and pinned and _version(pinned.group(1)) < fixed:
            findings.append({"file": source, "package": name, "severity": "error",
                             "message": f"{pinned.group(1)} is vulnerable: {advisory} (fixed in "
                                        f"{'.'.join(map(str, fixed))})"})
    return findings


@app.skill("dependency-audit", capabilities=["python", "audit"])
async def dependency_audit(ctx: SkillContext) -> StageResult:
    """Audit the declared dependencies of the repository in the sandbox."""
    listing = await ctx.run([ctx.python, "-I", "-c", _READ], timeout=60)
    if listing.exit_code != 0:
        raise SkillError(f"could not read the dependency declarations: {listing.output[-500:]}",
                         error_type="AuditFailed", non_retryable=True)
    declared = json.loads(listing.output.strip().splitlines()[-1])
    findings = [f for source, req in declared for f in audit_requirement(source, req)]
    errors = sum(f["severity"] == "error" for f in findings)
    ctx.progress(f"{len(declared)} dependencies, {len(findings)} findings")
    return ctx.result(f"{len(declared)} dependencies audited: {errors} vulnerable, "
                      f"{len(findings) - errors} warnings",
                      output={"dependencies": len(declared), "vulnerable": errors, "findings": findings})
