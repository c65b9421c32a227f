"""AsyncSpeechClient: the asyncio client over a grpc.aio channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from speechadapt.client._grpc import Config, RequestFeed, channel_credentials, check_target, file_config
from speechadapt.client.audio import apaced, bytes_per_second, pcm_chunks, read_audio
from speechadapt.client.types import ModelInfo, Result, SpeechAdaptError
from speechadapt.v1 import models_pb2, models_pb2_grpc, recognizer_pb2, recognizer_pb2_grpc



class AsyncSpeechClient:
    """SpeechClient for asyncio: the same constructor; coroutines and async iterators.

    The channel opens on first use and belongs to that event loop: use one
    client within one loop (e.g. one asyncio.run).

        async with AsyncSpeechClient("127.0.0.1:50051") as client:
            async for result in client.stream_file("call.wav", realtime=True):
                print(result.transcript)
    """

    def __init__(self, target: str, *, tls: bool = False, root_certificates: bytes | str | Path | None = None,
                 timeout: float | None = None, options: Iterable[tuple[str, Any]] | None = None):
        self.target = check_target(target)
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive seconds or None, not {timeout}")
        self.timeout = timeout
        self._credentials = channel_credentials(tls, root_certificates)
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
        return self._channel

    @property
    def _recognizer(self) -> recognizer_pb2_grpc.RecognizerStub:
        self.channel  # noqa: B018 - opens it
        return self._recognizer_stub

    @property
    def _models(self) -> models_pb2_grpc.ModelsStub:
        self.channel  # noqa: B018 - opens it
        return self._models_stub

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
        call = self._recognizer.StreamingRecognize(feed.aio(chunks), timeout=self.timeout)
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

    async def _call(self, method, request):
        try:
            return await method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise SpeechAdaptError.from_rpc(e) from e
