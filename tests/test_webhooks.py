"""Webhooks: signed deliveries of async results, retried, durable, only where the address policy allows."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import secrets
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import attrs
import pytest
from aiohttp import web
from multidict import CIMultiDict

from sandboxd.api.state import STORE
from sandboxd.config import Config, ConfigError, StoreConfig, WebhooksConfig, load_config
from sandboxd.models import ExecutionRequest, ExecutionResult, ExecutionStatus, Kind
from sandboxd.service.store import DeliveryRecord, DeliveryState, ExecutionStore, make_store, open_store
from sandboxd.service.webhooks import AddressPolicy, Webhooks, literal_address, non_public, signature
from sandboxd.supervisor import Supervisor
from sandboxd.validation import ValidationError, structure
from tests.daemons import Daemon, free_port
from tests.helpers import EXECUTE, Client, batch, execute, metrics, poll, post, submit, wait_for

SECRET = secrets.token_hex(32)
# Loopback is allowed for the tests' own receiver only; retries come quickly.
LOOPBACK_RECEIVER = WebhooksConfig(
    secret=SECRET, allow_networks=("127.0.0.1/32",), first_retry_seconds=0.2, max_retry_seconds=0.5
)


# -- the receiver -------------------------------------------------------------------------


@attrs.frozen
class Received:
    """One request the receiver got."""

    path: str
    headers: CIMultiDict[str]
    body: bytes


def verify(secret: str, headers: CIMultiDict[str], body: bytes, tolerance: float = 300) -> bool:
    """The README's verification: the signature over timestamp and body, and a recent timestamp."""
    timestamp = headers["X-Sandboxd-Timestamp"]
    signed = timestamp.encode() + b"." + body
    expected = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(timestamp)) <= tolerance
    return hmac.compare_digest(expected, headers["X-Sandboxd-Signature"]) and fresh


class Receiver:
    """A webhook receiver on 127.0.0.1: records every request, answers each with the next status queued.

    Without a status queued it answers 204; a 3xx points at /elsewhere, which must never be reached.
    """

    def __init__(self, *statuses: int) -> None:
        self.received: list[Received] = []
        self._statuses = list(statuses)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, port: int = 0) -> None:
        """Listen on ``port`` of 127.0.0.1 (any free one for 0)."""
        app = web.Application()
        app.router.add_post("/hook", self._answer)
        app.router.add_post("/elsewhere", self._answer)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = port or int(self._runner.addresses[0][1])

    def url(self, host: str = "127.0.0.1") -> str:
        """The callback URL of the receiver's /hook, with ``host`` as its host."""
        return f"http://{host}:{self.port}/hook"

    async def _answer(self, request: web.Request) -> web.Response:
        self.received.append(Received(request.path, request.headers.copy(), await request.read()))
        status = self._statuses.pop(0) if self._statuses else 204
        location = {"Location": f"http://127.0.0.1:{self.port}/elsewhere"} if 300 <= status < 400 else {}
        return web.Response(status=status, headers=location)

    async def got(self, count: int) -> list[Received]:
        """Wait until ``count`` requests have come; return them."""

        async def probe() -> list[Received]:
            return list(self.received)

        return await poll(probe, lambda found: len(found) >= count, f"{count} requests at the receiver")

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()


MakeReceiver = Callable[..., Awaitable[Receiver]]


@pytest.fixture
async def make_receiver() -> AsyncIterator[MakeReceiver]:
    """Start receivers answering with the statuses given (then 204), on ``port`` or any; stopped after."""
    started: list[Receiver] = []

    async def make(*statuses: int, port: int = 0) -> Receiver:
        receiver = Receiver(*statuses)
        started.append(receiver)
        await receiver.start(port)
        return receiver

    yield make
    for receiver in started:
        await receiver.stop()


async def delivery_done(store: ExecutionStore, execution_id: str) -> DeliveryRecord:
    """Wait until the execution's delivery is delivered or given up; return its record."""

    async def probe() -> DeliveryRecord | None:
        return await store.delivery(execution_id)

    found = await poll(
        probe,
        lambda record: record is not None and record.state is not DeliveryState.PENDING,
        f"the delivery of {execution_id} being done",
    )
    assert found is not None
    return found


