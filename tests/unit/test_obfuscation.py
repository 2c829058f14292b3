"""The obfuscation kit (dbintel.agent.queries.obfuscation): no literal, value or data-holding key survives.

The property tests build statements, documents and commands whose every value carries a *secret*: a
digit, an '@', a non-ASCII letter or the marker "zqx", none of which occurs in the generators'
keywords, identifiers, field names or command names. So a secret's distinctive content in the output
means a leak, and the check is simply that the output holds no digit, '@', non-ASCII letter or "zqx".
"""

from __future__ import annotations

import json
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbintel.agent.queries.obfuscation import (
    PLACEHOLDER,
    ObfuscatedText,
    mongo_shape,
    mongo_summary,
    obfuscate_sql,
    query_summary,
    redis_command,
    redis_summary,
)

bounded = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------ secrets

# Printable text with every SQL metacharacter a literal could use to break out: quotes, backslashes,
# comment openers, dollar signs, semicolons; and unicode letters. No control characters: those fail
# closed on purpose (tested apart).
NOISE = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("abcXYZ '\"\\`$;-/*#(),.=%_!?{}[]")),
        st.characters(min_codepoint=0xA1, max_codepoint=0x2FFF, exclude_categories=["Cs", "Cc", "Zl", "Zp"]),
    ),
    max_size=12,
)
EMAIL = st.builds(
    lambda a, b, n: f"{a}.{b}{n}@example{n % 7}.com",
    st.sampled_from(["jane", "zqx"]),
    st.text("abc", min_size=1, max_size=4),
    st.integers(0, 999),
)
CARD = st.integers(4000_0000_0000_0000, 4999_9999_9999_9999).map(str)
UNICODE = st.text(alphabet="äöüßéñçøåЖЯ漢字", min_size=1, max_size=6)
SECRET = st.one_of(EMAIL, CARD, UNICODE, st.builds(lambda n: f"zqx{n}", st.integers(0, 10**6)))
LEAK = re.compile(r"[0-9@]|zqx|[^\x00-\x7f]", re.I)


def leaked(output: str) -> list[str]:
    return LEAK.findall(output)


# ---------------------------------------------------------------------------------------------- SQL

TABLES = ["orders", "customers", "line_items", "payments"]
COLUMNS = ["id", "email", "status", "amount", "created_at", "note"]


@st.composite
def string_literal(draw: st.DrawFn, dialect: str) -> str:
    content = draw(NOISE) + draw(SECRET) + draw(NOISE)
    if dialect == "postgresql":
        style = draw(st.sampled_from(["standard", "escape", "dollar", "tagged", "unicode"]))
        if style == "standard":  # standard_conforming_strings: only '' escapes, a backslash is itself
            return "'" + content.replace("'", "''") + "'"
        if style == "escape":
            quote = draw(st.sampled_from(["''", "\\'"]))
            return "E'" + content.replace("\\", "\\\\").replace("'", quote) + "'"
        if style == "unicode":
            return "U&'" + content.replace("\\", "\\\\").replace("'", "''") + "'"
        tag = "" if style == "dollar" else "tg"
        delimiter = f"${tag}$"
        body = content.replace(delimiter, "")
        if body.endswith("$"):  # `..$` + `$$` would end the string one character early
            body += " "
        return delimiter + body + delimiter
    quote = draw(st.sampled_from(["'", '"']))  # MySQL: "double quotes" are strings (ANSI_QUOTES off)
    doubled = draw(st.booleans())
    body = content.replace("\\", "\\\\").replace(quote, quote * 2 if doubled else "\\" + quote)
    introducer = draw(st.sampled_from(["", "", "_utf8mb4", "N"])) if quote == "'" else ""
    return introducer + quote + body + quote


