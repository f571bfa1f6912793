"""The built-in skills, run for real on ``examples/sample-app`` inside bubblewrap sandboxes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from devart.core.contracts import (
    BUILTIN_SKILLS,
    SandboxHandle,
    SandboxSpec,
    Source,
    StageResult,
    TaskDetail,
    TaskHint,
)
from devart.core.errors import SkillError
from devart.sandboxes.base import Sandbox
from devart.workers.skills.base import SkillContext
from devart.workers.skills.registry import SKILLS, get_skill
from devart_sdk import load
from tests.helpers import download_cache

#: The test suite's plugin skills (``noop``), run as the agent runs them: through the SDK's wrapper.
PLUGIN_SKILLS = load("tests.plugins.noop").runners()

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample-app"
XFAIL_TEST = "tests/test_slug.py::test_slugify_transliterates_accented_letters"
#: The deliberate ruff findings of the sample: (file, line, code).
SAMPLE_RUFF = [
    ("src/textstats/counting.py", 38, "B006"),
    ("src/textstats/counting.py", 53, "E722"),
    ("src/textstats/slug.py", 6, "F401"),
]

Provision = Callable[..., Awaitable[SandboxHandle]]


@pytest.fixture(scope="session")
async def sandbox(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sandbox]:
    """A bubblewrap sandbox whose ``network: packages`` commands reach the package index through its proxy."""
    if shutil.which("bwrap") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("bubblewrap (bwrap) is required under CI")
        pytest.skip("bubblewrap (bwrap) is not installed")
    from devart.sandboxes.local import LocalSandbox
    from devart.sandboxes.package_index import serve_package_index

    folder = Path(tempfile.mkdtemp(prefix="devart-skills-"))  # a unix socket's path must stay short
    try:
        async with serve_package_index(folder / "index.sock", download_cache("packages")) as index:
            yield LocalSandbox(tmp_path_factory.mktemp("sandboxes"), isolation="bubblewrap", package_index=index)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def provision(sandbox: Sandbox) -> AsyncIterator[Provision]:
    handles: list[SandboxHandle] = []

    async def make(repo: Path = SAMPLE, ref: str | None = None, run_id: str | None = None) -> SandboxHandle:
        handle = await sandbox.provision(run_id or f"run-{uuid.uuid4().hex[:8]}", "skills",
                                         Source(repo=str(repo), ref=ref), SandboxSpec(network="packages"))
        handles.append(handle)
        return handle

    yield make
    for handle in handles:
        await sandbox.teardown(handle)


def task(handle: SandboxHandle, skill: str, inputs: dict[str, Any] | None = None, attempt: int = 1) -> TaskDetail:
    return TaskDetail(run_id="run-skills", pipeline="skills", stage=skill, skill=skill, requires=[],
                      inputs=inputs or {}, sandbox=handle, source=Source(repo=str(SAMPLE)),
                      task_id=uuid.uuid4().hex, attempt=attempt, claim_id=uuid.uuid4().hex, heartbeat_interval=5.0)


async def run_skill(sandbox: Sandbox, handle: SandboxHandle, skill: str, inputs: dict[str, Any] | None = None,
                    attempt: int = 1) -> StageResult:
    ctx = SkillContext(task(handle, skill, inputs, attempt), sandbox, python=sys.executable)
    runner = PLUGIN_SKILLS.get(skill) or get_skill(skill)
    return await runner(ctx)


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=devart", "-c", "user.email=devart@example.com", *args], cwd=repo,
                   check=True, capture_output=True)


def make_git_sample(top: Path, subdir: str = "") -> Path:
    """A git copy of the sample (at ``subdir`` of the repository) whose second commit leaves debugging code behind."""
    repo = top / subdir
    shutil.copytree(SAMPLE, repo, ignore=shutil.ignore_patterns("__pycache__", ".devart*", "dist", ".*cache"))
    git(top, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "textstats 0.3.1")
    slug = repo / "src/textstats/slug.py"
    lines = slug.read_text().splitlines()
    lines[17:17] = ['    print("slugify", text)', "    breakpoint()"]  # become lines 18 and 19
    slug.write_text("\n".join(lines) + "\n")
    body = "\n".join(f"    total += {i}" for i in range(70))
    (repo / "src/textstats/report.py").write_text(f'"""Reports."""\n\n\ndef report():\n    total = 0\n{body}\n'
                                                  "    return total\n")
    (repo / "tests/test_report.py").write_text('def test_report():\n    print("fine in tests")\n')
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "debugging slugify")
    return repo


@pytest.fixture
def git_sample(tmp_path: Path) -> Path:
    return make_git_sample(tmp_path / "repo")


async def test_registry_matches_the_builtin_skills() -> None:
    assert set(SKILLS) == BUILTIN_SKILLS
    assert "noop" not in SKILLS  # fault injection is a plugin of the tests and benchmarks, not a product skill
    with pytest.raises(SkillError) as caught:
        get_skill("deploy")
    assert caught.value.error_type == "SkillNotFound" and caught.value.non_retryable


async def test_build_makes_a_wheel_and_imports_it_from_a_fresh_venv(sandbox: Sandbox, provision: Provision) -> None:
    handle = await provision()
    result = await run_skill(sandbox, handle, "build")
    out = result.output
    assert result.status == "succeeded"
    assert out["wheel"] == "textstats-0.3.1-py3-none-any.whl"
    assert out["top_level"] == ["textstats"]
    assert out["size_bytes"] > 1000
    assert out["venv_python"] == ".".join(map(str, sys.version_info[:3]))
    assert "/.devart-venv/" in out["modules"]["textstats"]  # imported from the wheel, not the checkout
    assert set(out["step_seconds"]) >= {"venv", "build", "install", "verify"}
    assert result.usage.sandbox_cpu_seconds > 0


async def test_build_failure_is_not_retryable(sandbox: Sandbox, provision: Provision, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[build-system\nrequires = \n")
    handle = await provision(tmp_path)
    with pytest.raises(SkillError) as caught:
        await run_skill(sandbox, handle, "build")
    assert caught.value.error_type == "BuildFailed" and caught.value.non_retryable
    assert caught.value.output["failed_step"] == "build"
    assert "pyproject.toml" in caught.value.log_tail


async def test_test_reports_the_sample_suite(sandbox: Sandbox, provision: Provision) -> None:
    result = await run_skill(sandbox, await provision(), "test", {"pytest_args": ""})
    out = result.output
    assert (out["passed"], out["failed"], out["errors"], out["skipped"], out["xfailed"], out["total"]) == (
        18, 0, 0, 1, 1, 20)
    assert result.summary.startswith("18 passed, 1 skipped, 1 xfailed in ")
    assert out["failures"] == []


async def test_runxfail_turns_the_known_bug_into_a_failure(sandbox: Sandbox, provision: Provision) -> None:
    handle = await provision()
    with pytest.raises(SkillError) as caught:
        await run_skill(sandbox, handle, "test", {"pytest_args": "--runxfail"})
    error = caught.value
    # Retryable only because the task self-heals: its retry re-runs the failed test alone
    assert error.error_type == "TestsFailed" and not error.non_retryable
    assert (error.output["passed"], error.output["failed"], error.output["skipped"]) == (18, 1, 1)
    assert str(error).startswith("tests failed: 18 passed, 1 failed, 1 skipped in ")
    [failure] = error.output["failures"]
    assert failure["test"] == XFAIL_TEST
    assert "creme-brulee" in failure["message"]
    assert "test_slugify_transliterates_accented_letters" in error.log_tail
    # That re-run (the remedy's inputs) fails again, twice: the test is broken, and the verdict final
    with pytest.raises(SkillError) as caught:
        await run_skill(sandbox, handle, "test", {"pytest_args": "--runxfail", "rerun_tests": [XFAIL_TEST],
                                                  "rerun_times": 2, "rerun_of": {"passed": 18, "failed": 1,
                                                                                 "skipped": 1, "total": 20}},
                        attempt=2)
    assert caught.value.error_type == "TestsFailed" and caught.value.non_retryable
    assert str(caught.value) == f"tests failed again when re-run: broken: {XFAIL_TEST}"
    assert caught.value.output["rerun"]["runs"] == [{"run": 1, "tests": 1, "failed": 1},
                                                    {"run": 2, "tests": 1, "failed": 1}]
    assert caught.value.output["failures"][0]["test"] == XFAIL_TEST
    # And the figures are the whole suite's, as the attempt that saw it fail ran it
    out = caught.value.output
    assert (out["passed"], out["failed"], out["skipped"], out["total"]) == (18, 1, 1, 20)


async def test_no_tests_collected_fails_unless_the_stage_accepts_it(sandbox: Sandbox, provision: Provision) -> None:
    # Given a run of pytest that selects no test (as a project whose tests are not in its sources does)
    with pytest.raises(SkillError) as caught:
        await run_skill(sandbox, await provision(), "test", {"pytest_args": "-k no_such_test"})
    # Then the stage fails, once (a rerun collects nothing again), saying why and how to accept it
    assert caught.value.error_type == "NoTestsCollected" and caught.value.non_retryable
    assert str(caught.value).startswith("no tests were collected") and "-p allow_no_tests=true" in str(caught.value)
    assert caught.value.output["total"] == 0 and caught.value.output["exit_code"] == 5
    # And a stage that accepts it succeeds with zero
    result = await run_skill(sandbox, await provision(), "test", {"pytest_args": "-k no_such_test",
                                                                  "allow_no_tests": "true"})
    assert result.output["total"] == 0 and result.output["exit_code"] == 5
    assert result.summary == "no tests were collected"
    # And a value that is neither true nor false is refused before anything runs, whatever pytest would find
    with pytest.raises(SkillError) as refused:
        await run_skill(sandbox, await provision(), "test", {"allow_no_tests": "maybe"})
    assert refused.value.error_type == "InvalidInput" and "allow_no_tests" in str(refused.value)


async def test_pytest_usage_error_is_not_retried(sandbox: Sandbox, provision: Provision) -> None:
    with pytest.raises(SkillError) as caught:
        await run_skill(sandbox, await provision(), "test", {"pytest_args": "--no-such-option"})
    assert caught.value.error_type == "TestRunError" and caught.value.non_retryable  # a rerun fails the same way
    assert "--no-such-option" in str(caught.value)


def small_project(folder: Path, declare: str = "", backend: str = "hatchling") -> Path:
    """A project whose test imports ``tomli_w`` (which pytest does not bring), declared (``declare``: TOML
    appended) or not."""
    backends = {"hatchling": ('["hatchling"]', "hatchling.build"), "flit": ('["flit_core>=3.2,<4"]',
                                                                           "flit_core.buildapi"),
                "missing": ('["devart-no-such-backend-zzz"]', "nowhere.build")}
    requires, api = backends[backend]
    (folder / "pyproject.toml").write_text(
        f'[build-system]\nrequires = {requires}\nbuild-backend = "{api}"\n\n'
        '[project]\nname = "tinyproj"\nversion = "1.0"\ndescription = "tiny"\n' + declare)
    (folder / "tinyproj").mkdir()
    (folder / "tinyproj" / "__init__.py").write_text('"""tiny."""\n\ndef answer():\n    return 42\n')
    (folder / "tests").mkdir()
    (folder / "tests" / "test_tiny.py").write_text(
        "import tomli_w\n\nimport tinyproj\n\n\ndef test_answer():\n    assert tinyproj.answer() == 42\n\n\n"
        "def test_dumps():\n    assert tomli_w.dumps({'a': 1}) == 'a = 1\\n'\n")
    return folder


async def test_tests_run_against_the_wheel_the_build_stage_made(sandbox: Sandbox, provision: Provision) -> None:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    built = await run_skill(sandbox, await provision(run_id=run_id), "build")
    assert built.output["artifacts"] == ["textstats-0.3.1-py3-none-any.whl"]
    result = await run_skill(sandbox, await provision(run_id=run_id), "test")
    environment = result.output["environment"]
    assert environment["tested"] == "wheel textstats-0.3.1-py3-none-any.whl from the build stage"
    assert any(line.startswith("textstats @ file://") for line in environment["installed"]), environment
    assert any(line.startswith("pytest==") for line in environment["installed"])
    # Another run's sandbox gets none of it.
    other = await run_skill(sandbox, await provision(), "test")
    assert other.output["environment"]["tested"] == "the project built from the checkout"


async def test_an_undeclared_test_dependency_is_a_named_collection_failure(
    sandbox: Sandbox, provision: Provision, tmp_path: Path
) -> None:
    with pytest.raises(SkillError) as caught:
        await run_skill(sandbox, await provision(small_project(tmp_path)), "test")
    error = caught.value
    assert error.error_type == "TestCollectionFailed" and error.non_retryable  # a rerun cannot fix it
    assert "No module named 'tomli_w'" in str(error) and "tests/test_tiny.py" in str(error)
    assert (error.output["errors"], error.output["passed"]) == (1, 0)


@pytest.mark.parametrize("declare, source", [
    ('\n[dependency-groups]\ntest = [{include-group = "base"}]\nbase = ["tomli-w>=1"]\n',
     "dependency group 'test'"),
    ('\n[project.optional-dependencies]\ntests = ["tomli-w>=1"]\ndocs = ["devart-no-such-package-zzz"]\n',
     "extra 'tests'"),
    ("\n[tool.poetry.group.test.dependencies]\ntomli-w = \"^1.0\"\n", "Poetry group 'test'"),
])
async def test_declared_test_dependencies_are_installed(
    sandbox: Sandbox, provision: Provision, tmp_path: Path, declare: str, source: str
) -> None:
    result = await run_skill(sandbox, await provision(small_project(tmp_path, declare, backend="flit")), "test")
    assert (result.output["passed"], result.output["failed"], result.output["errors"]) == (2, 0, 0)
    assert result.output["environment"]["sources"] == [source]
    assert any(line.startswith("tomli-w==1.") for line in result.output["environment"]["installed"])


async def test_the_tests_run_with_their_environment_active(sandbox: Sandbox, provision: Provision,
                                                          tmp_path: Path) -> None:
    """A suite that runs a tool its test dependencies installed (mypy through pytest-mypy-plugins, say) finds the
    test environment's, as it does when a developer runs it from an activated environment or through tox."""
    project = small_project(tmp_path, '\n[project.optional-dependencies]\ntests = ["tomli-w>=1"]\n', backend="flit")
    (project / "tests" / "test_environment.py").write_text(
        "import os, shutil, subprocess, sys\n\n\ndef test_the_environment_is_active():\n"
        "    assert os.environ['VIRTUAL_ENV'] == sys.prefix != sys.base_prefix\n"
        "    assert shutil.which('pytest') == os.path.join(sys.prefix, 'bin', 'pytest')\n"
        "    assert subprocess.run(['pytest', '--version'], capture_output=True).returncode == 0\n")
    result = await run_skill(sandbox, await provision(project), "test")
    assert (result.output["passed"], result.output["failed"], result.output["errors"]) == (3, 0, 0), result.output


