"""A RabbitMQ user per agent, so that the broker itself keeps an organisation's queues from other organisations' agents.

Without it every agent connects with ``AMQP_URL``'s credentials, and only devart's code (the queues an agent
declares, the API refusing another organisation's claim) keeps organisations apart: the host of any agent could
consume, purge or delete every queue. With ``DEVART_AMQP_ADMIN_URL`` set (RabbitMQ's management HTTP API), each
agent gets a user whose permissions cover its own organisation's exchanges and lanes only
(``Topology.agent_permissions``), and RabbitMQ refuses the rest with ``ACCESS_REFUSED``.

The password is never stored: it is derived from the agent's key (``broker_password``), which the agent holds and
devart knows only when it issues the key or when the agent presents it. So the user is set when an agent is
registered or its key rotated (the old password stops working), again whenever the agent asks for its broker
access with its key (``POST /v1/agent/broker``: agents registered before administration was configured, a broker
that was reset), and deleted with the agent: RabbitMQ then closes the user's connections.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from functools import lru_cache
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import httpx

from devart.core import settings
from devart.core.errors import ServiceUnavailable
from devart.core.messaging.topology import Topology

log = logging.getLogger(__name__)

#: Fixed label of the derivation: a password derived for another purpose from the same key never equals this one.
PASSWORD_LABEL = b"devart rabbitmq password v1"
#: Seconds to wait for one answer of the management API.
ADMIN_TIMEOUT_SECONDS = 10.0


class BrokerAdminUnavailable(ServiceUnavailable):
    """RabbitMQ's management API did not answer, or refused devart's administrator: nothing was changed in devart."""


def broker_password(agent_key: str) -> str:
    """The agent's RabbitMQ password: HMAC-SHA256 of a fixed label under its key. Never log it."""
    return hmac.new(agent_key.encode(), PASSWORD_LABEL, hashlib.sha256).hexdigest()


def broker_username(prefix: str, agent_name: str) -> str:
    """The agent's RabbitMQ user; under the deployment's prefix, as agent names are unique within a deployment."""
    return f"{prefix}.agent.{agent_name}"


def agent_of_user(prefix: str, user: str) -> str | None:
    """The agent whose broker user ``user`` is (``broker_username``), or None for any other user."""
    head = f"{prefix}.agent."
    name = user[len(head):] if user.startswith(head) else ""
    return name or None


def amqp_user(amqp_url: str) -> str:
    """The RabbitMQ user a connection to ``amqp_url`` authenticates as (aio-pika's ``guest`` when it names none).

    What a publisher puts in a message's ``user_id``: RabbitMQ refuses a publish whose ``user_id`` is not the
    connection's user, so the property tells the dead-letter collector who really sent a message.
    """
    return unquote(urlsplit(amqp_url).username or "") or "guest"


def vhost_of(amqp_url: str) -> str:
    """The virtual host an AMQP URL names (``amqp://h/`` and ``amqp://h`` both mean ``/``)."""
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def agent_amqp_url(amqp_url: str, username: str, password: str) -> str:
    """``amqp_url`` with the agent's own credentials instead of its own (host, port, vhost and options kept)."""
    parts = urlsplit(amqp_url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


class BrokerAdmin:
    """The management API calls devart makes about agents' users, in the vhost of ``AMQP_URL``."""

    def __init__(self, admin_url: str, amqp_url: str, topology: Topology) -> None:
        parts = urlsplit(admin_url)
        # Credentials go in the Authorization header, never in a URL that a log line or an error could show.
        self._auth = (unquote(parts.username or ""), unquote(parts.password or ""))
        self._base = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])).rstrip("/")
        self._vhost = vhost_of(amqp_url)
        self._topology = topology

    async def _call(self, http: httpx.AsyncClient, method: str, path: str, body: Any = None) -> httpx.Response:
        try:
            response = await http.request(method, f"{self._base}/api/{path}", json=body)
        except httpx.HTTPError as exc:
            raise BrokerAdminUnavailable(f"RabbitMQ's management API at {self._base} did not answer "
                                         f"({type(exc).__name__}): is rabbitmq_management enabled?") from None
        if response.status_code >= 400 and not (method == "DELETE" and response.status_code == 404):
            raise BrokerAdminUnavailable(f"RabbitMQ's management API refused {method} /api/{path.split('/')[0]}/…: "
                                         f"{response.status_code} {response.text[:200]}")
        return response

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(auth=self._auth, timeout=ADMIN_TIMEOUT_SECONDS)

    async def ensure_agent(self, agent_name: str, org: str, agent_key: str, *, new_key: bool) -> str:
        """Create or update the agent's user with the password its key derives and its organisation's permissions;
        returns the user name.

        With ``new_key`` (registered, rotated) an existing user is deleted first: RabbitMQ checks a password only
        when a connection opens, and closes a deleted user's connections itself, so whatever was opened with the
        old key's password ends here, with no race against the management API's connection statistics.
        """
        user = quote(broker_username(self._topology.prefix, agent_name), safe="")
        async with self._client() as http:
            if new_key:
                await self._call(http, "DELETE", f"users/{user}")
            await self._call(http, "PUT", f"users/{user}", {"password": broker_password(agent_key), "tags": ""})
            permissions = self._topology.for_org(org).agent_permissions()
            await self._call(http, "PUT", f"permissions/{quote(self._vhost, safe='')}/{user}", permissions)
        log.info("broker user of agent %s holds the permissions of organisation %s", agent_name, org)
        return broker_username(self._topology.prefix, agent_name)

    async def remove_agent(self, agent_name: str) -> None:
        """Delete the agent's user (absent is fine); RabbitMQ closes its connections."""
        user = quote(broker_username(self._topology.prefix, agent_name), safe="")
        async with self._client() as http:
            await self._call(http, "DELETE", f"users/{user}")
        log.info("broker user of agent %s deleted", agent_name)


def enforced() -> bool:
    """Whether agents connect as broker users of their own (``DEVART_AMQP_ADMIN_URL`` set)."""
    return admin() is not None


@lru_cache
def admin() -> BrokerAdmin | None:
    """The broker administration of this deployment, or None when ``DEVART_AMQP_ADMIN_URL`` is unset."""
    cfg = settings.amqp()
    if cfg.amqp_admin_url is None or not cfg.amqp_admin_url.get_secret_value():
        return None
    return BrokerAdmin(cfg.amqp_admin_url.get_secret_value(), cfg.amqp_url, Topology.from_settings())
