"""Secret references: `${env:NAME}` or `${file:/path}`, resolved only on the agent, at connect time.

The config, the coordinator, Redis, gRPC and logs only ever see the reference text. Errors name
the reference, never a value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr

_REFERENCE = re.compile(r"^\$\{(env|file):([^}]+)\}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SecretResolutionError(Exception):
    """A secret reference could not be resolved. The message names the reference only."""


def check_reference(text: str, what: str = "the password") -> str:
    """Validate the form of a reference; raise ValueError (for config validation) otherwise."""
    match = _REFERENCE.match(text)
    if not match:
        raise ValueError(f"must be a reference, ${{env:NAME}} or ${{file:/path}}, never {what} itself")
    kind, target = match.groups()
    if kind == "env" and not _ENV_NAME.match(target):
        raise ValueError(f"${{env:{target}}}: not a valid environment variable name")
    if kind == "file" and not target.startswith("/"):
        raise ValueError(f"${{file:{target}}}: the file path must be absolute")
    return text


def resolve_secret(reference: str | None, environ: Mapping[str, str] | None = None) -> SecretStr | None:
    """Resolve a reference to its value, wrapped so that repr() and logs never show it."""
    if reference is None:
        return None
    match = _REFERENCE.match(reference)
    if not match:
        raise SecretResolutionError("secret is not a ${env:NAME} or ${file:/path} reference")
    kind, target = match.groups()
    if kind == "env":
        env = os.environ if environ is None else environ
        if target not in env:
            raise SecretResolutionError(f"${{env:{target}}}: environment variable {target} is not set")
        return SecretStr(env[target])
    try:
        return SecretStr(Path(target).read_text().rstrip("\r\n"))
    except OSError as exc:
        raise SecretResolutionError(f"${{file:{target}}}: cannot read the file ({exc.strerror})") from None
