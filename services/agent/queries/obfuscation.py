"""Obfuscation: what a query, a command shape or a Redis command may say once it leaves the agent.

Pure functions, no I/O. Every text a source exports goes through one of them (design property 9).

SQL (`obfuscate_sql`, both dialects), tokenized with sqlglot's tokenizer (no parse):
- replaced by `?`: every string literal ('..', with '' or, in MySQL, \\' escapes; PostgreSQL E'..',
  U&'..', $$..$$ and $tag$..$tag$; MySQL "double-quoted" strings, as with ANSI_QUOTES off; N'..' and
  charset-introduced _utf8mb4'..' as one literal), every number (including -less signs kept apart:
  `-?`; 1_000, 0o17 and .5 as one literal), hex/bit/byte strings (X'..', 0x.., B'..', b'..', 0b..),
  TRUE and FALSE, and PostgreSQL positional parameters `$1` (so pg_stat_statements' normalised text and
  a raw text read the same; MySQL's `?` stays `?`).
- collapsed: a parenthesised list of nothing but `?` after IN, VALUES or ARRAY becomes `(?)` (`[?]`),
  and VALUES rows `(?), (?)` one `(?)`, so a statement's text does not vary with its list length.
- removed: comments (`--`, `/* */` nested as PostgreSQL nests them, MySQL `#`), MySQL executable
  comments `/*! .. */` and optimizer hints `/*+ .. */` (their contents could hold literals).
- kept: keywords, identifiers (quoted ones with their quotes), operators, NULL, casts (`::int`),
  MySQL `@user_var` / `@@system_var` names, `?` placeholders. Whitespace collapses to one space,
  except none inside `a.b`, `f(`, `::`, before `,` `)` `]` and after `(` `[`.
- truncated to `max_length` on a token boundary, ending with " ..." (the marker counts in the length).
- fails closed: text the tokenizer rejects (unterminated quote or comment), holds a control
  character, or yields a token the tokenizer does not know, gives `PLACEHOLDER` ("?"), never the text.

`query_summary`: the statement's operation keyword and the tables it names (after FROM, JOIN, INTO,
UPDATE, TABLE; CALL's procedure), as OpenTelemetry's db.query.summary: "SELECT orders customers",
"INSERT shipping SELECT orders", "BEGIN". Built from the same tokens, so never a literal; an operation
outside a fixed list (or an empty, unparsable text) gives "OTHER".

MongoDB (`mongo_shape`): keys and `$operators` kept when they are plainly names (each dotted segment
letters/digits/_ starting with a letter, `_` or `$`, or an array index of at most 3 digits), else "?";
the collection named by the command verb kept; every other value "?"; lists of scalars `["?"]`, lists of
documents their shapes (consecutive repeats once), so pipelines keep stage names; depth, keys per
document, items per list and total size bounded.

Redis (`redis_command`): the command name (and a container's subcommand, "CLIENT LIST"), key
*patterns* for the arguments a per-command table says are keys, `?` for every other argument.
A key splits on ':' and '/'; a segment survives only when it is letters with inner '_', '-' or '.'
(no digit, no '@', at most 32 characters), else it is `?`: `user:1234:email` -> `user:?:email`, and
a key holding an e-mail or a card number keeps neither. Unknown command: no argument kept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any, Final, Literal

from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import SqlglotError
from sqlglot.tokens import Token, TokenType


class ObfuscatedText(str):
    """Text that went through this module's obfuscation. Only this module's functions construct it."""

    __slots__ = ()


SqlDialect = Literal["postgresql", "mysql"]

PLACEHOLDER: Final = ObfuscatedText("?")
"""What a text that cannot be obfuscated with certainty becomes."""

TRUNCATION_MARKER: Final = " ..."
OTHER: Final = "OTHER"

# ---------------------------------------------------------------------------------------------- SQL

_SQLGLOT_DIALECT: Final[dict[str, str]] = {"postgresql": "postgres", "mysql": "mysql"}

# Token types whose text is a value of the user's: each becomes `?`.
_LITERALS: Final = frozenset(
    {
        TokenType.STRING,
        TokenType.NUMBER,
        TokenType.NATIONAL_STRING,
        TokenType.BYTE_STRING,  # PostgreSQL E'..' as sqlglot types it
        TokenType.HEX_STRING,
        TokenType.BIT_STRING,
        TokenType.HEREDOC_STRING,  # $$..$$, $tag$..$tag$
        TokenType.RAW_STRING,
        TokenType.UNICODE_STRING,
        TokenType.TRUE,
        TokenType.FALSE,
    }
)
# Comments the tokenizer returns as tokens (MySQL /*+ hints */): dropped with the other comments.
_DROPPED: Final = frozenset({TokenType.HINT})
_NO_SPACE_BEFORE: Final = frozenset(
    {TokenType.COMMA, TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.DOT, TokenType.DCOLON, TokenType.SEMICOLON}
)
_NO_SPACE_AFTER: Final = frozenset(
    {
        TokenType.L_PAREN,
        TokenType.L_BRACKET,
        TokenType.DOT,
        TokenType.DCOLON,
        TokenType.PARAMETER,
        TokenType.SESSION_PARAMETER,
    }
)
# A control character means binary garbage or an attempt to hide text from a tokenizer: fail closed.
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LIST_OPENERS: Final = frozenset({"IN", "VALUES", "ARRAY"})


@cache
def _dialect(dialect: str) -> Dialect:
    return Dialect.get_or_raise(_SQLGLOT_DIALECT[dialect])


class _Tok:
    """One output token: its text as written (or `?`), its type, and whether it is a literal."""

    __slots__ = ("glued_left", "kind", "literal", "text", "upper")

    def __init__(self, text: str, kind: TokenType, literal: bool, glued_left: bool) -> None:
        self.text = text
        self.kind = kind
        self.literal = literal
        self.glued_left = glued_left  # no whitespace before it in the source (`f(`, `x::int`)
        self.upper = text.upper()


def _raw_tokens(text: str, dialect: SqlDialect, offset: int = 0, depth: int = 0) -> list[tuple[TokenType, int, int]]:
    """(type, start, end) of every token, positions in the whole text. sqlglot returns the rest of a
    "command" statement (CALL, EXPLAIN, SHOW, MySQL REPLACE ..) as one unquoted STRING: tokenized again
    here, so `CALL proc(?)` keeps its procedure and `EXPLAIN SELECT ..` its statement."""
    raw: list[Token] = _dialect(dialect).tokenize(text)
    commands = _dialect(dialect).tokenizer_class.COMMANDS
    out: list[tuple[TokenType, int, int]] = []
    for index, token in enumerate(raw):
        kind = token.token_type
        previous = raw[index - 1].token_type if index else None
        if kind == TokenType.STRING and previous in commands:
            # The rest's token carries no usable position: find its text after the command word. A
            # quoted string there (SHOW .. LIKE 'x') is no command's rest: its quotes are not in the text.
            at = text.find(token.text, raw[index - 1].end + 1)
            if at >= 0 and not text[raw[index - 1].end + 1 : at].strip():
                if depth >= 4:
                    raise ValueError("commands nested too deep")
                out.extend(_raw_tokens(token.text, dialect, offset + at, depth + 1))
                continue
        out.append((kind, offset + token.start, offset + token.end))
    return out


def _tokens(text: str, dialect: SqlDialect) -> list[_Tok] | None:
    """The statement's tokens with every literal already `?`; None when it cannot be tokenized."""
    if dialect not in _SQLGLOT_DIALECT or _CONTROL.search(text):
        return None
    try:
        raw = _raw_tokens(text, dialect)
    except (SqlglotError, ValueError, IndexError, KeyError, RecursionError):
        # A tokenizer bug on odd input is as much a reason to fail closed as a TokenError.
        return None
    out: list[_Tok] = []
    previous_end = -2
    n = len(raw)
    i = 0
    while i < n:
        kind, start, end = raw[i]
        if kind == TokenType.UNKNOWN:
            return None
        glued = start == previous_end + 1
        if kind in _DROPPED:
            previous_end = -2
            i += 1
            continue
        literal = kind in _LITERALS or kind == TokenType.PLACEHOLDER  # a `?` already is one
        following = raw[i + 1] if i + 1 < n else None
        if kind == TokenType.INTRODUCER and following is not None and following[0] in _LITERALS:
            literal, i, end = True, i + 1, following[2]  # _utf8mb4'..', _binary 'x': the charset goes with the value
        elif following is not None and following[1] == end + 1:
            if kind == TokenType.PARAMETER and dialect == "postgresql" and following[0] == TokenType.NUMBER:
                literal, i, end = True, i + 1, following[2]  # $1 -> ?
            elif (
                kind == TokenType.DOT
                and following[0] == TokenType.NUMBER
                and not (glued and out and out[-1].kind in (TokenType.VAR, TokenType.IDENTIFIER))
            ):
                literal, i, end = True, i + 1, following[2]  # .5
        if literal:
            # A literal's tail the tokenizer splits off (1_000, 0o17, 12abc in PostgreSQL) is the literal.
            while i + 1 < n and raw[i + 1][1] == end + 1 and raw[i + 1][0] in (TokenType.VAR, TokenType.NUMBER):
                i += 1
                end = raw[i][2]
            out.append(_Tok("?", TokenType.PLACEHOLDER, True, glued))
        else:
            out.append(_Tok(text[start : end + 1], kind, False, glued))
        previous_end = end
        i += 1
    return out


