"""What an adaptation job may read: uploads (`data://`) and files under the server's data roots.

`serve --data-root DIR` (repeatable) names the folders whose files jobs may name; without any, jobs read only
uploads. A manifest path, and every "audio" path inside a manifest, must resolve (`os.path.realpath`: `..` and
symlinks followed, as the kernel will when the job opens it) to a file under one of the roots. Relative audio
paths are taken from the manifest's folder, as `speechadapt.asr.manifest` reads them.

The server checks a spec before it records the job (PERMISSION_DENIED); the job's validate phase checks again
with the same roots (`python -m speechadapt.training.adapt --data-root DIR ...`), which also covers manifests
only the Ray workers can read. Pure Python (no torch): the server imports it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from speechadapt.jobspec import DATA_URI

MAX_LISTED = 20  # audio lines listed per manifest; the rest are counted
UPLOAD_HINT = ("upload local files instead (speechadapt jobs submit --upload, or upload=True in the Python clients), "
               "or start the server with --data-root DIR for the folder that holds them")


def real_roots(roots: Iterable[str | Path]) -> tuple[str, ...]:
    """The roots as canonical absolute paths (each once, in order)."""
    return tuple(dict.fromkeys(os.path.realpath(r) for r in roots))


def is_under(path: str | Path, roots: tuple[str, ...]) -> bool:
    """Whether `path`, with `..` and symlinks resolved, is one of `roots` (canonical, see `real_roots`) or lies
    below one."""
    try:
        real = os.path.realpath(path)
    except (ValueError, OSError):  # an embedded NUL byte, a path the OS refuses
        return False
    return any(real == r or real.startswith(r if r.endswith(os.sep) else r + os.sep) for r in roots)


def roots_text(roots: tuple[str, ...]) -> str:
    return ", ".join(roots) if roots else "none: only uploads"


def access_problems(manifests: Mapping[str, str], roots: tuple[str, ...]) -> list[str]:
    """Every manifest (keyed by spec field) that is neither a data:// URI nor under `roots`, and every audio line of
    a readable manifest under them that points outside; each names the field, path and line. A manifest that
    cannot be read here is judged by its path alone (the job checks its lines where it runs)."""
    problems: list[str] = []
    for key, value in manifests.items():
        if not value or value.startswith(DATA_URI):
            continue
        if not is_under(value, roots):
            problems.append(f"{key} {value}: not under a data root (after following '..' and symlinks)")
            continue
        try:
            with open(value, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:  # missing, a folder, unreadable: the data checks say so
            continue
        folder = Path(value).parent
        outside = []
        for n, line in enumerate(lines, 1):
            try:
                d = json.loads(line)
            except ValueError:
                continue  # the data checks list lines that are not JSON
            audio = d.get("audio") if isinstance(d, dict) else None
            if isinstance(audio, str) and audio and not is_under(folder / audio, roots):
                outside.append(f"{key} {value} line {n}: audio {audio[:200]!r} is not under a data root "
                               "(after following '..' and symlinks)")
        problems += outside[:MAX_LISTED]
        if len(outside) > MAX_LISTED:
            problems.append(f"{key} {value}: ... and {len(outside) - MAX_LISTED} more audio lines outside the data roots")
    return problems


def access_error(problems: list[str], roots: tuple[str, ...], what: str = "this server") -> str:
    """The message of a refusal: what may be read, how to fix it, then every problem on its own line."""
    head = (f"the job names data {what} may not read: jobs read only uploads (data://) and files under its data "
            f"roots ({roots_text(roots)}); {UPLOAD_HINT}")
    return head + ":\n" + "\n".join(f"- {p}" for p in problems)
