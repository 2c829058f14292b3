"""Benchmark of the query obfuscation (dbintel.agent.queries.obfuscation): sqlglot's tokenizer vs sqlparse's lexer.

Run:  python bench/bench_obfuscation.py [--repeat N] [--no-write]

Two questions decide the tokenizer: its cost per query on texts as the sources read them, and whether
it tokenizes each dialect feature the way the server does (else a literal can come out as words).
- Speed: a corpus of texts in the forms the agent reads (pg_stat_statements' normalised `$n` texts,
  pg_stat_activity's raw texts, MySQL digest texts with `?` and backticks, raw MySQL texts from
  events_statements_current), each timed `--repeat` times; the per-query median, averaged over the
  corpus, and for the typical ~200-character query alone. Contenders: the tokenizer alone (sqlglot,
  sqlparse), the whole obfuscation built on each, and sqlglot's full parse for scale.
- Coverage: one probe per dialect feature, each holding a secret; a tokenizer "handles" it when an
  obfuscation built on it (literals -> ?, comments dropped, lexer errors -> placeholder) drops the
  secret and keeps the statement; "fail closed" when it can only give the placeholder; "LEAK" when
  the secret survives.

Prints the figures and rewrites the "## Query obfuscation" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable

import sqlglot
import sqlglot.tokens
import sqlparse
from report import DOC, machine_line, write_section  # bench/report.py
from sqlglot.dialects.dialect import Dialect
from sqlparse import tokens as T
from sqlparse.lexer import Lexer

from dbintel.agent.queries.obfuscation import PLACEHOLDER, obfuscate_sql, query_summary

SECTION = "## Query obfuscation"

TYPICAL = (
    "SELECT o.id, o.total, c.email FROM orders o JOIN customers c ON c.id = o.customer_id "
    "WHERE o.status = 'shipped' AND o.created_at > '2024-01-01' AND c.country IN ('DE', 'FR', 'NL') "
    "ORDER BY o.created_at DESC LIMIT 50"
)

# (dialect, text): the forms the sources read.
CORPUS: list[tuple[str, str]] = [
    # pg_stat_statements (normalised: constants are $n), pgbench and ORM workloads
    ("postgresql", "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2"),
    ("postgresql", "SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
    ("postgresql", "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2"),
    (
        "postgresql",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
    ),
    (
        "postgresql",
        'SELECT "auth_user"."id", "auth_user"."password", "auth_user"."last_login", "auth_user"."email" FROM "auth_user" WHERE "auth_user"."email" = $1 LIMIT $2',
    ),
    (
        "postgresql",
        "SELECT n.nspname, c.relname, pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = ANY ($1) ORDER BY 3 DESC LIMIT $2",
    ),
    (
        "postgresql",
        "WITH recent AS (SELECT customer_id, sum(total) AS spent FROM orders WHERE created_at > now() - $1::interval GROUP BY customer_id) SELECT c.id, c.email, r.spent FROM customers c JOIN recent r ON r.customer_id = c.id WHERE r.spent > $2 ORDER BY r.spent DESC",
    ),
    (
        "postgresql",
        "INSERT INTO events (kind, payload, created_at) VALUES ($1, $2::jsonb, now()) ON CONFLICT (id) DO UPDATE SET payload = excluded.payload RETURNING id",
    ),
    ("postgresql", "BEGIN"),
    ("postgresql", "COMMIT"),
    (
        "postgresql",
        "SELECT pid, state, wait_event_type, wait_event, query_start FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state <> $1",
    ),
    # pg_stat_activity (raw, as the client sent it)
    ("postgresql", TYPICAL),
    ("postgresql", "SELECT * FROM customers WHERE email = 'jane.doe@example.com' AND card_last4 = '4242'"),
    (
        "postgresql",
        "UPDATE accounts SET balance = balance - 100.50, note = E'refund for order #7\\'s item' WHERE id = 42",
    ),
    (
        "postgresql",
        "/* app=checkout, trace=4bf92f3577b34da6 */ SELECT id FROM carts WHERE session = 'c0ffee' FOR UPDATE SKIP LOCKED",
    ),
    ("postgresql", "DO $$ BEGIN PERFORM pg_sleep(1); END $$"),
    (
        "postgresql",
        "SELECT id, payload->>'sku' AS sku FROM line_items WHERE order_id IN (1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008) AND (payload->>'qty')::int > 3",
    ),
    ("postgresql", "COPY (SELECT * FROM orders WHERE created_at::date = '2024-06-01') TO STDOUT WITH (FORMAT csv)"),
    # performance_schema digest texts (MySQL 8 / MariaDB): `?`, backticks, collapsed lists
    ("mysql", "SELECT `c` FROM `sbtest1` WHERE `id` = ?"),
    ("mysql", "SELECT `c` FROM `sbtest1` WHERE `id` BETWEEN ? AND ? ORDER BY `c`"),
    ("mysql", "SELECT DISTINCTROW `c` FROM `sbtest1` WHERE `id` BETWEEN ? AND ? ORDER BY `c`"),
    ("mysql", "UPDATE `sbtest1` SET `k` = `k` + ? WHERE `id` = ?"),
    ("mysql", "DELETE FROM `sbtest1` WHERE `id` = ?"),
    ("mysql", "INSERT INTO `sbtest1` ( `id` , `k` , `c` , `pad` ) VALUES (...)"),
    (
        "mysql",
        "SELECT `o` . `id` , `o` . `total` FROM `orders` `o` JOIN `customers` `c` ON `c` . `id` = `o` . `customer_id` WHERE `c` . `country` IN (...) LIMIT ?",
    ),
    ("mysql", "SHOW GLOBAL STATUS"),
    ("mysql", "SELECT @@`version_comment` LIMIT ?"),
    ("mysql", "COMMIT"),
    # events_statements_current.SQL_TEXT (raw)
    ("mysql", "SELECT c FROM sbtest1 WHERE id=5012"),
    (
        "mysql",
        "INSERT INTO orders (customer_id, total, note) VALUES (17, 99.90, 'gift for jane@example.com'), (18, 5.00, \"it\\'s urgent\")",
    ),
    (
        "mysql",
        "UPDATE users SET password_hash = X'9f86d081884c7d65', flags = b'1010' WHERE email = 'jane.doe@example.com' # reset",
    ),
    (
        "mysql",
        "SELECT /*+ MAX_EXECUTION_TIME(1000) */ id FROM sessions WHERE token = _utf8mb4'a1b2c3' AND expires > NOW()",
    ),
    ("mysql", "REPLACE INTO kv (k, v) VALUES ('user:1234:prefs', '{\"theme\": \"dark\"}')"),
    ("mysql", "CALL refund_order(7731, 'duplicate charge')"),
    ("mysql", TYPICAL.replace("o.", "`o`.")),
]

SECRET = "s3cr3t"
# (feature, dialect, text, secret): the secret must not survive.
PROBES: list[tuple[str, str, str, str]] = [
    ("PG dollar quote $$..$$", "postgresql", "SELECT $$it's s3cr3t$$ FROM t", SECRET),
    ("PG tagged dollar quote $fn$..$fn$", "postgresql", "SELECT $fn$ a $$ s3cr3t $fn$ FROM t", SECRET),
    ("PG E'..' with \\'", "postgresql", "SELECT E'it\\'s s3cr3t' FROM t", SECRET),
    (
        "PG '..' ending in a backslash (standard strings)",
        "postgresql",
        "SELECT 'C:\\' AS p, 's3cr3t' AS q FROM t",
        SECRET,
    ),
    ("PG U&'..'", "postgresql", "SELECT U&'s3cr3t' FROM t", SECRET),
    ("PG cast '..'::int", "postgresql", "SELECT '5333'::int FROM t", "5333"),
    ("PG nested /* /* */ */", "postgresql", "SELECT 1 /* a /* b */ s3cr3t */ FROM t", SECRET),
    ("MySQL backtick identifiers", "mysql", "SELECT `col` FROM `t` WHERE a = 's3cr3t'", SECRET),
    ('MySQL "double-quoted" string', "mysql", 'SELECT a FROM t WHERE b = "s3cr3t"', SECRET),
    ("MySQL '..' with \\'", "mysql", "SELECT a FROM t WHERE b = 'it\\'s s3cr3t'", SECRET),
    ("MySQL _utf8mb4'..' introducer", "mysql", "SELECT a FROM t WHERE b = _utf8mb4's3cr3t'", SECRET),
    ("hex X'..'", "mysql", "SELECT a FROM t WHERE b = X'5333'", "5333"),
    ("hex 0x..", "mysql", "SELECT a FROM t WHERE b = 0x5333", "5333"),
    ("bit b'..'", "mysql", "SELECT a FROM t WHERE b = b'0110'", "0110"),
    ("comment #", "mysql", "SELECT a FROM t # s3cr3t\nWHERE b = 1", SECRET),
    ("comment --", "postgresql", "SELECT a FROM t -- s3cr3t\nWHERE b = 1", SECRET),
    ("comment /* */", "postgresql", "SELECT a /* s3cr3t */ FROM t", SECRET),
    ("MySQL /*! */ executable comment", "mysql", "SELECT a FROM t /*!50000 WHERE b = 's3cr3t' */", SECRET),
    ("MySQL /*+ */ hint", "mysql", "SELECT /*+ SET_VAR(s3cr3t=1) */ a FROM t", SECRET),
    ("unterminated quote", "postgresql", "SELECT a FROM t WHERE b = 's3cr3t", SECRET),
]

# ---------------------------------------------------------------- an obfuscation built on sqlparse

_LEXER = Lexer.get_default_instance()
_PREFIXES = {"e", "x", "b", "n", "u&", "_utf8mb4", "_binary", "_latin1"}


def sqlparse_obfuscate(text: str, dialect: str) -> str:
    """The same rules on sqlparse's lexer: literals -> ?, comments dropped, a lexer error -> placeholder."""
    out: list[str] = []
    tokens = list(_LEXER.get_tokens(text))
    for index, (ttype, value) in enumerate(tokens):
        if ttype in T.Error:
            return "?"
        if ttype in T.Comment or ttype in T.Whitespace:
            continue
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if ttype in T.Name and value.lower() in _PREFIXES and following is not None and following[0] in T.Literal:
            continue  # E'..', X'..', _utf8mb4'..': the prefix goes with the literal
        is_string_symbol = ttype in T.Literal.String.Symbol
        if (
            (ttype in T.Literal and not is_string_symbol)
            or (is_string_symbol and dialect == "mysql")
            or (ttype in T.Keyword and value.upper() in ("TRUE", "FALSE"))
        ):
            out.append("?")
        else:
            out.append(value)
    return " ".join(out)


