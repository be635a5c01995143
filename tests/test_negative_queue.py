"""The remembered-negatives queue of stage-1 contrastive training (hdvila.models.losses.NegativeQueue)."""
import math

import pytest
import torch
import torch.nn.functional as F

from hdvila.models.losses import NegativeQueue, QueuedNegatives, contrastive_loss


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_queued_negatives_are_extra_columns_of_both_directions():
    video, text = _unit(3, 8, 0), _unit(3, 8, 1)
    qv, qt = _unit(4, 8, 2), _unit(4, 8, 3)
    exclude = torch.zeros(3, 4, dtype=torch.bool)
    exclude[1, 2] = True  # row 1's clip is remembered in slot 2: not a negative of row 1
    got = contrastive_loss(video, text, 0.1, gather=False, negatives=QueuedNegatives(qv, qt, exclude))
    t2v = torch.cat([text @ video.t(), text @ qv.t()], dim=1) / 0.1
    v2t = torch.cat([video @ text.t(), video @ qt.t()], dim=1) / 0.1
    t2v[1, 3 + 2] = v2t[1, 3 + 2] = -math.inf
    labels = torch.arange(3)
    expected = 0.5 * (F.cross_entropy(t2v, labels) + F.cross_entropy(v2t, labels))
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    # more negatives can only make each row's softmax harder
    assert float(got) > float(contrastive_loss(video, text, 0.1, gather=False))


def test_queue_is_fifo_bounded_detached_and_masks_the_same_clip():
    queue = NegativeQueue(5)
    assert queue.negatives(["a"], torch.device("cpu")) is None  # empty: plain in-batch loss
    video = _unit(3, 4, 0).requires_grad_()
    queue.push(video, _unit(3, 4, 1), ["a", "b", "c"])
    queue.push(_unit(3, 4, 2), _unit(3, 4, 3), ["d", "e", "f"])
    assert queue.keys == ["d", "e", "f", "a", "b"]  # newest first, the oldest ("c") dropped
    assert queue.video.shape == (5, 4) and not queue.video.requires_grad
    negatives = queue.negatives(["b", "z"], torch.device("cpu"))
    assert negatives.exclude.tolist() == [[False, False, False, False, True], [False] * 5]
    restored = NegativeQueue(5)
    restored.load_state_dict(queue.state_dict())
    assert restored.keys == queue.keys and torch.equal(restored.text, queue.text)
    with pytest.raises(ValueError):
        NegativeQueue(-1)
