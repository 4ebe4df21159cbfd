"""Whether this process is one of several under torchrun: a leaf, so models (the quantizers'
all-reduces) and training (the loop's collectives) ask the same question the same way."""
from __future__ import annotations

import torch.distributed as dist


def is_distributed() -> bool:
    """True inside a process group of more than one process (under torchrun)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
