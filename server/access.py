"""The outermost interceptor: counts every RPC by method and status code (server/metrics.py) and, with
`--log-format json`, writes one access log line per RPC (method, peer, status code, duration, the caller's
token name when --auth-tokens is on; never tokens, metadata or payloads)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import grpc

from speechadapt.server.auth import CALLER
from speechadapt.server.handlers import inside
from speechadapt.server.logs import fields
from speechadapt.server.metrics import UNKNOWN_METHOD, Metrics, code_name

access_log = logging.getLogger("speechadapt.access")
MAX_LOGGED_METHOD = 200  # an unknown method's path comes from the client: bounded in the log


def _outcome(context, error: BaseException | None) -> str:
    """The status code name a call ended with: from how it ended, or as abort / set_code left it."""
    # the client went away (or the server stops): the handler was cancelled, or sending to the client failed
    # (grpc.aio.InternalError, e.g. the status of an abort after the client cancelled its stream)
    if isinstance(error, (asyncio.CancelledError, GeneratorExit, grpc.aio.InternalError)):
        return grpc.StatusCode.CANCELLED.name
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN.name  # an exception the handler did not turn into a status
    return code_name(context.code())


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Metrics (and, when `log_rpcs`, an access log line) for every call, refused ones included: list it first."""

    def __init__(self, metrics: Metrics, log_rpcs: bool = False):
        self.metrics, self.log_rpcs = metrics, log_rpcs

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None:  # not implemented here: grpc answers UNIMPLEMENTED
            self.metrics.rpc_finished(UNKNOWN_METHOD, grpc.StatusCode.UNIMPLEMENTED.name)
            self._log(method[:MAX_LOGGED_METHOD], "", grpc.StatusCode.UNIMPLEMENTED.name, 0.0)
            return None
        return inside(handler, lambda context: self._observe(method, context))

    @contextlib.asynccontextmanager
    async def _observe(self, method: str, context):
        start = time.perf_counter()
        # the peer is read now, while the call is surely alive (not after a refused call's client has gone)
        peer = context.peer() if self.log_rpcs else ""
        self.metrics.rpc_started(method)
        error = None
        try:
            yield
        except BaseException as e:
            error = e
            raise
        finally:
            code = _outcome(context, error)
            self.metrics.rpc_finished(method, code)
            self._log(method, peer, code, time.perf_counter() - start)

    def _log(self, method: str, peer: str, code: str, seconds: float) -> None:
        if not self.log_rpcs:
            return
        caller = CALLER.get()
        values = {"method": method, "peer": peer, "code": code, "duration_ms": round(seconds * 1000, 3)}
        if caller is not None:
            values["caller"] = caller.name
        access_log.info("%s %s %.1f ms", method, code, seconds * 1000, extra=fields("rpc", **values))
