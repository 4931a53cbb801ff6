"""The `acn-dist` command. Each subcommand calls the same function as the matching `jobs/*.py`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from acn_dist.config import Config, load, with_values
from acn_dist.errors import AcnError


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (jobs/configs/*.yaml); defaults when omitted")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, e.g. --set train.lr=3e-4 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    return load(args.config, args.overrides)


def named_dataset(args: argparse.Namespace, config: Config) -> str | None:
    """The dataset the user named (by --config or --set data.dataset=...), if they named one."""
    named = args.config is not None or any(o.split("=", 1)[0].strip() == "data.dataset" for o in args.overrides)
    return config.data.dataset if named else None


def cmd_config(args: argparse.Namespace) -> int:
    print(config_from_args(args).to_yaml(), end="")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from acn_dist.data.prepare import prepare_and_summarise

    print(prepare_and_summarise(config_from_args(args).data, rebuild=args.rebuild))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from acn_dist.train.driver import train

    config = config_from_args(args)
    if args.address:
        config = with_values(config, {"cluster.address": args.address})
    result = train(config)
    summary = {key: value for key, value in result.items() if key != "history"}
    if result["history"]:
        summary["last"] = result["history"][-1]
    print(json.dumps(summary, indent=1, default=str))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from acn_dist.evaluate.loading import resolve_checkpoint
    from acn_dist.evaluate.run import evaluate

    config = config_from_args(args)
    checkpoint = resolve_checkpoint(args.checkpoint, config)
    metrics = evaluate(checkpoint, args.out or None, overrides=config, log=config.tracking.enabled,
                       figures_on=not args.no_figures, dataset=named_dataset(args, config))
    print(json.dumps(metrics, indent=1, default=str))
    return 0


def cmd_daydream(args: argparse.Namespace) -> int:
    from acn_dist.evaluate.daydream import daydream_chains
    from acn_dist.evaluate.loading import resolve_checkpoint

    config = config_from_args(args)
    path = daydream_chains(resolve_checkpoint(args.checkpoint, config), config, args.out or None)
    print(f"daydream chains: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="acn-dist", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "config": cmd_config,
        "prepare": cmd_prepare,
        "train": cmd_train,
        "evaluate": cmd_evaluate,
        "daydream": cmd_daydream,
    }
    helps = {
        "config": "print the resolved config",
        "prepare": "write a dataset's WebDataset shards and manifest",
        "train": "train an ACN (or VAE) as the config says",
        "evaluate": "probes, compression, figures for a checkpoint or run (--checkpoint or train.run_id)",
        "daydream": "daydream chains from real test images (eval.daydream_chains x eval.daydream_steps)",
    }
    for name, handler in handlers.items():
        sub = commands.add_parser(name, help=helps[name])
        add_config_arguments(sub)
        if name == "prepare":
            sub.add_argument("--rebuild", action="store_true",
                             help="write the dataset again from its source, replacing the folder (damaged shards)")
        if name == "train":
            sub.add_argument("--address", default="", help="Ray address to join (else RAY_ADDRESS, else local)")
        if name in ("evaluate", "daydream"):
            sub.add_argument("--checkpoint", default="", help="checkpoint folder or run folder (else train.run_id)")
            sub.add_argument("--out", default="", help="output folder (default <run>/eval)")
        if name == "evaluate":
            sub.add_argument("--no-figures", action="store_true", help="metrics only")
        sub.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except AcnError as error:  # a refusal naming its culprit: one line, exit code 2
        refuse(f"{error.label}: {error}")
        return 2
    except FileNotFoundError as error:
        refuse(f"error: {error}")
        return 2


def refuse(line: str) -> None:
    """Print a refusal as the last line the user sees: a Ray the run joined is left first, so the
    log lines its workers still forward come before it, not after (a Ray the caller of `main`
    started is theirs, and stays)."""
    if "acn_dist.train.cluster" in sys.modules:
        from acn_dist.train.cluster import release

        release()
    sys.stdout.flush()
    print(" ".join(line.split()), file=sys.stderr, flush=True)  # one line, whatever the message holds


if __name__ == "__main__":
    sys.exit(main())
