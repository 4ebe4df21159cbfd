"""Issue 16, the data side: wide image modes, cache keys and side files, labels, hostile files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqvae.config import DataConfig
from vqvae.data import load_dataset


def folder_config(folder, **kw) -> DataConfig:
    return DataConfig(dataset=str(folder), **{"image_size": 16, "channels": 1, "num_workers": 0, **kw})


# --------------------------------------------------------------------------- item 2: wide modes

RAMP = np.linspace(0, 1, 64)[None].repeat(64, 0)  # (64, 64): black on the left to white on the right


@pytest.mark.parametrize("kind", ["png16", "tif32", "tiff-float", "png16-rgb-target"])
def test_wide_grey_images_are_scaled_to_8_bits_not_clipped(tmp_path, kind):
    if kind.startswith("png16"):
        Image.fromarray(np.rint(RAMP * 65535).astype(np.uint16)).save(tmp_path / "ramp.png")
    elif kind == "tif32":
        Image.fromarray(np.rint(RAMP * 65535).astype(np.int32)).save(tmp_path / "ramp.tif")
    else:
        Image.fromarray(RAMP.astype(np.float32)).save(tmp_path / "ramp.tif")
    channels = 3 if kind.endswith("rgb-target") else 1
    image = load_dataset(str(tmp_path), folder_config(tmp_path, image_size=64, channels=channels)).tensor()[0]
    row = image[0, 32].float()
    want = torch.from_numpy(RAMP[0] * 255).float()
    assert (row - want).abs().max() <= 2  # clipped, the row is 255 from its second pixel on
    assert abs(image.float().mean().item() - 127.5) < 2


def test_wide_images_of_other_ranges_are_stretched(tmp_path):
    Image.fromarray(np.array([[-5, 0], [5, 10]] * 4, dtype=np.int32).repeat(4, 1)).save(tmp_path / "signed.tif")
    image = load_dataset(str(tmp_path), folder_config(tmp_path, image_size=8)).tensor()[0]
    assert image.min() == 0 and image.max() == 255


# --------------------------------------------------------------------------- item 13: encode --out

def test_encode_into_an_earlier_encoding_leaves_no_stale_labels(trained_run, tmp_path):
    from vqvae import api

    out = tmp_path / "codes"
    api.encode(trained_run, out, device="cpu")  # the run's labelled test split
    assert (out / "labels.npy").is_file()
    flat = tmp_path / "flat"  # no class subfolders: no labels
    flat.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(flat / f"{i}.png")
    meta = api.encode(trained_run, out, data=str(flat), device="cpu")
    assert meta["shape"][0] == 3 and np.load(out / "codes.npy").shape[0] == 3
    assert not (out / "labels.npy").exists()  # the 48 old labels would sit beside 3 new codes


# --------------------------------------------------------------------------- item 12: labels -> classes

def labelled_npz(path, values=(3, 7), n=80):
    from conftest import bar_images

    images, labels = bar_images(n)
    np.savez(path, images=images, labels=np.asarray(values)[labels])
    return path


def test_labels_become_the_classes_present_with_their_names(tmp_path):
    data = load_dataset(str(labelled_npz(tmp_path / "d.npz", (3, 10 ** 9))), folder_config(tmp_path))
    assert data.class_names == ("3", "1000000000")
    assert sorted(data.labels.unique().tolist()) == [0, 1]


def test_negative_labels_are_refused(tmp_path):
    from vqvae.errors import DataError

    np.savez(tmp_path / "neg.npz", images=np.zeros((4, 16, 16), np.uint8), labels=np.array([0, -1, 1, 0]))
    with pytest.raises(DataError, match="negative labels"):
        load_dataset(str(tmp_path / "neg.npz"), folder_config(tmp_path))


def test_a_test_file_with_fewer_classes_is_numbered_like_the_training_file(tmp_path):
    from vqvae.data import load_splits

    labelled_npz(tmp_path / "train.npz", (3, 7))
    images = np.zeros((6, 16, 16), np.uint8)
    np.savez(tmp_path / "test.npz", images=images, labels=np.full(6, 7))
    splits = load_splits(folder_config(tmp_path / "train.npz", test_dataset=str(tmp_path / "test.npz")))
    assert splits.test.class_names == ("3", "7") and splits.test.labels.tolist() == [1] * 6


def conditional_run(tmp_path, npz, name):
    from conftest import tiny_overrides
    from vqvae import api
    from vqvae.config import load_config

    run = tmp_path / name
    cfg = load_config("tiny", tiny_overrides(npz) + ["prior.conditional=true", "train.epochs=1", "prior_train.epochs=1"])
    api.train_vqvae(cfg, run)
    api.train_prior(cfg, run)
    return run, cfg


def test_a_conditional_prior_has_the_classes_present_and_refuses_others(tmp_path):
    from vqvae import api
    from vqvae.errors import ConfigError
    from vqvae.runs import load_prior

    run, _ = conditional_run(tmp_path, labelled_npz(tmp_path / "d.npz"), "run")
    prior, _, _ = load_prior(run)
    assert prior.spec.num_classes == 2 and prior.spec.class_names == ("3", "7")
    result = api.sample(run, out_dir=tmp_path / "s", num_samples=4, device="cpu", class_="7")
    assert result["num_samples"] == 4
    with pytest.raises(ConfigError, match="not a class of this prior"):
        api.sample(run, out_dir=tmp_path / "s", num_samples=4, device="cpu", class_="0")


def test_runs_and_model_folders_from_before_the_mapping_load_and_sample_the_same_classes(tmp_path, monkeypatch):
    """A run made when labels {3, 7} became classes 0..7 (six empty) keeps its 8 classes: sampling
    `--class 3` draws its class 3, evaluation and a resumed prior number the data's labels its way."""
    import vqvae.data.arrays as arrays
    import vqvae.data.datasets as datasets
    from vqvae import api, export
    from vqvae.runs import load_prior
    from vqvae.sampling import class_labels

    def old_classes(labels):  # the code before the mapping: classes 0..max label
        labels = np.asarray(labels).astype(np.int64)
        return labels, tuple(str(i) for i in range(int(labels.max()) + 1))

    npz = labelled_npz(tmp_path / "d.npz")
    monkeypatch.setattr(datasets, "classes_from_labels", old_classes)
    run, cfg = conditional_run(tmp_path, npz, "old")
    monkeypatch.setattr(datasets, "classes_from_labels", arrays.classes_from_labels)  # today's code from here on
    folder = tmp_path / "exported"
    export.export_folder(run, folder)
    for source in (run, folder):
        prior, _, _ = load_prior(source)
        assert prior.spec.num_classes == 8 and prior.spec.class_names == tuple(map(str, range(8)))
        labels, row = class_labels(prior, None, 16, "cpu")
        assert row == 8 and labels.tolist() == [i % 8 for i in range(16)]  # as before: the run's own classes
        assert class_labels(prior, "3", 2, "cpu")[0].tolist() == [3, 3]
        assert api.sample(source, out_dir=tmp_path / "s", num_samples=2, device="cpu", class_="7")["num_samples"] == 2
    # Evaluation and a resumed prior read the data's labels 3 and 7 as the old prior's classes 3 and 7.
    seen = []
    import vqvae.evaluation as evaluation
    real_figure = evaluation.heldout_figure
    monkeypatch.setattr(evaluation, "heldout_figure",
                        lambda prior, batches: seen.append(batches.tensors[1].unique().tolist()) or real_figure(prior, batches))
    api.evaluate(run, device="cpu", samples=False)
    assert seen == [[3, 7]]
    resumed = api.train_prior(cfg.__class__.from_dict({**cfg.to_dict(), "prior_train": {**cfg.to_dict()["prior_train"],
                                                                                        "epochs": 2}}), run, resume=True)
    assert resumed.model.spec.num_classes == 8


