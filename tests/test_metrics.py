"""The training reports read back: per-epoch mean losses from a run's logged windows."""

from __future__ import annotations

import math

import pytest

from acn_dist.train.metrics import epoch_losses


def test_epoch_losses_weigh_windows_by_their_steps_and_assign_them_to_their_last_steps_epoch() -> None:
    # 5 steps per epoch, logged every 2 steps and at the last step: windows of 2, 2, 2, 2, 2 steps.
    history = [{"step": 2, "loss": 10.0}, {"step": 4, "loss": 8.0}, {"step": 6, "loss": 6.0},
               {"step": 8, "loss": 4.0}, {"step": 10, "loss": 2.0}]
    # epoch 0 = steps 1-5: windows ending at 2 and 4 (the window ending at 6 counts for epoch 1).
    assert epoch_losses(history, steps_per_epoch=5) == pytest.approx([9.0, 4.0])


def test_a_step_logged_twice_counts_once_as_last_logged() -> None:
    # A session logged steps 2 and 4, crashed; the resumed one restarted at step 2 and relogged step 4.
    history = [{"step": 2, "loss": 10.0}, {"step": 4, "loss": 99.0}, {"step": 4, "loss": 6.0},
               {"step": 6, "loss": 2.0}, {"step": 9, "loss": 1.0}]
    losses = epoch_losses(history, steps_per_epoch=3)
    # epoch 0: steps 1-3 -> window ending at 2 (2 steps); epoch 1: steps 4-6 -> windows ending at 4, 6
    # (2 steps each); epoch 2: steps 7-9 -> the 3-step window ending at 9.
    assert losses == pytest.approx([10.0, 4.0, 1.0])


def test_windows_without_a_finite_loss_are_left_out_and_bad_epoch_lengths_refused() -> None:
    history = [{"step": 2, "loss": math.nan}, {"step": 4, "loss": 3.0}, {"step": 5, "kl": 1.0}]
    assert epoch_losses(history, steps_per_epoch=10) == pytest.approx([3.0])
    with pytest.raises(ValueError, match="steps_per_epoch"):
        epoch_losses(history, steps_per_epoch=0)
