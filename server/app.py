"""The grpc.aio server: services, health, reflection, TLS, lifecycle."""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from speechadapt.server import logs
from speechadapt.server.access import AccessInterceptor
from speechadapt.server.adaptation import AdaptationService, AdaptationUnavailable, JobManager
from speechadapt.server.auth import AuthInterceptor, Authenticator, is_loopback
from speechadapt.server.batcher import BatchConfig, Batcher
from speechadapt.server.config import ServerConfig
from speechadapt.server.datastore import DataStore
from speechadapt.server.drain import Drain, DrainInterceptor
from speechadapt.server.jobs import JobStore
from speechadapt.server.metrics import Metrics
from speechadapt.server.models_service import ModelsService
from speechadapt.server.ray_backend import RayBackend
from speechadapt.server.recognizer import Admission, RecognizerService
from speechadapt.server.registry import ModelRegistry
from speechadapt.v1 import adaptation_pb2, adaptation_pb2_grpc, models_pb2, models_pb2_grpc, recognizer_pb2, recognizer_pb2_grpc

log = logging.getLogger("speechadapt.server")

SERVICES = (
    recognizer_pb2.DESCRIPTOR.services_by_name["Recognizer"].full_name,
    models_pb2.DESCRIPTOR.services_by_name["Models"].full_name,
    adaptation_pb2.DESCRIPTOR.services_by_name["Adaptation"].full_name,
)


