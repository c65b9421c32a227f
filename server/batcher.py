"""Cross-stream batching: chunks from concurrent streams share one encoder forward pass.

Sessions `await batcher.decode(stream)` for each ready chunk. One inference task collects the requests
that arrive while the previous batch runs, waits at most `max_wait_ms` for more when other streams are
active, and runs them through `decode_streams` in its own thread (off the event loop), one batch at a time
so that torch's intra-op threads have the cores to themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from speechadapt.asr import Stream
from speechadapt.asr.streaming import decode_streams
from speechadapt.server.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchConfig:
    max_batch: int = 32  # streams per forward pass
    max_wait_ms: float = 10.0  # longest a chunk waits for others to join its batch

    def __post_init__(self):
        if self.max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if not 0 <= self.max_wait_ms <= 100:
            raise ValueError("max_wait_ms must be 0..100")


@dataclass
class BatchStats:
    batches: int = 0
    chunks: int = 0
    forward_passes: int = 0

    @property
    def mean_batch(self) -> float:
        return self.chunks / self.forward_passes if self.forward_passes else 0.0


class Batcher:
    def __init__(self, config: BatchConfig = BatchConfig(), metrics: Metrics | None = None):
        self.config = config
        self.metrics = metrics or Metrics()
        self.stats = BatchStats()
        self.active = 0  # sessions with a stream open: worth waiting for when > 1
        self._pending: list[tuple[Stream, asyncio.Future]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")

    @contextlib.contextmanager
    def session(self):
        """Count a session as active while it streams."""
        self.active += 1
        try:
            yield self
        finally:
            self.active -= 1

    async def decode(self, stream: Stream) -> None:
        """Decode the stream's next ready chunk, batched with whatever other streams are ready."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run(), name="speechadapt-batcher")
        fut = loop.create_future()
        self._pending.append((stream, fut))
        self._wake.set()
        await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        while True:
            await self._wake.wait()
            if len(self._pending) < min(cfg.max_batch, self.active) and cfg.max_wait_ms > 0:
                deadline = loop.time() + cfg.max_wait_ms / 1000
                while len(self._pending) < min(cfg.max_batch, self.active) and loop.time() < deadline:
                    self._wake.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), deadline - loop.time())
            batch, self._pending = self._pending[: cfg.max_batch], self._pending[cfg.max_batch :]
            if not self._pending:
                self._wake.clear()
            live = [(s, f) for s, f in batch if not f.done()]  # a cancelled caller's chunk is dropped
            if not live:
                continue
            try:
                passes = await loop.run_in_executor(self._thread, decode_streams, [s for s, _ in live])
            except Exception as e:  # noqa: BLE001 - every caller hears about it; the batcher goes on
                log.exception("batched decoding failed")
                for _, f in live:
                    if not f.done():
                        f.set_exception(e)
                continue
            self.stats.batches += 1
            self.stats.chunks += len(live)
            self.stats.forward_passes += passes
            self.metrics.batch(len(live))
            for _, f in live:
                if not f.done():
                    f.set_result(None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._thread.shutdown(wait=False, cancel_futures=True)
