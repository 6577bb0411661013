"""DataModules read the real on-disk formats, yield [0, 1] images and fail clearly when data is missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from robustlip.core.errors import ConfigError
from robustlip.data import (
    CIFAR10DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    RestrictedImageNetDataModule,
    StaircaseDataModule,
    SVHNDataModule,
    TsiprasDataModule,
)
from robustlip.data.restricted_imagenet import SUPERCLASS_RANGES, SUPERCLASSES, wnid_to_superclass
from tests._fake_datasets import fake_wnids, relax_md5, write_cifar10, write_idx, write_image_tree, write_svhn

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def no_md5(monkeypatch):
    relax_md5(monkeypatch)


def _all(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.tensor(ys)


# -- MNIST / Fashion-MNIST (IDX) ------------------------------------------------------------------
def test_mnist_reads_idx_files_in_torchvision_layout(tmp_path):
    written = write_idx(tmp_path / "MNIST" / "raw", n_train=40, n_test=20)
    dm = MNISTDataModule(data_dir=tmp_path, val_size=10, batch_size=8)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (30, 10, 20)
    x, y = _all(dm.test_set)
    assert x.shape == (20, 1, 28, 28) and x.dtype == torch.float32
    # Pixels are the stored bytes / 255 (docs/authors-code.md §2), labels as written.
    torch.testing.assert_close(x[:, 0], torch.from_numpy(written["test"][0]).float() / 255)
    assert y.tolist() == written["test"][1].tolist()
    xb, _yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (8, 1, 28, 28) and 0 <= xb.min() and xb.max() <= 1
    assert set(_all(dm.train_eval_set)[1].tolist()) <= set(range(10))


def test_mnist_raw_dir_of_gz_files_is_decompressed_into_torchvision_layout(tmp_path):
    written = write_idx(tmp_path / "debian", gz=True)
    dm = FashionMNISTDataModule(data_dir=tmp_path / "data", raw_dir=tmp_path / "debian", val_size=0)
    dm.prepare_data()
    assert sorted(p.name for p in (tmp_path / "data" / "FashionMNIST" / "raw").iterdir()) == sorted(
        ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
    )
    dm.setup()
    x, y = _all(dm.train_set)
    torch.testing.assert_close(x[:, 0], torch.from_numpy(written["train"][0]).float() / 255)
    assert y.tolist() == written["train"][1].tolist()


@pytest.mark.parametrize("cls", [MNISTDataModule, FashionMNISTDataModule])
def test_missing_idx_dataset_fails_with_one_line_naming_path_and_fix(tmp_path, cls):
    dm = cls(data_dir=tmp_path / "nowhere", raw_dir=tmp_path / "also_nowhere", download=False)
    with pytest.raises(FileNotFoundError) as err:
        dm.setup()
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "nowhere" / cls.dataset_class.__name__ / "raw") in message
    assert "data.download=true" in message and "data.raw_dir" in message


@pytest.mark.fashion
@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="needs the Debian package dataset-fashion-mnist")
def test_fashion_mnist_config_reads_the_installed_debian_files(train_cfg):
    cfg = train_cfg(["data=fashion_mnist"])
    assert Path(cfg.data.raw_dir) == FASHION_DIR and cfg.data.eps == 0.1
    dm = instantiate(cfg.data)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 60000 and len(dm.val_set) == 6000
    assert len(dm.test_set) == 10000
    full_train = dm.train_set.dataset
    assert torch.bincount(full_train.targets).tolist() == [6000] * 10
    assert torch.bincount(dm.test_set.targets).tolist() == [1000] * 10
    assert full_train.targets[0] == 9  # the first training image is an ankle boot
    x, _y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.9
    xt, _ = dm.test_set[0]
    torch.testing.assert_close(xt[0], dm.test_set.data[0].float() / 255)


# -- CIFAR-10 (python pickles) ----------------------------------------------------------------------
def _is_aug01_of(aug: torch.Tensor, orig: torch.Tensor) -> bool:
    """True if ``aug`` is a 32-crop of ``orig`` zero-padded by 4, maybe flipped horizontally (aug01)."""
    aug, orig = (aug * 255).round(), (orig * 255).round()  # compare grey levels, not float rounding
    padded = torch.nn.functional.pad(orig, (4, 4, 4, 4))
    for i in range(9):
        for j in range(9):
            crop = padded[:, i : i + 32, j : j + 32]
            if torch.equal(aug, crop) or torch.equal(aug, crop.flip(-1)):
                return True
    return False


def test_cifar10_reads_pickles_and_augments_only_the_training_stream(tmp_path, no_md5):
    written = write_cifar10(tmp_path, per_batch=10, n_test=20)
    dm = CIFAR10DataModule(data_dir=tmp_path, val_size=0.2)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (40, 10, 20)
    x_te, y_te = _all(dm.test_set)
    torch.testing.assert_close(x_te, torch.from_numpy(written["test"][0]).float() / 255)
    assert y_te.tolist() == written["test"][1].tolist()
    plain = torch.from_numpy(written["train"][0]).float() / 255
    # train_eval and val are the un-augmented images.
    idx = dm.train_eval_set.indices
    torch.testing.assert_close(_all(dm.train_eval_set)[0], plain[idx])
    torch.testing.assert_close(_all(dm.val_set)[0], plain[dm.val_set.indices])
    # The training stream is aug01: a padded random crop, sometimes flipped, and not always the identity.
    torch.manual_seed(0)
    changed = 0
    for k in range(len(dm.train_set)):
        aug, label = dm.train_set[k]
        orig = plain[dm.train_set.indices[k]]
        assert _is_aug01_of(aug, orig)
        assert label == written["train"][1][dm.train_set.indices[k]]
        changed += not torch.allclose(aug, orig)
    assert changed > len(dm.train_set) // 2


def test_cifar10_without_augmentation_serves_plain_images(tmp_path, no_md5):
    written = write_cifar10(tmp_path)
    dm = CIFAR10DataModule(data_dir=tmp_path, val_size=0, augment=False)
    dm.setup()
    torch.testing.assert_close(_all(dm.train_set)[0], torch.from_numpy(written["train"][0]).float() / 255)


def test_missing_cifar10_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*data\.download=true"):
        CIFAR10DataModule(data_dir=tmp_path).setup()


# -- SVHN (.mat) --------------------------------------------------------------------------------------
def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path, no_md5):
    written = write_svhn(tmp_path, n_train=30, n_test=20)
    dm = SVHNDataModule(data_dir=tmp_path, val_size=5)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (25, 5, 20)
    x, y = _all(dm.test_set)
    assert x.shape == (20, 3, 32, 32)
    torch.testing.assert_close(x, torch.from_numpy(written["test"][0]).float() / 255)
    assert y.tolist() == written["test"][1].tolist() and 0 in y.tolist() and 10 not in y.tolist()


def test_missing_svhn_names_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"32x32\.mat.*data\.download=true"):
        SVHNDataModule(data_dir=tmp_path).setup()


# -- Restricted ImageNet (ImageFolder tree) ----------------------------------------------------------------
def test_superclass_ranges_are_the_203_classes_of_spec():
    sizes = {name: hi - lo for name, (lo, hi) in SUPERCLASS_RANGES.items()}
    assert sizes == {"dog": 118, "cat": 5, "frog": 3, "turtle": 5, "bird": 21, "primate": 18, "fish": 9,
                     "crab": 4, "insect": 20}
    assert sum(sizes.values()) == 203
    mapping = wnid_to_superclass(fake_wnids()[::-1])  # order given does not matter: sorted inside
    assert len(mapping) == 203
    assert SUPERCLASSES == ("bird", "cat", "crab", "dog", "fish", "frog", "insect", "primate", "turtle")
    w = fake_wnids()
    assert mapping[w[151]] == 3 and mapping[w[268]] == 3 and w[269] not in mapping  # dog, half-open
    assert mapping[w[30]] == 5 and mapping[w[33]] == 8 and mapping[w[80]] == 0
    with pytest.raises(ConfigError, match="wnids_file"):
        wnid_to_superclass(w[:500])


# ImageNet indices with images in the fake tree, and the label each must get (None = not used).
_PICK = {151: 3, 268: 3, 30: 5, 33: 8, 80: 0, 300: 6, 0: None, 500: None}


def _imagenet_tree(root: Path, all_folders: bool) -> None:
    w = fake_wnids()
    for split, count in (("train", 3), ("val", 1)):
        empty = [name for name in w if name not in {w[i] for i in _PICK}] if all_folders else []
        write_image_tree(root / split, {w[i]: count for i in _PICK}, empty=empty, seed=len(split))


def test_restricted_imagenet_maps_wnid_folders_to_superclasses(tmp_path):
    _imagenet_tree(tmp_path, all_folders=True)
    dm = RestrictedImageNetDataModule(data_dir=tmp_path, val_size=0, num_workers=0, persistent_workers=False)
    dm.setup()
    expected_train = sorted(label for label in _PICK.values() if label is not None for _ in range(3))
    x, y = _all(dm.train_eval_set)
    assert sorted(y.tolist()) == expected_train  # indices 0 and 500 are not in any super-class
    assert x.shape == (18, 3, 64, 64) and x.min() >= 0 and x.max() <= 1
    _x_te, y_te = _all(dm.test_set)
    assert sorted(y_te.tolist()) == sorted(v for v in _PICK.values() if v is not None)
    # Test / train-eval views are deterministic center crops; training crops are random (padding 8).
    torch.testing.assert_close(dm.test_set[0][0], dm.test_set[0][0])
    torch.manual_seed(0)
    draws = torch.stack([dm.train_set[0][0] for _ in range(6)])
    assert draws.shape == (6, 3, 64, 64) and not all(torch.equal(draws[0], d) for d in draws[1:])


def test_restricted_imagenet_with_a_wnids_file_needs_only_the_used_folders(tmp_path):
    _imagenet_tree(tmp_path, all_folders=False)
    wnids = tmp_path / "LOC_synset_mapping.txt"
    wnids.write_text("".join(f"{w} some name, other name\n" for w in fake_wnids()))
    dm = RestrictedImageNetDataModule(data_dir=tmp_path, wnids_file=wnids, val_size=0, num_workers=0)
    dm.setup()
    assert sorted(_all(dm.test_set)[1].tolist()) == sorted(v for v in _PICK.values() if v is not None)
    # Without the list, 8 folders cannot locate the 1000-class ranges: a clear error, not wrong labels.
    with pytest.raises(ConfigError, match="wnids_file"):
        RestrictedImageNetDataModule(data_dir=tmp_path, num_workers=0).setup()


def test_restricted_imagenet_reads_the_authors_superclass_tree_and_can_undersample(tmp_path):
    counts = {"bird": 4, "cat": 2, "crab": 2, "dog": 6, "fish": 2, "frog": 2, "insect": 3, "primate": 2, "turtle": 2}
    write_image_tree(tmp_path / "train", counts, ext="png")
    write_image_tree(tmp_path / "val", {name: 1 for name in counts}, ext="png")
    dm = RestrictedImageNetDataModule(data_dir=tmp_path, val_size=0, num_workers=0)
    dm.setup()
    assert dm.resolved_layout() == "superclass"
    labels = _all(dm.train_eval_set)[1]
    assert torch.bincount(labels).tolist() == [counts[name] for name in SUPERCLASSES]  # unbalanced, as docs/authors-code.md §2
    balanced = RestrictedImageNetDataModule(data_dir=tmp_path, val_size=0, num_workers=0, balance="undersample")
    balanced.setup()
    assert torch.bincount(_all(balanced.train_eval_set)[1]).tolist() == [2] * 9
    assert len(balanced.test_set) == 9  # the test set is never re-sampled


def _photo_like(width: int = 500, height: int = 375) -> Image.Image:
    """A smooth image with texture, the size of a typical ImageNet photo: resizing it rounds like one."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    noise = np.random.default_rng(0).normal(0, 12, (height, width, 3))
    base = np.stack([127 + 100 * np.sin(xx / 37 + c) * np.cos(yy / 23 - c) for c in range(3)], axis=-1)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def test_restricted_imagenet_resizes_pil_images_as_the_authors_bit_for_bit(tmp_path):
    from torchvision import transforms as tv1

    image = _photo_like()
    for name in SUPERCLASSES:  # the authors' super-class tree; ImageFolder wants every folder non-empty
        for split in ("train", "val"):
            (tmp_path / split / name).mkdir(parents=True)
            image.save(tmp_path / split / name / "a.png")
    dm = RestrictedImageNetDataModule(data_dir=tmp_path, val_size=0, num_workers=0)
    dm.setup()
    # The authors' lolip/datasets/__init__.py L63-83: v1 transforms on the PIL image ImageFolder loads.
    test_view = tv1.Compose([tv1.Resize(72), tv1.CenterCrop(64), tv1.ToTensor()])
    train_view = tv1.Compose([tv1.Resize(72), tv1.RandomCrop(64, padding=8), tv1.ToTensor()])
    assert torch.equal(dm.test_set[0][0], test_view(image))
    assert torch.equal(dm.train_eval_set[0][0], test_view(image))
    for seed in range(3):
        torch.manual_seed(seed)
        ours = dm.train_set[0][0]
        torch.manual_seed(seed)
        assert torch.equal(ours, train_view(image)), seed


