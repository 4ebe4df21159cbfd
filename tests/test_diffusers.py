"""diffusers' VQModel, both ways: our export loads in diffusers as the same model, and a diffusers
VQModel imports as a run our priors train on. "The same model": equal codes on test images and
decoded images within 1e-4 (fp32)."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import SIZE, bar_images, tiny_overrides
from vqvae import VQVAE, api
from vqvae.cli import main
from vqvae.config import load_config
from vqvae.errors import CheckpointError, ExportError
from vqvae.export import diffusers_codes_and_images, export_diffusers, import_diffusers
from vqvae.runs import load_vqvae

diffusers = pytest.importorskip("diffusers")  # a dev dependency (pyproject.toml): CI has it
VQModel = diffusers.VQModel
TOLERANCE = 1e-4


def cli(*args):
    return main([str(a) for a in args])


def held_out_images() -> torch.Tensor:
    return torch.from_numpy(bar_images(24, seed=7)[0])[:, None].float() / 255


@pytest.fixture(scope="module")
def vqgan_run(bar_folder, tmp_path_factory):
    """A vqgan-tiny run trained for one short epoch on the bar images (16 pixels, 4x4 codes)."""
    run = tmp_path_factory.mktemp("vqgan-run")
    api.train_vqvae(load_config("vqgan-tiny", tiny_overrides(bar_folder) + ["train.epochs=1"]), run)
    return run


def test_export_loads_in_diffusers_as_the_same_model(vqgan_run, tmp_path, capsys):
    assert cli("export", vqgan_run, "--format", "diffusers", "--out", tmp_path / "vq") == 0
    assert "verified with diffusers" in capsys.readouterr().out
    config = json.loads((tmp_path / "vq" / "config.json").read_text())
    assert config["_class_name"] == "VQModel" and config["lookup_from_codebook"] is True
    assert config["up_block_types"] == ["AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
    theirs = VQModel.from_pretrained(tmp_path / "vq", low_cpu_mem_usage=False).eval()  # no code of ours
    ours, _ = load_vqvae(vqgan_run)
    x = held_out_images()
    codes = ours.codes(x)
    assert len(codes.unique()) > 3  # a trained codebook in use, not one code everywhere
    their_codes, their_images = diffusers_codes_and_images(theirs, x, codes)
    assert torch.equal(their_codes, codes)
    with torch.no_grad():
        assert (their_images - ours.decode_indices(codes)).abs().max() <= TOLERANCE
        # the whole forward pass too: diffusers' own quantizer between its encoder and decoder
        assert ((theirs(x * 2 - 1).sample + 1) / 2 - ours(x).reconstruction).abs().max() <= TOLERANCE


def random_vqmodel(folder, seed=0) -> VQModel:
    """A randomly initialised diffusers VQModel unlike our presets (latent_channels != vq_embed_dim, no
    middle attention, attention at the image's resolution), its codebook set to encoder outputs of
    random images so that codes are far apart and the comparison of indices means something."""
    torch.manual_seed(seed)
    model = VQModel(in_channels=3, out_channels=3, down_block_types=["AttnDownEncoderBlock2D", "DownEncoderBlock2D"],
                    up_block_types=["UpDecoderBlock2D", "AttnUpDecoderBlock2D"], block_out_channels=[16, 24],
                    layers_per_block=1, latent_channels=6, vq_embed_dim=3, num_vq_embeddings=32, norm_num_groups=8,
                    sample_size=SIZE, mid_block_add_attention=False, lookup_from_codebook=True).eval()
    with torch.no_grad():
        latents = model.encode(torch.rand(8, 3, SIZE, SIZE) * 2 - 1).latents.permute(0, 2, 3, 1).reshape(-1, 3)
        model.quantize.embedding.weight.copy_(latents[torch.randperm(len(latents))[:32]])
    model.save_pretrained(folder)
    return model


def test_an_imported_vqmodel_codes_and_decodes_like_diffusers(tmp_path):
    theirs = random_vqmodel(tmp_path / "vq")
    ours = VQVAE.from_diffusers(tmp_path / "vq")
    assert ours.model_config.arch == "vqgan" and ours.model_config.channel_mult == [2, 3]
    assert ours.model_config.attention_resolutions == [1] and not ours.model_config.mid_attention
    x = torch.rand(16, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    codes = ours.codes(x)
    their_codes, their_images = diffusers_codes_and_images(theirs, x, codes)
    assert torch.equal(their_codes, codes) and len(codes.unique()) > 8
    with torch.no_grad():
        assert (their_images - ours.decode_indices(codes)).abs().max() <= TOLERANCE
    # and back out: the export of the import is diffusers' folder again, tensor for tensor
    ours.save_pretrained(tmp_path / "ours")
    export_diffusers(tmp_path / "ours", tmp_path / "again", verify=False)
    again = VQModel.from_pretrained(tmp_path / "again", low_cpu_mem_usage=False)
    for name, tensor in theirs.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def test_an_imported_run_trains_a_prior_encodes_and_reconstructs(tmp_path, bar_folder, capsys):
    torch.manual_seed(0)
    model = VQModel(in_channels=1, out_channels=1, down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
                    up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"], block_out_channels=[8, 16],
                    layers_per_block=1, latent_channels=4, num_vq_embeddings=16, norm_num_groups=8, sample_size=32,
                    lookup_from_codebook=True)
    model.save_pretrained(tmp_path / "vq")
    run = tmp_path / "run"
    assert cli("import", tmp_path / "vq", "--out", run, "--data", bar_folder, "--image-size", SIZE, "--preset",
               "vqgan-tiny", "--set", "data.num_workers=0", "prior_train.epochs=1", "prior_train.device=cpu",
               "prior.conditional=false") == 0
    assert "8x8 codes of 16" in capsys.readouterr().out
    assert cli("train-prior", run) == 0
    assert "bits per code" in capsys.readouterr().out
    assert cli("encode", run, "--out", tmp_path / "codes", "--device", "cpu") == 0
    assert np.load(tmp_path / "codes" / "codes.npy").shape[1:] == (8, 8)
    assert cli("reconstruct", run, "--out", tmp_path / "r.png", "--num", 4, "--device", "cpu") == 0
    assert (tmp_path / "r.png").is_file()
    with pytest.raises(CheckpointError, match="not empty"):
        import_diffusers(tmp_path / "vq", run)


@pytest.mark.parametrize("setting, named", [
    ([], "model.arch=vqvae"), (["quantizer.kind=fsq", "quantizer.codebook_size=64"], "quantizer.kind=fsq"),
    (["quantizer.distance=cosine"], "quantizer.distance=cosine"), (["quantizer.lookup_dim=4"], "lookup_dim=4")])
def test_export_refuses_what_a_vqmodel_cannot_hold(setting, named, tmp_path):
    cfg = load_config("tiny" if not setting else "vqgan-tiny", setting)
    VQVAE(cfg.model, cfg.quantizer).save_pretrained(tmp_path / "m")
    with pytest.raises(ExportError, match=f"cannot export to diffusers: .*{named}"):
        export_diffusers(tmp_path / "m", tmp_path / "out", verify=False)
    assert not (tmp_path / "out").exists()


def test_import_refuses_what_is_not_a_vqmodel_folder(tmp_path):
    random_vqmodel(tmp_path / "vq")
    with pytest.raises(CheckpointError, match="no config.json"):
        VQVAE.from_diffusers(tmp_path)
    with pytest.raises(CheckpointError, match="a diffusers VQModel folder: import it as a run first"):
        load_vqvae(tmp_path / "vq")
    (tmp_path / "kl").mkdir()
    (tmp_path / "kl" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(CheckpointError, match="_class_name 'AutoencoderKL'; only diffusers VQModel folders import"):
        VQVAE.from_diffusers(tmp_path / "kl")
    (tmp_path / "vq" / "diffusion_pytorch_model.safetensors").rename(tmp_path / "weights.safetensors")
    (tmp_path / "vq" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="no diffusion_pytorch_model.safetensors; .*never loaded"):
        VQVAE.from_diffusers(tmp_path / "vq")
    weights = dict(__import__("safetensors.torch", fromlist=["load_file"]).load_file(tmp_path / "weights.safetensors"))
    del weights["decoder.conv_out.bias"]
    save_file(weights, tmp_path / "vq" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match="missing tensors: decoder.conv_out.bias"):
        VQVAE.from_diffusers(tmp_path / "vq")
    config = json.loads((tmp_path / "vq" / "config.json").read_text())
    (tmp_path / "vq" / "config.json").write_text(json.dumps({**config, "norm_type": "spatial"}))
    with pytest.raises(CheckpointError, match="norm_type='spatial'"):
        VQVAE.from_diffusers(tmp_path / "vq")
