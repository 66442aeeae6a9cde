"""The shared training loop: resumes after a kill and ends with the uninterrupted weights;
the optional EMA of the weights follows its formula and resumes bit-identically too."""

import copy

import pytest
import torch
from torch import nn

from anodiff.methods.base import TrainCallbacks
from anodiff.training import train_epochs


def _fit(tmp_path, epochs, stop_after=None, checkpoint_every=2, ema_decay=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 4))
    ema = copy.deepcopy(model) if ema_decay is not None else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * 3)
    data = torch.linspace(-1, 1, 40).reshape(10, 4)

    def loss_fn(batch, generator):
        noise = torch.randn(batch.shape, generator=generator)  # noise drawn from the saved RNG
        return ((model(batch + 0.1 * noise) - batch) ** 2).mean()

    def log_metrics(metrics, step):
        if stop_after is not None and step == stop_after:
            raise KeyboardInterrupt("simulated kill")

    callbacks = TrainCallbacks(log_metrics=log_metrics, checkpoint_path=str(tmp_path / "ckpt.pt"),
                               checkpoint_every=checkpoint_every, show_progress=False)
    state = train_epochs(model, optimizer, scheduler, loss_fn, data, epochs=epochs, batch_size=4,
                         seed=3, callbacks=callbacks, ema=ema, ema_decay=ema_decay or 0.0)
    return (model, state) if ema is None else (model, state, ema)


def test_resumed_training_equals_uninterrupted(tmp_path):
    reference, reference_state = _fit(tmp_path / "a", epochs=7)
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "b", epochs=7, stop_after=5)  # killed after epoch 5, checkpoint at 4
    assert (tmp_path / "b" / "ckpt.pt").is_file()
    resumed, resumed_state = _fit(tmp_path / "b", epochs=7)
    assert resumed_state.epoch == 7
    assert resumed_state.losses == pytest.approx(reference_state.losses, rel=0, abs=0)
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_loss_decreases_and_is_logged_per_epoch(tmp_path):
    _, state = _fit(tmp_path, epochs=6)
    assert len(state.losses) == 6
    assert state.losses[-1] < state.losses[0]


def test_non_finite_loss_stops_with_clear_error(tmp_path):
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(FloatingPointError, match="epoch 1"):
        train_epochs(model, optimizer, None, lambda batch, g: model(batch).sum() * float("nan"),
                     torch.ones(4, 2), epochs=2, batch_size=2, seed=0,
                     callbacks=TrainCallbacks(show_progress=False))


def test_empty_training_set_is_an_error():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="no training samples"):
        train_epochs(model, torch.optim.SGD(model.parameters(), lr=0.1), None,
                     lambda b, g: b.sum(), torch.ones(0, 2), epochs=1, batch_size=2, seed=0,
                     callbacks=TrainCallbacks(show_progress=False))


def test_resumed_training_with_ema_equals_uninterrupted(tmp_path):
    reference, _, reference_ema = _fit(tmp_path / "a", epochs=7, ema_decay=0.9)
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "b", epochs=7, stop_after=5, ema_decay=0.9)  # checkpoint at epoch 4
    resumed, _, resumed_ema = _fit(tmp_path / "b", epochs=7, ema_decay=0.9)
    for a, b in zip([*reference.parameters(), *reference_ema.parameters()],
                    [*resumed.parameters(), *resumed_ema.parameters()]):
        assert torch.equal(a, b)
    # the EMA is not the trained weights (0.9 over 21 steps still remembers the start)
    assert any(not torch.equal(a, b) for a, b in zip(reference.parameters(), reference_ema.parameters()))


def test_ema_follows_its_formula_after_every_optimiser_step():
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False)
    start = model.weight.detach().clone()
    ema = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    seen = []

    def loss_fn(batch, generator):
        seen.append(model.weight.detach().clone())  # the weights before this step
        return (model(batch) ** 2).mean()

    data = torch.eye(3)  # 3 samples, batch 1: 3 optimiser steps
    train_epochs(model, optimizer, None, loss_fn, data, epochs=1, batch_size=1, seed=0,
                 callbacks=TrainCallbacks(show_progress=False), ema=ema, ema_decay=0.75)
    after = [*seen[1:], model.weight.detach()]  # the weights after each step
    expected = start
    for weights in after:
        expected = 0.75 * expected + 0.25 * weights
    torch.testing.assert_close(ema.weight, expected, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="ema_decay"):
        train_epochs(model, optimizer, None, loss_fn, data, epochs=1, batch_size=1, seed=0,
                     callbacks=TrainCallbacks(show_progress=False), ema=ema, ema_decay=1.0)


def _one_epoch(batch_size, accumulate, optimizer_class=torch.optim.SGD, samples=8):
    """A toy model after one epoch of ``batch_size`` minibatches, ``accumulate`` per step."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = optimizer_class(model.parameters(), lr=0.1)
    steps = []
    optimizer.register_step_post_hook(lambda *args: steps.append(1))
    data = torch.linspace(-1, 1, samples * 4).reshape(samples, 4)

    def loss_fn(batch, generator):
        return ((model(batch) - batch[:, :3].flip(1)) ** 2).mean()

    train_epochs(model, optimizer, None, loss_fn, data, epochs=1, batch_size=batch_size, seed=3,
                 callbacks=TrainCallbacks(show_progress=False), accumulate=accumulate)
    return model, len(steps)


@pytest.mark.parametrize("optimizer_class", [torch.optim.SGD, torch.optim.Adam])
def test_accumulated_minibatches_make_the_update_of_the_larger_batch(optimizer_class):
    # 4 minibatches of 2, accumulated, = one minibatch of 8 (mean losses): one step, the same weights
    large, large_steps = _one_epoch(8, 1, optimizer_class)
    accumulated, accumulated_steps = _one_epoch(2, 4, optimizer_class)
    assert large_steps == accumulated_steps == 1
    for a, b in zip(large.parameters(), accumulated.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    plain, plain_steps = _one_epoch(2, 1, optimizer_class)  # without accumulation: 4 smaller steps
    assert plain_steps == 4 and not torch.allclose(plain.weight, large.weight)


def test_a_partial_accumulation_group_steps_at_the_end_of_the_epoch():
    # 5 minibatches of 2 with 2 per step: steps after minibatches 2, 4 and 5 (no step spans epochs)
    _, steps = _one_epoch(2, 2, samples=10)
    assert steps == 3
    with pytest.raises(ValueError, match="accumulate must be >= 1"):
        _one_epoch(2, 0)


def test_resumed_training_with_accumulation_equals_uninterrupted(tmp_path):
    def fit(folder, stop_after=None):
        torch.manual_seed(0)
        model = nn.Linear(4, 4)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        data = torch.linspace(-1, 1, 40).reshape(10, 4)

        def log_metrics(metrics, step):
            if step == stop_after:
                raise KeyboardInterrupt("simulated kill")

        callbacks = TrainCallbacks(log_metrics=log_metrics, checkpoint_path=str(folder / "ckpt.pt"),
                                   checkpoint_every=2, show_progress=False)
        loss_fn = lambda batch, g: ((model(batch + 0.1 * torch.randn(batch.shape, generator=g)) - batch) ** 2).mean()  # noqa: E731
        train_epochs(model, optimizer, None, loss_fn, data, epochs=5, batch_size=3, seed=1,
                     callbacks=callbacks, accumulate=3)
        return model

    reference = fit(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "b", stop_after=3)  # killed after epoch 3, checkpoint at 2
    resumed = fit(tmp_path / "b")
    for a, b in zip(reference.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
