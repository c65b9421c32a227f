"""The `speechadapt` command line: transcribe, models, jobs, eval, serve, data synth, data text, pretrain.

Client subcommands need only the light install. `eval`, `serve` and
`data synth` import their (torch) modules inside the handler, so `--help` and
the client stay light; without the server extra they exit 2 with a hint.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from speechadapt import __version__
from speechadapt import lm as speechadapt_lm
from speechadapt.client._sync import SpeechClient
from speechadapt.client.jobs import (
    JOB_COLUMNS, REPORT_JSON, REPORT_PNG, SEARCH_PNG, job_details, job_row, progress_line, server_problems,
    summary_lines, upload_line,
)
from speechadapt.client.types import Job, JobEvent, ModelInfo, Result, SpeechAdaptError
from speechadapt.client.upload import ManifestError, UploadProgress
from speechadapt.jobspec import JobSpec, JobSpecError

DEFAULT_SERVER = "127.0.0.1:50051"
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _error(msg: object, code: int) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


def _needs_extra(cmd: str, err: ImportError) -> int:
    print(f"speechadapt {cmd} needs the server extra: pip install 'speechadapt[server]'", file=sys.stderr)
    print(f"({err})", file=sys.stderr)
    return EXIT_USAGE


# -- transcribe


class _HumanPrinter:
    """Finals as "[file] transcript"; interims overwrite one line on a TTY, else "partial: ..." lines."""

    def __init__(self, out: TextIO):
        self.out = out
        self.tty = out.isatty()
        self.shown = 0  # length of the partial line on screen

    def result(self, file: str, r: Result) -> None:
        if r.is_final:
            self.clear()
            print(f"[{file}] {r.transcript}", file=self.out, flush=True)
        elif self.tty:
            width = max(10, shutil.get_terminal_size().columns - 1)
            line = r.transcript[-width:]  # the newest words when it does not fit
            self.out.write("\r" + line + " " * max(0, self.shown - len(line)))
            self.out.flush()
            self.shown = len(line)
        else:
            print(f"partial: {r.transcript}", file=self.out, flush=True)

    def clear(self) -> None:
        if self.shown:
            self.out.write("\r" + " " * self.shown + "\r")
            self.out.flush()
            self.shown = 0


def _transcribe(args: argparse.Namespace) -> int:
    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        return _error(f"audio file not found: {missing[0]}", EXIT_USAGE)
    human = None if args.json else _HumanPrinter(sys.stdout)
    try:
        with _client(args) as client:
            for file in args.files:
                results = client.stream_file(file, model=args.model, interim_results=args.interim,
                                             realtime=args.realtime, phrases=args.phrase, boost=args.boost,
                                             max_alternatives=args.alternatives, vad_aggressiveness=args.vad)
                for r in results:
                    if human is not None:
                        human.result(file, r)
                    elif r.is_final or args.interim:
                        print(json.dumps(r.to_json(file), ensure_ascii=False), flush=True)
                if human is not None:
                    human.clear()
    except SpeechAdaptError as e:
        if human is not None:
            human.clear()
        return _error(e, EXIT_FAIL)
    except (OSError, ValueError, TypeError) as e:
        if human is not None:
            human.clear()
        return _error(e, EXIT_USAGE)
    except KeyboardInterrupt:
        if human is not None:
            human.clear()
        return EXIT_INTERRUPTED
    return EXIT_OK


# -- models


def _human_params(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n) if n else "-"


def _human_bytes(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B" if n else "-"


def _model_rows(models: list[ModelInfo]) -> list[list[str]]:
    rows = [["NAME", "VERSION", "ARCHITECTURE", "RATE", "PARAMS", "SIZE", "SOURCE", "DEFAULT", "METRICS"]]
    for m in models:
        metrics = " ".join(f"{k}={v:.3f}" for k, v in list(m.metrics.items())[:3])
        size = _human_bytes(m.package_bytes) + (f" (on {m.adapter_base})" if m.adapter_base else "")
        rows.append([m.name, str(m.version), m.architecture or "-", str(m.sample_rate_hertz or "-"),
                     _human_params(m.num_parameters), size, m.source or "-", "*" if m.is_default else "", metrics])
    return rows


def _print_table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)


def _print_model(m: ModelInfo, out: TextIO) -> None:
    fields = [("model", m.ref + ("  (default)" if m.is_default else "")), ("architecture", m.architecture),
              ("sample rate", f"{m.sample_rate_hertz} Hz"), ("language", m.language_code),
              ("parameters", f"{m.num_parameters:,}"), ("package", _human_bytes(m.package_bytes)),
              ("adapter of", m.adapter_base), ("source", m.source), ("created", m.create_time),
              ("description", m.description)]
    fields += [(f"lineage.{k}", v) for k, v in m.lineage.items()]
    fields += [(f"metric {k}", f"{v:.4f}") for k, v in m.metrics.items()]
    width = max(len(k) for k, _ in fields)
    for k, v in fields:
        if v:
            print(f"{k.ljust(width)}  {v}", file=out)


def _models_list(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            models = client.list_models(name=args.name, all_versions=args.all_versions)
    except SpeechAdaptError as e:
        return _error(e, EXIT_FAIL)
    except (OSError, ValueError) as e:
        return _error(e, EXIT_USAGE)
    if args.json:
        for m in models:
            print(json.dumps(m.to_json(), ensure_ascii=False))
    elif models:
        _print_table(_model_rows(models), sys.stdout)
    else:
        print("no models", file=sys.stderr)
    return EXIT_OK


def _models_get(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            m = client.get_model(args.ref)
    except SpeechAdaptError as e:
        return _error(e, EXIT_FAIL)
    except (OSError, ValueError) as e:
        return _error(e, EXIT_USAGE)
    if args.json:
        print(json.dumps(m.to_json(), ensure_ascii=False))
    else:
        _print_model(m, sys.stdout)
    return EXIT_OK


# -- jobs


def _client(args: argparse.Namespace) -> SpeechClient:
    """The client of a connecting command: --server, TLS options and the bearer token (--token, else
    $SPEECHADAPT_TOKEN). UNAUTHENTICATED / PERMISSION_DENIED end the command with the server's message, exit 1."""
    return SpeechClient(args.server, tls=args.tls, root_certificates=args.ca_cert, token=args.token,
                        tls_client_cert=args.tls_cert, tls_client_key=args.tls_key)