# --------------------------------------------------------------------------- item 11: cache keys and side files

def grey_folder(root, n=6, classes=("a", "b")):
    for i in range(n):
        folder = root / classes[i % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16), (10 + 40 * i) % 256, np.uint8)).save(folder / f"{i}.png")
    return root


def test_a_file_replaced_with_its_size_and_mtime_restored_is_not_served_stale(tmp_path):
    import os

    folder = grey_folder(tmp_path / "f")
    target = folder / "a" / "0.png"
    first = load_dataset(str(folder), folder_config(folder)).tensor()[0]
    st = target.stat()
    other = tmp_path / "other.png"
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(other)
    assert other.stat().st_size == st.st_size  # the same size: what `cp -p` of a look-alike file gives
    target.write_bytes(other.read_bytes())
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime set back, as cp -p / rsync -t / tar do
    again = load_dataset(str(folder), folder_config(folder)).tensor()[0]
    assert first.float().mean() < 20 and again.float().mean() == 200


def test_cache_check_content_ignores_touches_and_sees_content(tmp_path, capsys):
    import os

    folder = grey_folder(tmp_path / "f")
    cfg = folder_config(folder, cache_check="content")
    load_dataset(str(folder), cfg)
    os.utime(folder / "a" / "0.png")  # a new mtime and ctime, the same bytes
    capsys.readouterr()
    load_dataset(str(folder), cfg)
    assert "read from" in capsys.readouterr().out  # not rebuilt
    Image.fromarray(np.full((16, 16), 250, np.uint8)).save(folder / "a" / "0.png")
    data = load_dataset(str(folder), cfg)
    assert "decoding" in capsys.readouterr().out and data.tensor()[0].float().mean() == 250


