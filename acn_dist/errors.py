"""The project's own error types: deterministic refusals, each naming the file, key or value at
fault and what to do.

They share one base, `AcnError`, so that every entry point treats them alike: the command line
prints the message on one line and exits with code 2, and distributed training never retries
them (retrying cannot fix a bad config or a corrupt shard); only real faults (a killed process, a
lost node) are retried.
"""

from __future__ import annotations

import signal


class AcnError(Exception):
    """A refusal that names its culprit. Deterministic: running again changes nothing."""

    label = "error"  # how the command line introduces the message

    def __reduce__(self):  # picklable across Ray processes with the message intact
        return (type(self), self.args)


class ConfigError(AcnError, ValueError):
    """A config key or value is wrong; the message names the key and what is allowed."""

    label = "config error"


class DataError(AcnError, ValueError):
    """Shards or manifest are wrong; the message names the file (and sample key) at fault."""


class SourceError(AcnError, ValueError):
    """The raw data cannot be read; the message names the file and what to do."""


class StoreError(AcnError, ValueError):
    """A code-store call was refused; the table is unchanged."""


class RunError(AcnError, ValueError):
    """The run folder refuses the start: another owner holds it, or it holds another run."""


class TrackingError(AcnError, RuntimeError):
    """The MLflow store could not be used and `tracking.on_error=stop`, or its location is unsafe."""


class ClusterError(AcnError, RuntimeError):
    """Ray could not be reached or cannot host the run as configured."""


class EvaluationError(AcnError, ValueError):
    """Nothing to evaluate where the user pointed, or the data does not fit the checkpoint."""


class ProbeError(AcnError, ValueError):
    """The probe cannot run on these labels."""


class NonFiniteError(AcnError, FloatingPointError):
    """A step produced NaN/Inf codes or loss; nothing from it entered the store or the weights."""


class Stopped(Exception):
    """Training stopped because a signal asked it to, after writing a checkpoint: not an error of
    the input (the command line exits with 128 + the signal's number, as a shell does)."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        super().__init__(signum, step, checkpoint)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    def __str__(self) -> str:
        where = f"checkpoint {self.checkpoint}" if self.checkpoint else "no checkpoint written (not rank 0)"
        return (f"stopped by {signal.Signals(self.signum).name} at step {self.step}; {where}: "
                f"run the same command again to resume")