def store_of(http: Client) -> ExecutionStore:
    """The store of an in-process server."""
    app: web.Application = http.app
    return app[STORE]


# -- the address policy, signatures, validation and configuration (no daemon) -----------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "shared (carrier-grade NAT)"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("192.0.2.1", "private"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("64:ff9b::a00:1", "private"),
        ("2002:7f00:1::", "6to4 of loopback"),
    ],
)
def test_policy_refuses_what_is_not_public(address: str, kind: str) -> None:
    """Loopback, private, link-local, shared, unspecified, multicast and reserved addresses are refused."""
    parsed = ipaddress.ip_address(address)
    assert non_public(parsed) == kind
    refusal = AddressPolicy().refusal(parsed)
    assert refusal is not None
    assert refusal.startswith(f"{address} ")  # as written here: mapped ones dotted, on any Python
    assert refusal.endswith(f" is not a public address ({kind})")


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_policy_allows_public_addresses(address: str) -> None:
    """A public unicast address is allowed, an IPv4-mapped one too."""
    assert AddressPolicy().refusal(ipaddress.ip_address(address)) is None


def test_allowed_networks_are_exact() -> None:
    """Only the networks the operator allows open up: 127.0.0.1/32 is not 127.0.0.2, nor ::1."""
    policy = AddressPolicy.from_config(WebhooksConfig(allow_networks=("127.0.0.1/32", "10.1.0.0/16")))
    allowed = ("127.0.0.1", "::ffff:127.0.0.1", "10.1.200.3")
    assert [policy.refusal(ipaddress.ip_address(a)) for a in allowed] == [None] * 3
    refused = ("127.0.0.2", "::1", "10.2.0.1")
    assert all(policy.refusal(ipaddress.ip_address(a)) for a in refused)


def test_literal_addresses_in_every_spelling() -> None:
    """IPv4 in its legacy forms and bracketed IPv6 are addresses (checked without DNS); names are not."""
    loopback = ipaddress.ip_address("127.0.0.1")
    assert [literal_address(h) for h in ("127.0.0.1", "2130706433", "0x7f.1", "127.1")] == [loopback] * 4
    assert literal_address("[::1]") == ipaddress.ip_address("::1")
    assert [literal_address(h) for h in ("localhost", "example.com", "1e100.net")] == [None] * 3


def test_signature_is_the_documented_hmac() -> None:
    """The signature is sha256= and the HMAC-SHA256 of "timestamp.body", as a receiver recomputes it."""
    body = b'{"execution_id": "x"}'
    timestamp = str(int(time.time()))
    headers = CIMultiDict(
        {"X-Sandboxd-Timestamp": timestamp, "X-Sandboxd-Signature": signature(SECRET, timestamp, body)}
    )
    assert verify(SECRET, headers, body)
    assert not verify(SECRET, headers, body + b" ")
    assert not verify("another secret of thirty-two chars", headers, body)
    stale = str(int(time.time()) - 3600)
    old = CIMultiDict({"X-Sandboxd-Timestamp": stale, "X-Sandboxd-Signature": signature(SECRET, stale, body)})
    assert not verify(SECRET, old, body)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/hook", "must be an absolute http:// or https:// URL"),
        ("example.com/hook", "must be an absolute http:// or https:// URL"),
        ("https://user:pass@example.com/", "must not contain credentials (user:password@); receivers verify"),
        ("https://example.com/hook#top", "must not have a #fragment"),
        ("https://exa mple.com/", "must be ASCII without spaces or control characters"),
        ("https://bücher.example/", "must be ASCII without spaces or control characters"),
        ("https://example.com:99999/", "has an invalid port"),
        ("https://a..b/", "must name a host: letters, digits, - _ and ."),
        ("https://example.com/" + "a" * 2048, "must be 1 to 2048 characters"),
        ("", "must be 1 to 2048 characters"),
        (42, "expected a string"),
    ],
)
def test_callback_url_syntax_is_validated(url: object, message: str) -> None:
    """A callback URL that is not plain http or https to a host is refused, the message naming the field."""
    with pytest.raises(ValidationError) as refused:
        structure({"code": "print(1)", "language": "python", "callback_url": url}, ExecutionRequest)
    assert len(refused.value.problems) == 1
    assert refused.value.problems[0].startswith(f"callback_url: {message}")


