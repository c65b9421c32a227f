"""Plumbing shared by the sync and asyncio clients: credentials, configs, request streams."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc

from speechadapt.client.audio import aiter_chunks
from speechadapt.client.types import Result, SpeechAdaptError, StreamConfig
from speechadapt.v1 import recognizer_pb2

Config = StreamConfig | recognizer_pb2.StreamingRecognitionConfig


LOST_STATUS_RETRIES = 3  # calls in a row whose status grpc.aio lost before giving up


def lost_status(error: grpc.RpcError) -> bool:
    """An asyncio call whose status grpc replaced with INTERNAL "Internal error from Core": a request written
    just as the server ended the call fails, and grpc.aio reports that failed write instead of the status the
    server sent (grpc/grpc#36066). The server's answer is unknown, so the caller may ask again."""
    debug = getattr(error, "debug_error_string", lambda: "")() or ""
    return error.code() == grpc.StatusCode.INTERNAL and "execute_batch" in debug and "SendMessage" in debug


TOKEN_ENV = "SPEECHADAPT_TOKEN"


def _pem(value: bytes | str | Path, arg: str, what: str, marker: bytes, hint: str) -> bytes:
    """PEM bytes from bytes, PEM text or the path of a PEM file (`arg`: the argument, `what`: what it holds)."""
    if isinstance(value, (bytes, bytearray)):
        pem = bytes(value)
    elif isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        pem = value.encode()
    else:
        p = Path(value)
        if not p.is_file():
            raise FileNotFoundError(f"{what} file not found: {p} ({hint})")
        pem = p.read_bytes()
    if marker not in pem:
        raise ValueError(f"{arg} is not a PEM {what} (no '{marker.decode()}' line)")
    return pem


def channel_credentials(tls: bool, root_certificates: bytes | str | Path | None,
                        client_cert: bytes | str | Path | None = None,
                        client_key: bytes | str | Path | None = None) -> grpc.ChannelCredentials | None:
    """TLS credentials when `tls`, root certificates or a client certificate are given, else None (plaintext).

    `root_certificates` is PEM bytes or the path of a PEM file; without it the
    system's trusted roots are used. `client_cert` and `client_key` (together) are
    the certificate chain and private key this client presents to a server that
    requires client certificates (mTLS, `serve --tls-client-ca`).
    """
    if (client_cert is None) != (client_key is None):
        raise ValueError("a client certificate and its key go together (--tls-cert and --tls-key; tls_client_cert and "
                         "tls_client_key): give both or neither")
    pem = None
    if root_certificates is not None:
        pem = _pem(root_certificates, "root_certificates", "CA certificate", b"-----BEGIN CERTIFICATE-----",
                   "give the PEM the server's certificate chains to")
    if client_cert is None:
        if pem is None:
            return grpc.ssl_channel_credentials() if tls else None
        return grpc.ssl_channel_credentials(root_certificates=pem)
    chain = _pem(client_cert, "tls_client_cert", "client certificate", b"-----BEGIN CERTIFICATE-----",
                 "the certificate this client presents")
    key = _pem(client_key, "tls_client_key", "private key", b"PRIVATE KEY-----", "the key of the client certificate")
    return grpc.ssl_channel_credentials(root_certificates=pem, private_key=key, certificate_chain=chain)


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The `authorization: Bearer <token>` metadata of every call; `token` None: $SPEECHADAPT_TOKEN, "" or
    unset: no token. The token itself never appears in an error message."""
    if token is None:
        token = os.environ.get(TOKEN_ENV, "")
    if not isinstance(token, str):
        raise TypeError(f"token must be a str, not {type(token).__name__}")
    token = token.strip()
    if not token:
        return ()
    if not all("\x21" <= c <= "\x7e" for c in token):
        raise ValueError(f"the token (argument or ${TOKEN_ENV}) has spaces or characters other than printable ASCII; "
                         "give the token exactly as the server's admin issued it")
    return (("authorization", f"Bearer {token}"),)


def check_target(target: str) -> str:
    """A non-empty "host:port" (or any gRPC target URI)."""
    if not isinstance(target, str) or not target.strip():
        raise ValueError("target must be a gRPC address such as '127.0.0.1:50051'")
    return target.strip()


def streaming_config(config: Config) -> recognizer_pb2.StreamingRecognitionConfig:
    """A StreamConfig or a ready StreamingRecognitionConfig as the proto."""
    if isinstance(config, StreamConfig):
        return config.to_proto()
    if isinstance(config, recognizer_pb2.StreamingRecognitionConfig):
        if config.config.encoding == recognizer_pb2.FLAC:
            raise ValueError("FLAC is for recognize() only; stream LINEAR16 or WAV")
        return config
    raise TypeError(f"config must be a StreamConfig or a StreamingRecognitionConfig, not {type(config).__name__}")


def file_config(sample_rate: int, channels: int, config: dict[str, Any]) -> StreamConfig:
    """The StreamConfig for a decoded file sent as LINEAR16; `config` holds the caller's other fields."""
    for key in ("sample_rate_hertz", "audio_channel_count", "encoding"):
        if key in config:
            raise TypeError(f"{key} comes from the audio file; do not pass it")
    unknown = set(config) - set(StreamConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown config option(s): {', '.join(sorted(unknown))}; "
                        f"see StreamConfig for the valid ones")
    return StreamConfig(sample_rate_hertz=sample_rate, audio_channel_count=channels, **config)


def check_chunk(chunk: Any) -> bytes:
    """An audio chunk as bytes; anything but bytes-like is a caller error."""
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, (bytearray, memoryview)):
        return bytes(chunk)
    raise TypeError(f"audio chunks must be bytes (LINEAR16 or WAV data), not {type(chunk).__name__}")


