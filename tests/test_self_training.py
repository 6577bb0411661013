"""Robust self-training with unlabeled data (objective=rst self_training.teacher_ckpt=..., data.unlabeled): the pool,
the batch mixing, the teacher's pseudo-labels and their cache, and the checks on the teacher."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from robustlip.core.errors import ConfigError
from robustlip.data import DigitsDataModule
from robustlip.data.base import dataset_labels
from robustlip.data.unlabeled import MixedBatchSampler, pseudo_label
from robustlip.models import MLP
from robustlip.objectives import RST
from robustlip.reporting.tables import find_runs, method_label
from robustlip.runs import labels
from robustlip.runs.checkpoints import CheckpointError
from robustlip.runs.self_training import CACHE_FILE, prepare_self_training
from robustlip.train import main, train
from tests.conftest import FAST


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Small models run faster on one thread; the setting is given back (conftest.py pins 2)."""
    torch.set_num_threads(1)
    yield


def _digits(**kwargs) -> DigitsDataModule:
    dm = DigitsDataModule(**kwargs)
    dm.setup()
    return dm


# ------------------------------------------------------------------------------------------------
# data.unlabeled: the training split outside train_size
# ------------------------------------------------------------------------------------------------
def test_unlabeled_pool_is_the_rest_of_the_training_split():
    dm = _digits(train_size=200, unlabeled=True)
    full = _digits()
    labeled, pool = set(dm.train_set.indices), set(dm.unlabeled_set.indices)
    assert len(labeled) == 200 and not labeled & pool
    assert labeled | pool == set(full.train_set.indices)  # validation examples stay out of both
    assert list(dm.unlabeled_eval_set.indices) == list(dm.unlabeled_set.indices)
    sub = _digits(train_size=200, unlabeled=300)
    assert len(sub.unlabeled_set) == 300 and set(sub.unlabeled_set.indices) <= pool
    assert sub.unlabeled_set.indices == _digits(train_size=200, unlabeled=300).unlabeled_set.indices  # seeded
    assert _digits(train_size=200).unlabeled_set is None


@pytest.mark.parametrize(("kwargs", "start"), [
    ({"unlabeled": True}, "data.unlabeled=True needs data.train_size"),
    ({"train_size": 200, "unlabeled": 0}, "data.unlabeled=0 is not allowed"),
    ({"train_size": 200, "unlabeled": 5000}, "data.unlabeled=5000 is larger than the 1012 training examples"),
])
def test_bad_unlabeled_values_are_one_named_line(kwargs, start):
    with pytest.raises(ConfigError) as info:
        _digits(**kwargs)
    assert str(info.value).startswith(start) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------
# The batch mixing
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n_labeled", "batch_size", "fraction"), [(200, 64, 0.5), (1000, 64, 0.5), (300, 50, 0.3)])
def test_mixing_ratio_holds_over_an_epoch(n_labeled, batch_size, fraction):
    n_pool = 5000
    sampler = MixedBatchSampler(n_labeled, n_pool, batch_size, fraction)
    torch.manual_seed(0)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    labeled = [i for b in batches for i in b if i < n_labeled]
    pool = [i for b in batches for i in b if i >= n_labeled]
    assert sorted(labeled) == list(range(n_labeled))  # one pass over the labels
    assert len(set(pool)) == len(pool) and all(n_labeled <= i < n_labeled + n_pool for i in pool)
    u = round(batch_size * fraction)
    for batch in batches[:-1]:
        assert len(batch) == batch_size and sum(i >= n_labeled for i in batch) == u
    assert len(pool) / (len(pool) + len(labeled)) == pytest.approx(fraction, abs=1.0 / len(labeled))
    # The pool is walked without repetition across epochs until it is used up.
    second = [i for b in sampler for i in b if i >= n_labeled]
    assert not set(second) & set(pool)


def test_mixed_loader_serves_pseudo_labels_for_the_pool():
    dm = _digits(train_size=200, unlabeled=True, batch_size=40)
    dm.use_pseudo_labels(torch.full((len(dm.unlabeled_set),), 9, dtype=torch.long), unsup_fraction=0.25)
    torch.manual_seed(0)
    true = dataset_labels(dm.train_set)
    seen_nines, total = 0, 0
    for x, y in dm.train_dataloader():
        assert x.shape[1:] == (1, 8, 8) and y.dtype == torch.long
        seen_nines += int((y == 9).sum())
        total += len(y)
    # 200 labeled (their own 9s included) and 10 pool examples per 30 labeled, all labeled 9.
    assert total == 200 + round(200 / 3) and seen_nines == int((true == 9).sum()) + round(200 / 3)


