"""`moe api` as a user starts it: a real server process over a real store, an HTTP client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from storage import Store
from storage.registry import champion
from storage.schemas import QUANTILE_COLUMNS
from tests.pipeline.conftest import champion_with_bad_actuals

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-token-123"
PRED_LENGTH = 6  # of champion_with_bad_actuals


@dataclass(frozen=True)
class Service:
    url: str
    series: dict[str, list[float]]  # what the stored forecasts were made from
    auth: dict[str, str]
    root: Path  # the store


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_api(root: Path) -> tuple[subprocess.Popen[str], str]:
    """`moe --store ROOT api --port P` with the bearer token; returns once /health answers."""
    port = _free_port()
    env = {**os.environ, "MOE_API_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "cli", "--store", str(root), "api"]
    process = subprocess.Popen(
        [*command, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            output = process.stdout.read() if process.stdout else ""
            pytest.fail(f"moe api did not start (rc {process.poll()}):\n{output}")
        time.sleep(0.5)


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`moe --store S api --port P` with a bearer token, started and stopped like a user would."""
    root = tmp_path_factory.mktemp("api") / "store"
    series = champion_with_bad_actuals(root, tmp_path_factory.mktemp("data"))
    process, url = _start_api(root)
    try:
        yield Service(url, series, {"Authorization": f"Bearer {TOKEN}"}, root)
    finally:
        _stop(process)


def _post(service: Service, body: object, **kwargs: object) -> httpx.Response:
    return httpx.post(
        f"{service.url}/v1/forecast", json=body, headers=service.auth, timeout=60, **kwargs
    )


def test_health_needs_no_token_and_names_the_champion(service: Service) -> None:
    """Guards liveness checks: /health answers without auth and says which model serves."""
    body = httpx.get(f"{service.url}/health").json()
    models = httpx.get(f"{service.url}/v1/models", headers=service.auth).json()
    champions = [m["model_version"] for m in models if m["status"] == "champion"]
    assert body["status"] == "ok" and body["champion"] == champions[0]


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic dGVzdA==", f"Bearer {TOKEN}x"])
def test_every_data_route_needs_the_token(service: Service, header: str | None) -> None:
    """Guards the bearer token: no, wrong or non-bearer credentials get 401 everywhere."""
    headers = {} if header is None else {"Authorization": header}
    body = {"series": [{"values": [1.0, 2.0, 3.0]}]}
    responses = [
        httpx.post(f"{service.url}/v1/forecast", json=body, headers=headers),
        httpx.get(f"{service.url}/v1/models", headers=headers),
        httpx.get(f"{service.url}/v1/monitor", headers=headers),
        httpx.get(f"{service.url}/v1/series/s000/forecast", headers=headers),
    ]
    assert [r.status_code for r in responses] == [401] * 4
    assert responses[0].headers["www-authenticate"] == "Bearer"


def test_forecast_over_http_equals_the_stored_batch_forecast(service: Service) -> None:
    """Guards one forecasting path: the same series gives the same numbers as `moe forecast`."""
    ids = ["s000", "s001", "s005"]
    body = {"series": [{"series_id": i, "values": service.series[i]} for i in ids]}
    response = _post(service, body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["pred_length"] == PRED_LENGTH and len(result["forecasts"]) == 3
    for series_id, got in zip(ids, result["forecasts"], strict=True):
        stored = httpx.get(
            f"{service.url}/v1/series/{series_id}/forecast", headers=service.auth
        ).json()
        assert got["series_id"] == series_id
        assert got["point"] == pytest.approx(stored["point"], rel=1e-5)
        assert [e["name"] for e in got["experts"]] == [e["name"] for e in stored["experts"]]
        weights = [e["weight"] for e in got["experts"]]
        assert weights == pytest.approx([e["weight"] for e in stored["experts"]], rel=1e-6)
        assert set(got["quantiles"]) == set(QUANTILE_COLUMNS)
        assert all(len(v) == PRED_LENGTH for v in got["quantiles"].values())
        names = [e["name"] for e in got["experts"]]
        assert len(set(names)) == 2 and sum(e["weight"] for e in got["experts"]) == pytest.approx(1)


def test_unstored_series_with_dates_gets_step_timestamps(service: Service) -> None:
    """Guards request-only series: missing values, default ids and timestamps from freq."""
    body = {
        "series": [
            {"values": [5.0, None, 7.0, 8.0] * 10, "start": "2024-01-01", "freq": "MS"},
            {"values": [100.0, 120.0, 90.0]},
        ]
    }
    result = _post(service, body).json()
    first, second = result["forecasts"]
    assert (first["series_id"], second["series_id"]) == ("0", "1")
    assert first["timestamps"][0].startswith("2027-05-01") and len(first["timestamps"]) == 6
    assert second["timestamps"] is None
    assert all(p is not None for p in first["point"] + second["point"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"series": []}, ["body", "series"]),
        ({"series": [{"values": []}]}, ["body", "series", 0, "values"]),
        ({"series": [{"values": [None, None]}]}, ["body", "series", 0, "values"]),
        ({"series": [{"values": [1.0, "x"]}]}, ["body", "series", 0, "values", 1]),
        ({"series": [{"values": [1.0], "freq": "fortnightly"}]}, ["body", "series", 0, "freq"]),
        ({"series": [{"values": [1.0], "extra": 1}]}, ["body", "series", 0, "extra"]),
        (
            {"series": [{"series_id": "a", "values": [1.0]}, {"series_id": "a", "values": [2.0]}]},
            ["body"],
        ),
        ({"series": [{"values": [1.0]}], "model_version": "x'; DROP"}, ["body", "model_version"]),
    ],
)
def test_bad_bodies_get_422_naming_the_field(service: Service, body: object, field: list) -> None:
    """Guards structured errors: every bad input is a 422 whose location names the field."""
    response = _post(service, body)
    assert response.status_code == 422
    assert field in [error["loc"][: len(field)] for error in response.json()["detail"]]


