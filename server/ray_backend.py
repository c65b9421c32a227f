"""Where adaptation jobs run: a Ray cluster, reached through the Ray Jobs API (`JobSubmissionClient`).

With an address (`--ray-address http://HEAD:8265`) the server uses that cluster and never stops it. Without one,
the server owns a local Ray head, started on first need:

    ray start --head --block --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 --temp-dir=SHORT_DIR
              (every port chosen free, so it coexists with other Ray clusters on the machine)

in its own session, with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (Ray on Linux otherwise swaps 127.0.0.1 for the
routable address) and RAY_AUTH_MODE=disabled (Ray 2.60 turns token auth on for a new head when ~/.ray/auth_token
exists; the head only listens on loopback). Its pid, dashboard URL and temp dir are recorded in
STATE_DIR/ray/head.json: `close()` stops exactly that head (SIGTERM to the `ray start --block` process, which
takes its raylet, GCS, dashboard and workers down with it; never `ray stop`, which kills every Ray on the
machine). The head runs in its own session, so a server killed without stopping it (kill -9) leaves it and its
jobs running; the next server with the same state dir adopts it and re-attaches the jobs. A head that dies
under a running server (`head_lost()`) is replaced by a new one at the next submission (`ensure_running()`).

`ray` is only in the `training` extra and is imported lazily: `unavailable()` says what to install otherwise.
All blocking calls run in threads; the methods are coroutines.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TERMINAL_STATUSES = frozenset({"STOPPED", "SUCCEEDED", "FAILED"})
HEAD_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}  # stop at once: nothing to drain (no Serve)
_MAX_TEMP_LEN = 40  # Ray puts Unix sockets under the temp dir; their paths must stay under ~107 bytes


class RayUnavailable(RuntimeError):
    """Ray cannot be used here (not installed, or the head does not start); the message says what to do."""


@dataclass(frozen=True)
class RayJobInfo:
    status: str  # PENDING | RUNNING | STOPPED | SUCCEEDED | FAILED
    message: str = ""
    exit_code: int | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class RayBackend:
    def __init__(self, address: str | None, state_dir: Path, num_cpus: int = 0, start_timeout: float = 90.0):
        self.address = address
        self.state_dir = Path(state_dir)
        self.num_cpus = num_cpus or (os.cpu_count() or 1)
        self.start_timeout = start_timeout
        self._client = None
        self._head: subprocess.Popen | None = None
        self._head_pid: int | None = None
        self._head_url: str | None = None
        self._temp_dir: str | None = None
        self._remove_temp = False
        self._starting: asyncio.Future | None = None
        self._lock = asyncio.Lock()

    @property
    def local(self) -> bool:
        """True when the server owns the Ray head (no address given)."""
        return not self.address

    @property
    def python(self) -> str:
        """The interpreter for job entrypoints: this one on an owned local head, `python` on a remote cluster."""
        return sys.executable if self.local else "python"

    @property
    def dashboard_url(self) -> str | None:
        return getattr(self._client, "_address", None) if self._client is not None else None

    @staticmethod
    def unavailable() -> str | None:
        """Why Ray cannot be used in this installation, or None."""
        if importlib.util.find_spec("ray") is None:
            return ("adaptation jobs need Ray, which is not installed in this server's environment: "
                    "pip install 'speechadapt[training]', or start the server with --ray-address of a Ray cluster "
                    "(with `ray[default]` installed here)")
        return None

    # -- lifecycle

    async def start(self) -> None:
        """Connect (and start the owned head when local). Idempotent; raises RayUnavailable."""
        async with self._lock:
            if self._client is not None:
                return
            reason = self.unavailable()
            if reason:
                raise RayUnavailable(reason)
            if self.local:
                if not self._head_alive():
                    # shielded: a caller cancelled mid-start must not orphan the head (close() waits for it)
                    self._starting = asyncio.ensure_future(asyncio.to_thread(self._adopt_or_start_head))
                    await asyncio.shield(self._starting)
                url = self._head_url
            else:
                url = self.address
            try:
                self._client = await asyncio.to_thread(self._connect, url)
            except Exception as e:
                raise RayUnavailable(f"cannot reach the Ray cluster at {url}: {e}") from e
            log.info("Ray jobs via %s (%s)", url, "owned local head" if self.local else "external cluster")

    def head_lost(self) -> bool:
        """Whether the owned local head this backend started (or adopted) has died since (a crash, a kill)."""
        return self.local and self._client is not None and not (self._head_pid is not None and self._head_alive())

    async def ensure_running(self) -> None:
        """Like `start`, and when the owned head has died since, start a new one (its jobs are gone with it)."""
        if self.head_lost():
            async with self._lock:
                if self.head_lost():  # not replaced meanwhile by another job's call
                    log.warning("the local Ray head (pid %s) is gone: starting a new one", self._head_pid)
                    self._client = None
                    await asyncio.to_thread(self._forget_head)
        await self.start()

    def _head_alive(self) -> bool:
        if self._head is not None and self._head.pid == self._head_pid:
            return self._head.poll() is None  # our child: poll() also reaps it
        return self._head_pid is not None and _alive(self._head_pid)

    def _adopt_or_start_head(self) -> None:
        self._head_url = self._adopt_head() or self._start_head()

    async def close(self) -> None:
        """Stop the owned head (if any); an external cluster is left alone."""
        if self._starting is not None and not self._starting.done():
            with contextlib.suppress(Exception):
                await self._starting
        async with self._lock:
            self._client = None
            if self._head_pid is not None:
                await asyncio.to_thread(self._stop_head)

    @staticmethod
    def _connect(url: str):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(url)

    def _head_file(self) -> Path:
        return self.state_dir / "ray" / "head.json"

    def _recorded_head(self) -> tuple[int, str, str] | None:
        """(pid, dashboard URL, temp dir) of the head this state dir started before, if it still runs."""
        try:
            info = json.loads(self._head_file().read_text())
            pid, url, temp = int(info["pid"]), str(info["dashboard_url"]), str(info["temp_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return (pid, url, temp) if _alive(pid) and f"--temp-dir={temp}" in _cmdline(pid) else None

    def reachable_without_starting(self) -> bool:
        """Whether `start()` would connect without starting a head: an external cluster, or an owned head that
        runs (this backend's, or one an earlier server left running)."""
        return not self.local or self._head_alive() or self._recorded_head() is not None

    def _adopt_head(self) -> str | None:
        """The dashboard URL of a head this state dir started before and that still runs, else None."""
        recorded = self._recorded_head()
        if recorded is None:
            self._head_file().unlink(missing_ok=True)
            return None
        pid, url, temp = recorded
        try:
            self._connect(url)
        except Exception:
            return None
        log.info("adopting the Ray head left running by an earlier server (pid %d, %s)", pid, url)
        self._head_pid, self._temp_dir = pid, temp
        return url

    def _start_head(self) -> str:
        temp = self.state_dir / "ray"
        temp.mkdir(parents=True, exist_ok=True)
        if len(str(temp)) > _MAX_TEMP_LEN:
            temp = Path(tempfile.mkdtemp(prefix="sa-ray-"))
            self._remove_temp = True
        self._temp_dir = str(temp)
        gcs, dash, client, agent_http, agent_grpc, runtime_env, metrics = _free_ports(7)
        ray_cli = Path(sys.executable).with_name("ray")
        cmd = [str(ray_cli)] if ray_cli.is_file() else [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]
        cmd += [
            "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
            "--include-dashboard=true", f"--port={gcs}", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
            "--min-worker-port=0", "--max-worker-port=0", f"--num-cpus={self.num_cpus}", f"--temp-dir={temp}",
            "--disable-usage-stats",
        ]
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
        env.update(HEAD_ENV)
        logs = self.state_dir / "ray" / "head.log"
        logs.parent.mkdir(parents=True, exist_ok=True)
        with open(logs, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        self._head, self._head_pid = proc, proc.pid
        url = f"http://127.0.0.1:{dash}"
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._head = self._head_pid = None
                raise RayUnavailable(f"the local Ray head exited with code {proc.returncode} while starting; see {logs}:\n"
                                     + _tail(logs))
            try:
                self._connect(url)
                break
            except Exception as e:  # not up yet
                last_error = e
                time.sleep(0.5)
        else:
            self._stop_head()
            raise RayUnavailable(f"the local Ray head did not answer at {url} within {self.start_timeout:.0f} s "
                                 f"({last_error}); see {logs}")
        self._head_file().write_text(json.dumps({"pid": proc.pid, "dashboard_url": url, "temp_dir": str(temp)}))
        log.info("started a local Ray head (pid %d, dashboard %s, temp dir %s)", proc.pid, url, temp)
        return url

    def _stop_head(self, timeout: float = 30.0) -> None:
        pid = self._head_pid
        if pid is None:
            return
        log.info("stopping the local Ray head (pid %d)", pid)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not self._wait_exit(pid, timeout):
            log.warning("the local Ray head (pid %d) did not stop in %.0f s; killing it", pid, timeout)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._wait_exit(pid, 5.0)
        self._forget_head()

    def _forget_head(self) -> None:
        """The head is gone: drop what pointed to it (and its temp dir, when this backend made one)."""
        self._head = self._head_pid = self._head_url = None
        self._head_file().unlink(missing_ok=True)
        if self._remove_temp and self._temp_dir:
            import shutil

            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._remove_temp, self._temp_dir = False, None

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        """Whether the head process ended within `timeout` s (reaping it when it is our child)."""
        deadline = time.monotonic() + timeout
        while True:
            if self._head is not None and self._head.pid == pid:
                if self._head.poll() is not None:
                    return True
            elif not _alive(pid):  # adopted from an earlier server: not our child
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)

    # -- jobs

    async def submit(self, submission_id: str, entrypoint: str, env: dict[str, str], timeout: float = 90.0) -> str:
        """Submit a job. A head that has just started may not have its job agent yet ("No available agent to
        submit job, please try again later"): retried until `timeout`."""
        client = await self._ready()
        deadline = time.monotonic() + timeout
        tried = False
        while True:
            try:
                return await asyncio.to_thread(lambda: client.submit_job(
                    entrypoint=entrypoint, submission_id=submission_id, runtime_env={"env_vars": dict(env)}))
            except RuntimeError as e:
                if tried and "already exists" in str(e):  # an earlier try went through after all
                    return submission_id
                if not ("try again" in str(e) or "status code 503" in str(e)) or time.monotonic() > deadline:
                    raise
                log.info("Ray is not ready to take jobs yet (%s); retrying", str(e).strip())
            except OSError:  # requests' ConnectionError: the dashboard is restarting
                if self.local and self._head_pid is not None and not self._head_alive():
                    logs = self.state_dir / "ray" / "head.log"
                    raise RayUnavailable(f"the local Ray head died after starting (often: the machine is overloaded); "
                                         f"see {logs}:\n" + _tail(logs))
                if time.monotonic() > deadline:
                    raise
            tried = True
            await asyncio.sleep(1.0)

    async def info(self, submission_id: str) -> RayJobInfo | None:
        """The job's status, or None when the cluster does not know the submission."""
        client = await self._ready()

        def get():
            try:
                i = client.get_job_info(submission_id)
            except RuntimeError as e:
                if "status code 404" in str(e) or "does not exist" in str(e):
                    return None
                raise
            return RayJobInfo(str(i.status.value if hasattr(i.status, "value") else i.status), i.message or "",
                              getattr(i, "driver_exit_code", None))

        return await asyncio.to_thread(get)

    async def stop_job(self, submission_id: str) -> bool:
        client = await self._ready()

        def stop():
            try:
                return client.stop_job(submission_id)
            except RuntimeError as e:
                if "status code 404" in str(e) or "does not exist" in str(e):
                    return False
                raise

        return await asyncio.to_thread(stop)

    async def logs(self, submission_id: str) -> str:
        client = await self._ready()
        return await asyncio.to_thread(client.get_job_logs, submission_id)

    async def tail(self, submission_id: str) -> AsyncIterator[str]:
        """Chunks of the job's output from its start, as it is written (ends when the job does)."""
        client = await self._ready()
        async for chunk in client.tail_job_logs(submission_id):
            yield chunk

    async def _ready(self):
        if self._client is None:
            await self.start()
        return self._client


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""
