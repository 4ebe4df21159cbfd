"""A check on inferring the class from the kept pixels too (validation split only; not what `vqvae inpaint` does).

    python benchmarks/inpaint_class_by_synthesis.py RUN 3 2 > benchmarks/results/cpu-maskgit-inpainting-class-by-synthesis.json

Analysis by synthesis: for each digit of `bench_maskgit.py inpaint --heldout val` (lower half blanked),
draw one completion with each of the K likeliest classes of `inpainting.class_posterior` (guidance G,
12 steps, choice temperature 4.5), decode it, and re-rank the K classes by log p(c | kept codes) minus
the squared error on the kept pixels that lie in re-drawn code cells (pixel rows 12-13), over
2 sigma^2 x scale, sigma^2 the decoder's error on the kept cells; the chosen completion is pasted and
scored by the calibrated score's classifier. Compared with the code posterior's argmax alone.
"""
import json
import sys
import time

import torch

torch.set_num_threads(1)
from vqvae.data import load_splits  # noqa: E402
from vqvae.inpainting import class_posterior, code_mask  # noqa: E402
from vqvae.metrics.sample_quality import load_or_train_classifier, predict  # noqa: E402
from vqvae.runs import load_prior, load_vqvae  # noqa: E402
run, K, G = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
vqvae, config = load_vqvae(run, "cpu")
prior, _, _ = load_prior(run, "cpu")
train, val, _ = load_splits(config.data)
order = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[:450]
images = torch.stack([val[int(i)][0] for i in order])
labels = val.labels[order]
mask = torch.zeros(28, 28, dtype=torch.bool)
mask[14:] = True
codes = vqvae.codes(images.masked_fill(mask, 0).float() / 255)
cm = code_mask(mask, 7)
masked = cm.expand_as(codes)
evidence = cm.repeat_interleave(4, 0).repeat_interleave(4, 1) & ~mask  # kept pixels in re-drawn cells
B = len(codes)
t = time.time()
post = class_posterior(prior, codes, masked)
top = post.topk(K, 1)
kw = dict(steps=12, choice_temperature=4.5) if prior.config.kind == "maskgit" else {}
x = images.float() / 255
sse = torch.zeros(B, K)
dec_all = []
g = torch.Generator().manual_seed(2)
for k in range(K):
    done = prior.complete(codes, masked, top.indices[:, k], generator=g, guidance=G, **kw)
    dec = vqvae.decode_indices(done).float().clamp(0, 1)
    dec_all.append(dec)
    sse[:, k] = ((dec - x)[:, :, evidence] ** 2).sum((1, 2)).double().float()
# noise level: the decoder's error on kept pixels in kept cells
kept_pix = ~cm.repeat_interleave(4, 0).repeat_interleave(4, 1)
sigma2 = ((vqvae.decode_indices(codes).float().clamp(0, 1) - x)[:, :, kept_pix] ** 2).mean().item()
classifier, _ = load_or_train_classifier(train.tensor(), train.labels, val.tensor(), val.labels)
res = {"K": K, "guidance": G, "sigma2": sigma2, "code_posterior_argmax_is_label": (post.argmax(1) == labels).float().mean().item()}
for scale in (0.25, 0.5, 1.0, 2.0, 4.0):
    score = top.values.double().log() - sse.double() / (2 * sigma2 * scale)
    pick = score.argmax(1)
    chosen = top.indices[torch.arange(B), pick]
    dec = torch.stack(dec_all, 1)[torch.arange(B), pick]
    out = torch.where(mask, (dec * 255).round() / 255, x)
    pred = predict(classifier, out).argmax(1)
    res[f"sigma2x{scale}"] = {"class_is_label": round((chosen == labels).float().mean().item(), 4),
                              "classified_as_original": round((pred == labels).float().mean().item(), 4)}
dec = dec_all[0]
out = torch.where(mask, (dec * 255).round() / 255, x)
res["top1_only_classified_as_original"] = round((predict(classifier, out).argmax(1) == labels).float().mean().item(), 4)
res["seconds"] = round(time.time() - t, 1)
res["machine"] = "a shared, loaded 2-core CPU machine; torch threads 1"
print(json.dumps(res))
