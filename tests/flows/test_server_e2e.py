"""End to end against a real ``prefect server start``: both user routes, runs, tables, the UI.

Route 1: ``moe serve`` registers the deployments and runs ``weekly-retrain`` triggered
through the API. Route 2: ``prefect deploy --all`` (prefect.yaml) on a process work pool,
with ``prefect worker start`` running ``daily-batch-forecast``. Headless
Chromium (Debian's ``chromium``, CI installs it; ``MOE_CHROMIUM`` names another binary)
checks that the UI lists the deployments. Set ``MOE_SCREENSHOT_DIR`` to keep the screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import DeploymentResponse
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments import run_deployment
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL, temporary_settings

from storage import Store
from storage.sql import query
from tests.flows.conftest import FAST_RETRAIN
from tests.pipeline.conftest import champion_with_bad_actuals, write_series

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SERVE_TIMEZONE = "Europe/Berlin"
N_SERIES, HORIZON = 24, 6
RUN_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT
    env: dict[str, str]  # environment for subprocesses talking to this server
    tmp: Path

    @property
    def api(self) -> str:
        return f"{self.url}/api"


class Background:
    """A subprocess in its own process group, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._handle = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            args,
            cwd=REPO,
            env=env,
            stdout=self._handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # also the flow runs it started
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._handle.close()


