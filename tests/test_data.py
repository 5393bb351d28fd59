import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kd_core.data import (
    CIFAR10_ASYMMETRIC_MAP,
    Augment,
    apply_label_noise,
    draw_views,
    load_dataset,
    render_views,
)
from kd_core.data.datasets import stratified_split
from kd_core.names import DATASET_FACTS


def test_symmetric_noise_is_seeded_uniform_and_always_changes_the_class():
    y = torch.arange(10).repeat(2000)
    a = apply_label_noise(y, 10, kind="symmetric", rate=0.4, seed=3)
    b = apply_label_noise(y, 10, kind="symmetric", rate=0.4, seed=3)
    c = apply_label_noise(y, 10, kind="symmetric", rate=0.4, seed=4)
    assert torch.equal(a.labels, b.labels) and a.labels_hash == b.labels_hash
    assert a.labels_hash != c.labels_hash
    assert a.realised_rate == pytest.approx(0.4, abs=0.02)
    changed = a.labels != y
    assert a.realised_rate == pytest.approx(changed.float().mean().item())
    # Flipped labels spread evenly over the 9 other classes.
    offsets = ((a.labels - y) % 10)[changed]
    counts = torch.bincount(offsets, minlength=10)[1:].float()
    assert counts.min() / counts.max() > 0.8


def test_noise_is_identical_across_runs_pinned_hash():
    # Guards the cross-machine promise: PCG64 is stable, so this hash must never change.
    y = torch.arange(10).repeat(10)
    out = apply_label_noise(y, 10, kind="symmetric", rate=0.5, seed=0)
    assert (
        out.labels_hash
        == apply_label_noise(y.clone(), 10, kind="symmetric", rate=0.5, seed=0).labels_hash
    )
    rng = np.random.Generator(np.random.PCG64(0))
    flip = rng.random(100) < 0.5
    offs = rng.integers(1, 10, size=100)
    assert torch.equal(
        out.labels, torch.from_numpy(np.where(flip, (y.numpy() + offs) % 10, y.numpy()))
    )


def test_asymmetric_noise_cifar10_map_and_cyclic_default():
    y = torch.arange(10).repeat(500)
    out = apply_label_noise(
        y, 10, kind="asymmetric", rate=0.3, seed=0, class_map=CIFAR10_ASYMMETRIC_MAP
    )
    changed = out.labels != y
    for src, dst in CIFAR10_ASYMMETRIC_MAP.items():
        moved = out.labels[(y == src) & changed]
        assert len(moved) > 0 and bool((moved == dst).all())
    for untouched in (0, 1, 6, 7, 8):
        assert not changed[y == untouched].any()
    cyc = apply_label_noise(y, 10, kind="asymmetric", rate=0.3, seed=0)
    flips = cyc.labels != y
    assert torch.equal(cyc.labels[flips], (y[flips] + 1) % 10)


def test_rate_zero_is_identity_and_bad_rates_raise():
    y = torch.tensor([1, 2, 3])
    out = apply_label_noise(y, 5, kind="symmetric", rate=0.0, seed=0)
    assert torch.equal(out.labels, y) and out.realised_rate == 0.0
    for rate in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="noise rate"):
            apply_label_noise(y, 5, kind="symmetric", rate=rate, seed=0)
    with pytest.raises(ValueError, match="noise kind"):
        apply_label_noise(y, 5, kind="pairflip", rate=0.1, seed=0)


def test_digits_split_is_fixed_and_noise_never_touches_test_labels():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert torch.equal(a.train_labels, b.train_labels) and torch.equal(a.test_images, b.test_images)
    assert (
        a.train_images.shape[1:] == (1, 8, 8) and len(a.train_labels) + len(a.test_labels) == 1797
    )
    assert torch.bincount(a.test_labels).min() >= 40  # stratified
    facts = DATASET_FACTS["digits"]  # what plans and reports take the split to be
    assert (len(a.train_labels), len(a.test_labels)) == (facts["train"], facts["test"])
    noisy, info = a.with_label_noise("symmetric", 0.4, seed=0)
    assert torch.equal(noisy.test_labels, a.test_labels)
    assert torch.equal(noisy.clean_labels, a.train_labels)
    assert info.realised_rate == pytest.approx(0.4, abs=0.05)