@st.composite
def literal(draw: st.DrawFn, dialect: str) -> str:
    kind = draw(st.sampled_from(["string", "string", "int", "card", "float", "hex", "bits", "bool"]))
    if kind == "string":
        return draw(string_literal(dialect))
    if kind == "int":
        return str(draw(st.integers(-(10**9), 10**9)))
    if kind == "card":
        return draw(CARD)
    if kind == "float":
        value = draw(st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False))
        text = repr(value)
        return text if text[-2:] != ".0" else text[:-2] + ".5"
    if kind == "hex":
        digits = draw(st.text("0123456789abcdef", min_size=1, max_size=12)) + "7"
        forms = ["X'" + digits + ("" if len(digits) % 2 == 0 else "0") + "'", "0x" + digits]
        return draw(st.sampled_from(forms))
    if kind == "bits":
        bits = draw(st.text("01", min_size=1, max_size=12)) + "1"
        return draw(
            st.sampled_from(["B'" + bits + "'", "b'" + bits + "'"] + (["0b" + bits] if dialect == "mysql" else []))
        )
    # A boolean carries no secret, but its obfuscation is the point: a leak check can't see it.
    return draw(st.sampled_from(["TRUE", "FALSE"]))


@st.composite
def comment(draw: st.DrawFn, dialect: str) -> str:
    secret = draw(SECRET) + draw(NOISE)
    style = draw(st.sampled_from(["block", "line"] + (["hash", "bang"] if dialect == "mysql" else [])))
    if style in ("block", "bang"):
        body = secret
        while "*/" in body or "/*" in body:  # one pass can make a new pair out of its neighbours
            body = body.replace("*/", "").replace("/*", "")
        if body.endswith(("*", "/")):
            body += " "
        return ("/*! " if style == "bang" else "/* ") + body + " */"
    return ("-- " if style == "line" else "# ") + secret.replace("\n", " ") + "\n"


def cast(dialect: str, value: str) -> str:
    return f"{value}::int" if dialect == "postgresql" else f"CAST({value} AS CHAR)"


@st.composite
def sql_statement(draw: st.DrawFn, dialect: str, depth: int = 0) -> str:
    lit = literal(dialect)
    table = draw(st.sampled_from(TABLES))
    col = st.sampled_from(COLUMNS)
    in_list = ", ".join(draw(st.lists(lit, min_size=1, max_size=5)))
    where = [f"{draw(col)} = {draw(lit)}", f"{draw(col)} IN ({in_list})"]
    if draw(st.booleans()):
        where.append(f"{draw(col)} > {cast(dialect, draw(lit))}")
    if depth < 1 and draw(st.booleans()):
        where.append(f"{draw(col)} IN ({draw(sql_statement(dialect, depth + 1))})")
    kind = draw(st.sampled_from(["SELECT", "INSERT", "UPDATE", "DELETE"])) if depth == 0 else "SELECT"
    condition = " AND ".join(where)
    if kind == "SELECT":
        join = f" JOIN {draw(st.sampled_from(TABLES))} j ON j.id = t.id" if draw(st.booleans()) else ""
        text = f"SELECT t.{draw(col)}, {draw(lit)} FROM {table} t{join} WHERE {condition}"
        if draw(st.booleans()):
            text += f" LIMIT {draw(st.integers(1, 10**6))}"
    elif kind == "INSERT":
        rows = draw(st.lists(st.tuples(lit, lit), min_size=1, max_size=4))
        text = f"INSERT INTO {table} (email, note) VALUES " + ", ".join(f"({a}, {b})" for a, b in rows)
    elif kind == "UPDATE":
        text = f"UPDATE {table} SET {draw(col)} = {draw(lit)} WHERE {condition}"
    else:
        text = f"DELETE FROM {table} WHERE {condition}"
    if depth == 0:
        # Comments holding secrets, where no literal can be (" WHERE " never occurs in one).
        spots = draw(st.lists(st.sampled_from(["start", "where", "end"]), max_size=3, unique=True))
        if "where" in spots:
            text = text.replace(" WHERE ", f" {draw(comment(dialect))} WHERE ", 1)
        if "start" in spots:
            text = draw(comment(dialect)) + " " + text
        if "end" in spots:
            text = text + " " + draw(comment(dialect))
    return text


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
@bounded
@given(data=st.data())
def test_no_literal_survives_sql(dialect: str, data: st.DataObject) -> None:
    text = data.draw(sql_statement(dialect))
    out = obfuscate_sql(text, dialect)
    assert isinstance(out, ObfuscatedText)
    assert leaked(out) == [], (text, out)
    # Not just the placeholder: the generator writes valid statements, so they must come out readable.
    assert out.split(" ", 1)[0].upper() in ("SELECT", "INSERT", "UPDATE", "DELETE"), (text, out)
    summary = query_summary(text, dialect)
    assert leaked(summary) == [], (text, summary)
    assert summary.split(" ", 1)[0] in ("SELECT", "INSERT", "UPDATE", "DELETE"), (text, summary)
    # Truncation never cuts a placeholder open or lets anything through.
    short = obfuscate_sql(text, dialect, max_length=40)
    assert len(short) <= 40 and leaked(short) == []


