"""Graceful drain: what a server does between SIGTERM and its stop (`SpeechServer.drain_and_stop`).

`Drain.begin()`: new recognitions (StreamingRecognize, Recognize), uploads (UploadData), job submissions and job
watches are refused with UNAVAILABLE, a message that says the server is draining and to retry on another replica
or here after the restart, and `grpc-retry-pushback-ms` trailing metadata; the job watches already open end at
once the same way (the clients' waits resume them). The recognitions and uploads already open run on:
`wait(seconds)` returns once they have all ended, when `seconds` have passed, or at `hurry()` (a second signal),
and `cut(why)` then ends those still open with UNAVAILABLE. Every other call (job and model queries, CheckUpload,
CancelJob, health, reflection) is served as usual until the server stops.

`DrainInterceptor` applies this to each call: it runs the methods above inside `Drain.call`, which refuses them
while draining and otherwise tracks them (their tasks) until they end. An open call is ended by cancelling its
task; the cancellation reaches the method where it waits (for the client's next message, a decode) and the call
ends with UNAVAILABLE and the reason. One `Drain` per server, used on its event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from speechadapt.server.handlers import inside
from speechadapt.v1 import adaptation_pb2, recognizer_pb2

log = logging.getLogger(__name__)

RETRY_PUSHBACK_MS = 1000  # the delay a retrying client (a gRPC retry policy) is told to wait
PUSHBACK = (("grpc-retry-pushback-ms", str(RETRY_PUSHBACK_MS)),)
RETRY_HINT = "retry on another replica, or here after the restart"


def _method(module, service: str, name: str) -> str:
    return f"/{module.DESCRIPTOR.services_by_name[service].full_name}/{name}"


# What a draining server does with a method: (what its calls are, whether open ones may run to their end);
# an open call that may not is ended when the drain begins. Methods not listed are served as usual.
POLICY: dict[str, tuple[str, bool]] = {
    _method(recognizer_pb2, "Recognizer", "StreamingRecognize"): ("recognitions", True),
    _method(recognizer_pb2, "Recognizer", "Recognize"): ("recognitions", True),
    _method(adaptation_pb2, "Adaptation", "UploadData"): ("uploads", True),
    _method(adaptation_pb2, "Adaptation", "SubmitJob"): ("jobs", True),
    _method(adaptation_pb2, "Adaptation", "WatchJob"): ("job watches", False),
}
WATCH_ENDED = ("the server is draining before it stops: watch the job again on another replica, or here after "
               "the restart (the job keeps its state)")


class Drain:
    def __init__(self):
        self.draining = False
        self.hurried = False
        self._open: set[asyncio.Task] = set()  # calls a drain lets run to their end
        self._ended_at_begin: set[asyncio.Task] = set()  # calls a drain ends at once
        self._ending: dict[asyncio.Task, str] = {}  # calls this drain cancelled -> why
        self._idle = asyncio.Event()
        self._idle.set()
        self._hurry = asyncio.Event()

    @property
    def open_calls(self) -> int:
        return len(self._open)

    def begin(self) -> None:
        """Refuse new calls of the POLICY methods from now on; end the open ones that may not run on."""
        if self.draining:
            return
        self.draining = True
        self._end(self._ended_at_begin, WATCH_ENDED)

    def hurry(self) -> None:
        """Cut `wait` short (a second signal: stop at once)."""
        self.hurried = True
        self._hurry.set()

    async def wait(self, seconds: float) -> bool:
        """Until every open call has ended (True), or `seconds` have passed or `hurry()` came (False)."""
        if not self._open:
            return True
        idle = asyncio.ensure_future(self._idle.wait())
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            await asyncio.wait({idle, hurry}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
            hurry.cancel()
        return not self._open

    async def cut(self, why: str, timeout: float = 5.0) -> int:
        """End the calls still open with UNAVAILABLE saying `why` the server stopped before they ended; waits up
        to `timeout` s for them to send it. Returns how many there were."""
        tasks = self._end(self._open, f"the server stopped before this call ended ({why}): {RETRY_HINT}")
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        return len(tasks)

    def _end(self, calls: set[asyncio.Task], message: str) -> list[asyncio.Task]:
        tasks = [t for t in calls if not t.done()]
        for t in tasks:
            self._ending[t] = message
            t.cancel()
        return tasks

    @contextlib.asynccontextmanager
    async def call(self, context: grpc.aio.ServicerContext, what: str, runs_on: bool):
        """One call of a POLICY method: refused while draining; tracked while it runs; a call this drain ends
        gets UNAVAILABLE and the reason (any other cancellation, e.g. the client went away, passes through)."""
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"the server is draining before it stops and takes no new {what}: {RETRY_HINT}",
                                PUSHBACK)
        task = asyncio.current_task()
        calls = self._open if runs_on else self._ended_at_begin
        calls.add(task)
        if runs_on:
            self._idle.clear()
        try:
            yield
        except asyncio.CancelledError:
            message = self._ending.get(task)
            if message is None:
                raise
            task.uncancel()  # handled: the call ends with the reason instead
            await context.abort(grpc.StatusCode.UNAVAILABLE, message, PUSHBACK)
        finally:
            calls.discard(task)
            self._ending.pop(task, None)
            if not self._open:
                self._idle.set()


class DrainInterceptor(grpc.aio.ServerInterceptor):
    """Runs the POLICY methods inside `Drain.call` (see the module docstring)."""

    def __init__(self, drain: Drain):
        self.drain = drain

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        policy = POLICY.get(handler_call_details.method)
        if handler is None or policy is None:
            return handler
        what, runs_on = policy
        return inside(handler, lambda context: self.drain.call(context, what, runs_on))
