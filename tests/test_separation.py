"""Separation analysis (Table 1): the fast engine must equal brute force exactly, and the entry must write it all.

"Exactly" means ``numpy.array_equal`` on the distances (the integer k/255 for 8-bit images, the
float32 max for other data) and on the returned indices (ties go to the smallest reference index).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset
from torchvision.transforms import v2

from robustlip.core.errors import ConfigError
from robustlip.data.arrays import load_arrays, raw_storage
from robustlip.metrics.separation import (
    _common_inputs,
    _search_torch,
    brute_force_nearest_other_class,
    closest_pairs,
    kept_indices,
    nearest_other_class,
    summarize,
    to_grid,
)
from robustlip.separation import separation
from tests.conftest import compose_train_cfg

FASHION = Path("/usr/share/datasets/fashion-mnist")


def assert_same(fast, slow) -> None:
    assert fast.grid == slow.grid
    np.testing.assert_array_equal(fast.distance, slow.distance)
    np.testing.assert_array_equal(fast.index, slow.index)


def random_case(rng, n_q, n_r, dim, n_classes, levels):
    """Random pixels on a grid of ``levels`` values: few levels force many ties and duplicates."""
    xq = rng.integers(0, levels, (n_q, dim))
    xr = rng.integers(0, levels, (n_r, dim))
    return xq, rng.integers(0, n_classes, n_q), xr, rng.integers(0, n_classes, n_r)


# ------------------------------------------------------------------------------------------------
# The integer grid
# ------------------------------------------------------------------------------------------------
def test_to_grid_decodes_8bit_encodings_and_refuses_anything_between_levels():
    k = torch.arange(256, dtype=torch.uint8)
    divided = k.float().div(255).numpy()  # ToTensor: correctly rounded k/255
    multiplied = v2.ToDtype(torch.float32, scale=True)(k.reshape(1, 16, 16)).flatten().numpy()  # DataModules
    assert not np.array_equal(divided, multiplied)  # two encodings, 1 ulp apart for some levels
    np.testing.assert_array_equal(to_grid(divided), k.numpy())
    np.testing.assert_array_equal(to_grid(multiplied), k.numpy())
    assert to_grid(divided + np.float32(0.01 / 255)) is None  # a hundredth of a level off the grid
    assert to_grid(np.array([0.5], dtype=np.float32)) is None  # 127.5 / 255
    assert to_grid(np.array([1.5], dtype=np.float32)) is None  # outside [0, 1]
    as_uint8 = k.numpy()
    assert to_grid(as_uint8) is as_uint8


# ------------------------------------------------------------------------------------------------
# Exact equality with brute force
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "representation,levels",
    [("uint8", 256), ("grid_float", 256), ("grid_float", 3), ("float", 256), ("float", 4)],
)
def test_engine_equals_brute_force_on_random_data(representation, levels):
    rng = np.random.default_rng(levels)
    for trial in range(4):
        n_q, n_r = rng.integers(1, 200, 2)
        dim = int(rng.choice([1, 7, 64, 65, 100, 200]))
        xq, yq, xr, yr = random_case(rng, n_q, n_r, dim, int(rng.integers(2, 6)), levels)
        if representation == "uint8":
            xq, xr = xq.astype(np.uint8), xr.astype(np.uint8)
        elif representation == "grid_float":
            xq, xr = (xq.astype(np.float32) / 255).astype(np.float32), (xr.astype(np.float32) / 255).astype(np.float32)
        else:  # off the 8-bit grid: the float32 path
            xq, xr = xq.astype(np.float32) / np.float32(levels - 0.5), xr.astype(np.float32) / np.float32(levels - 0.5)
        fast = nearest_other_class(xq, yq, xr, yr, engine="numba")
        assert fast.grid == ("float32" if representation == "float" else "uint8")
        assert_same(fast, brute_force_nearest_other_class(xq, yq, xr, yr))


def test_train_train_duplicates_and_ties():
    """A cross-class duplicate is at distance 0; a same-class one is not a neighbour; ties pick the first."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (60, 80)).astype(np.uint8)
    y = rng.integers(0, 3, 60)
    x[10] = x[3]  # cross-class duplicate pair (3, 10)
    y[3], y[10] = 0, 1
    x[20] = x[21]  # same-class duplicate pair (20, 21)
    y[20] = y[21] = 2
    x[40] = x[41] = x[42]  # 40 has two equally close other-class points: 41 and 42 (distance 0)
    y[40], y[41], y[42] = 0, 1, 2
    fast = nearest_other_class(x, y, x, y, engine="numba")
    assert_same(fast, brute_force_nearest_other_class(x, y, x, y))
    assert fast.distance[3] == 0 and fast.index[3] == 10 and fast.index[10] == 3
    assert fast.distance[20] > 0 and y[fast.index[20]] != 2
    assert fast.distance[40] == 0 and fast.index[40] == 41
    assert (fast.index != np.arange(60)).all()  # never itself
    assert (y[fast.index] != y).all()


