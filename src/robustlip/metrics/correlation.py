"""Each input's correlation with a binary label: the x-axis of Tsipras et al.'s weight plot (Sec. 4)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


@torch.no_grad()
def pixel_label_correlation(batches: Iterable[tuple[Tensor, Tensor]]) -> Tensor:
    """Pearson correlation of every input value with the label (0/1), over all ``batches``.

    One pass with float64 sums, so the result does not depend on the batch size. An input that never
    changes (a border pixel that is always 0) has no correlation: it is reported as 0.
    """
    n = 0
    sx = sy = sxx = syy = sxy = None
    for x, y in batches:
        x = x.flatten(1).double()
        if int(y.max()) > 1 or int(y.min()) < 0:
            raise ValueError("pixel_label_correlation needs labels 0 and 1 (a two-class task, e.g. data.classes=[a,b])")
        y = y.double()
        if sx is None:
            sx, sxx, sxy = x.sum(0), (x * x).sum(0), (x * y[:, None]).sum(0)
            sy, syy = y.sum(), (y * y).sum()
        else:
            sx, sxx, sxy = sx + x.sum(0), sxx + (x * x).sum(0), sxy + (x * y[:, None]).sum(0)
            sy, syy = sy + y.sum(), syy + (y * y).sum()
        n += len(y)
    if sx is None:
        raise ValueError("pixel_label_correlation got no data")
    cov = sxy / n - (sx / n) * (sy / n)
    var_x = (sxx / n - (sx / n) ** 2).clamp_min(0)
    var_y = float(syy / n - (sy / n) ** 2)
    denom = (var_x * var_y).sqrt()
    return torch.where(denom > 1e-12, cov / denom.clamp_min(1e-12), torch.zeros_like(cov))
