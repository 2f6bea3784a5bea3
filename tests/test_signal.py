"""alpha follows the loss on real images: searches on the embedded Fashion-MNIST subset through
the public API (`Choice`, `DSNAS`), a few hundred steps each.

The networks are small residual CNNs, x + Z * op(x), without BN (BN would make the loss blind to
the gate's scale). Each test also runs a control in which the reward is dropped, so the
alpha-gradient is onehot(s) - p alone: the control must not reach the same outcome, which shows
that the outcome comes from the reward and not from the sampler or the optimizer.
"""

import pytest
import torch
from torch import nn

import dsnas.search
from dsnas import DSNAS, Choice
from dsnas.data import load_data

pytestmark = pytest.mark.slow  # hundreds of training steps per test

BLOCKS = 3
CHANNELS = 8
WARMUP_STEPS = 100  # weights only, as in DSNAS's warm-up stage: a random conv is noise until it has trained
STEPS = 300


class Conv(nn.Module):
    """conv 3x3 + ReLU, with optional loud Gaussian noise added to its output."""

    def __init__(self, noise: float = 0.0):
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)
        self.noise = noise

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return y + self.noise * torch.randn_like(y) if self.noise else y


class Residual(nn.Module):
    def __init__(self, choice: Choice):
        super().__init__()
        self.choice = choice

    def forward(self, x):
        return x + self.choice(x)


def _network(candidates) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, CHANNELS, 3, stride=2, padding=1), nn.ReLU(),
                         *[Residual(Choice(candidates())) for _ in range(BLOCKS)],
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(CHANNELS, 10))


@pytest.fixture(scope="module")
def images():
    train = load_data().train
    return train.images[:4096].float().div(255).sub(0.29).div(0.35), train.labels[:4096]


def _search(candidates, images, seed: int = 1) -> list[torch.Tensor]:
    """Train the weights alone for WARMUP_STEPS, then weights and alpha together for STEPS steps;
    return softmax(alpha) of every block."""
    torch.manual_seed(seed)
    model = _network(candidates)
    search = DSNAS(model, generator=torch.Generator().manual_seed(seed))
    weight_opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    arch_opt = torch.optim.Adam(search.alphas, lr=0.02, betas=(0.5, 0.999))
    x_all, y_all = images
    order = torch.Generator().manual_seed(seed)
    for step in range(WARMUP_STEPS + STEPS):
        idx = torch.randint(len(y_all), (64,), generator=order)
        searching = step >= WARMUP_STEPS
        search.sample(gate=searching)
        loss = nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
        weight_opt.zero_grad(set_to_none=True)
        arch_opt.zero_grad(set_to_none=True)
        loss.backward()
        if searching:
            search.compute_arch_grads()
            arch_opt.step()
        weight_opt.step()
    return search.probs()


@pytest.fixture
def no_reward(monkeypatch):
    """The control: the DSNAS gradient without its reward, onehot(s) - p."""
    original = dsnas.search.dsnas_alpha_grad
    monkeypatch.setattr(dsnas.search, "dsnas_alpha_grad",
                        lambda alpha, s, reward: original(alpha, s, torch.ones_like(reward)))


def _noisy_space():
    return {"conv_a": Conv(), "conv_b": Conv(), "noisy": Conv(noise=3.0)}


def _better_space():
    return {"noisy_a": Conv(noise=3.0), "conv": Conv(), "noisy_b": Conv(noise=3.0)}


def _noisy_is_least_likely(probs) -> bool:
    return all(int(torch.argmin(p)) == 2 and float(p[2]) < 0.15 for p in probs)


def _conv_is_preferred(probs) -> bool:
    return all(int(torch.argmax(p)) == 1 and float(p[1]) > 0.5 for p in probs)


def test_planted_noisy_candidate_ends_least_likely_in_every_block(images):
    probs = _search(_noisy_space, images)
    assert _noisy_is_least_likely(probs), [p.tolist() for p in probs]


def test_the_useful_candidate_is_preferred_in_every_block(images):
    probs = _search(_better_space, images)
    assert _conv_is_preferred(probs), [p.tolist() for p in probs]


def test_without_the_reward_alpha_finds_neither(images, no_reward):
    assert not _noisy_is_least_likely(_search(_noisy_space, images))
    assert not _conv_is_preferred(_search(_better_space, images))
