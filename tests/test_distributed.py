"""Two CPU processes with gloo under torchrun train the same models as one process does."""
import subprocess
import sys
from pathlib import Path

import torch

from vqvae.config import apply_overrides

WORKER = Path(__file__).parent / "ddp_worker.py"


def launch(config, out: Path, processes: int):
    out.mkdir(parents=True)
    (out / "config.json").write_text(__import__("json").dumps(config.to_dict()))
    if processes == 1:
        cmd = [sys.executable, str(WORKER), str(out / "config.json"), str(out)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(WORKER), str(out / "config.json"), str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_gloo_processes_match_one_process(tiny_config, tmp_path):
    # EMA codebook with k-means init and restarts: every codebook statistic must be reduced.
    cfg = apply_overrides(tiny_config, ["train.epochs=3", "train.amp=off", "train.channels_last=false",
                                        "quantizer.restart_after_steps=3"])
    launch(cfg, tmp_path / "ddp", 2)
    launch(cfg, tmp_path / "single", 1)
    rank0 = torch.load(tmp_path / "ddp" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "ddp" / "rank1.pt", weights_only=True)
    single = torch.load(tmp_path / "single" / "rank0.pt", weights_only=True)
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), f"replicas differ in {key}"
    # Same global batch, same data order: the loss curves agree up to float reordering.
    for a, b in zip(rank0["history"], single["history"]):
        assert abs(a - b) <= 1e-3 * max(abs(b), 1e-3) + 1e-5, (rank0["history"], single["history"])
    codebook_gap = (rank0["state"]["quantizer.codebook"] - single["state"]["quantizer.codebook"]).abs().max()
    assert codebook_gap < 1e-2, codebook_gap
    assert (tmp_path / "ddp" / "run" / "checkpoints" / "vqvae-last.pt").is_file()
    # The prior stage under the same two processes: replicas identical, training went somewhere.
    for key, value in rank0["prior_state"].items():
        assert torch.equal(value, rank1["prior_state"][key]), f"prior replicas differ in {key}"
    assert rank0["prior_history"][-1] < rank0["prior_history"][0]
    assert (tmp_path / "ddp" / "run" / "checkpoints" / "prior-last.pt").is_file()


def test_prior_processes_draw_their_own_randomness_and_resume_draws_the_same():
    """Under torchrun each process's MaskGIT masks, label dropout and dropout come from a stream of
    its own (seeded by seed, step and rank); one process's stream is left alone."""
    from types import SimpleNamespace

    from vqvae.training.distributed import DistContext
    from vqvae.training.prior_stage import PriorStage

    def draw(rank, world, step):
        torch.manual_seed(123)
        stage = SimpleNamespace(ctx=DistContext(rank=rank, world=world), train_cfg=SimpleNamespace(seed=0))
        PriorStage.before_step(stage, step)
        return torch.rand(8)

    assert not torch.equal(draw(0, 2, 5), draw(1, 2, 5))  # the two shards get different masks
    assert not torch.equal(draw(0, 2, 5), draw(0, 2, 6))  # and new ones every step
    assert torch.equal(draw(1, 2, 5), draw(1, 2, 5))  # a function of (seed, step, rank): resume is exact
    torch.manual_seed(123)
    untouched = torch.rand(8)
    assert torch.equal(draw(0, 1, 5), untouched)  # one process: its seeded stream, left alone