def sqlparse_tokenize(text: str) -> None:
    for _ in _LEXER.get_tokens(text):
        pass


def verdict(out: str, secret: str) -> str:
    if out == PLACEHOLDER:
        return "fail closed"
    return "LEAK" if secret in out else "handled"


# ------------------------------------------------------------------------------------------ timing


BATCH = 20


def per_call_us(call: Callable[[], object], repeat: int) -> float:
    """µs per call: the best of `repeat` / 20 batches of 20 calls. The machine is shared, so the best
    batch is the figure least disturbed by other jobs (a median moved by 2x between runs here)."""
    call()
    best = float("inf")
    for _ in range(max(repeat // BATCH, 3)):
        start = time.perf_counter()
        for _ in range(BATCH):
            call()
        best = min(best, (time.perf_counter() - start) / BATCH)
    return best * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    logging.getLogger("sqlglot").setLevel(logging.ERROR)  # the full parse warns on DO $$ .. $$ at every call

    dialects = {"postgresql": "postgres", "mysql": "mysql"}
    # One tokenizer per dialect, built once, as the module does (building one costs a short query's tokenizing).
    tokenizers = {d: Dialect.get_or_raise(name).tokenizer() for d, name in dialects.items()}

    def parse_or_none(text: str, dialect: str) -> object:
        try:
            return sqlglot.parse(text, read=dialects[dialect])
        except sqlglot.errors.SqlglotError:
            return None

    contenders: list[tuple[str, Callable[[str, str], object]]] = [
        ("sqlglot tokenizer alone", lambda text, d: tokenizers[d].tokenize(text)),
        ("sqlparse lexer alone", lambda text, d: sqlparse_tokenize(text)),
        ("obfuscate_sql (sqlglot tokenizer + rules)", lambda text, d: obfuscate_sql(text, d)),  # type: ignore[arg-type]
        ("query_summary (sqlglot tokenizer + rules)", lambda text, d: query_summary(text, d)),  # type: ignore[arg-type]
        ("the same rules on sqlparse's lexer", sqlparse_obfuscate),
        ("sqlglot full parse (for scale)", parse_or_none),
        ("sqlparse.parse (for scale)", lambda text, d: sqlparse.parse(text)),
    ]
    rows = []
    for name, run in contenders:
        corpus = [per_call_us(lambda t=text, d=dialect, r=run: r(t, d), args.repeat) for dialect, text in CORPUS]
        typical = per_call_us(lambda r=run: r(TYPICAL, "postgresql"), args.repeat)
        rows.append((name, statistics.fmean(corpus), max(corpus), typical))
        print(
            f"{name:45s} corpus mean {rows[-1][1]:8.1f} µs  max {rows[-1][2]:8.1f} µs  typical {typical:8.1f} µs",
            file=sys.stderr,
        )

    probe_rows = []
    for feature, dialect, text, secret in PROBES:
        ours = obfuscate_sql(text, dialect)  # type: ignore[arg-type]
        theirs = sqlparse_obfuscate(text, dialect)
        probe_rows.append((feature, dialect, verdict(ours, secret), ours, verdict(theirs, secret), theirs))

    compiled = sqlglot.tokens.SQLGLOTC_INSTALLED
    lines = [
        SECTION,
        "",
        machine_line(),
        f"Command: `python bench/bench_obfuscation.py --repeat {args.repeat}`. sqlglot {sqlglot.__version__} "
        f"({'with' if compiled else 'without'} its mypyc-compiled build, sqlglotc), sqlparse {sqlparse.__version__}. "
        f"Corpus: {len(CORPUS)} texts in the forms the sources read (pg_stat_statements' `$n` texts, pg_stat_activity's raw "
        "texts, MySQL digest texts with `?` and backticks, raw events_statements_current texts; "
        f"{min(len(t) for _, t in CORPUS)}–{max(len(t) for _, t in CORPUS)} characters); each run {args.repeat} times "
        f"in batches of {BATCH}, the best batch's time per call (the machine is shared: the least disturbed figure), "
        f"then the mean (and the worst) over the corpus; 'typical' is one {len(TYPICAL)}-character "
        "SELECT with a join, three string literals and an IN list.",
        "",
        "| contender | µs / query, corpus mean | µs, corpus worst | µs, typical query |",
        "|---|---:|---:|---:|",
        *[f"| {name} | {mean:.1f} | {worst:.1f} | {typical:.1f} |" for name, mean, worst, typical in rows],
        "",
        "Dialect coverage: each probe holds a secret; 'handled' = the secret is gone and the statement kept, "
        "'fail closed' = only the placeholder could be given, 'LEAK' = the secret survived. The sqlparse column applies "
        'the same rules (literals -> ?, comments dropped, a lexer error -> placeholder, MySQL ".." as a string) to '
        "sqlparse's lexer, which has no dialects.",
        "",
        "| feature | dialect | obfuscate_sql (sqlglot) | output | sqlparse lexer | output |",
        "|---|---|---|---|---|---|",
        *[
            f"| {feature} | {dialect} | {a} | `` {ours.replace('|', '¦')} `` | {b} | `` {theirs.replace('|', '¦')} `` |"
            for feature, dialect, a, ours, b, theirs in probe_rows
        ],
        "",
        f"Leaks: sqlglot {sum(r[2] == 'LEAK' for r in probe_rows)}, sqlparse {sum(r[4] == 'LEAK' for r in probe_rows)} "
        f"of {len(probe_rows)} probes. sqlglot's tokenizer knows each dialect's quoting (PostgreSQL's standard strings "
        "and nested comments, MySQL's backslash escapes and double-quoted strings), which sqlparse's single regex "
        "lexer cannot; the tokenizer alone is a fraction of a full parse, which obfuscation does not need.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
        print(f"wrote the '{SECTION}' section of {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