def test_validation_is_held_out_of_training_stratified_and_shared_by_a_lineage():
    data = load_dataset("digits")
    noisy, _ = data.with_label_noise("symmetric", 0.4, seed=5)
    held = noisy.with_validation(0.2, seed=5)
    n = len(data.train_labels)
    assert len(held.val_labels) == round(0.2 * n) and len(held.train_labels) == n - len(
        held.val_labels)
    assert torch.equal(held.test_images, data.test_images)  # the test set untouched
    # disjoint, and together the training split: each image once, each with its (noisy) label
    rows = lambda x: {bytes(i.numpy().tobytes()) for i in x}  # noqa: E731
    assert not rows(held.val_images) & rows(held.train_images)
    assert len(rows(held.val_images) | rows(held.train_images)) == len(rows(data.train_images))
    counts = torch.bincount(held.clean_labels, minlength=10) / torch.bincount(
        data.train_labels, minlength=10)
    assert counts.min() > 0.75 and counts.max() < 0.85  # stratified on the clean labels
    # the teacher's bank is built on the plain dataset with the same seed: the same images
    plain = data.with_validation(0.2, seed=5)
    assert torch.equal(plain.train_images, held.train_images)
    assert not torch.equal(data.with_validation(0.2, seed=6).val_images, held.val_images)
    assert data.with_validation(0, seed=5) is data
    with pytest.raises(ValueError, match="validation"):
        data.with_validation(0.6, seed=0)


def test_digits_are_scikit_learns_own_data_and_split():
    """kd_core reads digits and draws its split without importing scikit-learn: the same
    images, labels and indices as load_digits + train_test_split(stratify=y, random_state)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x, y = bunch.images.astype(np.uint8)[:, None], bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    ours = load_dataset("digits")
    assert np.array_equal(ours.train_images.numpy(), x_tr)
    assert np.array_equal(ours.test_images.numpy(), x_te)
    assert np.array_equal(ours.train_labels.numpy(), y_tr)
    assert np.array_equal(ours.test_labels.numpy(), y_te)
    # ... and on label sets whose remainders tie (rng-broken ties), other seeds and sizes
    rng = np.random.default_rng(0)
    for n, k, test, seed in ((101, 7, 30, 3), (60, 3, 13, 11), (997, 10, 250, 42)):
        labels = rng.integers(0, k, n)
        idx = np.arange(n)
        want_tr, want_te = train_test_split(idx, test_size=test, stratify=labels,
                                            random_state=seed)
        got_tr, got_te = stratified_split(labels, test, seed)
        assert np.array_equal(got_tr, want_tr) and np.array_equal(got_te, want_te)


def test_views_render_exactly_the_padded_crop_and_flip():
    aug = Augment(padding=4, flip=True)
    assert aug.n_views == 162
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g).float()
    views = torch.tensor([0, 1, 161, 80, 17, 100])
    out = render_views(x, views, aug)
    padded = F.pad(x, (4, 4, 4, 4))
    for i, v in enumerate(views.tolist()):
        flip, off = v % 2, v // 2
        dy, dx = divmod(off, 9)
        ref = padded[i, :, dy : dy + 32, dx : dx + 32]
        torch.testing.assert_close(out[i], ref.flip(2) if flip else ref)
    drawn = draw_views(aug, 10000, g, "cpu")
    assert drawn.min() >= 0 and drawn.max() == 161


def test_cifar_loaders_read_the_real_format(cifar_root):
    c10 = load_dataset("cifar10", root=cifar_root, verify_checksums=False)
    c100 = load_dataset("cifar100", root=cifar_root, verify_checksums=False)
    assert c10.train_images.shape == (20, 3, 32, 32) and c10.train_images.dtype == torch.uint8
    assert c10.num_classes == 10 and c100.num_classes == 100 and len(c100.test_labels) == 10
    assert c10.augment == Augment(4, True) and c10.class_map == CIFAR10_ASYMMETRIC_MAP


def test_missing_cifar_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-100-python.*download"):
        load_dataset("cifar100", root=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")


def test_synthetic_has_requested_shape():
    d = load_dataset("synthetic", n_train=50, n_test=7, num_classes=100)
    assert d.train_images.shape == (50, 3, 32, 32) and len(d.test_labels) == 7
