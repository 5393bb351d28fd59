import math

import pytest
import torch
import torch.nn.functional as F

from kd_core.losses import distillation_loss


def _grad(zs, zt, **kw):
    zs = zs.clone().requires_grad_(True)
    distillation_loss(zs, zt, None, **kw).backward()
    return zs.grad


def test_kl_at_large_tau_matches_exact_limit_gradient():
    g = torch.Generator().manual_seed(0)
    zs = torch.randn(16, 10, generator=g, dtype=torch.float64)
    zt = torch.randn(16, 10, generator=g, dtype=torch.float64)
    g_inf = _grad(zs, zt, loss="kl", tau=math.inf)
    g_1000 = _grad(zs, zt, loss="kl", tau=1000.0)
    assert (g_1000 - g_inf).norm() / g_inf.norm() < 1e-3
    # Theorem 1: per-sample gradient (1/K) * ((zs - zt) - mean(zs - zt)), here / batch for the mean.
    d = zs - zt
    expected = (d - d.mean(1, keepdim=True)) / zs.shape[1] / zs.shape[0]
    torch.testing.assert_close(g_inf, expected)


def test_kl_inf_value_is_limit_of_tau_squared_kl():
    zs = torch.tensor([[1.0, 2.0, 0.5]], dtype=torch.float64)
    zt = torch.tensor([[0.0, 1.0, 3.0]], dtype=torch.float64)
    d = zs - zt
    by_hand = ((d - d.mean()) ** 2).sum() / (2 * 3)
    inf = distillation_loss(zs, zt, None, loss="kl", tau=math.inf)
    big = distillation_loss(zs, zt, None, loss="kl", tau=1e4)
    assert inf.item() == pytest.approx(by_hand.item())
    assert big.item() == pytest.approx(by_hand.item(), rel=1e-4)


def test_kl_hand_computed_two_class_case():
    # softmax([0, log 3]) = [1/4, 3/4]; softmax([0, 0]) = [1/2, 1/2]
    zs = torch.tensor([[0.0, 0.0]])
    zt = torch.tensor([[0.0, math.log(3.0)]])
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert distillation_loss(zs, zt, None, loss="kl", tau=1.0).item() == pytest.approx(kl, rel=1e-6)
    # tau = 2 on doubled logits gives the same distributions, scaled by tau^2 = 4.
    out = distillation_loss(2 * zs, 2 * zt, None, loss="kl", tau=2.0)
    assert out.item() == pytest.approx(4 * kl, rel=1e-6)


def test_alpha_mixes_label_term():
    zs = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    zt = torch.tensor([[1.0, 1.0, 1.0], [0.0, 3.0, 0.0]])
    y = torch.tensor([0, 2])
    ce = F.cross_entropy(zs, y)
    kl = distillation_loss(zs, zt, y, loss="kl", tau=4.0, alpha=1.0)
    mixed = distillation_loss(zs, zt, y, loss="kl", tau=4.0, alpha=0.3)
    assert mixed.item() == pytest.approx((0.7 * ce + 0.3 * kl).item(), rel=1e-6)
    assert distillation_loss(zs, zt, y, loss="kl", alpha=0.0).item() == pytest.approx(ce.item())


def test_mse_equals_torch_mse_and_ce_ignores_teacher():
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    y = torch.randint(0, 5, (8,), generator=g)
    assert torch.equal(distillation_loss(zs, zt, None, loss="mse"), F.mse_loss(zs, zt))
    mixed = distillation_loss(zs, zt, y, loss="mse", alpha=0.5)
    assert mixed.item() == pytest.approx(
        (0.5 * F.cross_entropy(zs, y) + 0.5 * F.mse_loss(zs, zt)).item()
    )
    assert torch.equal(distillation_loss(zs, None, y, loss="ce"), F.cross_entropy(zs, y))


def test_teacher_gets_no_gradient():
    zs = torch.randn(4, 3, requires_grad=True)
    zt = torch.randn(4, 3, requires_grad=True)
    distillation_loss(zs, zt, None, loss="mse").backward()
    assert zt.grad is None and zs.grad is not None


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"loss": "kl", "tau": 0.0}, "tau"),
        ({"loss": "kl", "tau": -1.0}, "tau"),
        ({"loss": "kl", "tau": math.nan}, "tau"),
        ({"loss": "kl", "alpha": 1.5}, "alpha"),
        ({"loss": "kl", "alpha": -0.1}, "alpha"),
        ({"loss": "hinge"}, "unknown loss 'hinge'"),
    ],
)
def test_bad_arguments_raise(kw, match):
    zs, zt = torch.zeros(2, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError, match=match):
        distillation_loss(zs, zt, torch.zeros(2, dtype=torch.long), **kw)


def test_shape_mismatch_and_missing_teacher_raise():
    with pytest.raises(ValueError, match="shape"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4), None, loss="kl")
    with pytest.raises(ValueError, match="targets shape"):
        distillation_loss(torch.zeros(2, 3), None, torch.zeros(3, dtype=torch.long), loss="ce")
    with pytest.raises(ValueError, match="teacher_logits"):
        distillation_loss(torch.zeros(2, 3), None, None, loss="mse")