def _placeholder_group(tokens: list[_Tok], i: int) -> int | None:
    """When tokens[i] opens `(?, ?, ..)` or `[?, ..]`, the index after its closing bracket; else None."""
    n = len(tokens)
    if i >= n or tokens[i].kind not in (TokenType.L_PAREN, TokenType.L_BRACKET):
        return None
    close = TokenType.R_PAREN if tokens[i].kind == TokenType.L_PAREN else TokenType.R_BRACKET
    j = i + 1
    expect_value = True
    while j < n and (tokens[j].literal if expect_value else tokens[j].kind == TokenType.COMMA):
        expect_value = not expect_value
        j += 1
    if expect_value or j >= n or tokens[j].kind != close:
        return None
    return j + 1


def _collapse_lists(tokens: list[_Tok]) -> list[_Tok]:
    """IN (?, ?, ?) -> IN (?); VALUES (?, ?), (?, ?) -> VALUES (?); ARRAY[?, ?] -> ARRAY[?]."""
    out: list[_Tok] = []
    i = 0
    n = len(tokens)
    while i < n:
        token = tokens[i]
        out.append(token)
        i += 1
        if token.upper not in _LIST_OPENERS:
            continue
        after = _placeholder_group(tokens, i)
        if after is None:
            continue
        out.extend((tokens[i], _Tok("?", TokenType.PLACEHOLDER, True, True), tokens[after - 1]))
        i = after
        # VALUES (?), (?), ..: the following rows of placeholders go too, with their commas.
        while token.upper == "VALUES" and i < n and tokens[i].kind == TokenType.COMMA:
            following = _placeholder_group(tokens, i + 1)
            if following is None:
                break
            i = following
    return out


