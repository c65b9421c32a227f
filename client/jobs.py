"""Adaptation jobs on the client side, without the network: spec coercion, request building,
the report files, and the progress and summary lines the CLI prints.

Shared by SpeechClient, AsyncSpeechClient and the `speechadapt jobs` commands.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Union

from speechadapt.client.types import JOB_STATES, Job, JobEvent
from speechadapt.client.upload import LocalManifest, ManifestError, UploadProgress, read_local_manifest
from speechadapt.jobspec import JobSpec, JobSpecError
from speechadapt.v1 import adaptation_pb2 as pb

SpecLike = Union[JobSpec, dict, str, Path, pb.JobSpec]
MANIFEST_KEYS = ("train_manifest", "dev_manifest", "source_dev_manifest")
REPORT_JSON, REPORT_PNG, SEARCH_PNG = "metrics.json", "training.png", "search.png"


# -- requests


def load_spec(spec: SpecLike) -> JobSpec | pb.JobSpec:
    """A JobSpec from a JobSpec, a dict of YAML keys or a YAML file path, checked locally (JobSpecError
    lists every problem). A speechadapt.v1.JobSpec proto passes through unchecked: the server checks it."""
    if isinstance(spec, pb.JobSpec):
        return spec
    if isinstance(spec, JobSpec):
        problems = spec.problems()
        if problems:
            raise JobSpecError(problems)
        return spec
    if isinstance(spec, dict):
        return JobSpec.from_dict(spec)
    if isinstance(spec, (str, Path)):
        return JobSpec.from_yaml(spec)
    raise TypeError(f"spec must be a JobSpec, a dict of job keys or a YAML file path, not {type(spec).__name__}")


def spec_proto(spec: JobSpec | pb.JobSpec) -> pb.JobSpec:
    """The request's spec: a JobSpec's domain_text files are read now and their text sent (JobSpecError when one
    is missing, empty, not UTF-8, or all together over 4 MiB)."""
    return spec if isinstance(spec, pb.JobSpec) else spec.to_proto(domain_text=spec.read_domain_text())


def local_manifests(spec: JobSpec | pb.JobSpec) -> dict[str, LocalManifest]:
    """For `upload=True`: the spec's manifests that are local files, read and checked now (before any
    network), keyed by spec field; ManifestError lists every bad line of all of them. URIs and paths
    that are no local file are left for the server (paths its workers read). Relative paths are
    taken from the current folder (JobSpec.from_yaml has made them relative to the YAML file)."""
    by_path: dict[Path, LocalManifest] = {}
    out: dict[str, LocalManifest] = {}
    problems: list[str] = []
    for key in MANIFEST_KEYS:
        value = getattr(spec, key)
        if not value or "://" in value or not Path(value).is_file():
            continue
        path = Path(value).resolve()
        if path not in by_path:
            try:
                by_path[path] = read_local_manifest(path)
            except ManifestError as e:
                problems += [f"{key}: {p}" for p in e.problems]
                continue
        out[key] = by_path[path]
    if problems:
        raise ManifestError(problems)
    return out


def uploaded_uris(spec: JobSpec | pb.JobSpec, uploaded: dict[Path, str]) -> dict[str, str]:
    """{spec field: data:// URI} for the fields whose local manifest was uploaded."""
    out = {}
    for key in MANIFEST_KEYS:
        value = getattr(spec, key)
        if value and "://" not in value and Path(value).resolve() in uploaded:
            out[key] = uploaded[Path(value).resolve()]
    return out


def with_uris(spec: JobSpec | pb.JobSpec, uris: dict[str, str]) -> JobSpec | pb.JobSpec:
    """The spec with the given manifest fields replaced (by their data:// URIs)."""
    if isinstance(spec, pb.JobSpec):
        out = pb.JobSpec()
        out.CopyFrom(spec)
        for key, uri in uris.items():
            setattr(out, key, uri)
        return out
    return dataclasses.replace(spec, **uris)


def check_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not job_id.strip():
        raise ValueError(f"give a job id (as submit_job or list_jobs returned it), not {job_id!r}")
    return job_id.strip()


def state_values(states: str | Iterable[str | int] | None) -> list[int]:
    """JobState numbers for ListJobsRequest.states: names (any case, "running") or numbers; None = all."""
    if states is None:
        return []
    if isinstance(states, (str, int)):
        states = [states]
    out = []
    for s in states:
        if isinstance(s, int) and not isinstance(s, bool) and s in pb.JobState.values() and s:
            out.append(s)
            continue
        name = str(s).strip().upper()
        if name not in JOB_STATES:
            raise ValueError(f"unknown job state {s!r}: use {', '.join(JOB_STATES)}")
        out.append(pb.JobState.Value(name))
    return out


def save_report(report: pb.JobReport, out_dir: str | Path) -> dict[str, Any]:
    """Write metrics.json (and training.png when the job trained, search.png for a search job) into `out_dir`;
    the metrics as a dict."""
    try:
        metrics = json.loads(report.metrics_json or b"{}")
    except ValueError as e:
        raise ValueError(f"the server's metrics.json for job {report.job_id} is not JSON ({e})") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_JSON).write_bytes(report.metrics_json)
    for name, data in ((REPORT_PNG, report.plot_png), (SEARCH_PNG, report.search_png)):
        png = out / name
        if data:
            png.write_bytes(data)
        elif png.exists():
            png.unlink()  # a stale plot from another job must not pass for this one's
    return metrics