class SpeechServer:
    """Build with a config, `await start()`, `port` is then the bound port; `await stop()`.

    Adaptation state (job database, uploads, run folders) lives in `config.state_path`; on start, jobs an earlier
    server left unfinished are re-attached. `stop()` stops following jobs (they keep their state for the next
    server with the same state dir) and stops the Ray head this server started, if any.

    `metrics` holds the server's Prometheus metrics (server/metrics.py); with `config.metrics_port` they are
    served over HTTP from `start()` to `stop()`, `metrics_port` being the bound port. `drain_and_stop()`
    (SIGTERM) first drains: no new recognitions, health NOT_SERVING, open streams run on for a while
    (server/drain.py)."""

    def __init__(self, config: ServerConfig):
        self.config = config
        # the token file is read first: a bad one stops the server before it loads anything (TokenFileError)
        self.auth = Authenticator(config.auth_tokens) if config.auth_tokens else None
        torch.set_num_threads(config.threads or config.cores)
        self.metrics = Metrics()
        self.registry = ModelRegistry(config.model_store, config.default_model, config.device,
                                      memory_budget_bytes=config.model_memory_mb * 1024 * 1024, threads=config.threads,
                                      metrics=self.metrics)
        self.admission = Admission(config.max_streams)
        self.executor = ThreadPoolExecutor(max_workers=config.workers or config.cores, thread_name_prefix="infer")
        self.batcher = Batcher(BatchConfig(config.batch_max, config.batch_wait_ms), self.metrics)
        self.drain = Drain()
        self.server: grpc.aio.Server | None = None
        self.health: health.aio.HealthServicer | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.jobs: JobManager | None = None

    def reload_auth(self) -> bool:
        """Re-read the --auth-tokens file (SIGHUP); a bad file keeps the current tokens (logged). True if reloaded."""
        if self.auth is None:
            log.info("no --auth-tokens file to reload: the server is open")
            return False
        return self.auth.reload()

    async def start(self) -> int:
        if self.config.metrics_port is not None:  # first: a port in use stops the server before it loads anything
            self.metrics_port = self.metrics.serve(self.config.metrics_bind, self.config.metrics_port)
        try:
            return await self._start()
        except BaseException:
            self.metrics.close()
            raise

    async def _start(self) -> int:
        opts = [
            ("grpc.max_receive_message_length", self.config.max_message_bytes),
            ("grpc.max_send_message_length", self.config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        await asyncio.to_thread(self.registry.prepare_default)
        # the access interceptor first (outermost): it also counts the calls the auth interceptor refuses
        interceptors = [AccessInterceptor(self.metrics, log_rpcs=self.config.log_format == "json")]
        if self.auth is not None:
            interceptors.append(AuthInterceptor(self.auth))
        interceptors.append(DrainInterceptor(self.drain))
        server = grpc.aio.server(options=opts, interceptors=interceptors)
        state = self.config.state_path
        try:
            data = DataStore(state / "data", self.config.max_blob_bytes, self.config.upload_quota_bytes,
                             self.config.min_free_disk_bytes)
            self.jobs = JobManager(JobStore(state / "jobs.sqlite"), data,
                                   RayBackend(self.config.ray_address, state, self.config.ray_num_cpus),
                                   self.config.model_store, state / "runs", data_roots=self.config.data_roots)
            adaptation = AdaptationService(self.jobs, self.registry, self.config.max_upload_bytes,
                                           authenticated=self.auth is not None, metrics=self.metrics)
            self.metrics.count_jobs(self.jobs.store.count_by_state)
        except (OSError, sqlite3.Error) as e:  # recognition still works; adaptation calls say why they cannot
            log.error("adaptation is unavailable: cannot use the state dir %s: %s", state, e)
            self.jobs = None
            adaptation = AdaptationUnavailable(f"its state dir {state} cannot be used ({e}); "
                                               "restart it with a writable --state-dir")
        recognizer_pb2_grpc.add_RecognizerServicer_to_server(RecognizerService(
            self.registry, self.admission, self.executor, self.batcher, self.config.write_timeout_s,
            max_decoded_samples=2 * self.config.max_message_bytes, metrics=self.metrics), server)
        models_pb2_grpc.add_ModelsServicer_to_server(ModelsService(self.registry), server)
        adaptation_pb2_grpc.add_AdaptationServicer_to_server(adaptation, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(SERVICES + (health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
        address = f"{self.config.host}:{self.config.port}"
        if self.config.tls_cert:
            ca = self.config.tls_client_ca
            creds = grpc.ssl_server_credentials([(self.config.tls_key.read_bytes(), self.config.tls_cert.read_bytes())],
                                                root_certificates=ca.read_bytes() if ca else None,
                                                require_client_auth=ca is not None)
            self.port = server.add_secure_port(address, creds)
        else:
            self.port = server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot bind {address}")
        await server.start()
        for name in SERVICES + ("",):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.server, self.health = server, health_servicer
        if self.jobs is not None:
            await self.jobs.start()
        transport = ("mTLS" if self.config.tls_client_ca else "TLS") if self.config.tls_cert else "plaintext"
        access = f"{len(self.auth.table)} bearer tokens" if self.auth is not None else "no authentication"
        log.info("serving on %s:%d (%s, %s), model store %s, state %s", self.config.host, self.port, transport,
                 access, self.config.model_store, state)
        if self.metrics_port is not None:
            log.info("metrics on %s", self.metrics_url,
                     extra=logs.fields("metrics", host=self.config.metrics_bind, port=self.metrics_port))
        for root in self.config.data_roots:
            if not root.is_dir():
                log.warning("--data-root %s is not a folder on this machine: jobs can name files under it only if "
                            "the Ray workers have it", root)
        log.info("jobs read uploads (data://) and %s", "files under " + ", ".join(map(str, self.config.data_roots))
                 if self.config.data_roots else "nothing else (no --data-root)")
        if self.auth is None and not is_loopback(self.config.host):
            log.warning("the server is unauthenticated and listens on %s: anyone who reaches the port may recognise, "
                        "run jobs and read every job; start it with --auth-tokens FILE", self.config.host)
        return self.port

    @property
    def metrics_url(self) -> str | None:
        """Where the metrics are served once started (None without a metrics port)."""
        if self.metrics_port is None:
            return None
        host = self.config.metrics_bind
        return f"http://{f'[{host}]' if ':' in host else host}:{self.metrics_port}/metrics"

    async def stop(self, grace: float = 2.0) -> None:
        if self.server is not None:
            await self.server.stop(grace)
        await asyncio.to_thread(self.metrics.close)  # before the job store closes: scrapes read it
        self.metrics.count_jobs(None)
        if self.jobs is not None:
            await self.jobs.stop()
            self.jobs.store.close()
            self.jobs.data.close()
        await self.batcher.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def drain_and_stop(self, seconds: float) -> None:
        """Drain, then stop: new recognitions, uploads, job submissions and watches get UNAVAILABLE (retry
        elsewhere), health says NOT_SERVING, open recognitions and uploads run on until they end, `seconds` pass
        or `self.drain.hurry()` (a second signal); those still open then end with UNAVAILABLE. Jobs are not
        cancelled: `stop()` only stops following them."""
        self.drain.begin()
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        log.info("draining: no new recognitions; waiting up to %g s for %d open calls (a second SIGTERM or SIGINT "
                 "stops at once)", seconds, self.drain.open_calls)
        if await self.drain.wait(seconds):
            log.info("drained: no open calls")
        else:
            why = "it was told to stop at once" if self.drain.hurried else f"its drain time of {seconds:g} s ran out"
            n = await self.drain.cut(why)
            log.warning("ended %d calls still open: %s", n, why)
        await self.stop()

    async def wait(self) -> None:
        await self.server.wait_for_termination()


async def _serve(config: ServerConfig) -> None:
    srv = SpeechServer(config)
    port = await srv.start()
    print(f"speechadapt server listening on {config.host}:{port}", flush=True)
    if srv.metrics_url is not None:
        print(f"speechadapt metrics on {srv.metrics_url}", flush=True)
    stop = asyncio.Event()

    def on_stop_signal():
        if stop.is_set():
            log.info("a second stop signal: ending open calls now")
            srv.drain.hurry()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_stop_signal)
    loop.add_signal_handler(signal.SIGHUP, srv.reload_auth)
    await stop.wait()
    log.info("shutting down")
    await srv.drain_and_stop(config.drain_seconds)


def run(config: ServerConfig) -> int:
    """Serve until SIGINT or SIGTERM, then drain for up to `config.drain_seconds` (a second signal: at once) and
    stop (SIGHUP re-reads the --auth-tokens file). Returns an exit code."""
    logs.setup(config.log_format)
    config.model_store.mkdir(parents=True, exist_ok=True)
    asyncio.run(_serve(config))
    return 0


__all__ = ["ServerConfig", "SpeechServer", "run"]
