"""model.arch=vqgan: config checks, every quantizer kind, bf16, channels-last, exact resume, DDP."""
import numpy as np
import pytest
import torch

from conftest import bar_images, memory_data, tiny_overrides
from vqvae import api
from vqvae.checkpoint import load_checkpoint
from vqvae.config import RunConfig, apply_overrides, get_preset, load_config
from vqvae.errors import ConfigError
from vqvae.models import VQVAE
from vqvae.nn.vqgan import Downsample, SelfAttention

KINDS = {"vq": [], "fsq": ["quantizer.kind=fsq", "quantizer.codebook_size=64"],
         "lfq": ["quantizer.kind=lfq", "quantizer.codebook_size=16"],
         "rvq": ["quantizer.kind=rvq", "quantizer.rvq_depth=2"]}


@pytest.fixture
def vqgan_config(bar_folder):
    return load_config("vqgan-tiny", tiny_overrides(bar_folder))


def test_presets_build_the_architecture_they_describe():
    cfg = get_preset("vqgan-f8-64")
    model = VQVAE(cfg.model, cfg.quantizer)
    assert model.latent_size == 8 and model.codebook_size == 1024
    # channel_mult [1, 2, 2, 4] x 128: three downsamplings, attention only at 1/8 and in the middle blocks
    blocks = model.encoder.down_blocks
    assert [b.resnets[-1].conv2.out_channels for b in blocks] == [128, 256, 256, 512]
    assert [b.attentions is not None for b in blocks] == [False, False, False, True]
    assert [b.attentions is not None for b in model.decoder.up_blocks] == [True, False, False, False]
    assert all(len(b.resnets) == 3 for b in model.decoder.up_blocks)  # layers_per_block + 1, as diffusers
    assert model.encoder.quant_conv.out_channels == 4
    tiny = get_preset("vqgan-tiny")
    assert VQVAE(tiny.model, tiny.quantizer).latent_size == 7


def test_options_of_the_other_architecture_are_errors():
    with pytest.raises(ConfigError, match="model.channel_mult=.*does not apply to model.arch=vqvae"):
        load_config("tiny", ["model.channel_mult=1,2"])
    with pytest.raises(ConfigError, match="model.num_residual_hiddens=32 does not apply to model.arch=vqgan"):
        load_config("cifar10", ["model.arch=vqgan", "model.channel_mult=1,2,2"])
    with pytest.raises(ConfigError, match="model.num_downsamples=3 does not apply to model.arch=vqgan"):
        load_config("vqgan-tiny", ["model.num_downsamples=3"])
    with pytest.raises(ConfigError, match="needs 2 to 5 multipliers"):
        load_config("tiny", ["model.arch=vqgan"])
    with pytest.raises(ConfigError, match=r"norm_groups=32 must divide every block width.*\[8, 8, 16\]"):
        load_config("vqgan-tiny", ["model.norm_groups=32"])
    with pytest.raises(ConfigError, match="attention_resolutions=\\[3\\].*1/\\[1, 2, 4\\]"):
        load_config("vqgan-tiny", ["model.attention_resolutions=3"])
    with pytest.raises(ConfigError, match="multiple of 8"):
        load_config("vqgan-f8-64", ["data.image_size=36"])
    with pytest.raises(ConfigError, match="model.arch='gan'"):
        load_config("tiny", ["model.arch=gan"])
    # attention by downsampling factor: the preset's attention stays at the lowest resolution at another size
    cfg = load_config("vqgan-f8-64", ["data.image_size=32"])
    assert VQVAE(cfg.model, cfg.quantizer).latent_size == 4


def test_configs_saved_before_the_arch_field_are_the_seed_architecture():
    old = get_preset("tiny").to_dict()
    for name in ("arch", "channel_mult", "layers_per_block", "attention_resolutions", "mid_attention",
                 "norm_groups", "latent_channels"):
        del old["model"][name]
    cfg = RunConfig.from_dict(old)
    assert cfg.model.arch == "vqvae"
    assert not hasattr(VQVAE(cfg.model, cfg.quantizer).encoder, "down_blocks")


def test_downsampling_pads_right_and_bottom_only():
    down = Downsample(1)
    with torch.no_grad():
        down.conv.weight.zero_()
        down.conv.bias.zero_()
        down.conv.weight[0, 0, 2, 2] = 1.0  # picks the input pixel below-right of each output's centre
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # output (i, j) sees input rows 2i..2i+2: its bottom-right tap is (2i+2, 2j+2), zero past the edge
    assert torch.equal(down(x)[0, 0], torch.tensor([[10.0, 0.0], [0.0, 0.0]]))


def test_attention_is_single_head_softmax_attention_with_a_residual():
    torch.manual_seed(0)
    attn = SelfAttention(8, groups=2).eval()
    x = torch.randn(2, 8, 3, 3)
    h = attn.group_norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
    q, k, v = attn.to_q(h), attn.to_k(h), attn.to_v(h)
    weights = torch.softmax(q @ k.transpose(1, 2) / 8 ** 0.5, dim=-1)
    expected = x + attn.to_out[0](weights @ v).transpose(1, 2).reshape(2, 8, 3, 3)
    assert torch.allclose(attn(x), expected, atol=1e-5)
    attn.train()  # the training path's separate projections give the same
    assert torch.allclose(attn(x), expected, atol=1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_quantizer_kind_trains_a_vqgan(kind):
    cfg = load_config("vqgan-tiny", KINDS[kind] + ["data.image_size=16"])
    torch.manual_seed(0)
    model = VQVAE(cfg.model, cfg.quantizer).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    x = torch.from_numpy(bar_images(32)[0])[:, None].float() / 255
    losses = []
    for _ in range(15):
        out = model(x)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.reconstruction_loss.item())
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses
    model.eval()
    codes = model.codes(x[:4])
    assert torch.allclose(model.decode_indices(codes), model(x[:4]).reconstruction, atol=1e-5)


