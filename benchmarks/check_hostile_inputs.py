"""Hostile inputs through the CLI: about 80 bad inputs and faults, each run in-process on a tiny
run of synthetic images, printed as a Markdown table (input, exit status, first error line).

    python benchmarks/check_hostile_inputs.py > benchmarks/results/DATE-cpu-hostile-inputs.md

Exit 2 is the CLI's error status; a row whose exit reads TRACEBACK is a bug. Takes a few minutes on
a CPU. It is a check script, not a test: tests/test_hardening.py holds a test per item.
"""
import contextlib, io, json, os, sys, shutil, gzip, errno, tempfile
from pathlib import Path
from unittest import mock
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import bar_images, tiny_overrides  # noqa: E402
from PIL import Image  # noqa: E402
from vqvae.cli import main  # noqa: E402

root = Path(tempfile.mkdtemp(prefix="vqvae-hostile-"))
os.chdir(root)
bars = root / "bars"
images, labels = bar_images(120)
for i, (img, lab) in enumerate(zip(images, labels)):
    d = bars / ("h" if lab == 0 else "v"); d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(d / f"{i:03d}.png")
TINY = tiny_overrides(bars)
rows = []

def run(label, *args, patch=None):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            with (patch or contextlib.nullcontext()):
                code = main([str(a) for a in args])
        except BaseException as e:  # a traceback
            code = f"TRACEBACK {type(e).__name__}: {str(e)[:120]}"
    lines = [l for l in err.getvalue().splitlines() if l.startswith("error:")] or [err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else out.getvalue().strip().splitlines()[-1] if out.getvalue().strip() else ""]
    rows.append((label, code, lines[0][:230]))
    return code

run("setup: tiny run", "pipeline", "--preset", "tiny", "--out", "run", "--set", *TINY)
R = "run"
run("`--set train.epochs=1 --set train.lr=0.001` (repeated --set)", "train", "--preset", "tiny", "--out", "rep", "--set", *TINY, "--set", "train.epochs=1", "--set", "train.lr=0.001")
rows[-1] = rows[-1][:2] + (rows[-1][2] + f" [epochs={json.load(open('rep/metrics.json'))['vqvae']['epochs']}, lr in config={json.load(open('rep/config.json'))['train']['lr']}]",)
for s in ["train.lr=nan", "train.lr=inf", "train.lr=0", "train.weight_decay=-1", "train.device=tpu", "train.dropout=2",
          "train.warmup_steps=-10", "train.lr_min_ratio=5", "data.num_workers=-1", "sample.top_k=-3",
          "sample.temperature=inf", "sample.temperature=0", "train.epochs=1.5", "train.epochs=true", "train.batch_size=0",
          "train.epochs=-1", "quantizer.ema_decay=1", "prior.kernel_size=4", "train.compile=maybe", "train.nope=1",
          "train.epochs"]:
    run(f"`--set {s}`", "train", "--preset", "tiny", "--out", "x", "--set", s)
for name, content in [("list", [1, 2]), ("field list", {"train": {"lr": [0.1]}}), ("field null", {"train": {"lr": None}}),
                      ("epochs 1.5", {"train": {"epochs": 1.5}}), ("epochs true", {"train": {"epochs": True}}),
                      ("section a number", {"train": 5}), ("dropout 2", {"prior_train": {"dropout": 2}})]:
    Path(f"{name}.json").write_text(json.dumps(content))
    run(f"`--config` holding {name}: `{json.dumps(content)}`", "train", "--config", f"{name}.json", "--out", "x")
Path("trunc.json").write_text('{"train": {"epochs": ')
run("`--config` truncated JSON", "train", "--config", "trunc.json", "--out", "x")
run("`--device tpu` (train)", "train", "--preset", "tiny", "--device", "tpu", "--out", "x")
run("`reconstruct --device tpu`", "reconstruct", R, "--device", "tpu", "--out", "r.png")
for t in ["0", "-1", "nan", "inf"]:
    run(f"`sample --temperature {t}`", "sample", R, "--temperature", t, "--out", "s")
run("`sample --top-k -3`", "sample", R, "--top-k", "-3", "--out", "s")
run("`sample --batch-size 0`", "sample", R, "--batch-size", "0", "--out", "s")
run("`sample -n 0`", "sample", R, "-n", "0", "--out", "s")
run("`reconstruct --num -1`", "reconstruct", R, "--num", "-1", "--out", "r.png")
run("`reconstruct --num 0`", "reconstruct", R, "--num", "0", "--out", "r.png")
run("`evaluate --num-samples 0`", "evaluate", R, "--num-samples", "0")
# resume
for flag in [["--data", "mnist-5k"], ["--preset", "tiny"], ["--out", "elsewhere"], ["--config", "epochs 1.5.json"], ["--test-data", "mnist-5k"]]:
    run(f"`train --resume RUN {' '.join(flag)}`", "train", "--resume", R, *flag)