def _render(tokens: Iterable[_Tok], max_length: int) -> str:
    parts: list[str] = []
    length = 0
    previous: _Tok | None = None
    limit = max(max_length - len(TRUNCATION_MARKER), 0)
    for token in tokens:
        if previous is None or (
            token.kind in _NO_SPACE_BEFORE
            or previous.kind in _NO_SPACE_AFTER
            or (token.kind in (TokenType.L_PAREN, TokenType.L_BRACKET) and token.glued_left and not previous.literal)
        ):
            sep = ""
        else:
            sep = " "
        piece = sep + token.text
        if length + len(piece) > max_length:
            # Cut back to a token boundary that leaves room for the marker.
            while parts and length > limit:
                length -= len(parts.pop())
            return "".join(parts).rstrip() + TRUNCATION_MARKER if max_length >= len(TRUNCATION_MARKER) else ""
        parts.append(piece)
        length += len(piece)
        previous = token
    return "".join(parts)


# A quote in the output means a literal the tokenizer did not see as one: the last line of defence.
_QUOTES: Final[dict[str, re.Pattern[str]]] = {
    "postgresql": re.compile(r"'|\$\$"),
    "mysql": re.compile(r"['\"]"),
}


def _checked_text(token: _Tok) -> str:
    """The part of a token the quote check reads: a quoted identifier holds its own quotes."""
    return "" if token.kind == TokenType.IDENTIFIER else token.text


def obfuscate_sql(text: str, dialect: SqlDialect, *, max_length: int = 4096) -> ObfuscatedText:
    """Every string, number, hex/bit/byte and boolean literal -> ?; comments removed; IN/VALUES lists
    collapsed; PostgreSQL $n -> ?; NULL kept; truncated on a token boundary with " ..."; fails closed
    (PLACEHOLDER). The module docstring lists exactly what is replaced and kept."""
    if not text.strip():
        return ObfuscatedText("")
    tokens = _tokens(text, dialect)
    if tokens is None:
        return PLACEHOLDER
    tokens = _collapse_lists(tokens)
    quotes = _QUOTES[dialect]
    if any(quotes.search(_checked_text(t)) for t in tokens):
        return PLACEHOLDER
    return ObfuscatedText(_render(tokens, max_length))


