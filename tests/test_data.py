"""Datasets and transforms: IDX reading, Fashion-MNIST, checked image folders, the synthetic set."""
import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from patnet.data import (
    FASHION_MNIST_CLASSES,
    ImageFolderDataset,
    build_dataset,
    build_transform,
    fashion_mnist,
    image_folder_split,
    read_idx,
    synthetic,
)
from patnet.data.datasets import FASHION_MNIST_DIR


def write_idx(path, array: np.ndarray, truncate: int = 0) -> None:
    header = b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = array.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + body[:len(body) - truncate])


def test_read_idx_round_trip(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x-idx3-ubyte.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "x-idx3-ubyte.gz"), images)


def test_read_idx_rejects_truncated_file(tmp_path):
    write_idx(tmp_path / "x.gz", np.zeros((2, 3, 4), dtype=np.uint8), truncate=5)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "x.gz")


def test_fashion_mnist_from_idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    for images, labels in (("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                           ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")):
        write_idx(tmp_path / images, rng.integers(0, 256, (6, 28, 28)))
        write_idx(tmp_path / labels, np.arange(6) % 10)
    train = fashion_mnist("train", tmp_path)
    image, label = train[3]
    assert (len(train), image.size, image.mode, label) == (6, (28, 28), "L", 3)
    assert train.classes == FASHION_MNIST_CLASSES


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist("train", tmp_path / "nowhere")


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_installed_fashion_mnist_has_the_published_split_sizes():
    val = fashion_mnist("val")
    assert len(val) == 10_000
    assert np.bincount(val.labels).tolist() == [1000] * 10


def make_folder(root, counts: dict[str, int], size=(12, 10)):
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", size, (40 * i % 256, 90, 200)).save(root / name / f"{i}.png")


def test_image_folder_skips_and_counts_empty_and_corrupt_files(tmp_path):
    make_folder(tmp_path, {"cat": 3, "dog": 2})
    (tmp_path / "cat" / "empty.png").write_bytes(b"")
    (tmp_path / "dog" / "garbage.jpg").write_bytes(b"this is not a jpeg")
    with pytest.warns(UserWarning, match="skipped 2 unreadable image file"):
        dataset = ImageFolderDataset(tmp_path)
    assert (len(dataset), len(dataset.skipped), dataset.classes) == (5, 2, ["cat", "dog"])
    image, label = dataset[4]
    assert (image.mode, label) == ("RGB", 1)


def test_image_folder_splits_need_train_and_val(tmp_path):
    make_folder(tmp_path / "train", {"a": 1, "b": 1})
    with pytest.raises(FileNotFoundError, match="lacks the val folder"):
        image_folder_split(tmp_path, "val")


def test_image_folder_val_keeps_training_class_indices(tmp_path):
    make_folder(tmp_path / "train", {"a": 1, "b": 1, "c": 1})
    make_folder(tmp_path / "val", {"c": 2})
    train, val = image_folder_split(tmp_path, "train"), image_folder_split(tmp_path, "val")
    assert val.classes == train.classes and {label for _, label in val} == {2}


def test_image_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no readable images"), pytest.warns(UserWarning):
        ImageFolderDataset(tmp_path)


def test_synthetic_set_is_deterministic_and_balanced():
    first, again = synthetic("train"), synthetic("train")
    np.testing.assert_array_equal(first.images, again.images)
    assert not np.array_equal(first.images, synthetic("val").images)
    assert np.bincount(first.labels).tolist() == [32] * 4


@pytest.mark.parametrize("name, img_size, channels", [("fashion-mnist", 64, 1), ("folder", 48, 3)])
def test_transforms_give_the_requested_size(name, img_size, channels):
    image = Image.new("L" if channels == 1 else "RGB", (28, 30))
    for train in (True, False):
        transform = build_transform(name, img_size, train, auto_augment="rand-m9-mstd0.5")
        assert transform(image).shape == (channels, img_size, img_size)


def test_folder_dataset_needs_data_dir():
    with pytest.raises(ValueError, match="needs --data-dir"):
        build_dataset("folder", "val", None, 32)


def save_truncated_jpeg(path) -> None:
    """A JPEG cut in half: its header is intact, so the scan's verify() passes and decoding fails."""
    pixels = (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_an_image_that_fails_to_decode_is_skipped_counted_and_replaced(tmp_path):
    make_folder(tmp_path, {"cat": 1, "dog": 1})
    save_truncated_jpeg(tmp_path / "cat" / "1.jpg")
    dataset = ImageFolderDataset(tmp_path)
    assert (len(dataset), dataset.skipped) == (3, [])
    with pytest.warns(UserWarning, match=r"skipped unreadable image .*cat/1.jpg .*truncated.*\(1 skipped in"):
        image, label = dataset[1]
    assert (image.size, label) == ((12, 10), 1)  # the next sample (dog/0.png) took its place
    assert [path for path, _ in dataset.skipped] == [str(tmp_path / "cat" / "1.jpg")]
    assert dataset[1][1] == 1 and len(dataset.skipped) == 1  # known bad: skipped again without a second warning


def test_a_folder_where_nothing_decodes_is_one_error(tmp_path):
    (tmp_path / "a").mkdir()
    save_truncated_jpeg(tmp_path / "a" / "0.jpg")
    dataset = ImageFolderDataset(tmp_path)
    with pytest.raises(ValueError, match="none of the 1 images under .* can be decoded"), pytest.warns(UserWarning):
        dataset[0]