def test_bf16_autocast_and_channels_last_give_the_fp32_result():
    cfg = load_config("vqgan-tiny", ["data.image_size=16"])
    torch.manual_seed(0)
    model = VQVAE(cfg.model, cfg.quantizer).eval()
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        reference = model(x).reconstruction
        latents, codes = model.encode(x), model.codes(x)
        last = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last)).reconstruction
        with torch.autocast("cpu", dtype=torch.bfloat16):
            # (random codes lie close together: bf16 latents may pick a neighbour, so the halves are compared apart)
            half_latents, half_images = model.encode(x), model.decode_indices(codes)
    assert torch.allclose(last, reference, atol=1e-5)
    assert half_latents.dtype == torch.bfloat16 and half_images.dtype == torch.bfloat16
    assert (half_latents.float() - latents).abs().max() < 0.05 * latents.abs().max()
    assert (half_images.float() - reference).abs().max() < 0.05


def test_vqgan_run_resumes_bitwise_and_refuses_a_changed_architecture(vqgan_config, tmp_path):
    cfg = apply_overrides(vqgan_config, ["train.lr_schedule=constant", "train.epochs=2", "train.amp=off",
                                         "train.channels_last=true"])
    data = memory_data()
    api.train_vqvae(cfg, tmp_path / "straight", data=data)
    api.train_vqvae(apply_overrides(cfg, ["train.epochs=1"]), tmp_path / "split", data=data)
    with pytest.raises(ConfigError, match="model.layers_per_block: 1 -> 2"):
        api.train_vqvae(apply_overrides(cfg, ["model.layers_per_block=2"]), tmp_path / "split", resume=True, data=data)
    api.train_vqvae(cfg, tmp_path / "split", resume=True, data=data)
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "vqvae-last.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "vqvae-last.pt")
    assert any(k.startswith("encoder.down_blocks.") for k in a["model_state"])
    for key, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][key]), key


def test_two_gloo_processes_keep_vqgan_replicas_identical(vqgan_config, tmp_path):
    from test_distributed import launch

    cfg = apply_overrides(vqgan_config, ["train.epochs=1", "prior_train.epochs=1", "train.amp=off",
                                         "train.channels_last=false"])
    launch(cfg, tmp_path / "ddp", 2)
    rank0 = torch.load(tmp_path / "ddp" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "ddp" / "rank1.pt", weights_only=True)
    assert any(".attentions." in k for k in rank0["state"])
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), f"replicas differ in {key}"


def test_folder_and_onnx_exports_cover_vqgan(tmp_path):
    pytest.importorskip("onnxruntime")
    from vqvae.export import IMAGE_TOLERANCE, export_onnx_model

    torch.manual_seed(0)
    cfg = load_config("vqgan-tiny", ["data.image_size=16"])
    model = VQVAE(cfg.model, cfg.quantizer)
    model.train()(torch.rand(64, 1, 16, 16))  # k-means codebook on encoder outputs: many codes in use
    model.eval()
    model.save_pretrained(tmp_path / "folder")
    loaded = VQVAE.from_pretrained(tmp_path / "folder")
    x = torch.rand(8, 1, 16, 16)
    assert loaded.model_config.arch == "vqgan" and torch.equal(loaded.codes(x), model.codes(x))
    with torch.no_grad():
        assert torch.equal(loaded(x).reconstruction, model(x).reconstruction)
    report = export_onnx_model(model, tmp_path / "onnx", torch.rand(32, 1, 16, 16))
    check = report["verification"]
    assert check["codes_equal"] + check["distance_ties"] == check["codes_compared"] == 32 * 16
    assert check["max_abs_image_difference"] <= IMAGE_TOLERANCE


def test_a_64_pixel_colour_folder_gets_celeba_hq_64_and_vqgan_only_by_name(tmp_path):
    from PIL import Image

    from vqvae.data import choose_preset
    from vqvae.data.choose import AUTO_PRESETS

    for i in range(3):
        Image.new("RGB", (64, 64)).save(tmp_path / f"{i}.png")
    assert choose_preset(None, [f"data.dataset={tmp_path}"]).preset == "celeba-hq-64"
    assert choose_preset("vqgan-f8-64", [f"data.dataset={tmp_path}"]).preset == "vqgan-f8-64"  # by name it fits
    shapes = [(get_preset(n).data.image_size, get_preset(n).data.channels) for n in AUTO_PRESETS]
    assert len(set(shapes)) == len(shapes)  # no two automatic presets tie
    assert not any(get_preset(n).model.arch == "vqgan" for n in AUTO_PRESETS)


def test_inference_without_autograd_gives_the_training_paths_values():
    """Without autograd the residual blocks take SiLU and their sums in place: the same outputs as
    with autograd on, and the caller's images untouched."""
    cfg = load_config("vqgan-tiny", ["data.image_size=16"])
    torch.manual_seed(0)
    model = VQVAE(cfg.model, cfg.quantizer).eval()
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        fast = model.encode(x), model.decode(model.encode(x))
    slow = model.encode(x), model.decode(model.encode(x))
    assert slow[0].requires_grad
    assert torch.allclose(fast[0], slow[0], atol=1e-6) and torch.allclose(fast[1], slow[1], atol=1e-6)
    with torch.no_grad():
        y = x.clone()
        model.encode(y)
    assert torch.equal(y, x)  # the in-place work never touches the caller's tensor