# ------------------------------------------------------------------------------------ SQL examples

PG = "postgresql"
MY = "mysql"
SQL_EXAMPLES = [
    # (dialect, input, obfuscated, summary)
    (
        PG,
        "SELECT * FROM orders WHERE email = 'jane@example.com'",
        "SELECT * FROM orders WHERE email = ?",
        "SELECT orders",
    ),
    (PG, "SELECT 'it''s', E'it\\'s', E'a\\\\'", "SELECT ?, ?, ?", "SELECT"),
    (PG, "SELECT $$a 'quoted' $$, $fn$ body $$ inside $fn$ FROM t", "SELECT ?, ? FROM t", "SELECT t"),
    (PG, "SELECT U&'d\\0061t\\+000061', N'x'", "SELECT ?, ?", "SELECT"),
    (PG, "SELECT '42'::int, x::text, CAST('1' AS bigint)", "SELECT ?::int, x::text, CAST(? AS bigint)", "SELECT"),
    (
        PG,
        "SELECT X'1F', x'ff', B'1010', 0x1F, 0b101, 1_000, 0o17, 1.5e-3, .5, 5.",
        "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
        "SELECT",
    ),
    (PG, "SELECT true, FALSE, NULL", "SELECT ?, ?, NULL", "SELECT"),
    (
        PG,
        "SELECT a FROM t WHERE id = $1 AND b IN ($2, $3, $4)",
        "SELECT a FROM t WHERE id = ? AND b IN (?)",
        "SELECT t",
    ),
    (
        PG,
        'SELECT "Email" FROM "Orders" o WHERE o."Id" = 7',
        'SELECT "Email" FROM "Orders" o WHERE o."Id" = ?',
        'SELECT "Orders"',
    ),
    (PG, "SELECT 1 -- trailing 'secret'\n/* block 4111 /* nested */ still */ FROM t", "SELECT ? FROM t", "SELECT t"),
    (PG, "SELECT a FROM t WHERE b = ANY(ARRAY[1, 2, 3])", "SELECT a FROM t WHERE b = ANY(ARRAY[?])", "SELECT t"),
    (
        PG,
        "INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y') RETURNING id",
        "INSERT INTO t (a, b) VALUES (?) RETURNING id",
        "INSERT t",
    ),
    (PG, "SELECT   a,\n\tb\n FROM  t", "SELECT a, b FROM t", "SELECT t"),
    (
        PG,
        "SELECT count(*) FROM orders o JOIN customers c ON c.id = o.cid",
        "SELECT count(*) FROM orders o JOIN customers c ON c.id = o.cid",
        "SELECT orders customers",
    ),
    (
        PG,
        "INSERT INTO shipping SELECT * FROM orders WHERE extract(year FROM ts) = 2024",
        "INSERT INTO shipping SELECT * FROM orders WHERE extract(year FROM ts) = ?",
        "INSERT shipping SELECT orders",
    ),
    (
        PG,
        "WITH r AS (SELECT id FROM a) UPDATE b SET v = 1 FROM r WHERE b.id = r.id",
        "WITH r AS (SELECT id FROM a) UPDATE b SET v = ? FROM r WHERE b.id = r.id",
        "UPDATE a b r",
    ),
    (PG, "DELETE FROM ONLY public.t WHERE id = 5", "DELETE FROM ONLY public.t WHERE id = ?", "DELETE public.t"),
    (PG, "CALL transfer(100, 'acct-4111')", "CALL transfer(?, ?)", "CALL transfer"),
    (
        PG,
        "EXPLAIN ANALYZE SELECT * FROM t WHERE a = 'x'",
        "EXPLAIN ANALYZE SELECT * FROM t WHERE a = ?",
        "EXPLAIN SELECT t",
    ),
    (PG, "BEGIN", "BEGIN", "BEGIN"),
    (PG, "COMMIT", "COMMIT", "COMMIT"),
    (PG, "SET application_name = 'jane'", "SET application_name = ?", "SET"),
    (PG, "SELECT * FROM t FOR UPDATE", "SELECT * FROM t FOR UPDATE", "SELECT t"),
    (PG, "select * from generate_series(1, 10)", "select * from generate_series(?, ?)", "SELECT"),
    (PG, "TRUNCATE TABLE orders", "TRUNCATE TABLE orders", "TRUNCATE TABLE orders"),
    (
        MY,
        'SELECT `email` FROM `orders` WHERE note = "jane\'s 4111"',
        "SELECT `email` FROM `orders` WHERE note = ?",
        "SELECT `orders`",
    ),
    (MY, 'SELECT \'it\\\'s\', \'it\'\'s\', "say \\"hi\\"", "a""b"', "SELECT ?, ?, ?, ?", "SELECT"),
    (MY, "SELECT X'ff', 0xff, b'01', 0b11, _utf8mb4'x', N'y', _binary 'z'", "SELECT ?, ?, ?, ?, ?, ?, ?", "SELECT"),
    (
        MY,
        "SELECT 1 # hash 'secret'\nFROM t -- dash 4111\n WHERE /*! STRAIGHT_JOIN */ a = 2",
        "SELECT ? FROM t WHERE a = ?",
        "SELECT t",
    ),
    (MY, "SELECT /*+ MAX_EXECUTION_TIME(1000) */ a FROM t", "SELECT a FROM t", "SELECT t"),
    (MY, "SELECT a FROM t WHERE b IN (?, ?, ?) AND c = ?", "SELECT a FROM t WHERE b IN (?) AND c = ?", "SELECT t"),
    (MY, "SELECT @user_var, @@max_connections", "SELECT @user_var, @@max_connections", "SELECT"),
    (
        MY,
        "INSERT INTO t (a) VALUES (1), (2), (3) ON DUPLICATE KEY UPDATE a = VALUES(a)",
        "INSERT INTO t (a) VALUES (?) ON DUPLICATE KEY UPDATE a = VALUES(a)",
        "INSERT t",
    ),
    (MY, "REPLACE INTO t (a) VALUES ('x')", "REPLACE INTO t (a) VALUES (?)", "REPLACE t"),
    (MY, "SELECT * FROM a, b AS bb, c WHERE a.x = b.y", "SELECT * FROM a, b AS bb, c WHERE a.x = b.y", "SELECT a b c"),
    (MY, "SHOW VARIABLES LIKE 'max%'", "SHOW VARIABLES LIKE ?", "SHOW"),
    (MY, "START TRANSACTION", "START TRANSACTION", "START TRANSACTION"),
    (MY, "CALL p('a;b'); SELECT 1", "CALL p(?); SELECT ?", "CALL p"),
    (MY, "SELECT a FROM t WHERE b = -3.5e2", "SELECT a FROM t WHERE b = - ?", "SELECT t"),
]


