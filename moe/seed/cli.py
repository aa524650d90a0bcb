"""The seed's command line, kept exactly (``python main.py --mode train ...``).

Train::

    python main.py --mode train --jsonl dados.jsonl --input-length 4 --pred-length 2 \\
        --save-path ./moe_model.pt --device cpu [--experts a,b,c]

Predict (prints the ``(1, pred_length)`` forecast as a JSON list of lists)::

    python main.py --mode predict --save-path ./moe_model.pt --series '[1, 2, 3, 4, 5]'

``--experts`` defaults to ``auto``: the seed's foundation experts (moirai, timemoe, timesfm)
when their weights are available locally, otherwise the retrain's offline default pool
(seasonal_naive, autotheta, fracast, stat_ensemble), announced on stderr. Prediction always
uses the experts stored in the model file. Trained experts named in ``--experts``
(``global_mlp``, ``global_trees``) are trained on the file's series as ``moe retrain`` trains
them (``--global-expert`` sets how) and saved under ``experts/`` beside the model file.
Errors go to stderr with exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Literal

__all__ = ["build_parser", "run"]


def build_parser() -> argparse.ArgumentParser:
    """The seed's arguments plus optional training overrides."""
    parser = argparse.ArgumentParser(
        prog="main.py", description="Train or apply a top-2 mixture of forecasting experts."
    )
    parser.add_argument("--mode", choices=("train", "predict"), required=True)
    parser.add_argument("--jsonl", help="train: JSONL file, one {'sequence': [...]} per line")
    parser.add_argument("--input-length", type=int, help="context length (predict: optional check)")
    parser.add_argument("--pred-length", type=int, help="train: forecast horizon")
    parser.add_argument("--save-path", default="./moe_model.pt", help="model file to write/read")
    parser.add_argument("--device", default="cpu", help="torch device for the experts")
    parser.add_argument(
        "--experts",
        default="auto",
        help="train: comma-separated registry names, or 'auto' (foundation experts if "
        "their weights are present, else seasonal_naive,autotheta,fracast,stat_ensemble)",
    )
    parser.add_argument(
        "--series", help="predict: JSON list of numbers; the last input-length are used"
    )
    parser.add_argument("--verbose", action="store_true", help="predict: print the chosen experts")
    tuning = parser.add_argument_group("training overrides (defaults are the seed's)")
    tuning.add_argument("--epochs", type=int)
    tuning.add_argument("--batch-size", type=int)
    tuning.add_argument("--lr", type=float)
    tuning.add_argument("--gate", choices=("linear", "contextual"))
    tuning.add_argument("--seed", type=int)
    tuning.add_argument("--windowing", choices=("seed", "rolling"))
    tuning.add_argument(
        "--min-context",
        type=int,
        help="rolling windows: fewest points before a window's target (shorter histories "
        "NaN-padded; default: the smaller of 36 and --input-length, and for a series too "
        "short for a window with that what it has, at least 8 points and two seasons, as "
        "moe retrain)",
    )
    parser.add_argument(
        "--season-length",
        type=int,
        help="train: seasonal period (default: from the lines' freq, else 12 as in moe retrain)",
    )
    parser.add_argument(
        "--global-expert",
        metavar="JSON",
        help="train: how trained experts in --experts (global_mlp, global_trees) are trained, "
        "as moe retrain's global_expert settings, e.g. '{\"tree_rounds\": 100}'; each is "
        "saved under experts/ beside --save-path",
    )
    parser.add_argument(
        "--gate-fit",
        choices=("validated", "fixed"),
        help="train: 'validated' = the production fit (moe.selection.fit_gate, as moe retrain); "
        "'fixed' = train with the seed's hyperparameters and the overrides. Default: "
        "'fixed' when --epochs/--batch-size/--lr/--gate is given, else 'validated'",
    )
    return parser


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from moe.seed.api import train_and_save
    from moe.training import TrainConfig, WindowConfig

    for flag, value in (
        ("--jsonl", args.jsonl),
        ("--input-length", args.input_length),
        ("--pred-length", args.pred_length),
    ):
        if value is None:
            parser.error(f"--mode train needs {flag}")
    overrides = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "gate": args.gate,
        "seed": args.seed,
    }
    config = TrainConfig(**{key: value for key, value in overrides.items() if value is not None})
    if args.min_context is not None and not 1 <= args.min_context <= args.input_length:
        parser.error(
            f"--min-context must be between 1 and --input-length ({args.input_length}), "
            f"got {args.min_context}"
        )
    window_fields = {"windowing": args.windowing, "min_context": args.min_context}
    windows = WindowConfig(**{k: v for k, v in window_fields.items() if v is not None})
    if args.season_length is not None and args.season_length < 1:
        parser.error(f"--season-length must be >= 1, got {args.season_length}")
    hyper = (args.epochs, args.batch_size, args.lr, args.gate)
    gate_fit: Literal["validated", "fixed"] = args.gate_fit or (
        "fixed" if any(v is not None for v in hyper) else "validated"
    )
    global_expert = None
    if args.global_expert is not None:
        from moe.experts.trained import GlobalExpertConfig

        try:
            settings = json.loads(args.global_expert)
        except json.JSONDecodeError as error:
            parser.error(f"--global-expert is not valid JSON: {error}")
        if not isinstance(settings, dict):
            parser.error("--global-expert must be a JSON object, e.g. '{\"tree_rounds\": 100}'")
        global_expert = GlobalExpertConfig.model_validate(settings)  # a ValueError names a field
    experts = (
        "auto"
        if args.experts == "auto"
        else [name.strip() for name in args.experts.split(",") if name.strip()]
    )
    artifact = train_and_save(
        args.jsonl,
        args.input_length,
        args.pred_length,
        args.save_path,
        args.device,
        experts=experts,
        config=config,
        gate_fit=gate_fit,
        season_length=args.season_length,
        windows=windows,
        global_expert=global_expert,
    )
    final = artifact.metrics["final"] or {"train_loss": float("nan"), "val_loss": None}
    print(
        f"saved {args.save_path}: experts {','.join(artifact.expert_keys)}, gate "
        f"{artifact.gate['kind']}, {artifact.metrics['n_train']} train / "
        f"{artifact.metrics['n_val']} validation windows, final train loss "
        f"{final['train_loss']:.4f}, val loss {final['val_loss']}"
    )
    if "selection" in artifact.metrics:
        print(f"gate fit: chosen on validation: {artifact.metrics['selection']['chosen']}")
    return 0


def _predict(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from moe.artifact import load_artifact
    from moe.seed.api import predict_from_model

    if args.series is None:
        parser.error("--mode predict needs --series '[...]'")
    try:
        series = json.loads(args.series)
    except json.JSONDecodeError as error:
        parser.error(f"--series is not valid JSON: {error}")
    if not isinstance(series, list) or not all(
        isinstance(value, (int, float)) and not isinstance(value, bool) for value in series
    ):
        parser.error("--series must be a JSON list of numbers")
    input_length = args.input_length
    if input_length is None:
        input_length = load_artifact(args.save_path).input_length
    forecast = predict_from_model(args.save_path, series, input_length, args.device, args.verbose)
    print(json.dumps(forecast.tolist()))
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), train or predict; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.mode == "train":
            return _train(args, parser)
        return _predict(args, parser)
    except (ValueError, ImportError, RuntimeError, OSError) as error:
        # ArtifactError, MissingExpertError, ExpertLoadError, MissingExtraError and bad
        # input all land here with a message that names the problem.
        print(f"error: {error}", file=sys.stderr)
        return 1