# -- presentation


def format_duration(s: float | None) -> str:
    """Seconds as "42s", "3m05s", "1h02m"; "-" for None."""
    if s is None:
        return "-"
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_wer(w: float | None) -> str:
    return "-" if w is None else f"{100 * w:.1f}%"


def progress_line(ev: JobEvent) -> str:
    """One line for a progress event: phase, step/total, loss, dev WER, ETA, message.

        train  step 120/400  loss 0.532  dev WER 12.3%  ETA 1m05s
    """
    if ev.ended:  # the last event: the state and why
        same = ev.message.strip().lower() in ("", ev.state.lower())
        return ev.state if same else f"{ev.state}  {ev.message}"
    parts = [ev.phase or ev.state.lower()]
    if ev.total_steps:
        parts.append(f"step {ev.step}/{ev.total_steps}")
    elif ev.step:
        parts.append(f"step {ev.step}")
    if ev.step and ev.loss:
        parts.append(f"loss {ev.loss:.3f}")
    if ev.dev_wer is not None:
        parts.append(f"dev WER {format_wer(ev.dev_wer)}")
    if ev.eta is not None:
        parts.append(f"ETA {format_duration(ev.eta)}")
    if ev.message:
        parts.append(ev.message)
    return "  ".join(parts)


def format_bytes(n: int) -> str:
    """1234567 -> "1.2 MB" (decimal units)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def upload_line(p: UploadProgress) -> str:
    """One line for upload progress: hashing, sending (and what the server already had), done."""
    name = Path(p.manifest).name
    if p.stage == "hash":
        return f"upload {name}: hashing audio files {p.files_done}/{p.files_total} ({format_bytes(p.bytes_total)})"
    if p.stage == "send" and not p.bytes_to_send:
        return f"upload {name}: nothing to send, all {format_bytes(p.bytes_present)} already on the server"
    if p.stage == "send":
        held = f", {format_bytes(p.bytes_present)} already on the server" if p.bytes_present else ""
        return (f"upload {name}: sent {format_bytes(p.bytes_sent)} of {format_bytes(p.bytes_to_send)} "
                f"({p.files_done}/{p.files_to_send} files{held})")
    return (f"uploaded {name}: {p.utterances} utterances, {format_duration(p.audio_seconds)} of audio, "
            f"{format_bytes(p.bytes_received)} sent -> {p.manifest_uri}")


def _points(base: float | None, adapted: float | None) -> str:
    if base is None or adapted is None:
        return ""
    return f"{100 * (adapted - base):+.1f} points"


def summary_lines(job: Job) -> list[str]:
    """The human summary of a job: state, base vs adapted target/source WER, promoted or not and why,
    the published model@version."""
    took = f" in {format_duration(job.duration)}" if job.duration is not None else ""
    lines = [f"job {job.id} {job.state}{took}"]
    m = job.metrics
    if any(v is not None for v in m.wers().values()):
        rows = [("", "base", "adapted", ""),
                ("target WER", format_wer(m.base_target_wer), format_wer(m.adapted_target_wer),
                 _points(m.base_target_wer, m.adapted_target_wer)),
                ("source WER", format_wer(m.base_source_wer), format_wer(m.adapted_source_wer),
                 _points(m.base_source_wer, m.adapted_source_wer))]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            line = f"  {r[0].ljust(widths[0])}  {r[1].rjust(widths[1])}  {r[2].rjust(widths[2])}  {r[3]}"
            lines.append(line.rstrip())
    if m.domain_lm_weight is not None:
        how = ("the base has none" if m.domain_lm_weight >= 1  # nothing to mix with: the domain LM alone
               else "not used, the base's LM decoded best" if m.domain_lm_weight == 0
               else f"weight {m.domain_lm_weight:g}")
        lines.append(f"  domain LM: {how}, target dev perplexity "
                     f"{m.domain_lm_dev_perplexity or 0:.1f}; base target WER with it "
                     f"{format_wer(m.base_target_wer_domain_lm)}")
    if job.state == "SUCCEEDED":
        if job.promoted:
            lines.append(f"promoted: {job.model_ref}" + (f" ({job.reason})" if job.reason else ""))
        else:
            lines.append("not promoted" + (f": {job.reason}" if job.reason else ""))
    elif job.reason:
        lines.append(f"reason: {job.reason}")
    return lines


def job_details(job: Job) -> list[tuple[str, str]]:
    """(label, value) rows for `speechadapt jobs get`."""
    rows = [("id", job.id), ("state", job.state)]
    if job.spec is not None:
        rows += [("name", job.spec.name), ("base model", job.spec.base_model), ("strategy", job.spec.strategy),
                 ("train manifest", job.spec.train_manifest), ("dev manifest", job.spec.dev_manifest)]
        if job.spec.domain_text:
            rows.append(("domain text", ", ".join(job.spec.domain_text)))
    if job.progress is not None and not job.ended:
        rows.append(("progress", progress_line(job.progress)))
    rows += [("promoted", ("yes: " + job.model_ref) if job.promoted else ("no" if job.ended else "")),
             ("reason", job.reason)]
    for key, value in job.metrics.wers().items():
        if value is not None:
            rows.append((key.replace("_", " "), format_wer(value)))
    if job.metrics.relatedness is not None:
        rows.append(("relatedness", f"{job.metrics.relatedness:.2f}"))
    if job.metrics.total_parameters:
        rows.append(("trained parameters", f"{job.metrics.trained_parameters:,} of {job.metrics.total_parameters:,}"))
    for label, t in (("created", job.create_time), ("started", job.start_time), ("ended", job.end_time)):
        if t is not None:
            rows.append((label, t.isoformat(timespec="seconds").replace("+00:00", "Z")))
    rows += [("ray job", job.ray_job_id), ("owner", job.owner)]
    return [(k, v) for k, v in rows if v]


def job_row(job: Job) -> list[str]:
    """A `speechadapt jobs list` row: ID STATE NAME BASE PROGRESS/RESULT CREATED."""
    if job.ended:
        m = job.metrics
        result = f"target WER {format_wer(m.base_target_wer)} -> {format_wer(m.adapted_target_wer)}"
        if job.state == "SUCCEEDED":
            result += f", {'promoted ' + job.model_ref if job.promoted else 'not promoted'}"
        elif job.reason:
            result = job.reason
    else:
        result = progress_line(job.progress) if job.progress is not None else ""
    created = job.create_time.strftime("%Y-%m-%d %H:%M") if job.create_time else "-"
    name = job.spec.name if job.spec else "-"
    base = job.spec.base_model if job.spec else "-"
    return [job.id, job.state, name, base, created, result]


JOB_COLUMNS = ["ID", "STATE", "NAME", "BASE", "CREATED", "PROGRESS/RESULT"]


def server_problems(message: str) -> tuple[str, list[str]]:
    """A server's rejection as (title, problems): its listing "head:\n- a\n- b", a JobSpecError's
    "invalid job spec: a; b", or ("", [message]) for a single problem."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if len(lines) > 1:
        head = lines[0][:-1] if lines[0].endswith(":") else ""
        items = lines[1:] if head else lines
        return head, [i[1:].strip() if i.startswith("-") else i for i in items]
    text = lines[0] if lines else ""
    head, _, rest = text.partition(": ")
    if head.lower() == "invalid job spec" and rest:
        return head, [p.strip() for p in rest.split("; ") if p.strip()]
    return "", [text]