@pytest.mark.parametrize(("dialect", "text", "obfuscated", "summary"), SQL_EXAMPLES)
def test_sql_examples(dialect: str, text: str, obfuscated: str, summary: str) -> None:
    assert obfuscate_sql(text, dialect) == obfuscated  # type: ignore[arg-type]
    assert query_summary(text, dialect) == summary  # type: ignore[arg-type]


FAIL_CLOSED = [
    (PG, "SELECT * FROM t WHERE email = 'jane@example.com"),  # unterminated quote
    (PG, "SELECT $$ jane@example.com"),  # unterminated dollar quote
    (PG, "SELECT 1 /* jane@example.com"),  # unterminated comment
    (PG, "SELECT E'jane\\'"),  # the escape eats the closing quote
    (PG, "SELECT 'a' \x00\x01\xfe\xff jane"),  # binary garbage
    (PG, "SELECT ` jane"),  # a character the tokenizer does not know
    (MY, "SELECT 'jane\\'"),  # MySQL: backslash escapes the quote
    (MY, 'SELECT "jane@example.com'),
    (MY, "\x00\x7f\x1b[31m"),
    (MY, "CALL p('jane"),
]


@pytest.mark.parametrize(("dialect", "text"), FAIL_CLOSED)
def test_untokenizable_text_gives_the_placeholder(dialect: str, text: str) -> None:
    assert obfuscate_sql(text, dialect) == PLACEHOLDER  # type: ignore[arg-type]
    assert query_summary(text, dialect) == "OTHER"  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_empty_text(text: str) -> None:
    assert obfuscate_sql(text, PG) == ""
    assert query_summary(text, MY) == "OTHER"