def test_callback_urls_that_are_accepted() -> None:
    """URLs of http and https with a port, a query, an IPv6 literal or a punycode name are accepted."""
    for url in ("https://example.com/hook?x=1", "http://10.0.0.1:8080/", "http://[2001:db8::1]/h",
                "https://xn--bcher-kva.example/"):  # fmt: skip
        request = structure({"code": "1", "language": "python", "callback_url": url}, ExecutionRequest)
        assert request.callback_url == url


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        ('[webhooks]\nsecret = "short"', "webhooks.secret: must be at least 32 characters"),
        (
            '[webhooks]\nallow_networks = ["127.0.0.1/8"]',
            "webhooks.allow_networks: '127.0.0.1/8' is not a network like 10.0.0.0/8 (127.0.0.1/8 has host",
        ),
        (
            "[webhooks]\nfirst_retry_seconds = 10\nmax_retry_seconds = 5",
            "webhooks.max_retry_seconds: must be at least first_retry_seconds (10)",
        ),
        (
            f'[[api_keys]]\nname = "ci"\nsha256 = "{"0" * 64}"\nwebhook_secret = "also short"',
            "api_keys[0].webhook_secret: must be at least 32 characters (e.g. `openssl rand -hex 32`)",
        ),
    ],
)
def test_webhook_configuration_is_validated(tmp_path: Path, toml: str, problem: str) -> None:
    """Short secrets, networks that are not networks and backoffs that shrink are refused by name."""
    path = tmp_path / "config.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path, {})
    assert len(refused.value.problems) == 1
    assert refused.value.problems[0].startswith(problem)


def test_each_key_signs_with_its_own_secret_else_the_daemons(tmp_path: Path) -> None:
    """A key's webhook_secret signs its deliveries; other keys use [webhooks] secret, or have none."""
    own, shared = "k" * 32, "d" * 32
    path = tmp_path / "config.toml"
    keys = "".join(
        f'[[api_keys]]\nname = "{name}"\nsha256 = "{"0" * 63}{n}"\n{extra}'
        for n, (name, extra) in enumerate([("a", f'webhook_secret = "{own}"\n'), ("b", "")])
    )
    path.write_text(keys)
    alone = load_config(path, {})
    assert (alone.webhook_secret("a"), alone.webhook_secret("b"), alone.webhook_secret("dev-1")) == (
        own,
        None,
        None,
    )
    environ = {"SANDBOXD_WEBHOOKS_SECRET": shared, "SANDBOXD_WEBHOOKS_ALLOW_NETWORKS": "10.0.0.0/8, ::1/128"}
    with_default = load_config(path, environ)
    assert (with_default.webhook_secret("a"), with_default.webhook_secret("b")) == (own, shared)
    assert with_default.webhooks.allow_networks == ("10.0.0.0/8", "::1/128")
    assert "d" * 32 not in repr(with_default)


def test_the_example_configuration_has_the_defaults() -> None:
    """systemd/config.example.toml's [webhooks] is what the daemon does without one."""
    example = Path(__file__).resolve().parent.parent / "systemd" / "config.example.toml"
    assert load_config(example, {}).webhooks == WebhooksConfig()


# -- deliveries in the store, on SQLite and on PostgreSQL ---------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
async def hosts(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[list[ExecutionStore]]:
    """Two hosts' stores on one fresh database (SQLite file or PostgreSQL schema), opened."""
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'db.sqlite3'}"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    stores = [make_store(Config(store=StoreConfig(url=url)), host) for host in ("host-a", "host-b")]
    for store in stores:
        await store.open()
    yield stores
    for store in stores:
        await store.close()


