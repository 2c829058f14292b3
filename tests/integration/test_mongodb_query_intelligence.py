"""MongoDB query intelligence against a real SecantusDB: currentOp samples, profiler and top top queries.

What SecantusDB serves (checked by hand, and by these tests): the `currentOp` command (each connection's
latest operation name, `command: {<verb>: 1}`, ns "", running time 0; filters ignored), not a live
$currentOp (the stage lists only itself); the profiler (`profile` command, system.profile entries with
ts, op, ns, command, millis); `top` (time and count per namespace and kind).
"""

from __future__ import annotations

import re

import pytest

from dbintel.agent.collectors.mongodb import TABLE, MongodbCollector
from dbintel.common.config import DatabaseConfig
from tests.servers import SecantusServer

pytestmark = pytest.mark.integration

EMAILS = [f"person{i}.secret@example.com" for i in range(3)]
SECRET_RE = re.compile(r"secret|example|@|\d{3,}")


def make_collector(server: SecantusServer, database: str) -> MongodbCollector:
    config = DatabaseConfig(name="docs", type="mongodb", endpoint=server.address, database=database)
    return MongodbCollector(config, password=None, enabled=TABLE.enabled())


def clean(texts) -> None:
    for text in texts:
        assert text is not None and not SECRET_RE.search(text), text


async def test_profiler_top_queries_counted_once_heaviest_first(secantus_server: SecantusServer):
    with secantus_server.client(appname="shopapp") as app:
        db = app["qi_profiled"]
        db.orders.insert_many([{"email": f"user{i}@example.com", "n": i} for i in range(3000)])
        db.command({"profile": 1, "slowms": 0})
        collector = make_collector(secantus_server, "qi_profiled")
        try:
            history = await collector.read_statement_stats(100, None)
            assert history.counters == () and history.errors == () and history.cursor is not None
            assert not history.cumulative

            for email in EMAILS:  # scans of 3000 documents: the heaviest
                list(db.orders.find({"email": {"$regex": email}, "n": {"$gt": 10}}))
            for i in range(5):
                db.tags.insert_one({"email": EMAILS[0], "card": "4111111111111111", "i": i})
            read = await collector.read_statement_stats(100, history.cursor)
            assert read.errors == () and not read.cumulative and read.statements == 1
            by_summary = {c.summary: c for c in read.counters}
            assert read.counters[0].summary == "find orders" and read.counters[0].calls == 3
            assert read.counters[0].namespace == "qi_profiled.orders"
            assert read.counters[0].text == '{"find":"orders","filter":{"email":{"$regex":"?"},"n":{"$gt":"?"}}}'
            assert by_summary["insert tags"].calls == 5
            clean(c.text for c in read.counters)

            again = await collector.read_statement_stats(100, read.cursor)  # counted once
            assert "find orders" not in {c.summary for c in again.counters}
        finally:
            db.command({"profile": 0})
            app.drop_database("qi_profiled")  # the session's server is shared: leave it as found
            await collector.close()


async def test_profiler_off_falls_back_to_top_said_once(secantus_server: SecantusServer):
    with secantus_server.client() as app:
        app["qi_top"].items.insert_one({"email": EMAILS[1]})
        list(app["qi_top"].items.find({"email": EMAILS[1]}))
    collector = make_collector(secantus_server, "qi_top")
    try:
        first = await collector.read_statement_stats(100, None)
        (notice,) = first.errors
        assert notice.reason == "unsupported" and 'db.getSiblingDB("qi_top").setProfilingLevel(1' in notice.message
        assert first.cumulative and first.statements >= 2  # profile -1 (first read), top, the connection's hellos
        by_id = {c.query_id: c for c in first.counters}
        assert by_id["qi_top.items queries"].calls >= 1 and by_id["qi_top.items queries"].summary == "find items"
        assert by_id["qi_top.items insert"].text == '{"insert":"items"}'
        clean(c.text for c in first.counters)
        second = await collector.read_statement_stats(100, None)
        assert second.errors == () and second.statements == 1  # said once; the level is re-read only slowly
    finally:
        with secantus_server.client() as app:
            app.drop_database("qi_top")
        await collector.close()


async def test_operations_show_as_samples_ours_excluded(secantus_server: SecantusServer):
    collector = make_collector(secantus_server, "qi_samples")
    try:
        await collector.read_query_samples(100)  # opens the connection (its hellos are counted too)
        with secantus_server.client(appname="orders-service") as app:
            list(app["qi_samples"].orders.find({"email": EMAILS[2]}))
            samples = await collector.read_query_samples(100)
        assert samples.errors == () and samples.statements == 1
        ours = [s for s in samples.sessions if s.application == "dbintel"]
        assert all(s.summary != "currentOp" for s in ours)  # our own currentOp is left out
        (session,) = [s for s in samples.sessions if s.application == "orders-service"]
        assert session.summary == "find" and session.state == "active" and session.client_address == "127.0.0.1"
        assert session.blocked_by == () and session.session_id
        clean(s.text for s in samples.sessions)
    finally:
        with secantus_server.client() as app:
            app.drop_database("qi_samples")
        await collector.close()