# Operations a summary may name; any other first word gives OTHER (it could be anything).
_OPERATIONS: Final = frozenset(
    [
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "MERGE",
        "REPLACE",
        "UPSERT",
        "VALUES",
        "TABLE",
        "CALL",
        "EXEC",
        "EXECUTE",
        "DO",
        "BEGIN",
        "START",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT",
        "RELEASE",
        "END",
        "ABORT",
        "PREPARE",
        "DEALLOCATE",
        "SET",
        "RESET",
        "SHOW",
        "EXPLAIN",
        "DESCRIBE",
        "DESC",
        "CREATE",
        "ALTER",
        "DROP",
        "TRUNCATE",
        "RENAME",
        "GRANT",
        "REVOKE",
        "COPY",
        "VACUUM",
        "ANALYZE",
        "REINDEX",
        "CLUSTER",
        "LOCK",
        "UNLOCK",
        "LISTEN",
        "NOTIFY",
        "UNLISTEN",
        "FETCH",
        "MOVE",
        "CLOSE",
        "DECLARE",
        "DISCARD",
        "CHECKPOINT",
        "LOAD",
        "HANDLER",
        "KILL",
        "FLUSH",
        "OPTIMIZE",
        "REPAIR",
        "CHECKSUM",
        "USE",
        "PURGE",
        "XA",
        "REFRESH",
        "COMMENT",
        "SECURITY",
        "WITH",
    ]
)
_DML: Final = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE"})
# Words after which a DML keyword is not a statement: FOR UPDATE, ON DUPLICATE KEY UPDATE, DO UPDATE,
# ON DELETE CASCADE, GRANT SELECT.
_NOT_A_STATEMENT_AFTER: Final = frozenset({"FOR", "KEY", "DO", "ON", "GRANT", "REVOKE", ",", "TO"})
_TARGET_AFTER: Final = frozenset({"FROM", "JOIN", "INTO", "UPDATE", "TABLE"})
_SKIP_BEFORE_TARGET: Final = frozenset(
    {"ONLY", "LATERAL", "IGNORE", "LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "QUICK", "IF", "NOT", "EXISTS"}
)
# Words that end a name list or can never be a table name here.
_NOT_A_NAME: Final = frozenset(
    [
        "SELECT",
        "WITH",
        "VALUES",
        "WHERE",
        "SET",
        "ON",
        "USING",
        "AS",
        "GROUP",
        "ORDER",
        "LIMIT",
        "HAVING",
        "WINDOW",
        "UNION",
        "EXCEPT",
        "INTERSECT",
        "JOIN",
        "LEFT",
        "RIGHT",
        "INNER",
        "OUTER",
        "CROSS",
        "FULL",
        "NATURAL",
        "STRAIGHT_JOIN",
        "FROM",
        "INTO",
        "DEFAULT",
        "RETURNING",
        "OFFSET",
        "FETCH",
        "FOR",
        "PARTITION",
        "USE",
        "FORCE",
        "LOCK",
    ]
)
_DDL: Final = frozenset({"CREATE", "ALTER", "DROP", "TRUNCATE"})
_DDL_OBJECTS_WITH_NAME: Final = frozenset({"TABLE", "VIEW", "INDEX", "SEQUENCE"})
_DDL_OBJECTS: Final = frozenset(
    [
        "TABLE",
        "VIEW",
        "INDEX",
        "SEQUENCE",
        "SCHEMA",
        "DATABASE",
        "FUNCTION",
        "PROCEDURE",
        "TRIGGER",
        "EXTENSION",
        "TYPE",
        "USER",
        "ROLE",
        "MATERIALIZED",
        "UNIQUE",
        "TEMPORARY",
        "TEMP",
        "EVENT",
    ]
)
_NAME: Final = re.compile(r'[A-Za-z_][\w$]*|"[^"]+"|`[^`]+`')
_TRANSACTION_WORDS: Final = frozenset({"TRANSACTION", "WORK"})


def _is_name(token: _Tok) -> bool:
    return (
        not token.literal
        and token.upper not in _NOT_A_NAME
        and token.kind not in _NO_SPACE_BEFORE
        and token.kind not in _NO_SPACE_AFTER
        and _NAME.fullmatch(token.text) is not None
    )


def _dotted_name(tokens: list[_Tok], i: int) -> tuple[str, int]:
    """The (schema.)name starting at tokens[i] and the index after it; ("", i) when there is none."""
    if i >= len(tokens) or not _is_name(tokens[i]):
        return "", i
    parts = [tokens[i].text]
    i += 1
    while i + 1 < len(tokens) and tokens[i].kind == TokenType.DOT and _is_name(tokens[i + 1]):
        parts.append(tokens[i + 1].text)
        i += 2
    return ".".join(parts), i


def _summary_words(tokens: list[_Tok]) -> list[str]:
    first = tokens[0].upper
    if first not in _OPERATIONS:
        return [OTHER]
    words: list[str] = [] if first == "WITH" else [first]
    n = len(tokens)
    if first in ("START", "BEGIN") and n > 1 and tokens[1].upper in _TRANSACTION_WORDS:
        return [first, tokens[1].upper]
    if first == "CALL" or (first in ("EXEC", "EXECUTE") and n > 1):
        name, _ = _dotted_name(tokens, 1)
        return [first, name] if name else [first]
    if first in _DDL:
        words = [first]
        i = 1
        while i < n and tokens[i].upper in _DDL_OBJECTS | {"OR", "REPLACE", "GLOBAL", "LOCAL"}:
            if tokens[i].upper in _DDL_OBJECTS:
                words.append(tokens[i].upper)
            i += 1
        if words[-1] in _DDL_OBJECTS_WITH_NAME or first == "TRUNCATE":
            while i < n and tokens[i].upper in _SKIP_BEFORE_TARGET | {"CONCURRENTLY"}:
                i += 1
            name, _ = _dotted_name(tokens, i)
            if name and words[-1] != "INDEX":
                words.append(name)
        return words
    if first not in _DML and first not in ("WITH", "EXPLAIN", "TABLE", "VALUES", "COPY"):
        return words
    # Parentheses: True when the group is a subquery, so FROM inside EXTRACT(x FROM y) names no table.
    stack: list[bool] = []
    seen: set[str] = set()
    i = 0
    previous = ""
    main: str | None = None if first == "WITH" else first
    while i < n:
        token = tokens[i]
        upper = token.upper
        if token.kind == TokenType.L_PAREN:
            nxt = tokens[i + 1].upper if i + 1 < n else ""
            stack.append(nxt in ("SELECT", "WITH", "VALUES"))
        elif token.kind == TokenType.R_PAREN and stack:
            stack.pop()
        in_query = not stack or stack[-1]
        if i and upper in _DML and not token.literal and not stack and previous not in _NOT_A_STATEMENT_AFTER:
            # A statement at the top level: WITH's main one, or INSERT .. SELECT's second.
            if main is None:
                main = upper
                if first == "WITH":
                    words.insert(0, upper)
                elif upper not in words:
                    words.append(upper)
            elif upper not in words:
                words.append(upper)
        if (
            upper in _TARGET_AFTER
            and not token.literal
            and in_query
            and previous not in ("DISTINCT", "FOR", "KEY", "DO", ",")
            and not (upper == "TABLE" and i != 0 and previous not in ("LOCK", "TRUNCATE"))
        ):
            j = i + 1
            while j < n and tokens[j].upper in _SKIP_BEFORE_TARGET:
                j += 1
            while True:
                name, j = _dotted_name(tokens, j)
                if not name or (j < n and tokens[j].kind == TokenType.L_PAREN and upper != "INTO"):
                    break  # a function (generate_series(..)) or a subquery, not a table
                if name not in seen:
                    seen.add(name)
                    words.append(name)
                # FROM a x, b y: skip an alias, go on after a comma.
                if j < n and tokens[j].upper == "AS":
                    j += 1
                if j < n and _is_name(tokens[j]) and tokens[j].upper not in _TARGET_AFTER:
                    j += 1
                if upper == "FROM" and j < n and tokens[j].kind == TokenType.COMMA:
                    j += 1
                    continue
                break
        previous = upper
        i += 1
    return words or [OTHER]


def _bounded(words: Sequence[str], max_length: int) -> str:
    out = ""
    for word in words:
        candidate = f"{out} {word}" if out else word
        if len(candidate) > max_length:
            break
        out = candidate
    return out or OTHER


def query_summary(text: str, dialect: SqlDialect, *, max_length: int = 255) -> str:
    """Operation + target(s), as OpenTelemetry's db.query.summary ("SELECT orders customers"); never a
    literal; empty or unparsable text -> "OTHER"; cut at a word within max_length."""
    tokens = _tokens(text, dialect) if text.strip() else None
    if not tokens:
        return OTHER
    return _bounded(_summary_words(tokens), max_length)


# ------------------------------------------------------------------------------------------ MongoDB

# Command verbs whose value is the collection's name (kept); any other value of the command is "?".
_MONGO_COLLECTION_VERBS: Final = frozenset(
    [
        "find",
        "aggregate",
        "update",
        "delete",
        "insert",
        "count",
        "distinct",
        "findAndModify",
        "findandmodify",
        "mapReduce",
        "mapreduce",
        "create",
        "drop",
        "listIndexes",
        "createIndexes",
        "dropIndexes",
        "collMod",
        "validate",
        "collStats",
        "dataSize",
        "bulkWrite",
        "explain",
    ]
)
_MONGO_MAX_DEPTH: Final = 8
_MONGO_MAX_KEYS: Final = 64
_MONGO_MAX_ITEMS: Final = 16
_MONGO_MAX_CHARS: Final = 4096
_MONGO_KEY_SEGMENT: Final = re.compile(
    r"\$?[A-Za-z_][A-Za-z0-9_]{0,63}|\d{1,3}|\$|\$\[\]|\$\[[A-Za-z][A-Za-z0-9]{0,31}\]"
)
_COLLECTION_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,119}")
_MORE: Final = "..."


