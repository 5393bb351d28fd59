"""The paper's analyses on hand-made logits and features whose answers are known."""

import math

import pytest
import torch

from kd_core.analysis import (
    MEASURES,
    analyse,
    describe,
    entropy,
    linear_cka,
    logit_distance,
    outputs,
    predictions,
    project,
    top_label_distance,
)
from kd_core.models import build_model
from sweeps.store.ledger import predictions_bytes, read_predictions


def test_logit_distance_and_its_quartiles():
    zs = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0], [0.0, 1.0]])
    zt = torch.zeros(4, 2)
    d = logit_distance(zs, zt)
    assert d.tolist() == [0.0, 5.0, 10.0, 1.0]
    s = describe(d)
    assert s["mean"] == 4.0 and s["median"] == 3.0 and s["q25"] == 0.75 and s["q75"] == 6.25


def test_entropy_of_uniform_and_certain_predictions():
    z = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
    h = entropy(z)
    assert h[0].item() == pytest.approx(math.log(4)) and h[1].item() == pytest.approx(0, abs=1e-6)


def test_top_label_distance_right_and_wrong():
    z = torch.tensor([[5.0, 2.0, 1.0],  # right: 5 - runner-up 2
                      [1.0, 4.0, 3.0]])  # wrong (true 0): 1 - top1 4
    assert top_label_distance(z, torch.tensor([0, 0])).tolist() == [3.0, -3.0]


def test_projection_puts_templates_and_features_on_their_plane():
    # templates of classes 0, 1, 2 in 3-D; class 3's is off the plane and unused
    w = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 9.0]])
    feats = torch.tensor([[1.0, 0.0, 5.0], [0.0, 1.0, -5.0], [2.0, 2.0, 0.0]])
    labels = torch.tensor([0, 1, 2])
    p = project(feats, labels, w)
    assert p["templates"] == [[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]]
    # the off-plane component (z) drops out; in-plane coordinates are kept
    assert p["points"] == {"0": [[1.0, 0.0]], "1": [[0.0, 1.0]], "2": [[2.0, 2.0]]}


def test_analyse_a_real_model_in_eval_mode():
    torch.manual_seed(0)
    model = build_model("cnn-small", 10, 1)
    images = torch.rand(30, 1, 8, 8)
    labels = torch.arange(30) % 10
    model.train()
    student = outputs(model, images, lambda x: x, batch_size=7)
    assert model.training  # restored
    z, r = student
    assert z.shape == (30, 10) and r.shape[0] == 30
    assert torch.allclose(z, model.eval()(images), atol=1e-5)  # eval mode, batch-independent
    scalars, dists = analyse(student, (z + 1.0, r), labels, model.head.weight.detach())
    # a teacher that is the student plus 1 everywhere: distance sqrt(10) for every sample
    assert scalars["logit_distance_mean"] == pytest.approx(math.sqrt(10), rel=1e-5)
    assert scalars["logit_distance_median"] == pytest.approx(math.sqrt(10), rel=1e-5)
    assert scalars["teacher_entropy"] == pytest.approx(scalars["entropy"], rel=1e-5)
    assert scalars["feature_norm"] == pytest.approx(float(r.norm(dim=1).mean()))
    assert sum(dists["logit_distance"]["counts"]) == 30
    assert set(dists["projection"]["points"]) == {"0", "1", "2"}
    assert set(scalars) == set(MEASURES)
    alone, _ = analyse(student, None, labels, model.head.weight.detach())
    assert "logit_distance_mean" not in alone and "teacher_entropy" not in alone


def test_linear_cka_ignores_rotation_and_scale_and_compares_widths():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    assert linear_cka(x, 3.0 * x @ q + 1.0) == pytest.approx(1.0)  # rotated, scaled, shifted
    # a different width: the first 8 features carry almost all of x's variance
    wide = torch.cat([x[:, :8] * 10, x[:, 8:] * 0.01], dim=1)
    assert linear_cka(wide, x[:, :8]) == pytest.approx(1.0, abs=1e-3)
    # independent features of 500 samples: near 0 (its expectation is about d/n)
    assert linear_cka(x, torch.randn(500, 16, generator=g)) < 0.1


def test_predictions_per_image_and_their_file():
    """The per-image test predictions a trial stores (predictions.npz): the top-1 class, its
    probability, the true class's probability, the teacher's class; logits only on request."""
    z = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    teacher = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    p = predictions(z, labels, teacher)
    assert p["pred"].tolist() == [0, 2, 1] and p["teacher_pred"].tolist() == [0, 1, 2]
    assert p["label"].tolist() == [0, 1, 1] and "logits" not in p
    probs = z.softmax(dim=1)
    assert p["confidence"] == pytest.approx(probs.max(dim=1).values.numpy(), abs=1e-3)
    assert p["p_true"] == pytest.approx(probs[[0, 1, 2], [0, 1, 1]].numpy(), abs=1e-3)
    back = read_predictions(predictions_bytes(predictions(z, labels, None, keep_logits=True)))
    assert back["logits"].dtype.name == "float16" and back["logits"].shape == (3, 3)
    assert "teacher_pred" not in back and back["pred"].tolist() == [0, 2, 1]
    with pytest.raises(ValueError):  # no pickled object is ever loaded
        import io

        import numpy as np
        buf = io.BytesIO()
        np.savez(buf, x=np.array([object()], dtype=object))
        read_predictions(buf.getvalue())