async def test_a_backend_that_does_not_exist_fails_the_build_with_the_reason(
    sandbox: Sandbox, provision: Provision, tmp_path: Path
) -> None:
    with pytest.raises(SkillError) as caught:
        await run_skill(sandbox, await provision(small_project(tmp_path, backend="missing")), "build")
    assert caught.value.error_type == "BuildFailed" and caught.value.non_retryable
    assert "devart-no-such-backend-zzz" in str(caught.value)


async def test_without_the_package_index_the_build_says_which_network_it_needs(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    handle = await sandbox.provision(f"run-{uuid.uuid4().hex[:8]}", "build",
                                     Source(repo=str(small_project(tmp_path))), SandboxSpec(network="none"))
    try:
        with pytest.raises(SkillError) as caught:
            await run_skill(sandbox, handle, "build")
    finally:
        await sandbox.teardown(handle)
    assert "network: packages" in str(caught.value)
    # Retryable only because the task self-heals: its retry builds without isolation, offline still
    assert not caught.value.non_retryable and caught.value.output["cause"] == "build_backend_offline"


async def test_lint_finds_the_deliberate_findings(sandbox: Sandbox, provision: Provision) -> None:
    result = await run_skill(sandbox, await provision(), "lint")
    found = [(f["file"], f["line"], f["code"]) for f in result.output["findings"]]
    assert found == SAMPLE_RUFF
    assert result.output["counts"] == {"B006": 1, "E722": 1, "F401": 1}
    assert result.summary == "3 ruff findings (B006, E722, F401)"


async def test_lint_can_fail_on_findings(sandbox: Sandbox, provision: Provision) -> None:
    with pytest.raises(SkillError) as caught:
        await run_skill(sandbox, await provision(), "lint", {"fail_on_findings": "true"})
    # Retryable only because the task self-heals and ruff can fix one finding: its retry proposes the fix
    assert caught.value.error_type == "LintFailed" and not caught.value.non_retryable
    assert (caught.value.output["total"], caught.value.output["fixable"]) == (3, 1)


async def test_review_without_history_reviews_every_file(sandbox: Sandbox, provision: Provision) -> None:
    result = await run_skill(sandbox, await provision(), "review")
    out = result.output
    assert out["reviewer"] == "static" and out["mode"] == "files"
    ruff = {(f["file"], f["line"], f["rule"]) for f in out["findings"] if f["source"] == "ruff"}
    assert ruff == set(SAMPLE_RUFF)
    assert ("src/textstats/slug.py", 16, "todo") in {(f["file"], f["line"], f["rule"]) for f in out["findings"]}
    assert result.summary == "4 findings (0 errors, 3 warnings)"


async def test_review_flags_debugging_code_added_by_the_last_commit(
        sandbox: Sandbox, provision: Provision, git_sample: Path) -> None:
    # Given a repository whose last commit adds a print(), a breakpoint() and a 73-line function
    handle = await provision(git_sample)
    # When it is reviewed against HEAD~1 (the default)
    result = await run_skill(sandbox, handle, "review")
    out = result.output
    # Then the added lines are flagged where they are, first, and the old ruff findings follow
    assert out["mode"] == "diff" and out["base"] == "HEAD~1"
    flagged = [(f["file"], f["line"], f["rule"], f["source"]) for f in out["findings"] if f["in_diff"]]
    assert ("src/textstats/slug.py", 18, "debug-print", "diff") in flagged
    assert ("src/textstats/slug.py", 19, "debugger", "diff") in flagged
    assert ("src/textstats/report.py", 4, "long-function", "diff") in flagged
    assert not [f for f in out["findings"] if f["file"] == "tests/test_report.py"]
    assert out["findings"][0]["severity"] == "error"
    old = [(f["file"], f["line"], f["rule"]) for f in out["findings"] if f["source"] == "ruff"]
    assert sorted(old) == SAMPLE_RUFF
    assert all(not f["in_diff"] for f in out["findings"] if f["source"] == "ruff")


async def test_review_of_a_sub_directory_checkout_sees_only_its_changes(
        sandbox: Sandbox, provision: Provision, tmp_path: Path) -> None:
    # Given the sample in a sub-directory of a repository, checked out at a ref (the whole repository is cloned)
    app = make_git_sample(tmp_path / "mono", "packages/textstats")
    (tmp_path / "mono" / "debug.py").write_text("print('outside the app')\n")
    git(tmp_path / "mono", "add", "-A")
    git(tmp_path / "mono", "commit", "-q", "-m", "debug outside the app")
    handle = await provision(app, "main")
    # When it is reviewed against the commit before the debugging one
    result = await run_skill(sandbox, handle, "review", {"base": "HEAD~2"})
    # Then paths are relative to the sub-directory and changes outside it are left out
    flagged = {(f["file"], f["line"], f["rule"]) for f in result.output["findings"] if f["in_diff"]}
    assert {("src/textstats/slug.py", 18, "debug-print"), ("src/textstats/slug.py", 19, "debugger")} <= flagged
    assert not [f for f in result.output["findings"] if "debug.py" in f["file"]]


async def test_review_with_an_unknown_base_is_refused(
        sandbox: Sandbox, provision: Provision, git_sample: Path) -> None:
    with pytest.raises(SkillError) as caught:
        await run_skill(sandbox, await provision(git_sample), "review", {"base": "no-such-branch"})
    assert caught.value.error_type == "InvalidInput"


class _FakeOpenAI(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(body)
        answer = {"findings": [{"file": "src/textstats/slug.py", "line": 18, "severity": "warning",
                                "message": "slugify prints its input on every call"}]}
        reply = json.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": json.dumps(answer)}}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42},
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_openai() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


async def test_review_merges_model_findings_and_counts_tokens(
        sandbox: Sandbox, provision: Provision, git_sample: Path, fake_openai: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai)
    result = await run_skill(sandbox, await provision(git_sample), "review", {"model": "review-model"})
    assert result.output["reviewer"] == "model"
    assert result.usage.model_tokens == {"review-model": 42}
    model = [f for f in result.output["findings"] if f["source"] == "model"]
    assert model == [{"file": "src/textstats/slug.py", "line": 18, "severity": "warning", "rule": "model",
                      "message": "slugify prints its input on every call", "source": "model", "in_diff": True}]
    sent = _FakeOpenAI.requests[-1]
    assert sent["response_format"] == {"type": "json_object"}
    assert "breakpoint()" in sent["messages"][1]["content"]  # the diff went to the model


#: A retry's knowledge-base hints: guidance, a remedy that worked, and one with neither.
HINTS = [
    TaskHint(entry_id=7, guidance="slugify must stay pure: flag any I/O in it", similarity=0.91, success_rate=0.8),
    TaskHint(entry_id=9, remedy="more_memory", parameters={"factor": 2}, similarity=0.5, success_rate=0.6),
    TaskHint(entry_id=11, similarity=0.4, success_rate=0.5),
]


async def test_the_review_prompt_carries_the_retrys_hints(
        sandbox: Sandbox, provision: Provision, git_sample: Path, fake_openai: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a review retry whose task carries the knowledge base's hints, and a model
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai)
    handle = await provision(git_sample)
    retry = task(handle, "review", {"model": "review-model"}, attempt=2).model_copy(update={"hints": HINTS})
    # When it runs
    result = await get_skill("review")(SkillContext(retry, sandbox, python=sys.executable))
    # Then the model was asked with the guidance and the remedy that worked, ahead of the change itself
    assert result.output["reviewer"] == "model"
    prompt = _FakeOpenAI.requests[-1]["messages"][1]["content"]
    assert "- similarity 0.91, success rate 0.80: slugify must stay pure: flag any I/O in it\n" in prompt
    assert '- similarity 0.50, success rate 0.60: remedy that worked: more_memory {"factor": 2}\n' in prompt
    assert prompt.count("- similarity") == 2  # a hint with nothing to say is left out
    assert prompt.index("Knowledge base:") < prompt.index("Static findings:") < prompt.index("breakpoint()")
    # And a first attempt's prompt has no such section
    await run_skill(sandbox, handle, "review", {"model": "review-model"})
    assert "Knowledge base:" not in _FakeOpenAI.requests[-1]["messages"][1]["content"]


async def test_review_falls_back_to_static_when_the_model_fails(
        sandbox: Sandbox, provision: Provision, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # discard port: nothing listens
    result = await run_skill(sandbox, await provision(), "review")
    assert result.status == "succeeded" and result.output["reviewer"] == "static"
    assert "model review unavailable" in result.summary
    assert result.usage.model_tokens == {}
    assert len(result.output["findings"]) == 4


async def test_shell_runs_in_the_workspace(sandbox: Sandbox, provision: Provision) -> None:
    handle = await provision()
    result = await run_skill(sandbox, handle, "shell", {"command": "pwd && test -f pyproject.toml"})
    assert result.output["exit_code"] == 0
    assert handle.workspace in result.log_tail
    listed = await run_skill(sandbox, handle, "shell", {"argv": ["ls", "src"]})
    assert "textstats" in listed.log_tail


async def test_shell_failure_is_retryable_unless_told_otherwise(sandbox: Sandbox, provision: Provision) -> None:
    handle = await provision()
    with pytest.raises(SkillError) as caught:
        await run_skill(sandbox, handle, "shell", {"command": "echo broken; exit 3"})
    assert caught.value.error_type == "CommandFailed" and not caught.value.non_retryable
    assert caught.value.output["exit_code"] == 3 and "broken" in caught.value.log_tail
    with pytest.raises(SkillError) as caught:
        await run_skill(sandbox, handle, "shell", {"command": "exit 1", "retryable": False})
    assert caught.value.non_retryable
    with pytest.raises(SkillError) as caught:
        await run_skill(sandbox, handle, "shell", {})
    assert caught.value.error_type == "InvalidInput"


async def test_noop_fails_the_first_attempts_then_succeeds(sandbox: Sandbox, provision: Provision) -> None:
    handle = await provision()
    for attempt in (1, 2):
        with pytest.raises(SkillError) as caught:
            await run_skill(sandbox, handle, "noop", {"fail_attempts": 2}, attempt=attempt)
        assert caught.value.error_type == "Transient" and not caught.value.non_retryable
        assert f"attempt {attempt}" in str(caught.value)
    result = await run_skill(sandbox, handle, "noop", {"fail_attempts": 2}, attempt=3)
    assert result.status == "succeeded"
    with pytest.raises(SkillError) as caught:
        await run_skill(sandbox, handle, "noop", {"fail_attempts": 1, "fail_type": "Fatal", "non_retryable": True})
    assert caught.value.error_type == "Fatal" and caught.value.non_retryable


async def test_noop_runs_its_command_inside_the_sandbox(sandbox: Sandbox, provision: Provision) -> None:
    handle = await provision()
    probe = f"{SAMPLE}/devart-probe-{uuid.uuid4().hex}"  # the host tree is read-only in the sandbox
    command = f"pwd; touch {probe} 2>/dev/null || echo read-only"
    result = await run_skill(sandbox, handle, "noop", {"sandbox_command": command})
    assert result.output["command_output"].splitlines() == [handle.workspace, "read-only"]
    assert not Path(probe).exists()
    with pytest.raises(SkillError) as caught:
        await run_skill(sandbox, handle, "noop", {"sandbox_command": "exit 7"})
    assert caught.value.error_type == "CommandFailed"


@pytest.mark.parametrize("inputs", [{"sleep": 30}, {"sandbox_command": "sleep 30"}], ids=["sleep", "command"])
async def test_noop_is_cancelled_promptly(sandbox: Sandbox, provision: Provision, inputs: dict[str, Any]) -> None:
    handle = await provision()
    running = asyncio.create_task(run_skill(sandbox, handle, "noop", inputs))
    await asyncio.sleep(0.5)
    started = time.monotonic()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert time.monotonic() - started < 2.0