def _mongo_key(key: object) -> str:
    if not isinstance(key, str) or len(key) > 256:
        return "?"
    return ".".join(s if _MONGO_KEY_SEGMENT.fullmatch(s) else "?" for s in key.split("."))


def _mongo_value(value: object, depth: int) -> Any:
    if isinstance(value, Mapping):
        if depth >= _MONGO_MAX_DEPTH:
            return "?"
        return _mongo_document(value, depth + 1)
    if isinstance(value, list | tuple):
        if depth >= _MONGO_MAX_DEPTH:
            return ["?"]
        shapes: list[Any] = []
        for item in value:
            shape = _mongo_value(item, depth + 1)
            if not shapes or shapes[-1] != shape:
                if len(shapes) == _MONGO_MAX_ITEMS:
                    shapes.append(_MORE)
                    break
                shapes.append(shape)
        return shapes
    return "?"  # str, numbers, bool, None, ObjectId, datetime, bytes, Regex ...: all values


def _mongo_document(document: Mapping[Any, Any], depth: int, verb_keys: frozenset[str] = frozenset()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for index, (key, value) in enumerate(document.items()):
        if index == _MONGO_MAX_KEYS:
            out[_MORE] = "?"
            break
        name = _mongo_key(key)
        if name in verb_keys and isinstance(value, str) and _COLLECTION_NAME.fullmatch(value):
            out[name] = value
        else:
            out[name] = _mongo_value(value, depth)
    return out


def mongo_shape(command: Mapping[str, Any]) -> ObfuscatedText:
    """The command/filter as compact JSON, every value "?" but keys, operators, stage names and the
    verb's collection kept; bounded depth and size; anything odd -> PLACEHOLDER."""
    try:
        keys = list(command.keys())
        verb = keys[0] if keys else None
        verb_keys: set[str] = set()
        if isinstance(verb, str) and verb in _MONGO_COLLECTION_VERBS:
            verb_keys.add(verb)
        if verb == "getMore":
            verb_keys.add("collection")  # getMore's value is a cursor id; its collection is a field
        for depth_limit in (_MONGO_MAX_DEPTH, 3, 1):
            shape = _mongo_document_limited(command, frozenset(verb_keys), depth_limit)
            text = json.dumps(shape, separators=(",", ":"), ensure_ascii=False)
            if len(text) <= _MONGO_MAX_CHARS:
                return ObfuscatedText(text)
    except (TypeError, ValueError, RecursionError, AttributeError):
        pass
    return PLACEHOLDER


def _mongo_document_limited(command: Mapping[Any, Any], verb_keys: frozenset[str], depth_limit: int) -> dict[str, Any]:
    # Start deeper so that the usual limit applies below the top document: depth counts from the limit.
    return _mongo_document(command, _MONGO_MAX_DEPTH - depth_limit, verb_keys)


def mongo_summary(operation: str, collection: str) -> str:
    """'find orders'; an operation that is not plainly a name -> "OTHER"; a collection name that is not
    plainly a name is left out."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z_]{0,63}", operation or ""):
        return OTHER
    if collection and _COLLECTION_NAME.fullmatch(collection):
        return f"{operation} {collection}"
    return operation


# -------------------------------------------------------------------------------------------- Redis

# Key positions, as index ranges into the arguments after the command name.
#   ("first",): args[0]            ("all",): every argument        ("pairs",): args[0], args[2], ...
#   ("two",): args[0] and args[1]   ("all_but_last",): BLPOP k1 k2 timeout
#   ("numkeys", i, skip): args[i] is numkeys, keys follow it; (skip: leading keys before numkeys)
#   ("streams",): XREAD .. STREAMS k1 k2 id1 id2
_FIRST = ("first",)
_KEY_SPECS: Final[dict[str, tuple[Any, ...]]] = {
    **dict.fromkeys(
        [
            "GET",
            "SET",
            "SETNX",
            "SETEX",
            "PSETEX",
            "GETSET",
            "GETDEL",
            "GETEX",
            "APPEND",
            "STRLEN",
            "INCR",
            "DECR",
            "INCRBY",
            "DECRBY",
            "INCRBYFLOAT",
            "GETRANGE",
            "SETRANGE",
            "SUBSTR",
            "GETBIT",
            "SETBIT",
            "BITCOUNT",
            "BITPOS",
            "BITFIELD",
            "BITFIELD_RO",
            "EXPIRE",
            "PEXPIRE",
            "EXPIREAT",
            "PEXPIREAT",
            "EXPIRETIME",
            "PEXPIRETIME",
            "TTL",
            "PTTL",
            "PERSIST",
            "TYPE",
            "DUMP",
            "RESTORE",
            "HGET",
            "HSET",
            "HSETNX",
            "HMSET",
            "HMGET",
            "HDEL",
            "HLEN",
            "HEXISTS",
            "HGETALL",
            "HKEYS",
            "HVALS",
            "HINCRBY",
            "HINCRBYFLOAT",
            "HSCAN",
            "HSTRLEN",
            "HRANDFIELD",
            "HEXPIRE",
            "HTTL",
            "HPERSIST",
            "HGETDEL",
            "HGETEX",
            "HSETEX",
            "LPUSH",
            "RPUSH",
            "LPUSHX",
            "RPUSHX",
            "LPOP",
            "RPOP",
            "LLEN",
            "LRANGE",
            "LINDEX",
            "LSET",
            "LREM",
            "LTRIM",
            "LINSERT",
            "LPOS",
            "SADD",
            "SREM",
            "SMEMBERS",
            "SISMEMBER",
            "SMISMEMBER",
            "SCARD",
            "SPOP",
            "SRANDMEMBER",
            "SSCAN",
            "ZADD",
            "ZREM",
            "ZSCORE",
            "ZMSCORE",
            "ZINCRBY",
            "ZCARD",
            "ZCOUNT",
            "ZLEXCOUNT",
            "ZRANGE",
            "ZREVRANGE",
            "ZRANGEBYSCORE",
            "ZREVRANGEBYSCORE",
            "ZRANGEBYLEX",
            "ZREVRANGEBYLEX",
            "ZRANK",
            "ZREVRANK",
            "ZREMRANGEBYSCORE",
            "ZREMRANGEBYRANK",
            "ZREMRANGEBYLEX",
            "ZSCAN",
            "ZPOPMIN",
            "ZPOPMAX",
            "ZRANDMEMBER",
            "PFADD",
            "XADD",
            "XLEN",
            "XRANGE",
            "XREVRANGE",
            "XDEL",
            "XTRIM",
            "XACK",
            "XPENDING",
            "XCLAIM",
            "XAUTOCLAIM",
            "XSETID",
            "GEOADD",
            "GEODIST",
            "GEOPOS",
            "GEOHASH",
            "GEOSEARCH",
            "GEORADIUS",
            "GEORADIUS_RO",
            "GEORADIUSBYMEMBER",
            "GEORADIUSBYMEMBER_RO",
            "SORT",
            "SORT_RO",
            "LCS",
            "PUBLISH",
            "SPUBLISH",
            "JSON.GET",
            "JSON.SET",
            "JSON.DEL",
            "JSON.TYPE",
        ],
        _FIRST,
    ),
    **dict.fromkeys(
        [
            "MGET",
            "DEL",
            "UNLINK",
            "EXISTS",
            "TOUCH",
            "WATCH",
            "SINTER",
            "SUNION",
            "SDIFF",
            "SINTERSTORE",
            "SUNIONSTORE",
            "SDIFFSTORE",
            "PFCOUNT",
            "PFMERGE",
        ],
        ("all",),
    ),
    **dict.fromkeys(
        ["RENAME", "RENAMENX", "SMOVE", "RPOPLPUSH", "LMOVE", "BLMOVE", "BRPOPLPUSH", "COPY", "GEOSEARCHSTORE"],
        ("two",),
    ),
    **dict.fromkeys(["MSET", "MSETNX"], ("pairs",)),
    **dict.fromkeys(["BLPOP", "BRPOP", "BZPOPMIN", "BZPOPMAX"], ("all_but_last",)),
    **dict.fromkeys(["EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"], ("numkeys", 1, 0)),
    **dict.fromkeys(["ZUNIONSTORE", "ZINTERSTORE", "ZDIFFSTORE", "ZRANGESTORE"], ("numkeys", 1, 1)),
    **dict.fromkeys(["ZUNION", "ZINTER", "ZDIFF", "SINTERCARD", "ZINTERCARD", "LMPOP", "ZMPOP"], ("numkeys", 0, 0)),
    **dict.fromkeys(["BLMPOP", "BZMPOP"], ("numkeys", 1, 0)),
    **dict.fromkeys(["XREAD", "XREADGROUP"], ("streams",)),
    "OBJECT": ("sub_first",),  # OBJECT ENCODING key
    "MEMORY": ("sub_first",),  # MEMORY USAGE key
}
# Commands whose first argument is a subcommand, part of the name: CLIENT LIST, CONFIG GET.
_CONTAINERS: Final = frozenset(
    [
        "CLIENT",
        "CONFIG",
        "CLUSTER",
        "COMMAND",
        "MEMORY",
        "OBJECT",
        "SCRIPT",
        "XINFO",
        "XGROUP",
        "ACL",
        "SLOWLOG",
        "LATENCY",
        "DEBUG",
        "FUNCTION",
        "MODULE",
        "PUBSUB",
    ]
)
_COMMAND_NAME: Final = re.compile(r"[A-Za-z][A-Za-z_.|]{0,31}")
_KEY_SEPARATOR: Final = re.compile(r"([:/])")
_KEY_SEGMENT: Final = re.compile(r"[A-Za-z](?:[A-Za-z_.\-]{0,30}[A-Za-z])?")
_REDIS_MAX_ARGS: Final = 64
_REDIS_MAX_CHARS: Final = 1024


def _text(arg: bytes | str) -> str:
    if isinstance(arg, bytes | bytearray | memoryview):
        return bytes(arg).decode("utf-8", errors="replace")
    return str(arg)


def key_pattern(key: bytes | str) -> str:
    """`user:1234:email` -> `user:?:email`: each ':'- or '/'-separated segment kept only when plainly a name."""
    text = _text(key)
    if len(text) > 512:
        return "?"
    return "".join(
        part if part in (":", "/", "") or _KEY_SEGMENT.fullmatch(part) else "?" for part in _KEY_SEPARATOR.split(text)
    )


def _key_indexes(name: str, args: Sequence[bytes | str]) -> set[int]:
    spec = _KEY_SPECS.get(name)
    n = len(args)
    if spec is None or n == 0:
        return set()
    kind = spec[0]
    if kind == "first":
        return {0}
    if kind == "sub_first":
        return {1} if n > 1 else set()
    if kind == "all":
        return set(range(n))
    if kind == "two":
        return {i for i in (0, 1) if i < n}
    if kind == "pairs":
        return set(range(0, n, 2))
    if kind == "all_but_last":
        return set(range(n - 1))
    if kind == "numkeys":
        at, leading = spec[1], spec[2]
        keys = set(range(min(leading, n)))
        if at < n:
            try:
                count = int(_text(args[at]))
            except ValueError:
                return keys
            keys |= set(range(at + 1, min(at + 1 + max(count, 0), n)))
        return keys
    if kind == "streams":
        for i, arg in enumerate(args):
            if _text(arg).upper() == "STREAMS":
                rest = n - i - 1
                return set(range(i + 1, i + 1 + rest // 2))
        return set()
    return set()


def _redis_name(args: Sequence[bytes | str]) -> tuple[str, int] | None:
    """The command's name (with a container's subcommand) and how many arguments it takes up."""
    if not args:
        return None
    name = _text(args[0])
    if not _COMMAND_NAME.fullmatch(name):
        return None
    name = name.upper()
    if name in _CONTAINERS and len(args) > 1:
        sub = _text(args[1])
        if re.fullmatch(r"[A-Za-z][A-Za-z\-_]{0,31}", sub):
            return f"{name} {sub.upper()}", 2
        return f"{name} ?", 2
    return name, 1


def redis_command(args: Sequence[bytes | str]) -> ObfuscatedText:
    """Name + key patterns + `?` for every other argument: ['SET', 'user:1234:email', 'a@b.c'] ->
    'SET user:?:email ?'. Not a command -> PLACEHOLDER."""
    named = _redis_name(args)
    if named is None:
        return PLACEHOLDER
    name, used = named
    base = name.split(" ", 1)[0]
    rest = args[1:]  # positions in the key table count from the first argument after the command name
    keys = _key_indexes(base, rest)
    parts = [name]
    length = len(name)
    for index in range(used - 1, len(rest)):
        piece = key_pattern(rest[index]) if index in keys else "?"
        if index - (used - 1) >= _REDIS_MAX_ARGS or length + 1 + len(piece) > _REDIS_MAX_CHARS - len(TRUNCATION_MARKER):
            parts.append(TRUNCATION_MARKER.strip())
            break
        parts.append(piece)
        length += 1 + len(piece)
    return ObfuscatedText(" ".join(parts))


def redis_summary(args: Sequence[bytes | str]) -> str:
    """The command name, upper case, with a container's subcommand: 'SET', 'CLIENT LIST'; else "OTHER"."""
    named = _redis_name(args)
    return named[0] if named is not None else OTHER