def test_float_path_on_real_digits_equals_brute_force():
    """scikit-learn's digits are k/16: off the 8-bit grid, so this runs the float32 engine on real images."""
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0).reshape(len(digits.images), -1)
    y = digits.target
    xtr, ytr, xte, yte = x[:1200], y[:1200], x[1200:], y[1200:]
    for q, yq in ((xtr, ytr), (xte, yte)):
        fast = nearest_other_class(q, yq, xtr, ytr, engine="numba")
        assert fast.grid == "float32"
        assert_same(fast, brute_force_nearest_other_class(q, yq, xtr, ytr))


def test_uint8_path_on_real_images_equals_brute_force():
    """Real image structure on the 8-bit grid: digits rescaled to k*15/255 (Fashion-MNIST below, if present)."""
    digits = load_digits()
    x = (digits.images.reshape(len(digits.images), -1) * 15).astype(np.uint8)
    x = torch.from_numpy(x).float().div(255)  # as a DataModule would hand it over
    y = torch.from_numpy(digits.target)
    fast = nearest_other_class(x, y, x, y, engine="numba")
    assert fast.grid == "uint8"
    assert_same(fast, brute_force_nearest_other_class(x, y, x, y))
    # k/255 is the exact distance of the 8-bit images: within float32 rounding of the float computation.
    i = np.arange(len(x))
    direct = (x[i] - x[fast.index]).abs().amax(dim=1).double().numpy()
    np.testing.assert_allclose(fast.distance, direct, atol=1e-6, rtol=0)