@pytest.mark.parametrize("text", ["jane@example.com", "4111111111111111", "hello world", "'x'", "orders WHERE a = 1"])
def test_summary_of_no_statement_is_other(text: str) -> None:
    assert query_summary(text, PG) == "OTHER"


def test_truncation_is_on_a_token_boundary_with_a_marker() -> None:
    text = "SELECT alpha, beta, gamma, delta FROM orders WHERE alpha = 'x'"
    assert obfuscate_sql(text, PG, max_length=24) == "SELECT alpha, beta, ..."
    assert (
        obfuscate_sql(text, PG, max_length=len(text)) == "SELECT alpha, beta, gamma, delta FROM orders WHERE alpha = ?"
    )
    for limit in range(4, 70):
        out = obfuscate_sql(text, PG, max_length=limit)
        assert len(out) <= limit
        assert out.endswith(" ...") or out == obfuscate_sql(text, PG)
    long_list = "SELECT * FROM t WHERE a IN (" + ", ".join(str(i) for i in range(5000)) + ")"
    assert obfuscate_sql(long_list, MY) == "SELECT * FROM t WHERE a IN (?)"
    assert query_summary("SELECT * FROM " + ", ".join(f"table_{c}" for c in "abcdefghij" * 3), PG, max_length=30) == (
        "SELECT table_a table_b table_c"
    )


def test_speed_of_a_typical_query() -> None:
    # Not a benchmark (bench/bench_obfuscation.py is); a guard against a slow path sneaking in.
    text = (
        "SELECT o.id, o.total, c.email FROM orders o JOIN customers c ON c.id = o.customer_id "
        "WHERE o.status = 'shipped' AND o.created_at > '2024-01-01' AND c.country IN ('DE', 'FR', 'NL') "
        "ORDER BY o.created_at DESC LIMIT 50"
    )
    obfuscate_sql(text, PG)
    start = time.perf_counter()
    for _ in range(200):
        obfuscate_sql(text, PG)
    assert (time.perf_counter() - start) / 200 < 0.002  # 2 ms: 10x the pure-Python tokenizer's cost


# ------------------------------------------------------------------------------------------ MongoDB

FIELD = st.sampled_from(["email", "age", "status", "items", "address", "city", "_id", "tags", "total"])
OPERATOR = st.sampled_from(
    ["$gt", "$lt", "$in", "$nin", "$eq", "$ne", "$exists", "$regex", "$elemMatch", "$set", "$inc"]
)
SCALAR = st.one_of(SECRET, st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(), st.binary(max_size=8))


def documents(max_leaves: int = 20) -> st.SearchStrategy[object]:
    return st.recursive(
        SCALAR,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.one_of(FIELD, OPERATOR), children, max_size=4),
        ),
        max_leaves=max_leaves,
    )


@bounded
@given(
    verb=st.sampled_from(["find", "aggregate", "update", "delete", "count", "distinct", "findAndModify"]),
    collection=st.sampled_from(["orders", "customers", "line_items"]),
    body=st.dictionaries(
        st.sampled_from(["filter", "query", "pipeline", "updates", "sort", "limit", "q", "u"]), documents(), max_size=4
    ),
)
def test_no_value_survives_mongo(verb: str, collection: str, body: dict[str, object]) -> None:
    command = {verb: collection, **body}
    out = mongo_shape(command)
    assert isinstance(out, ObfuscatedText)
    assert leaked(out) == [], (command, out)
    shape = json.loads(out)
    assert shape[verb] == collection
    assert list(shape) == list(dict.fromkeys([verb, *body]))