def test_restricted_imagenet_preset_and_history_name_what_no_public_commit_settles():
    # docs/authors-code.md §6.1, §9: the published row is not reproducible from a public commit; the preset must
    # say so, and the history must not credit 024a4e3 (experiment01.py only) with Restricted ImageNet's clip.
    root = Path(__file__).resolve().parents[1]
    preset = (root / "conf/experiment/table3_restricted_imagenet.yaml").read_text()
    for unknown in ("e0c2c27", "DataParallel", "64 of the 128", "no advbeta branch", "a88991d", "not clip"):
        assert unknown in preset, unknown
    history = (root / "docs/authors-code.md").read_text()
    section_6_1 = history[history.index("### 6.1 PGD"):history.index("### 6.2")]
    assert "adds `clip_min=0, clip_max=1` to `experiments/experiment01.py` only" in section_6_1
    assert "`experiments/restrictedImgnet.py` gets the clip only in\n`a88991d`" in section_6_1
    section_9 = history[history.index("## 9. What an experiment records"):history.index("### Which model strings")]
    assert "DataParallel(device_ids=[0, 1])" in section_9 and "no `advbeta` branch" in section_9


def test_missing_restricted_imagenet_folder_names_the_path(tmp_path):
    dm = RestrictedImageNetDataModule(data_dir=tmp_path / "imagenet", num_workers=0)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "imagenet" / "train")):
        dm.setup()


