"""What both gRPC services do with a request field: check it, or end the call with a status naming it."""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn, TypeVar

import grpc

from . import validation

T = TypeVar("T")


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    """End the call with `code`. The stubs type `ServicerContext.abort` as returning; it always raises."""
    await context.abort(code, details)
    raise AssertionError("ServicerContext.abort returned")  # pragma: no cover - grpc raises first


async def checked(context: grpc.aio.ServicerContext, check: Callable[..., T], *args: object) -> T:
    """`check(*args)`, or end the call with INVALID_ARGUMENT and the check's message (it names the field)."""
    try:
        return check(*args)
    except validation.InvalidArgument as exc:
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
