"""Tests of the image-folder dataset (``data.dataset = "folder"``): torchvision's
ImageFolder layout, decoded with Pillow; every number here can be checked by hand."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedticket.cli import main
from fedticket.data import load_splits, sources
from fedticket.data.sources import NPZ_TEST_FRACTION, load_folder, load_source
from fedticket.errors import DataError
from fedticket.spec import DataSpec

CLASSES = ("bird", "ant", "cat")  # written in this order; labels follow sorted order


def pixels(label: int, i: int, size: int = 8) -> np.ndarray:
    """A grayscale image whose pixel (row, column) is ``60 * label + 8 * i + column`` (i < 7)."""
    return np.tile(np.arange(size, dtype=np.uint8), (size, 1)) + np.uint8(60 * label + 8 * i)


def write(path: Path, array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array)
    (im.convert(mode) if mode else im).save(path, fmt)
    return path


def make_folder(root: Path, per_class: int = 4, size: int = 8) -> Path:
    """3 classes x ``per_class`` grayscale PNGs; class ``c`` has label ``sorted(CLASSES)``."""
    for name in CLASSES:
        label = sorted(CLASSES).index(name)
        for i in range(per_class):
            write(root / name / f"img{i}.png", pixels(label, i, size))
    return root


def one_line(e: pytest.ExceptionInfo[DataError]) -> str:
    msg = str(e.value)
    assert "\n" not in msg and ";" in msg, msg  # one line: the problem; what to do
    return msg


# ------------------------------------------------------------------ loading
def test_shapes_dtypes_labels_and_holdout(tmp_path):
    src = load_folder(str(make_folder(tmp_path / "f")))
    n_test = round(NPZ_TEST_FRACTION * 12)
    assert n_test == 2
    assert src.name == "folder" and src.num_classes == 3
    assert src.x_train.shape == (10, 1, 8, 8) and src.x_test.shape == (2, 1, 8, 8)
    assert src.x_train.dtype == np.uint8 and src.y_train.dtype == np.int64
    assert not src.x_train.flags.writeable and not src.y_test.flags.writeable
    # the holdout is a permutation of all 12: every (label, i) exactly once
    x = np.concatenate([src.x_train, src.x_test])
    y = np.concatenate([src.y_train, src.y_test])
    assert np.bincount(y).tolist() == [4, 4, 4]
    seen = set()
    for img, label in zip(x, y, strict=True):
        base = int(img[0, 0, 0])  # = 60 * label + 8 * i
        assert base // 60 == label  # label from the sorted class names: ant 0, bird 1, cat 2
        np.testing.assert_array_equal(img[0], pixels(label, (base % 60) // 8))  # exact PNG
        seen.add(base)
    assert sorted(seen) == [60 * c + 8 * i for c in range(3) for i in range(4)]


def test_holdout_is_the_npz_holdout(tmp_path):
    """The same fixed permutation as an .npz without x_test (the images are sorted by
    class, then by file name)."""
    src = load_folder(str(make_folder(tmp_path / "f", per_class=5)))
    x = np.stack([pixels(c, i)[None] for c in range(3) for i in range(5)])
    y = np.repeat(np.arange(3), 5)
    np.savez(tmp_path / "same.npz", x=x, y=y)
    ref = sources.load_npz(str(tmp_path / "same.npz"))
    assert len(src.y_test) == round(15 / 6) == 2
    for a, b in ((src.x_train, ref.x_train), (src.x_test, ref.x_test),
                 (src.y_train, ref.y_train), (src.y_test, ref.y_test)):
        np.testing.assert_array_equal(a, b)


def test_train_and_test_subfolders_are_used(tmp_path):
    root = tmp_path / "f"
    make_folder(root / "train", per_class=3)
    for name in CLASSES:
        label = sorted(CLASSES).index(name)
        write(root / "test" / name / "t.png", pixels(label, 3))
    write(root / "val" / "ant" / "v.png", pixels(0, 0))  # other sub-folders are ignored
    src = load_source("folder", str(root))
    assert src.x_train.shape == (9, 1, 8, 8) and src.x_test.shape == (3, 1, 8, 8)
    assert src.y_train.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # sorted classes, then files
    assert src.y_test.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(src.x_test[2, 0], pixels(2, 3))
    assert src.x_test[:, 0, 0, 0].tolist() == [24, 84, 144]


def test_colour_modes_and_mixing(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    gray = np.full((4, 4), 77, np.uint8)
    # all grayscale ("L", "1", a palette of grays, 16-bit): 1 channel
    root = tmp_path / "gray"
    write(root / "a" / "l.png", gray)
    write(root / "a" / "one.png", (gray > 50).astype(np.uint8) * 255, mode="1")
    write(root / "b" / "p.png", gray, mode="P")
    write(root / "b" / "i16.png", np.full((4, 4), 257 * 77, np.uint16))
    src = load_folder(str(root))
    x = np.concatenate([src.x_train, src.x_test])
    assert x.shape == (4, 1, 4, 4)
    assert sorted(int(v) for v in x[:, 0, 0, 0]) == [77, 77, 77, 255]
    # colour (RGB, RGBA, JPEG) and grayscale mixed: all RGB, gray repeated over channels
    root = tmp_path / "mixed"
    write(root / "a" / "rgb.png", rgb)
    write(root / "a" / "rgba.png", np.dstack([rgb, np.full((4, 4), 9, np.uint8)]))
    write(root / "b" / "gray.png", gray)
    write(root / "b" / "rgb.jpg", rgb, fmt="JPEG")
    write(root / "b" / "cmyk.JPEG", rgb, fmt="JPEG", mode="CMYK")  # extension case ignored
    write(root / "b" / "notes.txt.png.bak", gray)  # other extensions are not images
    src = load_folder(str(root))
    x = np.concatenate([src.x_train, src.x_test])
    assert x.shape == (5, 3, 4, 4) and src.num_classes == 2
    px = sorted(tuple(int(v) for v in img[:, 0, 0]) for img in x)
    # the gray PNG repeated over 3 channels; the RGB(A) PNGs and, flat colour being
    # lossless even in JPEG, the two JPEGs (RGB and CMYK) give the colour exactly
    assert px == [(77, 77, 77)] + [(200, 100, 50)] * 4


def test_cached_until_a_file_changes(tmp_path):
    root = make_folder(tmp_path / "f")
    a, b = load_folder(str(root)), load_folder(str(root))
    assert a is b
    write(root / "ant" / "img4.png", pixels(0, 0))
    c = load_folder(str(root))
    assert c is not a and len(c.y_train) + len(c.y_test) == 13


def test_load_splits_through_the_config_path(tmp_path):
    root = make_folder(tmp_path / "f", per_class=6)  # 18 images: 3 test, 15 train
    spec = DataSpec(dataset="folder", path=str(root), pool_size=5, num_clients=2)
    splits = load_splits(spec, seed=0)
    assert splits.input_shape == (1, 8, 8) and splits.num_classes == 3
    assert len(splits.pool) == 5 and len(splits.test) == 3
    assert [len(c) for c in splits.clients] == [5, 5]
    assert splits.test.x.dtype == torch.float32
    assert splits.pool.x.min() >= 0 and splits.pool.x.max() <= 1
    # pool, clients and test hold all 18 distinct images once each (pixel [0, 0] names them)
    xs = [splits.pool.x, splits.test.x, *(c.x for c in splits.clients)]
    firsts = torch.cat([x[:, 0, 0, 0] for x in xs]) * 255
    assert sorted(round(float(v)) for v in firsts) == [
        60 * c + 8 * i for c in range(3) for i in range(6)]
    for c in splits.clients:  # labels match the images' class
        assert ((c.x[:, 0, 0, 0] * 255).round() // 60).long().tolist() == c.y.tolist()


# ------------------------------------------------------------------ errors
def png_bytes(size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels(0, 0, size)).save(buf, "PNG")
    return buf.getvalue()


def missing(tmp_path):
    return tmp_path / "nope"


def a_file(tmp_path):
    (tmp_path / "x.png").write_bytes(png_bytes())
    return tmp_path / "x.png"


def no_classes(tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "x.png").write_bytes(png_bytes())
    return tmp_path / "f"


def loose_images(tmp_path):
    root = make_folder(tmp_path / "f")
    (root / "stray.png").write_bytes(png_bytes())
    return root


def empty_folder(tmp_path):
    (tmp_path / "f").mkdir()
    return tmp_path / "f"


def empty_class(tmp_path):
    root = make_folder(tmp_path / "f")
    (root / "dog").mkdir()
    (root / "dog" / "readme.txt").write_text("no images here")
    return root


def no_images(tmp_path):
    for c in CLASSES:
        (tmp_path / "f" / c).mkdir(parents=True)
    (tmp_path / "f" / "ant" / "labels.csv").write_text("a,b\n")
    return tmp_path / "f"


def not_an_image(tmp_path):
    root = make_folder(tmp_path / "f")
    (root / "bird" / "bad.png").write_bytes(b"not an image")
    return root


def truncated(tmp_path):
    root = make_folder(tmp_path / "f")
    (root / "cat" / "cut.png").write_bytes(png_bytes()[:30])
    return root


def truncated_pixels(tmp_path):
    root = make_folder(tmp_path / "f")
    noise = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    whole = write(tmp_path / "noise.png", noise).read_bytes()
    (root / "cat" / "cut.png").write_bytes(whole[: len(whole) // 2])  # header intact
    return root


def sizes_differ(tmp_path):
    root = make_folder(tmp_path / "f")
    write(root / "cat" / "big.png", np.zeros((12, 10), np.uint8))  # 10 wide, 12 high
    return root


def split_classes_differ(tmp_path):
    root = tmp_path / "f"
    make_folder(root / "train")
    write(root / "test" / "ant" / "a.png", pixels(0, 0))
    write(root / "test" / "dog" / "d.png", pixels(0, 0))
    return root


def only_train(tmp_path):
    root = tmp_path / "f"
    make_folder(root / "train")
    return root


ERRORS = [
    (missing, "image folder not found: {root}"),
    (a_file, "{root} is a file, not a folder"),
    (no_classes, "image folder {root} has no class sub-folders (it holds images such as x.png"),
    (loose_images, "holds images such as stray.png beside its class sub-folders"),
    (empty_folder, "image folder {root} has no class sub-folders"),
    (empty_class, "class folder {root}/dog has no .png, .jpg or .jpeg images"),
    (no_images, "image folder {root} has no .png, .jpg or .jpeg images in its class sub-folders"),
    (not_an_image, "cannot read image {root}/bird/bad.png: not a PNG or JPEG file"),
    (truncated, "cannot read image {root}/cat/cut.png: not a PNG or JPEG file, or damaged"),
    (truncated_pixels, "cannot read image {root}/cat/cut.png (image file is truncated"),
    (sizes_differ, "{root}/cat/big.png is 10x12"),
    (split_classes_differ, "only in train/: bird, cat; only in test/: dog"),
    (only_train, "has train/ but no test/"),
]


@pytest.mark.parametrize("make, fragment", ERRORS, ids=[m.__name__ for m, _ in ERRORS])
def test_bad_folders_are_one_line_data_errors(tmp_path, make, fragment):
    root = make(tmp_path).resolve()
    with pytest.raises(DataError) as e:
        load_folder(str(root))
    msg = one_line(e)
    assert fragment.format(root=root) in msg, msg


def test_different_sizes_names_both_files_and_says_resize(tmp_path):
    root = sizes_differ(tmp_path).resolve()
    with pytest.raises(DataError) as e:
        load_folder(str(root))
    msg = one_line(e)
    assert f"{root}/ant/img0.png is 8x8" in msg and "resize" in msg, msg


def test_an_empty_path_says_to_set_data_path():
    with pytest.raises(DataError, match="set data.path"):
        load_folder("")


def test_an_unreadable_image_through_the_cli_is_exit_2_and_one_line(tmp_path, capsys):
    root = not_an_image(tmp_path).resolve()
    config = tmp_path / "c.toml"
    config.write_text(f"""