# -- synthetic sets ----------------------------------------------------------------------------------------
def test_tsipras_distribution_has_a_robust_and_many_weak_features():
    dm = TsiprasDataModule(side=28, n_train=4000, n_test=500, val_size=0)
    dm.setup()
    x, y = dm.train_set.dataset.tensors
    assert x.shape == (4000, 1, 28, 28) and set(y.unique().tolist()) == {0, 1}
    assert x.min() >= 0 and x.max() <= 1
    sign = (y * 2 - 1).float()
    features = (x.flatten(1) - 0.5) / dm.scale
    robust, weak = features[:, 0], features[:, 1:]
    assert dm.d == 783 and dm.eta == pytest.approx(3 / np.sqrt(783))
    assert ((robust * sign) > 0).float().mean() == pytest.approx(0.95, abs=0.015)
    assert (weak * sign[:, None]).mean() == pytest.approx(dm.eta, abs=0.01)
    # Averaging the weak features classifies well; shifting each pixel by eps = 2*eta*scale against
    # the label (the attack of Tsipras et al.) makes the same classifier almost always wrong.
    average = lambda pixels: ((pixels.flatten(1)[:, 1:] - 0.5).mean(1) > 0).long()
    assert (average(x) == y).float().mean() > 0.98
    attacked = x - dm.pixel_eps * sign[:, None, None, None]
    assert (average(attacked) == y).float().mean() < 0.05
    # Same seed, same data; the config's eps is the radius 2*eta in pixels.
    again = TsiprasDataModule(side=28, n_train=4000, n_test=500, val_size=0)
    again.setup()
    assert torch.equal(again.train_set.dataset.tensors[0], x)
    assert dm.pixel_eps == pytest.approx(0.0268, abs=1e-4)


