"""The Recognizer service: StreamingRecognize and Recognize."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import Executor

import grpc

from speechadapt.asr import ModelNotFound, PackageError
from speechadapt.asr.audio import AudioTooLong, decode_container, pcm16_to_float
from speechadapt.server.options import InvalidRequest, check_config, check_language, check_streaming_config
from speechadapt.server.batcher import Batcher
from speechadapt.server.metrics import Metrics
from speechadapt.server.registry import ModelRegistry
from speechadapt.server.session import RecognitionSession, duration
from speechadapt.v1 import recognizer_pb2 as pb
from speechadapt.v1 import recognizer_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class Admission:
    """Counts concurrent recognitions; beyond the limit callers get RESOURCE_EXHAUSTED."""

    def __init__(self, limit: int):
        self.limit, self.active = limit, 0

    @contextlib.asynccontextmanager
    async def slot(self, context: grpc.aio.ServicerContext):
        if self.active >= self.limit:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server is at its limit of {self.limit} concurrent recognitions; retry later",
            )
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


async def _model_for(registry: ModelRegistry, opts, context):
    try:
        model = await registry.get(opts.model)
        check_language(opts, model.card.language, model.name)
        return model
    except PackageError as e:  # before ValueError, its base
        log.error("model package rejected: %s", e)
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"model cannot be loaded: {e}")
    except ValueError as e:  # InvalidRequest, or a malformed reference
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    except ModelNotFound as e:
        await context.abort(grpc.StatusCode.NOT_FOUND, str(e.args[0]))


async def _session(model, opts, executor, context, batcher=None, metrics=None) -> RecognitionSession:
    try:
        return RecognitionSession(model, opts, executor, batcher, metrics)
    except InvalidRequest as e:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))


class StreamGone(Exception):
    """A send on a stream failed because its call had already ended (the client went away)."""


class ResponsesNotRead(Exception):
    """A stream's client took no response for the write timeout (a slow reader): the stream is ended."""