def _problems(title: str, problems: list[str]) -> int:
    """Every problem on its own line; exit 2."""
    print(f"error: {title}:", file=sys.stderr)
    for p in problems:
        print(f"  - {p}", file=sys.stderr)
    return EXIT_USAGE


def _rejected(e: SpeechAdaptError, *usage_codes: str) -> int:
    """A failed call: 2 with every problem the server listed for the usage codes, else 1."""
    if e.code in usage_codes:
        title, problems = server_problems(e.message)
        return _problems(f"{title or 'the server rejected it'} ({e.code})", problems)
    return _error(e, EXIT_FAIL)


def _job_exit(job: Job) -> int:
    """0 when the job SUCCEEDED (promoted or not), 1 when it FAILED or was CANCELLED."""
    return EXIT_OK if job.state == "SUCCEEDED" else EXIT_FAIL


class _LiveLine:
    """Progress on one line: rewritten in place (\\r) on a TTY, else one line per change."""

    def __init__(self, out: TextIO):
        self.out = out
        self.tty = out.isatty()
        self.shown = 0
        self.last = ""
        self.stage = ""
        self.when = 0.0

    def show(self, line: str, end: bool = False) -> None:
        if self.tty:
            width = max(10, shutil.get_terminal_size().columns - 1)
            line = line[:width]
            self.out.write("\r" + line + " " * max(0, self.shown - len(line)) + ("\n" if end else ""))
            self.shown = 0 if end else len(line)
            self.out.flush()
        elif line != self.last:
            print(line, file=self.out, flush=True)
        self.last = line

    def event(self, ev: JobEvent) -> None:
        self.show(progress_line(ev), end=ev.ended)

    def upload(self, p: UploadProgress) -> None:
        # a TTY gets at most 10 updates a second; a log one line per stage
        now = time.monotonic()
        changed = p.stage != self.stage
        if changed or (self.tty and now - self.when >= 0.1):
            self.show(upload_line(p), end=p.stage == "done")
            self.stage, self.when = p.stage, now

    def close(self) -> None:
        if self.tty and self.shown:
            self.out.write("\n")
            self.out.flush()
            self.shown = 0


