"""The pieces of inference without training: sliding windows, post-processing, ensemble weights, the CSV, greedy."""

import numpy as np
import pytest
import torch

from app.errors import TrashError
from app.infer.members import Member, combine
from app.infer.postprocess import remove_small_components
from app.infer.submission import check_submission, read_submission, submission_mask
from app.infer.tiles import gaussian_window, sliding_window_probs, tile_starts


@pytest.mark.parametrize("length,tile,overlap", [(100, 32, 0.5), (64, 64, 0.5), (33, 32, 0.25), (500, 128, 0.0)])
def test_tiles_cover_the_image_within_bounds(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    covered = np.zeros(length, bool)
    for s in starts:
        assert 0 <= s <= max(0, length - tile)
        covered[s : s + tile] = True
    assert covered.all() and starts[0] == 0
    if overlap and len(starts) > 1:  # neighbours overlap at least as asked
        assert min(b - a for a, b in zip(starts, starts[1:])) <= tile * (1 - overlap)


def test_gaussian_window_peaks_in_the_centre_and_is_never_zero():
    g = gaussian_window(32, 48)
    assert g.shape == (32, 48) and g.min() > 0 and g.max() == pytest.approx(1.0)
    assert g[16, 24] > g[0, 0]


class PixelModel(torch.nn.Module):
    """A per-pixel model (1x1 conv): its prediction of a tile equals the crop of its whole-image prediction."""

    def __init__(self, classes=5):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, classes, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("size", [(70, 90), (20, 25), (64, 64)])
def test_sliding_window_of_a_per_pixel_model_equals_the_whole_image_prediction(size):
    model = PixelModel().eval()
    x = torch.randn(3, *size)
    whole = torch.softmax(model(x[None]), 1)[0]
    tiled = sliding_window_probs(model, x, (32, 32), overlap=0.5, batch_size=3)
    assert tiled.shape == whole.shape
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)


def test_sliding_window_blends_tiles_of_a_context_model_smoothly():
    conv = torch.nn.Conv2d(3, 4, 9, padding=4)  # sees context: tile borders differ, the blend stays a distribution
    x = torch.randn(3, 80, 100)
    probs = sliding_window_probs(conv.eval(), x, (32, 32), views="flip", overlap=0.5)
    torch.testing.assert_close(probs.sum(0), torch.ones(80, 100), atol=1e-5, rtol=0)


def _blob_probs(h=60, w=60, blobs=((5, 5, 3), (30, 30, 12))):
    probs = torch.zeros(3, h, w)
    probs[0] = 0.6
    for y, x, r in blobs:
        probs[1, y : y + r, x : x + r] = 0.9
        probs[2, y : y + r, x : x + r] = 0.3  # second choice of the blob pixels
    return probs


def test_small_components_take_their_next_class_and_large_ones_stay():
    probs = _blob_probs()
    cleaned = remove_small_components(probs, min_area=20 / (60 * 60))  # the 3x3 blob (9 px) is under 20 px
    before, after = probs.argmax(0), cleaned.argmax(0)
    assert (before[5:8, 5:8] == 1).all() and (after[5:8, 5:8] == 0).all()  # background (0.6) beats 0.3
    assert (after[30:42, 30:42] == 1).all()
    assert torch.equal(remove_small_components(probs, 0.0), probs)


def test_per_class_weights_are_a_weighted_mean_per_class():
    a, b = torch.rand(3, 4, 4), torch.rand(3, 4, 4)
    members = [Member("a", weight=1.0, class_weights=np.array([1, 0, 1])), Member("b", weight=3.0)]
    out = combine([a, b], members)
    torch.testing.assert_close(out[0], (a[0] + 3 * b[0]) / 4)
    torch.testing.assert_close(out[1], b[1])  # member a has weight 0 on class 1
    plain = combine([a, b], [Member("a"), Member("b")])
    torch.testing.assert_close(plain, (a + b) / 2)