MONGO_EXAMPLES = [
    (
        {"find": "orders", "filter": {"email": "jane@example.com", "age": {"$gt": 30}}, "limit": 10},
        '{"find":"orders","filter":{"email":"?","age":{"$gt":"?"}},"limit":"?"}',
    ),
    (
        {"find": "orders", "filter": {"status": {"$in": ["new", "paid", "shipped"]}}},
        '{"find":"orders","filter":{"status":{"$in":["?"]}}}',
    ),
    (
        {
            "aggregate": "orders",
            "pipeline": [{"$match": {"c": 1}}, {"$group": {"_id": "$c", "n": {"$sum": 1}}}, {"$sort": {"n": -1}}],
            "cursor": {},
        },
        '{"aggregate":"orders","pipeline":[{"$match":{"c":"?"}},{"$group":{"_id":"?","n":{"$sum":"?"}}},{"$sort":{"n":"?"}}],"cursor":{}}',
    ),
    (
        {
            "update": "users",
            "updates": [
                {"q": {"_id": 1}, "u": {"$set": {"email": "x@y.z"}}},
                {"q": {"_id": 2}, "u": {"$set": {"email": "z@y.x"}}},
            ],
        },
        '{"update":"users","updates":[{"q":{"_id":"?"},"u":{"$set":{"email":"?"}}}]}',
    ),
    (
        {"getMore": 81234567, "collection": "orders", "batchSize": 100},
        '{"getMore":"?","collection":"orders","batchSize":"?"}',
    ),
    # A key that holds data is no name: its segment goes.
    (
        {
            "update": "prefs",
            "updates": [
                {
                    "q": {},
                    "u": {"$set": {"byEmail.jane@example.com": True, "cards.4111111111111111": 1, "items.0.qty": 2}},
                }
            ],
        },
        '{"update":"prefs","updates":[{"q":{},"u":{"$set":{"byEmail.?.com":"?","cards.?":"?","items.0.qty":"?"}}}]}',
    ),
    # A collection name that is not plainly a name, and a verb's value that is no string.
    ({"find": "jane@example.com"}, '{"find":"?"}'),
    ({"find": {"$where": "x"}}, '{"find":{"$where":"?"}}'),
    ({"insert": "events", "documents": [{"a": 1}] * 1000}, '{"insert":"events","documents":[{"a":"?"}]}'),
]


@pytest.mark.parametrize(("command", "shape"), MONGO_EXAMPLES)
def test_mongo_examples(command: dict[str, object], shape: str) -> None:
    assert mongo_shape(command) == shape


def test_mongo_shape_is_bounded() -> None:
    deep: dict[str, object] = {"v": "jane@example.com"}
    for _ in range(50):
        deep = {"a": deep}
    out = mongo_shape({"find": "t", "filter": deep})
    assert leaked(out) == [] and out.count("{") <= 10
    wide = {"find": "t", "filter": {f"f{chr(97 + i % 26)}{chr(97 + i // 26)}": i for i in range(500)}}
    out = mongo_shape(wide)
    assert len(out) <= 4096 and '"...":"?"' in out
    many = {"aggregate": "t", "pipeline": [{f"$stage{chr(97 + i % 26)}{chr(97 + i // 26)}": {}} for i in range(100)]}
    assert mongo_shape(many).endswith('"..."]}')


def test_mongo_summary() -> None:
    assert mongo_summary("find", "orders") == "find orders"
    assert mongo_summary("aggregate", "jane@example.com") == "aggregate"
    assert mongo_summary("4111111111111111", "orders") == "OTHER"


# -------------------------------------------------------------------------------------------- Redis

# Keys carry a secret with a digit or an '@' (a letters-only segment is a name by design and survives).
KEY_SECRET = st.one_of(
    EMAIL, CARD, st.builds(lambda n: f"zqx{n}", st.integers(0, 10**6)), st.integers(0, 10**9).map(str)
)
KEY = st.builds(
    lambda prefix, secret, suffix: f"{prefix}:{secret}{suffix}",
    st.sampled_from(["user", "session", "cart"]),
    KEY_SECRET,
    st.sampled_from(["", ":email", "/avatar"]),
)
VALUE = st.one_of(SECRET, KEY_SECRET, NOISE.map(lambda t: t + "7"))
REDIS_CALLS = st.one_of(
    st.builds(lambda k, v: ["SET", k, v, "EX", "60"], KEY, VALUE),
    st.builds(lambda k: ["GET", k], KEY),
    st.builds(lambda k, f, v: ["HSET", k, f, v], KEY, VALUE, VALUE),
    st.builds(lambda ks: ["MGET", *ks], st.lists(KEY, min_size=1, max_size=5)),
    st.builds(
        lambda kv: ["MSET", *[x for pair in kv for x in pair]], st.lists(st.tuples(KEY, VALUE), min_size=1, max_size=4)
    ),
    st.builds(
        lambda ks, a: ["EVAL", "return redis.call('GET', KEYS[1]) -- zqx9", str(len(ks)), *ks, *a],
        st.lists(KEY, max_size=3),
        st.lists(VALUE, max_size=3),
    ),
    st.builds(lambda k, v: ["ZADD", k, "1.5", v], KEY, VALUE),
    st.builds(lambda ks: ["BLPOP", *ks, "5"], st.lists(KEY, min_size=1, max_size=3)),
    st.builds(lambda k, v: [b"LPUSH", k.encode(), v.encode()], KEY, VALUE),
    st.builds(lambda c, a: [c, *a], st.sampled_from(["FROBNICATE", "CLIENT", "CONFIG"]), st.lists(VALUE, max_size=3)),
)