@pytest.mark.fashion
@pytest.mark.skipif(not FASHION.is_dir(), reason="needs /usr/share/datasets/fashion-mnist")
def test_fashion_mnist_subset_equals_brute_force():
    import gzip

    from robustlip.data import FashionMNISTDataModule

    with gzip.open(FASHION / "train-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)[:3000]
    with gzip.open(FASHION / "train-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:3000].astype(np.int64)
    assert FashionMNISTDataModule.input_shape == (1, 28, 28)
    queries = x[:300]
    fast = nearest_other_class(queries, y[:300], x, y, engine="numba")
    assert_same(fast, brute_force_nearest_other_class(queries, y[:300], x, y))


def test_torch_engine_equals_brute_force_on_cpu():
    """The CUDA path's code, run on CPU tensors: same distances, same tie rule, across tile borders."""
    rng = np.random.default_rng(5)
    for levels, dtype in ((256, np.uint8), (3, np.uint8), (256, np.float32)):
        xq, yq, xr, yr = random_case(rng, 70, 90, 33, 3, levels)
        xq, xr = xq.astype(dtype), xr.astype(dtype)
        if dtype == np.float32:
            xq, xr = xq / np.float32(250.5), xr / np.float32(250.5)
        slow = brute_force_nearest_other_class(xq, yq, xr, yr)
        q, yq_, r, yr_, _, grid = _common_inputs(xq, yq, xr, yr)
        best, idx = _search_torch(q, yq_, r, yr_, "cpu", query_chunk=16, ref_chunk=20)
        scale = 255.0 if grid == "uint8" else 1.0
        np.testing.assert_array_equal(best.astype(np.float64) / scale, slow.distance)
        np.testing.assert_array_equal(idx, slow.index)
        assert_same(nearest_other_class(xq, yq, xr, yr, engine="torch", device="cpu"), slow)


def test_single_class_has_no_neighbour():
    x = np.random.default_rng(0).random((5, 10), dtype=np.float32)
    res = nearest_other_class(x, np.zeros(5), x, np.zeros(5), engine="numba")
    assert np.isinf(res.distance).all() and (res.index == -1).all()
    assert summarize(res.distance)["count"] == 0


def test_bad_inputs_are_named():
    x = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="features"):
        nearest_other_class(x, [0, 1, 2], np.zeros((3, 5)), [0, 1, 2])
    with pytest.raises(ValueError, match="NaN"):
        nearest_other_class(np.full((3, 4), np.nan), [0, 1, 2], x, [0, 1, 2])
    with pytest.raises(ValueError, match="engine"):
        nearest_other_class(x, [0, 1, 2], x, [0, 1, 2], engine="faiss")


# ------------------------------------------------------------------------------------------------
# Summaries and pairs
# ------------------------------------------------------------------------------------------------
def test_summary_statistics():
    stats = summarize(np.array([0.5, 0.1, 0.3, np.inf, 0.9]))
    assert stats == {"min": 0.1, "raw_min": 0.1, "skip_smallest": 0, "min_rule": "minimum of all distances",
                     "skipped": [], "mean": pytest.approx(0.45), "median": pytest.approx(0.4),
                     "p01": pytest.approx(0.1 + 0.01 * 3 * 0.2), "count": 4}


def authors_filtered_min(d: np.ndarray, k: int) -> float:
    """The authors' notebook (notebooks/dataset_dist.ipynb): SVHN keeps d >= np.partition(d, 5)[:5].max()
    (k = 4), Restricted ImageNet d >= np.partition(d, 6)[6] (k = 6); Table 1 is the min of what is kept."""
    threshold = np.partition(d, k + 1)[:k + 1].max() if k == 4 else np.partition(d, k)[k]
    return float(d[d >= threshold].min())


@pytest.mark.parametrize("k", [4, 6])
def test_skip_smallest_reports_what_the_authors_notebook_reports(k):
    rng = np.random.default_rng(k)
    # On the 8-bit grid, with ties among and right after the smallest values (duplicates give 0).
    d = rng.integers(0, 256, 500) / 255.0
    d[:3] = 0.0
    d[3:9] = np.sort(d)[10]
    stats = summarize(d, skip_smallest=k, query_ids=np.arange(1000, 1500))
    assert stats["min"] == authors_filtered_min(d, k) == np.sort(d)[k]
    assert stats["raw_min"] == d.min() == 0.0
    assert stats["skip_smallest"] == k and f"skipping the {k} smallest" in stats["min_rule"]
    assert len(stats["skipped"]) == k
    assert [s["query_index"] for s in stats["skipped"][:3]] == [1000, 1001, 1002]  # ties: smaller index first
    assert all(s["distance"] <= stats["min"] for s in stats["skipped"])
    # Only the minimum changes: the other statistics describe every distance.
    assert (stats["mean"], stats["count"]) == (pytest.approx(d.mean()), 500)


def test_skip_smallest_is_checked_per_split_with_one_line_errors():
    from robustlip.metrics.separation import check_skip_smallest

    assert check_skip_smallest({"train_train": 4}) == {"train_train": 4, "test_train": 0}
    assert check_skip_smallest(None) == {"train_train": 0, "test_train": 0}
    for bad, message in [({"train_train": -1}, r"skip_smallest.train_train=-1 is not allowed; it must be an integer >= 0"),
                         ({"train_test": 2}, r"skip_smallest.train_test=2 is not allowed; the splits are"),
                         ({"test_train": 1.5}, r"skip_smallest.test_train=1.5"),
                         (3, r"skip_smallest=3 is not allowed")]:
        with pytest.raises(ConfigError, match=message) as err:
            check_skip_smallest(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"skip_smallest.train_train=3 is not allowed; the split has only 2 distances"):
        summarize(np.array([0.1, 0.2, np.inf]), skip_smallest=3, split="train_train")


def test_closest_pairs_are_consistent_and_listed_once():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (120, 50)).astype(np.uint8)
    y = rng.integers(0, 4, 120)
    res = nearest_other_class(x, y, x, y, engine="numba")
    pairs = closest_pairs(res, y, y, k=10, symmetric=True)
    assert len(pairs) == 10
    assert [p["distance"] for p in pairs] == sorted(p["distance"] for p in pairs)
    assert pairs[0]["distance"] == res.distance.min()
    keys = {(min(p["query_index"], p["train_index"]), max(p["query_index"], p["train_index"])) for p in pairs}
    assert len(keys) == 10
    for p in pairs:
        a, b = x[p["query_index"]].astype(int), x[p["train_index"]].astype(int)
        assert np.abs(a - b).max() / 255 == p["distance"]
        assert p["query_label"] == y[p["query_index"]] != p["train_label"] == y[p["train_index"]]


