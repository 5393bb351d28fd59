import pytest
import torch

from kd_core.models import build_model, check_model_name


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, expected", [("wrn-28-10", 36.5e6), ("wrn-16-2", 0.70e6)])
def test_wrn_parameter_counts_match_the_paper(name, expected):
    assert n_params(build_model(name, 100)) == pytest.approx(expected, rel=0.01)


def test_wrn_28_4_parameter_count():
    assert n_params(build_model("wrn-28-4", 100)) == pytest.approx(5.87e6, rel=0.01)


def test_resnet20_has_the_published_size():
    assert n_params(build_model("resnet-20", 10)) == pytest.approx(0.27e6, rel=0.03)


@pytest.mark.parametrize("name", ["wrn-16-2", "resnet-8", "cnn-large", "cnn-medium", "cnn-small"])
def test_logits_and_features_in_one_pass(name):
    in_ch, size = (1, 8) if name.startswith("cnn") else (3, 32)
    model = build_model(name, 7, in_channels=in_ch).eval()
    x = torch.randn(3, in_ch, size, size)
    logits, feats = model(x, return_features=True)
    assert logits.shape == (3, 7) and feats.ndim == 2 and feats.shape[0] == 3
    torch.testing.assert_close(model(x), logits)
    torch.testing.assert_close(model.head(feats), logits)
    assert model.spec == {"name": name, "num_classes": 7, "in_channels": in_ch}


def test_cnn_sizes_are_ordered_for_teaching():
    sizes = [n_params(build_model(n, 10, 1)) for n in ("cnn-large", "cnn-medium", "cnn-small")]
    assert sizes[0] > sizes[1] > sizes[2]


@pytest.mark.parametrize("name", ["vgg-16", "wrn-17-2", "resnet-21", "cnn-huge"])
def test_unknown_or_malformed_names_list_known_ones(name):
    with pytest.raises(ValueError, match="wrn|resnet|cnn"):
        check_model_name(name)
    with pytest.raises(ValueError):
        build_model(name, 10)


def test_forward_macs_match_the_published_counts():
    """The schedule's cost model (profile.forward_macs, counted without computing anything):
    WRN-28-10 ~5.25 G and ResNet-20 ~41 M multiply-accumulates per CIFAR image."""
    from kd_core.profile import forward_macs

    assert forward_macs("wrn-28-10", 100, (3, 32, 32)) == pytest.approx(5.25e9, rel=0.01)
    assert forward_macs("resnet-20", 10, (3, 32, 32)) == pytest.approx(41e6, rel=0.02)