@bounded
@given(args=REDIS_CALLS)
def test_no_value_survives_redis(args: list[str | bytes]) -> None:
    out = redis_command(args)
    assert isinstance(out, ObfuscatedText)
    assert leaked(out) == [], (args, out)
    name = args[0].decode() if isinstance(args[0], bytes) else args[0]
    assert out.split(" ", 1)[0] == name.upper()
    assert leaked(redis_summary(args)) == []


REDIS_EXAMPLES = [
    (["SET", "user:1234:email", "a@b.c"], "SET user:?:email ?", "SET"),
    (["set", "user:1234:email", "a@b.c", "EX", "60"], "SET user:?:email ? ? ?", "SET"),
    (["GET", "session:jane.doe@example.com"], "GET session:?", "GET"),
    (["GET", "card/4111-1111-1111-1111/last"], "GET card/?/last", "GET"),
    (["HGET", "user_profile:42", "email"], "HGET user_profile:? ?", "HGET"),
    (["MGET", "a:1", "b:2", "config"], "MGET a:? b:? config", "MGET"),
    (["MSET", "a:1", "x", "b:c", "y"], "MSET a:? ? b:c ?", "MSET"),
    (["DEL", "cache:v2:home", "jane"], "DEL cache:?:home jane", "DEL"),
    (["EVAL", "return 1", "2", "lock:1", "lock:2", "arg"], "EVAL ? ? lock:? lock:? ?", "EVAL"),
    (["EVALSHA", "abc123", "0", "x"], "EVALSHA ? ? ?", "EVALSHA"),
    (
        ["ZUNIONSTORE", "dest:1", "2", "a:x", "b:y", "WEIGHTS", "1", "2"],
        "ZUNIONSTORE dest:? ? a:x b:y ? ? ?",
        "ZUNIONSTORE",
    ),
    (["BLPOP", "queue:jobs", "queue:mail", "5"], "BLPOP queue:jobs queue:mail ?", "BLPOP"),
    (["XREAD", "COUNT", "2", "STREAMS", "s:1", "events", "0", "0"], "XREAD ? ? ? s:? events ? ?", "XREAD"),
    (["CLIENT", "LIST"], "CLIENT LIST", "CLIENT LIST"),
    (["config", "get", "maxmemory"], "CONFIG GET ?", "CONFIG GET"),
    (["OBJECT", "ENCODING", "user:7"], "OBJECT ENCODING user:?", "OBJECT ENCODING"),
    (["FROBNICATE", "user:jane", "x"], "FROBNICATE ? ?", "FROBNICATE"),
    ([b"SET", b"k:\xff\xfe", b"\x00"], "SET k:? ?", "SET"),
    (["PING"], "PING", "PING"),
    ([], "?", "OTHER"),
    (["jane@example.com", "x"], "?", "OTHER"),
    (["GET", "a" * 40], "GET ?", "GET"),
]


@pytest.mark.parametrize(("args", "command", "summary"), REDIS_EXAMPLES)
def test_redis_examples(args: list[str | bytes], command: str, summary: str) -> None:
    assert redis_command(args) == command
    assert redis_summary(args) == summary


def test_redis_command_is_bounded() -> None:
    out = redis_command(["MGET", *[f"k:{i}" for i in range(1000)]])
    assert out.endswith(" ...") and len(out) <= 1024 and leaked(out) == []
