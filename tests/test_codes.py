import torch

from conftest import SIZE, bar_images
from vqvae.config import load_config
from vqvae.data import ImageSet
from vqvae.models import VQVAE
from vqvae.training.prior_stage import cached_codes, encode_images, shift_images, shift_offsets


def test_shift_images_moves_content_and_fills_zeros():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    down_right = shift_images(x, 1, 1)
    assert torch.equal(down_right[0, 0, 1:, 1:], x[0, 0, :3, :3])
    assert down_right[0, 0, 0].abs().sum() == 0 and down_right[0, 0, :, 0].abs().sum() == 0
    up_left = shift_images(x, -1, -2)
    assert torch.equal(up_left[0, 0, :3, :2], x[0, 0, 1:, 2:])
    assert torch.equal(shift_images(x, 0, 0), x)
    assert shift_offsets(1)[0] == (0, 0) and len(shift_offsets(1)) == 9 and len(set(shift_offsets(2))) == 25


def test_shifted_codes_are_cached_and_start_with_the_unshifted_ones(tmp_path):
    cfg = load_config("tiny", [f"data.image_size={SIZE}"])
    model = VQVAE(cfg.model, cfg.quantizer).eval()
    images, _ = bar_images(12)
    data = ImageSet("bars", SIZE, 1, images=torch.from_numpy(images)[:, None])
    plain = encode_images(model, data, torch.device("cpu"))
    shifted = cached_codes(model, data, "train", tmp_path, torch.device("cpu"), shifts=1)
    assert shifted.shape == (9 * 12, SIZE // 4, SIZE // 4)
    assert torch.equal(shifted[:12], plain.long())
    assert torch.equal(cached_codes(model, data, "train", tmp_path, torch.device("cpu"), shifts=1), shifted)
    # a different shift setting must not reuse the cache
    assert cached_codes(model, data, "train", tmp_path, torch.device("cpu"), shifts=0).shape[0] == 12
