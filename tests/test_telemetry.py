"""Metrics at /metrics and the one structured log line per execution."""

from __future__ import annotations

import json
import logging

import pytest

from sandboxd.engine.engine import Engine, Timings
from sandboxd.models import ExecutionResult, ExecutionStatus, Kind
from sandboxd.ops.logging import EXECUTION_FIELDS, JsonFormatter, TextFormatter
from sandboxd.ops.metrics import Metrics
from tests.helpers import Client, execute, finish_cleanups, metrics, samples


@pytest.mark.integration
async def test_metrics_count_executions(http: Client, headers: dict[str, str], engine: Engine) -> None:
    """An execution moves the counter for its language and status and the timing histograms."""
    before = await metrics(http)
    status, _ = await execute(http, headers, code="print('measured')", language="python")
    assert status == 200
    await finish_cleanups(engine)  # the sandbox is removed after the response: its teardown is timed then
    after = await metrics(http)
    counter = 'sandboxd_executions_total{language="python",status="completed"}'
    # A labelled counter appears with its first count: before this suite's first Python run, it is absent.
    assert after[counter] == before.get(counter, 0.0) + 1
    for histogram in ("queue_wait", "sandbox_setup", "run", "sandbox_teardown"):
        name = f"sandboxd_{histogram}_seconds_count"
        assert after[name] >= before[name] + 1, name
    for gauge in (
        "sandboxd_executions_in_flight",
        "sandboxd_queue_depth",
        "sandboxd_rate_limited_requests_total",
    ):
        assert gauge in after, f"{gauge} is not exposed"
        assert after[gauge] >= 0, gauge


def result(status: ExecutionStatus = ExecutionStatus.COMPLETED) -> ExecutionResult:
    """A finished result carrying output that must stay out of the logs."""
    return ExecutionResult(
        execution_id="e-1", stdout="SECRET-OUTPUT", stderr="", exit_code=0, execution_time=0.2,
        language="python", session_id=None, status=status,
    )  # fmt: skip


def test_one_log_line_per_execution_without_code(caplog: pytest.LogCaptureFixture) -> None:
    """INFO: id, language, status and durations; never code, stdin or output."""
    caplog.set_level(logging.INFO, logger="sandboxd.executions")
    Metrics().finished(
        result(),
        Kind.SYNC,
        Timings(0.01, 0.3, 0.2),
        debug_fields={"code": "SECRET-CODE", "stdin": "SECRET-IN"},
    )
    (record,) = caplog.records
    fields = getattr(record, EXECUTION_FIELDS)
    assert fields == {
        "execution_id": "e-1", "kind": "sync", "language": "python", "status": "completed", "exit_code": 0,
        "queue_wait_seconds": 0.01, "setup_seconds": 0.3, "run_seconds": 0.2,
    }  # fmt: skip
    text = TextFormatter("%(message)s").format(record)
    assert text.startswith("execution finished execution_id=e-1 kind=sync language=python status=completed")
    assert "SECRET" not in text
    document = json.loads(JsonFormatter().format(record))
    assert (document["execution_id"], document["status"], document["level"]) == ("e-1", "completed", "info")
    assert "SECRET" not in json.dumps(document)


def test_debug_logging_includes_code_and_output(caplog: pytest.LogCaptureFixture) -> None:
    """At DEBUG, and only then, the line carries code, stdin and output."""
    caplog.set_level(logging.DEBUG, logger="sandboxd.executions")
    Metrics().finished(
        result(), Kind.ASYNC, Timings(), debug_fields={"code": "SECRET-CODE", "stdout": "SECRET-OUTPUT"}
    )
    fields = getattr(caplog.records[0], EXECUTION_FIELDS)
    assert (fields["code"], fields["stdout"]) == ("SECRET-CODE", "SECRET-OUTPUT")


def test_containerd_errors_are_counted_by_method() -> None:
    """A failed containerd call counts under its service and method."""
    telemetry = Metrics()
    telemetry.containerd_error("/containerd.services.tasks.v1.Tasks/Kill")
    exposition = samples(telemetry.exposition().decode())
    assert (
        exposition['sandboxd_containerd_errors_total{method="containerd.services.tasks.v1.Tasks/Kill"}'] == 1
    )
