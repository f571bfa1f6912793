"""Where a run's remote source may be fetched from: public addresses only, unless the operator allows more.

A source URL is fetched by the worker on the host, on the stage's behalf, even when the stage itself has no
network; so a URL naming ``127.0.0.1``, a private address or a cloud's metadata service would let a run reach
the host's own services and internal networks (server-side request forgery). Before anything is fetched the
host is resolved here, and every address it resolves to must be public: loopback, private (RFC 1918, IPv6
unique-local), link-local (``169.254.169.254`` included), shared (CGNAT ``100.64.0.0/10``), multicast,
unspecified and reserved addresses are refused, and so are the host's own addresses. An operator whose git
server lives on such a network names it in ``DEVART_SOURCE_ALLOWED_HOSTS`` (host names or CIDRs, comma-separated).

git is then held to the addresses checked here, so a name that resolves differently a moment later (DNS
rebinding) changes nothing: curl gets them through ``http.curloptResolve``, ssh through ``HostName`` (with
``HostKeyAlias`` so ``known_hosts`` still matches the name), and a ``git://`` URL is rewritten to the address.
Redirects are treated as errors (``http.followRedirects=false``, which also ignores dumb-http alternates), and
only the URL's own transport is allowed (``protocol.allow=never``): no ``ext::``, ``fd::`` or ``file://`` behind
the server's back. Behind an HTTP proxy (``http_proxy``, ``http.proxy``) the proxy resolves the name itself, and
its own policy applies.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import shlex
import socket
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from urllib.parse import urlsplit

import psutil

from devart.core.errors import SandboxError

#: The remote transports a source may use, and their default ports.
PORTS = {"http": 80, "https": 443, "ssh": 22, "git": 9418}
#: The setting that lets a source reach a host these checks refuse.
ALLOW_SETTING = "DEVART_SOURCE_ALLOWED_HOSTS"
#: Why a source was refused (``SandboxError.reason``, the activity's error type).
SOURCE_REFUSED = "SourceRefused"
#: scp-like ``user@host:path`` (git's ssh shorthand), the host possibly an ``[IPv6]`` literal.
_SCP = re.compile(r"^[\w.-]+@(\[[0-9A-Fa-f:.]+\]|[\w.-]+):")
#: git's ``<transport>::<address>`` remote-helper syntax (``ext::sh -c …``, ``fd::3``).
_HELPER = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")
#: The ranges ``ipaddress`` does not already call non-global, or that deserve their own name in a refusal.
_SHARED = ipaddress.ip_network("100.64.0.0/10")


class Unresolved(SandboxError):
    """The source's host name did not resolve; the network (or DNS) may be down, so trying again may help."""