def test_staircase_samples_stairs_with_spec_probabilities(train_cfg):
    dm = StaircaseDataModule(n_train=20000, n_test=100, val_size=0)
    dm.setup()
    x, y = dm.train_set.dataset.tensors
    assert x.shape == (20000, 1, 1, 1) and x.min() >= 0 and x.max() <= 1
    freq = torch.bincount(y, minlength=10).float() / len(y)
    torch.testing.assert_close(freq, StaircaseDataModule.stair_probabilities().float(), atol=0.01, rtol=0)
    coord = x.flatten().double() * (9 + 2 / 3) - 1 / 3
    on_stair = (coord - coord.round()).abs() < 1e-4
    assert 0.99 < on_stair.float().mean() < 1.0  # ~0.5 % shifted by ±1/3
    assert torch.equal(coord[on_stair].round().long(), y[on_stair])
    cfg = train_cfg(["data=staircase"])
    eps_coord = cfg.data.eps * (9 + 2 / 3)
    assert eps_coord == pytest.approx(1 / 3)


def test_synthetic_sets_reject_shapes_that_contradict_their_side():
    with pytest.raises(ConfigError, match="in_features"):
        TsiprasDataModule(side=10, in_features=784)
    with pytest.raises(ConfigError, match="num_classes"):
        StaircaseDataModule(num_classes=2)