def cache_meta(tmp_path):
    import json

    (meta,) = [p for p in (tmp_path.parent / "cache" / "images").glob("*.json")
               if "scan-" not in p.name and json.loads(p.read_text()).get("folder", "").startswith(str(tmp_path))]
    return meta


def scan_files(folder):
    from vqvae.data.cache import cache_stem, list_folder

    return list((folder.parent.parent / "cache" / "images").glob(f"{cache_stem(list_folder(folder), 'scan-')}*.json"))


def test_a_reordered_file_list_is_rebuilt_not_trusted(tmp_path, capsys):
    import json

    folder = grey_folder(tmp_path / "f")
    want = load_dataset(str(folder), folder_config(folder)).labels.tolist()
    meta_path = cache_meta(tmp_path)
    meta = json.loads(meta_path.read_text())
    meta["files"] = sorted(meta["files"], key=lambda f: f.split("/")[1])  # a/0 b/1 a/2 ...: labels would flip
    meta_path.write_text(json.dumps(meta))
    capsys.readouterr()
    data = load_dataset(str(folder), folder_config(folder))
    err = capsys.readouterr().err
    assert "checksum" in err and err.count("warning:") == 1
    assert data.labels.tolist() == want
    # The same list re-checksummed by hand is still refused: it is not in the folder's order.
    from vqvae.data.cache import write_side_file

    meta = json.loads(meta_path.read_text())
    meta.pop("checksum")
    meta["files"] = sorted(meta["files"], key=lambda f: f.split("/")[1])
    write_side_file(meta_path, meta)
    assert load_dataset(str(folder), folder_config(folder)).labels.tolist() == want


@pytest.mark.parametrize("content", ["[1, 2]", '{"key": 5, "files": "x"}', "{not json", "\xff\xfe"])
def test_side_files_of_the_wrong_shape_are_rebuilt_with_one_line(tmp_path, capsys, content):
    from vqvae.data import describe_data

    folder = grey_folder(tmp_path / "f")
    load_dataset(str(folder), folder_config(folder))
    describe_data(str(folder), folder_config(folder))
    damaged = [cache_meta(tmp_path)] + scan_files(folder)
    for path in damaged:
        path.write_bytes(content.encode("latin-1"))
    capsys.readouterr()
    assert len(load_dataset(str(folder), folder_config(folder))) == 6
    assert describe_data(str(folder), folder_config(folder)).channels == 1
    err = capsys.readouterr().err
    assert err.count("rebuilding") == len(damaged) == 2 and "Traceback" not in err


def test_an_edited_scan_cannot_make_a_grey_folder_choose_a_colour_preset(tmp_path, capsys):
    import json

    from vqvae.data import choose_preset

    folder = grey_folder(tmp_path / "f", n=8)
    assert choose_preset(None, [f"data.dataset={folder}"]).preset == "mnist"
    (scan,) = scan_files(folder)
    data = json.loads(scan.read_text())
    data["modes"] = {"RGB": 8}
    scan.write_text(json.dumps(data))
    choice = choose_preset(None, [f"data.dataset={folder}"])
    assert choice.preset == "mnist" and "data.channels=3" not in choice.overrides
    assert "checksum" in capsys.readouterr().err


# --------------------------------------------------------------------------- hostile files and folders

