"""Every quantizer kind on a CUDA GPU: 30 training steps of the mnist model on random images under
bf16 autocast; checks fp32 quantization, finite losses, a falling loss, decode from indices.

    python benchmarks/gpu_smoke_quantizers.py --device cuda    # about 20 s
"""
from __future__ import annotations

import argparse
import time

import torch

from vqvae.config import load_config
from vqvae.models import VQVAE

KINDS = {
    "vq": [], "vq-cosine-lowdim-rotation": ["quantizer.distance=cosine", "quantizer.lookup_dim=8",
                                            "quantizer.gradient=rotation"],
    "vq-fast-search": ["quantizer.codebook_size=4096", "quantizer.search_precision=fast"],
    "fsq": ["quantizer.kind=fsq", "quantizer.codebook_size=4096"],
    "lfq": ["quantizer.kind=lfq", "quantizer.codebook_size=4096"],
    "rvq": ["quantizer.kind=rvq", "quantizer.rvq_depth=3", "quantizer.codebook_size=16", "quantizer.rvq_dropout=0.5"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    device = torch.device(args.device)  # bf16 autocast on CUDA only: CPUs without bf16 units crawl
    torch.manual_seed(0)
    x = torch.rand(args.batch, 1, 28, 28, device=device)
    for kind, overrides in KINDS.items():
        cfg = load_config("mnist", overrides)
        model = VQVAE(cfg.model, cfg.quantizer).to(device).train()
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
        losses = []
        t0 = time.perf_counter()
        for _ in range(30):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                z = model.encode(x)
                q = model.quantize(z)
                assert q.quantized.dtype == torch.float32, q.quantized.dtype
                out = model(x)
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            assert all(torch.isfinite(v).all() for v in out.losses.values())
            losses.append(out.reconstruction_loss.item())
        seconds = time.perf_counter() - t0
        model.eval()
        # cuDNN convolutions run in TF32 by default: inputs equal to float rounding (a sum of residual
        # levels taken in another order) then differ by ~1e-3 after the decoder. Compare in full fp32.
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        with torch.no_grad():
            indices = model.codes(x)
            gap = (model.decode_indices(indices) - model(x).reconstruction).abs().max().item()
        torch.backends.cudnn.allow_tf32 = tf32
        same = gap <= 1e-4
        print(f"{kind:28s} recon {losses[0]:.4f} -> {losses[-1]:.4f}  indices {tuple(indices.shape)}  "
              f"decode==forward {same} (max gap {gap:.1e})  {30 * len(x) / seconds:.0f} img/s (incl. 2x forward)",
              flush=True)
        assert losses[-1] < losses[0] and same


if __name__ == "__main__":
    main()
