import gzip
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from vqvae.config import DataConfig, apply_overrides, get_preset, load_config
from vqvae.data import ShardedBatchSampler, load_dataset, load_splits, read_idx
from vqvae.errors import ConfigError, DataError
from vqvae.models import VQVAE


def test_seed_preset_is_the_seed():
    cfg = get_preset("seed-mnist")
    assert (cfg.model.image_size, cfg.model.in_channels, cfg.model.hidden_channels) == (28, 1, 32)
    assert cfg.model.num_downsamples == 2 and cfg.model.num_residual_blocks == 2
    q = cfg.quantizer
    assert (q.codebook_size, q.update, q.codebook_weight, q.commitment_weight, q.init) == (32, "loss", 1.0, 0.25, "uniform")
    assert (cfg.train.batch_size, cfg.train.lr, cfg.train.epochs, cfg.train.amp) == (256, 2e-4, 20, "off")
    assert (cfg.prior.num_layers, cfg.prior.hidden_channels) == (15, 128)
    assert VQVAE(cfg.model, cfg.quantizer).latent_size == 7


def test_overrides_parse_types_and_reject_unknown_fields():
    cfg = apply_overrides(get_preset("mnist"), ["train.epochs=3", "train.lr=0.01", "train.compile=true",
                                                "quantizer.update=loss"])
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.01 and cfg.train.compile is True
    with pytest.raises(ConfigError, match="valid fields: .*train.epochs"):
        apply_overrides(cfg, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="train.epochs=.many.: expected a whole number"):
        apply_overrides(cfg, ["train.epochs=many"])
    with pytest.raises(ConfigError, match="valid presets"):
        load_config("nope")
    with pytest.raises(ConfigError, match="quantizer.update"):
        apply_overrides(cfg, ["quantizer.update=magic"])


def test_image_size_that_cannot_round_trip_fails_at_build_time():
    cfg = apply_overrides(get_preset("mnist"), ["model.image_size=30"])
    with pytest.raises(ConfigError, match="multiple of 4"):
        VQVAE(cfg.model, cfg.quantizer)


@pytest.mark.parametrize("downsamples,size", [(2, 16), (3, 32), (4, 64)])
def test_generalised_architecture_round_trips(downsamples, size):
    cfg = apply_overrides(get_preset("mnist"), [f"model.image_size={size}", "model.in_channels=3",
                                                f"model.num_downsamples={downsamples}", "model.code_dim=8",
                                                "model.hidden_channels=8", "model.num_residual_blocks=1"])
    model = VQVAE(cfg.model, cfg.quantizer)
    out = model(torch.rand(2, 3, size, size))
    assert out.reconstruction.shape == (2, 3, size, size)
    assert out.indices.shape == (2, 4, 4)


def test_mnist_5k_splits_are_explicit_fixed_and_disjoint():
    train, val, test = load_splits(DataConfig())
    assert (len(train), len(val), len(test)) == (4050, 450, 500)
    assert train.images.shape[1:] == (1, 28, 28) and train.images.dtype == torch.uint8
    keys = [{bytes(x.numpy()) for x in s.images} for s in (train, val, test)]
    # MNIST has a few exact duplicates; allow none beyond a handful.
    assert len(keys[0] & keys[1]) <= 2 and len(keys[0] & keys[2]) <= 2 and len(keys[1] & keys[2]) <= 2
    again = load_splits(DataConfig())
    assert torch.equal(again.val.images, val.images) and torch.equal(again.test.images, test.images)
    # Without validation, the test split is unchanged and train takes the validation images back.
    train0, val0, test0 = load_splits(DataConfig(val_fraction=0))
    assert val0 is None and len(train0) == 4500 and torch.equal(test0.images, test.images)


def test_image_folder_with_mixed_modes_sizes_and_a_corrupt_file(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "a" / "red.jpg")
    Image.new("L", (16, 16), 128).save(tmp_path / "a" / "gray.png")
    Image.new("RGBA", (20, 50), (0, 255, 0, 128)).save(tmp_path / "b" / "alpha.png")
    Image.new("P", (33, 33)).save(tmp_path / "b" / "palette.gif")
    (tmp_path / "b" / "broken.png").write_bytes(b"not an image at all")
    (tmp_path / "notes.txt").write_text("hello")
    cfg = DataConfig(dataset=str(tmp_path), image_size=24, channels=3)
    ds = load_dataset(str(tmp_path), cfg)
    messages = capsys.readouterr().err
    assert "skipped 1 unreadable" in messages and "broken.png" in messages
    assert len(ds) == 4
    for i in range(len(ds)):
        image, _ = ds[i]
        assert image.shape == (3, 24, 24) and image.dtype == torch.uint8
    gray = load_dataset(str(tmp_path), DataConfig(image_size=8, channels=1))
    assert gray[0][0].shape == (1, 8, 8)


def test_class_subfolders_become_labels(bar_folder):
    ds = load_dataset(str(bar_folder), DataConfig(image_size=16))
    assert ds.class_names == ("horizontal", "vertical")
    assert set(ds.labels.tolist()) == {0, 1}


def test_bad_paths_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="neither a known name"):
        load_dataset(str(tmp_path / "missing"), DataConfig())
    with pytest.raises(DataError, match="no readable images"):
        load_dataset(str(tmp_path), DataConfig())
    (tmp_path / "x.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="1 unreadable"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_dataset(str(tmp_path), DataConfig())


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_folder_and_wrong_size_error(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (20, 28, 28))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(20) % 10)
    assert np.array_equal(read_idx(tmp_path / "t10k-images-idx3-ubyte.gz"), images)
    ds = load_dataset(str(tmp_path), DataConfig())
    assert len(ds) == 20 and ds.labels.tolist()[:3] == [0, 1, 2]
    with pytest.raises(DataError, match="28x28 images with 1 channel.*expects 32x32"):
        load_dataset(str(tmp_path), DataConfig(image_size=32, channels=3))


def test_sharded_batches_partition_the_global_batch():
    single = list(ShardedBatchSampler(103, 10, seed=4, epoch=2))
    shards = [list(ShardedBatchSampler(103, 10, rank=r, world=2, seed=4, epoch=2)) for r in range(2)]
    assert len(shards[0]) == len(single)
    for b, batch in enumerate(single):
        assert shards[0][b] + shards[1][b] == batch
    resumed = list(ShardedBatchSampler(103, 10, seed=4, epoch=2, skip=3))
    assert resumed == single[3:]


def test_named_dataset_offline_says_where_to_put_the_files(tmp_path):
    with pytest.raises(DataError, match=f"put the original MNIST files in {tmp_path}/MNIST/raw"):
        load_splits(DataConfig(dataset="mnist", root=str(tmp_path), download=False))
