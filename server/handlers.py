"""Reshaping gRPC method handlers, for server interceptors: a handler that refuses every call, and the same
handler with its method run inside an async context manager (to set who calls, to track the call)."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import AsyncContextManager

import grpc

_MAKERS = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
           (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
_BEHAVIORS = {(False, False): "unary_unary", (False, True): "unary_stream", (True, False): "stream_unary",
              (True, True): "stream_stream"}


def _kind(handler: grpc.RpcMethodHandler) -> tuple[bool, bool]:
    return bool(handler.request_streaming), bool(handler.response_streaming)


def _remade(handler: grpc.RpcMethodHandler, behavior) -> grpc.RpcMethodHandler:
    return _MAKERS[_kind(handler)](behavior, request_deserializer=handler.request_deserializer,
                                   response_serializer=handler.response_serializer)


def refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str,
            trailing_metadata: tuple = ()) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as `handler` that ends the call with `code` and `message`."""

    async def refuse(_request, context):
        await context.abort(code, message, trailing_metadata)

    return _remade(handler, refuse)


def inside(handler: grpc.RpcMethodHandler,
           enter: Callable[[grpc.aio.ServicerContext], AsyncContextManager]) -> grpc.RpcMethodHandler:
    """`handler` with its method run inside `enter(context)`: entered before the method starts, left when the call
    ends (a streamed response's last message sent, or an exception, cancellation included)."""
    behavior = getattr(handler, _BEHAVIORS[_kind(handler)])
    if behavior is None:
        return handler
    if inspect.isasyncgenfunction(behavior):
        async def stream(request, context):
            async with enter(context):
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        yield response
        return _remade(handler, stream)

    async def call(request, context):
        async with enter(context):
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
    return _remade(handler, call)
