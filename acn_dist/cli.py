"""The `acn-dist` command. Each subcommand calls the same function as the matching `jobs/*.py`.

In the order a user meets them: prepare -> train -> runs -> evaluate -> neighbours -> sample /
daydream -> export. Commands that take a run use the latest finished run when none is named.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from acn_dist.config import Config, load, with_values
from acn_dist.errors import AcnError, Stopped


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (jobs/configs/*.yaml); defaults when omitted")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, e.g. --set train.lr=3e-4 (repeatable)",
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", default="", metavar="RUN_ID",
                        help="run id under train.storage_path (see `acn-dist runs`); default: train.run_id, else "
                             "the latest finished run")
    parser.add_argument("--checkpoint", default="", metavar="PATH",
                        help="a checkpoint folder (runs/RUN/checkpoints/step-*) or a run folder, instead of --run")


def config_from_args(args: argparse.Namespace) -> Config:
    return load(args.config, args.overrides)


def named_key(args: argparse.Namespace, key: str) -> bool:
    return any(o.split("=", 1)[0].strip() == key for o in args.overrides)


def named_dataset(args: argparse.Namespace, config: Config) -> str | None:
    """The dataset the user named (by --config or --set data.dataset=...), if they named one."""
    named = args.config is not None or named_key(args, "data.dataset")
    return config.data.dataset if named else None


def say(line: str) -> None:
    """A note about what the command chose, on stderr (stdout stays the command's result)."""
    print(line, file=sys.stderr, flush=True)


def chosen_run(args: argparse.Namespace, config: Config):  # -> acn_dist.use.runs.Chosen
    from acn_dist.use.runs import choose_checkpoint

    chosen = choose_checkpoint(config, args.checkpoint or None, args.run or None)
    say(chosen.line())
    return chosen


def opened_run(args: argparse.Namespace, config: Config):  # -> acn_dist.use.trained.TrainedRun
    from acn_dist.use.trained import open_run

    return open_run(chosen_run(args, config), config, config.data.root if named_key(args, "data.root") else None)


# --- handlers -------------------------------------------------------------------------------

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


def cmd_runs(args: argparse.Namespace) -> int:
    from acn_dist.use.runs import list_runs, runs_table

    config = config_from_args(args)
    infos = list_runs(config.train.storage_path)
    if not infos:
        print(f"no runs under {Path(config.train.storage_path).resolve()} (train.storage_path)")
        return 0
    print(runs_table(infos))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from acn_dist.evaluate.run import evaluate

    config = config_from_args(args)
    checkpoint = chosen_run(args, config).checkpoint
    metrics = evaluate(checkpoint, args.out or None, overrides=config, log=config.tracking.enabled,
                       figures_on=not args.no_figures, dataset=named_dataset(args, config))
    print(json.dumps(metrics, indent=1, default=str))
    return 0


def cmd_daydream(args: argparse.Namespace) -> int:
    from acn_dist.use.sample import daydream_from_test
    from acn_dist.use.trained import output_path

    run = opened_run(args, config_from_args(args))
    print(f"daydream chains: {daydream_from_test(run, output_path(run, args.out, 'eval'))}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from acn_dist.use.export import default_path, describe, export_codes

    run = opened_run(args, config_from_args(args))
    print(describe(export_codes(run, default_path(run, args.out), args.row_group_size)))
    return 0


def cmd_neighbours(args: argparse.Namespace) -> int:
    from acn_dist.use.neighbours import find_neighbours, neighbours_strip, neighbours_table
    from acn_dist.use.trained import parse_query

    run = opened_run(args, config_from_args(args))
    found = find_neighbours(run, parse_query(args.query), args.k, args.resize)
    print(neighbours_table(run, found))
    if args.out:
        print(f"image strip: {neighbours_strip(run, found, args.out)}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from acn_dist.use.sample import sample
    from acn_dist.use.trained import output_path, parse_query

    run = opened_run(args, config_from_args(args))
    out = output_path(run, args.out, "samples")
    queries = [parse_query(text) for text in args.sources]
    for path in sample(run, out, args.count, queries, args.steps, args.seed, args.resize):
        print(path)
    return 0


# --- the parser -----------------------------------------------------------------------------

def no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rebuild", action="store_true",
                        help="write the dataset again from its source, replacing the folder (damaged shards)")


def train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default="", help="Ray address to join (else RAY_ADDRESS, else local)")


def evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--out", default="", help="output folder (default <run>/eval)")
    parser.add_argument("--no-figures", action="store_true", help="metrics only")


def daydream_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--out", default="", help="output folder (default <run>/eval)")


def export_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--out", default="", metavar="FILE.parquet",
                        help="the Parquet file to write (default <run>/export/codes-step-<step>.parquet)")
    parser.add_argument("--row-group-size", type=int, default=65_536, metavar="ROWS",
                        help="rows per Parquet row group (memory stays bounded by one group; default 65536)")