class RecognizerService(pb_grpc.RecognizerServicer):
    """`write_timeout_s`: how long one response may wait for the client to take it (HTTP/2 flow control: a client
    that does not read fills its window, then the server's writes wait). Past it the stream is ended with
    RESOURCE_EXHAUSTED, and its slot, session and model state are freed first. While a write waits the stream
    reads no more audio, so a client that sends fast and never reads holds at most the transport's windows.

    `max_decoded_samples`: the most samples (frames x channels) a compressed file given to Recognize may decode to,
    RESOURCE_EXHAUSTED past it (a 110 kB FLAC of silence decodes to 220 MiB of samples)."""

    def __init__(self, registry: ModelRegistry, admission: Admission, executor: Executor, batcher: Batcher | None = None,
                 write_timeout_s: float = 30.0, max_decoded_samples: int = 16 * 1024 * 1024, metrics: Metrics | None = None):
        self.registry, self.admission, self.executor, self.batcher = registry, admission, executor, batcher
        self.write_timeout_s, self.max_decoded_samples = write_timeout_s, max_decoded_samples
        self.metrics = metrics

    async def StreamingRecognize(self, request_iterator, context):
        try:
            async with self.admission.slot(context):
                await self._stream(request_iterator, context)
            return
        except StreamGone as e:
            log.info("a stream's call ended before its answers were sent (%s): the client went away", e)
            return
        except ResponsesNotRead as e:
            reason = str(e)  # not the exception: its traceback would keep the session alive
        # after the slot, session and model stream are freed: the status waits behind the unread responses,
        # until the client reads them or goes away
        log.warning("ended a stream from %s: %s", context.peer(), reason)
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, reason)

    async def _send(self, sending) -> None:
        """Await one send on the call: `StreamGone` when the call already ended (grpc's ExecuteBatchError: the client
        went away), so it ends quietly instead of logging a traceback, which would keep the session alive."""
        try:
            await sending
        except Exception as e:
            raise StreamGone(type(e).__name__) from None

    async def _write(self, context, msg: pb.StreamingRecognizeResponse) -> None:
        try:
            await asyncio.wait_for(self._send(context.write(msg)), self.write_timeout_s)
        except asyncio.TimeoutError:
            raise ResponsesNotRead(
                f"the client took no response of this stream for {self.write_timeout_s:g} s (the server's "
                "--write-timeout-s), so the server ended it; read the responses as they arrive") from None

    async def _stream(self, request_iterator, context) -> None:
        requests = request_iterator.__aiter__()
        try:
            first = await requests.__anext__()
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty stream: send a streaming_config, then audio_content")
        if first.WhichOneof("streaming_request") != "streaming_config":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first message must carry streaming_config; send the config first, then audio_content",
            )
        try:
            opts = check_streaming_config(first.streaming_config)
        except InvalidRequest as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        model = await _model_for(self.registry, opts, context)
        session = await _session(model, opts, self.executor, context, self.batcher, self.metrics)
        await self._send(context.send_initial_metadata((("x-speechadapt-model", model.name),)))
        first_response = True

        def response(results, event=pb.StreamingRecognizeResponse.SPEECH_EVENT_UNSPECIFIED):
            nonlocal first_response
            msg = pb.StreamingRecognizeResponse(results=results, speech_event_type=event)
            if first_response:
                msg.model, first_response = model.name, False
            return msg

        try:
            with self.batcher.session() if self.batcher else contextlib.nullcontext():
                async for req in requests:
                    if req.WhichOneof("streaming_request") == "streaming_config":
                        raise InvalidRequest("streaming_config may only be sent once, in the first message; then send audio_content")
                    results = await session.accept(req.audio_content)
                    if session.done:
                        await self._write(context, response([], pb.StreamingRecognizeResponse.END_OF_SINGLE_UTTERANCE))
                        await self._write(context, response(results))
                        return
                    if results:
                        await self._write(context, response(results))
                results = await session.finish()
                if results:
                    await self._write(context, response(results))
        except InvalidRequest as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    async def Recognize(self, request, context):
        async with self.admission.slot(context):
            try:
                opts = check_config(request.config, streaming=False)
                if not request.audio_content:
                    raise InvalidRequest("audio_content is empty: send the audio bytes")
            except InvalidRequest as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            model = await _model_for(self.registry, opts, context)
            session = await _session(model, opts, self.executor, context, metrics=self.metrics)
            try:
                if opts.encoding == pb.LINEAR16:
                    samples, rate = pcm16_to_float(request.audio_content, opts.channels), opts.sample_rate
                else:
                    samples, rate, channels = decode_container(request.audio_content, sample_rate=None,
                                                               max_samples=self.max_decoded_samples)
                    if opts.sample_rate and opts.sample_rate != rate:
                        raise InvalidRequest(f"config.sample_rate_hertz {opts.sample_rate} does not match the file's {rate}; set 0 or {rate}")
                    if opts.channels and opts.channels != channels:
                        raise InvalidRequest(f"config.audio_channel_count {opts.channels} does not match the file's {channels}")
                    if not 8000 <= rate <= 48000:
                        raise InvalidRequest(f"the file's sample rate {rate} is outside 8000..48000")
                session.accept_samples(samples, rate)
                results = await session.finish()
            except AudioTooLong as e:  # before ValueError, its base
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{e}; send shorter audio, or stream it "
                                    "(LINEAR16 or WAV) with StreamingRecognize")
            except ValueError as e:  # InvalidRequest included
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            return pb.RecognizeResponse(
                results=[
                    pb.SpeechRecognitionResult(
                        alternatives=r.alternatives, result_start_offset=r.result_start_offset, result_end_offset=r.result_end_offset
                    )
                    for r in results
                ],
                model=model.name,
                total_audio=duration(len(samples) / rate),
            )
