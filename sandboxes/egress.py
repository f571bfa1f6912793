"""``network: egress`` on the local backend: a network namespace of the command's own, routed to public addresses.

bubblewrap gives every command an empty network namespace. For egress, slirp4netns (a user-mode TCP/IP stack run by
the agent on the host) plugs a tap device into it, which the agent configures: ``10.0.2.100/24``, the default route
via ``10.0.2.2`` and DNS at ``10.0.2.3``, which slirp forwards to the host's resolver. The command's connections
leave the host as connections of slirp4netns, so what the host could reach the command could reach too; before the
command starts the namespace therefore gets unreachable routes for loopback, the private, shared (CGNAT),
link-local, multicast and reserved IPv4 ranges, all of IPv6, the slirp gateway and every address of the host's own
interfaces (the slirp network's own ``10.0.2.0/24`` stays on-link, being more specific than ``10.0.0.0/8``), and
slirp4netns runs with ``--disable-host-loopback``. The host's services, its internal network and a cloud's metadata
service stay out of reach; public addresses and DNS do not. ``/etc/resolv.conf`` names ``10.0.2.3`` only.

The order: bubblewrap reports its child's pid on ``--info-fd`` and holds the command on ``--block-fd``; the agent
starts slirp4netns on that pid, waits for its ``--ready-fd``, configures the tap device and the routes (``nsenter``
into the namespace, ``ip -batch``), and only then releases the command. slirp4netns's own ``--configure`` is not
used: it brings the loopback up while bubblewrap may still be adding its address, which then fails. slirp4netns
parses whatever the command sends while running as root, so it runs in its own sandbox (``--enable-sandbox``: a
mount namespace, every capability dropped) under its own seccomp filter, and its ``--exit-fd`` is a pipe only the
agent holds: it exits when the agent closes that after the command (however it ended), or when the agent itself
dies. The addresses and the routes themselves are ``sandboxes/egress_routes.py``'s.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import select
import shutil
import signal
from contextlib import suppress
from dataclasses import dataclass

from devart.core.errors import SandboxError
from devart.sandboxes.egress_routes import MTU, RESOLV_CONF, TAP, host_addresses, resolv_conf_path, route_script

#: ``host_addresses`` and ``resolv_conf_path`` live in ``sandboxes/egress_routes.py``, and are reachable here too.
__all__ = ["EgressFds", "EgressLink", "host_addresses", "missing", "resolv_conf_path", "tools"]

#: Seconds slirp4netns and the routes may take before the command is given up on (usually a few ms).
READY_TIMEOUT = 15.0
_MISSING = ("this stage asks for 'network: egress', which local sandboxes get through slirp4netns (a network of "
            "their own, never the host's), and it is not installed: install it with `apt-get install -y "
            "slirp4netns`, or give the stage 'network: packages' or 'none'")
_INFO_LIMIT = 1 << 16
#: ioctl on a namespace descriptor returning a descriptor of the user namespace owning it (linux/nsfs.h).
NS_GET_USERNS = 0xB701


def tools(helper_path: str) -> tuple[str, str, str] | None:
    """slirp4netns, nsenter and ip, or None when one is missing."""
    found = [shutil.which(name, path=helper_path) for name in ("slirp4netns", "nsenter", "ip")]
    return (found[0], found[1], found[2]) if all(found) else None  # type: ignore[return-value]


def missing() -> SandboxError:
    """The refusal of an egress stage on a machine without slirp4netns (retrying elsewhere may work)."""
    return SandboxError(_MISSING, reason="EgressUnavailable")


@dataclass(frozen=True)
class EgressFds:
    """The descriptors bubblewrap inherits for one egress command."""

    info: int  # bubblewrap writes its child's pid here (``--info-fd``)
    block: int  # bubblewrap holds the command until this is written to (``--block-fd``)
    resolv: int  # the sandbox's resolver file (``--ro-bind-data``)


class EgressLink:
    """One command's slirp4netns network: pipes made before bubblewrap starts, the network set up after."""

    def __init__(self, slirp: str, nsenter: str, ip: str, *, userns: bool) -> None:
        self._slirp, self._nsenter, self._ip, self._userns = slirp, nsenter, ip, userns
        self._process: asyncio.subprocess.Process | None = None
        self._own: list[int] = []  # every descriptor still open here, closed by ``spawned`` and ``close``
        try:
            self._info_r, info_w = self._pipe()
            block_r, self._block_w = self._pipe()
            self._exit_r, self._exit_w = self._pipe()
            resolv = os.memfd_create("devart-resolv", os.MFD_CLOEXEC)
            self._own.append(resolv)
            os.write(resolv, RESOLV_CONF)
            os.lseek(resolv, 0, os.SEEK_SET)
        except BaseException:
            self._close_all()
            raise
        self.fds = EgressFds(info=info_w, block=block_r, resolv=resolv)

    @property
    def child_fds(self) -> list[int]:
        """What bubblewrap inherits: ``--info-fd``, ``--block-fd`` and the resolver file's data."""
        return [self.fds.info, self.fds.block, self.fds.resolv]

    def spawned(self) -> None:
        """bubblewrap has its copies: drop ours, so its exit ends our reads."""
        for fd in self.child_fds:
            if fd in self._own:  # not closed already by a ``close`` after a failed start
                self._own.remove(fd)
                os.close(fd)

    async def start(self, addresses: list[str]) -> None:
        """Wire up the network of the command bubblewrap holds, then release it; raises if that fails."""
        try:
            info = await _read_to_end(self._info_r, READY_TIMEOUT)
        except TimeoutError:
            raise SandboxError(f"bubblewrap did not start the sandbox within {READY_TIMEOUT:g}s", retryable=True,
                               reason="EgressUnavailable") from None
        try:
            pid = int(json.loads(info)["child-pid"])
            child = os.pidfd_open(pid)
        except (ValueError, KeyError, TypeError, OSError):
            return  # bubblewrap failed before its child existed: it reports why itself, and nothing runs
        try:
            await self._connect(pid, addresses)
        except SandboxError:
            if _exited(child):
                return  # bubblewrap's own set-up failed meanwhile: its message says why, and nothing runs
            with suppress(ProcessLookupError):
                signal.pidfd_send_signal(child, signal.SIGKILL)
            raise
        except BaseException:
            # Closing the block pipe would release the command as well as writing to it: kill it first.
            with suppress(ProcessLookupError):
                signal.pidfd_send_signal(child, signal.SIGKILL)
            raise
        finally:
            os.close(child)
        with suppress(BrokenPipeError):  # bubblewrap died meanwhile: the command never runs
            os.write(self._block_w, b"1")

    async def _connect(self, pid: int, addresses: list[str]) -> None:
        """Start slirp4netns on the network namespace of bubblewrap's child ``pid`` and configure it."""
        namespaces = _namespaces(pid, userns=self._userns)
        try:
            await self._configure(namespaces, addresses)
        finally:
            for fd in namespaces:
                os.close(fd)

    async def _configure(self, namespaces: list[int], addresses: list[str]) -> None:
        """``namespaces``: the network namespace, then (in a user namespace) the user namespace owning it."""
        # Both tools enter the namespaces through descriptors they inherit: never a path a later step could change.
        paths = [f"/proc/self/fd/{fd}" for fd in namespaces]
        userns = [f"--userns-path={paths[1]}"] if self._userns else []
        ready_r, ready_w = os.pipe()
        try:
            self._process = await asyncio.create_subprocess_exec(
                self._slirp, f"--mtu={MTU}", "--disable-host-loopback", "--enable-sandbox", "--enable-seccomp",
                f"--ready-fd={ready_w}", f"--exit-fd={self._exit_r}", "--netns-type=path", *userns, paths[0], TAP,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, pass_fds=(ready_w, self._exit_r, *namespaces),
                start_new_session=True)
        finally:
            os.close(ready_w)
        try:
            ready = await _read_to_end(ready_r, READY_TIMEOUT, limit=1)
        except TimeoutError:
            ready = b""
        finally:
            os.close(ready_r)
        if ready != b"1":
            raise SandboxError(f"slirp4netns did not bring up the sandbox's network: {await self._said()}",
                               retryable=True, reason="EgressUnavailable")
        enter = [self._nsenter, *([f"--user={paths[1]}", "--preserve-credentials"] if self._userns else []),
                 f"--net={paths[0]}", self._ip, "-batch", "-"]
        routes = await asyncio.create_subprocess_exec(
            *enter, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            pass_fds=namespaces)
        try:
            async with asyncio.timeout(READY_TIMEOUT):  # never loses a cancellation, unlike 3.11's wait_for
                said, _ = await routes.communicate(route_script(addresses))
        except BaseException:
            with suppress(ProcessLookupError):
                routes.kill()
            await routes.wait()
            raise
        if routes.returncode != 0:
            raise SandboxError(f"could not set up the sandbox's network: {said.decode(errors='replace')}",
                               retryable=True, reason="EgressUnavailable")

    async def close(self) -> None:
        """Stop slirp4netns and free the pipes; safe to call more than once, and after a failed start."""
        self._close_all()
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            with suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    def _pipe(self) -> tuple[int, int]:
        ends = os.pipe()
        self._own.extend(ends)
        return ends

    def _close_all(self) -> None:
        fds, self._own = self._own, []
        for fd in fds:
            os.close(fd)

    async def _said(self) -> str:
        process = self._process
        if process is None or process.stderr is None:
            return "it did not start"
        with suppress(ProcessLookupError):
            process.kill()
        tail = (await process.stderr.read(_INFO_LIMIT)).decode(errors="replace").strip()[-500:]
        return f"exit status {await process.wait()}: {tail or 'no output'}"


