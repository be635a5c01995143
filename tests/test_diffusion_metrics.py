"""data_tools.image_datasets (packaged image sets, image folders) and diffusion.metrics (FD, SWD, classifier, grids)."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion import metrics
from data_tools.distances import frechet_distance, frechet_distance_from_stats, sliced_wasserstein
from data_tools.images import ImageFolderDataset, from_uint8_images, save_image_grid, to_uint8_images
from data_tools.image_datasets import IMAGE_DATASETS as DATASETS, load_image_dataset, stratified_split
from diffusion.metrics import FeatureClassifier, get_feature_classifier, sample_quality, train_feature_classifier

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    x_tr, y_tr = load_image_dataset("digits", "train")
    x_te, y_te = load_image_dataset("digits", "test")
    return x_tr, y_tr, x_te, y_te


@pytest.fixture(scope="module")
def digits_clf(digits):
    x_tr, y_tr, x_te, y_te = digits
    return train_feature_classifier(x_tr, y_tr, hidden=(128,), epochs=30, seed=0,
                                    test_images=x_te, test_labels=y_te)


# --------------------------------------------------------------------------------------------- datasets


def test_digits_shapes_range_and_values(digits):
    from sklearn.datasets import load_digits

    x_tr, y_tr, x_te, y_te = digits
    assert x_tr.shape == (1438, 1, 8, 8) and x_te.shape == (359, 1, 8, 8)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert x_tr.min() == -1.0 and x_tr.max() == 1.0
    assert set(y_tr.tolist()) == set(range(10)) == set(y_te.tolist())
    x_all, y_all = load_image_dataset("digits", "all")
    raw = load_digits()
    assert torch.allclose(x_all[:, 0], torch.tensor(raw.images / 8.0 - 1.0, dtype=torch.float32))
    assert torch.equal(y_all, torch.tensor(raw.target))
    # the splits are rows of the full set, in its order
    train_idx, test_idx = stratified_split(y_all.numpy(), seed=0)
    assert torch.equal(x_te, x_all[test_idx]) and torch.equal(y_tr, y_all[train_idx])


def test_split_disjoint_stratified_deterministic():
    _, y = load_image_dataset("digits", "all")
    y = y.numpy()
    tr, te = stratified_split(y, seed=0)
    assert len(np.intersect1d(tr, te)) == 0
    assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(len(y)))
    for c in range(10):
        n_c = (y == c).sum()
        assert (y[te] == c).sum() == round(0.2 * n_c)
    tr2, te2 = stratified_split(y, seed=0)
    assert np.array_equal(te, te2) and np.array_equal(tr, tr2)
    _, te3 = stratified_split(y, seed=1)
    assert not np.array_equal(te, te3)
    a, _ = load_image_dataset("digits", "test", seed=1)
    b, _ = load_image_dataset("digits", "test", seed=1)
    assert torch.equal(a, b)


def test_mnist5k_shapes_balance_and_resize():
    x_tr, y_tr = load_image_dataset("mnist5k", "train")
    x_te, y_te = load_image_dataset("mnist5k", "test")
    assert x_tr.shape == (4000, 1, 28, 28) and x_te.shape == (1000, 1, 28, 28)
    assert x_tr.min() == -1.0 and x_tr.max() == 1.0
    assert np.bincount(y_tr.numpy()).tolist() == [400] * 10
    assert np.bincount(y_te.numpy()).tolist() == [100] * 10
    x16, y16 = load_image_dataset("mnist5k", "test", size=16)
    assert x16.shape == (1000, 1, 16, 16) and torch.equal(y16, y_te)
    assert x16.min() >= -1.0 and x16.max() <= 1.0
    # antialiased resize keeps the ink: mean brightness hardly moves
    assert abs(x16.mean().item() - x_te.mean().item()) < 0.02


def test_unknown_dataset_and_bad_split():
    with pytest.raises(ValueError, match="digits.*mnist5k"):
        load_image_dataset("cifar10")
    with pytest.raises(ValueError, match="split"):
        load_image_dataset("digits", "val")
    assert {"digits", "mnist5k"} <= set(DATASETS)


def test_uint8_round_trip():
    u = np.random.default_rng(0).integers(0, 256, size=(3, 5, 4, 3), dtype=np.uint8)
    x = from_uint8_images(u)
    assert x.shape == (3, 3, 5, 4) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(to_uint8_images(x), u)
    assert to_uint8_images(torch.tensor([[[[-1.0, 0.0, 1.0, 7.0]]]])).ravel().tolist() == [0, 128, 255, 255]


def _save(path, array, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def test_image_folder(tmp_path, caplog):
    # 40 wide x 10 high: white, 20 black columns, white. Cover-resize to 8x8 scales by 0.8 to 32x8 and the
    # centre crop keeps resized columns 12..19 = source columns 15..24, all black. A stretch (no crop) or
    # an off-centre crop would bring white in.
    stripes = np.full((10, 40, 3), 255, np.uint8)
    stripes[:, 10:30] = 0
    _save(tmp_path / "a" / "1.png", stripes)
    _save(tmp_path / "b" / "sub" / "2.jpg", np.full((30, 30, 3), 200, np.uint8))
    _save(tmp_path / "3.bmp", np.full((8, 8), 50, np.uint8))
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (tmp_path / "notes.txt").write_text("ignored")
    with caplog.at_level(logging.WARNING, logger="data_tools.image_datasets"):
        ds = ImageFolderDataset(tmp_path, size=8, channels=3)
    assert len(ds) == 3 and ds.skipped == 1
    assert ds.skipped_paths == [tmp_path / "b" / "broken.png"]
    assert "broken.png" in caplog.text
    assert [p.relative_to(tmp_path).as_posix() for p in ds.paths] == ["3.bmp", "a/1.png", "b/sub/2.jpg"]
    first = ds[1]
    assert first.shape == (3, 8, 8) and first.dtype == torch.float32
    assert torch.all(first == -1.0)
    assert ds[0].shape == (3, 8, 8) and torch.allclose(ds[0], torch.full((3, 8, 8), 50 / 127.5 - 1))
    grey = ImageFolderDataset(tmp_path, size=(4, 6), channels=1)
    assert grey[2].shape == (1, 4, 6) and grey.tensors().shape == (3, 1, 4, 6)


def test_image_folder_empty_or_all_broken(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataset(tmp_path, size=8)
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="could be read"):
        ImageFolderDataset(tmp_path, size=8)


# --------------------------------------------------------------------------------------------- Fréchet distance


def test_fd_identical_is_zero_and_symmetric():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 16))
    b = rng.normal(size=(400, 16)) * 1.5 + 0.3
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, b) > 1.0
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)


def test_fd_closed_form_diagonal_gaussians():
    # for diagonal covariances FD = sum (mu_a - mu_b)^2 + sum (sd_a - sd_b)^2
    rng = np.random.default_rng(1)
    mu_a, mu_b = rng.normal(size=10), rng.normal(size=10)
    sd_a, sd_b = rng.uniform(0.1, 3, 10), rng.uniform(0.1, 3, 10)
    expected = ((mu_a - mu_b) ** 2).sum() + ((sd_a - sd_b) ** 2).sum()
    got = frechet_distance_from_stats(mu_a, np.diag(sd_a ** 2), mu_b, np.diag(sd_b ** 2))
    assert got == pytest.approx(expected, rel=1e-10)
    # and from samples it converges to the population value
    a = rng.normal(size=(200_000, 10)) * sd_a + mu_a
    b = rng.normal(size=(200_000, 10)) * sd_b + mu_b
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.02)


def test_fd_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    for dim in (3, 12, 40):
        ma, mb = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
        sa, sb = ma @ ma.T + dim * np.eye(dim), mb @ mb.T + dim * np.eye(dim)
        mu_a, mu_b = rng.normal(size=dim), rng.normal(size=dim)
        covmean = linalg.sqrtm(sa @ sb).real
        expected = ((mu_a - mu_b) ** 2).sum() + np.trace(sa + sb - 2 * covmean)
        assert frechet_distance_from_stats(mu_a, sa, mu_b, sb) == pytest.approx(expected, rel=1e-8)


def test_fd_mean_shift_is_exact_and_grows():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(300, 8))
    fds = []
    for s in (0.5, 1.0, 2.0):
        shift = np.full(8, s)
        fds.append(frechet_distance(a, a + shift))
        assert fds[-1] == pytest.approx(8 * s ** 2, rel=1e-8)  # same covariance: only the mean term
    assert fds[0] < fds[1] < fds[2]


def test_fd_rank_deficient_no_nan():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(10, 64))  # N < F: covariance has rank 9
    b = rng.normal(size=(12, 64)) + 0.5
    fd = frechet_distance(a, b)
    assert np.isfinite(fd) and fd > 0
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, a + 1.0) == pytest.approx(64.0, rel=1e-8)
    dead = np.concatenate([a[:, :32], np.zeros((10, 32))], axis=1)  # dead ReLU units: zero-variance columns
    assert np.isfinite(frechet_distance(dead, b))


# --------------------------------------------------------------------------------------------- sliced Wasserstein


def test_swd_identical_shift_and_1d_exact():
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.normal(size=(256, 20)))
    assert sliced_wasserstein(x, x) == 0.0
    vals = [sliced_wasserstein(x, x + s) for s in (0.1, 0.5, 1.0)]
    assert 0 < vals[0] < vals[1] < vals[2]
    # a translation by c moves every projection by c.theta: SWD_2 ~ |c| / sqrt(D) for many directions
    assert vals[2] == pytest.approx(1.0, rel=0.15)  # |c| = sqrt(20), D = 20
    # in 1-D the only direction is +-1, so a shift of 3 is exactly 3 for any p
    line = rng.normal(size=(100, 1))
    assert sliced_wasserstein(line, line + 3, projections=4, p=2) == pytest.approx(3.0, rel=1e-12)
    assert sliced_wasserstein(line, line + 3, projections=4, p=1) == pytest.approx(3.0, rel=1e-12)


def test_swd_unequal_counts():
    # quantile midpoints of U(0, 1) at two sample sizes: the same distribution, interpolated quantiles agree
    small = ((np.arange(100) + 0.5) / 100)[:, None]
    large = ((np.arange(1000) + 0.5) / 1000)[:, None]
    same = sliced_wasserstein(small, large, projections=2)
    assert same < 2e-3
    assert sliced_wasserstein(large, small, projections=2) == pytest.approx(same, rel=1e-12)
    assert sliced_wasserstein(small, large + 0.5, projections=2) == pytest.approx(0.5, abs=5e-3)
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(300, 16)), rng.normal(size=(700, 16))
    near, far = sliced_wasserstein(x, y), sliced_wasserstein(x, y + 1.0)
    assert 0 < near < far
    with pytest.raises(ValueError, match="dimensions"):
        sliced_wasserstein(x, y[:, :8])


# --------------------------------------------------------------------------------------------- classifier


def test_classifier_accuracy_and_fd_separates_real_from_noise(digits, digits_clf):
    x_tr, _, x_te, y_te = digits
    assert digits_clf.test_accuracy >= 0.90
    assert digits_clf.accuracy(x_te, y_te) == pytest.approx(digits_clf.test_accuracy)
    assert digits_clf.features(x_te).shape == (len(x_te), 128)
    f_train = digits_clf.features(x_tr)
    fd_real = frechet_distance(f_train, digits_clf.features(x_te))
    noise = torch.rand(x_te.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fd_noise = frechet_distance(f_train, digits_clf.features(noise))
    assert fd_real * 20 < fd_noise, (fd_real, fd_noise)


def test_classifier_deterministic_and_save_load(digits, tmp_path):
    x_tr, y_tr, x_te, _ = digits
    a = train_feature_classifier(x_tr, y_tr, epochs=2, seed=0)
    torch.manual_seed(123)  # a different global RNG state must not matter
    b = train_feature_classifier(x_tr, y_tr, epochs=2, seed=0)
    c = train_feature_classifier(x_tr, y_tr, epochs=2, seed=1)
    fa = a.features(x_te)
    assert torch.equal(fa, b.features(x_te))
    assert not torch.allclose(fa, c.features(x_te))
    a.save_pretrained(tmp_path / "clf")
    loaded = FeatureClassifier.from_pretrained(tmp_path / "clf")
    assert torch.equal(loaded.features(x_te), fa)
    assert torch.equal(loaded.predict(x_te), a.predict(x_te))
    assert loaded.meta["seed"] == 0 and loaded.arch == "mlp"
    # weights swapped under the config are refused
    c.save_pretrained(tmp_path / "other")
    (tmp_path / "clf" / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="does not match"):
        FeatureClassifier.from_pretrained(tmp_path / "clf")
    with pytest.raises(ValueError, match="resize"):
        a.features(torch.zeros(2, 1, 16, 16))


def test_get_feature_classifier_caches(tmp_path, monkeypatch):
    first = get_feature_classifier("digits", tmp_path, epochs=2)
    entries = [p.name for p in tmp_path.iterdir()]
    assert entries == [metrics.classifier_cache_key("digits", epochs=2)]
    assert entries[0].startswith("fd-classifier-digits-size8-seed0-") and entries[0].endswith(f"-v{metrics.CACHE_VERSION}")
    assert 0 < first.test_accuracy <= 1 and first.meta["dataset"] == "digits"

    def no_training(*args, **kwargs):
        raise AssertionError("cached classifier was retrained")

    monkeypatch.setattr(metrics, "train_feature_classifier", no_training)
    again = get_feature_classifier("digits", tmp_path, epochs=2)
    x, _ = load_image_dataset("digits", "test")
    assert torch.equal(again.features(x), first.features(x))
    with pytest.raises(AssertionError, match="retrained"):  # another seed is another cache entry
        get_feature_classifier("digits", tmp_path, epochs=2, seed=1)


def test_sample_quality(digits, digits_clf):
    x_tr, _, x_te, y_te = digits
    real = sample_quality(x_te, x_tr, digits_clf)
    assert set(real) >= {"fd", "swd", "confidence", "class_entropy", "class_entropy_norm"}
    assert real["confidence"] > 0.9 and real["class_entropy_norm"] > 0.98
    noise = torch.rand(x_te.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    bad = sample_quality(noise, x_tr, digits_clf)
    assert bad["fd"] > 20 * real["fd"] and bad["swd"] > 5 * real["swd"]
    collapsed = sample_quality(x_te[y_te == 3], x_tr, digits_clf)  # mode collapse: one class only
    assert collapsed["class_entropy_norm"] < 0.2 < real["class_entropy_norm"]
    assert collapsed["fd"] > 5 * real["fd"]


# --------------------------------------------------------------------------------------------- image grid


def test_save_image_grid(digits, tmp_path):
    x_tr = digits[0]
    path = save_image_grid(x_tr[:10], tmp_path / "grids" / "digits.png", nrow=5, scale=4)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "L"
        assert im.size == (4 * (5 * 8 + 6), 4 * (2 * 8 + 3))  # (width, height), 1-px padding between tiles
        grid = np.asarray(im)
    first = to_uint8_images(x_tr[:1])[0, :, :, 0]
    assert np.array_equal(grid[4:36:4, 4:36:4], first)  # tile 0 starts after one padding pixel (x4)
    seventh = to_uint8_images(x_tr[6:7])[0, :, :, 0]  # row 1, column 1
    top, left = 4 * (1 + 8 + 1), 4 * (1 + 8 + 1)
    assert np.array_equal(grid[top:top + 32:4, left:left + 32:4], seventh)
    rgb = save_image_grid(torch.zeros(3, 3, 5, 5), tmp_path / "rgb.png", scale=1)
    with Image.open(rgb) as im:
        assert im.mode == "RGB" and im.size == (2 * 5 + 3, 2 * 5 + 3)
    assert not list(tmp_path.glob("grids/.*.tmp"))
