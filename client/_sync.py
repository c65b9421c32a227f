"""SpeechClient: the blocking client over a grpc channel."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc

from speechadapt.client import jobs
from speechadapt.client._grpc import (Config, RequestFeed, WaitClock, auth_metadata, channel_credentials, check_target,
                                      file_config)
from speechadapt.client.audio import bytes_per_second, paced, pcm_chunks, read_audio
from speechadapt.client.types import Job, JobEvent, ModelInfo, Result, SpeechAdaptError
from speechadapt.client.upload import DEFAULT_CHUNK_BYTES, ProgressCallback, Upload, read_local_manifest
from speechadapt.v1 import (
    adaptation_pb2, adaptation_pb2_grpc, models_pb2, models_pb2_grpc, recognizer_pb2, recognizer_pb2_grpc,
)


class SpeechClient:
    """Recognise speech and list models on a speechadapt server.

    `target` is "host:port". The channel is TLS when `tls` is set or
    `root_certificates` (PEM bytes or a PEM file path) is given. `timeout`
    (seconds) is the deadline of every call, streams and uploads included,
    except watch_job and wait_job, which take their own (jobs run for
    minutes); None: no deadline. `options` are extra grpc channel options.
    `token` is sent as `authorization: Bearer <token>` metadata on every call
    (servers started with --auth-tokens); None: $SPEECHADAPT_TOKEN if set.
    `tls_client_cert` / `tls_client_key` (PEM bytes or file paths, together)
    are presented to a server that requires client certificates (mTLS).
    Failed calls raise SpeechAdaptError ("CODE: details"); a missing or unknown
    token is UNAUTHENTICATED, a token without the method's role PERMISSION_DENIED.

        with SpeechClient("127.0.0.1:50051") as client:
            for result in client.stream_file("call.wav"):
                print(result.transcript)
            job = client.submit_job("job.yaml", upload=True)
            job = client.wait_job(job.id, on_event=print)
            print(job.state, job.promoted, job.model_ref, job.metrics.adapted_target_wer)
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
        creds = channel_credentials(tls, root_certificates, tls_client_cert, tls_client_key)
        opts = list(options or ())
        self.channel = (grpc.secure_channel(self.target, creds, opts) if creds
                        else grpc.insecure_channel(self.target, opts))
        self._recognizer = recognizer_pb2_grpc.RecognizerStub(self.channel)
        self._models = models_pb2_grpc.ModelsStub(self.channel)
        self._adaptation = adaptation_pb2_grpc.AdaptationStub(self.channel)

    # -- lifecycle

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self.channel.close()

    def __enter__(self) -> SpeechClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- recognition

    def stream(self, chunks: Iterable[bytes], config: Config) -> Iterator[Result]:
        """StreamingRecognize: send `config` then each audio chunk; yield results as they arrive.

        `config` is a StreamConfig or a speechadapt.v1 StreamingRecognitionConfig
        (checked now, before anything is sent). Chunks are read on a grpc thread
        while results are consumed; stop iterating to cancel the stream.
        """
        feed = RequestFeed(config)
        return self._stream(feed, chunks)

    def _stream(self, feed: RequestFeed, chunks: Iterable[bytes]) -> Iterator[Result]:
        call = self._recognizer.StreamingRecognize(feed.sync(chunks), timeout=self.timeout, metadata=self._metadata)
        try:
            for resp in call:
                for result in feed.results(resp):
                    yield result
        except grpc.RpcError as e:
            feed.raise_error()
            raise SpeechAdaptError.from_rpc(e) from e
        finally:
            call.cancel()
        feed.raise_error()

    def stream_file(self, path: str | Path, *, model: str = "", interim_results: bool = False,
                    realtime: bool = False, chunk_ms: float = 100, **config: Any) -> Iterator[Result]:
        """Stream an audio file at its own rate and channel count in `chunk_ms` chunks.

        `realtime` paces the chunks like a live source. Other keywords are
        StreamConfig fields (phrases, boost, endpointing, ...). The file is read
        and the config checked now; results are yielded as they arrive.
        """
        samples, rate = read_audio(path)
        channels = 1 if samples.ndim == 1 else samples.shape[1]
        cfg = file_config(rate, channels, dict(config, model=model, interim_results=interim_results))
        chunks = pcm_chunks(samples, rate, chunk_ms)
        if realtime:
            chunks = paced(chunks, bytes_per_second(rate, channels))
        return self.stream(chunks, cfg)

    def recognize(self, path: str | Path, **config: Any) -> list[Result]:
        """Recognize (unary): the whole decoded file in one LINEAR16 request; one final Result per utterance.

        Keywords are StreamConfig fields. The file must fit the server's message limit (8 MiB by default).
        """
        samples, rate = read_audio(path)
        channels = 1 if samples.ndim == 1 else samples.shape[1]
        req = recognizer_pb2.RecognizeRequest(
            config=file_config(rate, channels, config).recognition_config(),
            audio_content=samples.astype("<i2", copy=False).tobytes(),
        )
        resp = self._call(self._recognizer.Recognize, req)
        return [Result.from_unary(r, resp.model) for r in resp.results]

    # -- models

    def list_models(self, name: str = "", all_versions: bool = False) -> list[ModelInfo]:
        """The servable models (newest version of each name unless `all_versions`), optionally of one `name`."""
        resp = self._call(self._models.ListModels, models_pb2.ListModelsRequest(name=name, all_versions=all_versions))
        return [ModelInfo.from_proto(m) for m in resp.models]

    def get_model(self, ref: str) -> ModelInfo:
        """One model by "name" (newest version) or "name@version"."""
        if not ref:
            raise ValueError("give a model as 'name' or 'name@version'")
        return ModelInfo.from_proto(self._call(self._models.GetModel, models_pb2.GetModelRequest(model=ref)))

    # -- data upload

    def upload_data(self, manifest_path: str | Path, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                    on_progress: ProgressCallback | None = None, name: str | None = None) -> str:
        """Upload a local JSON-lines manifest and its audio; returns its "data://<sha256>" URI for a JobSpec.

        The manifest is read and every audio file (relative to the manifest's folder) checked first:
        FileNotFoundError / ManifestError (listing bad lines) before any network. Each audio file is
        sent as a sha256-named blob, only the bytes the server does not hold yet (an interrupted
        upload resumes where it stopped; an unchanged corpus sends nothing), in `chunk_bytes`
        pieces, then the manifest with "audio" replaced by the blob sha256s (text, speaker and
        duration kept). `on_progress(UploadProgress)` is called as hashing and sending advance
        (from a grpc thread while sending) and once at the end with the server's counts.
        """
        up = Upload(read_local_manifest(manifest_path), chunk_bytes=chunk_bytes, on_progress=on_progress, name=name)
        return self._upload(up)

    def _upload(self, up: Upload) -> str:
        up.hash()
        held, limited = -1, None
        while True:
            for req in up.check_requests():
                up.add_status(self._call(self._adaptation.CheckUpload, req))
            if limited is not None and up.held() <= held:
                raise limited  # the last call added nothing: the limit is not per call (e.g. one file too large)
            held = up.held()
            try:
                resp = self._adaptation.UploadData(up.requests(), timeout=self.timeout, metadata=self._metadata)
                break
            except grpc.RpcError as e:
                up.raise_error()
                limited = SpeechAdaptError.from_rpc(e)
                limited.__cause__ = e
                if limited.code != "RESOURCE_EXHAUSTED":
                    raise limited from e
        up.raise_error()
        return up.finish(resp)

    # -- adaptation jobs

    def submit_job(self, spec: jobs.SpecLike, *, upload: bool = False,
                   on_upload_progress: ProgressCallback | None = None) -> Job:
        """Submit an adaptation job; returns its record (state QUEUED).

        `spec` is a JobSpec, a dict of the YAML keys, or the path of a YAML job file, checked here
        (JobSpecError lists every problem); a speechadapt.v1.JobSpec proto is sent unchecked. With
        `upload`, manifests that are local files are uploaded first (all checked, and the base model
        looked up, before the first byte is sent) and replaced by their data:// URIs; otherwise paths
        are sent as they are and
        must be readable by the server's workers. The server's own checks (base model, data) fail
        as SpeechAdaptError INVALID_ARGUMENT / NOT_FOUND listing what to fix.
        """
        parsed = jobs.load_spec(spec)
        if upload:
            local = jobs.local_manifests(parsed)
            if local:  # a wrong base model must not cost an upload first
                self._check_base_model(parsed.base_model)
            uploaded: dict[Path, str] = {}  # a manifest named twice (train = dev) goes once
            for manifest in local.values():
                if manifest.path not in uploaded:
                    uploaded[manifest.path] = self._upload(Upload(manifest, on_progress=on_upload_progress))
            parsed = jobs.with_uris(parsed, jobs.uploaded_uris(parsed, uploaded))
        req = adaptation_pb2.SubmitJobRequest(spec=jobs.spec_proto(parsed))
        return Job.from_proto(self._call(self._adaptation.SubmitJob, req))

    def _check_base_model(self, ref: str) -> None:
        try:
            self._call(self._models.GetModel, models_pb2.GetModelRequest(model=ref))
        except SpeechAdaptError as e:
            if e.code in ("NOT_FOUND", "INVALID_ARGUMENT"):
                raise SpeechAdaptError(e.code, f"base_model: {e.message}") from e
            raise

    def get_job(self, job_id: str) -> Job:
        """A job's current record."""
        req = adaptation_pb2.GetJobRequest(id=jobs.check_id(job_id))
        return Job.from_proto(self._call(self._adaptation.GetJob, req))

    def list_jobs(self, states: str | Iterable[str] | None = None, *, page_size: int = 0) -> list[Job]:
        """Every job (all pages), optionally only those in `states` ("RUNNING" or a list of state names)."""
        req = adaptation_pb2.ListJobsRequest(states=jobs.state_values(states), page_size=page_size)
        out: list[Job] = []
        tokens: set[str] = set()
        while True:
            resp = self._call(self._adaptation.ListJobs, req)
            out += [Job.from_proto(j) for j in resp.jobs]
            if not resp.next_page_token or resp.next_page_token in tokens:
                return out
            tokens.add(resp.next_page_token)
            req.page_token = resp.next_page_token

    def cancel_job(self, job_id: str) -> Job:
        """Cancel a queued or running job; returns its record (a job that already ended is returned as it is,
        or the server's FAILED_PRECONDITION is raised)."""
        req = adaptation_pb2.CancelJobRequest(id=jobs.check_id(job_id))
        return Job.from_proto(self._call(self._adaptation.CancelJob, req))

    def watch_job(self, job_id: str, *, timeout: float | None = None) -> Iterator[JobEvent]:
        """The job's events from its start, then live ones; ends after the event that ends the job.

        `timeout` (seconds, None = none) bounds the whole watch; the client's own timeout does not apply.
        """
        return self._watch(jobs.check_id(job_id), timeout)

    def _watch(self, job_id: str, timeout: float | None) -> Iterator[JobEvent]:
        call = self._adaptation.WatchJob(adaptation_pb2.WatchJobRequest(id=job_id), timeout=timeout,
                                         metadata=self._metadata)
        try:
            for msg in call:
                ev = JobEvent.from_proto(msg)
                yield ev
                if ev.ended:
                    return
        except grpc.RpcError as e:
            raise SpeechAdaptError.from_rpc(e) from e
        finally:
            call.cancel()

    def wait_job(self, job_id: str, timeout: float | None = None,
                 on_event: Callable[[JobEvent], Any] | None = None) -> Job:
        """Wait until the job ends and return its final record; `on_event(JobEvent)` sees each progress event once.

        A watch the server drops, or a server that does not answer (UNAVAILABLE: a drain, a restart), is tried
        again every second. After `timeout` seconds raises SpeechAdaptError DEADLINE_EXCEEDED (the job keeps
        running).
        """
        job_id = jobs.check_id(job_id)
        clock = WaitClock(job_id, timeout)
        seen: set[JobEvent] = set()
        while True:
            try:
                for ev in self._watch(job_id, clock.remaining()):
                    if ev not in seen:
                        seen.add(ev)
                        if on_event is not None:
                            on_event(ev)
                job = self.get_job(job_id)
            except SpeechAdaptError as e:  # a dropped watch, or no server (a restart): try again
                clock.check(e)
                time.sleep(clock.pause())
                continue
            if job.ended:
                return job
            clock.check()
            time.sleep(clock.pause())

    def get_job_report(self, job_id: str, out_dir: str | Path) -> dict[str, Any]:
        """Write the finished job's metrics.json and training.png (loss and dev WER over training) into
        `out_dir` (created if needed); returns the metrics as a dict."""
        report = self._call(self._adaptation.GetJobReport, adaptation_pb2.GetJobRequest(id=jobs.check_id(job_id)))
        return jobs.save_report(report, out_dir)

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise SpeechAdaptError.from_rpc(e) from e