def _namespaces(pid: int, *, userns: bool) -> list[int]:
    """Descriptors of ``pid``'s network namespace and, with ``userns``, of the user namespace that owns it.

    The owner is asked of the network namespace itself: bubblewrap may move its child into a second, nested user
    namespace while setting up, and ``/proc/<pid>/ns/user`` would then name that one, where the network cannot be
    entered.
    """
    try:
        net = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SandboxError(f"the sandbox's network namespace is gone: {exc}", retryable=True,
                           reason="EgressUnavailable") from exc
    if not userns:
        return [net]
    try:
        return [net, fcntl.ioctl(net, NS_GET_USERNS)]
    except OSError as exc:
        os.close(net)
        raise SandboxError(f"could not find the user namespace of the sandbox's network: {exc}", retryable=True,
                           reason="EgressUnavailable") from exc


def _exited(pidfd: int) -> bool:
    """Whether the process behind ``pidfd`` has exited (its pidfd reads as ready then)."""
    return bool(select.select([pidfd], [], [], 0)[0])


async def _read_to_end(fd: int, timeout: float, limit: int = _INFO_LIMIT) -> bytes:
    """Read a pipe until its writers are gone or ``limit`` bytes came, without blocking the event loop.

    Raises TimeoutError when neither happened within ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    deadline = loop.time() + timeout
    data = b""
    while len(data) < limit:
        try:
            chunk = os.read(fd, limit - len(data))
        except BlockingIOError:
            await _readable(fd, max(deadline - loop.time(), 0))
            continue
        if not chunk:
            break
        data += chunk
    return data


async def _readable(fd: int, timeout: float) -> None:
    """Wait until ``fd`` can be read (or its writers are gone); TimeoutError after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not readable.done():  # the reader may fire again before it is removed
            readable.set_result(None)

    loop.add_reader(fd, wake)
    try:
        # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancellation that arrives as the pipe turns readable
        async with asyncio.timeout(timeout):
            await readable
    finally:
        loop.remove_reader(fd)
