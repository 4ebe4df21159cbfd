"""Model folders (config.json + safetensors) and ONNX export."""
import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vqvae import VQVAE, export_folder
from vqvae.cli import main
from vqvae.config import apply_overrides, get_preset, load_config
from vqvae.errors import CheckpointError, ExportError
from vqvae.export import IMAGE_TOLERANCE, export_onnx_model, verify_onnx
from vqvae.runs import load_prior, load_vqvae


def cli(*args):
    return main([str(a) for a in args])


def tiny_model(seed=0) -> VQVAE:
    """The `tiny` preset with its codebook seeded by k-means on encoder outputs (one training-mode
    pass), so random images use many codes and the index comparisons mean something."""
    torch.manual_seed(seed)
    cfg = get_preset("tiny")
    model = VQVAE(cfg.model, cfg.quantizer)
    model.train()(torch.rand(64, 1, 28, 28))
    return model.eval()


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "my-tokenizer"
    export_folder(trained_run, folder)
    return folder


def test_model_folder_round_trip_is_bit_exact(trained_run, exported):
    meta = json.loads((exported / "config.json").read_text())
    assert meta["format"] == "vqvae-toolkit-model" and meta["version"] == 1 and set(meta["models"]) == {"vqvae", "prior"}
    assert "prior_spec" in meta["models"]["prior"]["extras"] and meta["metrics"]["vqvae"]["test"]["mse"] > 0
    card = (exported / "README.md").read_text()
    assert "not for resuming training" in card and "from_pretrained" in card and "codes used" in card
    original, _ = load_vqvae(trained_run)
    for loaded in (VQVAE.from_pretrained(exported), load_vqvae(exported)[0]):
        x = torch.rand(8, 1, 16, 16)
        codes = original.codes(x)
        assert torch.equal(loaded.codes(x), codes)
        with torch.no_grad():
            assert torch.equal(loaded.decode_indices(codes), original.decode_indices(codes))
            assert torch.equal(loaded(x).reconstruction, original(x).reconstruction)
    prior, _, extra = load_prior(trained_run)
    prior2, _, extra2 = load_prior(exported)
    codes = torch.randint(0, prior.spec.codebook_size, (3, 4, 4))
    labels = torch.tensor([0, 1, 0])
    with torch.no_grad():
        assert torch.equal(prior2(codes, labels), prior(codes, labels))
    assert prior2.spec == prior.spec and extra2 == extra


def test_save_pretrained_round_trip_keeps_every_buffer(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "m")
    loaded = VQVAE.from_pretrained(tmp_path / "m")
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded.codes(x), model.codes(x))


def test_weights_that_do_not_fit_the_config_are_a_clear_error(tmp_path):
    tiny_model().save_pretrained(tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    meta = json.loads(config_path.read_text())
    meta["models"]["vqvae"]["config"]["quantizer"]["codebook_size"] = 32
    del meta["models"]["vqvae"]["config_sha256"]  # as a folder exported before the hashes: load_weights checks
    config_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"wrong shapes: quantizer\.codebook \(16, 16\) \(the config builds "
                                              r"\(32, 16\)\)"):
        VQVAE.from_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_vqvae(tmp_path / "m")


def test_extra_and_missing_tensors_are_named(tmp_path):
    tiny_model().save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "vqvae.safetensors"
    state = load_file(path)
    del state["decoder.layers.0.bias"]
    state["decoder.extra_head.weight"] = torch.zeros(3)
    save_file(state, path)
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    del meta["models"]["vqvae"]["sha256"]  # as a folder exported before the hashes: load_weights checks
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as error:
        VQVAE.from_pretrained(tmp_path / "m")
    message = str(error.value)
    assert "missing tensors: decoder.layers.0.bias" in message
    assert "unexpected tensors: decoder.extra_head.weight" in message


