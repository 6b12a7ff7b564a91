"""Rare-class helpers: copy-paste, mosaic, class presence, balanced weights, and what each buys on the demo data."""

import cv2
import numpy as np
import pytest

from app.data.coco import load_coco
from app.data.masks import rasterize
from app.data.rare import balanced_weights, class_presence, copy_paste, mosaic

DONOR_COLOUR = np.array([10, 200, 30], np.uint8)  # appears nowhere in the targets below


def target_pair(size=(64, 80)):
    """A grey-noise image (channels <= 100) with class 1 and class 2 rectangles."""
    rng = np.random.default_rng(11)
    image = rng.integers(0, 100, (*size, 3)).astype(np.uint8)
    mask = np.zeros(size, np.uint8)
    mask[5:25, 5:30] = 1
    mask[30:60, 40:75] = 2
    return image, mask


def donor_pair(size=(64, 80), n_blobs=2):
    """A donor with `n_blobs` separate class-3 squares painted DONOR_COLOUR and one class-1 square."""
    image = np.full((*size, 3), 120, np.uint8)
    mask = np.zeros(size, np.uint8)
    for k in range(n_blobs):
        y, x = 4 + 14 * (k // 4), 4 + 18 * (k % 4)
        mask[y : y + 8, x : x + 10] = 3
    mask[size[0] - 12 : size[0] - 4, size[1] - 12 : size[1] - 4] = 1
    image[mask == 3] = DONOR_COLOUR
    return image, mask


def is_donor_colour(image):
    return (image == DONOR_COLOUR).all(axis=-1)


def test_copy_paste_pastes_aligned_objects_of_the_chosen_class():
    image, mask = target_pair()
    donor_image, donor_mask = donor_pair()
    originals = [a.copy() for a in (image, mask, donor_image, donor_mask)]
    for seed in range(10):
        out_image, out_mask = copy_paste(image, mask, donor_image, donor_mask, [3], np.random.default_rng(seed))
        pasted = out_mask == 3
        assert pasted.sum() > 0 and (mask == 3).sum() == 0
        # Labels and pixels travel together: class 3 exactly where the donor's colour now is.
        np.testing.assert_array_equal(pasted, is_donor_colour(out_image))
        # Everything else is the target as it was (the donor's class-1 object was not chosen).
        np.testing.assert_array_equal(out_mask[~pasted], mask[~pasted])
        np.testing.assert_array_equal(out_image[~pasted], image[~pasted])
    for before, after in zip(originals, (image, mask, donor_image, donor_mask)):
        np.testing.assert_array_equal(before, after)  # inputs untouched


def test_copy_paste_resizes_a_donor_of_another_size():
    image, mask = target_pair()
    donor_image, donor_mask = donor_pair(size=(128, 160))  # twice the target: objects 16 x 20 -> 8 x 10
    out_image, out_mask = copy_paste(image, mask, donor_image, donor_mask, [3], np.random.default_rng(0))
    assert out_image.shape == image.shape and out_mask.shape == mask.shape
    pasted = out_mask == 3
    assert 0 < pasted.sum() <= 2 * 8 * 10
    # Bilinear resizing keeps the inside of each object exactly the donor's colour.
    assert is_donor_colour(out_image[pasted]).mean() > 0.9


def test_copy_paste_respects_max_objects_and_flips():
    image, mask = target_pair()
    donor_image, donor_mask = donor_pair(n_blobs=6)
    counts = set()
    for seed in range(10):
        _, out_mask = copy_paste(image, mask, donor_image, donor_mask, [3], np.random.default_rng(seed), 2)
        # two 8 x 10 objects at most (fewer pixels where they overlap each other)
        counts.add(int((out_mask == 3).sum()))
    assert max(counts) <= 2 * 8 * 10

    # An L-shaped object shows up in more than one orientation over a few seeds.
    shape_mask = np.zeros((64, 80), np.uint8)
    shape_mask[10:20, 10:13] = 3
    shape_mask[17:20, 10:18] = 3
    shapes = set()
    for seed in range(12):
        _, out_mask = copy_paste(image, mask, donor_image, shape_mask, [3], np.random.default_rng(seed))
        ys, xs = np.nonzero(out_mask == 3)
        shapes.add((out_mask == 3)[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].tobytes())
    assert len(shapes) > 1


def test_copy_paste_without_donor_objects_returns_copies():
    image, mask = target_pair()
    out_image, out_mask = copy_paste(image, mask, image, mask, [7], np.random.default_rng(0))
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_mask, mask)
    assert out_image is not image and out_mask is not mask


def constant_pair(label, size):
    """An image filled with a colour derived from `label` and a mask filled with `label`."""
    return np.full((*size, 3), 40 * label, np.uint8), np.full(size, label, np.uint8)


def test_mosaic_tiles_four_pairs():
    pairs = [
        constant_pair(1, (50, 70)),
        constant_pair(2, (90, 60)),
        constant_pair(3, (64, 64)),
        constant_pair(4, (30, 200)),
    ]
    for seed in range(10):
        image, mask = mosaic(pairs, 96, np.random.default_rng(seed))
        assert image.shape == (96, 96, 3) and mask.shape == (96, 96)
        assert image.dtype == np.uint8 and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {1, 2, 3, 4}
        assert (mask[0, 0], mask[0, -1], mask[-1, 0], mask[-1, -1]) == (1, 2, 3, 4)
        np.testing.assert_array_equal(image[..., 0], 40 * mask)  # pixels and labels from the same pair
        # The centre lies in the middle half.
        cy, cx = np.argmax(mask[:, 0] == 3), np.argmax(mask[0] == 2)
        assert 24 <= cy <= 72 and 24 <= cx <= 72


