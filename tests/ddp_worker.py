"""Run by tests/test_distributed.py under torchrun: train, then save this replica's weights."""
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from conftest import memory_data  # noqa: E402

from vqvae import api  # noqa: E402
from vqvae.config import RunConfig  # noqa: E402
import json  # noqa: E402

config = RunConfig.from_dict(json.loads(Path(sys.argv[1]).read_text()))
out = Path(sys.argv[2])
result = api.train_vqvae(config, out / "run", data=memory_data())
rank = dist.get_rank() if dist.is_initialized() else 0
saved = {"state": result.model.state_dict(), "history": [h["loss"] for h in result.history]}
if result.model.indices_per_position == 1:  # the prior models one index per position (not residual VQ)
    prior = api.train_prior(config, out / "run", data=memory_data())
    saved.update(prior_state=prior.model.state_dict(), prior_history=[h["bits"] for h in prior.history])
torch.save(saved, out / f"rank{rank}.pt")
if dist.is_initialized():
    dist.barrier()  # both ranks done with every collective before either tears the group down
    dist.destroy_process_group()
