"""Wrapping grpc.aio method handlers: run code around a call whatever its streaming kind (for interceptors)."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any

import grpc

# a function of the call's context giving the context manager the call runs inside
Scope = Callable[[Any], contextlib.AbstractContextManager]

_KINDS = (("unary_unary", grpc.unary_unary_rpc_method_handler), ("unary_stream", grpc.unary_stream_rpc_method_handler),
          ("stream_unary", grpc.stream_unary_rpc_method_handler), ("stream_stream", grpc.stream_stream_rpc_method_handler))


def _around(behavior, scope: Scope):
    """`behavior` (a coroutine or async generator function) running inside `scope(context)`: the scope is
    entered when the call starts and left when it ends, with the exception that ended it, if any."""
    if inspect.isasyncgenfunction(behavior):
        async def stream(request, context):
            with scope(context):
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        yield response
        return stream

    async def call(request, context):
        with scope(context):
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
    return call


def wrap(handler: grpc.RpcMethodHandler, scope: Scope) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` whose behaviour runs inside `scope(context)`."""
    for attr, make in _KINDS:
        behavior = getattr(handler, attr)
        if behavior is not None:
            return make(_around(behavior, scope), request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)
    return handler


def refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as `handler` that ends the call with `code` and `message`."""

    async def refuse(_request, context):
        await context.abort(code, message)

    make = dict(_KINDS)[{(False, False): "unary_unary", (False, True): "unary_stream", (True, False): "stream_unary",
                         (True, True): "stream_stream"}[(bool(handler.request_streaming), bool(handler.response_streaming))]]
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
