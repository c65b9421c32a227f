"""Prometheus metrics of one server (`speechadapt serve --metrics-port N`).

Every `SpeechServer` has its own `Metrics`: a private `CollectorRegistry` (never prometheus_client's global
one, so two servers in one process keep separate counts) and the metric objects the server's parts update
through the methods below. `serve(host, port)` exposes them as Prometheus text on `http://HOST:PORT/metrics`
(a prometheus_client HTTP server in a daemon thread); `close()` stops it. Without a port nothing listens and
the counts are kept all the same (cheap).

Names follow the Prometheus conventions: prefix `speechadapt_`, counters end in `_total`, base units
(`_seconds`, `_bytes`). Label values are bounded: `method` is a method this server implements (others are
counted as `unknown`), `code` a gRPC status code name, `model` a served `name@version`, `state` a job state.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from speechadapt.v1 import recognizer_pb2

log = logging.getLogger(__name__)

STREAMING_RECOGNIZE = "/{}/StreamingRecognize".format(recognizer_pb2.DESCRIPTOR.services_by_name["Recognizer"].full_name)
UNKNOWN_METHOD = "unknown"

RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def code_name(code: grpc.StatusCode | int | None) -> str:
    """The name of a gRPC status code given as a StatusCode, its number, or None (OK)."""
    if code is None:
        return grpc.StatusCode.OK.name
    if isinstance(code, grpc.StatusCode):
        return code.name
    for c in grpc.StatusCode:
        if c.value[0] == code:
            return c.name
    return grpc.StatusCode.UNKNOWN.name


class _JobStates:
    """The `speechadapt_jobs` gauge: jobs per state, read from the job store at each scrape."""

    def __init__(self):
        self.counts: Callable[[], dict[str, int]] | None = None  # set once the server has a job store

    def describe(self) -> Iterable:
        return []  # nothing to collect at registration: the job store does not exist yet

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("speechadapt_jobs", "Adaptation jobs in the job store, by state.", labels=["state"])
        counts = self.counts
        if counts is not None:
            try:
                for state, n in counts().items():
                    family.add_metric([state], n)
            except sqlite3.Error as e:  # e.g. a scrape racing the store's close at shutdown
                log.debug("job counts unavailable: %s", e)
        yield family


class Metrics:
    """The metric objects of one server, and the HTTP endpoint that serves them."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.active_streams = Gauge("speechadapt_active_streams", "StreamingRecognize calls in progress.", registry=r)
        self.streams = Counter("speechadapt_streams_total", "StreamingRecognize calls finished, by gRPC status code.",
                               ["code"], registry=r)
        self.rpcs = Counter("speechadapt_rpcs_total", "RPCs finished, by method and gRPC status code.",
                            ["method", "code"], registry=r)
        self.audio = Counter("speechadapt_audio_seconds_total", "Seconds of audio received for recognition, by model.",
                             ["model"], registry=r)
        self.rtf = Histogram("speechadapt_real_time_factor", "Decoding time over audio time: per final result of a "
                             "stream, per call of Recognize.", ["model"], buckets=RTF_BUCKETS, registry=r)
        self.final_latency = Histogram("speechadapt_final_latency_seconds", "Time from the end of a stream's audio "
                                       "to its last final result.", ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("speechadapt_batch_size", "Stream chunks decoded together per batch (streams "
                                    "whose shapes or models differ take a forward pass each).",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.model_loads = Counter("speechadapt_model_loads_total", "Models read from disk, by model.", ["model"],
                                   registry=r)
        self.model_unloads = Counter("speechadapt_model_unloads_total", "Models unloaded to stay within "
                                     "--model-memory-mb, by model.", ["model"], registry=r)
        self.upload_bytes = Counter("speechadapt_upload_bytes_total", "Blob bytes received by UploadData.", registry=r)
        self.job_states = _JobStates()
        r.register(self.job_states)
        self._http: tuple[WSGIServer, threading.Thread] | None = None

    # -- updates

    def rpc_started(self, method: str) -> None:
        if method == STREAMING_RECOGNIZE:
            self.active_streams.inc()

    def rpc_finished(self, method: str, code: str) -> None:
        """Count one finished RPC; `method` is UNKNOWN_METHOD for a method the server does not implement."""
        self.rpcs.labels(method, code).inc()
        if method == STREAMING_RECOGNIZE:
            self.active_streams.dec()
            self.streams.labels(code).inc()

    def audio_received(self, model: str, seconds: float) -> None:
        if seconds > 0:
            self.audio.labels(model).inc(seconds)

    def decoded(self, model: str, compute_seconds: float, audio_seconds: float) -> None:
        """A real-time factor observation (skipped without audio)."""
        if audio_seconds > 0:
            self.rtf.labels(model).observe(compute_seconds / audio_seconds)

    def final_after_end(self, model: str, seconds: float) -> None:
        self.final_latency.labels(model).observe(seconds)

    def batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def model_loaded(self, model: str) -> None:
        self.model_loads.labels(model).inc()

    def model_unloaded(self, model: str) -> None:
        self.model_unloads.labels(model).inc()

    def uploaded(self, nbytes: int) -> None:
        self.upload_bytes.inc(nbytes)

    def count_jobs(self, counts: Callable[[], dict[str, int]] | None) -> None:
        """Where `speechadapt_jobs` reads its numbers (a job store's `count_by_state`), None: nowhere."""
        self.job_states.counts = counts

    # -- the endpoint

    def serve(self, host: str, port: int) -> int:
        """Serve `/metrics` on host:port (0 = a free port) in a daemon thread; returns the bound port."""
        if self._http is not None:
            raise RuntimeError("the metrics endpoint is already serving")
        try:
            self._http = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise OSError(e.errno, f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None
        return self._http[0].server_port

    def close(self) -> None:
        """Stop serving (blocks until the HTTP thread has ended, at most about half a second)."""
        if self._http is not None:
            httpd, thread = self._http
            self._http = None
            httpd.shutdown()
            httpd.server_close()
            thread.join(5)