def test_non_finite_values_are_refused(service: Service) -> None:
    """Guards NaN/Infinity smuggled as JSON literals (Python's parser accepts them)."""
    raw = '{"series": [{"values": [1.0, NaN, Infinity]}]}'
    response = httpx.post(
        f"{service.url}/v1/forecast",
        content=raw,
        headers={**service.auth, "content-type": "application/json"},
    )
    assert response.status_code == 422 and "finite" in response.text


def test_oversized_bodies_get_413(service: Service) -> None:
    """Guards memory: a body above the limit is refused before it is parsed."""
    huge = '{"series": [{"values": [' + ",".join(["1.0"] * 4_500_000) + "]}]}"
    response = httpx.post(
        f"{service.url}/v1/forecast",
        content=huge,
        headers={**service.auth, "content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 413


def test_unknown_model_version_and_series_are_404(service: Service) -> None:
    """Guards lookups: a named version or series that does not exist says so."""
    missing_model = _post(service, {"series": [{"values": [1.0]}], "model_version": "v-nope"})
    assert missing_model.status_code == 404 and "v-nope" in missing_model.text
    missing_series = httpx.get(f"{service.url}/v1/series/nope/forecast", headers=service.auth)
    assert missing_series.status_code == 404 and "not in the store" in missing_series.text


def test_monitor_reports_runs_and_the_alert(service: Service) -> None:
    """Guards monitoring: realised error per run and the MAPE alert after bad actuals."""
    body = httpx.get(f"{service.url}/v1/monitor", headers=service.auth).json()
    assert [run["run_id"] for run in body["runs"]] == ["r1", "r2", "r3"]
    assert all(run["mape"] > 8.0 and run["n_points"] == 12 * PRED_LENGTH for run in body["runs"])
    assert body["alert"] and "r3" in body["alert"] and body["note"] is None


def test_concurrent_requests_share_model_calls(service: Service) -> None:
    """Guards batching: concurrent single-series requests are served by fewer model calls."""
    before = httpx.get(f"{service.url}/health").json()["batching"]
    body = {"series": [{"values": service.series["s002"]}]}
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda _: _post(service, body), range(48)))
    assert all(r.status_code == 200 for r in responses)
    first = responses[0].json()["forecasts"][0]["point"]
    for response in responses:  # batch company changes a row's forecast by float32 rounding only
        assert response.json()["forecasts"][0]["point"] == pytest.approx(first, rel=1e-6)
    after = httpx.get(f"{service.url}/health").json()["batching"]
    requests = after["requests"] - before["requests"]
    calls = after["calls"] - before["calls"]
    assert requests == 48 and calls < requests


def test_a_tampered_champion_is_never_served(service: Service) -> None:
    """Guards artifact verification at use: a changed model file gets 503, not forecasts."""
    path = Path(champion(Store.open_existing(service.root)).artifact_path)
    original = path.read_bytes()
    path.write_bytes(original + b"tampered")
    process, url = _start_api(service.root)
    try:
        body = {"series": [{"values": [1.0, 2.0, 3.0]}]}
        response = httpx.post(f"{url}/v1/forecast", json=body, headers=service.auth, timeout=60)
        assert response.status_code == 503 and "sha256" in response.text, response.text
    finally:
        _stop(process)
        path.write_bytes(original)