def finished(execution_id: str) -> ExecutionResult:
    """A completed result."""
    return ExecutionResult(execution_id, "out\n", "", 0, 0.1, "python", None, ExecutionStatus.COMPLETED)


async def queue_with_callback(store: ExecutionStore, url: str = "https://example.com/hook") -> str:
    """Queue an asynchronous execution with a callback URL; return its id."""
    execution_id = str(uuid.uuid4())
    request = ExecutionRequest(code="print(1)", language="python", callback_url=url)
    await store.insert(execution_id, "alice", Kind.ASYNC, request, "python", ExecutionStatus.QUEUED)
    return execution_id


async def test_delivery_is_due_once_finished_and_claimed_by_one_host(hosts: list[ExecutionStore]) -> None:
    """The delivery is written with the execution, due at its result, claimed once, retried, then purged."""
    a, b = hosts
    execution_id = await queue_with_callback(a)
    record = await a.delivery(execution_id)
    assert record is not None
    assert (record.state, record.attempts, record.url) == (
        DeliveryState.PENDING,
        0,
        "https://example.com/hook",
    )
    assert await a.claim_deliveries(10, 30) == []  # no result yet

    await a.finish(finished(execution_id))
    [due] = await a.claim_deliveries(10, 30)
    assert (due.delivery_id, due.owner, due.attempts) == (record.delivery_id, "alice", 0)
    assert due.result == finished(execution_id)
    assert await b.claim_deliveries(10, 30) == []  # held by host-a

    retry_at = time.time() + 3600
    assert await a.record_attempt(
        due.delivery_id,
        state=DeliveryState.PENDING,
        status=500,
        error="answered HTTP 500",
        next_attempt_at=retry_at,
    )
    retried = await a.delivery(execution_id)
    assert retried is not None
    assert (retried.state, retried.attempts, retried.last_status, retried.last_error) == (
        DeliveryState.PENDING, 1, 500, "answered HTTP 500",
    )  # fmt: skip
    assert retried.next_attempt_at == retry_at
    assert await b.claim_deliveries(10, 30) == []  # due in an hour
    assert not await a.record_attempt(
        due.delivery_id, state=DeliveryState.DELIVERED, status=200, error=None, next_attempt_at=0
    ), "the first record gave the claim back"
    await a.purge(time.time() + 1)
    assert await a.delivery(execution_id) is None


async def test_an_expired_or_released_claim_is_taken_again(hosts: list[ExecutionStore]) -> None:
    """A host that died mid-attempt loses its claim at the lease's end; a restart gives it back at once."""
    a, b = hosts
    first, second = await queue_with_callback(a), await queue_with_callback(a)
    for execution_id in (first, second):
        await a.finish(finished(execution_id))
    [held] = await a.claim_deliveries(1, 3600)
    [short] = await a.claim_deliveries(1, 0.05)
    assert (held.execution_id, short.execution_id) == (first, second)
    lost = await poll(lambda: b.claim_deliveries(10, 30), bool, "the expired claim being taken")
    assert [d.delivery_id for d in lost] == [short.delivery_id]
    assert not await a.record_attempt(
        short.delivery_id, state=DeliveryState.DELIVERED, status=200, error=None, next_attempt_at=0
    ), "host-a's claim was lost: host-b records the outcome"
    assert await b.record_attempt(
        short.delivery_id, state=DeliveryState.DELIVERED, status=200, error=None, next_attempt_at=0
    )
    done = await b.delivery(second)
    assert done is not None
    assert (done.state, done.attempts, done.last_status) == (DeliveryState.DELIVERED, 1, 200)
    assert done.finished_at is not None
    assert await a.release_deliveries() == 1  # the first one, as a restarted host-a does
    assert [d.execution_id for d in await b.claim_deliveries(10, 30)] == [first]


class FakeSender:
    """A sender that reaches no network: it answers 204, or meets a defect for URLs of broken.example."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """Record the delivery; raise for broken.example."""
        assert verify(SECRET, CIMultiDict(headers), body)
        if "broken.example" in url:
            raise RuntimeError("a defect")
        self.sent.append((url, body))
        return 204


class Counted:
    """An observer that keeps what it is told."""

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self.done: list[DeliveryState] = []

    def webhook_attempt(self, result: str) -> None:
        """Keep the attempt's result."""
        self.attempts.append(result)

    def webhook_done(self, state: DeliveryState) -> None:
        """Keep the final state."""
        self.done.append(state)


