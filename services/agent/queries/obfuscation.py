"""Placeholder until the obfuscation kit lands (branch `obfuscation`): the API only, failing closed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal


class ObfuscatedText(str):
    """Text that went through this module's obfuscation. Only this module's functions construct it."""


SqlDialect = Literal["postgresql", "mysql"]


def obfuscate_sql(text: str, dialect: SqlDialect, *, max_length: int = 4096) -> ObfuscatedText:
    return ObfuscatedText("?")


def query_summary(text: str, dialect: SqlDialect, *, max_length: int = 255) -> str:
    return "OTHER"


def mongo_shape(command: Mapping[str, Any]) -> ObfuscatedText:
    return ObfuscatedText("?")


def mongo_summary(operation: str, collection: str) -> str:
    return "OTHER"


def redis_command(args: Sequence[bytes | str]) -> ObfuscatedText:
    return ObfuscatedText("?")


def redis_summary(args: Sequence[bytes | str]) -> str:
    return "OTHER"
