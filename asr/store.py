"""The model store: `ROOT/<name>/<version>/` packages, plus the models shipped with the package."""

from __future__ import annotations

import errno
import os
import re
import shutil
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from speechadapt.asr.package import CARD, read_card
from speechadapt.quote import quote

BUILTIN_DIR = Path(__file__).resolve().parent / "models"


def cache_root() -> Path:
    """Where derived files live: `$SPEECHADAPT_CACHE`, else ~/.cache/speechadapt."""
    return Path(os.environ.get("SPEECHADAPT_CACHE") or Path.home() / ".cache" / "speechadapt")


def generated_dir() -> Path:
    """Built-in models made on this machine from bundled weights (`DIR/<name>/<version>/`)."""
    return cache_root() / "models"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ModelNotFound(LookupError):
    """No model matches a reference."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: int
    path: Path
    source: str  # "store", "builtin" or "path"

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


def parse_ref(ref: str) -> tuple[str, int | None]:
    """"name" or "name@version" -> (name, version or None). Raises ValueError saying what to fix."""
    name, sep, ver = ref.strip().partition("@")
    if not _NAME.match(name) or ".." in name:
        raise ValueError(
            f"invalid model name {quote(name)}: use letters, digits, '.', '_' or '-' (at most 64, no path separators or '..')"
        )
    if not sep:
        return name, None
    if not (ver.isascii() and ver.isdigit()) or len(ver) > 9 or int(ver) < 1:
        raise ValueError(f"invalid model version {quote(ver)} in {quote(ref)}: use name@N with N a positive integer")
    return name, int(ver)


class ModelStore:
    """Read access to a store folder and the built-in models (the store wins on a name clash): those shipped in
    the package (`builtin`) and those built on this machine from bundled weights (`generated`)."""

    def __init__(self, root: str | Path | None, builtin: Path | None = BUILTIN_DIR, generated: Path | None = None):
        self.root = Path(root) if root else None
        self.builtin = builtin
        self.generated = generated_dir() if generated is None else generated

    def versions(self, name: str) -> list[ModelRef]:
        """All versions of `name`, oldest first."""
        refs: list[ModelRef] = []
        for base, source in ((self.root, "store"), (self.generated, "builtin")):
            if refs or base is None or not (base / name).is_dir():
                continue
            for d in (base / name).iterdir():
                if d.name.isdigit() and (d / CARD).is_file():
                    refs.append(ModelRef(name, int(d.name), d, source))
        if not refs and self.builtin is not None and (self.builtin / name / CARD).is_file():
            card = read_card(self.builtin / name)
            refs.append(ModelRef(name, card.version, self.builtin / name, "builtin"))
        return sorted(refs, key=lambda r: r.version)

    def names(self) -> list[str]:
        names: set[str] = set()
        for base in (self.root, self.generated, self.builtin):
            if base is not None and base.is_dir():
                names.update(d.name for d in base.iterdir() if d.is_dir() and _NAME.match(d.name))
        return sorted(n for n in names if self.versions(n))

    def resolve(self, ref: str) -> ModelRef:
        name, version = parse_ref(ref)
        refs = self.versions(name)
        if not refs:
            known = ", ".join(self.names()) or "none"
            raise ModelNotFound(f"model {name!r} not found (available: {known})")
        if version is None:
            return refs[-1]
        for r in refs:
            if r.version == version:
                return r
        raise ModelNotFound(
            f"model {name!r} has no version {version} (available: {', '.join(str(r.version) for r in refs)})"
        )


def resolve_path_or_ref(ref: str, store: str | Path | None = None) -> ModelRef:
    """A package folder path, or a name[@version] in `store` or among the built-in models."""
    p = Path(ref)
    if (p / CARD).is_file():
        card = read_card(p)
        return ModelRef(card.name, card.version, p, "path")
    if "/" in ref or "\\" in ref:
        raise ModelNotFound(f"no model package at {ref} (a folder with {CARD})")
    return ModelStore(store).resolve(ref)


class StoreFull(OSError):
    """Publishing ran out of space or inodes in the store (ENOSPC / EDQUOT); nothing was published."""


def disk_full(e: BaseException) -> bool:
    """Whether an error means the file system is out of space, inodes or quota (OSError ENOSPC/EDQUOT, or
    SQLite's "database or disk is full")."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(e, sqlite3.Error) and getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def store_versions(folder: Path) -> list[int]:
    """Version folders under STORE/<name> (published or reserved), ascending."""
    return sorted(int(d.name) for d in folder.iterdir() if d.is_dir() and d.name.isdigit()) if folder.is_dir() else []


def publish(store: Path, name: str, write: Callable[[Path, int], None]) -> int:
    """Publish a package as STORE/<name>/<N>/, N = 1 + the highest version there. `write(tmp, N)` writes the
    package (files fsynced) into a temp folder in STORE/<name>/, which is renamed onto a freshly reserved
    (empty, card-less: invisible) folder N; a version taken meanwhile moves on to N+1. On any failure
    nothing is left behind; a full file system raises StoreFull. Returns N."""
    parse_ref(name)
    folder = Path(store) / name
    version = 0
    try:
        folder.mkdir(parents=True, exist_ok=True)
        version = (store_versions(folder) or [0])[-1] + 1
        for _ in range(1000):
            target = folder / str(version)
            try:
                os.mkdir(target)  # reserve N (atomic); empty and without model.json the store ignores it
            except FileExistsError:
                version += 1
                continue
            tmp = folder / f".publish-{version}-{uuid.uuid4().hex[:8]}"
            try:
                write(tmp, version)
                fsync_dir(tmp)
                os.rename(tmp, target)  # replaces the empty reservation in one step
                fsync_dir(folder)
                return version
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                try:
                    os.rmdir(target)  # only while still the empty reservation
                except OSError:
                    pass
                raise
    except OSError as e:
        if not disk_full(e) or isinstance(e, StoreFull):
            raise
        raise StoreFull(e.errno, f"no space left in the model store {store} while publishing {name}"
                        f"{f'@{version}' if version else ''} ({e.strerror}): nothing was published and the "
                        "versions there are unchanged; free space (or inodes) and publish again") from e
    raise RuntimeError(f"could not find a free version folder in {folder}")