def test_class_weights_summing_to_zero_are_refused():
    members = [Member("a", class_weights=np.array([1, 0])), Member("b", class_weights=np.array([1, 0]))]
    with pytest.raises(TrashError, match="class"):
        combine([torch.rand(2, 3, 3)] * 2, members)


def test_submission_reads_back_into_the_masks_written(tmp_path):
    import csv
    import hashlib

    rng = np.random.default_rng(0)
    rows, expected = [], []
    for i in range(3):
        probs = torch.from_numpy(rng.random((4, 300, 200)).astype(np.float32))
        mask = submission_mask(probs)
        rows.append([f"img{i}.jpg", " ".join(map(str, mask.flatten()))])
        expected.append((f"img{i}.jpg", hashlib.sha1(mask.tobytes()).hexdigest()))
    path = tmp_path / "s.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["image_id", "PredictionString"], *rows])
    check_submission(path, expected, 4)
    decoded = [m for _, m in read_submission(path, 4)]
    assert all(m.shape == (256, 256) for m in decoded)
    with pytest.raises(TrashError, match="img1"):
        check_submission(path, [expected[0], (expected[1][0], "0" * 40), expected[2]], 4)
    with pytest.raises(TrashError, match="ids"):
        check_submission(path, expected[::-1], 4)
    with pytest.raises(TrashError, match="outside"):
        list(read_submission(path, 2))


def test_a_truncated_submission_row_is_an_error(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("image_id,PredictionString\na.jpg,1 2 3\n")
    with pytest.raises(TrashError, match="a.jpg.*3 values"):
        list(read_submission(path))


class FakeOOF:
    """An OOFSet stand-in: candidates' probabilities and the truth, scored like the real one."""

    def __init__(self, probs, truth):
        from app.infer.ensemble import OOFSet

        self.probs, self.truth, self.n_classes = probs, truth, probs[0].shape[1]
        self.cm = OOFSet.cm.__get__(self)
        self.score = OOFSet.score.__get__(self)


def test_greedy_selection_picks_the_models_that_add_and_never_lowers_the_score():
    from app.infer.ensemble import greedy

    torch.manual_seed(0)
    truth = torch.randint(0, 3, (6, 16, 16))
    onehot = torch.nn.functional.one_hot(truth, 3).permute(0, 3, 1, 2).float()
    noise = [torch.rand(6, 3, 16, 16) for _ in range(3)]
    good = 0.55 * onehot + 0.45 * noise[0]
    also = 0.5 * onehot + 0.5 * noise[1]
    bad = noise[2]  # no signal: adding it can only hurt
    oof = FakeOOF([bad, good, also], truth)
    counts, steps = greedy(oof, max_members=6)
    assert counts[0] == 0 and counts[1] >= 1
    scores = [s["miou"] for s in steps]
    assert scores == sorted(scores) and scores[0] == max(oof.score(p) for p in oof.probs)


def test_dense_crf_snaps_noisy_probabilities_to_colour_edges():
    pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 (extra 'crf', installed by make) is missing")
    from app.infer.postprocess import dense_crf

    rng = np.random.default_rng(0)
    truth = np.zeros((64, 64), np.int64)
    truth[:, 32:] = 1
    rgb = np.where(truth[..., None] == 1, [200, 40, 40], [30, 30, 200]).astype(np.uint8)
    p1 = np.clip(0.5 + 0.25 * (truth * 2 - 1) + rng.normal(0, 0.3, truth.shape), 0.01, 0.99)
    probs = torch.from_numpy(np.stack([1 - p1, p1]).astype(np.float32))
    refined = dense_crf(rgb, probs)
    torch.testing.assert_close(refined.sum(0), torch.ones(64, 64), atol=1e-4, rtol=0)
    before = (probs.argmax(0).numpy() == truth).mean()
    after = (refined.argmax(0).numpy() == truth).mean()
    assert before < 0.9 and after > 0.98
