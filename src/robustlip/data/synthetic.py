"""Two synthetic sets generated on the fly from a seed, for tests and teaching.

``tsipras``: the robust/non-robust features distribution of Tsipras et al. (ICLR 2019, seeds/004):
y uniform in {−1, +1}; one *robust* feature x₁ = y with probability p and −y otherwise; d *non-robust*
features x₂..x_{d+1} ~ N(ηy, 1), i.i.d. Averaging the weak features gives a near-perfect classifier
(z ~ N(ηy, 1/d), error Φ(−η√d)), yet an L∞ shift of 2η per feature turns z into N(−ηy, 1/d); only
x₁ survives such an attack, so robust accuracy is at most p. We take η = 3/√d by default (standard
accuracy ≈ 99.9 %) and the attack radius 2η.

*As images.* DataModules yield [0, 1] pixels (docs/architecture.md, "Pixel space"), so a feature value v becomes the pixel
0.5 + ``scale``·v, clipped to [0, 1] (``scale`` = 1/8: |v| > 4 is clipped, probability ≈ 6e-5 per
feature). The d + 1 = side² features fill a 1×side×side image row-major, x₁ at pixel (0, 0), so the
paper's CNNs (side = 28: d = 783) and an MLP run on it unchanged. ε in pixels is 2η·scale; for the
default side 28 that is 2·(3/√783)/8 = 0.0268 — the value conf/data/tsipras.yaml sets. Labels:
class 1 for y = +1, class 0 for y = −1.

``staircase``: docs/authors-code.md §12's spline example (after Raghunathan et al. 2020) turned into classification.
Stairs s ∈ {0..9} with probabilities ∝ 1/5 (s < 5) and 0.01 (s ≥ 5); the input is x = s, shifted by
±1/3 (random sign) with probability 0.005; the regression target is y = s + N(0, 0.1²). As a
classification task the label is the stair of the target, round(y) clipped to {0..9} (equal to s
except with probability ~6e-7). The input becomes the pixel (x + 1/3)/(9 + 2/3) ∈ [0, 1], so the
paper's radius ε = 1/3 is 1/29 ≈ 0.0345 in pixels (conf/data/staircase.yaml). The input is one
value (shape 1×1×1; use ``model=mlp``); ``side`` > 1 repeats it over a side×side image. The paper's
two regimes are ``n_train`` = 40 (default) and 30,000, with 10,000 / 15,000 test points.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.data import TensorDataset

from robustlip.core.errors import ConfigError, check_positive_int, check_probability
from robustlip.data.base import DatasetSplits, RobustDataModule


class _SyntheticDataModule(RobustDataModule):
    variable_shape = True

    def __init__(self, *args: Any, n_train: int = 10000, n_test: int = 2000, side: int = 1, **kwargs: Any) -> None:
        self.side = check_positive_int("data.side", side)
        self.input_shape = (1, self.side, self.side)
        in_channels, in_features = kwargs.get("in_channels"), kwargs.get("in_features")
        if in_channels not in (None, 1):
            raise ConfigError(f"data.in_channels={in_channels!r} is not allowed for a synthetic set; it has 1")
        if in_features not in (None, self.side**2):
            raise ConfigError(f"data.in_features={in_features!r} does not match data.side={side} (side² = {side**2})")
        super().__init__(*args, **kwargs)
        self.n_train = check_positive_int("data.n_train", n_train)
        self.n_test = check_positive_int("data.n_test", n_test)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def build_datasets(self) -> DatasetSplits:
        # Train and test come from independent streams of one seed: the same seed gives the same data.
        x_tr, y_tr = self.sample(self.n_train, torch.Generator().manual_seed(self.seed * 2 + 101))
        x_te, y_te = self.sample(self.n_test, torch.Generator().manual_seed(self.seed * 2 + 102))
        train = TensorDataset(x_tr, y_tr)
        return DatasetSplits(train=train, train_eval=train, test=TensorDataset(x_te, y_te))


class TsiprasDataModule(_SyntheticDataModule):
    """Tsipras et al.'s robust/non-robust features distribution as 1×side×side images (see module doc)."""

    name = "tsipras"
    num_classes = 2

    def __init__(
        self,
        *args: Any,
        side: int = 28,
        p: float = 0.95,
        eta: float | None = None,
        scale: float = 0.125,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, side=side, **kwargs)
        if self.side < 2:
            raise ConfigError(f"data.side={side!r} is not allowed for data=tsipras; it needs >= 2 (d = side² - 1 >= 3)")
        self.d = self.side**2 - 1
        self.p = check_probability("data.p", p)
        self.eta = 3.0 / math.sqrt(self.d) if eta is None else float(eta)
        if not 0 < scale <= 0.5:
            raise ConfigError(f"data.scale={scale!r} is not allowed; it must be in (0, 0.5]")
        self.scale = float(scale)

    @property
    def pixel_eps(self) -> float:
        """The attack radius 2η of Tsipras et al., in pixel units."""
        return 2 * self.eta * self.scale

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 2, (n,), generator=generator) * 2 - 1  # ±1
        agree = torch.rand(n, generator=generator) < self.p
        robust = torch.where(agree, y, -y).float()
        weak = torch.randn(n, self.d, generator=generator) + self.eta * y[:, None].float()
        features = torch.cat([robust[:, None], weak], dim=1)
        pixels = (0.5 + self.scale * features).clamp(0.0, 1.0)
        return pixels.view(n, 1, self.side, self.side), ((y + 1) // 2).long()


class StaircaseDataModule(_SyntheticDataModule):
    """docs/authors-code.md §12's staircase as 10-class classification of a single value (see module doc)."""

    name = "staircase"
    num_classes = 10
    STAIRS = 10
    SHIFT = 1.0 / 3.0

    def __init__(
        self,
        *args: Any,
        n_train: int = 40,
        n_test: int = 10000,
        side: int = 1,
        shift_prob: float = 0.005,
        noise_std: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, n_train=n_train, n_test=n_test, side=side, **kwargs)
        self.shift_prob = check_probability("data.shift_prob", shift_prob)
        self.noise_std = float(noise_std)

    @classmethod
    def stair_probabilities(cls) -> torch.Tensor:
        weights = torch.tensor([0.2] * 5 + [0.01] * 5, dtype=torch.float64)
        return weights / weights.sum()

    @classmethod
    def to_pixel(cls, x: torch.Tensor) -> torch.Tensor:
        """Stair coordinate (−1/3 .. 9+1/3) -> pixel in [0, 1]; ε = 1/3 becomes 1/29."""
        return (x + cls.SHIFT) / (cls.STAIRS - 1 + 2 * cls.SHIFT)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        stair = torch.multinomial(self.stair_probabilities(), n, replacement=True, generator=generator)
        shifted = torch.rand(n, generator=generator) < self.shift_prob
        sign = torch.randint(0, 2, (n,), generator=generator) * 2 - 1
        x = stair.double() + shifted.double() * sign.double() * self.SHIFT
        target = stair.double() + self.noise_std * torch.randn(n, generator=generator, dtype=torch.float64)
        label = target.round().clamp(0, self.STAIRS - 1).long()
        pixel = self.to_pixel(x).float().view(n, 1, 1, 1).expand(n, 1, self.side, self.side).contiguous()
        return pixel, label
