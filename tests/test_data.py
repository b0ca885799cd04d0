"""Data loaders: real offline data (MNIST, CIFAR-10, IMDB), error messages, tokenizer, IMDB sources."""

from __future__ import annotations

import pickle
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from flhelpers.data import imdb as imdb_module
from flhelpers.data.base import DataMissingError
from flhelpers.data.cifar10 import CIFAR10_CLASSES, load_cifar10, read_cifar_batch
from flhelpers.data.download import (
    ChecksumError,
    DataCorruptError,
    dir_is_writable,
    download_url,
    file_digest,
    verify_checksum,
)
from flhelpers.data.imdb import load_imdb
from flhelpers.data.mnist import MNIST_FILES, load_mnist
from flhelpers.data.tokenizer import (
    PAD_INDEX,
    UNK_INDEX,
    Vocabulary,
    encode_texts,
    pad_truncate,
    tokenize,
    tokenize_many,
)


def _require(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} not in the data root")


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """A folder with mode r-x, restored afterwards so tmp_path can be cleaned."""
    folder = tmp_path / "ro"
    folder.mkdir()

    def lock() -> Path:
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
        return folder

    yield folder, lock
    folder.chmod(stat.S_IRWXU)


# --------------------------------------------------------------------------- MNIST


@pytest.fixture(scope="module")
def mnist(data_root: Path):
    _require(data_root / "MNIST" / "raw")
    return load_mnist(data_root, download=False)


def test_mnist_real_shapes_and_labels(mnist) -> None:
    assert mnist.name == "mnist"
    assert mnist.train_x.shape == (60000, 1, 28, 28) and mnist.train_x.dtype == torch.uint8
    assert mnist.test_x.shape == (10000, 1, 28, 28) and mnist.test_x.dtype == torch.uint8
    assert mnist.train_y.dtype == torch.int64 and mnist.test_y.dtype == torch.int64
    assert mnist.num_classes == 10 and mnist.class_names == tuple("0123456789")
    assert mnist.mean == (0.1307,) and mnist.std == (0.3081,)
    train_counts = torch.bincount(mnist.train_y, minlength=10)
    test_counts = torch.bincount(mnist.test_y, minlength=10)
    assert train_counts.sum() == 60000 and test_counts.sum() == 10000
    assert train_counts.min() > 5000 and train_counts.max() < 7000
    assert test_counts.min() > 850 and test_counts.max() < 1200
    assert int(train_counts[7]) == 6265 and int(train_counts[1]) == 6742  # the attack's classes
    x = mnist.prepare(mnist.train_x[:5000])
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05


def test_mnist_missing_names_files_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError) as info:
        load_mnist(tmp_path, download=False)
    message = str(info.value)
    for name in MNIST_FILES:
        assert name in message
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "FLHELPERS_DATA" in message and "data_root" in message


