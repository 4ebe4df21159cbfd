"""Why inpainting without a class, and editing to another class, land where they do (validation split only).

    python benchmarks/inpaint_class_analysis.py --run RUN \\
        --json benchmarks/results/cpu-maskgit-inpainting-class-analysis.json

RUN: the run `bench_maskgit.py inpaint` trains (an mnist-preset VQ-VAE and a class-conditional
MaskGIT prior). Digits: --num digits of the run's validation split (the fixed subset
`bench_maskgit.py inpaint --heldout val` uses), lower half (pixel rows 14-27) blanked, the default
code mask (code rows 3-6 re-drawn, rows 0-2 kept).
1. Estimates of log p(kept codes | c) for MaskGIT, each turned into p(c | kept codes) with a uniform
   p(c): how often the argmax is the digit's label, and the mean -log p(label | kept codes).
   - pseudo-likelihood: the kept codes in G groups (raster index mod G); each group predicted given
     all the other kept codes (G = 1: every kept code predicted from the class alone);
   - chain rule: group g predicted given the groups before it only, groups in raster order, in an
     interleaved order, or in random orders (averaged in log space over the orders);
   the rule `inpainting.kept_log_likelihood` uses is `inpainting.class_posterior` itself, scored last.
2. What the pixels allow: a k-nearest-neighbour vote among the training digits on the kept pixel
   rows 0-13, and on rows 0-11 (what the kept codes cover: code rows 0-2 are pixel rows 0-11).
3. Editing to class c = (label + 1 + k) mod 10 (the benchmark's draw): the lower halves of real
   training digits of class c pasted under the kept half: the nearest one (L2 on rows 0-13), and
   the best of the K nearest (does any of them make the scorer say c?).
"""
from __future__ import annotations

import argparse
import sys

import torch

from vqvae.data import load_splits
from vqvae.inpainting import class_log_prior, class_posterior, code_mask
from vqvae.metrics.sample_quality import load_or_train_classifier, predict
from vqvae.runs import load_prior, load_vqvae

from result_file import print_and_write


def scores(posterior: torch.Tensor, labels: torch.Tensor) -> dict:
    return {"argmax_is_label": round((posterior.argmax(1) == labels).float().mean().item(), 4),
            "mean_neg_log_posterior_of_label": round(
                -posterior[torch.arange(len(labels)), labels].clamp_min(1e-12).log().mean().item(), 3),
            "mean_max_posterior": round(posterior.max(1).values.mean().item(), 3)}