def test_mosaic_needs_four_pairs():
    with pytest.raises(ValueError):
        mosaic([constant_pair(1, (8, 8))] * 3, 32, np.random.default_rng(0))


def test_class_presence_from_arrays_and_pngs(tmp_path):
    masks = [np.array([[0, 1], [1, 1]], np.uint8), np.array([[0, 3], [255, 0]], np.uint8), np.zeros((2, 2), np.uint8)]
    expected = np.array([[1, 1, 0, 0], [1, 0, 0, 1], [1, 0, 0, 0]], bool)  # 255 (ignore) is no class
    np.testing.assert_array_equal(class_presence(masks, 4), expected)
    paths = []
    for i, m in enumerate(masks):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), m)
    np.testing.assert_array_equal(class_presence(paths, 4), expected)
    assert class_presence([], 4).shape == (0, 4)
    with pytest.raises(FileNotFoundError):
        class_presence([tmp_path / "missing.png"], 4)


def test_balanced_weights_favour_rare_classes():
    presence = np.array(
        [
            [1, 1, 0, 0],
            [1, 1, 0, 0],
            [1, 1, 1, 0],
            [1, 0, 0, 1],
            [1, 1, 0, 0],
            [1, 0, 0, 0],
        ],
        bool,
    )
    w = balanced_weights(presence, classes=[2, 3])
    assert w.mean() == pytest.approx(1.0)
    assert w[2] == w[3] > w[0] == w[1] == w[4] == w[5]
    assert w[2] / w[0] == pytest.approx(6**0.5)  # class 2 is in 1 of 6 images: (1 / (1/6)) ** 0.5
    every = balanced_weights(presence)  # all classes: class 1 (4 of 6) lifts its images a little
    assert every[2] == every[3] > every[0] > every[5]
    np.testing.assert_allclose(balanced_weights(presence, [2, 3], power=0.0), 1.0)
    assert balanced_weights(np.zeros((0, 4), bool)).shape == (0,)


# ---------------------------------------------------------------- measurement on the demo dataset

SIZE = 128  # training squish size for the measurement
EPOCHS = 20


@pytest.fixture(scope="module")
def demo_pairs(tmp_path_factory):
    """The demo training images squished to SIZE, their masks, and the rare class indices."""
    from app.data.synthetic import make_demo_dataset

    paths = make_demo_dataset(tmp_path_factory.mktemp("rare_demo"), seed=0, n_train=24, n_val=2, n_test=2)
    coco = load_coco(paths["train"])
    pairs = []
    for info in coco.images:
        image = cv2.cvtColor(cv2.imread(str(paths["images"] / info.file_name)), cv2.COLOR_BGR2RGB)
        image = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(rasterize(coco, info), (SIZE, SIZE), interpolation=cv2.INTER_NEAREST_EXACT)
        pairs.append((image, mask))
    rare = [coco.codes.index("Battery"), coco.codes.index("Clothing")]
    return pairs, rare, len(coco.codes)


def rare_share(masks, rare):
    """Share of all pixels of `masks` that belong to a rare class."""
    return float(np.mean([np.isin(m, rare).mean() for m in masks]))


def test_rare_pixel_share_per_epoch(demo_pairs):
    """Copy-paste, mosaic and balanced sampling each show the model clearly more rare-class pixels per epoch."""
    pairs, rare, n_classes = demo_pairs
    masks = [m for _, m in pairs]
    presence = class_presence(masks, n_classes)
    assert presence[:, rare].any(axis=1).sum() < len(pairs) / 4  # rare indeed
    weights = balanced_weights(presence, rare)
    p = weights / weights.sum()
    donors = np.flatnonzero(presence[:, rare].any(axis=1))
    rng = np.random.default_rng(0)
    n = len(pairs)

    # Plain uniform sampling: an epoch shows every image once, so the share is the dataset's.
    baseline = rare_share(masks, rare)

    pasted = []
    for _ in range(EPOCHS):  # every image once; half of them get rare objects from a rare-class donor
        for image, mask in pairs:
            if rng.random() < 0.5:
                donor = pairs[int(rng.choice(donors))]
                image, mask = copy_paste(image, mask, *donor, rare, rng)
            pasted.append(mask)

    mosaics = []
    for _ in range(EPOCHS * n):  # each sample a mosaic of 4 images drawn with the balanced weights
        chosen = rng.choice(n, size=4, p=p)
        mosaics.append(mosaic([pairs[int(i)] for i in chosen], SIZE, rng)[1])

    sampled = [masks[int(i)] for i in rng.choice(n, size=EPOCHS * n, p=p)]  # WeightedRandomSampler-like

    ratios = {
        "copy_paste": rare_share(pasted, rare) / baseline,
        "mosaic_balanced": rare_share(mosaics, rare) / baseline,
        "balanced_sampling": rare_share(sampled, rare) / baseline,
    }
    print(f"\nrare-class pixel share per epoch, uniform: {baseline:.4f}; ratios vs uniform:")
    for name, ratio in ratios.items():
        print(f"  {name}: {ratio:.2f}")
    for name, ratio in ratios.items():
        assert ratio > 1.2, f"{name} raises the rare-pixel share only {ratio:.2f}x"
