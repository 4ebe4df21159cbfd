import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vqvae.config import PriorConfig
from vqvae.errors import ConfigError
from vqvae.models import GatedPixelCNN, PriorSpec, sample_full_pass


def dependency_matrix(model, K, H, W, labels=None):
    """dep[p, q] = True when the output at raster position p changes with the input at q."""
    codes = torch.randint(0, K, (2, H, W), generator=torch.Generator().manual_seed(0))
    base = model(codes, labels)
    dep = torch.zeros(H * W, H * W, dtype=torch.bool)
    for q in range(H * W):
        for delta in range(1, K):
            changed = codes.clone()
            changed[:, q // W, q % W] = (changed[:, q // W, q % W] + delta) % K
            diff = (model(changed, labels) - base).abs().amax(dim=(0, 1)).flatten() > 0
            dep[:, q] |= diff
    return dep


def check_autoregressive(dep):
    """(causal, earlier positions not seen)."""
    causal = not torch.triu(dep).any()  # includes the diagonal: a position never sees itself
    missing = int((~dep).tril(-1).sum())
    return causal, missing


@pytest.mark.parametrize("conditional", [False, True])
def test_gated_pixelcnn_is_causal_without_blind_spot(conditional):
    torch.manual_seed(0)
    spec = PriorSpec(codebook_size=4, latent_size=5, num_classes=3)
    model = GatedPixelCNN(PriorConfig(num_layers=4, hidden_channels=8, conditional=conditional), spec).eval()
    labels = torch.tensor([0, 2]) if conditional else None
    causal, missing = check_autoregressive(dependency_matrix(model, 4, 5, 5, labels))
    assert causal
    assert missing == 0


class BlindSpotPixelCNN(nn.Module):
    """The original PixelCNN's single stack of masked 3x3 convolutions: it has a blind spot."""

    def __init__(self, K, C=8, layers=4):
        super().__init__()
        self.embedding = nn.Embedding(K, C)
        self.convs = nn.ModuleList(nn.Conv2d(C, C, 3, padding=1) for _ in range(layers))
        self.out = nn.Conv2d(C, K, 1)
        for i, conv in enumerate(self.convs):
            mask = torch.ones_like(conv.weight)
            mask[:, :, 1, 1 + (i > 0):] = 0  # type A on the first layer, B after
            mask[:, :, 2:] = 0
            conv.register_buffer("mask", mask)

    def forward(self, codes, labels=None):
        x = self.embedding(codes).permute(0, 3, 1, 2)
        for conv in self.convs:
            x = torch.relu(F.conv2d(x, conv.weight * conv.mask, conv.bias, padding=1))
        return self.out(x)


def test_the_check_detects_a_blind_spot():
    torch.manual_seed(0)
    causal, missing = check_autoregressive(dependency_matrix(BlindSpotPixelCNN(4).eval(), 4, 5, 5))
    assert causal and missing > 0


@pytest.mark.parametrize("size", [4, 7])
def test_incremental_path_equals_full_pass(size):
    torch.manual_seed(0)
    spec = PriorSpec(codebook_size=6, latent_size=size, num_classes=2)
    model = GatedPixelCNN(PriorConfig(num_layers=3, hidden_channels=8, first_kernel_size=5, conditional=True),
                          spec).eval()
    codes = torch.randint(0, 6, (3, size, size))
    labels = torch.tensor([0, 1, 1])
    full = model(codes, labels)
    incremental = model.teacher_forced_logits(codes, labels)
    assert torch.allclose(full, incremental, atol=1e-5)


def test_fast_and_full_pass_samplers_draw_the_same_codes():
    torch.manual_seed(0)
    model = GatedPixelCNN(PriorConfig(num_layers=2, hidden_channels=8), PriorSpec(5, 4)).eval()
    fast = model.sample(4, generator=torch.Generator().manual_seed(3))
    slow = sample_full_pass(model, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(fast, slow)


def test_top_k_one_is_greedy_and_temperature_is_checked():
    torch.manual_seed(0)
    model = GatedPixelCNN(PriorConfig(num_layers=2, hidden_channels=8), PriorSpec(5, 3)).eval()
    a = model.sample(2, top_k=1, generator=torch.Generator().manual_seed(0))
    b = model.sample(2, top_k=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        model.sample(1, temperature=0)


def test_sampling_a_conditional_prior_checks_its_labels():
    model = GatedPixelCNN(PriorConfig(num_layers=2, hidden_channels=8, conditional=True), PriorSpec(5, 3, 10)).eval()
    with pytest.raises(ConfigError, match=r"class-conditional \(10 classes\): pass labels.*torch.arange\(4\) % 10"):
        model.sample(4)
    with pytest.raises(ConfigError, match=r"class indices in 0..9; got 0..10"):
        model.sample(2, labels=torch.tensor([0, 10]))
    with pytest.raises(ConfigError, match=r"shape \(4,\), got \(2,\)"):
        model.sample(4, labels=torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="integer tensor"):
        model.sample(2, labels=torch.tensor([0.0, 1.0]))
    assert model.sample(4, labels=torch.arange(4) % 10).shape == (4, 3, 3)