def _print_job_end(job: Job, as_json: bool) -> None:
    if as_json:
        print(json.dumps(job.record(), ensure_ascii=False), flush=True)
    else:
        for line in summary_lines(job):
            print(line)


def _jobs_submit(args: argparse.Namespace) -> int:
    try:
        spec = JobSpec.from_yaml(args.spec)  # every problem of the file, before connecting
    except JobSpecError as e:
        return _problems(f"invalid job spec {args.spec}", e.problems)
    live = _LiveLine(sys.stderr if args.json else sys.stdout)
    job: Job | None = None
    try:
        with _client(args) as client:
            job = client.submit_job(spec, upload=args.upload, on_upload_progress=live.upload)
            live.close()
            if not args.wait:
                print(json.dumps(job.record(), ensure_ascii=False) if args.json else job.id, flush=True)
                return EXIT_OK
            live.show(f"job {job.id} {job.state}", end=True)
            job = client.wait_job(job.id, timeout=args.timeout, on_event=live.event)
            live.close()
    except ManifestError as e:
        live.close()
        return _problems(f"cannot upload the data of {args.spec}", e.problems)
    except SpeechAdaptError as e:
        live.close()
        return _rejected(e, *(() if job else ("INVALID_ARGUMENT", "NOT_FOUND")))
    except (OSError, ValueError) as e:
        live.close()
        return _error(e, EXIT_USAGE)
    except KeyboardInterrupt:
        live.close()
        if job is not None:
            print(f"interrupted; job {job.id} keeps running: speechadapt jobs watch {job.id} "
                  f"(or jobs cancel {job.id})", file=sys.stderr)
        return EXIT_INTERRUPTED
    _print_job_end(job, args.json)
    return _job_exit(job)


def _jobs_watch(args: argparse.Namespace) -> int:
    live = _LiveLine(sys.stdout)

    def show(ev: JobEvent) -> None:
        if args.json:
            print(json.dumps(ev.to_dict(), ensure_ascii=False), flush=True)
        else:
            live.event(ev)

    try:
        with _client(args) as client:
            job = client.wait_job(args.id, timeout=args.timeout, on_event=show)
    except SpeechAdaptError as e:
        live.close()
        return _rejected(e, "INVALID_ARGUMENT")
    except ValueError as e:
        return _error(e, EXIT_USAGE)
    except KeyboardInterrupt:
        live.close()
        return EXIT_INTERRUPTED
    live.close()
    if not args.json:
        _print_job_end(job, False)
    return _job_exit(job)


def _jobs_list(args: argparse.Namespace) -> int:
    states = [s for v in args.state for s in v.split(",") if s.strip()]
    try:
        with _client(args) as client:
            found = client.list_jobs(states or None)
    except SpeechAdaptError as e:
        return _rejected(e, "INVALID_ARGUMENT")
    except ValueError as e:
        return _error(e, EXIT_USAGE)
    if args.json:
        for job in found:
            print(json.dumps(job.to_dict(), ensure_ascii=False))
    elif found:
        _print_table([JOB_COLUMNS] + [job_row(j) for j in found], sys.stdout)
    else:
        print("no jobs", file=sys.stderr)
    return EXIT_OK