async def test_a_defect_fails_one_delivery_and_the_loop_goes_on(hosts: list[ExecutionStore]) -> None:
    """An attempt that meets a defect fails that delivery (given up at max_attempts); the others are made."""
    store = hosts[0]
    broken = await queue_with_callback(store, "https://broken.example/hook")
    fine = await queue_with_callback(store)
    for execution_id in (broken, fine):
        await store.finish(finished(execution_id))
    sender, observer = FakeSender(), Counted()
    settings = WebhooksConfig(secret=SECRET, max_attempts=2, first_retry_seconds=0.05, max_retry_seconds=0.1)
    webhooks = Webhooks(
        store,
        sender,
        AddressPolicy(),
        settings=settings,
        secret_for=lambda _: SECRET,
        observer=observer,
        poll=0.05,
    )
    supervisor = Supervisor()
    delivering = supervisor.start("webhook deliveries", webhooks.deliver_forever)
    try:
        failed = await delivery_done(store, broken)
        delivered = await delivery_done(store, fine)
    finally:
        await delivering.stop()
    assert (failed.state, failed.attempts, failed.last_error) == (
        DeliveryState.FAILED, 2, "internal error (RuntimeError)",
    )  # fmt: skip
    assert (delivered.state, delivered.attempts) == (DeliveryState.DELIVERED, 1)
    assert [json.loads(body)["execution_id"] for _, body in sender.sent] == [fine]
    assert sorted(observer.attempts) == ["delivered", "internal_error", "internal_error"]
    assert sorted(observer.done) == [DeliveryState.DELIVERED, DeliveryState.FAILED]
    assert supervisor.restarts("webhook deliveries") == 0


# -- through the API, against a real daemon and a real receiver ---------------------------------


@pytest.mark.integration
async def test_validation_through_the_api(http: Client, headers: dict[str, str]) -> None:
    """Sync and batch requests refuse callback_url; an async one needs good syntax and a key with a secret."""
    hook = {"code": "print(1)", "language": "python", "callback_url": "https://example.com/hook"}
    status, body = await execute(http, headers, **hook)
    assert (status, body) == (
        400,
        {"detail": "callback_url: is only for asynchronous requests (POST /api/v1/execute/async)"},
    )
    status, body = await batch(http, headers, [{"code": "print(1)", "language": "python"}, hook])
    assert (status, body["detail"]) == (400, "item 1: callback_url: is only for asynchronous requests "
                                             "(POST /api/v1/execute/async)")  # fmt: skip
    status, body = await post(http, f"{EXECUTE}/async", {**hook, "callback_url": "gopher://x/"}, headers)
    assert (status, body["detail"]) == (400, "callback_url: must be an absolute http:// or https:// URL")
    status, body = await post(http, f"{EXECUTE}/async", hook, headers)
    assert (status, body["detail"]) == (
        400,
        "callback_url: cannot be used with this API key: no webhook secret is configured for it "
        "(webhook_secret in its [[api_keys]] entry, or [webhooks] secret)",
    )


@pytest.mark.integration
async def test_result_is_delivered_signed(
    make_server: Callable[..., Awaitable[Client]], headers: dict[str, str], make_receiver: MakeReceiver
) -> None:
    """The receiver gets the execution's result, the same JSON as GET, signed over timestamp and body."""
    receiver = await make_receiver()
    http = await make_server(webhooks=LOOPBACK_RECEIVER)
    execution_id = await submit(
        http, headers, code="print('hooked')", language="python", callback_url=receiver.url()
    )
    [delivery] = await receiver.got(1)
    result = await wait_for(http, headers, execution_id)
    assert result["stdout"] == "hooked\n"
    assert json.loads(delivery.body) == result
    assert delivery.headers["Content-Type"] == "application/json"
    assert verify(SECRET, delivery.headers, delivery.body)
    record = await delivery_done(store_of(http), execution_id)
    assert delivery.headers["X-Sandboxd-Delivery"] == record.delivery_id
    assert (record.state, record.attempts, record.last_status) == (DeliveryState.DELIVERED, 1, 204)
    found = await metrics(http)
    assert found['sandboxd_webhook_attempts_total{result="delivered"}'] == 1
    assert found['sandboxd_webhook_deliveries_total{state="delivered"}'] == 1
    assert len(receiver.received) == 1


