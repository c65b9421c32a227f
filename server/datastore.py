"""The data store: content-addressed uploads for adaptation jobs, under `STATE_DIR/data`.

    blobs/<sha[:2]>/<sha>          complete audio files, named by the sha256 of their bytes (no extension:
                                   soundfile sniffs WAV/FLAC/OGG from the header)
    blobs/<sha[:2]>/<sha>.part     a blob being uploaded: chunks are appended in order; its size is what
                                   CheckUpload reports as bytes_present, so an interrupted upload resumes there
    manifests/<sha>.jsonl          an uploaded manifest, byte for byte (its "audio" fields are blob sha256s)
    manifests/<sha>.json           what was measured: {"name", "utterances", "audio_seconds"}
    manifests/<sha>.resolved.jsonl the same lines with "audio" an absolute blob path and "duration" filled in:
                                   what `data://<sha>` resolves to for training jobs
    uploads.sqlite                 which owner stored which blobs (server/quota.py)

A blob is verified when its last byte arrives: a sha256 mismatch discards the partial file (DATA_LOSS).
Limits (RESOURCE_EXHAUSTED, checked before each chunk is written, from the declared `total_size`): the owner's
quota (`--upload-quota-gb`: a blob that would take the owner past it is refused before its first byte) and the
free-disk floor (`--min-free-disk-gb`: a chunk is refused when the rest of its blob would leave less free space
on the store's disk; the blob's partial file is removed). `discard_partial` removes what a refused call left.
A chunk is appended whole or not at all, and every file but a `.part` appears complete in one rename: a full
disk (RESOURCE_EXHAUSTED) or a crash leaves what was there before, and an upload resumes where it stopped.
Every failure is an `UploadError` carrying the gRPC status to answer and a message that says what to fix.
Methods are blocking (file I/O and hashing): call them off the event loop. They are thread-safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from speechadapt.asr.store import disk_full, fsync_dir
from speechadapt.jobspec import DATA_URI
from speechadapt.quote import quote
from speechadapt.server.quota import QuotaExceeded, UploadLedger

_SHA = re.compile(r"^[0-9a-f]{64}$")
MAX_MANIFEST_LINES = 1_000_000


class UploadError(Exception):
    """An upload that cannot be accepted; `code` is the gRPC status to answer with. `discard`: the call is refused
    for good (quota, disk), so the partial blobs it wrote are removed rather than kept for a resume."""

    def __init__(self, code: grpc.StatusCode, message: str, discard: bool = False):
        super().__init__(message)
        self.code = code
        self.discard = discard


def storage_error(e: OSError, where: Path, what: str) -> UploadError:
    """A file-system failure while storing `what` under `where`: RESOURCE_EXHAUSTED when the disk is full,
    FAILED_PRECONDITION otherwise (e.g. a read-only state dir)."""
    if disk_full(e):
        return UploadError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"the server's data store {where} is full ({e.strerror}): {what} was not stored; "
                           "retry when the server has space (CheckUpload tells where an upload resumes)")
    return UploadError(grpc.StatusCode.FAILED_PRECONDITION,
                       f"the server cannot write its data store {where} ({e.strerror or e}): {what} was not stored")


@dataclass(frozen=True)
class BlobState:
    sha256: str
    bytes_present: int
    complete: bool


@dataclass(frozen=True)
class ManifestInfo:
    uri: str  # data://<sha256 of the manifest bytes>
    utterances: int
    audio_seconds: float


def check_sha(sha: str, what: str = "sha256") -> str:
    """A lower-case hex sha256, or UploadError(INVALID_ARGUMENT)."""
    s = (sha or "").strip().lower()
    if not _SHA.match(s):
        raise UploadError(grpc.StatusCode.INVALID_ARGUMENT, f"{what} {quote(sha)} is not a sha256: use 64 hex digits")
    return s


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _gib(n: int) -> str:
    return f"{n / 1024 ** 3:.3g} GiB" if n >= 1024 ** 2 else f"{n} bytes"


class DataStore:
    """`quota_bytes`: most blob bytes one owner may store (None: no limit); `min_free_bytes`: free space on the
    store's disk that uploads must leave."""

    def __init__(self, root: str | Path, max_blob_bytes: int, quota_bytes: int | None = None, min_free_bytes: int = 0):
        self.root = Path(root)
        self.max_blob_bytes = max_blob_bytes
        self.quota_bytes, self.min_free_bytes = quota_bytes, min_free_bytes
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "manifests").mkdir(parents=True, exist_ok=True)
        self.ledger = UploadLedger(self.root / "uploads.sqlite")
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def close(self) -> None:
        self.ledger.close()

    # -- blobs

    def blob_path(self, sha: str) -> Path:
        return self.root / "blobs" / sha[:2] / sha

    def _part(self, sha: str) -> Path:
        return self.root / "blobs" / sha[:2] / f"{sha}.part"

    def _lock(self, sha: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(sha, threading.Lock())

    def status(self, sha: str) -> BlobState:
        """How much of a blob is held (its full size when complete)."""
        sha = check_sha(sha)
        final = self.blob_path(sha)
        if final.is_file():
            return BlobState(sha, final.stat().st_size, True)
        part = self._part(sha)
        return BlobState(sha, part.stat().st_size if part.is_file() else 0, False)

    def write_chunk(self, sha: str, total_size: int, offset: int, data: bytes, owner: str = "") -> tuple[int, bool]:
        """Add `data` at `offset` of blob `sha` (of `total_size` bytes), sent by `owner`. Returns (bytes written,
        blob now complete).

        Chunks must continue where the store's copy ends (`offset` <= bytes present; bytes already held are
        skipped, so resending is harmless). The last byte triggers verification against `sha`. The blob is charged
        to `owner` before its first byte is written (quota), and every chunk checks the free-disk floor."""
        sha = check_sha(sha, "blob.sha256")
        if total_size < 1:
            raise UploadError(grpc.StatusCode.INVALID_ARGUMENT, f"blob {sha[:12]}: total_size must be the blob's size in bytes (> 0), not {total_size}")
        if total_size > self.max_blob_bytes:
            raise UploadError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"blob {sha[:12]}: {total_size} bytes is over this server's limit of {self.max_blob_bytes} "
                              "bytes per file; split or compress the audio (e.g. FLAC), or ask for a larger --max-upload-mb")
        if offset < 0 or offset + len(data) > total_size:
            raise UploadError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"blob {sha[:12]}: a chunk of {len(data)} bytes at offset {offset} does not fit in total_size {total_size}")
        with self._lock(sha):
            try:
                return self._append(sha, total_size, offset, data, owner)
            except OSError as e:
                raise storage_error(e, self.root, f"the chunk at offset {offset} of blob {sha[:12]}") from None

    def _append(self, sha: str, total_size: int, offset: int, data: bytes, owner: str) -> tuple[int, bool]:
        final = self.blob_path(sha)
        if final.is_file():
            if final.stat().st_size != total_size:
                raise UploadError(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"blob {sha[:12]}: the store holds it with {final.stat().st_size} bytes, not total_size {total_size}")
            return 0, True
        part = self._part(sha)
        part.parent.mkdir(parents=True, exist_ok=True)
        present = part.stat().st_size if part.is_file() else 0
        if present > total_size:
            part.unlink()
            self.ledger.release(sha)
            raise UploadError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"blob {sha[:12]}: {present} bytes were uploaded before with a different size; "
                              "they were discarded, upload it again from offset 0")
        if offset > present:
            raise UploadError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"blob {sha[:12]}: chunk at offset {offset}, but the store holds only {present} bytes of it; "
                              f"send chunks in order and resume from offset {present} (see CheckUpload)")
        skip = present - offset
        written = 0
        if skip < len(data):
            self._charge(owner, sha, total_size)
            self._check_disk(total_size - present, f"the rest of blob {sha[:12]}", sha)
            written = _append_whole(part, memoryview(data)[skip:], present)
            present += written
        if present < total_size:
            return written, False
        digest = _sha256_file(part)
        if digest != sha:
            part.unlink()
            self.ledger.release(sha)
            raise UploadError(grpc.StatusCode.DATA_LOSS,
                              f"blob {sha[:12]}: the {total_size} bytes received hash to sha256 {digest}, not {sha}; "
                              "the partial upload was discarded: check the file and upload it again from offset 0")
        with open(part, "rb") as f:
            os.fsync(f.fileno())
        os.replace(part, final)
        fsync_dir(final.parent)
        return written, True

    def _charge(self, owner: str, sha: str, size: int) -> None:
        try:
            self.ledger.charge(owner, sha, size, self.quota_bytes)
        except QuotaExceeded as e:
            who = f"owner {owner!r}" if owner else "this open server's uploads"
            raise UploadError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"upload quota exceeded: {who} stored {e.used} bytes of blobs; blob {sha[:12]} ({size} bytes) "
                              f"would pass the quota of {e.quota} bytes ({_gib(e.quota)}, --upload-quota-gb); none of "
                              "it was stored. Blobs the server already holds cost nothing (CheckUpload); ask the "
                              "server's admin for a larger quota", discard=True) from None

    def _check_disk(self, incoming: int, what: str, sha: str | None = None) -> None:
        """RESOURCE_EXHAUSTED (removing blob `sha`'s partial file) when writing `incoming` more bytes would leave
        less than the free-disk floor."""
        if not self.min_free_bytes:
            return
        free = shutil.disk_usage(self.root).free
        if free - incoming >= self.min_free_bytes:
            return
        if sha is not None:
            self._remove_partial(sha)
        raise UploadError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"the server's disk is nearly full: storing {what} ({incoming} bytes) would leave "
                          f"{max(free - incoming, 0)} bytes free, below its floor of {self.min_free_bytes} bytes "
                          f"({_gib(self.min_free_bytes)}, --min-free-disk-gb); nothing of it was kept. Try again "
                          "later or ask the server's admin to free space", discard=True)

    def _remove_partial(self, sha: str) -> None:
        part = self._part(sha)
        if part.is_file():
            part.unlink()
        self.ledger.release(sha)

    def discard_partial(self, sha: str) -> None:
        """Remove an incomplete blob (its .part file and its charges); a complete blob is kept."""
        sha = check_sha(sha)
        with self._lock(sha):
            if not self.blob_path(sha).is_file():
                self._remove_partial(sha)

    # -- manifests

    def add_manifest(self, content: bytes, name: str = "") -> ManifestInfo:
        """Store a JSON-lines manifest whose "audio" fields are sha256s of complete blobs; returns its data URI.

        Raises UploadError: INVALID_ARGUMENT (listing the bad lines), FAILED_PRECONDITION (listing blobs that are
        missing or incomplete: upload them first)."""
        import soundfile as sf

        problems: list[str] = []
        items: list[dict] = []
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            raise UploadError(grpc.StatusCode.INVALID_ARGUMENT, f"manifest {quote(name)} is not UTF-8 text") from None
        lines = text.splitlines()
        if len(lines) > MAX_MANIFEST_LINES:
            raise UploadError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"manifest {quote(name)} has more than {MAX_MANIFEST_LINES} lines")
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"line {n}: not valid JSON ({e.msg})")
                continue
            except RecursionError:
                problems.append(f"line {n}: JSON nested too deeply; give one flat object per line")
                continue
            if not isinstance(d, dict) or not isinstance(d.get("audio"), str) or not isinstance(d.get("text"), str):
                problems.append(f'line {n}: each line needs string fields "audio" (a blob sha256) and "text"')
                continue
            if not _SHA.match(d["audio"].strip().lower()):
                problems.append(f'line {n}: "audio" {quote(d["audio"])} must be the sha256 of an uploaded blob (64 hex digits)')
                continue
            d["audio"] = d["audio"].strip().lower()
            items.append(d)
        if not items and not problems:
            problems.append("the manifest has no utterances: give one JSON object per line")
        if problems:
            raise UploadError(grpc.StatusCode.INVALID_ARGUMENT, _listing(f"manifest {quote(name)} has problems", problems))
        missing = sorted({d["audio"] for d in items if not self.blob_path(d["audio"]).is_file()})
        if missing:
            raise UploadError(grpc.StatusCode.FAILED_PRECONDITION,
                              _listing(f"manifest {quote(name)} names {len(missing)} blob(s) the store does not hold complete; "
                                       "upload them (before the manifest) and retry", missing))
        durations: dict[str, float] = {}
        for sha in {d["audio"] for d in items}:
            try:
                info = sf.info(str(self.blob_path(sha)))
                durations[sha] = info.frames / info.samplerate
            except (RuntimeError, sf.LibsndfileError) as e:
                problems.append(f"blob {sha}: not an audio file soundfile can read ({e})")
        if problems:
            raise UploadError(grpc.StatusCode.INVALID_ARGUMENT, _listing(f"manifest {quote(name)} names unreadable audio", sorted(problems)))

        sha = hashlib.sha256(content).hexdigest()
        folder = self.root / "manifests"
        self._check_disk(3 * len(content), f"manifest {quote(name)}")
        info = {"name": name, "utterances": len(items), "audio_seconds": round(sum(durations[d["audio"]] for d in items), 3)}
        try:  # the manifest itself last: until it is there, the data URI is unknown (no half-stored manifest)
            _atomic_write(folder / f"{sha}.json", json.dumps(info).encode())
            self._write_resolved(sha, items, durations)
            _atomic_write(folder / f"{sha}.jsonl", content)
        except OSError as e:
            raise storage_error(e, self.root, f"manifest {quote(name)}") from None
        return ManifestInfo(DATA_URI + sha, info["utterances"], info["audio_seconds"])

    def known(self, uri: str) -> bool:
        sha = uri[len(DATA_URI):] if uri.startswith(DATA_URI) else ""
        return bool(_SHA.match(sha)) and (self.root / "manifests" / f"{sha}.jsonl").is_file()

    # -- domain text (JobSpec.domain_text): texts/<sha>.txt and texts/<sha>.json {"bytes", "lines"}

    def put_text(self, text: str) -> tuple[str, int]:
        """Store a job's domain text content-addressed; returns (sha256 of its UTF-8 bytes, lines)."""
        content = text.encode("utf-8")
        sha = hashlib.sha256(content).hexdigest()
        folder = self.root / "texts"
        lines = text.count("\n") + (0 if text.endswith("\n") else 1)
        if not (folder / f"{sha}.txt").is_file():
            self._check_disk(len(content), "domain text")
            try:
                folder.mkdir(exist_ok=True)
                _atomic_write(folder / f"{sha}.json", json.dumps({"bytes": len(content), "lines": lines}).encode())
                _atomic_write(folder / f"{sha}.txt", content)
            except OSError as e:
                raise storage_error(e, self.root, "domain text") from None
        return sha, lines

    def text_path(self, sha: str) -> Path | None:
        """The stored domain text `sha`, or None when this server does not hold it."""
        path = self.root / "texts" / f"{sha}.txt"
        return path if _SHA.match(sha) and path.is_file() else None

    def text_lines(self, sha: str) -> int:
        try:
            return int(json.loads((self.root / "texts" / f"{sha}.json").read_text())["lines"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def resolve(self, uri: str) -> Path:
        """`data://<sha>` -> a manifest file on this machine with absolute audio paths. LookupError when unknown."""
        if not self.known(uri):
            raise LookupError(f"{uri} is not in this server's data store: upload the data with UploadData first")
        sha = uri[len(DATA_URI):]
        resolved = self.root / "manifests" / f"{sha}.resolved.jsonl"
        if not resolved.is_file():  # e.g. written by an older server, or removed: rebuild from the original
            items = [json.loads(line) for line in (self.root / "manifests" / f"{sha}.jsonl").read_text().splitlines() if line.strip()]
            self._write_resolved(sha, items, {})
        return resolved

    def _write_resolved(self, sha: str, items: list[dict], durations: dict[str, float]) -> None:
        out = []
        for d in items:
            r = dict(d)
            r["audio"] = str(self.blob_path(d["audio"]).absolute())
            if "duration" not in r and d["audio"] in durations:
                r["duration"] = round(durations[d["audio"]], 4)
            out.append(json.dumps(r))
        _atomic_write(self.root / "manifests" / f"{sha}.resolved.jsonl", ("\n".join(out) + "\n").encode())


def _append_whole(path: Path, data: memoryview, size: int) -> int:
    """Append `data` to the file of `size` bytes at `path`, all of it or nothing (a failed write, e.g. a full
    disk, cuts the file back to `size`). Returns the bytes written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        rest = data
        while rest:
            rest = rest[os.write(fd, rest):]
    except OSError:
        os.ftruncate(fd, size)
        raise
    finally:
        os.close(fd)
    return len(data)


def _atomic_write(path: Path, data: bytes) -> None:
    """`path` holds `data` or what it held before: never a part (a failure, e.g. a full disk, removes the temp)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _listing(head: str, items: list[str], limit: int = 20) -> str:
    shown = "; ".join(items[:limit])
    more = f"; and {len(items) - limit} more" if len(items) > limit else ""
    return f"{head}: {shown}{more}"
