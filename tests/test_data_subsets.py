"""``data.train_size`` and ``data.classes``: the same subsets on every DataModule, checked against their definitions.

train_size: a seeded, stratified subset of the training split, drawn after the validation split (so val
and test do not move); classes: the listed labels only, relabelled 0..k-1 in the given order, with
``data.num_classes`` (and so every model's output layer) following.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from robustlip.core.errors import ConfigError
from robustlip.data import DigitsDataModule, MNISTDataModule, TsiprasDataModule
from robustlip.data.base import dataset_labels
from robustlip.runs.config import config_dir, instantiate_group
from tests._fake_datasets import write_idx

DATA_CONFIGS = sorted(p.stem for p in (config_dir() / "data").glob("*.yaml"))


def _labels(dataset) -> torch.Tensor:
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])


# -- train_size -----------------------------------------------------------------------------------------------
def test_train_size_is_a_stratified_seeded_nested_subset_drawn_after_the_validation_split():
    full = DigitsDataModule(seed=3)
    full.setup()
    full_labels = dataset_labels(full.train_set)
    n = len(full.train_set)
    share = torch.bincount(full_labels, minlength=10).double() / n
    subsets = {}
    for size in (50, 200, 700):
        dm = DigitsDataModule(seed=3, train_size=size)
        dm.setup()
        assert len(dm.train_set) == size and len(dm.train_eval_set) == size
        # Validation and test examples are the same for every train size.
        assert dm.val_set.indices == full.val_set.indices and len(dm.test_set) == len(full.test_set)
        picked = set(dm.train_set.indices)
        assert picked <= set(full.train_set.indices)
        assert not picked & set(full.val_set.indices)
        # Stratified: every class has its proportional count, up to one example.
        counts = torch.bincount(dataset_labels(dm.train_set), minlength=10).double()
        assert (counts - size * share).abs().max() <= 1.0
        # Train accuracy is measured on the examples trained on.
        assert dm.train_eval_set.indices == dm.train_set.indices
        subsets[size] = picked
    assert subsets[50] < subsets[200] < subsets[700]  # a sweep adds examples, it does not redraw them
    again = DigitsDataModule(seed=3, train_size=200)
    again.setup()
    other = DigitsDataModule(seed=4, train_size=200)
    other.setup()
    assert set(again.train_set.indices) == subsets[200]
    assert set(other.train_set.indices) != subsets[200]


def test_train_size_as_a_fraction_and_the_default_keep_the_old_split():
    dm = DigitsDataModule(train_size=0.25)
    dm.setup()
    plain = DigitsDataModule()
    plain.setup()
    assert len(dm.train_set) == round(0.25 * len(plain.train_set))
    # Without the new keys, the split is the one every earlier run used (seeded permutation, val first).
    n = len(plain.train_set) + len(plain.val_set)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    assert plain.train_set.indices == sorted(order[round(0.1 * n):])
    whole = DigitsDataModule(train_size=1.0)
    whole.setup()
    assert whole.train_set.indices == plain.train_set.indices


def test_train_size_larger_than_the_training_split_names_key_value_and_size():
    dm = DigitsDataModule(train_size=5000)
    with pytest.raises(ConfigError) as err:
        dm.setup()
    message = str(err.value)
    assert "\n" not in message and "data.train_size=5000" in message and "1212 examples" in message


def test_a_train_eval_size_above_train_size_measures_the_whole_subset_but_above_the_split_is_refused():
    # A preset's train_eval_size (512) with a small train_size sweep point: training metrics over all 20.
    dm = DigitsDataModule(val_size=0, train_size=20, train_eval_size=512)
    dm.setup()
    assert len(dm.train_eval_set) == len(dm.train_set) == 20
    assert sorted(dm.train_eval_set.indices) == sorted(dm.train_set.indices)
    # Without train_size, a size above the training split is still a one-line error naming it.
    too_big = DigitsDataModule(val_size=0, train_eval_size=5000)
    with pytest.raises(ConfigError, match=r"data.train_eval_size=5000 is larger than the training set"):
        too_big.setup()


@pytest.mark.parametrize("bad", [0, -3, 1.5, 0.0, True, "many"])
def test_bad_train_size_values_are_rejected_at_construction(bad):
    with pytest.raises(ConfigError, match=r"^data\.train_size=.* is not allowed"):
        DigitsDataModule(train_size=bad)


# -- classes --------------------------------------------------------------------------------------------------
def test_classes_keep_only_the_listed_labels_relabelled_in_the_given_order():
    full = DigitsDataModule(val_size=0)
    full.setup()
    dm = DigitsDataModule(val_size=0, classes=[7, 2])
    dm.setup()
    assert dm.num_classes == 2
    for mine, theirs in ((dm.train_set, full.train_set), (dm.test_set, full.test_set)):
        old = _labels(theirs)
        keep = torch.nonzero((old == 7) | (old == 2)).flatten()
        new = _labels(mine)
        assert len(mine) == len(keep)
        assert torch.equal(new, (old[keep] == 2).long())  # 7 -> 0, 2 -> 1
        for j in (0, len(keep) - 1):
            assert torch.equal(mine[j][0], theirs[int(keep[j])][0])
    assert torch.equal(dm.test_set.targets, _labels(dm.test_set))


def test_classes_on_torchvision_files_and_on_a_synthetic_set(tmp_path):
    written = write_idx(tmp_path / "MNIST" / "raw", n_train=60, n_test=30)
    dm = MNISTDataModule(data_dir=tmp_path, val_size=0, classes=[3, 8, 5])
    dm.setup()
    y_test = written["test"][1]
    expected = [[3, 8, 5].index(int(c)) for c in y_test if c in (3, 8, 5)]
    assert _labels(dm.test_set).tolist() == expected
    assert set(_labels(dm.train_set).tolist()) == {0, 1, 2}
    # The reversed order of Tsipras's two classes swaps the labels, example for example.
    plain = TsiprasDataModule(side=4, n_train=200, n_test=50, val_size=0)
    plain.setup()
    swapped = TsiprasDataModule(side=4, n_train=200, n_test=50, val_size=0, classes=[1, 0])
    swapped.setup()
    assert torch.equal(_labels(swapped.test_set), 1 - _labels(plain.test_set))


def test_classes_and_train_size_together_stratify_on_the_new_labels():
    dm = DigitsDataModule(classes=[0, 1, 2], train_size=30, seed=1)
    dm.setup()
    counts = torch.bincount(_labels(dm.train_set), minlength=3)
    assert counts.sum() == 30 and counts.min() >= 9 and counts.max() <= 11


@pytest.mark.parametrize(
    ("classes", "match"),
    [([0, 10], r"^data\.classes=\[0, 10\] is not allowed for data=digits: label 10 does not exist; its labels are 0\.\.9$"),
     ([-1], "label -1 does not exist"),
     ([3, 3], "each label may appear once"),
     ([], "non-empty list"),
     (["cat"], "integer labels")],
)
def test_bad_classes_are_one_line_errors(classes, match):
    with pytest.raises(ConfigError, match=match):
        DigitsDataModule(classes=classes)
    with pytest.raises(ConfigError, match="label 2 does not exist"):
        TsiprasDataModule(classes=[0, 2])


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_every_data_config_has_the_keys_and_num_classes_follows_classes(train_cfg, name):
    cfg = train_cfg([f"data={name}"])
    assert cfg.data.train_size is None and cfg.data.classes is None
    full = instantiate(cfg.data).num_classes
    assert cfg.data.num_classes == full
    cfg = train_cfg([f"data={name}", "data.classes=[1,0]", "data.train_size=0.5"])
    assert cfg.data.num_classes == 2
    dm = instantiate(cfg.data)
    assert (dm.num_classes, dm.classes, dm.train_size) == (2, [1, 0], 0.5)
    if "num_classes" in cfg.model:
        assert cfg.model.num_classes == 2
    cfg.data.num_classes = 5
    with pytest.raises(ConfigError, match=r"^data\.num_classes=5 is not allowed for data=\w+; data\.classes=\[1, 0\] gives 2$"):
        instantiate_group(cfg, "data")


def test_the_cli_runs_a_two_class_subset_and_rejects_a_train_size_larger_than_the_set(tmp_path, capsys, monkeypatch):
    from robustlip.train import main

    def cli(args: list[str]) -> tuple[int, str]:
        GlobalHydra.instance().clear()
        monkeypatch.setattr(sys, "argv", ["robustlip-train", *args, f"hydra.run.dir={tmp_path / 'run'}"])
        monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        finally:
            GlobalHydra.instance().clear()
        return code, capsys.readouterr().err

    torch.set_num_threads(1)
    code, err = cli(["data.train_size=99999"])
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, err
    assert "data.train_size=99999" in errors[0] and "1212 examples" in errors[0]
    assert not (tmp_path / "run" / "config.yaml").exists()
    code, err = cli(["data.classes=[4,9]", "data.train_size=60", "trainer.max_epochs=1", "evaluate=false",
                     "trainer.enable_progress_bar=false", "~callbacks.progress_bar", "logger=csv"])
    assert code == 0, err
    state = torch.load(Path(tmp_path / "run" / "checkpoints" / "last.ckpt"), weights_only=True)["state_dict"]
    out_bias = [t for k, t in state.items() if k.endswith("bias")][-1]
    assert out_bias.shape == (2,)