@pytest.mark.integration
async def test_a_failed_attempt_is_retried_under_the_same_delivery_id(
    make_server: Callable[..., Awaitable[Client]], headers: dict[str, str], make_receiver: MakeReceiver
) -> None:
    """A receiver that first answers 500 gets the same delivery again, newly signed, until it takes it."""
    receiver = await make_receiver(500, 503)
    http = await make_server(webhooks=LOOPBACK_RECEIVER)
    execution_id = await submit(
        http, headers, code="print(7)", language="python", callback_url=receiver.url()
    )
    attempts = await receiver.got(3)
    record = await delivery_done(store_of(http), execution_id)
    assert len({attempt.headers["X-Sandboxd-Delivery"] for attempt in attempts}) == 1
    assert len({attempt.body for attempt in attempts}) == 1
    assert all(verify(SECRET, attempt.headers, attempt.body) for attempt in attempts)
    assert (record.state, record.attempts, record.last_status, record.last_error) == (
        DeliveryState.DELIVERED, 3, 204, None,
    )  # fmt: skip
    assert (await metrics(http))['sandboxd_webhook_attempts_total{result="http_error"}'] == 2


@pytest.mark.integration
async def test_redirects_are_not_followed(
    make_server: Callable[..., Awaitable[Client]], headers: dict[str, str], make_receiver: MakeReceiver
) -> None:
    """A 3xx answer is a failed attempt: the Location is never requested, and retries end at max_attempts."""
    receiver = await make_receiver(302, 307)
    http = await make_server(webhooks=attrs.evolve(LOOPBACK_RECEIVER, max_attempts=2))
    execution_id = await submit(
        http, headers, code="print(1)", language="python", callback_url=receiver.url()
    )
    record = await delivery_done(store_of(http), execution_id)
    assert [request.path for request in receiver.received] == ["/hook", "/hook"]
    assert (record.state, record.attempts, record.last_status) == (DeliveryState.FAILED, 2, 307)
    assert record.last_error == "answered HTTP 307 (a redirect: not followed)"
    assert (await metrics(http))['sandboxd_webhook_deliveries_total{state="failed"}'] == 1


@pytest.mark.integration
async def test_private_addresses_are_refused(
    make_server: Callable[..., Awaitable[Client]], headers: dict[str, str], make_receiver: MakeReceiver
) -> None:
    """Without allow_networks a literal private address is a 400, and a name resolving to loopback is refused.

    The name is accepted at submission (it is resolved only when delivering) and the
    delivery then fails at once, without a connection: the receiver on loopback gets nothing.
    """
    receiver = await make_receiver()
    http = await make_server(webhooks=attrs.evolve(LOOPBACK_RECEIVER, allow_networks=()))
    hint = "; webhooks go only to public addresses unless [webhooks] allow_networks includes it"
    for host, refusal in [
        ("127.0.0.1", "127.0.0.1 is not a public address (loopback)"),
        ("2130706433", "127.0.0.1 is not a public address (loopback)"),
        ("[::1]", "::1 is not a public address (loopback)"),
        ("10.0.0.7", "10.0.0.7 is not a public address (private)"),
        ("169.254.169.254", "169.254.169.254 is not a public address (link-local)"),
        ("[::ffff:192.168.0.1]", "::ffff:192.168.0.1 (192.168.0.1) is not a public address (private)"),
    ]:
        hook = {"code": "1", "language": "python", "callback_url": f"http://{host}/"}
        status, body = await post(http, f"{EXECUTE}/async", hook, headers)
        assert (status, body) == (400, {"detail": f"callback_url: {refusal}{hint}"}), host

    execution_id = await submit(
        http, headers, code="print(1)", language="python", callback_url=receiver.url("localhost")
    )
    record = await delivery_done(store_of(http), execution_id)
    assert (record.state, record.attempts, record.last_status) == (DeliveryState.FAILED, 1, None)
    assert record.last_error is not None
    assert record.last_error.startswith("localhost resolves only to refused addresses: ")
    assert "127.0.0.1 is not a public address (loopback)" in record.last_error
    assert (await metrics(http))['sandboxd_webhook_attempts_total{result="refused"}'] == 1
    assert receiver.received == []