def test_mnist_read_only_root_does_not_download(read_only_dir) -> None:
    _, lock = read_only_dir
    root = lock()
    with pytest.raises(DataMissingError, match="not writable"):
        load_mnist(root, download=True)
    assert list(root.iterdir()) == []


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar10_real_all_batches(data_root: Path) -> None:
    """The data root holds all of CIFAR-10: 50,000 training images, 5,000 a class, official order."""
    _require(data_root / "cifar-10-batches-py")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "only k of 5 batches" warning with the full set
        ds = load_cifar10(data_root, download=False)
    assert ds.train_x.shape == (50000, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert ds.test_x.shape == (10000, 3, 32, 32) and ds.test_x.dtype == torch.uint8
    assert ds.train_y.dtype == torch.int64
    assert torch.bincount(ds.test_y, minlength=10).tolist() == [1000] * 10
    assert torch.bincount(ds.train_y, minlength=10).tolist() == [5000] * 10
    assert ds.class_names[5] == "dog" and ds.class_names[3] == "cat"
    assert ds.meta["num_train_batches"] == 5 and ds.meta["num_train_images"] == 50000
    assert ds.meta["train_batches"] == [f"data_batch_{i}" for i in range(1, 6)] and ds.meta["complete"] is True
    # per-channel means of the training pixels, as the data root's README gives them
    means = ds.train_x.double().mean(dim=(0, 2, 3))
    assert torch.allclose(means, torch.tensor([125.3, 123.0, 113.9], dtype=torch.float64), atol=0.06)
    x = ds.prepare(ds.test_x[:2000])
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.05
    # train_batches=1 reads the first batch alone: the first 10,000 images, in order
    first = load_cifar10(data_root, download=False, train_batches=1)
    assert first.meta["num_train_images"] == 10000 and first.meta["train_batches"] == ["data_batch_1"]
    assert torch.equal(first.train_x, ds.train_x[:10000]) and torch.equal(first.train_y, ds.train_y[:10000])


def _write_batch(path: Path, images: np.ndarray, labels: list[int], **extra) -> None:
    with open(path, "wb") as f:
        pickle.dump({"data": images.reshape(len(labels), -1), "labels": labels, **extra}, f)


def test_cifar10_reads_present_batches_in_order(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8) for n in (4, 3, 2)]
    _write_batch(folder / "data_batch_1", imgs[0], [0, 1, 2, 3])
    _write_batch(folder / "data_batch_3", imgs[1], [5, 5, 9])
    _write_batch(folder / "test_batch", imgs[2], [3, 5])
    with pytest.warns(UserWarning, match="2 of 5"):
        ds = load_cifar10(tmp_path, download=False)
    assert torch.equal(ds.train_x, torch.from_numpy(np.concatenate(imgs[:2])))
    assert ds.train_y.tolist() == [0, 1, 2, 3, 5, 5, 9]
    assert torch.equal(ds.test_x, torch.from_numpy(imgs[2])) and ds.test_y.tolist() == [3, 5]
    assert ds.meta["train_batches"] == ["data_batch_1", "data_batch_3"]


def test_cifar10_missing_names_files(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError) as info:
        load_cifar10(tmp_path, download=False)
    message = str(info.value)
    for name in ("data_batch_1", "data_batch_5", "test_batch"):
        assert name in message
    assert str(tmp_path / "cifar-10-batches-py") in message and "FLHELPERS_DATA" in message


