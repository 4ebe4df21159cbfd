import torch

from vqvae.config import QuantizerConfig
from vqvae.metrics.codebook import codebook_stats
from vqvae.models import VectorQuantizer, kmeans, nearest_codes, straight_through


def brute_force_nearest(flat, codebook):
    return ((flat[:, None, :] - codebook[None, :, :]) ** 2).sum(-1).argmin(1)


def test_matmul_search_agrees_with_brute_force():
    g = torch.Generator().manual_seed(0)
    flat, codebook = torch.randn(2000, 16, generator=g), torch.randn(300, 16, generator=g)
    assert torch.equal(nearest_codes(flat, codebook), brute_force_nearest(flat, codebook))
    # chunking must not change the answer
    assert torch.equal(nearest_codes(flat, codebook, chunk_size=77), brute_force_nearest(flat, codebook))


def test_quantized_output_equals_codebook_rows_at_indices():
    q = VectorQuantizer(8, QuantizerConfig(codebook_size=10)).eval()
    q.codebook.data = torch.randn(10, 8)
    z = torch.randn(3, 8, 4, 5)
    out = q(z)
    expected = q.codebook[out.indices].permute(0, 3, 1, 2)
    assert torch.allclose(out.quantized, expected, atol=1e-6)
    assert out.indices.shape == (3, 4, 5)
    assert torch.equal(out.indices.flatten(), brute_force_nearest(z.permute(0, 2, 3, 1).reshape(-1, 8), q.codebook))


def test_straight_through_gradient_reaches_encoder_unchanged():
    q = VectorQuantizer(4, QuantizerConfig(codebook_size=6)).eval()
    q.codebook.data = torch.randn(6, 4)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    decoder_input = out.quantized
    decoder_input.retain_grad()
    upstream = torch.randn_like(decoder_input)
    (decoder_input * upstream).sum().backward()
    assert torch.equal(z.grad, decoder_input.grad)
    assert torch.equal(z.grad, upstream)


def test_straight_through_forward_value():
    a, b = torch.randn(5), torch.randn(5)
    assert torch.allclose(straight_through(a, b), b)


def test_ema_update_matches_hand_computation():
    cfg = QuantizerConfig(codebook_size=2, update="ema", ema_decay=0.5, ema_epsilon=0.0)
    q = VectorQuantizer(1, cfg)
    q.codebook.data = torch.tensor([[0.0], [10.0]])
    q.ema_embed_sum.copy_(torch.tensor([[0.0], [10.0]]))
    q.ema_cluster_size.copy_(torch.tensor([1.0, 1.0]))
    q.train()
    # Four scalars: 1 and 3 go to code 0, 9 and 13 to code 1.
    z = torch.tensor([1.0, 3.0, 9.0, 13.0]).view(1, 1, 2, 2)
    q(z)
    # N = 0.5*1 + 0.5*2 = 1.5 for both; m0 = 0.5*0 + 0.5*4 = 2, m1 = 0.5*10 + 0.5*22 = 16
    assert torch.allclose(q.ema_cluster_size, torch.tensor([1.5, 1.5]))
    assert torch.allclose(q.codebook.data, torch.tensor([[2 / 1.5], [16 / 1.5]]))


def test_ema_codebook_gets_no_gradient_and_loss_codebook_does():
    assert not VectorQuantizer(4, QuantizerConfig(update="ema")).codebook.requires_grad
    q = VectorQuantizer(4, QuantizerConfig(update="loss"))
    out = q(torch.randn(2, 4, 3, 3))
    out.codebook_loss.backward()
    assert q.codebook.grad is not None and q.codebook.grad.abs().sum() > 0


def test_kmeans_init_places_codes_on_clusters():
    centres = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    data = torch.cat([c + 0.01 * torch.randn(200, 2) for c in centres])
    found = kmeans(data, 3, 10, torch.Generator().manual_seed(1))
    dists = torch.cdist(centres, found).min(1).values
    assert (dists < 0.1).all()
    q = VectorQuantizer(2, QuantizerConfig(codebook_size=3, init="kmeans", update="ema")).train()
    q(data.T.reshape(1, 2, 30, 20))
    assert bool(q.initialised)
    assert (torch.cdist(centres, q.codebook.data).min(1).values < 0.2).all()


def test_dead_codes_are_restarted_from_encoder_outputs():
    cfg = QuantizerConfig(codebook_size=4, update="ema", restart_after_steps=2)
    q = VectorQuantizer(2, cfg).train()
    assert q.restart_check_every == 1
    q.codebook.data = torch.tensor([[0.0, 0.0], [100.0, 100.0], [200.0, 200.0], [300.0, 300.0]])
    q.ema_embed_sum.copy_(q.codebook.data)
    z = torch.full((1, 2, 2, 2), 0.5)  # every vector nearest code 0
    q(z)
    assert (q.steps_unused[1:] == 1).all()
    q(z)  # codes 1..3 unused for 2 steps: re-seeded from z (all 0.5)
    assert torch.allclose(q.codebook.data[1:], torch.full((3, 2), 0.5), atol=0.02)
    assert (q.steps_unused == 0).all()


def test_eval_mode_does_not_change_codebook():
    q = VectorQuantizer(3, QuantizerConfig(update="ema", init="kmeans")).eval()
    before = q.state_dict()
    before = {k: v.clone() for k, v in before.items()}
    q(torch.randn(2, 3, 4, 4))
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())


def test_codebook_stats():
    stats = codebook_stats(torch.tensor([5, 5, 0, 0]))
    assert stats["codes_used"] == 2 and stats["dead_codes"] == 2
    assert abs(stats["perplexity"] - 2.0) < 1e-6