def _run(args: list[str], server: Server, timeout: float = 120) -> str:
    done = subprocess.run(
        args, cwd=REPO, env=server.env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


@contextmanager
def running_server(
    tmp: Path, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[Server, Background]]:
    """``prefect server start`` (own PREFECT_HOME, free port), healthy; in-process clients
    point at it. ``extra_env`` reaches the server only (for example its database URL)."""
    url = f"http://127.0.0.1:{_free_port()}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_API_URL": f"{url}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        "PYTHONPATH": str(REPO),
    }
    port = url.rsplit(":", 1)[1]
    process = Background(
        _prefect("server", "start", "--host", "127.0.0.1", "--port", port),
        {**env, **(extra_env or {})},
        tmp / "server.log",
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert process.process.poll() is None, f"server exited:\n{process.tail()}"
            assert time.monotonic() < deadline, f"server not healthy in 180 s:\n{process.tail()}"
            time.sleep(1)
        with temporary_settings(updates={PREFECT_API_URL: f"{url}/api"}):
            yield Server(url=url, env=env, tmp=tmp), process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real Prefect server (SQLite in its own PREFECT_HOME, free port)."""
    with running_server(tmp_path_factory.mktemp("prefect-e2e")) as (server, _):
        yield server


@dataclass
class Served:
    process: Background
    store: Path
    series: Path
    retrain_run: UUID
    pool_create: Background  # `prefect work-pool create`, started early to overlap the run


@pytest.fixture(scope="module")
def served(server: Server) -> Iterator[Served]:
    """``moe serve`` running, with a ``weekly-retrain`` run triggered through the API."""
    moe = Path(sys.executable).with_name("moe")
    command = [str(moe)] if moe.exists() else [sys.executable, "-m", "cli"]
    store = server.tmp / "store"
    # Poll every 2 s (default 10 s) so the triggered run starts promptly.
    env = {**server.env, "MOE_TIMEZONE": SERVE_TIMEZONE, "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    process = Background([*command, "--store", str(store), "serve"], env, server.tmp / "serve.log")
    pool_create = Background(
        _prefect("work-pool", "create", "moe-process", "--type", "process"),
        server.env,
        server.tmp / "pool.log",
    )
    try:
        deadline = time.monotonic() + 120
        while not _deployments_exist(
            "retrain/weekly-retrain", "batch-forecast/daily-batch-forecast"
        ):
            assert process.process.poll() is None, f"moe serve exited:\n{process.tail()}"
            assert time.monotonic() < deadline, f"no deployments after 120 s:\n{process.tail()}"
            time.sleep(1)
        series = write_series(server.tmp / "series.jsonl", n_series=N_SERIES, length=60)
        parameters: dict[str, object] = {
            "config": {**FAST_RETRAIN, "jsonl_paths": [str(series)]},
            "store": str(store),
        }
        retrain_run = _trigger("retrain/weekly-retrain", parameters)
        yield Served(process, store, series, retrain_run, pool_create)
    finally:
        process.stop()
        pool_create.stop()


def _deployments_exist(*names: str) -> bool:
    with get_client(sync_client=True) as client:
        try:
            for name in names:
                client.read_deployment_by_name(name)
        except Exception:
            return False
    return True


def _deployment(name: str) -> DeploymentResponse:
    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def _wait_for(flow_run_id: UUID, log: Background) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(flow_run_id).state
            if state is not None and state.is_final():
                break
            assert time.monotonic() < deadline, f"run not finished: {state}\n{log.tail()}"
            time.sleep(2)
    assert state.is_completed(), f"run ended {state.name}: {state.message}\n{log.tail()}"


def _schedules(deployment: DeploymentResponse) -> list[tuple[str, str | None, bool]]:
    schedules = [s for s in deployment.schedules if isinstance(s.schedule, CronSchedule)]
    assert len(schedules) == len(deployment.schedules), deployment.schedules
    return [(s.schedule.cron, s.schedule.timezone, s.active) for s in schedules]  # type: ignore[union-attr]


def _trigger(name: str, parameters: dict[str, object]) -> UUID:
    """Create a flow run of deployment ``name`` through the API (not waiting for it)."""
    flow_run = run_deployment(name, parameters=parameters, timeout=0)
    assert isinstance(flow_run, FlowRun)
    return flow_run.id


def _assert_png(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert len(data) > 20_000, f"{path} is only {len(data)} bytes (blank page?)"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def _chromium(args: list[str], profile: Path, output: Path) -> subprocess.Popen[bytes]:
    names = [os.environ.get("MOE_CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"]
    found = [path for path in map(shutil.which, filter(None, names)) if path]
    assert found, "headless Chromium missing: apt-get install -y chromium (or set MOE_CHROMIUM)"
    binary = found[0]
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1600,900",
        # The UI is a single-page app: give its scripts virtual time to fetch and render.
        "--virtual-time-budget=15000",
    ]  # fmt: skip
    handle = open(output, "wb")  # noqa: SIM115 - the child owns it; closed on exit
    return subprocess.Popen([binary, *flags, *args], stdout=handle, stderr=subprocess.DEVNULL)


def test_ui_lists_deployments(server: Server, served: Served) -> None:
    """The Prefect UI (headless Chromium) renders the deployments page with both schedules."""
    page = f"{server.url}/deployments"
    dom_file, shot = server.tmp / "deployments.html", server.tmp / "deployments.png"
    dom = _chromium(["--dump-dom", page], server.tmp / "profile-dom", dom_file)
    picture = _chromium(
        [f"--screenshot={shot}", page], server.tmp / "profile-shot", Path(os.devnull)
    )
    assert dom.wait(timeout=120) == 0 and picture.wait(timeout=120) == 0
    rendered = dom_file.read_text(errors="replace")
    for name in ("weekly-retrain", "daily-batch-forecast", "daily-evaluate"):
        assert name in rendered, f"{name} not in the rendered deployments page"
    assert _assert_png(shot) == (1600, 900)
    if keep := os.environ.get("MOE_SCREENSHOT_DIR"):
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "prefect-ui-deployments.png")


def test_moe_serve_schedules_and_retrain_run(served: Served) -> None:
    """``moe serve``: cron schedules in MOE_TIMEZONE, one retrain at a time, a run via the API
    that promotes a champion and fills the forecasts table; bad parameters are refused."""
    retrain = _deployment("retrain/weekly-retrain")
    assert _schedules(retrain) == [("0 3 * * 1", SERVE_TIMEZONE, True)]
    assert retrain.global_concurrency_limit is not None
    assert retrain.global_concurrency_limit.limit == 1
    forecast = _deployment("batch-forecast/daily-batch-forecast")
    assert _schedules(forecast) == [("0 5 * * *", SERVE_TIMEZONE, True)]
    with pytest.raises(PrefectHTTPStatusError, match="config.input_length"):
        _trigger("retrain/weekly-retrain", {"config": {"input_length": 0}})
    # Cross-field rules are in the parameter schema too: refused before a run exists.
    with pytest.raises(PrefectHTTPStatusError, match="config.experts"):
        _trigger("retrain/weekly-retrain", {"config": {"experts": ["autoets", "autoets"]}})
    with pytest.raises(PrefectHTTPStatusError, match="config.backtest_windows"):
        _trigger(
            "retrain/weekly-retrain",
            {"config": {"backtest_windows": 3, "max_windows_per_series": 3}},
        )
    _wait_for(served.retrain_run, served.process)
    store = Store.open(served.store)
    champions = query(store, "SELECT count(*) FROM model_registry WHERE status = 'champion'")
    assert champions.column(0)[0].as_py() == 1
    rows = query(store, "SELECT count(*) FROM forecasts").column(0)[0].as_py()
    assert rows == N_SERIES * HORIZON


def test_prefect_yaml_deploy_and_process_worker(server: Server, served: Served) -> None:
    """prefect.yaml deploys on a process pool (UTC schedules, concurrency 1) and a
    ``prefect worker`` runs daily-batch-forecast into the forecasts table, with the project
    location taken from the worker's MOE_PROJECT_DIR, not the deploying shell's."""
    _wait_for(served.retrain_run, served.process)  # the batch forecast needs a champion
    served.process.stop()  # the served deployments are replaced by prefect.yaml's
    assert served.pool_create.process.wait(timeout=120) == 0, served.pool_create.tail()
    worker_env = {**server.env, "MOE_PROJECT_DIR": str(REPO), "PREFECT_WORKER_QUERY_SECONDS": "2"}
    worker = Background(
        _prefect("worker", "start", "--pool", "moe-process"), worker_env, server.tmp / "worker.log"
    )
    try:
        # The deploying shell's MOE_PROJECT_DIR is wrong on purpose: the worker's must win.
        deploying = Server(server.url, {**server.env, "MOE_PROJECT_DIR": "/nowhere"}, server.tmp)
        _run(_prefect("--no-prompt", "deploy", "--all"), deploying, timeout=180)
        for name, cron in [
            ("retrain/weekly-retrain", "0 3 * * 1"),
            ("batch-forecast/daily-batch-forecast", "0 5 * * *"),
            ("evaluate/daily-evaluate", "0 4 * * *"),
        ]:
            deployment = _deployment(name)
            assert deployment.work_pool_name == "moe-process", name
            assert _schedules(deployment) == [(cron, "UTC", True)], name
            assert deployment.pull_steps == [{"flows.pull.set_project_dir": {}}], name
        limit = _deployment("retrain/weekly-retrain").global_concurrency_limit
        assert limit is not None and limit.limit == 1
        flow_run = _trigger(
            "batch-forecast/daily-batch-forecast",
            {"config": {"run_id": "via-worker"}, "store": str(served.store)},
        )
        _wait_for(flow_run, worker)
    finally:
        worker.stop()
    rows = query(
        Store.open(served.store), "SELECT count(*) FROM forecasts WHERE run_id = $1", ["via-worker"]
    )
    assert rows.column(0)[0].as_py() == N_SERIES * HORIZON


class _WebhookReceiver:
    """A local HTTP endpoint that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        received: list[dict[str, object]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                length = int(self.headers.get("content-length") or 0)
                received.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.received = received
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/hook"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()


def test_alert_reaches_a_webhook_through_an_automation(server: Server) -> None:
    """Guards notifications: bad actuals -> moe.alert.realised-error -> automation -> webhook."""
    receiver = _WebhookReceiver()
    try:
        store = server.tmp / "alert-store"
        champion_with_bad_actuals(store, server.tmp)
        moe = [sys.executable, "-m", "cli"]
        _run([*moe, "alerts", "webhook", receiver.url], server)
        _run([*moe, "alerts", "webhook", receiver.url], server)  # a rerun adds no automation
        _run([*moe, "--store", str(store), "evaluate"], server, timeout=RUN_TIMEOUT_S)
        deadline = time.monotonic() + 120
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(5)  # a second automation would have posted by now
        subjects = [call.get("subject") for call in receiver.received]
        assert subjects == ["moe.alert.realised-error"], receiver.received
        body = str(receiver.received[0].get("body"))
        assert "realised MAPE above 8%" in body and "r3" in body
    finally:
        receiver.close()
