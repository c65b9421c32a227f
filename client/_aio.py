"""AsyncSpeechClient: the asyncio client over a grpc.aio channel."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from speechadapt.client import jobs
from speechadapt.client._grpc import (LOST_STATUS_RETRIES, Config, RequestFeed, WaitClock, auth_metadata,
                                      channel_credentials, check_target, file_config, lost_status)
from speechadapt.client.audio import apaced, bytes_per_second, pcm_chunks, read_audio
from speechadapt.client.types import Job, JobEvent, ModelInfo, Result, SpeechAdaptError
from speechadapt.client.upload import DEFAULT_CHUNK_BYTES, ProgressCallback, Upload, read_local_manifest
from speechadapt.v1 import (
    adaptation_pb2, adaptation_pb2_grpc, models_pb2, models_pb2_grpc, recognizer_pb2, recognizer_pb2_grpc,
)


class AsyncSpeechClient:
    """SpeechClient for asyncio: the same constructor; coroutines and async iterators.

    The channel opens on first use and belongs to that event loop: use one
    client within one loop (e.g. one asyncio.run).

        async with AsyncSpeechClient("127.0.0.1:50051") as client:
            async for result in client.stream_file("call.wav", realtime=True):
                print(result.transcript)
            job = await client.submit_job("job.yaml", upload=True)
            async for event in client.watch_job(job.id):
                print(event.phase, event.step, event.dev_wer)
    """

    def __init__(self, target: str, *, tls: bool = False, root_certificates: bytes | str | Path | None = None,
                 timeout: float | None = None, options: Iterable[tuple[str, Any]] | None = None,
                 token: str | None = None, tls_client_cert: bytes | str | Path | None = None,
                 tls_client_key: bytes | str | Path | None = None):
        self.target = check_target(target)
        self._metadata = auth_metadata(token) or None
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive seconds or None, not {timeout}")
        self.timeout = timeout
        self._credentials = channel_credentials(tls, root_certificates, tls_client_cert, tls_client_key)
        self._options = list(options or ())
        self._channel: grpc.aio.Channel | None = None

    @property
    def channel(self) -> grpc.aio.Channel:
        """The grpc.aio channel, opened on first use inside the running event loop (it is bound to that loop)."""
        if self._channel is None:
            creds, opts = self._credentials, self._options
            self._channel = (grpc.aio.secure_channel(self.target, creds, opts) if creds
                             else grpc.aio.insecure_channel(self.target, opts))
            self._recognizer_stub = recognizer_pb2_grpc.RecognizerStub(self._channel)
            self._models_stub = models_pb2_grpc.ModelsStub(self._channel)
            self._adaptation_stub = adaptation_pb2_grpc.AdaptationStub(self._channel)
        return self._channel

    @property
    def _recognizer(self) -> recognizer_pb2_grpc.RecognizerStub:
        self.channel  # noqa: B018 - opens it
        return self._recognizer_stub

    @property
    def _models(self) -> models_pb2_grpc.ModelsStub:
        self.channel  # noqa: B018 - opens it
        return self._models_stub

    @property
    def _adaptation(self) -> adaptation_pb2_grpc.AdaptationStub:
        self.channel  # noqa: B018 - opens it
        return self._adaptation_stub

    # -- lifecycle

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> AsyncSpeechClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- recognition

    def stream(self, chunks: Iterable[bytes] | AsyncIterable[bytes], config: Config) -> AsyncIterator[Result]:
        """StreamingRecognize: send `config` then each chunk (sync or async iterable); results as they arrive.

        `config` is checked now, before anything is sent. Stop iterating to cancel the stream.
        """
        feed = RequestFeed(config)
        return self._stream(feed, chunks)

    async def _stream(self, feed: RequestFeed, chunks: Iterable[bytes] | AsyncIterable[bytes]) -> AsyncIterator[Result]:
        call = self._recognizer.StreamingRecognize(feed.aio(chunks), timeout=self.timeout, metadata=self._metadata)
        try:
            async for resp in call:
                for result in feed.results(resp):
                    yield result
        except grpc.RpcError as e:
            feed.raise_error()
            raise SpeechAdaptError.from_rpc(e) from e
        finally:
            call.cancel()
        feed.raise_error()

    def stream_file(self, path: str | Path, *, model: str = "", interim_results: bool = False,
                    realtime: bool = False, chunk_ms: float = 100, **config: Any) -> AsyncIterator[Result]:
        """Stream an audio file at its own rate and channel count; see SpeechClient.stream_file.

        The file is read (blocking, once) and the config checked now.
        """
        samples, rate = read_audio(path)
        channels = 1 if samples.ndim == 1 else samples.shape[1]
        cfg = file_config(rate, channels, dict(config, model=model, interim_results=interim_results))
        chunks: Iterable[bytes] | AsyncIterable[bytes] = pcm_chunks(samples, rate, chunk_ms)
        if realtime:
            chunks = apaced(chunks, bytes_per_second(rate, channels))
        return self.stream(chunks, cfg)

    async def recognize(self, path: str | Path, **config: Any) -> list[Result]:
        """Recognize (unary) a whole file; one final Result per utterance. See SpeechClient.recognize."""
        samples, rate = await asyncio.to_thread(read_audio, path)
        channels = 1 if samples.ndim == 1 else samples.shape[1]
        req = recognizer_pb2.RecognizeRequest(
            config=file_config(rate, channels, config).recognition_config(),
            audio_content=samples.astype("<i2", copy=False).tobytes(),
        )
        resp = await self._call(self._recognizer.Recognize, req)
        return [Result.from_unary(r, resp.model) for r in resp.results]

    # -- models

    async def list_models(self, name: str = "", all_versions: bool = False) -> list[ModelInfo]:
        """The servable models (newest version of each name unless `all_versions`), optionally of one `name`."""
        resp = await self._call(self._models.ListModels, models_pb2.ListModelsRequest(name=name, all_versions=all_versions))
        return [ModelInfo.from_proto(m) for m in resp.models]

    async def get_model(self, ref: str) -> ModelInfo:
        """One model by "name" (newest version) or "name@version"."""
        if not ref:
            raise ValueError("give a model as 'name' or 'name@version'")
        return ModelInfo.from_proto(await self._call(self._models.GetModel, models_pb2.GetModelRequest(model=ref)))

    # -- data upload

    async def upload_data(self, manifest_path: str | Path, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                          on_progress: ProgressCallback | None = None, name: str | None = None) -> str:
        """Upload a local manifest and its audio (only what the server lacks); its "data://<sha256>" URI.
        See SpeechClient.upload_data. File reads and hashing run in worker threads; `on_progress` runs
        on the event loop."""
        manifest = await asyncio.to_thread(read_local_manifest, manifest_path)
        return await self._upload(Upload(manifest, chunk_bytes=chunk_bytes, on_progress=on_progress, name=name))

    async def _upload(self, up: Upload) -> str:
        callback = up.on_progress
        if callback is not None:  # hashing runs in a worker thread: report on the loop
            loop = asyncio.get_running_loop()
            up.on_progress = lambda progress: loop.call_soon_threadsafe(callback, progress)
        await asyncio.to_thread(up.hash)
        up.on_progress = callback
        held, limited, lost = -1, None, 0
        while True:  # see SpeechClient._upload
            for req in up.check_requests():
                up.add_status(await self._call(self._adaptation.CheckUpload, req))
            if limited is not None and up.held() <= held and not lost:
                raise limited
            held = up.held()
            try:
                resp = await self._adaptation.UploadData(up.arequests(), timeout=self.timeout, metadata=self._metadata)
                break
            except grpc.RpcError as e:
                up.raise_error()
                limited = SpeechAdaptError.from_rpc(e)
                limited.__cause__ = e
                # the server's answer, hidden by grpc.aio (lost_status): ask again, LOST_STATUS_RETRIES times in a row
                lost = lost + 1 if lost_status(e) and lost < LOST_STATUS_RETRIES else 0
                if limited.code != "RESOURCE_EXHAUSTED" and not lost:
                    raise limited from e
        up.raise_error()
        return up.finish(resp)

    # -- adaptation jobs

    async def submit_job(self, spec: jobs.SpecLike, *, upload: bool = False,
                         on_upload_progress: ProgressCallback | None = None) -> Job:
        """Submit an adaptation job; its record (QUEUED). See SpeechClient.submit_job."""
        parsed = await asyncio.to_thread(jobs.load_spec, spec)
        if upload:
            local = await asyncio.to_thread(jobs.local_manifests, parsed)
            if local:
                await self._check_base_model(parsed.base_model)
            uploaded: dict[Path, str] = {}
            for manifest in local.values():
                if manifest.path not in uploaded:
                    uploaded[manifest.path] = await self._upload(Upload(manifest, on_progress=on_upload_progress))
            parsed = jobs.with_uris(parsed, jobs.uploaded_uris(parsed, uploaded))
        req = adaptation_pb2.SubmitJobRequest(spec=jobs.spec_proto(parsed))
        return Job.from_proto(await self._call(self._adaptation.SubmitJob, req))

    async def _check_base_model(self, ref: str) -> None:
        try:
            await self._call(self._models.GetModel, models_pb2.GetModelRequest(model=ref))
        except SpeechAdaptError as e:
            if e.code in ("NOT_FOUND", "INVALID_ARGUMENT"):
                raise SpeechAdaptError(e.code, f"base_model: {e.message}") from e
            raise

    async def get_job(self, job_id: str) -> Job:
        """A job's current record."""
        req = adaptation_pb2.GetJobRequest(id=jobs.check_id(job_id))
        return Job.from_proto(await self._call(self._adaptation.GetJob, req))

    async def list_jobs(self, states: str | Iterable[str] | None = None, *, page_size: int = 0) -> list[Job]:
        """Every job (all pages), optionally only those in `states`."""
        req = adaptation_pb2.ListJobsRequest(states=jobs.state_values(states), page_size=page_size)
        out: list[Job] = []
        tokens: set[str] = set()
        while True:
            resp = await self._call(self._adaptation.ListJobs, req)
            out += [Job.from_proto(j) for j in resp.jobs]
            if not resp.next_page_token or resp.next_page_token in tokens:
                return out
            tokens.add(resp.next_page_token)
            req.page_token = resp.next_page_token

    async def cancel_job(self, job_id: str) -> Job:
        """Cancel a queued or running job; its record."""
        req = adaptation_pb2.CancelJobRequest(id=jobs.check_id(job_id))
        return Job.from_proto(await self._call(self._adaptation.CancelJob, req))

    def watch_job(self, job_id: str, *, timeout: float | None = None) -> AsyncIterator[JobEvent]:
        """The job's events (from its start, then live) as an async iterator; ends with the job.
        `timeout` bounds the whole watch (None: none; the client's timeout does not apply)."""
        return self._watch(jobs.check_id(job_id), timeout)

    async def _watch(self, job_id: str, timeout: float | None) -> AsyncIterator[JobEvent]:
        call = self._adaptation.WatchJob(adaptation_pb2.WatchJobRequest(id=job_id), timeout=timeout,
                                         metadata=self._metadata)
        try:
            async for msg in call:
                ev = JobEvent.from_proto(msg)
                yield ev
                if ev.ended:
                    return
        except grpc.RpcError as e:
            raise SpeechAdaptError.from_rpc(e) from e
        finally:
            call.cancel()

    async def wait_job(self, job_id: str, timeout: float | None = None,
                       on_event: Callable[[JobEvent], Any] | None = None) -> Job:
        """Wait until the job ends; its final record. `on_event` (a function or a coroutine function) sees
        each event once. See SpeechClient.wait_job."""
        job_id = jobs.check_id(job_id)
        clock = WaitClock(job_id, timeout)
        seen: set[JobEvent] = set()
        while True:
            try:
                async for ev in self._watch(job_id, clock.remaining()):
                    if ev not in seen:
                        seen.add(ev)
                        if on_event is not None and inspect.isawaitable(r := on_event(ev)):
                            await r
                job = await self.get_job(job_id)
            except SpeechAdaptError as e:  # a dropped watch, or no server (a restart): try again
                clock.check(e)
                await asyncio.sleep(clock.pause())
                continue
            if job.ended:
                return job
            clock.check()
            await asyncio.sleep(clock.pause())

    async def get_job_report(self, job_id: str, out_dir: str | Path) -> dict[str, Any]:
        """Write metrics.json and training.png into `out_dir`; the metrics as a dict."""
        report = await self._call(self._adaptation.GetJobReport, adaptation_pb2.GetJobRequest(id=jobs.check_id(job_id)))
        return await asyncio.to_thread(jobs.save_report, report, out_dir)

    async def _call(self, method, request):
        try:
            return await method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise SpeechAdaptError.from_rpc(e) from e
