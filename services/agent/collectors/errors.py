"""The one-line, secret-free message every collector puts in a QueryError."""

from __future__ import annotations

from pydantic import SecretStr


def secret_values(password: SecretStr | None) -> tuple[str, ...]:
    """What no error message may show, as error_message's `secrets`."""
    return (password.get_secret_value(),) if password is not None else ()


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def error_message(
    exc: BaseException, text: str, *, reason: str, secrets: tuple[str, ...] = (), prefix: str = ""
) -> str:
    """`<prefix>: <ExceptionType>: <text>`, with every secret replaced by *** (drivers may echo a DSN)."""
    if reason == "timeout" and not text:
        text = "no reply within the poll timeout"
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if prefix:
        message = f"{prefix}: {message}"
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message