def test_kept_indices_validates_drop_indices():
    np.testing.assert_array_equal(kept_indices(5, [1, 3]), [0, 2, 4])
    np.testing.assert_array_equal(kept_indices(3, []), [0, 1, 2])
    with pytest.raises(ConfigError, match="drop_indices"):
        kept_indices(5, [7])


# ------------------------------------------------------------------------------------------------
# The entry point: robustlip-separation data=digits
# ------------------------------------------------------------------------------------------------
def test_separation_entry_writes_everything(train_cfg, tmp_path):
    cfg = train_cfg(["data=digits", "closest_pairs=5"], config_name="separation")
    assert cfg.task_name == "separation" and cfg.data.val_size == 0
    payload = separation(cfg)
    out = Path(cfg.paths.output_dir)
    for name in ("separation.json", "config.yaml"):
        assert (out / name).is_file()
    on_disk = json.loads((out / "separation.json").read_text())
    assert on_disk["eps"] == 0.1 and on_disk["n_train"] == 1347 and on_disk["n_test"] == 450
    for split, n in (("train_train", 1347), ("test_train", 450)):
        stats = on_disk["splits"][split]
        assert set(stats) >= {"min", "mean", "median", "p01", "count", "eps", "closest_pairs"}
        assert stats["count"] == n and len(stats["closest_pairs"]) == 5
        d = np.load(out / f"{split}_distances.npy")
        nearest = np.load(out / f"{split}_nearest.npy")
        assert d.shape == (n,) and nearest.shape == (n,)
        assert stats["min"] == d.min() == stats["closest_pairs"][0]["distance"]
        for png in (f"{split}_hist.png", f"{split}_closest_pairs.png"):
            assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert payload["splits"]["train_train"]["min"] == on_disk["splits"]["train_train"]["min"]


def test_skip_smallest_in_the_entry_keeps_every_distance_on_disk(train_cfg, tmp_path):
    cfg = train_cfg(["data=digits", "skip_smallest.train_train=3", "closest_pairs=2"], config_name="separation")
    payload = separation(cfg)
    out = Path(cfg.paths.output_dir)
    d = np.load(out / "train_train_distances.npy")
    assert np.isfinite(d).all() and len(d) == 1347  # nothing dropped from the per-example file
    tt, te = payload["splits"]["train_train"], payload["splits"]["test_train"]
    assert tt["raw_min"] == d.min() and tt["min"] == np.sort(d)[3] and tt["skip_smallest"] == 3
    assert [s["distance"] for s in tt["skipped"]] == sorted(d)[:3]
    assert all(d[s["query_index"]] == s["distance"] for s in tt["skipped"])
    assert te["min"] == te["raw_min"] == np.load(out / "test_train_distances.npy").min() and te["skip_smallest"] == 0
    on_disk = json.loads((out / "separation.json").read_text())
    assert on_disk["splits"]["train_train"]["min_rule"] == tt["min_rule"]


