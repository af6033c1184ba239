"""The training batches: train.data_order's samplers."""

import numpy as np
import pytest
import torch

from gptmini.training.batches import SAMPLERS, BatchSampler, EpochSampler

CPU = torch.device("cpu")


def starts_of(x: torch.Tensor, tokens: np.ndarray) -> list[int]:
    """Each window's start (the tokens are 0, 1, 2, ...: a token is its own index)."""
    return [int(row[0]) for row in x]


def test_an_epoch_reads_each_grid_window_once_without_overlap():
    tokens = np.arange(1000, dtype=np.uint16)
    sampler = EpochSampler(tokens, block_size=10, batch_size=7, seed=3)
    grid = len(sampler._order)
    seen: list[int] = []
    while len(seen) < grid:
        x, y = sampler.sample(CPU)
        assert torch.equal(y[:, :-1], x[:, 1:])
        seen += starts_of(x, tokens)
    epoch = sorted(seen[:grid])
    assert len(set(epoch)) == grid, "a window repeated within an epoch"
    gaps = {b - a for a, b in zip(epoch, epoch[1:], strict=False)}
    assert gaps == {10}, "windows overlap or leave gaps"
    assert epoch[0] < 10 and epoch[-1] + 11 <= len(tokens)


def test_each_epoch_moves_the_grid_and_reorders_it():
    tokens = np.arange(5000, dtype=np.uint16)
    sampler = EpochSampler(tokens, block_size=64, batch_size=1, seed=0)
    offsets, orders = set(), []
    for _ in range(4):
        order = sampler._order.copy()
        orders.append(order)
        offsets.add(int(order.min()))
        sampler._position = len(order)
        sampler.sample(CPU)
    assert len(offsets) > 1, "every epoch used the same window boundaries"
    assert not np.array_equal(orders[0] - orders[0].min(), orders[1] - orders[1].min())


@pytest.mark.parametrize("kind", sorted(SAMPLERS))
def test_a_restored_state_draws_the_same_batches(kind):
    tokens = np.arange(3000, dtype=np.uint16)
    a = SAMPLERS[kind](tokens, block_size=32, batch_size=9, seed=11)
    for _ in range(12):  # across an epoch's end (91 windows, 9 a batch)
        a.sample(CPU)
    state = a.state
    expected = [a.sample(CPU)[0] for _ in range(15)]
    b = SAMPLERS[kind](tokens, block_size=32, batch_size=9, seed=99)
    b.state = state
    assert all(torch.equal(e, b.sample(CPU)[0]) for e in expected)


def test_random_windows_are_the_samplers_default_draws():
    tokens = np.arange(400, dtype=np.uint16)
    x, _ = BatchSampler(tokens, block_size=16, batch_size=4, seed=5).sample(CPU)
    starts = np.random.default_rng(5).integers(0, 400 - 16, size=4)
    assert starts_of(x, tokens) == starts.tolist()