def test_cifar10_missing_test_batch(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    _write_batch(folder / "data_batch_1", np.zeros((1, 3072), np.uint8), [0])
    with pytest.raises(DataMissingError, match="test_batch not found"):
        load_cifar10(tmp_path, download=True)


def test_cifar10_corrupt_pickle_names_file(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"this is not a pickle")
    _write_batch(folder / "test_batch", np.zeros((1, 3072), np.uint8), [0])
    with pytest.raises(DataCorruptError) as info:
        load_cifar10(tmp_path, download=False)
    assert str(folder / "data_batch_1") in str(info.value)

    # Truncated pickle and wrong contents are reported the same way.
    good = folder / "test_batch"
    (folder / "data_batch_1").write_bytes(good.read_bytes()[:100])
    with pytest.raises(DataCorruptError, match="data_batch_1"):
        read_cifar_batch(folder / "data_batch_1")
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({"pixels": [1, 2]}, f)
    with pytest.raises(DataCorruptError, match="lacks the keys"):
        read_cifar_batch(folder / "data_batch_1")


def test_cifar10_class_names() -> None:
    assert CIFAR10_CLASSES == (
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    )


# --------------------------------------------------------------------------- tokenizer


def test_tokenize_html_case_punctuation() -> None:
    assert tokenize("Great MOVIE!<br /><br />I loved it.") == [
        "great", "movie", "!", "i", "loved", "it", ".",
    ]
    assert tokenize("Isn't it (really) good?!") == ["isn't", "it", "(", "really", ")", "good", "?", "!"]
    assert tokenize("Wait......... what!!!") == ["wait", ".", "what", "!"]
    assert tokenize("a < b, but <i>italic</i>") == ["a", "<", "b", ",", "but", "italic"]
    assert tokenize("") == []


def test_vocabulary_frequency_ties_and_size() -> None:
    train = [["b", "a", "c"], ["a", "b", "d"], ["a"]]
    vocab = Vocabulary.build(train, max_size=10)
    assert vocab.itos == ["<pad>", "<unk>", "a", "b", "c", "d"]  # a:3, b:2, then c/d tie by text
    assert len(Vocabulary.build(train, max_size=4)) == 4
    assert Vocabulary.build(train, max_size=4).itos == ["<pad>", "<unk>", "a", "b"]
    assert vocab.encode(["a", "zebra"]) == [2, UNK_INDEX]
    assert vocab.decode([0, 0, 2, 3]) == ["a", "b"]
    with pytest.raises(ValueError):
        Vocabulary(["a", "<pad>"])


def test_vocabulary_from_training_split_only() -> None:
    train = tokenize_many(["A fine film.", "A bad film!"])
    test = tokenize_many(["A zebra film."])
    vocab = Vocabulary.build(train, max_size=100)
    assert "zebra" not in vocab
    ids = encode_texts(test, vocab, max_len=4)
    assert ids[0].tolist() == [vocab.stoi["a"], UNK_INDEX, vocab.stoi["film"], vocab.stoi["."]]


def test_truncation_keeps_end_and_pads_left() -> None:
    out = pad_truncate([[1, 2, 3, 4, 5], [7, 8], []], 3)
    assert out.dtype == torch.int64
    assert out.tolist() == [[3, 4, 5], [0, 7, 8], [0, 0, 0]]
    vocab = Vocabulary.build([list("abcdef")], max_size=10)
    ids = encode_texts([list("abcdef"), ["f"]], vocab, max_len=2)
    assert vocab.decode(ids[0].tolist()) == ["e", "f"]
    assert ids[1].tolist() == [PAD_INDEX, vocab.stoi["f"]]


# --------------------------------------------------------------------------- IMDB, small sources

_TRICKY = 'He said "hi, there",\nthen left.<br />Fine'


def _write_csv(path: Path, n: int) -> list[tuple[str, str]]:
    """n rows alternating positive/negative, some with quotes, commas and newlines."""
    import pandas as pd

    rows = []
    for i in range(n):
        sentiment = "positive" if i % 2 == 0 else "negative"
        text = f"review {i} is {'good' if i % 2 == 0 else 'bad'}, word{i}."
        if i == 1:
            text = _TRICKY
        rows.append((text, sentiment))
    frame = pd.DataFrame(rows, columns=["review", "sentiment"])
    frame.to_csv(path, index=False, compression="gzip" if path.suffix == ".gz" else None)
    return rows


@pytest.mark.parametrize("name", ["imdb.csv", "imdb.csv.gz"])
def test_imdb_csv_official_and_paper_split(tmp_path: Path, name: str) -> None:
    rows = _write_csv(tmp_path / name, 20)
    ds = load_imdb(tmp_path, split="official", max_len=6, vocab_size=50, download=False)
    assert ds.train_x.shape == (10, 6) and ds.test_x.shape == (10, 6)
    assert ds.train_x.dtype == torch.int64 and ds.train_y.dtype == torch.int64
    assert ds.train_y.tolist() == [1, 0] * 5 and ds.class_names == ("negative", "positive")
    assert ds.num_classes == 2 and ds.mean is None
    assert ds.meta["split"] == "official" and ds.meta["max_len"] == 6
    assert ds.meta["source"] == str(tmp_path / name)
    if name.endswith(".gz"):
        assert (tmp_path / name).read_bytes()[:2] == b"\x1f\x8b"
    # End to end: the first half is the training split, the vocabulary is built on it, and
    # the quoted review with a comma and a newline survives the CSV round trip.
    train_tokens = tokenize_many([text for text, _ in rows[:10]])
    vocab = Vocabulary.build(train_tokens, 50)
    assert ds.meta["vocab_size"] == len(vocab)
    assert torch.equal(ds.train_x, encode_texts(train_tokens, vocab, 6))
    assert vocab.decode(ds.train_x[1].tolist()) == ['"', ",", "then", "left", ".", "fine"]
    # Words of test reviews only (word10..word19) are unknown: test rows hold <unk>.
    assert (ds.test_x == UNK_INDEX).any(dim=1).all()
    assert not (ds.train_x == UNK_INDEX).any()

    paper = load_imdb(tmp_path, split="paper", max_len=6, vocab_size=50, seed=1, download=False)
    assert paper.train_x.shape == (16, 6) and paper.test_x.shape == (4, 6)
    again = load_imdb(tmp_path, split="paper", max_len=6, vocab_size=50, seed=1, download=False,
                      cache=False)
    assert torch.equal(paper.train_x, again.train_x) and torch.equal(paper.test_y, again.test_y)
    other = load_imdb(tmp_path, split="paper", max_len=6, vocab_size=50, seed=2, cache=False)
    assert not torch.equal(paper.train_y, other.train_y) or not torch.equal(paper.train_x,
                                                                            other.train_x)


def test_imdb_cache_written_and_used(tmp_path: Path, monkeypatch) -> None:
    root, cache = tmp_path / "data", tmp_path / "cache"
    root.mkdir()
    monkeypatch.setenv("FLHELPERS_CACHE", str(cache))
    _write_csv(root / "imdb.csv", 10)
    first = load_imdb(root, max_len=5, vocab_size=30)
    cached = list(cache.glob("imdb-*.pt"))
    assert len(cached) == 1
    assert sorted(p.name for p in root.iterdir()) == ["imdb.csv"]  # nothing written beside the data

    def fail(*_args, **_kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(imdb_module, "tokenize_many", fail)
    second = load_imdb(root, max_len=5, vocab_size=30)
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)
    assert second.meta == first.meta
    with pytest.raises(AssertionError, match="cache"):  # other options: a different cache entry
        load_imdb(root, max_len=6, vocab_size=30)


def test_cache_folder_follows_the_environment(tmp_path: Path, monkeypatch) -> None:
    from flhelpers.data.base import resolve_cache_dir

    monkeypatch.setenv("FLHELPERS_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("FLHELPERS_CACHE")
    assert resolve_cache_dir() == tmp_path / "xdg" / "flhelpers"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_cache_dir() == tmp_path / "home" / ".cache" / "flhelpers"


def test_imdb_read_only_root_is_not_cached(read_only_dir) -> None:
    folder, lock = read_only_dir
    _write_csv(folder / "imdb.csv", 10)
    root = lock()
    before = _snapshot(root)
    ds = load_imdb(root, max_len=4, vocab_size=20)
    assert ds.train_x.shape == (8, 4)
    assert _snapshot(root) == before


def _write_acl_folder(root: Path, per_part: int = 3) -> None:
    for split in ("train", "test"):
        for polarity in ("pos", "neg"):
            folder = root / "aclImdb" / split / polarity
            folder.mkdir(parents=True)
            for i in range(per_part):
                rating = 9 if polarity == "pos" else 2
                text = f"{split} {polarity} number {i}<br />{'great' if polarity == 'pos' else 'awful'}!"
                (folder / f"{i}_{rating}.txt").write_text(text, encoding="utf-8")
    # Files of the official archive that are not reviews are ignored.
    (root / "aclImdb" / "train" / "urls_pos.txt").write_text("http://www.imdb.com/title/tt0/\n")
    (root / "aclImdb" / "README").write_text("Large Movie Review Dataset v1.0\n")


def test_imdb_acl_folder(tmp_path: Path) -> None:
    _write_acl_folder(tmp_path)
    ds = load_imdb(tmp_path, split="official", max_len=8, vocab_size=100, download=False)
    assert ds.train_x.shape == (6, 8) and ds.test_x.shape == (6, 8)
    assert ds.train_y.tolist() == [1, 1, 1, 0, 0, 0] and ds.test_y.tolist() == [1, 1, 1, 0, 0, 0]
    assert ds.meta["source"] == str(tmp_path / "aclImdb")
    # Vocabulary from training reviews only: "test" appears only in test reviews.
    vocab = Vocabulary.build(tokenize_many([f"train {p} number {i} {w}!" for p, w in
                                            (("pos", "great"), ("neg", "awful")) for i in range(3)]),
                             100)
    assert ds.meta["vocab_size"] == len(vocab)
    assert (ds.test_x == UNK_INDEX).sum() == 6 and not (ds.train_x == UNK_INDEX).any()


def _tar_of_folder(root: Path, dest: Path) -> None:
    with tarfile.open(dest, "w:gz") as archive:
        archive.add(root / "aclImdb", arcname="aclImdb")


def test_imdb_archive_read_in_place(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "src"
    _write_acl_folder(src)
    root = tmp_path / "root"
    root.mkdir()
    archive = root / "aclImdb_v1.tar.gz"
    _tar_of_folder(src, archive)
    monkeypatch.setattr(imdb_module, "IMDB_SHA256", file_digest(archive))
    from_archive = load_imdb(root, split="paper", max_len=8, vocab_size=100, cache=False)
    from_folder = load_imdb(src, split="paper", max_len=8, vocab_size=100, cache=False)
    assert torch.equal(from_archive.train_x, from_folder.train_x)
    assert torch.equal(from_archive.test_y, from_folder.test_y)
    assert not (root / "aclImdb").exists()  # read in place, not extracted


def test_imdb_archive_checksum_mismatch(tmp_path: Path) -> None:
    archive = tmp_path / "aclImdb_v1.tar.gz"
    archive.write_bytes(b"truncated download")
    with pytest.raises(ChecksumError) as info:
        load_imdb(tmp_path, download=False, cache=False)
    message = str(info.value)
    assert str(archive) in message and imdb_module.IMDB_SHA256 in message
    assert file_digest(archive) in message and "delete" in message


def test_imdb_download_path_without_network(tmp_path: Path, monkeypatch) -> None:
    """download=True fetches the archive to <root>/aclImdb_v1.tar.gz; failures name the sources."""
    import urllib.error

    def offline(url, dest, sha256=None):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(imdb_module, "download_url", offline)
    with pytest.raises(DataMissingError, match="no network") as info:
        load_imdb(tmp_path / "empty", download=True)
    assert "imdb.csv" in str(info.value) and "aclImdb_v1.tar.gz" in str(info.value)

    src = tmp_path / "src"
    _write_acl_folder(src)
    tiny = tmp_path / "tiny.tar.gz"
    _tar_of_folder(src, tiny)
    calls = []

    def fake_download(url, dest, sha256=None):
        calls.append((url, Path(dest), sha256))
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        Path(dest).write_bytes(tiny.read_bytes())
        return Path(dest)

    monkeypatch.setattr(imdb_module, "download_url", fake_download)
    monkeypatch.setattr(imdb_module, "IMDB_SHA256", file_digest(tiny))
    root = tmp_path / "root"
    ds = load_imdb(root, split="official", max_len=8, vocab_size=100, download=True)
    assert calls == [(imdb_module.IMDB_URL, root / "aclImdb_v1.tar.gz", file_digest(tiny))]
    assert ds.train_x.shape == (6, 8) and ds.meta["source"] == str(root / "aclImdb_v1.tar.gz")
    load_imdb(root, split="official", max_len=8, vocab_size=100, download=True)
    assert len(calls) == 1  # the archive on disk is used next time


def test_imdb_missing_names_sources(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError) as info:
        load_imdb(tmp_path, download=False)
    message = str(info.value)
    for name in ("imdb.csv", "imdb.csv.gz", "aclImdb", "aclImdb_v1.tar.gz", "FLHELPERS_DATA"):
        assert name in message
    assert str(tmp_path) in message


def test_imdb_bad_options_and_bad_csv(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        load_imdb(tmp_path, split="random")
    with pytest.raises(ValueError, match="max_len"):
        load_imdb(tmp_path, max_len=0)
    with pytest.raises(ValueError, match="vocab_size"):
        load_imdb(tmp_path, vocab_size=2)
    (tmp_path / "imdb.csv").write_text("review,sentiment\ngood,positive\nmeh,neutral\n")
    with pytest.raises(DataCorruptError, match="neutral"):
        load_imdb(tmp_path, cache=False)
    (tmp_path / "imdb.csv").write_text("text,label\ngood,1\n")
    with pytest.raises(DataCorruptError, match="sentiment"):
        load_imdb(tmp_path, cache=False)


# --------------------------------------------------------------------------- IMDB, real data


@pytest.mark.slow
def test_imdb_real_paper_split(data_root: Path) -> None:
    _require(data_root / "imdb.csv.gz")
    writable = dir_is_writable(data_root)
    before = None if writable else _snapshot(data_root)
    ds = load_imdb(data_root, split="paper", max_len=128, vocab_size=20000, seed=0)
    assert ds.train_x.shape == (40000, 128) and ds.test_x.shape == (10000, 128)
    assert ds.train_x.dtype == torch.int64 and ds.test_y.dtype == torch.int64
    assert 0.47 < float(ds.train_y.float().mean()) < 0.53
    assert 0.45 < float(ds.test_y.float().mean()) < 0.55
    assert ds.meta["vocab_size"] == 20000
    assert int(ds.train_x.max()) < 20000 and int(ds.test_x.min()) >= 0
    # Most reviews are longer than 128 tokens; short ones are left-padded.
    assert (ds.train_x[:, -1] != PAD_INDEX).all()
    assert 0.5 < float((ds.train_x[:, 0] != PAD_INDEX).float().mean()) < 0.95
    assert float((ds.test_x == UNK_INDEX).float().mean()) < 0.05
    if before is not None:
        assert _snapshot(data_root) == before  # a read-only root is never written to


# --------------------------------------------------------------------------- helpers


def test_download_helpers(tmp_path: Path, read_only_dir) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    verify_checksum(f, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    verify_checksum(f, "900150983cd24fb0d6963f7d28e17f72", "md5")
    with pytest.raises(ChecksumError, match="delete it and retry"):
        verify_checksum(f, "0" * 64)
    dest = download_url(f.resolve().as_uri(), tmp_path / "dl" / "copy.bin", sha256=file_digest(f))
    assert dest.read_bytes() == b"abc" and not (tmp_path / "dl" / "copy.bin.part").exists()
    with pytest.raises(ChecksumError, match="copy2.bin"):
        download_url(f.resolve().as_uri(), tmp_path / "dl" / "copy2.bin", sha256="0" * 64)
    assert dir_is_writable(tmp_path) and dir_is_writable(tmp_path / "new" / "deeper")
    _, lock = read_only_dir
    root = lock()
    assert not dir_is_writable(root) and not dir_is_writable(root / "cache")
    assert not dir_is_writable(f)



def test_cifar10_train_batches_asks_for_exactly_the_first_n(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8) for n in (2, 3, 2)]
    _write_batch(folder / "data_batch_1", imgs[0], [0, 1])
    _write_batch(folder / "data_batch_2", imgs[1], [2, 3, 4])
    _write_batch(folder / "test_batch", imgs[2], [3, 5])
    ds = load_cifar10(tmp_path, download=False, train_batches=1)  # asked for: no warning
    assert ds.train_y.tolist() == [0, 1] and ds.meta["train_batches"] == ["data_batch_1"]
    assert load_cifar10(tmp_path, download=False, train_batches=2).train_y.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(DataMissingError, match=r"train_batches=3 asks for data_batch_3"):
        load_cifar10(tmp_path, download=False, train_batches=3)
    for bad in (0, 6, 2.0, True):
        with pytest.raises(ValueError, match="train_batches must be None or an integer in 1..5"):
            load_cifar10(tmp_path, download=False, train_batches=bad)
