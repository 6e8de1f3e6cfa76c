"""Webhooks: an asynchronous execution's result POSTed to its request's callback_url, signed, at least once.

A delivery is a row in the store, written in the transaction that records its execution
and due once that has finished: neither a restart nor a host's death loses it. Each host's
delivery loop claims due rows under a lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, as
the queue does), makes one attempt each and records it: delivered on a 2xx answer, else
retried with exponential backoff until ``max_attempts`` or ``max_age_hours``. A host that
dies during an attempt leaves a claim that expires (or that its restart gives back), and
the attempt is made again under the same delivery id, which receivers deduplicate by.

Deliveries reach only public addresses, and the networks the operator allows besides
(``AddressPolicy``); a literal address is refused already at submission. The HTTP client
is the ``WebhookSender`` the ops layer provides: no aiohttp in this layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import hmac
import ipaddress
import json
import logging
import re
import secrets
import socket
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Final, Protocol

import attrs

from sandboxd.config import WebhooksConfig
from sandboxd.service.store import DeliveryState, DueDelivery, ExecutionStore, StoreUnavailableError
from sandboxd.validation import InvalidFieldError, converter

log = logging.getLogger(__name__)

DELIVERY_HEADER: Final = "X-Sandboxd-Delivery"
TIMESTAMP_HEADER: Final = "X-Sandboxd-Timestamp"
SIGNATURE_HEADER: Final = "X-Sandboxd-Signature"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Carrier-grade NAT: neither private nor global, and the provider's network rather than the internet.
_SHARED: Final = ipaddress.ip_network("100.64.0.0/10")
# NAT64: an IPv6 address that reaches the IPv4 address in its last 32 bits.
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
# IPv4 in the forms inet_aton takes besides dotted quads (2130706433, 127.1, 0x7f.0.0.1).
_LEGACY_IPV4: Final = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}$", re.IGNORECASE)
_HINT: Final = "; webhooks go only to public addresses unless [webhooks] allow_networks includes it"
# A lease on a claimed delivery outlasts its attempt by this much.
_LEASE_MARGIN: Final = 30.0


class DeliveryRefusedError(Exception):
    """The address policy forbids where the callback URL points: no attempt is made, none retried."""


class DeliveryFailedError(Exception):
    """An attempt got no answer: no connection, a timeout, a broken response."""


def literal_address(host: str) -> Address | None:
    """``host`` as an IP address if it is one (IPv4's legacy forms too), else None: a name."""
    text = host.removeprefix("[").removesuffix("]")
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(text)
    if _LEGACY_IPV4.match(text):
        with contextlib.suppress(OSError):
            return ipaddress.IPv4Address(socket.inet_aton(text))
    return None


def _embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address reaches (IPv4-mapped, NAT64), if it is one of those."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _shown(address: Address) -> str:
    """An address as messages spell it: an IPv4-mapped one in dotted form, whatever Python's version."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"  # Python 3.13 writes it so, 3.11 as ::ffff:c0a8:1
    return str(address)


def non_public(address: Address) -> str | None:
    """What makes ``address`` other than a public unicast address ("loopback", "private", ...), or None."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return non_public(embedded)
    if isinstance(address, ipaddress.IPv6Address) and address.sixtofour is not None:
        inner = non_public(address.sixtofour)
        if inner is not None:
            return f"6to4 of {inner}"
    # Most specific first: 127.0.0.1 is private too, and 169.254.0.0/16 as well.
    kinds = (
        (address.is_loopback, "loopback"),
        (address.is_unspecified, "unspecified"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address in _SHARED, "shared (carrier-grade NAT)"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (not address.is_global, "not globally routable"),
    )
    return next((kind for matches, kind in kinds if matches), None)


@attrs.frozen
class AddressPolicy:
    """Where deliveries may go: public addresses, and the networks the operator allows besides."""

    allowed: tuple[Network, ...] = ()

    @classmethod
    def from_config(cls, settings: WebhooksConfig) -> AddressPolicy:
        """The policy of the ``[webhooks]`` section (``allow_networks``)."""
        return cls(tuple(ipaddress.ip_network(network) for network in settings.allow_networks))

    def refusal(self, address: Address) -> str | None:
        """Why no delivery may go to ``address``, or None when it may."""
        embedded = _embedded_ipv4(address)
        candidates = {address, embedded or address}
        if any(c.version == n.version and c in n for c in candidates for n in self.allowed):
            return None
        kind = non_public(address)
        shown = f"{_shown(address)} ({embedded})" if embedded else str(address)
        return None if kind is None else f"{shown} is not a public address ({kind})"

    def check_host(self, host: str) -> None:
        """Refuse ``host`` if it is an IP address the policy forbids (names are checked once resolved)."""
        address = literal_address(host)
        reason = None if address is None else self.refusal(address)
        if reason is not None:
            raise DeliveryRefusedError(reason + _HINT)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of ``{timestamp}.{body}``.

    The timestamp is signed with the body, so that a receiver can refuse an old delivery replayed.
    """
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class WebhookSender(Protocol):
    """The HTTP client deliveries go through (the ops layer's, on aiohttp)."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """POST ``body`` to ``url`` and return the answer's status (a redirect is an answer, not followed).

        Raises ``DeliveryRefusedError`` where the policy forbids the address (the name resolved
        only to such), ``DeliveryFailedError`` where no answer came.
        """


class DeliveryObserver(Protocol):
    """What the delivery loop tells an observer (metrics) about attempts and deliveries."""

    def webhook_attempt(self, result: str) -> None:
        """An attempt ended: delivered, http_error (not 2xx), network_error, refused or internal_error."""

    def webhook_done(self, state: DeliveryState) -> None:
        """A delivery is done for good: delivered, or failed (given up)."""


@attrs.frozen
class _Outcome:
    """How one attempt went."""

    result: str
    status: int | None = None
    error: str | None = None
    # Retrying cannot help: the policy refused the address, or the key has no secret any more.
    final: bool = False

    @property
    def delivered(self) -> bool:
        return self.result == "delivered"


class Webhooks:
    """Checks callback URLs at submission, and delivers finished executions' results to them."""

    def __init__(
        self,
        store: ExecutionStore,
        sender: WebhookSender,
        policy: AddressPolicy,
        *,
        settings: WebhooksConfig,
        secret_for: Callable[[str], str | None],
        observer: DeliveryObserver,
        poll: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._sender = sender
        self._policy = policy
        self._settings = settings
        self._secret_for = secret_for
        self._observer = observer
        self._poll = poll
        self._clock = clock
        self._lease = settings.timeout + _LEASE_MARGIN
        self._wake = asyncio.Event()
        self._in_flight: set[str] = set()
        # When this host's own retries are due: it looks again then rather than at its next poll.
        self._retries: list[float] = []
        self._jitter = secrets.SystemRandom()

    def check(self, owner: str, url: str) -> None:
        """Refuse (a 400 naming callback_url) a callback that could never be delivered for ``owner``."""
        if self._secret_for(owner) is None:
            raise InvalidFieldError(
                "callback_url",
                "cannot be used with this API key: no webhook secret is configured for it "
                "(webhook_secret in its [[api_keys]] entry, or [webhooks] secret)",
            )
        try:
            self._policy.check_host(urllib.parse.urlsplit(url).hostname or "")
        except DeliveryRefusedError as error:
            raise InvalidFieldError("callback_url", str(error)) from None

    def wake(self) -> None:
        """An execution with a callback has finished: look for due deliveries now."""
        self._wake.set()

    async def release(self) -> None:
        """Give back this host's claims (at shutdown): another host, or the next start, makes them."""
        try:
            await self._store.release_deliveries()
        except StoreUnavailableError as error:
            log.warning("webhook deliveries: claims not given back (%s); they expire", error)

    async def deliver_forever(self) -> None:
        """Claim due deliveries within ``concurrency`` and attempt each; woken by results, else polled."""
        # Whatever this host held before (a killed daemon, or this loop before a restart) is due again.
        await self.release()
        async with asyncio.TaskGroup() as attempts:
            while True:
                self._wake.clear()
                free = self._settings.concurrency - len(self._in_flight)
                if free > 0:
                    try:
                        due = await self._store.claim_deliveries(free, self._lease)
                    except StoreUnavailableError as error:
                        log.warning("webhook deliveries: %s", error)
                        due = []
                    for delivery in due:
                        self._in_flight.add(delivery.delivery_id)
                        attempts.create_task(self._attempt(delivery), name=f"webhook {delivery.delivery_id}")
                now = self._clock()
                while self._retries and self._retries[0] <= now:
                    heapq.heappop(self._retries)
                until = min([self._poll, *(when - now for when in self._retries[:1])])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), until)

    async def _attempt(self, delivery: DueDelivery) -> None:
        try:
            try:
                outcome = await self._send(delivery)
            except Exception as error:
                # A defect met by this delivery fails its attempt (retried, then given up); the
                # loop and the other deliveries go on, rather than trip over it after every restart.
                log.exception("webhook delivery %s: the attempt failed unexpectedly", delivery.delivery_id)
                outcome = _Outcome("internal_error", error=f"internal error ({type(error).__name__})")
            await self._record(delivery, outcome)
        except StoreUnavailableError as error:
            # Unrecorded: the claim expires, and the attempt is made again (at least once).
            log.warning("webhook delivery %s: attempt not recorded (%s)", delivery.delivery_id, error)
        finally:
            self._in_flight.discard(delivery.delivery_id)
            self._wake.set()

    async def _send(self, delivery: DueDelivery) -> _Outcome:
        secret = self._secret_for(delivery.owner)
        if secret is None:
            error = f"no webhook secret is configured for the key {delivery.owner!r} any more"
            return _Outcome("refused", error=error, final=True)
        # The same document GET /api/v1/executions/{id} answers with.
        body = json.dumps(converter.unstructure(delivery.result)).encode()
        timestamp = str(int(self._clock()))
        headers = {
            "Content-Type": "application/json",
            DELIVERY_HEADER: delivery.delivery_id,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(secret, timestamp, body),
        }
        try:
            status = await self._sender.post(delivery.url, body, headers)
        except DeliveryRefusedError as error:
            return _Outcome("refused", error=str(error), final=True)
        except DeliveryFailedError as error:
            return _Outcome("network_error", error=str(error))
        if 200 <= status < 300:
            return _Outcome("delivered", status=status)
        redirect = " (a redirect: not followed)" if 300 <= status < 400 else ""
        return _Outcome("http_error", status=status, error=f"answered HTTP {status}{redirect}")

    def _backoff(self, attempts: int) -> float:
        """The pause after the ``attempts``-th failed attempt: doubling, capped, jittered (no stampedes)."""
        settings = self._settings
        pause = min(settings.first_retry_seconds * 2.0 ** min(attempts - 1, 60), settings.max_retry_seconds)
        return pause * self._jitter.uniform(0.8, 1.0)

    async def _record(self, delivery: DueDelivery, outcome: _Outcome) -> None:
        attempts = delivery.attempts + 1
        now = self._clock()
        next_at = now + (0.0 if outcome.delivered else self._backoff(attempts))
        deadline = delivery.finished_at + self._settings.max_age_hours * 3600
        if outcome.delivered:
            state = DeliveryState.DELIVERED
        elif outcome.final or attempts >= self._settings.max_attempts or next_at > deadline:
            state = DeliveryState.FAILED
        else:
            state = DeliveryState.PENDING
        recorded = await self._store.record_attempt(
            delivery.delivery_id,
            state=state,
            status=outcome.status,
            error=outcome.error,
            next_attempt_at=next_at,
        )
        self._observer.webhook_attempt(outcome.result)
        what = f"webhook delivery {delivery.delivery_id} of {delivery.execution_id}, attempt {attempts}"
        if not recorded:
            log.warning("%s: its claim expired meanwhile; another attempt records the outcome", what)
        elif state is DeliveryState.PENDING:
            heapq.heappush(self._retries, next_at)
            log.warning("%s: %s; retried in %.0f s", what, outcome.error, next_at - now)
        else:
            self._observer.webhook_done(state)
            if state is DeliveryState.DELIVERED:
                log.info("%s: delivered (HTTP %s)", what, outcome.status)
            else:
                log.warning("%s: %s; given up", what, outcome.error)