def _jobs_get(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            job = client.get_job(args.id)
    except SpeechAdaptError as e:
        return _rejected(e, "INVALID_ARGUMENT")
    except ValueError as e:
        return _error(e, EXIT_USAGE)
    if args.json:
        print(json.dumps(job.to_dict(), ensure_ascii=False))
    else:
        rows = job_details(job)
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"{k.ljust(width)}  {v}")
    return EXIT_OK


def _jobs_cancel(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            job = client.cancel_job(args.id)
    except SpeechAdaptError as e:
        return _rejected(e, "INVALID_ARGUMENT")
    except ValueError as e:
        return _error(e, EXIT_USAGE)
    print(json.dumps(job.record(), ensure_ascii=False) if args.json else f"job {job.id} {job.state}")
    return EXIT_OK


def _jobs_report(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            metrics = client.get_job_report(args.id, args.out)
    except SpeechAdaptError as e:
        return _rejected(e, "INVALID_ARGUMENT")
    except (OSError, ValueError) as e:
        return _error(e, EXIT_USAGE)
    if args.json:
        print(json.dumps(metrics, ensure_ascii=False))
    else:
        out = Path(args.out)
        files = [out / name for name in (REPORT_JSON, REPORT_PNG, SEARCH_PNG) if (out / name).is_file()]
        print("wrote " + ", ".join(str(f) for f in files))
    return EXIT_OK


# -- eval, serve (in-process, need the server extra)


def _eval(args: argparse.Namespace) -> int:
    try:
        from speechadapt.asr import evaluate, load_model
    except ImportError as e:
        return _needs_extra("eval", e)
    try:
        model = load_model(args.model, store=args.model_store, device=args.device)
        res = evaluate(model, args.manifest).as_dict()
    except (ValueError, FileNotFoundError, LookupError) as e:
        return _error(e, EXIT_USAGE)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"model       {args.model}")
        print(f"WER         {100 * res['wer']:.2f} %")
        print(f"CER         {100 * res['cer']:.2f} %")
        print(f"utterances  {res['utterances']}")
        print(f"audio       {res['audio_seconds']:.1f} s")
        print(f"RTF         {res['rtf']:.3f}")
    return EXIT_OK


def _models_import(args: argparse.Namespace) -> int:
    try:
        from speechadapt.asr.importers import import_model
        from speechadapt.asr.package import PackageError, read_card
    except ImportError as e:
        return _needs_extra("models import", e)
    try:
        folder = import_model(args.source, args.name, Path(args.store), tokenizer=args.tokenizer,
                              labels=args.labels, description=args.description)
    except (PackageError, ValueError, OSError) as e:
        print(f"error: cannot import {args.source}: {e}", file=sys.stderr)
        return EXIT_USAGE
    card = read_card(folder)
    if args.json:
        print(card.to_json(), end="")
    else:
        print(f"imported {args.source} as {card.name}@{card.version} ({card.architecture}, "
              f"{_human_params(card.num_parameters)} parameters) in {folder}")
    return EXIT_OK


def serve_config(args: argparse.Namespace):
    """The ServerConfig of parsed `serve` arguments (ValueError for values it refuses)."""
    from speechadapt.server.config import GIB, MIB, ServerConfig

    return ServerConfig(
        host=args.host, port=args.port, model_store=Path(args.model_store), default_model=args.default_model,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        tls_client_ca=Path(args.tls_client_ca) if args.tls_client_ca else None,
        auth_tokens=Path(args.auth_tokens) if args.auth_tokens else None,
        max_streams=args.max_streams, max_message_bytes=args.max_message_mb * MIB, device=args.device,
        state_dir=Path(args.state_dir) if args.state_dir else None, ray_address=args.ray_address,
        model_memory_mb=args.model_memory_mb, max_blob_bytes=args.max_upload_mb * MIB,
        max_upload_bytes=args.max_upload_mb * MIB,
        batch_max=args.batch_max, batch_wait_ms=args.batch_wait_ms,
        data_roots=tuple(Path(d) for d in args.data_root),
        upload_quota_bytes=None if args.upload_quota_gb is None else int(args.upload_quota_gb * GIB),
        min_free_disk_bytes=int(args.min_free_disk_gb * GIB),
        metrics_port=args.metrics_port, metrics_host=args.metrics_host, log_format=args.log_format,
        drain_seconds=args.drain_seconds, write_timeout_s=args.write_timeout_s,
    )


def _serve(args: argparse.Namespace) -> int:
    try:
        from speechadapt.server.app import run
    except ImportError as e:
        return _needs_extra("serve", e)
    try:
        return run(serve_config(args))
    except ValueError as e:
        return _error(e, EXIT_USAGE)
    except OSError as e:
        return _error(e, EXIT_FAIL)


# -- parser


def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def _non_negative_float(text: str) -> float:
    x = float(text)
    if not x >= 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of at least 0, not {text}")
    return x


def _positive_float(text: str) -> float:
    x = float(text)
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return x


def _add_jobs(sub: argparse._SubParsersAction, conn: argparse.ArgumentParser) -> None:
    jobs = sub.add_parser("jobs", help="adaptation jobs: submit, watch, list, get, cancel, report",
                          description="Adaptation jobs fine-tune a model on your audio on the server's Ray cluster "
                                      "and publish a new version when it beats the base model.")
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="COMMAND", required=True)
    p = jsub.add_parser("submit", parents=[conn], help="submit a job from a YAML spec",
                        description="Exit status with --wait: 0 when the job SUCCEEDED (promoted or not), 1 when it "
                                    "FAILED or was CANCELLED, 2 for an invalid spec or data.")
    p.add_argument("spec", metavar="SPEC.yaml",
                   help="job spec (keys: name, base_model, train_manifest, dev_manifest, ...)")
    p.add_argument("--upload", action="store_true",
                   help="upload local manifests and their audio first (only what the server does not hold yet)")
    p.add_argument("--wait", action="store_true", help="show progress until the job ends, then a summary")
    p.add_argument("--timeout", type=_positive_float, default=None, metavar="S",
                   help="with --wait: stop waiting after S seconds (the job keeps running)")
    p.add_argument("--json", action="store_true", help='print the job record {"id", "state", "promoted", "reason", '
                   '"model", "version", "metrics"} as JSON (progress goes to stderr)')
    p.set_defaults(_handler=_jobs_submit)
    p = jsub.add_parser("watch", parents=[conn], help="follow a job's progress until it ends")
    p.add_argument("id", metavar="ID", help="job id")
    p.add_argument("--timeout", type=_positive_float, default=None, metavar="S", help="stop after S seconds")
    p.add_argument("--json", action="store_true", help="one JSON object per progress event per line")
    p.set_defaults(_handler=_jobs_watch)
    p = jsub.add_parser("list", parents=[conn], help="list jobs")
    p.add_argument("--state", action="append", default=[], metavar="S",
                   help="only jobs in this state: QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON object per job per line")
    p.set_defaults(_handler=_jobs_list)
    p = jsub.add_parser("get", parents=[conn], help="show one job")
    p.add_argument("id", metavar="ID", help="job id")
    p.add_argument("--json", action="store_true", help="print the job as one JSON object")
    p.set_defaults(_handler=_jobs_get)
    p = jsub.add_parser("cancel", parents=[conn], help="cancel a queued or running job")
    p.add_argument("id", metavar="ID", help="job id")
    p.add_argument("--json", action="store_true", help="print the job record as JSON")
    p.set_defaults(_handler=_jobs_cancel)
    p = jsub.add_parser("report", parents=[conn], help="save a job's metrics.json, training.png and (search jobs) search.png")
    p.add_argument("id", metavar="ID", help="job id")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the report files into")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(_handler=_jobs_report)


