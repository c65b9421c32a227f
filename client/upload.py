"""Uploading a local manifest and its audio into the server's data store (Adaptation.UploadData).

Blobs are content-addressed: every audio file is named by its sha256, the server is asked which
it already holds (CheckUpload: completely, or the first `bytes_present` bytes of an interrupted
upload), and only the missing bytes are sent. One client-streaming UploadData call then carries
those BlobChunks followed by the manifest with each "audio" replaced by its blob's sha256; the
server answers with the manifest's `data://<sha256>` URI, usable in a JobSpec.

The manifest is read and every file checked before anything goes on the wire, so a typo fails
at once with line numbers instead of after minutes of uploading.

Shared by the sync and asyncio clients; the network calls themselves live in the clients.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from speechadapt.v1 import adaptation_pb2 as pb

DEFAULT_CHUNK_BYTES = 1 << 20  # 1 MiB per BlobChunk (the server's message limit is 8 MiB by default)
CHECK_BATCH = 1000  # sha256s per CheckUpload request
KEPT_KEYS = ("text", "speaker", "duration")  # what the uploaded manifest keeps besides "audio"
MAX_LISTED = 20  # problems listed in a ManifestError before "... and N more"
_HASH_BUFFER = 1 << 20


class ManifestError(ValueError):
    """A local manifest that cannot be uploaded; `problems` lists each problem ("file:line: what to fix")."""

    def __init__(self, problems: list[str], path: Path | str | None = None):
        self.path = Path(path) if path is not None else None
        self.problems = list(problems)
        shown = self.problems[:MAX_LISTED]
        more = len(self.problems) - len(shown)
        text = "\n  ".join(shown) + (f"\n  ... and {more} more" if more > 0 else "")
        what = f"manifest {self.path}" if self.path is not None else "the job's data"
        super().__init__(f"cannot upload {what}:\n  {text}")


@dataclass(frozen=True)
class Line:
    """One utterance of a local manifest: its line number, resolved audio path and the kept fields."""

    number: int
    audio: Path
    fields: dict[str, Any]


@dataclass(frozen=True)
class LocalManifest:
    """A checked local JSON-lines manifest: every line has "audio" and "text", every audio file exists."""

    path: Path
    lines: tuple[Line, ...]

    @property
    def audio_files(self) -> list[Path]:
        """Each distinct audio file once, in manifest order."""
        return list(dict.fromkeys(line.audio for line in self.lines))


def read_local_manifest(path: str | Path) -> LocalManifest:
    """Read and check a manifest ({"audio", "text", "speaker"?, "duration"?} per line, audio paths
    relative to the manifest's folder). Raises FileNotFoundError for a missing manifest and
    ManifestError listing every bad line (invalid JSON, missing fields, missing or empty audio files)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError([f"{path}: not UTF-8 text ({e.reason}); a manifest is JSON lines"], path) from None
    problems: list[str] = []
    lines: list[Line] = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        where = f"{path}:{n}"
        try:
            d = json.loads(raw)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: not valid JSON ({e.msg})")
            continue
        if not isinstance(d, dict) or not isinstance(d.get("audio"), str) or not isinstance(d.get("text"), str):
            problems.append(f'{where}: each line needs string fields "audio" and "text"')
            continue
        if "://" in d["audio"]:
            problems.append(f"{where}: audio {d['audio']!r} is a URI; upload needs local files")
            continue
        audio = Path(d["audio"])
        audio = audio if audio.is_absolute() else path.parent / audio
        if not audio.is_file():
            problems.append(f"{where}: audio file not found: {audio}")
            continue
        if audio.stat().st_size == 0:
            problems.append(f"{where}: audio file is empty: {audio}")
            continue
        lines.append(Line(n, audio, {k: d[k] for k in KEPT_KEYS if k in d}))
    if not lines and not problems:
        problems.append(f"{path}: no utterances (expected one JSON object per line)")
    if problems:
        raise ManifestError(problems, path)
    return LocalManifest(path, tuple(lines))


def sha256_file(path: Path) -> tuple[str, int]:
    """(hex sha256, size in bytes) of a file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_HASH_BUFFER):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int
    path: Path


@dataclass(frozen=True)
class UploadProgress:
    """Where an upload stands, passed to `on_progress`.

    `stage` is "hash" (reading local files: `files_done` of `files_total`), "send" (bytes on the
    wire: `files_done` of `files_to_send`) or "done" (the server answered: `manifest_uri`,
    `utterances`, `audio_seconds` and `bytes_received` are then set). Sizes count distinct blobs:
    `bytes_present` were already on the server and are not sent.
    """

    stage: str
    manifest: str
    files_total: int
    files_done: int = 0
    files_to_send: int = 0
    bytes_total: int = 0
    bytes_present: int = 0
    bytes_to_send: int = 0
    bytes_sent: int = 0
    manifest_uri: str = ""
    utterances: int = 0
    audio_seconds: float = 0.0
    bytes_received: int = 0


ProgressCallback = Callable[[UploadProgress], Any]


class Upload:
    """One upload: hash the audio, learn what the server holds, produce the UploadData requests.

    The clients drive it: `hash()`, then `check_requests()` -> CheckUpload -> `add_status()`, then
    send `requests()` (or `arequests()`) in one UploadData call and pass the response to `finish()`.
    A server that limits the bytes of one call answers RESOURCE_EXHAUSTED and keeps what arrived:
    the clients then check again and continue in a new call while each round adds held bytes.
    An error raised while producing requests (a file that changed, a failing `on_progress`) is kept
    in `error` and the stream half-closed, so the client re-raises it instead of the server's reply.
    """

    def __init__(self, manifest: LocalManifest, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 on_progress: ProgressCallback | None = None, name: str | None = None):
        if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be a positive number of bytes, not {chunk_bytes!r}")
        self.manifest = manifest
        self.chunk_bytes = chunk_bytes
        self.on_progress = on_progress
        self.name = name or manifest.path.name
        self.blobs: dict[Path, Blob] = {}  # by local path
        self.present: dict[str, int] = {}  # sha256 -> bytes the server holds
        self.complete: set[str] = set()
        self.error: BaseException | None = None
        self.progress = UploadProgress("hash", str(manifest.path), files_total=len(manifest.audio_files))

    # -- planning

    def hash(self) -> None:
        """sha256 every distinct audio file (blocking file reads)."""
        files = self.manifest.audio_files
        self._report(files_done=0, bytes_total=sum(f.stat().st_size for f in files))
        for done, audio in enumerate(files, 1):
            sha, size = sha256_file(audio)
            self.blobs[audio] = Blob(sha, size, audio)
            self._report(files_done=done)

    @property
    def unique_blobs(self) -> list[Blob]:
        """Each distinct content once (two files with the same bytes are one blob)."""
        return list({b.sha256: b for b in self.blobs.values()}.values())

    def check_requests(self) -> list[pb.CheckUploadRequest]:
        shas = [b.sha256 for b in self.unique_blobs]
        return [pb.CheckUploadRequest(sha256=shas[i:i + CHECK_BATCH]) for i in range(0, len(shas), CHECK_BATCH)]

    def add_status(self, response: pb.CheckUploadResponse) -> None:
        for s in response.blobs:
            self.present[s.sha256] = s.bytes_present
            if s.complete:
                self.complete.add(s.sha256)

    def held(self) -> int:
        """Bytes of this upload's blobs the server holds, as last reported by CheckUpload."""
        return sum(b.size if b.sha256 in self.complete else min(self.present.get(b.sha256, 0), b.size)
                   for b in self.unique_blobs)

    def start(self, blob: Blob) -> int | None:
        """The offset to send `blob` from; None when the server holds all of it."""
        if blob.sha256 in self.complete:
            return None
        held = self.present.get(blob.sha256, 0)
        return held if 0 <= held < blob.size else 0

    def content(self) -> bytes:
        """The manifest as uploaded: JSON lines with "audio" = the blob's sha256, text/speaker/duration kept."""
        out = []
        for line in self.manifest.lines:
            out.append(json.dumps({"audio": self.blobs[line.audio].sha256, **line.fields}, ensure_ascii=False))
        return ("\n".join(out) + "\n").encode("utf-8")

    def _plan(self) -> list[tuple[Blob, int]]:
        plan, present, to_send = [], 0, 0
        for blob in self.unique_blobs:
            start = self.start(blob)
            if start is None:
                present += blob.size
                continue
            plan.append((blob, start))
            present += start
            to_send += blob.size - start
        self._report(stage="send", files_done=0, files_to_send=len(plan), bytes_present=present,
                     bytes_to_send=to_send, bytes_sent=0)
        return plan

    # -- requests

    def _chunk(self, blob: Blob, offset: int, data: bytes) -> pb.UploadDataRequest:
        if not data:
            raise OSError(f"{blob.path} changed while uploading (it was {blob.size} bytes, now shorter); "
                          "upload again")
        self._report(bytes_sent=self.progress.bytes_sent + len(data))
        return pb.UploadDataRequest(blob=pb.BlobChunk(sha256=blob.sha256, total_size=blob.size, offset=offset,
                                                      data=data))

    def _manifest_request(self) -> pb.UploadDataRequest:
        return pb.UploadDataRequest(manifest=pb.ManifestUpload(name=self.name, content=self.content()))

    def requests(self) -> Iterator[pb.UploadDataRequest]:
        """The UploadData request stream: the missing bytes of each blob in order, then the manifest."""
        try:
            for n, (blob, start) in enumerate(self._plan(), 1):
                with open(blob.path, "rb") as f:
                    f.seek(start)
                    offset = start
                    while offset < blob.size:
                        data = f.read(min(self.chunk_bytes, blob.size - offset))
                        yield self._chunk(blob, offset, data)
                        offset += len(data)
                self._report(files_done=n)
            yield self._manifest_request()
        except Exception as e:  # re-raised by the client after the call
            self.error = e

    async def arequests(self) -> AsyncIterator[pb.UploadDataRequest]:
        """requests() for grpc.aio: file reads run in a worker thread."""
        try:
            for n, (blob, start) in enumerate(self._plan(), 1):
                f = await asyncio.to_thread(open, blob.path, "rb")
                try:
                    await asyncio.to_thread(f.seek, start)
                    offset = start
                    while offset < blob.size:
                        data = await asyncio.to_thread(f.read, min(self.chunk_bytes, blob.size - offset))
                        yield self._chunk(blob, offset, data)
                        offset += len(data)
                finally:
                    f.close()
                self._report(files_done=n)
            yield self._manifest_request()
        except Exception as e:  # re-raised by the client after the call
            self.error = e

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def finish(self, response: pb.UploadDataResponse) -> str:
        """Record the server's answer (a last "done" progress report) and return the manifest URI."""
        self._report(stage="done", manifest_uri=response.manifest_uri, utterances=response.utterances,
                     audio_seconds=response.audio_seconds, bytes_received=response.bytes_received)
        return response.manifest_uri

    def _report(self, **changes: Any) -> None:
        self.progress = replace(self.progress, **changes)
        if self.on_progress is not None:
            self.on_progress(self.progress)


__all__ = ["DEFAULT_CHUNK_BYTES", "LocalManifest", "ManifestError", "Upload", "UploadProgress",
           "read_local_manifest", "sha256_file"]