methods = ["fedavg"]
seeds = [0]
[data]
dataset = "folder"
path = "{root}"
pool_size = 2
num_clients = 2
[model]
name = "mlp"
hidden = [8]
[pretrain]
epochs = 1
[federate]
rounds = 1
local_epochs = 1
batch_size = 4
""")
    capsys.readouterr()
    code = main(["run", str(config), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("fedticket: error:") and "\n" not in err, err
    assert "Traceback" not in err
    assert f"{root}/bird/bad.png" in err, err


def test_the_loader_is_registered():
    assert sources.LOADERS["folder"] is load_folder


def test_a_folder_of_one_class_is_refused_with_its_labels_and_counts(tmp_path):
    for i in range(6):
        write(tmp_path / "only" / f"img{i}.png", pixels(0, i))
    with pytest.raises(DataError) as e:
        load_splits(DataSpec(dataset="folder", path=str(tmp_path), pool_size=1,
                             num_clients=1), 0)
    # 6 images, a sixth held out for test: 5 train images, all label 0
    assert "has one class only (training labels and counts: 0: 5)" in one_line(e)


def test_a_stray_label_leaves_classes_empty_unless_num_classes_says_so(tmp_path):
    # labels 0 and 1, 20 images each, and one image labelled 99 (a typo for 9, say)
    x = np.zeros((41, 8, 8), dtype=np.uint8)
    y = np.array([0] * 20 + [1] * 20 + [99], dtype=np.int64)
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x[:4], y_test=y[:4])
    spec = DataSpec(dataset="npz", path=str(tmp_path / "d.npz"), pool_size=5, num_clients=2)
    with pytest.raises(DataError) as e:
        load_splits(spec, 0)
    assert ("100 classes are inferred (the largest label + 1) but 97 have no training image "
            "(2, 3, 4, 5, 6, ...); training labels and counts: 0: 20, 1: 20, 99: 1; fix the "
            "labels or set data.num_classes") in one_line(e)
    assert load_splits(DataSpec(**{**spec.__dict__, "num_classes": 100}), 0).num_classes == 100
    with pytest.raises(DataError, match="label 99 is not below data.num_classes = 10"):
        load_splits(DataSpec(**{**spec.__dict__, "num_classes": 10}), 0)
