"""Run by tests/test_hardening_data.py under torchrun: LFQ's entropies on this process's half of a
fixed batch; saves the codebook entropy and the gradient on the half."""
import sys

import torch
import torch.distributed as dist

from vqvae.models.lfq import lfq_entropies

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
z = torch.randn(64, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
part = z.chunk(world)[rank].clone().requires_grad_(True)
per_sample, codebook = lfq_entropies(part, 0.5, chunk_elements=64 * 5)
(per_sample - codebook).backward()
torch.save({"z": z, "codebook": codebook.detach(), "grad": part.grad}, f"{sys.argv[1]}.{rank}")
dist.barrier()  # both ranks done with every collective before either tears the group down
dist.destroy_process_group()