def neighbours_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", metavar="ID_OR_IMAGE",
                        help="a datum id (train 0..N-1, test N..N+M-1) or an image file (PNG at the model's size, "
                             "white on black like the data)")
    add_run_arguments(parser)
    parser.add_argument("--k", type=int, default=None, help="how many neighbours (default: the run's codes.k)")
    parser.add_argument("--out", default="", metavar="STRIP.png",
                        help="also draw the query and its neighbours as an image strip")
    parser.add_argument("--resize", action="store_true", help="scale an image file of another size to the model's")


def sample_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--count", type=int, default=32,
                        help="samples from the unconditional prior, rounded up to rows of 8 (default 32; 0 = none)")
    parser.add_argument("--from", dest="sources", nargs="+", action="extend", default=[], metavar="ID_OR_IMAGE",
                        help="daydream chains from these datum ids or image files, one chain each")
    parser.add_argument("--steps", type=int, default=11, help="daydream steps after the starting image (default 11)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    parser.add_argument("--out", default="", help="output folder (default <run>/samples)")
    parser.add_argument("--resize", action="store_true", help="scale image files of another size to the model's")


@dataclass(frozen=True)
class Command:
    handler: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None]
    summary: str  # one line, in `acn-dist --help`
    description: str  # the subcommand's --help
    example: str


COMMANDS: dict[str, Command] = {
    "config": Command(cmd_config, no_arguments, "print the resolved config",
                      "Print the config that --config and --set resolve to, as YAML.",
                      "acn-dist config --config jobs/configs/fashion_mnist.yaml --set train.lr=3e-4"),
    "prepare": Command(cmd_prepare, prepare_arguments, "write a dataset's WebDataset shards and manifest",
                       "Read a raw dataset (data.source) and write WebDataset shards and manifest.json under "
                       "data.root/data.dataset.",
                       "acn-dist prepare --config jobs/configs/fashion_mnist.yaml"),
    "train": Command(cmd_train, train_arguments, "train an ACN (or VAE) as the config says",
                     "Train as the config says: in this process (train.num_workers=0) or on Ray Train. Running "
                     "again with the same train.run_id resumes the run.",
                     "acn-dist train --config jobs/configs/mnist_digits.yaml --set train.num_workers=2"),
    "runs": Command(cmd_runs, no_arguments, "list the runs under train.storage_path",
                    "List the runs under train.storage_path, newest first: id, dataset, objective, decoder, steps, "
                    "status (finished, running, stopped, empty) and headline measures of `acn-dist evaluate`.",
                    "acn-dist runs --set train.storage_path=runs"),
    "evaluate": Command(cmd_evaluate, evaluate_arguments, "probes, compression and figures of a run",
                        "Linear and k-NN probes of the codes beside pixel baselines, test nats/image and the "
                        "ordered dataset bound, and figures: metrics.json, report.md and PNGs in <run>/eval, "
                        "logged to the run's MLflow run.",
                        "acn-dist evaluate --run fashion-mnist-acn-20260101-120000"),
    "neighbours": Command(cmd_neighbours, neighbours_arguments, "the K nearest training data of a datum or image",
                          "The K nearest training data of a datum id or an image file, by Euclidean distance "
                          "between codes, through the run's code-store search (the checkpoint's code table): "
                          "ids, labels, distances, and optionally an image strip.",
                          "acn-dist neighbours 123 --k 8 --out strip.png\n"
                          "  acn-dist neighbours my_digit.png --resize --run RUN_ID"),
    "sample": Command(cmd_sample, sample_arguments, "samples from the prior, daydreams from ids or images",
                      "Samples from the unconditional prior p(z) (prior_samples.png) and daydream chains from "
                      "chosen datum ids or image files (daydream.png); the decoder's means above its samples.",
                      "acn-dist sample --count 32 --from 0 17 60001 --steps 11 --out samples/"),
    "daydream": Command(cmd_daydream, daydream_arguments, "daydream chains from random test images",
                        "Daydream chains from random test images (eval.daydream_chains x eval.daydream_steps, "
                        "seeded by eval.seed): daydream.png and daydream.npy.",
                        "acn-dist daydream --set eval.daydream_chains=4 --set eval.daydream_steps=16"),
    "export": Command(cmd_export, export_arguments, "every datum's code as Parquet",
                      "Write the code of every datum (train and test) of a run as Parquet: columns id, split, "
                      "label, code (fixed-size list of float32); run id and step in the schema metadata; "
                      "written in row groups. Train codes come from the checkpoint's code table, test codes "
                      "from the encoder.",
                      "acn-dist export --run RUN_ID --out codes.parquet\n"
                      "  python -c \"import pandas; print(pandas.read_parquet('codes.parquet').head())\""),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="acn-dist", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.summary, description=textwrap.fill(command.description, 88),
                                  epilog=f"example:\n  {command.example}",
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        command.arguments(sub)
        add_config_arguments(sub)
        sub.set_defaults(handler=command.handler)
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
    except Stopped as stopped:  # a signal asked; the checkpoint it wrote resumes the run
        refuse(str(stopped))
        return 128 + stopped.signum


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
    sys.exit(main(sys.argv[1:]))