shutil.copytree(bars, "bars2")
run("`train --resume RUN --set data.dataset=OTHER`", "train", "--resume", R, "--set", "data.dataset=bars2", "train.epochs=4")
run("`train --resume RUN --set model.hidden_channels=32`", "train", "--resume", R, "--set", "model.hidden_channels=32")
shutil.copytree(R, "ext")
run("`train --resume RUN --set train.epochs=5` (extend a finished 3-epoch run)", "train", "--resume", "ext", "--set", "train.epochs=5")
rows[-1] = rows[-1][:2] + (rows[-1][2] + " | notes: " + "; ".join(json.load(open('ext/metrics.json'))['vqvae']['resume_notes']),)
run("`train --resume RUN --set train.epochs=6 train.lr=0.001 train.weight_decay=0.01`", "train", "--resume", "ext", "--set", "train.epochs=6", "train.lr=0.001", "train.weight_decay=0.01")
rows[-1] = rows[-1][:2] + (rows[-1][2] + " | notes: " + "; ".join(json.load(open('ext/metrics.json'))['vqvae']['resume_notes']),)
shutil.copytree(R, "trunc")
t = Path("trunc/config.json").read_text(); Path("trunc/config.json").write_text(t[: len(t) // 2])
run("`train --resume RUN` with a truncated config.json", "train", "--resume", "trunc")
run("`train-prior RUN` with a truncated config.json", "train-prior", "trunc")
run("`train --resume /no/such/run`", "train", "--resume", "/no/such/run")
# non-finite
run("`--set train.lr=1e30 train.on_nonfinite=skip` (tiny)", "train", "--preset", "tiny", "--out", "div", "--set", *TINY, "train.lr=1e30", "train.on_nonfinite=skip")
run("`--set train.lr=1e30` (stop, first epoch)", "train", "--preset", "tiny", "--out", "div2", "--set", *TINY, "train.lr=1e30")
# outputs
for args in [["evaluate", R, "--no-samples", "--out", f"{R}/config.json"], ["reconstruct", R, "--out", f"{R}/metrics.json"],
             ["reconstruct", R, "--out", f"{R}/reconstructions.png"], ["decode", R, "c/codes.npy", "--out", f"{R}/checkpoints/x.png"],
             ["encode", R, "--out", f"{R}/codes"], ["sample", R, "--out", f"{R}/checkpoints"]]:
    if args[0] == "decode":
        run("(encode for decode)", "encode", R, "--out", "c")
    run(f"`{' '.join(map(str, args))}`", *args)
Path("afile").write_text("x")
run("`train --out FILE`", "train", "--preset", "tiny", "--out", "afile")
run("`encode --out FILE`", "encode", R, "--out", "afile")
run("`sample --out FILE`", "sample", R, "--out", "afile")
run("`reconstruct --out FOLDER`", "reconstruct", R, "--out", "c")
def deny(self, *a, **k): raise PermissionError(errno.EACCES, "Permission denied", str(self))
run("`train --out` in an unwritable folder (mkdir patched to EACCES; root ignores modes)", "train", "--preset", "tiny", "--out", "ro/run", "--set", *TINY, patch=mock.patch("pathlib.Path.mkdir", deny))
real = os.fsync; n = {"n": 0}
def fsync(fd):
    n["n"] += 1
    if n["n"] > 6: raise OSError(errno.ENOSPC, "No space left on device")
    real(fd)
run("full disk after epoch 1 (fsync patched to ENOSPC)", "train", "--preset", "tiny", "--out", "full", "--set", *TINY, patch=mock.patch("vqvae.files.os.fsync", fsync))
import torch
rows[-1] = rows[-1][:2] + (rows[-1][2] + f" [last checkpoint still loads: epoch {torch.load('full/checkpoints/vqvae-last.pt', weights_only=True)['loop']['epoch']}; tmp files: {len(list(Path('full').rglob('*.tmp')))}]",)
# codes
np.save("empty.npy", np.zeros((0, 4, 4), np.int16))
run("`decode` of an empty codes array", "decode", R, "empty.npy", "--out", "d.png")
shutil.copytree("c", "c2"); Path("c2/codes.json").write_text('{"codebook_size": 16,')
run("`decode` with a malformed codes.json", "decode", R, "c2", "--out", "d.png")
m = json.load(open("c/codes.json")); m["vqvae_fingerprint"] = "0" * 16; shutil.copytree("c", "c3"); Path("c3/codes.json").write_text(json.dumps(m))
run("`decode` codes of another VQ-VAE (fingerprint)", "decode", R, "c3", "--out", "d.png")
np.save("small.npy", np.zeros((2, 3, 3), np.int16))
run("`decode` 3x3 codes on a 4x4 model", "decode", R, "small.npy", "--out", "d.png")
# idx
imgs = np.zeros((20, 28, 28), np.uint8); Path("idx").mkdir()
data = gzip.compress(bytes([0, 0, 8, 3, 0, 0, 0, 20, 0, 0, 0, 28, 0, 0, 0, 28]) + imgs.tobytes())
Path("idx/t10k-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
run("truncated IDX .gz (`--data FOLDER`)", "train", "--data", "idx", "--out", "x")
# checkpoints
class Evil:
    def __reduce__(self): return (os.system, ("echo pwned",))
torch.save({"format": "vqvae-toolkit-checkpoint", "x": Evil()}, "evil.pt")
run("`evaluate evil.pt` (pickle that runs code)", "evaluate", "evil.pt")
Path("text.pt").write_text("hello")
run("`evaluate text.pt`", "evaluate", "text.pt")
# stale tmp
Path("stale/checkpoints").mkdir(parents=True); shutil.copy(f"{R}/config.json", "stale/config.json")
Path("stale/checkpoints/.vqvae-last.pt.k1ll.tmp").write_bytes(b"half")
run("`train --resume RUN` whose checkpoints/ holds only a stale .tmp", "train", "--resume", "stale")
Path("stale2/checkpoints").mkdir(parents=True); Path("stale2/checkpoints/.vqvae-last.pt.k1ll.tmp").write_bytes(b"half")
run("`train --out RUN` whose checkpoints/ holds only a stale .tmp", "train", "--preset", "tiny", "--out", "stale2", "--set", *TINY, "train.epochs=1")
# --- unlabelled-samples: tune-sampling's options and RUN/sampling.json; every row exits 2 with a one-line error
run("`tune-sampling RUN --guidance 1,abc` (not a number)", "tune-sampling", R, "--guidance", "1,abc")
run("`tune-sampling RUN --guidance 2` on an unconditional prior", "tune-sampling", R, "--guidance", "2")
run("`tune-sampling RUN --draws 1` (no interval from one draw)", "tune-sampling", R, "--draws", "1")
run("`tune-sampling RUN --temperature 1,-1`", "tune-sampling", R, "--temperature", "1,-1")
run("`tune-sampling RUN --top-p 0`", "tune-sampling", R, "--top-p", "0")
run("`tune-sampling RUN --temperature 1,1` (a value twice)", "tune-sampling", R, "--temperature", "1,1")
run("`tune-sampling RUN` whose validation split is too small to score", "tune-sampling", R)
Path(f"{R}/sampling.json").write_text("{not json")
run("`sample RUN` with a damaged RUN/sampling.json", "sample", R, "--out", "tuned-damaged")
Path(f"{R}/sampling.json").write_text("[1, 2]")
run("`sample RUN` with a RUN/sampling.json that is not tune-sampling's", "sample", R, "--out", "tuned-foreign")
Path(f"{R}/sampling.json").unlink()
run("`train-prior RUN --set prior.pseudo_classes=1`", "train-prior", R, "--set", "prior.pseudo_classes=1",
    "prior.label_dropout=0.1")
run("`train-prior RUN --set prior.pseudo_classes=4` without label dropout", "train-prior", R, "--set",
    "prior.pseudo_classes=4")
rows.append(("file modes of a new run (umask 022)", "", ", ".join(f"{p}: {oct(os.stat(f'{R}/{p}').st_mode & 0o777)}" for p in ("config.json", "metrics.json", "checkpoints/vqvae-last.pt"))))
print("| input | exit | outcome (first error line, or last line of output) |\n|---|---|---|")
for label, code, line in rows:
    print(f"| {label} | {code} | {line.replace('|', '/')} |")
os.chdir("/")
shutil.rmtree(root, ignore_errors=True)
print(f"\n{sum('TRACEBACK' in str(code) for _, code, _ in rows)} tracebacks in {len(rows)} rows")
