"""How separable are a tokenizer's reconstructions from real images? A diagnostic for a GAN run whose
discriminator sits at chance (hinge loss near 1.0).

    python benchmarks/probe_discriminator.py --train TRAIN_FOLDER --test TEST_FOLDER \
        --run NAME=RUN [--run NAME=RUN ...] --steps 400 --json OUT.json

For each run (a run folder or checkpoint; its tokenizer frozen): its own discriminator, when the
checkpoint holds one, is scored on held-out images and their reconstructions; then a fresh
discriminator of the run's shape (loss.disc_channels, loss.disc_layers; a run without one gets the
defaults) trains alone for --steps steps on --train-images training images against their
reconstructions (hinge loss; Adam at the run's learning rate, or loss.disc_lr, with taming's betas
0.5, 0.9 whatever the run used, so runs compare; batch 16 real + 16 reconstructed), scored on --test-images held-out pairs at fixed steps. Accuracy: the fraction of
patches judged right, real and reconstructed weighted equally (0.5 = chance).

Reading: when the run's own discriminator is at chance but a fresh one separates the same
reconstructions well within a few hundred steps, the reconstructions are not indistinguishable: the
generator keeps moving what the discriminator would need to learn (or the discriminator learns too
slowly for it). When a fresh one stays near chance too, its reconstructions fool this architecture.
"""
from __future__ import annotations

import argparse
import time

import torch

from result_file import print_and_write
from vqvae.data import load_dataset
from vqvae.errors import VQVAEError
from vqvae.nn.discriminator import PatchDiscriminator
from vqvae.runs import find_checkpoint, read_model, vqvae_from_checkpoint
from vqvae.training.losses import discriminator_accuracy, discriminator_loss

SCORED_AT = (25, 50, 100, 200, 300, 400, 600, 800, 1000)
BATCH = 16
BETAS = (0.5, 0.9)  # taming's, for the discriminator of every run probed


def pick(images: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return images[torch.randperm(len(images), generator=g)[:count]].float() / 255


@torch.no_grad()
def reconstruct(model, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(x[i:i + 64]).reconstruction.float().clamp(0, 1) for i in range(0, len(x), 64)])


@torch.no_grad()
def score(critic: PatchDiscriminator, real: torch.Tensor, fake: torch.Tensor) -> dict:
    was_training = critic.training
    critic.eval()
    logits_real = torch.cat([critic(real[i:i + 64]) for i in range(0, len(real), 64)])
    logits_fake = torch.cat([critic(fake[i:i + 64]) for i in range(0, len(fake), 64)])
    critic.train(was_training)
    return {"accuracy": round(float(discriminator_accuracy(logits_real, logits_fake)), 4),
            "hinge_loss": round(float(discriminator_loss(logits_real, logits_fake, "hinge")), 4),
            "mean_logit_real": round(float(logits_real.mean()), 3), "mean_logit_fake": round(float(logits_fake.mean()), 3)}


def load_run(run: str) -> dict:
    """A run's tokenizer (eval mode), its config, its checkpoint file and its discriminator's
    weights (None when it trained without one), from one read of the checkpoint."""
    source = find_checkpoint(run, "vqvae")
    ckpt = read_model(source, "vqvae")
    model, cfg = vqvae_from_checkpoint(ckpt, source)
    return {"model": model.eval(), "config": cfg, "checkpoint": source, "critic_state": ckpt.get("critic_state")}


def probe(run: dict, train: torch.Tensor, test: torch.Tensor, steps: int, seed: int) -> dict:
    model, cfg = run["model"], run["config"]
    t0 = time.perf_counter()
    train_fake, test_fake = reconstruct(model, train), reconstruct(model, test)
    out = {"checkpoint": str(run["checkpoint"]), "reconstruct_s": round(time.perf_counter() - t0, 1)}
    channels, layers = cfg.loss.disc_channels, cfg.loss.disc_layers
    saved = run["critic_state"]
    if saved is not None:
        own = PatchDiscriminator(cfg.model.in_channels, channels, layers)
        own.load_state_dict(saved)
        out["own_discriminator"] = score(own, test, test_fake)
    torch.manual_seed(seed)
    critic = PatchDiscriminator(cfg.model.in_channels, channels, layers)
    lr = cfg.loss.disc_lr or cfg.train.lr
    optimizer = torch.optim.Adam(critic.parameters(), lr=lr, betas=BETAS)
    g = torch.Generator().manual_seed(seed)
    curve = []
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(train), (BATCH,), generator=g)
        logits = critic(torch.cat([train[idx], train_fake[idx]]))
        loss = discriminator_loss(*logits.split([BATCH, BATCH]), "hinge")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in SCORED_AT or step == steps:
            curve.append({"step": step, **score(critic, test, test_fake)})
    out["fresh_discriminator"] = {"lr": lr, "betas": list(BETAS), "channels": channels, "layers": layers,
                                  "held_out": curve}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", required=True, help="training images (a folder or dataset name)")
    p.add_argument("--test", required=True, help="held-out images")
    p.add_argument("--run", action="append", required=True, help="NAME=RUN (a run folder or checkpoint); repeatable")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--train-images", type=int, default=1024)
    p.add_argument("--test-images", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--machine", default="a shared 2-core CPU")
    p.add_argument("--json")
    args = p.parse_args()
    runs = []
    for spec in args.run:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--run {spec!r}: expected NAME=RUN")
        runs.append((name, path))
    for flag, value in (("--steps", args.steps), ("--train-images", args.train_images), ("--test-images", args.test_images)):
        if value < 1:
            raise SystemExit(f"{flag} {value}: must be at least 1")
    torch.set_num_threads(args.threads)
    loaded = {name: load_run(path) for name, path in runs}
    first_data = loaded[runs[0][0]]["config"].data
    train = pick(load_dataset(args.train, first_data).tensor(), args.train_images, args.seed)
    test = pick(load_dataset(args.test, first_data).tensor(), args.test_images, args.seed + 1)
    result = {"what": "a fresh PatchGAN trained alone against each frozen tokenizer's reconstructions; accuracy on "
                      "held-out real/reconstructed pairs (0.5 = chance)",
              "train": args.train, "test": args.test, "train_images": len(train), "test_images": len(test),
              "steps": args.steps, "machine": f"{args.machine}; torch threads {args.threads}", "runs": {}}
    for name, run in loaded.items():
        result["runs"][name] = probe(run, train, test, args.steps, args.seed)
        print(name, result["runs"][name].get("own_discriminator"), result["runs"][name]["fresh_discriminator"]["held_out"][-1],
              flush=True)
    print_and_write(result, args.json)


if __name__ == "__main__":
    try:
        main()
    except VQVAEError as e:  # a missing run, a damaged checkpoint, unreadable images: one line, as the CLI says it
        raise SystemExit(f"error: {e}") from None