def test_not_a_model_folder_and_newer_versions_are_refused(tmp_path):
    tiny_model().save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="holds no prior"):
        load_prior(tmp_path / "m")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not a model folder"):
        VQVAE.from_pretrained(tmp_path / "plain")
    with pytest.raises(CheckpointError, match="not empty and not a model folder"):
        tiny_model().save_pretrained(tmp_path / "plain")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(CheckpointError, match="version 99"):
        VQVAE.from_pretrained(tmp_path / "m")


def test_loading_a_model_folder_never_unpickles(exported, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model folder was unpickled")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    VQVAE.from_pretrained(exported)
    load_vqvae(exported)
    load_prior(exported)


def test_rewriting_a_folder_drops_a_stale_prior(exported, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(exported, folder)
    tiny_model().save_pretrained(folder)  # another VQ-VAE: the old prior must not stay paired with it
    assert not (folder / "prior.safetensors").exists()
    with pytest.raises(CheckpointError, match="holds no prior"):
        load_prior(folder)


def test_every_command_takes_a_model_folder(trained_run, exported, tmp_path):
    assert cli("reconstruct", exported, "--out", tmp_path / "rec.png", "--num", 4, "--device", "cpu") == 0
    assert cli("encode", exported, "--out", tmp_path / "codes", "--device", "cpu") == 0
    assert cli("decode", exported, tmp_path / "codes", "--out", tmp_path / "dec.png", "--device", "cpu") == 0
    assert (tmp_path / "rec.png").is_file() and (tmp_path / "dec.npy").is_file()
    assert cli("evaluate", exported, "--no-samples", "--device", "cpu", "--out", tmp_path / "ev.json") == 0
    assert not (exported / "metrics.json").exists()  # the model folder is not written to
    for name, source in (("run", trained_run), ("folder", exported)):
        assert cli("sample", source, "--out", tmp_path / name, "-n", 4, "--seed", 3, "--device", "cpu") == 0
    assert np.array_equal(np.load(tmp_path / "run" / "samples.npy"), np.load(tmp_path / "folder" / "samples.npy"))


def test_cli_export_folder_and_errors(trained_run, tmp_path, capsys):
    assert cli("export", trained_run, "--format", "folder", "--out", tmp_path / "f") == 0
    assert "vqvae.safetensors" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "f").iterdir()} == {"config.json", "vqvae.safetensors", "prior.safetensors",
                                                          "README.md"}
    # a checkpoint file exports the VQ-VAE alone
    assert cli("export", trained_run / "checkpoints" / "vqvae-last.pt", "--format", "folder",
               "--out", tmp_path / "g") == 0
    assert not (tmp_path / "g" / "prior.safetensors").exists()
    assert cli("export", tmp_path / "missing", "--format", "folder", "--out", tmp_path / "h") == 2
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ ONNX

def test_onnx_export_refuses_an_unsupported_quantizer_kind(tmp_path):
    model = tiny_model()
    model.quantizer_config.kind = "rvq"  # a kind this export has not been verified for
    with pytest.raises(ExportError, match="not supported for ONNX export yet"):
        export_onnx_model(model, tmp_path)


@pytest.mark.parametrize("kind", ["fsq", "lfq"])
def test_onnx_export_of_scalar_quantizers_gives_pytorchs_codes(kind, tmp_path):
    pytest.importorskip("onnxruntime")
    cfg = apply_overrides(load_config("tiny"), [f"quantizer.kind={kind}", "quantizer.codebook_size=64"])
    model = VQVAE(cfg.model, cfg.quantizer)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for step in range(3):  # running statistics (fsq) and weights away from their initial values
        loss = model(torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(step))).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    report = export_onnx_model(model, tmp_path, torch.rand(100, 1, 28, 28, generator=torch.Generator().manual_seed(9)))
    check = report["verification"]
    assert report["quantizer"] == kind and check["codes_equal"] == check["codes_compared"] == 100 * 49
    assert check["max_abs_image_difference"] <= IMAGE_TOLERANCE
    with torch.no_grad():  # PyTorch drifts from the exported graphs: caught for these kinds too
        model.decoder.layers[0].bias.add_(0.01)
    with pytest.raises(ExportError, match="does not match PyTorch"):
        verify_onnx(model, tmp_path / "encoder.onnx", tmp_path / "decoder.onnx", torch.rand(16, 1, 28, 28))


