"""``python -m bench.fuzz_api``: Schemathesis against the API, every operation of its OpenAPI document.

Each operation gets generated requests in three passes: valid ones (positive), ones breaking the schema on purpose
(negative), both with the right bearer token (the agent key for ``/v1/agent/…``, the administrator token
elsewhere), and a few valid ones without any token. Every answer must pass ``CHECKS``: no server error, a status,
content type and body the document declares. The suite runs a small seeded campaign on every run
(tests/api/test_schemathesis.py); this module runs a large one against a stack it starts, and prints the counts.

    scripts/fuzz-api                                   # 23,000 cases, 5 to 20 minutes on 2 CPUs
    scripts/fuzz-api --per-operation 100 --seed 7      # a quicker one with other cases
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

#: What every answer must satisfy.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
#: Operations left out, and why.
SKIPPED = {"GET /v1/events/stream": "an endless Server-Sent Events stream: there is no answer to check"}
#: Seconds one request may take before the campaign counts it as a failure.
REQUEST_TIMEOUT = 30.0


@dataclass
class Report:
    """What a campaign sent and what came back."""

    cases: int = 0
    operations: int = 0
    #: Passes with no case to send: no request to an operation without parameters can break its schema.
    empty: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def summary(self) -> str:
        codes = ", ".join(f"{status}: {n}" for status, n in sorted(self.statuses.items()))
        return (f"{self.cases} cases over {self.operations} operations in {self.seconds:.0f} s; statuses {codes}; "
                f"{self.server_errors} server errors; {len(self.failures)} failing passes; "
                f"{len(self.empty)} passes with no case to send")


def campaign(base_url: str, *, admin_token: str, agent_key: str, per_operation: int,
             seed_value: int | None = None, progress: Callable[[str], None] | None = None) -> Report:
    """Run the passes over every operation; ``seed_value`` None is Hypothesis's derandomized mode (as in CI).

    ``progress`` hears a line per operation done (a large campaign takes a quarter of an hour).
    """
    report, started = Report(), time.monotonic()
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    session = requests.Session()  # one keep-alive connection: a refusal must leave it usable for the next case
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # the document itself is wrong about this operation
            report.failures[f"invalid operation {len(report.failures)}"] = str(result.err())
            continue
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        if label in SKIPPED:
            continue
        report.operations += 1
        token = agent_key if operation.path.startswith("/v1/agent/") else admin_token
        auth = {"Authorization": f"Bearer {token}"}
        passes: list[tuple[str, GenerationMode, dict[str, str], int]] = [
            ("positive", GenerationMode.POSITIVE, auth, per_operation * 9 // 20),
            ("negative", GenerationMode.NEGATIVE, auth, per_operation * 9 // 20),
            ("anonymous", GenerationMode.POSITIVE, {}, max(1, per_operation // 10)),
        ]
        for name, mode, headers, examples in passes:
            test = _pass(operation, mode, headers, examples, base_url, session, report, seed_value)
            try:
                test()
            except Unsatisfiable:
                report.empty.append(f"{label} ({name})")
            except (Exception, FailureGroup) as exc:  # failed checks (Schemathesis groups them), a failed request
                report.failures[f"{label} ({name})"] = _describe(exc)
        if progress is not None:
            progress(f"{label}: {report.cases} cases so far, {time.monotonic() - started:.0f} s")
    report.seconds = time.monotonic() - started
    return report


def _describe(exc: BaseException) -> str:
    """The failure as Schemathesis words it (the check, the answer, a curl line to reproduce it), shortened."""
    parts = [str(exc), *(str(e) for e in getattr(exc, "exceptions", ()))]
    return "\n".join(p.strip() for p in parts if p.strip())[:3000]


def _pass(operation: Any, mode: GenerationMode, headers: dict[str, str], examples: int, base_url: str,
          session: requests.Session, report: Report, seed_value: int | None) -> Callable[[], None]:
    """One Hypothesis test over the operation's cases; a failing check stops it with that check's report."""

    @settings(max_examples=examples, derandomize=seed_value is None, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(case=operation.as_strategy(mode, headers=headers or None))
    def test(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, session=session, timeout=REQUEST_TIMEOUT)
        report.cases += 1
        report.statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    if seed_value is not None:
        test = seed(seed_value)(test)
    return test  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-operation", type=int, default=800, help="cases per operation (default 800)")
    parser.add_argument("--seed", type=int, default=None, help="a Hypothesis seed (default: derandomized)")
    args = parser.parse_args()
    from bench import stack as bench_stack

    # The stack's processes inherit it: the webhook answers unsigned deliveries instead of being switched off.
    os.environ.setdefault("DEVART_GITHUB_WEBHOOK_SECRET", f"fuzz-{uuid.uuid4().hex}")
    stack = bench_stack.start()
    try:
        headers = {"Authorization": f"Bearer {stack.env['DEVART_ADMIN_TOKEN']}"}
        created = httpx.post(f"{stack.api_url}/v1/agents", headers=headers, timeout=30.0,
                             json={"name": "fuzz-agent", "capabilities": ["fuzz"]})
        created.raise_for_status()
        report = campaign(stack.api_url, admin_token=stack.env["DEVART_ADMIN_TOKEN"], agent_key=created.json()["key"],
                          per_operation=args.per_operation, seed_value=args.seed,
                          progress=lambda line: print(line, flush=True))
    finally:
        asyncio.run(bench_stack.delete_broker_objects(stack))
        bench_stack.stop(stack)
    print(report.summary())
    for where, failure in report.failures.items():
        print(f"\n--- {where}\n{failure}")
    raise SystemExit(1 if report.failures or report.server_errors else 0)


if __name__ == "__main__":
    main()
