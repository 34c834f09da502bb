"""--ema: the moving average of the weights and batch-norm statistics that a run validates and exports."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.averaging import WeightAverage


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_the_average_starts_as_a_copy_that_neither_trains_nor_shares_storage() -> None:
    net = _net()
    average = WeightAverage(net, 0.9)
    assert not average.model.training and not any(p.requires_grad for p in average.model.parameters())
    for mine, theirs in zip(average.model.state_dict().values(), net.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs) and mine.data_ptr() != theirs.data_ptr()


def test_each_update_moves_every_float_a_share_of_the_way_and_copies_the_step_counter() -> None:
    net = _net()
    average = WeightAverage(net, 0.5)
    before = {k: v.clone() for k, v in average.model.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)  # as an optimiser step does, in place
        net.train()(torch.randn(8, 1, 8, 8))  # batch norm's running statistics and step counter move
    decay = average.current_decay()
    assert decay == pytest.approx(1 / 10)  # the first update trusts the trained weights most
    average.update()
    for key, now in net.state_dict().items():
        got = average.model.state_dict()[key]
        if key.endswith("num_batches_tracked"):
            assert got.item() == now.item() == 1
        else:
            torch.testing.assert_close(got, decay * before[key] + (1 - decay) * now)


def test_the_decay_rises_to_the_one_asked_for() -> None:
    average = WeightAverage(_net(), 0.99)
    decays = []
    for _ in range(1000):
        decays.append(average.current_decay())
        average.update()
    assert decays == sorted(decays) and decays[0] < 0.2
    assert decays[800] < 0.99 and decays[-1] == 0.99  # (1 + t) / (10 + t) reaches 0.99 at t = 891


def test_a_model_that_stops_changing_is_its_own_average() -> None:
    net = _net()
    average = WeightAverage(net, 0.99)
    with torch.no_grad():
        net[3].weight.mul_(3.0)
    for _ in range(3000):
        average.update()
    torch.testing.assert_close(average.model[3].weight, net[3].weight)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_a_decay_outside_the_open_unit_interval_is_refused(decay: float) -> None:
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(_net(), decay)