@pytest.mark.integration
async def test_hosts_sharing_a_store_deliver_each_result_once(
    postgres_url: str,  # first: its schema is dropped only after the servers have stopped
    make_server: Callable[..., Awaitable[Client]],
    headers: dict[str, str],
    make_receiver: MakeReceiver,
) -> None:
    """Two hosts on one PostgreSQL, both looking for due deliveries all the time: each is made once."""
    receiver = await make_receiver()
    # Polling ten times a second, the host that ran an execution races the other for its delivery.
    store = StoreConfig(url=postgres_url, poll_seconds=0.1)
    first = await make_server(webhooks=LOOPBACK_RECEIVER, store=store)
    second = await make_server(webhooks=LOOPBACK_RECEIVER, store=store)
    ids = [
        await submit(http, headers, code=f"print({n})", language="python", callback_url=receiver.url())
        for n, http in enumerate([first, second] * 3)
    ]
    records = [await delivery_done(store_of(first), execution_id) for execution_id in ids]
    await asyncio.sleep(1)  # a second delivery of any of them would have come by now
    delivered = sorted(json.loads(request.body)["execution_id"] for request in receiver.received)
    assert delivered == sorted(ids)
    assert [(record.state, record.attempts) for record in records] == [(DeliveryState.DELIVERED, 1)] * 6
    made = [await metrics(http) for http in (first, second)]
    assert sum(m.get('sandboxd_webhook_attempts_total{result="delivered"}', 0) for m in made) == 6


@pytest.mark.integration
async def test_a_delivery_survives_a_daemon_killed(
    make_daemon: Callable[[int], Daemon], make_receiver: MakeReceiver
) -> None:
    """With the receiver down, the daemon is killed; restarted, it delivers the same delivery."""
    daemon = make_daemon(1)
    with daemon.config_path.open("a") as config:
        config.write(
            '[webhooks]\nallow_networks = ["127.0.0.1/32"]\n'
            "first_retry_seconds = 0.5\nmax_retry_seconds = 1\nmax_attempts = 100000\n"
            # No sandbox is booted ahead: the kill meets no boot half done (this test is about the store).
            "[pool]\nenabled = false\n"
        )
    daemon.environment["SANDBOXD_WEBHOOKS_SECRET"] = SECRET
    port = free_port()  # nothing listens there yet
    await daemon.start()
    async with daemon.session() as http:
        execution_id = await submit(
            http, daemon.headers, code="print('durable')", language="python",
            callback_url=f"http://127.0.0.1:{port}/hook",
        )  # fmt: skip
        result = await wait_for(http, daemon.headers, execution_id)
    reader = await open_store(daemon.config, "webhook-test-reader", migrate=False)
    try:

        async def attempts() -> int:
            record = await reader.delivery(execution_id)
            return record.attempts if record else 0

        await poll(attempts, lambda made: made >= 1, "an attempt at the receiver that is down")
        await daemon.stop(signal.SIGKILL)
        receiver = await make_receiver(port=port)
        await daemon.start()
        [delivery] = await receiver.got(1)
        record = await delivery_done(reader, execution_id)
    finally:
        await reader.close()
    assert json.loads(delivery.body) == result
    assert verify(SECRET, delivery.headers, delivery.body)
    assert delivery.headers["X-Sandboxd-Delivery"] == record.delivery_id
    assert record.state is DeliveryState.DELIVERED
    assert record.attempts >= 2
