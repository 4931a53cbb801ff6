"""Local (single-process) training: Algorithm 1 end to end on real data, checkpoints, resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from acn_dist.codes.client import LocalClient
from acn_dist.codes.store import CodeStore
from acn_dist.config import Config, load
from acn_dist.data.reader import ShardLoader
from acn_dist.data.shards import read_manifest
from acn_dist.evaluate.loading import load_trained
from acn_dist.model.acn import ACN, build_model
from acn_dist.runs.checkpoints import (
    latest_checkpoint,
    list_checkpoints,
    rng_state,
    save_checkpoint,
)
from acn_dist.train.driver import train_local
from acn_dist.train.lookup import ExactLookup
from acn_dist.train.loop import image_shape_chw
from acn_dist.train.step import learning_rate, train_step


def digits_config(data_root: Path, runs: Path, run_id: str, *overrides: str) -> Config:
    return load("jobs/configs/sklearn_digits.yaml", [
        f"data.root={data_root}", f"train.storage_path={runs}", f"train.run_id={run_id}",
        "data.loader_workers=0", "train.log_every=1", *overrides,
    ])


@pytest.mark.parametrize("objective", ["acn", "vae"])
def test_local_training_lowers_the_loss(sklearn_digits: Path, tmp_path: Path, objective: str) -> None:
    config = digits_config(sklearn_digits.parent, tmp_path, objective, f"model.objective={objective}",
                           "train.epochs=6")
    result = train_local(config)
    losses = [row["loss"] for row in result["history"]]
    assert len(losses) == result["step"] >= 100
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    assert last < 0.8 * first, (first, last)
    assert all(np.isfinite(losses))
    # the metrics file holds the same history
    lines = (tmp_path / objective / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(losses)


def test_every_train_row_is_written_after_one_epoch(sklearn_digits: Path, tmp_path: Path) -> None:
    config = digits_config(sklearn_digits.parent, tmp_path, "epoch", "train.epochs=1")
    result = train_local(config)
    codes = Path(result["checkpoint"]) / "codes"
    row_step = np.load(codes / "row_step.npy")
    size = read_manifest(sklearn_digits)["splits"]["train"]["count"]
    assert row_step.shape == (size,)
    assert np.all(row_step >= 0), f"{np.sum(row_step < 0)} rows never written"
    table = np.load(codes / "table.npy")
    assert np.isfinite(table).all()


def test_checkpoint_round_trip_gives_the_same_loss(sklearn_digits: Path, tmp_path: Path) -> None:
    config = digits_config(sklearn_digits.parent, tmp_path, "roundtrip")
    manifest = read_manifest(sklearn_digits)
    acn = build_model(config, image_shape_chw(manifest))
    optimizer = torch.optim.Adam(acn.parameters(), lr=1e-3)
    size = manifest["splits"]["train"]["count"]
    store = LocalClient(CodeStore(size, config.model.code_size, k=5))
    loader = ShardLoader(sklearn_digits, "train", 64, workers=0, binarization="static")
    batches = list(loader.epoch(0))
    for step, (ids, x, _) in enumerate(batches[:5]):
        train_step(acn, acn, optimizer, ExactLookup(store), ids, x, step)
    state = {"model": acn.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state()}
    meta = {"step": 5, "epoch": 0, "batch_in_epoch": 5, "config": config.to_dict(), "image_shape": [1, 8, 8]}
    checkpoint = save_checkpoint(tmp_path / "roundtrip", state, meta, store)
    trained = load_trained(checkpoint)
    reloaded, reloaded_config = trained.acn, trained.config
    assert reloaded_config.to_dict() == config.to_dict()

    ids, x, _ = batches[6]
    neighbour = torch.from_numpy(store.store.neighbours(ids.numpy()).neighbour_codes)
    acn.eval()

    def loss_of(model) -> torch.Tensor:
        with torch.no_grad():
            return model.losses(x, model.posterior(x), neighbour, torch.Generator().manual_seed(3)).total

    torch.testing.assert_close(loss_of(reloaded), loss_of(acn))
    table = np.load(checkpoint / "codes" / "table.npy")
    np.testing.assert_array_equal(table, store.store.table())


def test_running_again_with_the_same_run_id_resumes(sklearn_digits: Path, tmp_path: Path, capsys) -> None:
    first = train_local(digits_config(sklearn_digits.parent, tmp_path, "resume", "train.max_steps=10",
                                      "train.checkpoint_every=5", "train.epochs=3"))
    assert first["step"] == 10
    table_at_10 = np.load(latest_checkpoint(tmp_path / "resume") / "codes" / "table.npy")
    capsys.readouterr()
    second = train_local(digits_config(sklearn_digits.parent, tmp_path, "resume", "train.max_steps=30",
                                       "train.checkpoint_every=5", "train.epochs=3"))
    assert "resumed from" in capsys.readouterr().out
    assert second["step"] == 30
    assert [row["step"] for row in second["history"]] == list(range(11, 31))
    assert [p.name for p in list_checkpoints(tmp_path / "resume")] == ["step-000000025", "step-000000030"]
    # the resumed run started from the checkpointed table: rows written before step 10 and not
    # since hold the checkpoint's values (a fresh table would hold the N(0, 1) initial codes)
    codes = latest_checkpoint(tmp_path / "resume") / "codes"
    final, row_step = np.load(codes / "table.npy"), np.load(codes / "row_step.npy")
    kept = (row_step >= 0) & (row_step < 10)
    assert kept.sum() > 0
    np.testing.assert_array_equal(final[kept], table_at_10[kept])


def test_a_fresh_run_starts_from_codes_of_the_asked_spread_a_resumed_one_as_it_was(
        sklearn_digits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    initialise = ACN.initialise_codes
    monkeypatch.setattr(ACN, "initialise_codes", lambda acn, x, std: (calls.append(std), initialise(acn, x, std)))
    settings = ["model.objective=vae", "model.init_code_std=1.5", "train.checkpoint_every=2", "train.epochs=2"]
    fresh = train_local(digits_config(sklearn_digits.parent, tmp_path, "init", "train.max_steps=2", *settings))
    # the VAE's KL is 0.5 ||c||^2: codes centred with std 1.5 on the first batch give 0.5 x 16 x 1.5^2
    first_kl = fresh["history"][0]["kl"]
    assert first_kl == pytest.approx(0.5 * 16 * 1.5**2, rel=0.05), first_kl
    assert calls == [1.5]
    resumed = train_local(digits_config(sklearn_digits.parent, tmp_path, "init", "train.max_steps=4", *settings))
    assert resumed["step"] == 4 and calls == [1.5]  # the checkpoint's weights, not scaled again
    plain = train_local(digits_config(sklearn_digits.parent, tmp_path, "plain", "train.max_steps=1",
                                      "model.objective=vae", "model.init_code_std=0"))
    assert plain["history"][0]["kl"] < 0.05 * first_kl  # PyTorch's init: codes close together


def planted_store(size: int = 400, dim: int = 4) -> tuple[CodeStore, np.ndarray]:
    """A table of N(0, 1) codes; data 7 and 300 will get codes far from all of them, close together."""
    store = CodeStore(size, dim, k=1, seed=0)
    return store, np.array([7, 300])


def test_exact_lookup_finds_a_neighbour_written_in_the_same_step_never_itself() -> None:
    store, ids = planted_store()
    lookup = ExactLookup(LocalClient(store))
    fresh = torch.tensor([[50.0, 50, 50, 50], [50.1, 50, 50, 50]])  # both far from every stored code
    lookup.begin_batch(torch.from_numpy(ids), None, epoch=3)
    neighbour = lookup.ask_neighbour_codes(torch.from_numpy(ids), fresh, step=12)()
    # each datum's nearest is the other one, written in this very step; never itself
    torch.testing.assert_close(neighbour, fresh.flip(0))
    np.testing.assert_array_equal(store.table()[ids], fresh.numpy())
    assert store.stats()["rows_ever_written"] == 2 and store.stats()["same_batch_share"] == 1.0
    # excluding the batch, the planted pair cannot see each other: their neighbours are old codes
    excluded = ExactLookup(LocalClient(store), exclude_batch=True)
    far = excluded.ask_neighbour_codes(torch.from_numpy(ids), fresh, step=13)()
    assert torch.all(far.abs() < 10)


def test_prefetch_lookup_is_exact_while_warming_then_uses_stored_codes() -> None:
    from acn_dist.train.lookup import PrefetchLookup

    store, ids = planted_store()
    lookup = PrefetchLookup(LocalClient(store), warm_epochs=1)
    fresh = torch.tensor([[50.0, 50, 50, 50], [50.1, 50, 50, 50]])
    lookup.begin_batch(torch.from_numpy(ids), None, epoch=0)  # warm start: exact
    torch.testing.assert_close(lookup.ask_neighbour_codes(torch.from_numpy(ids), fresh, step=1)(), fresh.flip(0))
    moved = torch.tensor([[-50.0, 0, 0, 0], [-50.1, 0, 0, 0]])
    lookup.begin_batch(torch.from_numpy(ids), None, epoch=1)  # asks with the stored codes (at +50)...
    neighbour = lookup.ask_neighbour_codes(torch.from_numpy(ids), moved, step=2)()
    torch.testing.assert_close(neighbour, fresh.flip(0))  # ...so it finds the pair as they were
    np.testing.assert_array_equal(store.table()[ids], moved.numpy())  # and still writes the new codes


def test_kl_weight_and_context_dropout_are_logged_following_their_schedules(sklearn_digits: Path,
                                                                            tmp_path: Path) -> None:
    result = train_local(digits_config(sklearn_digits.parent, tmp_path, "warm", "train.max_steps=12",
                                       "train.kl_warmup_steps=8", "model.decoder=pixelcnn",
                                       "train.context_dropout=0.5", "train.context_dropout_steps=4"))
    assert [row["kl_weight"] for row in result["history"]] == [min(1.0, step / 8) for step in range(12)]
    assert [row["context_dropout"] for row in result["history"]] == pytest.approx(
        [0.5 * max(0.0, 1 - step / 4) for step in range(12)])


def test_auxiliary_reconstruction_is_logged_beside_the_code_length_and_kept_in_checkpoints(
        sklearn_digits: Path, tmp_path: Path) -> None:
    result = train_local(digits_config(sklearn_digits.parent, tmp_path, "aux", "train.max_steps=6",
                                       "model.decoder=pixelcnn", "model.pixelcnn_conditioning=spatial",
                                       "model.pixelcnn_auxiliary=0.5"))
    rows = result["history"]
    assert len(rows) == 6 and all(np.isfinite(row["auxiliary"]) and row["auxiliary"] > 0 for row in rows)
    # the logged loss is the code length alone: KL + reconstruction, never the auxiliary term
    assert [row["loss"] for row in rows] == pytest.approx([row["kl"] + row["reconstruction"] for row in rows])
    trained = load_trained(Path(result["checkpoint"]))
    assert trained.acn.decoder.auxiliary_head is not None and trained.config.model.pixelcnn_auxiliary == 0.5


def test_cosine_learning_rate_falls_from_lr_to_lr_min_over_the_planned_steps() -> None:
    settings = load(None, ["train.lr=0.002", "train.lr_schedule=cosine", "train.lr_min=0.0002"]).train
    rates = [learning_rate(step, 8, settings) for step in range(10)]
    assert rates[0] == pytest.approx(0.002) and rates[4] == pytest.approx(0.0011) and rates[8] == pytest.approx(0.0002)
    assert all(a > b for a, b in zip(rates[:8], rates[1:8], strict=False)) and rates[9] == rates[8]
    constant = load(None, ["train.lr=0.002"]).train
    assert {learning_rate(step, 8, constant) for step in range(10)} == {0.002}


def test_a_resumed_run_continues_the_same_learning_rate_curve(sklearn_digits: Path, tmp_path: Path) -> None:
    settings = ("train.max_steps=12", "train.checkpoint_every=6", "train.lr_schedule=cosine", "train.lr_min=1e-4")
    config = digits_config(sklearn_digits.parent, tmp_path, "cosine", *settings)
    lrs = [row["lr"] for row in train_local(config)["history"]]
    assert lrs == pytest.approx([learning_rate(step, 12, config.train) for step in range(12)])
    shutil.rmtree(latest_checkpoint(tmp_path / "cosine"))  # as if it had crashed after step 6's checkpoint
    resumed = train_local(digits_config(sklearn_digits.parent, tmp_path, "cosine", *settings))
    assert [row["step"] for row in resumed["history"]] == list(range(7, 13))
    assert [row["lr"] for row in resumed["history"]] == pytest.approx(lrs[6:])