def _port(text: str) -> int:
    n = int(text)
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, not {n}")
    return n


def _add_delegated(sub: argparse._SubParsersAction, name: str, module: str, help_: str, cmd: str) -> None:
    """A subcommand whose options and handler live in a light speechadapt.training module
    (`add_arguments(parser)`, `run(args)`), so building the parser never imports torch or ray."""
    p = sub.add_parser(name, help=help_)
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        p.description = f"Not available here: {module} cannot be imported ({e})."
        p.set_defaults(_handler=functools.partial(lambda err, _args: _needs_extra(cmd, err), e), _any_arguments=True)
        return
    mod.add_arguments(p)
    p.set_defaults(_handler=mod.run)


def _add_synth(data_sub: argparse._SubParsersAction) -> None:
    _add_delegated(data_sub, "synth", "speechadapt.training.synth", "synthesise a speech corpus (manifest + audio)", "data synth")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (reads SPEECHADAPT_SERVER for --server's default)."""
    server_default = os.environ.get("SPEECHADAPT_SERVER") or DEFAULT_SERVER
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--server", default=server_default, metavar="HOST:PORT",
                      help=f"server address (default: $SPEECHADAPT_SERVER or {DEFAULT_SERVER}; now {server_default})")
    conn.add_argument("--tls", action="store_true", help="connect with TLS (system root certificates)")
    conn.add_argument("--ca-cert", metavar="PEM", help="CA certificate (PEM file) to trust; implies --tls")
    conn.add_argument("--tls-cert", metavar="PEM", help="client certificate (PEM) for a server that requires one "
                      "(serve --tls-client-ca); with --tls-key; implies --tls")
    conn.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert (PEM)")
    token_set = "set" if os.environ.get("SPEECHADAPT_TOKEN", "").strip() else "not set"
    conn.add_argument("--token", default=None, metavar="TOKEN",
                      help="bearer token for a server started with --auth-tokens (default: $SPEECHADAPT_TOKEN, now "
                           f"{token_set}; the variable keeps it out of the process list)")

    parser = argparse.ArgumentParser(prog="speechadapt", description="Open speech adaptation platform: "
                                     "streaming recognition client, model server, evaluation.")
    parser.add_argument("--version", action="version", version=f"speechadapt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("transcribe", parents=[conn], help="transcribe audio files on a server (streaming)")
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (any format soundfile reads, 8..48 kHz)")
    p.add_argument("--model", default="", help="'name' or 'name@version' (default: the server's default model)")
    p.add_argument("--interim", action="store_true", help="show interim (partial) results")
    p.add_argument("--realtime", action="store_true", help="send audio at real-time speed, like a live source")
    p.add_argument("--json", action="store_true", help="one JSON object per result per line")
    p.add_argument("--phrase", action="extend", nargs="+", default=[], metavar="P",
                   help="phrase to bias recognition towards (repeatable)")
    p.add_argument("--boost", type=float, default=0.0, metavar="B",
                   help="log-score bonus per matched phrase word, up to 20 (default: the server's, 10)")
    p.add_argument("--alternatives", type=int, default=1, metavar="N",
                   help="n-best hypotheses per final result, 1..10 (JSON output lists them; default: 1)")
    p.add_argument("--vad", type=int, default=0, choices=(-1, 0, 1, 2, 3), metavar="A",
                   help="webrtcvad aggressiveness that must agree before an utterance ends: 1..3, 0 = server "
                        "default, -1 = off")
    p.set_defaults(_handler=_transcribe)

    models = sub.add_parser("models", help="list and inspect the server's models")
    msub = models.add_subparsers(dest="models_command", metavar="COMMAND", required=True)
    p = msub.add_parser("list", parents=[conn], help="list the servable models")
    p.add_argument("--json", action="store_true", help="one JSON object per model per line")
    p.add_argument("--all-versions", action="store_true", help="every version, not only the newest of each name")
    p.add_argument("--name", default="", help="only this model name")
    p.set_defaults(_handler=_models_list)
    p = msub.add_parser("get", parents=[conn], help="show one model")
    p.add_argument("ref", metavar="REF", help="'name' (newest version) or 'name@version'")
    p.add_argument("--json", action="store_true", help="print the model as one JSON object")
    p.set_defaults(_handler=_models_get)
    p = msub.add_parser("import", help="import a checkpoint into a model store as a verified package (in-process)",
                        description="Sources: bundled:whisper-tiny.en (shipped with speechadapt[server]); a CTranslate2 "
                        "Whisper folder; a Hugging Face Whisper folder (config.json, model.safetensors, tokenizer.json); "
                        "an openai-whisper checkpoint (.pt); torchaudio wav2vec2/HuBERT CTC weights (.pt/.pth, with "
                        "--labels). The package is written as NAME@N (next version) only once it loads back.")
    p.add_argument("source", metavar="SOURCE", help="bundled:NAME, a folder or a checkpoint file")
    p.add_argument("--name", required=True, help="model name in the store (letters, digits, '.', '_', '-')")
    p.add_argument("--store", default="./models", metavar="DIR", help="model store (default: ./models)")
    p.add_argument("--tokenizer", default=None, metavar="FILE",
                   help="tokenizer.json for an openai-whisper checkpoint (default: the bundled one, English-only vocab)")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="wav2vec2 CTC labels, one per line (default: torchaudio's English character set)")
    p.add_argument("--description", default="", help="text for the model card")
    p.add_argument("--json", action="store_true", help="print the package's card as JSON")
    p.set_defaults(_handler=_models_import)

    _add_jobs(sub, conn)

    p = sub.add_parser("eval", help="word/character error rate of a model on a manifest (in-process)")
    p.add_argument("--model", required=True, metavar="NAME|PATH", help="model package folder or 'name[@version]'")
    p.add_argument("--model-store", default=None, metavar="DIR", help="model store to resolve names in")
    p.add_argument("--manifest", required=True, metavar="FILE", help="JSONL manifest: {audio, text} per line")
    p.add_argument("--json", action="store_true", help='print {"wer","cer","utterances","audio_seconds","rtf"}')
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.set_defaults(_handler=_eval)

    p = sub.add_parser("serve", help="run the gRPC recognition server")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=_port, default=50051, help="port (default: 50051; 0 picks a free one)")
    p.add_argument("--model-store", default="./models", metavar="DIR", help="model store (default: ./models)")
    p.add_argument("--default-model", default=None, metavar="REF", help="model for requests that name none")
    p.add_argument("--tls-cert", metavar="PEM", help="server certificate chain (with --tls-key)")
    p.add_argument("--tls-key", metavar="PEM", help="server private key (with --tls-cert)")
    p.add_argument("--tls-client-ca", metavar="PEM",
                   help="require client certificates signed by this CA (mTLS; needs --tls-cert/--tls-key)")
    p.add_argument("--auth-tokens", metavar="FILE",
                   help="require bearer tokens: one 'TOKEN ROLE[,ROLE] [NAME]' per line, roles recognize, adapt, "
                        "admin; re-read on SIGHUP (default: no authentication)")
    p.add_argument("--max-streams", type=_positive_int, default=64, metavar="N",
                   help="concurrent recognitions (default: 64)")
    p.add_argument("--max-message-mb", type=_positive_int, default=8, metavar="N",
                   help="largest gRPC message in MiB (default: 8)")
    p.add_argument("--write-timeout-s", type=_positive_float, default=30.0, metavar="S",
                   help="end a stream whose client takes no response for S seconds (a slow reader), with "
                        "RESOURCE_EXHAUSTED (default: 30)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--batch-max", type=_positive_int, default=32, metavar="N",
                   help="streams whose chunks share one forward pass (default: 32; 1 = no batching)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, metavar="MS",
                   help="longest a chunk waits for other streams' chunks to join its batch, 0..100 (default: 10)")
    p.add_argument("--model-memory-mb", type=_positive_int, default=1024, metavar="N",
                   help="weights of loaded models kept in memory; idle ones beyond it are unloaded (default: 1024)")
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help="adaptation jobs, uploads and run folders (default: <model-store>-state beside the store)")
    p.add_argument("--ray-address", default=None, metavar="URL",
                   help="Ray cluster for adaptation jobs, e.g. http://HEAD:8265 (default: a local head on 127.0.0.1 "
                        "that the server starts when a job needs it and stops with the server)")
    p.add_argument("--max-upload-mb", type=_positive_int, default=2048, metavar="N",
                   help="most audio one UploadData call may carry, and so the largest file, in MiB (default: 2048)")
    p.add_argument("--metrics-port", type=_port, default=None, metavar="N",
                   help="serve Prometheus metrics on http://HOST:N/metrics (0 picks a free port; default: off)")
    p.add_argument("--metrics-host", default=None, metavar="HOST",
                   help="address the metrics endpoint binds (default: --host)")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="stderr log lines: text, or json (one object per line, plus one per RPC; default: text)")
    p.add_argument("--data-root", action="append", default=[], metavar="DIR",
                   help="jobs may name manifests and audio under DIR (repeatable; '..' and symlinks are followed). "
                        "Default: none, jobs read only uploaded data (data://)")
    p.add_argument("--upload-quota-gb", type=_non_negative_float, default=None, metavar="GIB",
                   help="most blob bytes one owner (token name; everyone on an open server) may store, in GiB "
                        "(default: no quota)")
    p.add_argument("--min-free-disk-gb", type=_non_negative_float, default=1.0, metavar="GIB",
                   help="uploads must leave this much free space on the state dir's disk, in GiB (default: 1; 0: no floor)")
    p.add_argument("--drain-seconds", type=float, default=30.0, metavar="S",
                   help="on SIGTERM: refuse new recognitions (UNAVAILABLE: retry elsewhere), let open ones run up to "
                        "S seconds, then stop; a second SIGTERM or SIGINT stops at once; 0..3600 (default: 30)")
    p.set_defaults(_handler=_serve, _check=functools.partial(_check_serve, parser=p))

    p = sub.add_parser("lm", help="word language models for open-vocabulary decoding: build, attach, tune (in-process)")
    _add_delegated(speechadapt_lm.add_arguments(p), "tune", "speechadapt.training.lm_tune",
                   "choose a package's LM weights (lm_weight, word score) on a dev manifest", "lm tune")

    data = sub.add_parser("data", help="prepare training and evaluation data")
    data_sub = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    _add_synth(data_sub)
    _add_delegated(data_sub, "text", "speechadapt.training.corpus_text",
                   "write natural English training text (fortunes, WordNet examples, templates)", "data text")
    _add_delegated(sub, "pretrain", "speechadapt.training.pretrain",
                   "pretrain a model as a Ray Train job (--config FILE)", "pretrain")
    return parser


def _check_serve(args: argparse.Namespace, *, parser: argparse.ArgumentParser) -> None:
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together; give both or neither")
    if args.tls_client_ca and not args.tls_cert:
        parser.error("--tls-client-ca needs the server's own --tls-cert and --tls-key")
    if args.metrics_host and args.metrics_port is None:
        parser.error("--metrics-host needs --metrics-port N")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failed call, 2 bad input or missing extra, 130 interrupted)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "_any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    check: Callable | None = getattr(args, "_check", None)
    if check is not None:
        check(args)
    try:
        return int(args._handler(args) or 0)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `speechadapt models list --json | head -1`
        sys.stdout = open(os.devnull, "w")
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
