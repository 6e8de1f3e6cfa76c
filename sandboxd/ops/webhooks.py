"""Outgoing HTTP for webhook deliveries: aiohttp, reaching only the addresses the policy allows.

A name is resolved here, once per attempt, and aiohttp is handed only the addresses that
passed the policy, so the connection goes to a checked address: there is no second lookup
that a rebinding DNS server could answer differently. The Host header and TLS's server
name stay the URL's host. Redirects are not followed, proxies named in the environment are
not used, an attempt is bounded in time, and the answer's body is never read.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from typing import Final

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from sandboxd import __version__
from sandboxd.config import WebhooksConfig
from sandboxd.service.webhooks import AddressPolicy, DeliveryFailedError, DeliveryRefusedError

_ERROR_CHARS: Final = 300


class _PolicyResolver(AbstractResolver):
    """The system's resolver, keeping only the addresses the policy allows."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._resolver = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        allowed, refused = [], []
        for entry in found:
            try:
                reason = self._policy.refusal(ipaddress.ip_address(entry["host"]))
            except ValueError:
                reason = f"{entry['host']} is not an IP address"
            if reason is None:
                allowed.append(entry)
            else:
                refused.append(reason)
        if not allowed:
            raise DeliveryRefusedError(
                f"{host} resolves only to refused addresses: {'; '.join(sorted(set(refused)))}; webhooks go "
                "only to public addresses unless [webhooks] allow_networks includes them"
            )
        return allowed

    async def close(self) -> None:
        await self._resolver.close()


def _describe(error: Exception, settings: WebhooksConfig) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {settings.timeout:g} s"
    text = f"{type(error).__name__}: {error}".strip().rstrip(":")
    return text[:_ERROR_CHARS]


class HttpSender:
    """POSTs deliveries (a ``WebhookSender``); made inside the event loop, closed with ``close``."""

    def __init__(self, policy: AddressPolicy, settings: WebhooksConfig) -> None:
        self._policy = policy
        self._settings = settings
        connector = aiohttp.TCPConnector(
            resolver=_PolicyResolver(policy),
            # Every attempt resolves and checks afresh; no connection is kept to any receiver.
            use_dns_cache=False,
            force_close=True,
            limit=settings.concurrency,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=settings.timeout, sock_connect=settings.connect_timeout),
            headers={"User-Agent": f"sandboxd/{__version__} (webhook)"},
            trust_env=False,  # a proxy from HTTP_PROXY would connect where the policy never looked
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """POST ``body`` to ``url``; the answer's status. See ``WebhookSender``."""
        # aiohttp connects to an IP address without asking the resolver: it is checked here.
        self._policy.check_host(URL(url).host or "")
        try:
            async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as answer:
                return answer.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise DeliveryFailedError(_describe(error, self._settings)) from error

    async def close(self) -> None:
        """Close the session and its connections."""
        await self._session.close()
