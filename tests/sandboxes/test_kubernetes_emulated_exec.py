"""Exec in the Kubernetes backend through the API's websocket stream, against kmock's emulator.

``k8s_emulator.Kubelet`` serves the exec stream with Kubernetes' channel protocol and runs the argv the backend
sends on this machine (``/workspace`` mapped to a temporary folder), leaving it running when the client hangs up,
as a real kubelet does. What only a container produces (its cgroup's OOM counter, an OOMKilled status) is
scripted; ``test_kubernetes_cluster.py`` checks those for real.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from devart.core.contracts import SandboxSpec
from devart.core.errors import SandboxError
from tests.sandboxes.k8s_emulator import Cluster, emulated_cluster


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with emulated_cluster(tmp_path) as emulated:
        yield emulated


async def test_exec_streams_output_and_returns_the_exit_code(cluster: Cluster) -> None:
    backend = cluster.backend()
    handle = await cluster.running(backend)
    (cluster.kubelet.workspace / "README").write_text("hello\n")
    lines: list[str] = []
    result = await backend.exec(handle, ["sh", "-c", 'cat README; echo "$GREETING"; echo oops >&2; exit 3'],
                                env={"GREETING": "hi; there"}, on_output=lines.append)
    assert result.exit_code == 3 and not result.timed_out and not result.oom_killed
    assert result.output == "hello\nhi; there\noops\n"
    assert lines == ["hello\n", "hi; there\n", "oops\n"]
    command = cluster.kubelet.execs[-1]  # variables and command are separate arguments, never shell text
    assert command[:2] == ["env", "GREETING=hi; there"]
    assert command[-3:] == ["sh", "-c", 'cat README; echo "$GREETING"; echo oops >&2; exit 3']


async def test_secret_values_never_show_in_the_output(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVART_TEST_TOKEN", "tok-123456")
    monkeypatch.setenv("DEVART_SECRETS_ALLOWED", "DEVART_TEST_TOKEN")
    backend = cluster.backend()
    handle = await cluster.running(backend, SandboxSpec(secrets={"TOKEN": "env:DEVART_TEST_TOKEN"}))
    lines: list[str] = []
    # The fake kubelet has no pod environment, so the command prints the value itself.
    result = await backend.exec(handle, ["echo", "token is tok-123456"], on_output=lines.append)
    assert result.output == "token is ***\n" and lines == ["token is ***\n"]


async def test_exec_keeps_the_tail_within_the_cap(cluster: Cluster) -> None:
    backend = cluster.backend()
    handle = await cluster.running(backend)
    result = await backend.exec(handle, ["sh", "-c", "for i in $(seq 1 5000); do echo line-$i; done"],
                                output_cap=100)
    assert result.exit_code == 0 and result.truncated
    assert len(result.output) == 100 and result.output.endswith("line-5000\n")


async def test_exec_timeout_kills_the_process_tree(cluster: Cluster) -> None:
    backend = cluster.backend()
    handle = await cluster.running(backend)
    duration = cluster.kubelet.marker()
    result = await backend.exec(handle, ["sh", "-c", f"sleep {duration} & sleep {duration}"], timeout=1)
    assert result.timed_out and result.exit_code == 137 and result.duration < 5
    await asyncio.sleep(0.2)
    assert cluster.kubelet.sleepers(duration) == []


async def test_a_cancelled_exec_kills_the_command_from_a_second_exec(cluster: Cluster) -> None:
    backend = cluster.backend()
    handle = await cluster.running(backend)
    duration = cluster.kubelet.marker()
    task = asyncio.create_task(backend.exec(handle, ["sh", "-c", f"sleep {duration} & sleep {duration}"]))
    for _ in range(100):
        if len(cluster.kubelet.sleepers(duration)) == 2:
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cluster.kubelet.execs[-1][:2] == ["sh", "-c"]  # the kill
    await asyncio.sleep(0.2)
    assert cluster.kubelet.sleepers(duration) == []  # the kubelet left it running; the kill exec did not


async def test_a_failing_output_callback_stops_the_command(cluster: Cluster) -> None:
    backend = cluster.backend()
    handle = await cluster.running(backend)
    duration = cluster.kubelet.marker()

    def explode(_line: str) -> None:
        raise RuntimeError("feed closed")

    with pytest.raises(RuntimeError, match="feed closed"):
        await backend.exec(handle, ["sh", "-c", f"echo start; sleep {duration}"], on_output=explode)
    await asyncio.sleep(0.2)
    assert cluster.kubelet.sleepers(duration) == []


def scripted(*frames: tuple[int, bytes]) -> Callable[[list[str]], list[tuple[int, bytes]] | None]:
    return lambda _command: list(frames)


async def test_an_oom_kill_reported_by_the_cgroup_counter(cluster: Cluster) -> None:
    backend = cluster.backend()
    handle = await cluster.running(backend)
    cluster.kubelet.script = scripted(
        (1, b"allocating\n"), (2, b"devart:usage 1000000 0 1800000 1\n"),
        (3, b'{"status":"Failure","details":{"causes":[{"reason":"ExitCode","message":"137"}]}}'))
    result = await backend.exec(handle, ["python", "-c", "x = bytearray(2**31)"], timeout=60)
    assert result.exit_code == 137 and result.oom_killed and not result.timed_out
    assert result.cpu_seconds == 0.8 and result.output == "allocating\n"


async def test_an_oom_kill_of_the_container_seen_in_the_pod_status(cluster: Cluster) -> None:
    backend = cluster.backend()
    handle = await cluster.running(backend)
    cluster.kubelet.script = scripted((1, b"allocating\n"))  # the stream ends without a status
    await cluster.kubelet_reports(handle.id, {"phase": "Failed", "containerStatuses": [
        {"name": "sandbox", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]})
    result = await backend.exec(handle, ["python", "-c", "x = bytearray(2**31)"])
    assert result.exit_code == 137 and result.oom_killed


async def test_exec_in_a_torn_down_sandbox_is_refused(cluster: Cluster) -> None:
    backend = cluster.backend()
    handle = await cluster.running(backend)
    await backend.teardown(handle)
    with pytest.raises(SandboxError) as caught:
        await backend.exec(handle, ["true"])
    assert caught.value.reason == "SandboxGone"


async def test_exec_when_the_pod_hit_its_deadline(cluster: Cluster) -> None:
    backend = cluster.backend()
    handle = await cluster.running(backend)
    cluster.kubelet.script = scripted()
    await cluster.kubelet_reports(handle.id, {"phase": "Failed", "reason": "DeadlineExceeded"})
    with pytest.raises(SandboxError) as caught:
        await backend.exec(handle, ["true"])
    assert caught.value.reason == "DeadlineExceeded"