@torch.no_grad()
def grouped_log_likelihood(prior, codes, masked, label: int, groups: list[torch.Tensor], chain: bool):
    """sum over groups of log p(group | class, other kept codes) (pseudo) or (| earlier groups) (chain)."""
    total = torch.zeros(len(codes), dtype=torch.float64)
    labels = torch.full((len(codes),), label)
    for g, group in enumerate(groups):
        hidden = masked | group
        if chain:
            for later in groups[g + 1:]:
                hidden = hidden | later
        logits = prior(codes.masked_fill(hidden, prior.mask_token), labels)
        log_probs = torch.log_softmax(logits.double(), 1).gather(1, codes[:, None])[:, 0]
        total += (log_probs * group).sum((1, 2))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--num", type=int, default=450)
    parser.add_argument("--best-of", type=int, default=50)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    vqvae, config = load_vqvae(args.run, "cpu")
    prior, _, _ = load_prior(args.run, "cpu")
    train, val, _ = load_splits(config.data)
    order = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[:args.num]
    images = torch.stack([val[int(i)][0] for i in order])
    labels = val.labels[order]
    mask = torch.zeros(28, 28, dtype=torch.bool)
    mask[14:] = True
    codes = vqvae.codes(images.masked_fill(mask, 0).float() / 255)
    masked = code_mask(mask, vqvae.latent_size).expand_as(codes)
    B, H, W = codes.shape
    kept_index = torch.arange(H * W)[~masked[0].flatten()]
    n = len(kept_index)

    def group_masks(index_groups):
        out = []
        for index in index_groups:
            m = torch.zeros(H * W, dtype=torch.bool)
            m[index] = True
            out.append(m.view(H, W).expand(B, H, W))
        return out

    def posterior_of(log_likelihood):
        return torch.softmax(log_likelihood + class_log_prior(prior), 1)

    def estimate(index_groups, chain):
        groups = group_masks(index_groups)
        return torch.stack([grouped_log_likelihood(prior, codes, masked, c, groups, chain)
                            for c in range(prior.spec.num_classes)], 1)

    out: dict = {"run": args.run, "heldout": val.name, "num_digits": B, "kept_codes": n, "likelihood_rules": []}
    rules = out["likelihood_rules"]
    for G in (1, 4, 8, n):
        rules.append({"rule": f"pseudo-likelihood, {G} interleaved groups",
                      **scores(posterior_of(estimate([kept_index[g::G] for g in range(G)], False)), labels)})
    for G in (4, 8):
        rules.append({"rule": f"chain rule, {G} interleaved groups",
                      **scores(posterior_of(estimate([kept_index[g::G] for g in range(G)], True)), labels)})
    rules.append({"rule": f"chain rule, raster order, one code at a time ({n} groups)",
                  **scores(posterior_of(estimate([kept_index[g:g + 1] for g in range(n)], True)), labels)})
    generator = torch.Generator().manual_seed(0)
    for G in (2, 4):
        estimates = []
        for k in range(8):
            perm = kept_index[torch.randperm(n, generator=generator)]
            estimates.append(estimate([perm[g * n // G:(g + 1) * n // G] for g in range(G)], True))
            if k + 1 in (1, 4, 8):
                rules.append({"rule": f"chain rule, {G} groups, {k + 1} random orders (mean log-likelihood)",
                              **scores(posterior_of(torch.stack(estimates).mean(0)), labels)})
    rules.append({"rule": "inpainting.class_posterior (the rule vqvae inpaint uses)",
                  **scores(class_posterior(prior, codes, masked), labels)})

    train_images, train_labels = train.tensor(), train.labels
    out["pixel_knn"] = {}
    for rows in (14, 12):
        distance = torch.cdist(images[:, :, :rows].flatten(1).float(), train_images[:, :, :rows].flatten(1).float())
        for k in (1, 5, 15):
            nearest = distance.topk(k, largest=False).indices
            votes = torch.zeros(B, 10).scatter_add_(1, train_labels[nearest], torch.ones(nearest.shape))
            out["pixel_knn"][f"rows 0-{rows - 1}, k={k}"] = round((votes.argmax(1) == labels).float().mean().item(), 4)

    classifier, _ = load_or_train_classifier(train_images, train_labels, val.tensor(), val.labels)
    g = torch.Generator().manual_seed(1)
    other = (labels + 1 + torch.randint(0, 9, labels.shape, generator=g)) % 10
    distance = torch.cdist(images[:, :, :14].flatten(1).float(), train_images[:, :, :14].flatten(1).float())
    distance[train_labels[None] != other[:, None]] = float("inf")
    nearest = distance.topk(args.best_of, largest=False).indices  # (B, K), all of class c
    hits = torch.zeros(B, args.best_of, dtype=torch.bool)
    for k in range(args.best_of):
        pasted = images.clone()
        pasted[:, :, 14:] = train_images[nearest[:, k], :, 14:]
        hits[:, k] = predict(classifier, pasted.float() / 255).argmax(1) == other
    out["edit_real_completions"] = {
        "nearest_classified_as_c": round(hits[:, 0].float().mean().item(), 4),
        f"any_of_{args.best_of}_nearest_classified_as_c": round(hits.any(1).float().mean().item(), 4),
        f"mean_over_{args.best_of}_nearest_classified_as_c": round(hits.float().mean().item(), 4)}
    out["machine"] = "a shared, loaded 2-core CPU machine; torch threads 1"
    print_and_write(out, args.json)


if __name__ == "__main__":
    sys.exit(main())