# -- configs -----------------------------------------------------------------------------------------------
PAPER = {  # docs/authors-code.md §8: eps, batch size, architecture, optimizer, epochs, milestones
    "mnist": (0.1, 64, "cnn1", "sgd", 160, [40, 80, 120, 140]),
    "svhn": (0.031, 64, "wrn_40_10", "sgd", 60, [30, 50]),
    "cifar10": (0.031, 64, "wrn_40_10", "sgd", 120, [40, 80, 100]),
    "restricted_imagenet": (0.005, 128, "resnet50", "adam", 70, [40, 60]),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_data_configs_carry_the_paper_setting(train_cfg, name):
    from robustlip.schedules import paper_milestones

    cfg = train_cfg([f"data={name}"])
    eps, batch, arch, optimizer, epochs, milestones = PAPER[name]
    assert (cfg.data.eps, cfg.data.batch_size) == (eps, batch)
    paper = cfg.data.paper
    assert (paper.model, paper.optimizer, paper.max_epochs, list(paper.milestones)) == (arch, optimizer, epochs, milestones)
    assert paper_milestones(paper.max_epochs) == milestones  # consistent with the schedule the trainer uses
    assert paper.batch_size == batch
    instantiate(cfg.data)  # the DataModule accepts the paper node (presets read it by interpolation)
