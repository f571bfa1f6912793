"""What a ``network: egress`` command's network looks like: its addresses, and the ranges closed to it.

Kept apart from ``sandboxes/egress.py``, which sets that network up with slirp4netns for each command: this
module holds only the policy (slirp's fixed addresses, the unreachable routes as an ``ip -batch`` script, the
resolver file), which the Kubernetes backend's egress policy shares (``NON_PUBLIC_IPV4``).
"""

from __future__ import annotations

import ipaddress
import os
from contextlib import suppress
from pathlib import Path

import psutil

#: Ranges a ``network: egress`` command never reaches (``ip route add unreachable``).
#: IPv4 that is not the public internet: this, private, shared, loopback, link-local, multicast and reserved
#: (the Kubernetes backend's egress policy excepts the same).
NON_PUBLIC_IPV4 = ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
                   "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4")
BLOCKED = (*NON_PUBLIC_IPV4, "::/0")
#: slirp's gateway: the host itself, seen from the sandbox.
GATEWAY = "10.0.2.2"
#: slirp's DNS forwarder, the sandbox's only resolver.
DNS = "10.0.2.3"
RESOLV_CONF = f"nameserver {DNS}\n".encode()
#: The interface slirp4netns creates in the sandbox, its address there, and its MTU (slirp4netns's fastest).
TAP = "tap0"
ADDRESS = "10.0.2.100/24"
MTU = 65520


def host_addresses() -> list[str]:
    """Every IPv4 address of the host's own interfaces (IPv6 is closed as a whole)."""
    found: set[str] = set()
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            with suppress(ValueError):
                parsed = ipaddress.ip_address(address.address.split("%")[0])
                if parsed.version == 4:
                    found.add(str(parsed))
    return sorted(found)


def route_script(addresses: list[str]) -> bytes:
    """``ip -batch`` input bringing the tap device up with the default route via slirp, then closing everything
    but public addresses and the slirp network itself (the gateway's route first, while it is reachable)."""
    blocked = [ipaddress.ip_network(network) for network in BLOCKED]
    own = [address for address in addresses if not any(ipaddress.ip_address(address) in net for net in blocked)]
    closed = [*BLOCKED, f"{GATEWAY}/32", *(f"{address}/32" for address in own)]
    return "".join([f"link set {TAP} mtu {MTU} up\n", f"address add {ADDRESS} dev {TAP}\n",
                    f"route add default via {GATEWAY} dev {TAP}\n",
                    *(f"route replace unreachable {network}\n" for network in dict.fromkeys(closed))]).encode()


def resolv_conf_path(path: Path = Path("/etc/resolv.conf")) -> Path:
    """Where the sandbox's resolver file goes: ``/etc/resolv.conf``, or the file it links to (say under /run)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path