def test_links_fifos_and_folders_named_like_images_are_skipped_in_one_line(tmp_path, capsys):
    import os
    import signal

    folder = grey_folder(tmp_path / "f")
    os.symlink("loop.png", folder / "a" / "loop.png")
    os.symlink("/no/such/file.png", folder / "a" / "gone.png")
    os.mkfifo(folder / "b" / "pipe.png")
    (folder / "b" / "dir.png").mkdir()
    os.symlink(folder / "a" / "0.png", folder / "a" / "link.png")  # a good link is an image

    def hang(*_):
        raise TimeoutError("hung on a FIFO")

    signal.signal(signal.SIGALRM, hang)
    signal.alarm(60)
    try:
        from vqvae.data import describe_data

        assert describe_data(str(folder), folder_config(folder)).count == 7
        for cache in (True, False):
            data = load_dataset(str(folder), folder_config(folder, cache=cache))
            assert len(data) == 7
    finally:
        signal.alarm(0)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 2 and all("loop.png (a symlink loop)" in line and "gone.png (a dangling link)" in line
                                   and "pipe.png (not a regular file)" in line for line in lines)
    assert "UserWarning" not in err


def test_non_utf8_names_are_read_and_printed(tmp_path, capsys):
    import os

    folder = grey_folder(tmp_path / os.fsdecode(b"f\xff"))
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "a" / os.fsdecode(b"x\xfe.png"))
    assert len(load_dataset(str(folder), folder_config(folder))) == 7
    out = capsys.readouterr().out
    out.encode("utf-8")  # printable: no surrogates reach the terminal
    assert "f\\xff" in out


def test_a_run_folder_name_that_is_not_utf8_is_refused_before_work(tmp_path, tiny_config):
    import os

    from vqvae import api
    from vqvae.errors import OutputError

    with pytest.raises(OutputError, match="not UTF-8"):
        api.train_vqvae(tiny_config, tmp_path / os.fsdecode(b"r\xff"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["upper", "npz-as-npy", "npy-as-npz"])
def test_numpy_files_are_read_by_their_content_not_their_name(tmp_path, case):
    import os

    images = np.zeros((5, 16, 16), np.uint8)
    if case == "upper":
        np.save(tmp_path / "d.npy", images)
        os.replace(tmp_path / "d.npy", tmp_path / "d.NPY")
        path = tmp_path / "d.NPY"
    elif case == "npz-as-npy":
        np.savez(tmp_path / "d.npz", images=images, labels=np.arange(5) % 2)
        path = tmp_path / "d.npy"
        os.replace(tmp_path / "d.npz", path)
    else:
        np.save(tmp_path / "d.npy", images)
        path = tmp_path / "d.npz"
        os.replace(tmp_path / "d.npy", path)
    data = load_dataset(str(path), folder_config(path))
    assert len(data) == 5 and (data.labels is not None) == (case == "npz-as-npy")


@pytest.mark.parametrize("content", [b"", b"hello", "zero-images"])
def test_empty_and_foreign_numpy_files_are_one_error(tmp_path, content):
    from vqvae.errors import DataError

    path = tmp_path / "d.npy"
    if content == "zero-images":
        np.save(path, np.zeros((0, 16, 16), np.uint8))
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match="empty|not a NumPy|no images"):
        load_dataset(str(path), folder_config(path))


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    import os
    import time

    from vqvae.data.cache import remove_dead_temporaries, temporary_name

    mine = temporary_name(tmp_path / "x.npy")
    assert mine != temporary_name(tmp_path / "x.npy")  # two writers of one file never share a name
    mine.write_bytes(b"live")
    dead_pid = 4194000
    while True:
        try:
            os.kill(dead_pid, 0)
            dead_pid -= 1
        except ProcessLookupError:
            break
        except PermissionError:
            dead_pid -= 1
    dead = Path(str(mine).replace(f"-{os.getpid()}-", f"-{dead_pid}-"))
    dead.write_bytes(b"\0" * 1000)
    old = tmp_path / "x.npy.tmp99999999"
    old.write_bytes(b"old")
    os.utime(old, (time.time() - 7200,) * 2)
    young_old = tmp_path / "y.json.tmp"  # an old-style name, young: perhaps a writer of an older version
    young_old.write_bytes(b"")
    other = tmp_path / "z.npy"
    other.write_bytes(b"")
    assert sorted(remove_dead_temporaries(tmp_path)) == sorted([dead.name, old.name])
    assert mine.exists() and young_old.exists() and other.exists()


def test_an_unusable_cache_dir_is_one_error(tmp_path):
    from vqvae.errors import DataError

    folder = grey_folder(tmp_path / "f")
    with pytest.raises(DataError, match="data.cache_dir"):
        load_dataset(str(folder), folder_config(folder, cache_dir="/proc/nope"))