class RequestFeed:
    """The request side of a StreamingRecognize call: the config, then one request per chunk.

    An error raised by the chunk iterator is kept in `error` (and the stream
    half-closed) so the caller can re-raise it instead of a bare CANCELLED.
    Setting `stopped` (e.g. after END_OF_SINGLE_UTTERANCE) stops reading chunks.
    """

    def __init__(self, config: Config):
        self.config = streaming_config(config)
        self.error: BaseException | None = None
        self.stopped = False
        self.model = ""

    def results(self, resp: recognizer_pb2.StreamingRecognizeResponse) -> list[Result]:
        """The results of one response. Remembers the serving model (named on the first response)
        and stops sending audio after END_OF_SINGLE_UTTERANCE; re-raises a chunk-iterator error."""
        self.model = resp.model or self.model
        if resp.speech_event_type == recognizer_pb2.StreamingRecognizeResponse.END_OF_SINGLE_UTTERANCE:
            self.stopped = True
        self.raise_error()
        return [Result.from_streaming(r, self.model) for r in resp.results]

    def first(self) -> recognizer_pb2.StreamingRecognizeRequest:
        return recognizer_pb2.StreamingRecognizeRequest(streaming_config=self.config)

    @staticmethod
    def audio(chunk: Any) -> recognizer_pb2.StreamingRecognizeRequest:
        return recognizer_pb2.StreamingRecognizeRequest(audio_content=check_chunk(chunk))

    def sync(self, chunks: Iterable[bytes]) -> Iterator[recognizer_pb2.StreamingRecognizeRequest]:
        yield self.first()
        try:
            for chunk in chunks:
                if self.stopped:
                    return
                req = self.audio(chunk)
                if req.audio_content:
                    yield req
        except Exception as e:  # re-raised by the client on the response side
            self.error = e

    async def aio(self, chunks: Iterable[bytes] | AsyncIterable[bytes]) -> AsyncIterator[recognizer_pb2.StreamingRecognizeRequest]:
        yield self.first()
        try:
            async for chunk in aiter_chunks(chunks):
                if self.stopped:
                    return
                req = self.audio(chunk)
                if req.audio_content:
                    yield req
        except Exception as e:  # re-raised by the client on the response side
            self.error = e

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


class WaitClock:
    """The deadline of wait_job (shared by the sync and asyncio clients): which watch errors end the wait,
    how long the next watch may run, how long to pause before watching again."""

    def __init__(self, job_id: str, timeout: float | None):
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive seconds or None, not {timeout}")
        self.job_id = job_id
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout if timeout is not None else None

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.001, self.deadline - time.monotonic())

    def pause(self) -> float:
        """Seconds to wait before watching again (1, or less when the deadline is nearer)."""
        return 1.0 if self.deadline is None else max(0.0, min(1.0, self.deadline - time.monotonic()))

    def check(self, error: SpeechAdaptError | None = None) -> None:
        """Raise `error` unless it is a dropped watch (UNAVAILABLE) or this wait's own deadline; raise
        DEADLINE_EXCEEDED once the time is up."""
        if error is not None and error.code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            raise error
        if error is not None and error.code == "DEADLINE_EXCEEDED" and self.deadline is None:
            raise error
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise SpeechAdaptError("DEADLINE_EXCEEDED", f"job {self.job_id} did not end within {self.timeout:g} s; "
                                   "it keeps running: wait again, or cancel it") from error
