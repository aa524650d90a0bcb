"""The .pt artifact: contents, safe loading, clear errors, and the seed's API on top of it."""

from __future__ import annotations

import collections
import json
import warnings
from pathlib import Path

import pytest
import torch

from moe.artifact import FORMAT_VERSION, ArtifactError, data_fingerprint, load_artifact
from moe.experts.fake import FakeForecaster, fake_trio
from moe.model_file import MissingExpertError, load_router
from moe.seed.api import predict_from_model, train_and_save
from moe.training import TrainConfig, WindowConfig

SEED_KEYS = {"gating_state", "expert_keys", "pred_length", "input_length"}


class Payload:
    """A class that only a full unpickler could rebuild."""

    def __init__(self) -> None:
        self.value = 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained on fakes from a small JSONL file (rolling windows)."""
    folder = tmp_path_factory.mktemp("artifact")
    with open(folder / "dados.jsonl", "w") as handle:
        for index in range(8):
            sequence = [10.0 + index + (step % 5) * (1 + index % 3) for step in range(30)]
            handle.write(json.dumps({"sequence": sequence}) + "\n")
    path = folder / "model.pt"
    train_and_save(
        folder / "dados.jsonl", 6, 3, path, experts=fake_trio(), config=TrainConfig(epochs=2)
    )
    return path


def _rewrite(source: Path, target: Path, **changes: object) -> Path:
    raw = torch.load(source, weights_only=True)
    raw.update(changes)
    torch.save(raw, target)
    return target


def test_artifact_holds_the_seed_keys_and_provenance(trained: Path) -> None:
    """Guards the file format: seed keys + version, gate, experts, scaling, metrics, fingerprint."""
    raw = torch.load(trained, weights_only=True)
    assert SEED_KEYS <= set(raw)
    assert raw["format_version"] == FORMAT_VERSION and raw["gate"]["kind"] == "linear"
    assert raw["expert_keys"] == ["moirai", "timemoe", "timesfm"]
    assert (raw["input_length"], raw["pred_length"]) == (6, 3)
    assert [e["cache_key"] for e in raw["experts"]] == [e.cache_key for e in fake_trio()]
    assert raw["cache_keys"] == [e.cache_key for e in fake_trio()]
    assert raw["scaling"] == {"method": "mean_abs"}
    assert len(raw["metrics"]["history"]) == 2 and raw["metrics"]["n_val"] > 0
    assert len(raw["data_fingerprint"]["sha256"]) == 64
    assert {"torch", "python", "numpy"} <= set(raw["library_versions"])
    assert raw["train_config"]["batch_size"] == 8
    # how windows were cut, with the min_context they had (L=6 here: full windows)
    assert raw["train_config"]["windows"] == {**WindowConfig().model_dump(), "min_context": 6}


def test_predict_uses_the_last_points_and_returns_one_row(trained: Path) -> None:
    """Guards predict_from_model: last input_length points in, (1, pred_length) out, == router."""
    series = [float(v) for v in range(20)]
    forecast = predict_from_model(trained, series, 6, experts=fake_trio())
    assert forecast.shape == (1, 3)
    router = load_router(trained, experts=fake_trio())
    expected = router(torch.tensor(series[-6:])[None])
    torch.testing.assert_close(forecast, expected)
    assert torch.equal(
        predict_from_model(trained, [0.0] * 5 + series[-6:], 6, experts=fake_trio()), forecast
    )


def test_predict_verbose_prints_the_choice(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Guards verbose prediction: the two chosen experts and weights are printed."""
    predict_from_model(trained, list(range(10)), 6, verbose=True, experts=fake_trio())
    line = capsys.readouterr().out.strip()
    assert line.startswith("row 0:") and line.count("=") == 2


def test_short_series_is_a_clear_error(trained: Path) -> None:
    """Guards the documented choice: a series shorter than input_length raises, no padding."""
    with pytest.raises(
        ValueError, match="series has 4 points; the model needs at least input_length=6"
    ):
        predict_from_model(trained, [1.0, 2.0, 3.0, 4.0], 6, experts=fake_trio())


def test_input_length_mismatch_is_a_clear_error(trained: Path) -> None:
    """Guards the input_length check: the trained and the requested lengths are both named."""
    with pytest.raises(ArtifactError, match="trained with input_length=6, got input_length=5"):
        predict_from_model(trained, list(range(10)), 5, experts=fake_trio())