def test_unsup_fraction_that_leaves_no_label_is_refused():
    with pytest.raises(ConfigError, match=r"^self_training.unsup_fraction=0.99 leaves no labeled example"):
        MixedBatchSampler(100, 100, 10, 0.99)
    with pytest.raises(ConfigError, match=r"^self_training.unsup_fraction=1.0 is not allowed"):
        prepare_self_training(_digits(train_size=200, unlabeled=True), "unused", "teacher.ckpt", unsup_fraction=1.0)


# ------------------------------------------------------------------------------------------------
# A perfect teacher on the labeled data's own images: the labelled-only objective
# ------------------------------------------------------------------------------------------------
class Memorizer(nn.Module):
    """A perfect teacher for the images it stores: logit of class c = −distance to the nearest stored image of c."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int = 10) -> None:
        super().__init__()
        self.images, self.labels, self.num_classes = images.flatten(1), labels, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(x.flatten(1), self.images)
        return torch.stack([-d[:, self.labels == c].min(dim=1).values if (self.labels == c).any()
                            else torch.full((len(x),), -1e9) for c in range(self.num_classes)], dim=1)


def _epoch_mean_loss(objective, net, loader) -> float:
    total, count = 0.0, 0
    for x, y in loader:
        total += float(objective(net, x, y).loss.detach()) * len(y)
        count += len(y)
    return total / count


def test_perfect_teacher_on_own_images_equals_the_labelled_only_objective():
    dm = _digits(train_size=200, batch_size=64)
    images = torch.stack([dm.train_eval_set[i][0] for i in range(len(dm.train_eval_set))])
    labels = dataset_labels(dm.train_eval_set)
    # The pool: the labeled images themselves.
    dm.unlabeled_set, dm.unlabeled_eval_set = dm.train_set, dm.train_eval_set
    pseudo = pseudo_label(Memorizer(images, labels), dm.unlabeled_eval_set, batch_size=50)
    assert torch.equal(pseudo, labels)  # the teacher is perfect
    torch.manual_seed(0)
    student = MLP(in_features=64, hidden=(32,))
    optimizer = torch.optim.Adam(student.parameters(), lr=0.01)
    for _ in range(100):  # a student that has learnt something, so that wrong labels would show
        optimizer.zero_grad()
        nn.functional.cross_entropy(student(images), labels).backward()
        optimizer.step()
    student.eval()
    objective = RST(eps=0.05, lam=1.0)
    objective.attack.start = "none"  # a deterministic PGD, so both passes attack each example identically
    torch.manual_seed(1)
    labelled_only = _epoch_mean_loss(objective, student, DataLoader(dm.train_set, batch_size=64))
    dm.use_pseudo_labels(pseudo, unsup_fraction=0.5)
    torch.manual_seed(2)
    mixed = _epoch_mean_loss(objective, student, dm.train_dataloader())
    # Every example twice (once labeled, once pseudo-labeled): the same per-example mean.
    assert mixed == pytest.approx(labelled_only, rel=1e-6)
    # A teacher that gets the labels wrong changes the objective.
    dm.use_pseudo_labels((labels + 1) % 10, unsup_fraction=0.5)
    torch.manual_seed(2)
    assert _epoch_mean_loss(objective, student, dm.train_dataloader()) > 1.5 * labelled_only


# ------------------------------------------------------------------------------------------------
# The teacher checkpoint: pseudo-labels once, eval mode, cached; a wrong teacher is one line
# ------------------------------------------------------------------------------------------------
def _teacher_ckpt(path: Path, data: dict, dropout: float = 0.0, seed: int = 0) -> Path:
    """A checkpoint in robustlip-train's format: the net's weights under ``net.`` and the resolved run config."""
    torch.manual_seed(seed)
    num_classes = data.get("num_classes", 10)
    model = {"_target_": "robustlip.models.MLP", "num_classes": num_classes, "in_channels": 1, "in_features": 64,
             "hidden": [32], "dropout": dropout, "mean": [0.0], "std": [1.0]}
    net = MLP(num_classes=num_classes, in_features=64, hidden=(32,), dropout=dropout)
    config = {"data": {"name": "digits", "num_classes": 10, "classes": None, "train_size": 200, **data},
              "model": model, "objective": {"name": "natural"}}
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"config": config}}, path)
    return path


def test_pseudo_labels_are_the_teachers_eval_mode_predictions_cached_beside_the_run(tmp_path):
    teacher = _teacher_ckpt(tmp_path / "teacher.ckpt", {}, dropout=0.5)
    dm = _digits(train_size=200, unlabeled=True)
    summary = prepare_self_training(dm, tmp_path / "run", str(teacher))
    torch.manual_seed(0)
    net = MLP(in_features=64, hidden=(32,), dropout=0.5)
    net.load_state_dict({k[4:]: v for k, v in torch.load(teacher, weights_only=True)["state_dict"].items()})
    expected = net.eval()(torch.stack([x for x, _ in dm.unlabeled_eval_set])).argmax(1)
    cache = torch.load(tmp_path / "run" / CACHE_FILE, weights_only=True)
    assert torch.equal(cache["labels"], expected) and torch.equal(dm.pseudo_labeled_set.labels, expected)
    assert summary["pool_size"] == 1012 and not summary["reused_cache"]
    assert summary["agreement_with_true_labels"] == pytest.approx(
        100.0 * float((expected == dataset_labels(dm.unlabeled_eval_set)).double().mean()))
    # The same teacher and pool again (a resumed run): the cache is reused ...
    dm2 = _digits(train_size=200, unlabeled=True)
    assert prepare_self_training(dm2, tmp_path / "run", str(teacher))["reused_cache"]
    # ... another teacher file is labeled afresh.
    other = _teacher_ckpt(tmp_path / "other.ckpt", {}, seed=1)
    summary = prepare_self_training(_digits(train_size=200, unlabeled=True), tmp_path / "run", str(other))
    assert not summary["reused_cache"]


@pytest.mark.parametrize(("data", "named"), [
    ({"name": "fashion_mnist"}, "is a teacher for data.name='fashion_mnist' but this run has data.name='digits'"),
    ({"num_classes": 2, "classes": [0, 1]}, "is a teacher for data.num_classes=2 but this run has data.num_classes=10"),
])
def test_teacher_of_another_dataset_or_number_of_classes_is_one_line(tmp_path, data, named):
    teacher = _teacher_ckpt(tmp_path / "teacher.ckpt", data)
    with pytest.raises(CheckpointError) as info:
        prepare_self_training(_digits(train_size=200, unlabeled=True), tmp_path, str(teacher))
    message = str(info.value)
    assert message.startswith(f"self_training.teacher_ckpt='{teacher}' {named}") and "\n" not in message
    assert not (tmp_path / CACHE_FILE).exists()


def test_teacher_without_a_pool_is_one_line(tmp_path):
    teacher = _teacher_ckpt(tmp_path / "teacher.ckpt", {})
    with pytest.raises(ConfigError, match=r"^self_training.teacher_ckpt=.* needs an unlabeled pool"):
        prepare_self_training(_digits(train_size=200), tmp_path, str(teacher))


def test_rst_with_unlabeled_data_trains_end_to_end(train_cfg, tmp_path):
    teacher = _teacher_ckpt(tmp_path / "teacher.ckpt", {})
    cfg = train_cfg([*FAST, "objective=rst", f"self_training.teacher_ckpt={teacher}", "data.train_size=200",
                     "data.unlabeled=true", "data.test_size=32", "model=mlp"])
    metrics = train(cfg)
    assert 0.0 <= metrics["test/adv_acc"] <= metrics["test/acc"] <= 100.0
    assert (tmp_path / CACHE_FILE).is_file() and (tmp_path / "pseudo_labels.json").is_file()
    # The loss is RST's own; the run is a row of its own in every table.
    assert "teacher_ckpt" not in cfg.objective and "unsup_fraction" not in cfg.objective
    (run,), _ = find_runs([tmp_path])
    assert method_label(run)[0] == "RST(λ=1)+unlabeled"


def test_a_run_written_before_self_training_had_its_own_keys_keeps_its_row_name(tmp_path):
    """Earlier runs kept the teacher in the RST objective's node: the report still names them as before."""
    old = {"objective": {"_target_": "robustlip.objectives.RST", "name": "rst", "eps": 0.1, "lam": 1.0,
                         "teacher_ckpt": "teacher.ckpt", "unsup_fraction": 0.5}}
    assert labels.method_label(old)[0] == "RST(λ=1)+unlabeled"
    assert labels.method_label({"objective": {**old["objective"], "teacher_ckpt": None}})[0] == "RST(λ=1)"


def test_wrong_teacher_is_one_error_line_and_exit_2_before_anything_is_written(train_cfg, tmp_path, capsys):
    teacher = _teacher_ckpt(tmp_path / "teacher.ckpt", {"name": "mnist"})
    cfg = train_cfg(["objective=rst", f"self_training.teacher_ckpt={teacher}", "data.train_size=200", "data.unlabeled=true"])
    with pytest.raises(SystemExit) as info:
        main(cfg)
    assert info.value.code == 2
    # Only the error lines: logging handlers left behind by other tests may write to stderr too.
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [
        (f"error: self_training.teacher_ckpt='{teacher}' is a teacher for data.name='mnist' but this run has "
         "data.name='digits'; use a checkpoint trained on data.name='digits'")]
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / CACHE_FILE).exists()
