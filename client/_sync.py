"""SpeechClient: the blocking client over a grpc channel."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc

from speechadapt.client._grpc import Config, RequestFeed, channel_credentials, check_target, file_config
from speechadapt.client.audio import bytes_per_second, paced, pcm_chunks, read_audio
from speechadapt.client.types import ModelInfo, Result, SpeechAdaptError
from speechadapt.v1 import models_pb2, models_pb2_grpc, recognizer_pb2, recognizer_pb2_grpc



class SpeechClient:
    """Recognise speech and list models on a speechadapt server.

    `target` is "host:port". The channel is TLS when `tls` is set or
    `root_certificates` (PEM bytes or a PEM file path) is given. `timeout`
    (seconds) is the deadline of every call, streams included; None: no
    deadline. `options` are extra grpc channel options. Failed calls raise
    SpeechAdaptError ("CODE: details").

        with SpeechClient("127.0.0.1:50051") as client:
            for result in client.stream_file("call.wav"):
                print(result.transcript)
    """

    def __init__(self, target: str, *, tls: bool = False, root_certificates: bytes | str | Path | None = None,
                 timeout: float | None = None, options: Iterable[tuple[str, Any]] | None = None):
        self.target = check_target(target)
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive seconds or None, not {timeout}")
        self.timeout = timeout
        creds = channel_credentials(tls, root_certificates)
        opts = list(options or ())
        self.channel = (grpc.secure_channel(self.target, creds, opts) if creds
                        else grpc.insecure_channel(self.target, opts))
        self._recognizer = recognizer_pb2_grpc.RecognizerStub(self.channel)
        self._models = models_pb2_grpc.ModelsStub(self.channel)

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
        call = self._recognizer.StreamingRecognize(feed.sync(chunks), timeout=self.timeout)
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

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise SpeechAdaptError.from_rpc(e) from e
