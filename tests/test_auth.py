"""Authentication and roles: `serve --auth-tokens FILE`, bearer tokens from the clients and the CLI, job owners,
SIGHUP reload, mTLS (`--tls-client-ca`).

Real components throughout: in-process servers on 127.0.0.1 serving the shipped base-en model, a `speechadapt
serve` subprocess for SIGHUP, real token files, the real clients and CLI. Jobs are submitted through SubmitJob
to a server whose Ray address has nothing listening, so they are recorded (with their owner) and then fail
without training."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import ServerThread, free_port, wait_for
from speechadapt.client import AsyncSpeechClient, SpeechClient
from speechadapt.client import cli
from speechadapt.client.types import SpeechAdaptError
from speechadapt.server.auth import TokenFileError, is_loopback, load_tokens
from speechadapt.server.jobs import JobStore

TOKENS = {name: secrets.token_urlsafe(24) for name in ("rec", "alice", "bob", "ops", "adapt_only")}
SPEC = {"name": "base-en-x", "base_model": "base-en", "train_manifest": "/nonexistent/train.jsonl",
        "dev_manifest": "/nonexistent/dev.jsonl"}


def token_file(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def error(fn) -> SpeechAdaptError:
    with pytest.raises(SpeechAdaptError) as e:
        fn()
    assert not any(t in e.value.message for t in TOKENS.values()), "a token was echoed"
    return e.value


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    """A server with tokens: rec (recognize), alice and bob (adapt), ops (admin, no name), adapt_only (adapt)."""
    tmp = tmp_path_factory.mktemp("auth")
    t = TOKENS
    path = token_file(tmp / "tokens", [
        "# token roles name",
        f"{t['rec']} recognize frontend",
        f"{t['alice']} adapt alice   # a comment",
        "",
        f"{t['bob']} recognize,adapt bob",
        f"{t['ops']} admin",
        f"{t['adapt_only']} adapt carol",
    ])
    server = ServerThread(model_store=tmp / "store", default_model="base-en", auth_tokens=path, state_dir=tmp / "state",
                          ray_address=f"http://127.0.0.1:{free_port()}",  # nothing listens: jobs fail without training
                          data_roots=(Path("/nonexistent"),))  # SPEC's paths: allowed, and only the workers would read them
    yield server
    server.stop()


def client(srv, who: str | None = None, **kw) -> SpeechClient:
    return SpeechClient(srv.address, token=TOKENS[who] if who else "", timeout=60, **kw)


def test_token_file_errors_name_the_line_never_the_token(tmp_path):
    good = secrets.token_urlsafe(24)
    cases = {
        "unknown role 'adimn'": [f"{good} recognize a", f"{secrets.token_urlsafe(24)} adimn b"],
        "no roles": ["# header", f"{good}"],
        "characters; use at least 16": ["short recognize"],
        "4 fields": [f"{good} recognize a b"],
        "same token as line 1": [f"{good} recognize a", f"{good} admin b"],
        "not a role list": [f"admin {good}"],  # fields swapped: the token in the roles field is not shown
        "the name must be": [f"{good} adapt bad/name"],
    }
    for i, (expected, lines) in enumerate(cases.items()):
        path = token_file(tmp_path / f"t{i}", lines)
        with pytest.raises(TokenFileError) as e:
            load_tokens(path)
        msg = str(e.value)
        assert expected in msg and f"{path} line {len(lines)}:" in msg and good not in msg, msg
    with pytest.raises(TokenFileError, match="has no tokens"):
        load_tokens(token_file(tmp_path / "empty", ["# nothing", ""]))
    with pytest.raises(TokenFileError, match="cannot read the token file"):
        load_tokens(tmp_path / "missing")
    table = load_tokens(token_file(tmp_path / "ok", [f"{good} recognize,adapt"]))
    caller = table.lookup(good)
    assert caller.name.startswith("key-") and caller.roles == {"recognize", "adapt"} and table.lookup(good + "x") is None
    # `speechadapt serve` refuses a bad file before loading anything: exit 2, the line named
    bad = token_file(tmp_path / "bad", [f"{good} recognize a", f"{good[::-1]} root b"])
    rc = cli.main(["serve", "--port", "0", "--model-store", str(tmp_path / "store"), "--auth-tokens", str(bad)])
    assert rc == 2
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")


def test_calls_without_a_valid_token_are_unauthenticated_health_and_reflection_stay_open(srv, caplog):
    caplog.set_level(logging.DEBUG)
    with client(srv) as c:
        e = error(c.list_models)
    assert e.code == "UNAUTHENTICATED" and "missing bearer token" in e.message and "SPEECHADAPT_TOKEN" in e.message
    with SpeechClient(srv.address, token="not-a-token-" + "x" * 20) as c:
        e = error(c.list_models)
    assert e.code == "UNAUTHENTICATED" and "not valid on this server" in e.message
    with grpc.insecure_channel(srv.address) as ch:
        from speechadapt.v1 import models_pb2, models_pb2_grpc

        with pytest.raises(grpc.RpcError) as raw:  # not a bearer token
            models_pb2_grpc.ModelsStub(ch).ListModels(models_pb2.ListModelsRequest(), timeout=10,
                                                      metadata=[("authorization", f"Basic {TOKENS['rec']}")])
        assert raw.value.code() == grpc.StatusCode.UNAUTHENTICATED and "Bearer <token>" in raw.value.details()
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="speechadapt.v1.Adaptation"),
                                                      timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        listed = next(reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
        assert "speechadapt.v1.Recognizer" in {s.name for s in listed.list_services_response.service}
    # the streaming call is refused the same way
    with client(srv) as c:
        e = error(lambda: list(c.stream([b"\0\0" * 1600], config_16k())))
    assert e.code == "UNAUTHENTICATED"
    assert not any(t in caplog.text for t in TOKENS.values())


def config_16k():
    from speechadapt.client import StreamConfig

    return StreamConfig(sample_rate_hertz=16000)


def test_roles_decide_what_a_token_may_call(srv, speech, monkeypatch):
    with client(srv, "rec") as c:
        assert "base-en" in [m.name for m in c.list_models()]
        finals = [r.transcript for r in c.stream_file(speech) if r.is_final]
        assert " ".join(finals).strip() and c.recognize(speech)[0].transcript.strip()
        for call in (lambda: c.submit_job(SPEC), c.list_jobs, lambda: c.get_job("job-1")):
            e = error(call)
            assert e.code == "PERMISSION_DENIED" and "'adapt' role" in e.message and "frontend" in e.message, e.message
    with client(srv, "adapt_only") as c:
        assert c.get_model("base-en").name == "base-en"  # models: recognize or adapt (to pick a base model)
        e = error(lambda: c.recognize(speech))
        assert e.code == "PERMISSION_DENIED" and "'recognize' role" in e.message
        assert c.list_jobs() == []
    with client(srv, "ops") as c:  # admin holds every role
        assert c.recognize(speech)[0].transcript.strip()
    monkeypatch.setenv("SPEECHADAPT_TOKEN", TOKENS["rec"])  # the default token of both clients

    async def async_models():
        async with AsyncSpeechClient(srv.address, timeout=60) as ac:
            return [m.name for m in await ac.list_models()]

    assert "base-en" in asyncio.run(async_models())
    with SpeechClient(srv.address, timeout=60) as c:
        assert c.list_models()


def test_jobs_belong_to_their_owner_admin_sees_all(srv):
    with client(srv, "alice") as alice, client(srv, "bob") as bob, client(srv, "ops") as ops:
        a = alice.submit_job(SPEC)
        b = bob.submit_job(dict(SPEC, name="base-en-y"))
        assert (a.owner, b.owner) == ("alice", "bob")
        assert [j.id for j in alice.list_jobs()] == [a.id] and [j.id for j in bob.list_jobs()] == [b.id]
        assert alice.get_job(a.id).owner == "alice"
        for call in (lambda: bob.get_job(a.id), lambda: bob.cancel_job(a.id), lambda: list(bob.watch_job(a.id, timeout=10)),
                     lambda: bob.get_job_report(a.id, "unused")):
            e = error(call)
            assert e.code == "NOT_FOUND" and f"no job {a.id!r}" in e.message
        assert {j.id: j.owner for j in ops.list_jobs()} == {a.id: "alice", b.id: "bob"}
        assert ops.get_job(b.id).owner == "bob"
        events = list(alice.watch_job(a.id, timeout=60))  # the job fails: Ray cannot be reached
        assert events[0].phase == "queued" and events[-1].state == "FAILED" and "Ray" in events[-1].message, events[-1]
        e = error(lambda: ops.cancel_job(a.id))  # admin finds it: it has ended already
        assert e.code == "FAILED_PRECONDITION" and "already ended" in e.message
    # the owner is stored with the job (it survives a restart: the next server reads the same database)
    store = JobStore(srv.server.config.state_path / "jobs.sqlite")
    assert store.get(a.id).owner == "alice" and [j.id for j in store.list(owner="bob")] == [b.id]
    store.close()


def test_job_store_from_before_owners_gains_the_column(tmp_path):
    import sqlite3

    db = sqlite3.connect(tmp_path / "jobs.sqlite")
    db.execute("CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, spec TEXT NOT NULL, "
               "state TEXT NOT NULL, promoted INTEGER NOT NULL DEFAULT 0, reason TEXT NOT NULL DEFAULT '', model TEXT NOT "
               "NULL DEFAULT '', version INTEGER NOT NULL DEFAULT 0, metrics TEXT NOT NULL DEFAULT '{}', create_time REAL "
               "NOT NULL, start_time REAL, end_time REAL, progress TEXT NOT NULL DEFAULT '{}', ray_job_id TEXT NOT NULL "
               "DEFAULT '', attempt INTEGER NOT NULL DEFAULT 0, run_dir TEXT NOT NULL)")
    db.execute("INSERT INTO jobs (id, spec, state, create_time, run_dir) VALUES ('job-old', '{}', 'FAILED', 1.0, '/r')")
    db.commit()
    db.close()
    store = JobStore(tmp_path / "jobs.sqlite")
    new = store.create(SPEC, tmp_path / "runs" / "n", owner="alice")
    assert store.get("job-old").owner == "" and [j.id for j in store.list(owner="alice")] == [new.id]
    store.close()
    assert JobStore(tmp_path / "jobs.sqlite").get(new.id).owner == "alice"  # reopened


def test_cli_token_option_and_environment(srv, monkeypatch, capsys):
    monkeypatch.delenv("SPEECHADAPT_TOKEN", raising=False)
    assert cli.main(["models", "list", "--server", srv.address, "--json"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: UNAUTHENTICATED: missing bearer token") and "--token" in err
    assert cli.main(["models", "list", "--server", srv.address, "--json", "--token", TOKENS["rec"]]) == 0
    assert "base-en" in capsys.readouterr().out
    assert cli.main(["jobs", "list", "--server", srv.address, "--token", TOKENS["rec"]]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: PERMISSION_DENIED: frontend may not call /speechadapt.v1.Adaptation/ListJobs")
    monkeypatch.setenv("SPEECHADAPT_TOKEN", TOKENS["ops"])
    assert cli.main(["jobs", "list", "--server", srv.address, "--json"]) == 0
    out = capsys.readouterr().out
    assert all(json.loads(line)["owner"] in ("alice", "bob") for line in out.splitlines())
    assert cli.main(["jobs", "list", "--server", srv.address, "--token", "zq9w xk7v"]) == 2
    err = capsys.readouterr().err
    assert "printable ASCII" in err and "zq9w" not in err
    assert TOKENS["ops"] not in cli.build_parser().format_help()


def test_sighup_reloads_the_token_file_and_a_bad_file_keeps_the_old_tokens(tmp_path):
    old, new = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    path = token_file(tmp_path / "tokens", [f"{old} recognize first"])
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "speechadapt.client.cli", "serve", "--port", "0", "--model-store",
                             str(tmp_path / "store"), "--default-model", "base-en", "--auth-tokens", str(path)],
                            stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, (tmp_path / "server.log").read_text()
        address = line.split()[-1]

        def works(token: str) -> bool:
            try:
                with SpeechClient(address, token=token, timeout=10) as c:
                    return bool(c.list_models())
            except SpeechAdaptError as e:
                assert e.code == "UNAUTHENTICATED", e
                return False

        assert works(old) and not works(new)
        token_file(path, [f"{new} recognize second"])
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: works(new))
        assert not works(old)
        token_file(path, [f"{old} recognize first", f"{new} recognise second"])  # a bad file: kept the old table
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "keeping the previous 1 tokens" in (tmp_path / "server.log").read_text())
        assert works(new) and not works(old) and proc.poll() is None
        # the CLI against it, with --token
        r = subprocess.run([sys.executable, "-m", "speechadapt.client.cli", "models", "list", "--server", address,
                            "--token", new], capture_output=True, text=True, timeout=60,
                           env={k: v for k, v in os.environ.items() if k != "SPEECHADAPT_TOKEN"})
        assert r.returncode == 0 and "base-en" in r.stdout, r.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()
    text = (tmp_path / "server.log").read_text()
    assert f"token file {path} line 2: unknown role 'recognise'" in text
    assert "reloaded" in text and old not in text and new not in text


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, signed by the CA (PEM files)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    out = {}

    def make(cn: str, issuer=None, issuer_key=None, ca=False, usage=None, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if usage:
            b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = b.sign(issuer_key or key, hashes.SHA256())
        out[f"{cn}.crt"] = folder / f"{cn}.crt"
        out[f"{cn}.key"] = folder / f"{cn}.key"
        out[f"{cn}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{cn}.key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
        return name, key

    ca_name, ca_key = make("ca", ca=True)
    make("server", ca_name, ca_key, usage=ExtendedKeyUsageOID.SERVER_AUTH,
         san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    make("client", ca_name, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return out


def test_mtls_requires_a_client_certificate(tmp_path, capsys, monkeypatch):
    certs = _certificates(tmp_path)
    tokens = token_file(tmp_path / "tokens", [f"{TOKENS['rec']} recognize frontend"])
    server = ServerThread(model_store=tmp_path / "store", default_model="base-en", state_dir=tmp_path / "state",
                          tls_cert=certs["server.crt"], tls_key=certs["server.key"], tls_client_ca=certs["ca.crt"],
                          auth_tokens=tokens)
    try:
        with SpeechClient(server.address, root_certificates=certs["ca.crt"], token=TOKENS["rec"], timeout=20) as c:
            e = error(c.list_models)
        assert e.code == "UNAVAILABLE"  # the handshake fails without a client certificate
        with SpeechClient(server.address, root_certificates=certs["ca.crt"], token=TOKENS["rec"], timeout=20,
                          tls_client_cert=certs["client.crt"], tls_client_key=certs["client.key"]) as c:
            assert "base-en" in [m.name for m in c.list_models()]
        with SpeechClient(server.address, root_certificates=certs["ca.crt"], token="", timeout=20,
                          tls_client_cert=certs["client.crt"], tls_client_key=certs["client.key"]) as c:
            assert error(c.list_models).code == "UNAUTHENTICATED"  # a certificate does not replace the token
        monkeypatch.setenv("SPEECHADAPT_TOKEN", TOKENS["rec"])
        conn = ["--server", server.address, "--ca-cert", str(certs["ca.crt"])]
        assert cli.main(["models", "list", *conn, "--tls-cert", str(certs["client.crt"]),
                         "--tls-key", str(certs["client.key"])]) == 0
        assert "base-en" in capsys.readouterr().out
        assert cli.main(["models", "list", *conn, "--tls-cert", str(certs["client.crt"])]) == 2
        assert "go together" in capsys.readouterr().err
    finally:
        server.stop()


def test_an_open_server_on_a_non_loopback_address_warns(tmp_path, caplog):
    from speechadapt.server.app import ServerConfig, SpeechServer

    async def start_stop(host: str, **kw) -> None:
        server = SpeechServer(ServerConfig(host=host, port=0, model_store=tmp_path / "store", default_model="base-en",
                                           state_dir=tmp_path / "state", **kw))
        await server.start()
        await server.stop(0)

    caplog.set_level(logging.INFO, logger="speechadapt.server")
    asyncio.run(start_stop("0.0.0.0"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("unauthenticated and listens on 0.0.0.0" in w and "--auth-tokens" in w for w in warnings), warnings
    caplog.clear()
    asyncio.run(start_stop("127.0.0.1"))
    asyncio.run(start_stop("0.0.0.0", auth_tokens=token_file(tmp_path / "t", [f"{TOKENS['ops']} admin"])))
    assert not [r for r in caplog.records if "unauthenticated" in r.getMessage()]