@dataclass(frozen=True)
class Remote:
    """A remote source URL whose host was checked, and the addresses git must connect to."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]

    @property
    def address(self) -> str:
        """The one address a single-address transport (ssh, ``git://``) uses: IPv4 first, as most hosts route it."""
        return next((a for a in self.addresses if ipaddress.ip_address(a).version == 4), self.addresses[0])

    def git_options(self) -> list[str]:
        """``-c`` options that hold git to this transport, no redirects, and (for http) the checked addresses."""
        options = ["-c", "protocol.allow=never", "-c", f"protocol.{self.scheme}.allow=always",
                   "-c", "http.followRedirects=false"]
        if self.scheme in ("http", "https"):
            pinned = ",".join(f"[{a}]" if ":" in a else a for a in self.addresses)
            options += ["-c", f"http.curloptResolve={self.host}:{self.port}:{pinned}"]
        return options

    def clone_url(self) -> str:
        """The URL git clones: a ``git://`` URL points at the checked address, the others are pinned by options."""
        if self.scheme != "git":
            return self.url
        parts = urlsplit(self.url)
        host = f"[{self.address}]" if ":" in self.address else self.address
        return parts._replace(netloc=f"{host}:{self.port}").geturl()

    def ssh_command(self, environ: dict[str, str]) -> str | None:
        """``GIT_SSH_COMMAND`` connecting to the checked address (None for other transports).

        The operator's own ssh command (``GIT_SSH_COMMAND`` or ``GIT_SSH``) is kept, with the options appended.
        """
        if self.scheme != "ssh":
            return None
        base = environ.get("GIT_SSH_COMMAND") or (shlex.quote(environ["GIT_SSH"]) if environ.get("GIT_SSH")
                                                  else "ssh -o BatchMode=yes")
        alias = self.host if self.port == PORTS["ssh"] else f"[{self.host}]:{self.port}"
        return f"{base} -o HostName={shlex.quote(self.address)} -o HostKeyAlias={shlex.quote(alias)}"


def is_helper_url(url: str) -> bool:
    """Whether ``url`` asks git for a remote helper (``ext::``, ``fd::`` …), which runs arbitrary programs."""
    return bool(_HELPER.match(url))


def is_remote(url: str) -> bool:
    """Whether ``url`` names a remote repository (http, https, ssh, git or scp-like ``user@host:path``)."""
    return bool(_SCP.match(url)) or urlsplit(url).scheme.lower() in PORTS and "://" in url


def parse(url: str) -> tuple[str, str, int]:
    """The transport, host and port of a remote source URL; refuses one without a host or with a bad port."""
    scp = _SCP.match(url)
    if scp is not None:
        return "ssh", scp.group(1).strip("[]").lower(), PORTS["ssh"]
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in PORTS or not parts.hostname:
        raise SandboxError(f"source {url!r} is not a repository URL git may fetch: give an http, https, ssh or git "
                           "URL with a host, or a local directory", reason=SOURCE_REFUSED)
    try:
        port = parts.port or PORTS[scheme]
    except ValueError:
        raise SandboxError(f"source {url!r} has an invalid port", reason=SOURCE_REFUSED) from None
    return scheme, parts.hostname.rstrip(".").lower(), port


async def check(url: str, allowed: str) -> Remote:
    """Resolve ``url``'s host and refuse it unless every address is public or allowed by ``allowed``.

    Args:
        url: a remote source URL (``is_remote``).
        allowed: the operator's allowlist, host names or CIDRs separated by commas.

    Raises:
        Unresolved: the name did not resolve (retryable).
        SandboxError: the host is refused (not retryable), naming the address and the setting that allows it.
    """
    scheme, host, port = parse(url)
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Unresolved(f"could not resolve host {host} ({getattr(exc, 'strerror', None) or exc})") from None
    addresses = tuple(dict.fromkeys(str(ipaddress.ip_address(str(info[4][0]).split("%")[0])) for info in found))
    if not addresses:
        raise Unresolved(f"could not resolve host {host} (no addresses)")
    names, networks = allowlist(allowed)
    if host not in names:
        own = own_addresses()
        for address in addresses:
            parsed = ipaddress.ip_address(address)
            why = refusal(parsed, own)
            if why is not None and not any(parsed in network for network in networks):
                shown = host if host == address else f"{host} ({address})"
                raise SandboxError(
                    f"source {url} is refused: {shown} is {why}, and a run's source is never fetched from the "
                    "host's own services or private networks. If this git server is yours, allow it with "
                    f"{ALLOW_SETTING}={host} (host names or CIDRs, comma-separated) on the worker",
                    reason=SOURCE_REFUSED)
    return Remote(url=url, scheme=scheme, host=host, port=port, addresses=addresses)


def refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address, own: Iterable[str] = ()) -> str | None:
    """Why ``address`` may not be fetched from (``"a loopback address"`` …), or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    checks = [(address.is_unspecified, "an unspecified address"), (address.is_loopback, "a loopback address"),
              (address.is_link_local, "a link-local address (cloud metadata services live there)"),
              (address.is_multicast, "a multicast address"),
              (address.version == 4 and address in _SHARED, "a shared (CGNAT) address"),
              (address.is_private, "a private address"), (address.is_reserved, "a reserved address"),
              (not address.is_global, "not a public address"), (str(address) in set(own), "this host's own address")]
    return next((why for hit, why in checks if hit), None)


def allowlist(setting: str) -> tuple[set[str], list[ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    """The host names and networks of ``DEVART_SOURCE_ALLOWED_HOSTS``."""
    names: set[str] = set()
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for entry in (item.strip() for item in setting.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            names.add(entry.rstrip(".").lower())
    return names, networks


def own_addresses() -> set[str]:
    """Every address of the host's own interfaces: reaching one is reaching the host, public or not."""
    found: set[str] = set()
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                with suppress(ValueError):
                    found.add(str(ipaddress.ip_address(address.address.split("%")[0])))
    return found

