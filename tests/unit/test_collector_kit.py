"""The collector kit without a server: number() coercion, the sample emitter, the slow-refresh cadence,
the query runner (errors, refusals, a lost connection) and the typed metric-spec constructor."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from dbintel.agent.collectors.cadence import SLOW_REFRESH, SlowRefresh
from dbintel.agent.collectors.errors import secret_values
from dbintel.agent.collectors.metric_table import (
    CollectionResult,
    MetricSpec,
    MetricTable,
    QueryError,
    Sample,
    metric_spec,
)
from dbintel.agent.collectors.query_runner import ConnectionLost, QueryRunner, unreachable
from dbintel.agent.collectors.samples import SampleEmitter, float_number, number

# --- number() --------------------------------------------------------------------------------------


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_integral_text_and_ints_stay_exact_ints(value: int) -> None:
    for reading in (number(value), number(str(value)), number(str(value).encode())):
        assert reading == value and type(reading) is int


@given(st.floats(allow_nan=False))
def test_floats_and_their_text_read_back_as_the_same_float(value: float) -> None:
    assert number(value) == value
    assert number(repr(value)) == value


@given(st.one_of(st.none(), st.booleans(), st.text(max_size=20), st.binary(max_size=20), st.lists(st.integers())))
def test_number_never_raises_and_gives_a_number_or_none(value: Any) -> None:
    reading = number(value)
    assert reading is None or (isinstance(reading, (int, float)) and not isinstance(reading, bool))
    if isinstance(reading, float) and isinstance(value, (str, bytes)):
        assert not math.isnan(reading)  # NaN text is no reading


@pytest.mark.parametrize("value", [None, True, False, "", "ON", "nan", "NaN", b"x", [1], {"a": 1}])
def test_what_is_not_a_number_reads_as_none(value: Any) -> None:
    assert number(value) is None


def test_decimal_reads_as_float_and_a_typed_nan_passes() -> None:
    assert number(Decimal("1.25")) == 1.25 and isinstance(number(Decimal("1.25")), float)
    reading = number(float("nan"))  # the server said NaN
    assert isinstance(reading, float) and math.isnan(reading)


@given(st.one_of(st.integers(), st.floats(allow_nan=False)).map(str))
def test_typed_replies_never_read_text(text: str) -> None:
    assert number(text, text=False) is None
    assert float_number(text, text=False) is None


@given(st.one_of(st.none(), st.text(max_size=10), st.integers(), st.floats(allow_nan=False), st.booleans()))
def test_float_number_is_number_as_float(value: Any) -> None:
    exact, reading = number(value), float_number(value)
    assert (reading is None) == (exact is None)
    if exact is not None:
        assert isinstance(reading, float) and reading == float(exact)


# --- SampleEmitter ------------------------------------------------------------------------------------
GAUGE = MetricSpec("kit.gauge", "gauge", "1", "a gauge", "test", attributes=("kind",))
COUNTER = MetricSpec("kit.counter", "sum", "{ops}", "a counter", "test", monotonic=True)
TABLE = MetricTable([GAUGE, COUNTER])


def test_only_enabled_metrics_with_a_value_give_samples() -> None:
    emit = SampleEmitter(TABLE, {"kit.gauge"})
    emit("kit.gauge", "12", "a")
    emit("kit.gauge", None, "b")
    emit("kit.gauge", "ON", "c")
    emit("kit.counter", 5)
    assert emit.samples == [Sample(GAUGE, 12.0, ("a",))]
    assert isinstance(emit.samples[0].value, float)


def test_the_reader_decides_what_a_value_is() -> None:
    exact = SampleEmitter(TABLE, {"kit.counter"}, read=number)
    exact("kit.counter", "18446744073709551615")
    assert exact.samples[0].value == 2**64 - 1 and isinstance(exact.samples[0].value, int)

    def strict(value: Any) -> float:
        return float(value)

    emit = SampleEmitter(TABLE, {"kit.counter"}, read=strict)
    emit("kit.counter", None)  # None never reaches the reader
    with pytest.raises(ValueError):
        emit("kit.counter", "not a number")  # a strict reader makes a bad reply of it


def test_fields_are_one_sample_per_metric_and_field() -> None:
    emit = SampleEmitter(TABLE, {"kit.counter"})
    emit.fields((("kit.counter", "ops"), ("kit.gauge", "other")), {"ops": "7", "other": "1"})
    assert [(s.spec.name, s.value, s.attributes) for s in emit.samples] == [("kit.counter", 7.0, ())]


# --- SlowRefresh -------------------------------------------------------------------------------------
def test_a_slow_value_is_due_first_then_every_interval() -> None:
    refresh = SlowRefresh[str]()
    assert refresh.interval == SLOW_REFRESH
    assert refresh.due("sizes", 1000.0) and refresh.last("sizes") is None
    refresh.refreshed("sizes", 1000.0)
    assert not refresh.due("sizes", 1000.0 + SLOW_REFRESH - 1)
    assert refresh.due("sizes", 1000.0 + SLOW_REFRESH)
    assert refresh.due("catalog", 1000.0)  # keys are independent
    assert refresh.last("sizes") == 1000.0


@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 10_000)), max_size=30), st.floats(1, 1000))
def test_due_means_never_refreshed_or_an_interval_since(events: list[tuple[str, float]], interval: float) -> None:
    refresh = SlowRefresh[str](interval)
    last: dict[str, float] = {}
    for key, now in events:
        assert refresh.due(key, now) == (key not in last or now - last[key] >= interval)
        refresh.refreshed(key, now)
        last[key] = now


def test_keep_only_forgets_the_rest_and_says_which() -> None:
    refresh = SlowRefresh[tuple[str, ...]](10.0)
    for key in (("a",), ("b", "x"), ("c",)):
        refresh.refreshed(key, 0.0)
    assert refresh.keep_only({("b", "x")}) == [("a",), ("c",)]
    assert refresh.due(("a",), 1.0) and not refresh.due(("b", "x"), 1.0)


# --- QueryRunner -------------------------------------------------------------------------------------
class Refused(Exception):
    pass


class Gone(Exception):
    pass


def _describe(query: str, exc: BaseException, target: str | None) -> QueryError:
    reason = "permission" if isinstance(exc, Refused) else "connection" if isinstance(exc, Gone) else "bad_reply"
    return QueryError(query, reason, f"{target or '-'}: {type(exc).__name__}")


def _runner(**kwargs: Any) -> QueryRunner:
    return QueryRunner(_describe, lost=lambda error, exc: isinstance(exc, Gone), **kwargs)


async def _reply(value: Any = 3) -> Any:
    return value


async def _raise(exc: BaseException) -> Any:
    raise exc


async def test_a_reply_goes_through_read_and_its_samples_into_the_result() -> None:
    runner, result = _runner(), CollectionResult()
    assert await runner.run(result, 0.0, "q", _reply) == 3
    assert await runner.run(result, 0.0, "q", _reply, lambda reply: reply * 2) == 6
    sample = Sample(COUNTER, 1.0)
    assert await runner.emit(result, 0.0, "q", _reply, lambda reply: [sample] * reply) == 3
    assert result.samples == [sample] * 3 and not result.errors


async def test_a_failure_or_an_unreadable_reply_costs_only_its_query() -> None:
    runner, result = _runner(), CollectionResult()
    assert await runner.run(result, 0.0, "broken", lambda: _raise(ValueError("x"))) is None
    assert await runner.emit(result, 0.0, "unreadable", _reply, lambda reply: [reply["missing"]]) is None
    assert [(e.query, e.reason) for e in result.errors] == [("broken", "bad_reply"), ("unreadable", "bad_reply")]
    assert not result.samples and result.up


async def test_a_refusal_is_reported_once_then_retried_quietly_until_it_works() -> None:
    runner = _runner(retry_after=100.0)
    first, second, third = CollectionResult(), CollectionResult(), CollectionResult()
    await runner.run(first, 0.0, "q", lambda: _raise(Refused()), target="db1")
    assert [e.reason for e in first.errors] == ["permission"]
    assert not runner.allowed("q", 50.0, "db1") and runner.allowed("q", 50.0, "db2")
    assert await runner.run(second, 50.0, "q", _reply, target="db1") is None  # held: not even sent
    await runner.run(second, 100.0, "q", lambda: _raise(Refused()), target="db1")  # the retry, quietly
    assert not second.errors
    assert await runner.run(third, 200.0, "q", _reply, target="db1") == 3
    assert runner.refused.held() == frozenset()
    await runner.run(third, 201.0, "q", lambda: _raise(Refused()), target="db1")
    assert [e.reason for e in third.errors] == ["permission"]  # worked in between: news again


async def test_without_holding_every_refusal_is_reported_every_time() -> None:
    runner = _runner(hold_refusals=False)
    for now in (0.0, 1.0):
        result = CollectionResult()
        await runner.run(result, now, "q", lambda: _raise(Refused()))
        assert [e.reason for e in result.errors] == ["permission"]


async def test_a_lost_server_stops_the_collection_after_recording_why() -> None:
    runner, result = _runner(), CollectionResult()
    with pytest.raises(ConnectionLost):
        await runner.run(result, 0.0, "q", lambda: _raise(Gone()))
    assert [(e.query, e.reason) for e in result.errors] == [("q", "connection")]


def test_hold_reports_a_refusal_found_without_sending_the_query_once() -> None:
    runner = _runner()
    error = QueryError("perf", "unsupported", "switched off")
    first, second = CollectionResult(), CollectionResult()
    runner.hold(first, error, 0.0)
    runner.hold(second, error, 1.0)
    assert first.errors == [error] and not second.errors and not runner.allowed("perf", 1.0)


def test_unreachable_is_a_down_result_with_one_connection_error() -> None:
    result = unreachable("ConnectionRefusedError: no", statements=2)
    assert not result.up and result.statements == 2 and not result.samples
    assert result.errors == [QueryError("connect", "connection", "ConnectionRefusedError: no")]


# --- secrets and metric specs ------------------------------------------------------------------------
def test_secret_values_are_the_password_or_nothing() -> None:
    assert secret_values(SecretStr("hunter2")) == ("hunter2",)
    assert secret_values(None) == ()


def test_metric_spec_is_the_short_form_of_a_metric_spec() -> None:
    spec = metric_spec(
        "kit.x", "sum", "By", "d", "s", monotonic=True, attributes=("a",), enabled=False, tier="beyond", verified=("v",)
    )
    assert spec == MetricSpec(
        "kit.x", "sum", "By", "d", "s", True, ("a",), enabled_by_default=False, tier="beyond", verified_on=("v",)
    )