def test_onnx_export_of_tiny_matches_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = tiny_model()
    export_onnx_model(model, tmp_path)  # no verification: this test compares on its own
    encoder = ort.InferenceSession(str(tmp_path / "encoder.onnx"), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(tmp_path / "decoder.onnx"), providers=["CPUExecutionProvider"])
    # 1,338 images make 65,562 code rows, past the chunk of the eager nearest-code search: a traced
    # chunk loop would leave the rows past the first chunk unsearched.
    for batch in (1, 5, 1338):
        x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
        want = model.codes(x)
        got = torch.from_numpy(encoder.run(None, {"images": x.numpy()})[0])
        # Equal, except where two codes are equally far from the encoder output (within float
        # summation order): noise images hit a few such ties in 65k codes.
        differ = got != want
        assert differ.float().mean() < 1e-3, batch
        with torch.no_grad():
            z = model.encode(x).permute(0, 2, 3, 1)[differ]  # (n, D) outputs where the two disagree
        codebook = model.quantizer.codebook.detach()
        d_want, d_got = ((z - codebook[want[differ]]) ** 2).sum(-1), ((z - codebook[got[differ]]) ** 2).sum(-1)
        assert torch.allclose(d_got, d_want, rtol=1e-4, atol=0), batch
        with torch.no_grad():
            images = model.decode_indices(want)
        got_images = torch.from_numpy(decoder.run(None, {"indices": want.numpy()})[0])
        assert (got_images - images).abs().max() <= IMAGE_TOLERANCE, batch
    assert len(want.unique()) > 4  # the codes compared are not all one code


def test_onnx_verification_catches_a_mismatch(tmp_path):
    pytest.importorskip("onnxruntime")
    model = tiny_model()
    export_onnx_model(model, tmp_path)
    images = torch.rand(16, 1, 28, 28)
    assert verify_onnx(model, tmp_path / "encoder.onnx", tmp_path / "decoder.onnx", images)["codes_equal"] == 16 * 49
    with torch.no_grad():
        model.decoder.layers[0].bias.add_(0.01)  # PyTorch now disagrees with the exported decoder
    with pytest.raises(ExportError, match="does not match PyTorch"):
        verify_onnx(model, tmp_path / "encoder.onnx", tmp_path / "decoder.onnx", images)


def test_a_failed_verification_writes_nothing(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import vqvae.export as export

    model = tiny_model()
    trace = export.trace_onnx

    def trace_then_drift(module, example, path, input_name, output_name):
        trace(module, example, path, input_name, output_name)
        if input_name == "indices":  # PyTorch's decoder now differs from the exported one, as if mistraced
            with torch.no_grad():
                model.decoder.layers[0].bias.add_(0.01)

    monkeypatch.setattr(export, "trace_onnx", trace_then_drift)
    with pytest.raises(ExportError, match="nothing was written"):
        export_onnx_model(model, tmp_path / "bad", torch.rand(16, 1, 28, 28))
    assert list((tmp_path / "bad").iterdir()) == []


def test_cli_export_onnx_verifies_on_the_runs_test_split(trained_run, exported, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    for source in (trained_run, exported):
        out = tmp_path / source.name
        assert cli("export", source, "--format", "onnx", "--out", out) == 0
        report = json.loads((out / "export.json").read_text())
        check = report["verification"]
        assert check["codes_equal"] + check["distance_ties"] == check["codes_compared"] > 0
        assert "heldout" in check["images"] and check["max_abs_image_difference"] <= IMAGE_TOLERANCE
        assert (out / "encoder.onnx").stat().st_size == report["encoder"]["bytes"]
    assert "verified with ONNX Runtime" in capsys.readouterr().out


def test_training_commands_refuse_a_model_folder(exported, capsys):
    assert cli("train-prior", exported) == 2
    assert cli("train", "--resume", exported) == 2
    assert capsys.readouterr().err.count("model folder") == 2