def test_missing_expert_is_a_clear_error(trained: Path, tmp_path: Path) -> None:
    """Guards expert resolution: a missing or unbuildable expert is named."""
    with pytest.raises(MissingExpertError, match=r"missing \['timesfm'\]"):
        load_router(trained, experts=fake_trio()[:2])
    raw = torch.load(trained, weights_only=True)
    raw["experts"][0]["name"] = "no_such_expert"
    raw["expert_keys"][0] = "no_such_expert"
    torch.save(raw, tmp_path / "unknown.pt")
    with pytest.raises(MissingExpertError, match="needs expert 'no_such_expert'.*unknown expert"):
        load_router(tmp_path / "unknown.pt")


def test_unknown_format_version_is_refused(trained: Path, tmp_path: Path) -> None:
    """Guards forward compatibility: a newer format is named, not misread."""
    path = _rewrite(trained, tmp_path / "future.pt", format_version=99)
    with pytest.raises(ArtifactError, match="format_version 99; this library reads"):
        load_artifact(path)


def test_missing_keys_are_named(trained: Path, tmp_path: Path) -> None:
    """Guards validation: a file lacking required keys says which."""
    raw = torch.load(trained, weights_only=True)
    del raw["gating_state"], raw["scaling"]
    torch.save(raw, tmp_path / "partial.pt")
    with pytest.raises(ArtifactError, match=r"lacks required keys \['gating_state', 'scaling'\]"):
        load_artifact(tmp_path / "partial.pt")


def test_pickled_object_is_refused(trained: Path, tmp_path: Path) -> None:
    """Guards weights_only loading: a file carrying a pickled object is refused, not executed."""
    path = _rewrite(trained, tmp_path / "evil.pt", metrics={"payload": Payload()})
    with pytest.raises(ArtifactError, match="carries a pickled Python object"):
        load_artifact(path)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "absent.pt")


def test_wrong_weight_shapes_are_refused(trained: Path, tmp_path: Path) -> None:
    """Guards gate rebuilding: weights that do not fit the declared gate are named with the file."""
    raw = torch.load(trained, weights_only=True)
    raw["gating_state"]["linear.weight"] = torch.zeros(3, 7)
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(ArtifactError, match="bad.pt.*gating_state does not fit a linear gate"):
        load_artifact(tmp_path / "bad.pt")


def test_seed_file_loads_as_format_zero(tmp_path: Path) -> None:
    """Guards compatibility: a seed-written file (raw nn.Linear state, no version) predicts."""
    linear = torch.nn.Linear(4, 3)
    torch.save(
        {
            "gating_state": collections.OrderedDict(linear.state_dict()),
            "expert_keys": ["moirai", "timemoe", "timesfm"],
            "pred_length": 2,
            "input_length": 4,
        },
        tmp_path / "seed.pt",
    )
    artifact = load_artifact(tmp_path / "seed.pt")
    assert artifact.format_version == 0 and artifact.scaling == {"method": "none"}
    series = torch.tensor([[3.0, 1.0, 4.0, 1.0]])
    router = load_router(artifact, experts=fake_trio())
    probs = torch.softmax(linear(series), dim=-1)  # the seed's gate on raw values
    output = router.route(series)
    assert set(output.routing.indices[0].tolist()) == set(probs.topk(2).indices[0].tolist())


def test_cache_key_change_warns(trained: Path) -> None:
    """Guards provenance: an expert that differs from the one trained with is reported."""
    experts = fake_trio()
    experts[0] = FakeForecaster("moirai", factor=1.5)
    with pytest.warns(UserWarning, match="'moirai' is 'fake:moirai:factor=1.5"):
        load_router(trained, experts=experts)


class _Respelled(FakeForecaster):
    """The same fake model under a new key spelling; its old spelling is a legacy key."""

    @property
    def cache_key(self) -> str:
        return "new:" + super().cache_key

    @property
    def legacy_cache_keys(self) -> tuple[str, ...]:
        return (super().cache_key,)


def test_an_older_key_spelling_of_the_same_model_does_not_warn(trained: Path) -> None:
    """Guards the cache-key respelling (sha256- -> sha256:): a model file that recorded the
    old spelling loads without a provenance warning, while a different model still warns."""
    experts = fake_trio()
    experts[0] = _Respelled("moirai")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_router(trained, experts=experts)
    experts[0] = FakeForecaster("moirai", factor=1.5)
    with pytest.warns(UserWarning, match="when the gate was trained"):
        load_router(trained, experts=experts)


def test_fingerprint_follows_the_data() -> None:
    """Guards the data fingerprint: same data, same digest; one changed value, another digest."""
    context, target, points = torch.ones(4, 3), torch.ones(4, 2), torch.ones(4, 3, 2)
    first = data_fingerprint(context, target, points, ["a", "b", "c"])
    assert first == data_fingerprint(context.clone(), target, points, ["a", "b", "c"])
    target[0, 0] = 2.0
    assert first["sha256"] != data_fingerprint(context, target, points, ["a", "b", "c"])["sha256"]