def test_an_image_size_the_model_cannot_take_is_refused_before_data_or_folders(tmp_path, tiny_config):
    from vqvae import api
    from vqvae.config import apply_overrides
    from vqvae.errors import ConfigError

    folder = grey_folder(tmp_path / "f")
    cache = tmp_path / "cache"
    cfg = apply_overrides(tiny_config, [f"data.dataset={folder}", "data.image_size=30", f"data.cache_dir={cache}"])
    for call in (api.train_vqvae, api.run_pipeline):
        with pytest.raises(ConfigError, match="multiple of 4"):
            call(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists() and not cache.exists()


def test_two_processes_scanning_one_new_folder_both_succeed(tmp_path):
    import multiprocessing

    folder = grey_folder(tmp_path / "f", n=40)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        counts = pool.starmap(_scan, [(str(folder), str(tmp_path / "c"))] * 4)
    assert counts == [40] * 4


def _scan(folder, cache):
    from vqvae.data import describe_data

    return describe_data(folder, DataConfig(cache_dir=cache)).count


# --------------------------------------------------------------------------- item 14: LFQ's entropy

def reference_entropies(z, temperature):
    """Every code's probability at once, no chunks: the definition."""
    from vqvae.models.lfq import binary_entropy_from_logits

    logits = 4 * z / temperature
    b = z.shape[1]
    bits = ((torch.arange(2 ** b)[:, None] >> torch.arange(b)) & 1).to(z.dtype)
    probs = (torch.nn.functional.logsigmoid(-logits).sum(1, keepdim=True) + logits @ bits.t()).exp()
    mean = probs.mean(0)
    return binary_entropy_from_logits(logits).sum(1).mean(), -(mean * mean.clamp_min(1e-12).log()).sum()


def test_lfq_chunked_entropy_gradients_equal_the_unchunked_ones():
    from vqvae.models.lfq import lfq_entropies

    z = torch.randn(300, 6, dtype=torch.float64, requires_grad=True)
    got = lfq_entropies(z, 0.7, chunk_elements=64 * 7)  # 7 rows a chunk: 43 chunks
    (got[0] - 0.9 * got[1]).backward()
    grad, z.grad = z.grad.clone(), None
    want = reference_entropies(z, 0.7)
    (want[0] - 0.9 * want[1]).backward()
    assert torch.allclose(got[1], want[1]) and torch.allclose(grad, z.grad, atol=1e-12)


def saved_bytes(function) -> int:
    """Bytes of the tensors autograd keeps for the backward pass while `function` runs (each
    storage once: a chunk's rows are views of the whole)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = function()
    del result
    return sum(storages.values())


def test_lfq_entropy_keeps_one_chunk_of_probabilities_for_the_backward_pass():
    from vqvae.models.lfq import lfq_entropies

    def run(n):
        z = torch.randn(n, 10, requires_grad=True)  # 1,024 codes
        return saved_bytes(lambda: lfq_entropies(z, 1.0, chunk_elements=2 ** 16))

    small, large = run(512), run(8192)
    per_row = (large - small) / (8192 - 512)
    assert per_row < 10 * 4 * 16  # a few (N, bits) tensors; keeping the (N, codes) probabilities is 1024 x 4 a row
    assert large < 8192 * 1024 * 4 / 6


def test_lfq_batch_entropy_under_two_gloo_processes_is_the_global_batchs(tmp_path):
    import subprocess
    import sys

    from vqvae.models.lfq import lfq_entropies

    worker = Path(__file__).parent / "lfq_ddp_worker.py"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(worker), str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(f"{tmp_path / 'out'}.{r}", weights_only=True) for r in range(2)]
    z = ranks[0]["z"]
    whole = z.clone().requires_grad_(True)
    per_sample, codebook = lfq_entropies(whole, 0.5)
    (per_sample - codebook).backward()
    for r in ranks:
        assert torch.allclose(r["codebook"], codebook.detach())
    # Each process's gradient is world x the global one on its rows; DDP's mean over processes divides it out.
    assert torch.allclose(torch.cat([r["grad"] for r in ranks]) / 2, whole.grad, atol=1e-12)


# --------------------------------------------------------------------------- item 14: ONNX tie check

@pytest.mark.parametrize("options", [["quantizer.distance=cosine"], ["quantizer.lookup_dim=4"],
                                     ["quantizer.distance=cosine", "quantizer.lookup_dim=4"]])
def test_onnx_tie_check_measures_distances_where_the_search_does(options):
    """Code j made a copy of code k in the search space (for cosine: 3x it, the same direction): every
    position coded k or j is a tie between them, and no other code is."""
    from vqvae.config import apply_overrides, get_preset
    from vqvae.export import _distance_ties
    from vqvae.models import VQVAE

    torch.manual_seed(0)
    cfg = apply_overrides(get_preset("tiny"), options)
    model = VQVAE(cfg.model, cfg.quantizer)
    model.train()(torch.rand(64, 1, 28, 28))
    model.eval()
    images = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        k = int(model.codes(images).flatten().mode().values)
        j = (k + 1) % model.codebook_size
        model.quantizer.codebook[j] = model.quantizer.codebook[k] * (3 if "quantizer.distance=cosine" in options else 1)
        want = model.codes(images)
        assert (want == k).any() or (want == j).any()
        swapped = torch.where(want == k, j, torch.where(want == j, k, want))
        other = torch.where((want == k) | (want == j), (k + 2) % model.codebook_size, want)
        ties = _distance_ties(model, images, want, swapped)
        not_ties = _distance_ties(model, images, want, other)
    moved = (want == k) | (want == j)
    assert ties[moved].all()
    assert not not_ties[moved].any()


# --------------------------------------------------------------------------- item 14: the prior's code cache

def test_the_code_cache_is_keyed_by_the_images_and_every_vqvae_weight(tmp_path):
    from vqvae.config import get_preset
    from vqvae.models import VQVAE
    from vqvae.training.prior_stage import cached_codes, encode_images

    torch.manual_seed(0)
    cfg = get_preset("tiny")
    model = VQVAE(cfg.model, cfg.quantizer)
    model.train()(torch.rand(64, 1, 28, 28))
    model.eval()
    sets = []
    for parent, seed in (("x", 1), ("y", 2)):  # two folders named "data" with as many images, other pictures
        folder = tmp_path / parent / "data"
        folder.mkdir(parents=True)
        rng = np.random.default_rng(seed)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"{i}.png")
        sets.append(load_dataset(str(folder), folder_config(folder, image_size=28)))
    run, cpu = tmp_path / "run", torch.device("cpu")
    first = cached_codes(model, sets[0], "train", run, cpu)
    second = cached_codes(model, sets[1], "train", run, cpu)
    assert torch.equal(second, encode_images(model, sets[1], cpu).long()) and not torch.equal(first, second)
    with torch.no_grad():  # another encoder, the same codebook
        for p in model.encoder.parameters():
            p.mul_(-1.5)
    third = cached_codes(model, sets[1], "train", run, cpu)
    assert torch.equal(third, encode_images(model, sets[1], cpu).long()) and not torch.equal(third, second)


@pytest.mark.parametrize("split", ["test", "validation"])
def test_a_class_only_in_a_held_out_split_stops_a_conditional_prior(tmp_path, split):
    """A held-out split carved from the data can take every image of a rare class: the class would be
    in the prior (its names come from the whole data) but never trained, and --class would draw from
    its random embedding. Training the prior refuses it in one line; with one training image it trains."""
    from conftest import bar_images, tiny_overrides
    from vqvae import api
    from vqvae.config import load_config
    from vqvae.data import load_splits
    from vqvae.errors import DataError

    images, labels = bar_images(80)
    images[:, 0, 0] = np.arange(80)  # each image's index, to find which split it lands in
    values = np.asarray([3, 7])[labels]
    np.savez(tmp_path / "d.npz", images=images, labels=values)
    cfg = load_config("tiny", tiny_overrides(tmp_path / "d.npz") + ["prior.conditional=true", "train.epochs=1",
                                                                   "prior_train.epochs=1"])
    splits = load_splits(cfg.data)
    index = {name: data.tensor()[:, 0, 0, 0].tolist() for name, data in
             (("train", splits.train), ("validation", splits.val), ("test", splits.test))}
    values[index[split][0]] = 9  # one image of class 9, held out
    np.savez(tmp_path / "d.npz", images=images, labels=values)
    splits = load_splits(cfg.data)
    assert "9" in splits.train.class_names and 2 not in splits.train.labels.tolist()  # named, never trained
    run = tmp_path / "run"
    api.train_vqvae(cfg, run)
    with pytest.raises(DataError, match=f"class '9' of .*: images in the {split} split but none in training") as e:
        api.train_prior(cfg, run)
    assert "\n" not in str(e.value)
    values[index["train"][0]] = 9  # and one training image: the class is learned
    np.savez(tmp_path / "d.npz", images=images, labels=values)
    api.train_prior(cfg, run)
    assert api.sample(run, out_dir=tmp_path / "s", num_samples=2, device="cpu", class_="9")["num_samples"] == 2