def test_drop_indices_removes_the_closest_pair(train_cfg, tmp_path):
    first = separation(train_cfg(["data=digits", "closest_pairs=3"], config_name="separation"))
    pair = first["splits"]["train_train"]["closest_pairs"][0]
    drop = [pair["query_index"], pair["train_index"]]
    cfg = compose_train_cfg(tmp_path / "dropped", ["data=digits", f"drop_indices=[{drop[0]},{drop[1]}]"],
                            config_name="separation")
    second = separation(cfg)
    out = Path(cfg.paths.output_dir)
    d = np.load(out / "train_train_distances.npy")
    nearest = np.load(out / "train_train_nearest.npy")
    assert np.isnan(d[drop]).all() and (nearest[drop] == -1).all()
    assert not np.isin(nearest, drop).any()  # no one's neighbour is a dropped example
    assert not np.isin(np.load(out / "test_train_nearest.npy"), drop).any()
    assert second["splits"]["train_train"]["count"] == 1347 - 2
    assert second["splits"]["train_train"]["min"] >= first["splits"]["train_train"]["min"]
    assert second["drop_indices"] == sorted(drop)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "svhn"])
def test_raw_storage_reads_what_the_datamodule_serves(name, tmp_path, monkeypatch):
    """The fast read of torchvision's uint8 storage equals reading every example through the DataLoader."""
    from tests._fake_datasets import relax_md5, write_fake

    relax_md5(monkeypatch)
    cfg = compose_train_cfg(tmp_path, [f"data={name}"], config_name="separation")
    write_fake(name, Path(cfg.paths.data_dir))
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    for dataset in (datamodule.train_eval_set, datamodule.test_set):
        assert raw_storage(dataset) is not None  # the fast path is taken...
        fast_x, fast_y = load_arrays(dataset)
        slow_x, slow_y = load_arrays(dataset, raw=False)  # ...and agrees with the slow one
        assert fast_x.dtype == slow_x.dtype == np.uint8
        np.testing.assert_array_equal(fast_x, slow_x)
        np.testing.assert_array_equal(fast_y, slow_y)


def test_raw_storage_refuses_a_transform_that_changes_pixels(tmp_path):
    from torchvision.datasets import MNIST

    from tests._fake_datasets import write_idx

    write_idx(tmp_path / "MNIST" / "raw")
    flipped = MNIST(str(tmp_path), train=True, transform=v2.Compose([
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.RandomHorizontalFlip(1.0)]))
    assert raw_storage(flipped) is None
    assert raw_storage(TensorDataset(torch.zeros(4, 1, 2, 2), torch.zeros(4))) is None  # no .data


@pytest.mark.parametrize("row", ["mnist", "cifar10", "svhn", "restricted_imagenet", "quick"])
def test_table1_presets_select_the_row_and_skip_what_the_authors_skip(row, tmp_path):
    cfg = compose_train_cfg(tmp_path, [f"experiment=table1/{row}"], config_name="separation")
    assert cfg.data.val_size == 0 and (row == "quick" or cfg.data.name == row)
    # The authors' notebook: 4 (SVHN) and 6 (Restricted ImageNet) smallest train-train distances; nothing else.
    assert dict(cfg.skip_smallest) == {"train_train": {"svhn": 4, "restricted_imagenet": 6}.get(row, 0), "test_train": 0}
    assert list(cfg.drop_indices) == []
