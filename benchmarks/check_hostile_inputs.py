"""Hostile inputs through the CLI: about 80 bad inputs and faults, each run in-process on a tiny
run of synthetic images, printed as a Markdown table (input, exit status, first error line).

    python benchmarks/check_hostile_inputs.py > benchmarks/results/cpu-hostile-inputs.md

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
os.environ["VQVAE_CACHE"] = str(root / "cache")  # its own image cache: no side files of earlier runs
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
rows.append(("file modes of a new run (umask 022)", "", ", ".join(f"{p}: {oct(os.stat(f'{R}/{p}').st_mode & 0o777)}" for p in ("config.json", "metrics.json", "checkpoints/vqvae-last.pt"))))
# --- harden-runs
# Issue 16, run side. Each row's label ends with its expected outcome; a row that does not meet
# it is marked UNEXPECTED in its outcome column.
import hashlib, signal, subprocess, time  # noqa: E401,E402
def expect(label, code, text, *args, patch=None):
    got = run(f"{label} (expect exit {code}{': ' + text if text else ''})", *args, patch=patch)
    if got != code or text not in rows[-1][2]:
        rows[-1] = rows[-1][:2] + (rows[-1][2] + " [UNEXPECTED]",)
    return got
def note(text):  # append a measured fact to the last row
    rows[-1] = rows[-1][:2] + (rows[-1][2] + f" [{text}]",)
def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
# item 3: a run's own files
for args, name in [(["reconstruct", R, "--out", f"{R}/samples.png"], "samples.png"),
                   (["evaluate", R, "--no-samples", "--out", f"{R}/samples.npy"], "samples.npy"),
                   (["decode", R, "c", "--out", f"{R}/samples.png"], "samples.png"),
                   (["decode", R, "c", "--out", f"{R}/samples.jpg"], "samples.npy"),
                   (["evaluate", R, "--no-samples", "--out", f"{R}/samples.json"], "samples.json"),
                   (["evaluate", R, "--no-samples", "--out", f"{R}/.lock"], ".lock")]:
    expect(f"`{' '.join(map(str, args))}`", 2, f"would overwrite the file {name}", *args)
shutil.copytree(R, "keyed")
np.save("keyed/samples.npy", np.zeros((64, 1, 16, 16), np.uint8))  # another command's images, samples.json kept
expect("RUN/samples.npy replaced by other images, samples.json kept, then `evaluate`", 0, "", "evaluate", "keyed")
note(f"samples.npy re-drawn: hash recorded in samples.json matches the file: "
     f"{json.load(open('keyed/samples.json')).get('npy_sha256') == sha('keyed/samples.npy')}; all zeros: "
     f"{not np.load('keyed/samples.npy').any()}")
np.save("keyed/samples.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
expect("RUN/samples.npy holding a pickled object array, then `evaluate`", 0, "", "evaluate", "keyed")
note(f"re-drawn, a plain uint8 array now: {np.load('keyed/samples.npy').dtype == np.uint8}")
expect("`sample RUN --out OTHER_RUN`", 2, "is another run's folder", "sample", R, "--out", "keyed")
# item 4: train-prior --set outside prior.*, prior_train.*, sample.*
for s in ["data.dataset=bars2", "train.epochs=40", "train.lr=0.5", "data.image_size=32", "quantizer.codebook_size=8"]:
    before = sha(f"{R}/config.json")
    expect(f"`train-prior RUN --set {s}`", 2, "only prior.*, prior_train.*, sample.* may change", "train-prior", R, "--set", s)
    note(f"config.json unchanged: {sha(f'{R}/config.json') == before}")
# item 5: zero epochs
expect("`train-prior RUN --set prior_train.epochs=0` (a run with a prior)", 2, "must be >= 1", "train-prior", R, "--set", "prior_train.epochs=0")
expect("`train --set train.epochs=0`", 2, "must be >= 1", "train", "--preset", "tiny", "--out", "zero", "--set", *TINY, "train.epochs=0")
note(f"no run folder left: {not Path('zero').exists()}")
# item 6: one writer per run folder
shutil.copytree(R, "busy")
first = subprocess.Popen([sys.executable, "-m", "vqvae.cli", "train", "--resume", "busy", "--set", "train.epochs=12"],
                         env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
for _ in range(600):  # until the first holds the lock
    if Path("busy/.lock").is_file() and str(first.pid) in Path("busy/.lock").read_text():
        break
    time.sleep(0.1)
expect("two `train --resume RUN` at once: the second", 2, f"is in use: process {first.pid}", "train", "--resume", "busy", "--set", "train.epochs=12")
expect("`train-prior RUN` while `train --resume RUN` runs", 2, "is in use", "train-prior", "busy", "--resume")
expect("`evaluate RUN` while `train --resume RUN` runs", 2, "is in use", "evaluate", "busy")
first_code = first.wait()
rows.append(("two `train --resume RUN` at once: the first (expect exit 0)", first_code,
             f"trained to epoch {json.load(open('busy/metrics.json'))['vqvae']['epochs']}; checkpoint epoch "
             f"{torch.load('busy/checkpoints/vqvae-last.pt', weights_only=True)['loop']['epoch']}"
             + ("" if first_code == 0 else " [UNEXPECTED]")))
killed = subprocess.Popen([sys.executable, "-m", "vqvae.cli", "train", "--resume", "busy", "--set", "train.epochs=30"],
                          env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(600):
    if str(killed.pid) in Path("busy/.lock").read_text():
        break
    time.sleep(0.1)
killed.send_signal(signal.SIGKILL); killed.wait()
expect("`train --resume RUN` after the holder was SIGKILLed (no stale lock)", 0, "", "train", "--resume", "busy", "--set", "train.epochs=30")
# item 7: options of another quantizer kind
for s in [["quantizer.fsq_levels=8,5"], ["quantizer.rvq_depth=3"], ["quantizer.rvq_dropout=0.5"],
          ["quantizer.kind=fsq", "quantizer.codebook_size=64", "quantizer.entropy_weight=0.5"],
          ["quantizer.kind=fsq", "quantizer.codebook_size=64", "quantizer.update=loss"],
          ["quantizer.kind=lfq", "quantizer.init=uniform"],
          ["quantizer.kind=lfq", "quantizer.restart_after_steps=50"],
          ["quantizer.kind=fsq", "quantizer.codebook_size=64", "quantizer.ema_decay=0.9"]]:
    expect(f"`--set {' '.join(s)}`", 2, "does not apply to quantizer.kind", "train", "--preset", "tiny", "--out", "x", "--set", *s)
expect("`--preset seed-mnist --set quantizer.kind=fsq quantizer.codebook_size=64 quantizer.init=kmeans`", 2, "does not apply",
       "train", "--preset", "seed-mnist", "--out", "x", "--set", "quantizer.kind=fsq", "quantizer.codebook_size=64", "quantizer.init=kmeans")
# item 8: preset by --set or in a --config file
expect("`--set preset=cifar10`", 2, "choose it with --preset cifar10", "train", "--preset", "tiny", "--out", "x", "--set", "preset=cifar10")
Path("preset.json").write_text(json.dumps({"preset": "cifar10", "train": {"epochs": 1}}))
expect("`--preset tiny --config FILE` whose \"preset\" is cifar10", 2, "names preset 'cifar10'", "train", "--preset", "tiny", "--config", "preset.json", "--out", "x")
# item 9: the test data is the training data
expect("`--data bars --test-data bars/../bars`", 2, "is the training data", "train", "--preset", "tiny", "--out", "x", "--set", *TINY, "--test-data", "bars/../bars")
# item 10: exported model folders
expect("(export a model folder)", 0, "", "export", R, "--format", "folder", "--out", "m")
shutil.copytree("m", "m_swap")
expect("(export another VQ-VAE to swap files from)", 0, "", "export", "ext/checkpoints/vqvae-last.pt", "--format", "folder", "--out", "m_other")
shutil.copy("m_other/vqvae.safetensors", "m_swap/vqvae.safetensors")
expect("model folder whose vqvae.safetensors comes from another export", 2, "is not the file exported", "reconstruct", "m_swap", "--out", "r.png")
for section, field, value in [("quantizer", "distance", "cosine"), ("model", "image_size", 32)]:
    shutil.rmtree("m_edit", ignore_errors=True); shutil.copytree("m", "m_edit")
    meta = json.load(open("m_edit/config.json")); meta["models"]["vqvae"]["config"][section][field] = value
    Path("m_edit/config.json").write_text(json.dumps(meta))
    expect(f"model folder with {section}.{field}={value} edited in config.json", 2, "config was changed after export", "reconstruct", "m_edit", "--out", "r.png")
from vqvae.models import pretrained  # noqa: E402
real_write = pretrained.atomic_write_bytes
def killed_at_config(path, data):
    if Path(path).name == "config.json":
        raise KeyboardInterrupt  # as a kill after the weights of the new export were written
    real_write(path, data)
before = {p.name: sha(p) for p in Path("m").iterdir()}
expect("`export ANOTHER --out m` killed before its config.json (over an earlier export)", 130, "interrupted", "export", "ext/checkpoints/vqvae-last.pt", "--format", "folder", "--out", "m",
       patch=mock.patch.object(pretrained, "atomic_write_bytes", killed_at_config))
note(f"old folder intact: {before == {p.name: sha(p) for p in Path('m').iterdir()}}; temporary folders left: {len(list(Path('.').glob('.m.*.tmp')))}")
Path(".m.999999999-k1ll.tmp").mkdir(); Path(".m.999999999-k1ll.tmp/vqvae.safetensors").write_bytes(b"half")
expect("`export` again beside a temporary folder a SIGKILL left", 0, "", "export", R, "--format", "folder", "--out", "m")
note(f"temporary folders left: {len(list(Path('.').glob('.m.*.tmp')))}")
# tracebacks that are now one line
for name, content in [("a list", b'["x"]'), ("no models", b'{"format": "vqvae-toolkit-model", "version": 1}'),
                      ("models a list", b'{"format": "vqvae-toolkit-model", "version": 1, "models": []}'),
                      ("vqvae a number", b'{"format": "vqvae-toolkit-model", "version": 1, "models": {"vqvae": 5}}'),
                      ("vqvae without config", b'{"format": "vqvae-toolkit-model", "version": 1, "models": {"vqvae": {}}}'),
                      ("string version", b'{"format": "vqvae-toolkit-model", "version": "1", "models": {}}'),
                      ("non-UTF-8 bytes", b'{"format": "vqvae-toolkit-model", \xff\xfe}')]:
    shutil.rmtree("m_bad", ignore_errors=True); shutil.copytree("m", "m_bad"); Path("m_bad/config.json").write_bytes(content)
    for args in (["reconstruct", "m_bad", "--out", "r.png"], ["export", "m_bad", "--format", "folder", "--out", "m_again"]):
        expect(f"model folder config.json: {name}; `{args[0]}`", 2, "", *args)
shutil.copytree(R, "badutf"); Path("badutf/config.json").write_bytes(b'{"train": \xff\xfe}')
expect("run folder config.json with non-UTF-8 bytes; `train-prior`", 2, "not valid JSON", "train-prior", "badutf")
expect("run folder config.json with non-UTF-8 bytes; `train --resume`", 2, "not valid JSON", "train", "--resume", "badutf")
for name, payload, text in [("no config or state", {"format": "vqvae-toolkit-checkpoint", "version": 1, "kind": "vqvae"}, "holds no config"),
                            ("a string version", {"format": "vqvae-toolkit-checkpoint", "version": "1", "kind": "vqvae"}, "not a whole number"),
                            ("non-tensor state", {"format": "vqvae-toolkit-checkpoint", "version": 1, "kind": "vqvae", "config": {}, "model_state": {"w": 1}}, "not a mapping of tensor names"),
                            ("state a list", {"format": "vqvae-toolkit-checkpoint", "version": 1, "kind": "vqvae", "config": {}, "model_state": [1]}, "not a mapping of tensor names")]:
    torch.save(payload, "crafted.pt")
    expect(f"crafted checkpoint: {name}", 2, text, "reconstruct", "crafted.pt", "--out", "r.png")
for q in ['"vq"', "null"]:
    shutil.rmtree("cq", ignore_errors=True); shutil.copytree("c", "cq")
    m = json.load(open("cq/codes.json")); m["quantizer"] = json.loads(q); Path("cq/codes.json").write_text(json.dumps(m))
    expect(f"`decode` with codes.json whose quantizer is {q}", 2, "'quantizer' is", "decode", R, "cq", "--out", "d.png")
for cmd in (["decode", R, "c", "--out", "decoded.gif"], ["reconstruct", R, "--out", "rec"]):
    expect(f"`{' '.join(map(str, cmd))}` (no PNG/JPEG extension)", 2, "must end in .png", *cmd)
    note(f"files written: {[p for p in ('decoded.gif', 'decoded.npy', 'rec', 'rec.npy') if Path(p).exists()]}")
expect("`sample --guidance 1e300`", 2, "must be in [0, 100]", "sample", R, "--guidance", "1e300", "--out", "s")
expect("`sample --temperature 1e-45`", 2, "must be > 0, in", "sample", R, "--temperature", "1e-45", "--out", "s")
expect("`sample --seed 2**70`", 2, "must be in [0, 18446744073709551615]", "sample", R, "--seed", str(2 ** 70), "--out", "s")
expect("`--set train.seed=2**70`", 2, "must be in", "train", "--preset", "tiny", "--out", "x", "--set", f"train.seed={2 ** 70}")
if not torch.backends.mps.is_available():
    expect("`reconstruct --device mps` (no MPS here)", 2, "no MPS", "reconstruct", R, "--device", "mps", "--out", "r.png")
    expect("`train --device mps` (no MPS here)", 2, "no MPS", "train", "--preset", "tiny", "--device", "mps", "--out", "x", "--set", *[t for t in TINY if "device" not in t])
expect("`--set quantizer.codebook_size=1000000000`", 2, "needs at least", "train", "--preset", "tiny", "--out", "huge", "--set", *TINY, "quantizer.codebook_size=1000000000")
note(f"no run folder left: {not Path('huge').exists()}")
from vqvae import resources  # noqa: E402
expect("`train-prior RUN --set prior.num_layers=1000` (available memory patched to 50 MB)", 2, "prior needs at least", "train-prior", "keyed", "--set", "prior.num_layers=1000",
       patch=mock.patch.object(resources, "available_memory", lambda device: 50 * 10 ** 6))
expect("`sample -n 1000000000`", 2, "at most about", "sample", R, "-n", "1000000000", "--out", "s")
expect("`sample -n 1000000000` into the run folder", 2, "at most about", "sample", R, "-n", "1000000000")
for s in ["quantizer.fsq_levels=a,b", "quantizer.fsq_levels=8.5,5"]:
    expect(f"`--set quantizer.kind=fsq {s}`", 2, "expected a comma-separated list", "train", "--preset", "tiny", "--out", "x", "--set", "quantizer.kind=fsq", s)
pipe = subprocess.run(f"{sys.executable} -m vqvae.cli train --preset tiny --out piped --set {' '.join(TINY)} train.epochs=1 | head -1",
                      shell=True, executable="/bin/bash", env=ENV, capture_output=True, text=True)
rows.append(("`vqvae train ... | head -1` (expect no traceback)", "", ("Traceback" in pipe.stderr and "TRACEBACK in stderr [UNEXPECTED]")
             or f"stderr: {pipe.stderr.strip().splitlines()[-1][:120] if pipe.stderr.strip() else '(empty)'}"))
expect("`sample MODEL_FOLDER` without --out", 2, "pass --out FOLDER", "sample", "m")
note(f"model folder files: {sorted(p.name for p in Path('m').iterdir())}")
shutil.copytree(R, "damaged")
b = Path("damaged/checkpoints/vqvae-best.pt"); b.write_bytes(b.read_bytes()[:1000])
expect("`train-prior RUN --resume` with a truncated vqvae-best.pt (vqvae-last.pt intact)", 2, "vqvae-last.pt beside it is intact", "train-prior", "damaged", "--resume")
from vqvae import files as vfiles  # noqa: E402
Path("keep.json").write_text('{"v": 1}')
def full_disk(f):
    f.write(b"{")
    raise OSError(errno.ENOSPC, "No space left on device")
try:
    vfiles.atomic_write(Path("keep.json"), full_disk)
except Exception as e:
    rows.append(("atomic_write failing midway (ENOSPC)", "", f"{e} [old file intact: {json.loads(Path('keep.json').read_text()) == {'v': 1}}; temporaries left: {len(list(Path('.').glob('.keep.json.*')))}]"))
# --- harden-data
# Data-side cases of issue 16. Each label says the expected outcome; `drun` keeps the first error line, else the
# first warning line (one clean line, never Python's "file.py:LINE: UserWarning"), else the last line of output.
import multiprocessing, signal, socket, time as time_module
from vqvae.config import DataConfig
from vqvae.data.cache import cache_root
def drun(label, *args, check=None):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        signal.alarm(120)  # a hang is a failure, not a stuck script
        try:
            code = main([a if isinstance(a, str) else str(a) for a in args])
        except BaseException as e:
            code = f"TRACEBACK {type(e).__name__}: {str(e)[:120]}"
        finally:
            signal.alarm(0)
    lines = err.getvalue().splitlines()
    line = next((l for l in lines if l.startswith("error:")), None) or next((l for l in lines if l.startswith("warning:")), None) \
        or (out.getvalue().strip().splitlines() or [""])[-1]
    if "UserWarning" in err.getvalue():
        code = f"{code} (a Python warning with source)"
    extra = check() if check else ""
    rows.append((label, code, (line.encode("utf-8", "backslashreplace").decode()[:200] + (f" [{extra}]" if extra else ""))))
    return code
def hang(signum, frame): raise TimeoutError("hung for 120 s")
signal.signal(signal.SIGALRM, hang)
def folder_with(name, make):
    shutil.copytree(bars, name); make(Path(name)); return name
folder_with("d_loop", lambda d: os.symlink("loop.png", d / "h" / "loop.png"))
drun("symlink loop named .png in a data folder (expect 0, one warning line)", "encode", R, "--data", "d_loop", "--out", "e1")
folder_with("d_dangling", lambda d: os.symlink("/no/such/file.png", d / "v" / "gone.png"))
drun("dangling symlink in a data folder (expect 0, one warning line)", "encode", R, "--data", "d_dangling", "--out", "e2")
folder_with("d_fifo", lambda d: os.mkfifo(d / "h" / "pipe.png"))
drun("FIFO named .png in a data folder, encode (expect 0, one warning line, no hang)", "encode", R, "--data", "d_fifo", "--out", "e3")
drun("FIFO named .png in a data folder, train (header scan; expect 0, no hang)", "train", "--preset", "tiny", "--out", "t_fifo", "--set", *TINY, "data.dataset=d_fifo", "train.epochs=1")
bad = os.fsdecode(b"d_\xff\xfe")
shutil.copytree(bars, bad)
drun("non-UTF-8 data folder name (expect 0)", "encode", R, "--data", bad, "--out", "e4")
drun("non-UTF-8 `encode --out` (expect 0)", "encode", R, "--out", os.fsdecode(b"e_\xff"))
drun("non-UTF-8 `train --out` (expect 2: tensorboard cannot log there)", "train", "--preset", "tiny", "--out", os.fsdecode(b"t_\xff"), "--set", *TINY, "train.epochs=1")
np.save("upper.NPY", images[:40]); os.replace("upper.NPY.npy", "upper.NPY") if Path("upper.NPY.npy").exists() else None
drun("`.NPY` in upper case (expect 0)", "encode", R, "--data", "upper.NPY", "--out", "e5")
np.savez("realnpz.npz", images=images[:40], labels=labels[:40]); os.replace("realnpz.npz", "npz_named.npy")
drun("an .npz named .npy (expect 0, labelled)", "encode", R, "--data", "npz_named.npy", "--out", "e6", check=lambda: f"labels.npy: {Path('e6/labels.npy').exists()}")
np.save("realnpy.npy", images[:40]); os.replace("realnpy.npy", "npy_named.npz")
drun("an .npy named .npz (expect 0)", "encode", R, "--data", "npy_named.npz", "--out", "e7")
Path("empty0.npy").write_bytes(b"")
drun("an empty (0-byte) .npy (expect 2)", "encode", R, "--data", "empty0.npy", "--out", "e8")
np.save("noimages.npy", np.zeros((0, 16, 16), np.uint8))
drun("an .npy of 0 images (expect 2)", "encode", R, "--data", "noimages.npy", "--out", "e9")
np.savez("neg.npz", images=images[:40], labels=np.where(labels[:40] == 0, -1, 1))
drun("negative labels in an .npz (expect 2)", "encode", R, "--data", "neg.npz", "--out", "e10")
np.savez("big.npz", images=images[:40], labels=np.where(labels[:40] == 0, 3, 10 ** 9))
drun("a label of 10^9 in an .npz (expect 0: two classes, named by value)", "encode", R, "--data", "big.npz", "--out", "e11",
     check=lambda: f"class_names {json.load(open('e11/codes.json'))['class_names']}")
np.savez("l37.npz", images=images, labels=np.where(labels == 0, 3, 7))
drun("setup: conditional pipeline on labels {3, 7}", "pipeline", "--preset", "tiny", "--out", "r37", "--set", *TINY, "data.dataset=l37.npz", "prior.conditional=true",
     check=lambda: f"prior classes {json.load(open('r37/metrics.json'))['prior']['class_names']}")
drun("labels {3, 7}: `sample --class 0` (expect 2: no such class)", "sample", "r37", "--class", "0", "--out", "s37")
drun("labels {3, 7}: `sample --class 7` (expect 0)", "sample", "r37", "--class", "7", "-n", "4", "--out", "s37")
Path("e12").mkdir(); np.save("e12/labels.npy", np.zeros(999, np.int64)); shutil.copytree(bars / "h", "flat")
drun("`encode --out` over an earlier labelled encoding, unlabelled data (expect 0, no labels.npy left)", "encode", R, "--data", "flat", "--out", "e12",
     check=lambda: f"labels.npy left: {Path('e12/labels.npy').exists()}")
croot = cache_root(DataConfig())
def side_files(folder, what):
    stem = f"{folder}-"
    return [p for p in croot.glob(f"{stem}*.json") if ("-scan-" in p.name) == (what == "scan")
            and json.loads(p.read_text()).get("folder", str(Path(folder).resolve())) in (str(Path(folder).resolve()), folder)]
shutil.copytree(bars, "d_meta"); drun("setup: cache d_meta", "encode", R, "--data", "d_meta", "--out", "e13")
want = np.load("e13/labels.npy")
for p in side_files("d_meta", "meta"): p.write_text("[1, 2]")
drun("cache metadata of the wrong JSON shape (expect 0, one line: rebuilding)", "encode", R, "--data", "d_meta", "--out", "e14")
for p in side_files("d_meta", "meta"):
    m = json.loads(p.read_text()); m["files"] = sorted(m["files"], key=lambda f: f.split("/")[1]); p.write_text(json.dumps(m))
drun("cache file list reordered by hand (expect 0, one line: checksum; labels unchanged)", "encode", R, "--data", "d_meta", "--out", "e15",
     check=lambda: f"labels equal: {bool((np.load('e15/labels.npy') == want).all())}")
shutil.copytree(bars, "d_scan")
drun("setup: scan d_scan", "train", "--preset", "tiny", "--out", "t_scan0", "--set", *TINY, "data.dataset=d_scan", "train.epochs=1")
for p in side_files("d_scan", "scan"): p.write_text('{"count": "x"}')
drun("folder scan of the wrong JSON shape (expect 0, one line: rebuilding)", "train", "--preset", "tiny", "--out", "t_scan1", "--set", *TINY, "data.dataset=d_scan", "train.epochs=1")
for p in side_files("d_scan", "scan"):
    m = json.loads(p.read_text()); m["modes"] = {"RGB": m["count"]}; p.write_text(json.dumps(m))
drun("folder scan edited to say colour, grey folder, no --preset (expect 0, grey, one line: checksum)", "train", "--preset", "tiny", "--out", "t_scan2", "--set", *TINY,
     "data.dataset=d_scan", "train.epochs=1", check=lambda: f"data.channels={json.load(open('t_scan2/config.json'))['data']['channels']}")
shutil.copytree(bars, "d_race")
def scan_once(_):
    from vqvae.data import describe_data
    return describe_data("d_race").count
with multiprocessing.get_context("fork").Pool(2) as pool:
    try:
        counts = pool.map(scan_once, [0, 1]); code = 0
    except BaseException as e:
        counts, code = [], f"TRACEBACK {type(e).__name__}: {e}"
rows.append(("two processes scanning the same new folder at once (expect both to succeed)", code, f"image counts {counts}"))
dead = 4194000
while True:
    try: os.kill(dead, 0); dead -= 1
    except ProcessLookupError: break
    except PermissionError: dead -= 1
host = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40]
croot.mkdir(parents=True, exist_ok=True)
stale = croot / f"bars-0000-16x16x1-x.npy.tmp-{host}-{dead}-dead"; stale.write_bytes(b"\0" * 4096)
live = croot / f"bars-0000-16x16x1-x.npy.tmp-{host}-{os.getpid()}-live"; live.write_bytes(b"\0")
old = croot / "bars-0000-16x16x1-x.npy.tmp99999999"; old.write_bytes(b"\0"); os.utime(old, (time_module.time() - 7200,) * 2)
drun("image-cache temporaries of a dead writer (a killed build's .npy.tmp) (expect 0, removed; a live writer's kept)", "encode", R, "--data", "d_meta", "--out", "e16",
     check=lambda: f"dead writer's left: {stale.exists()}, old-style left: {old.exists()}, live writer's kept: {live.exists()}")
live.unlink()
drun("`data.cache_dir=/proc/nope` (expect 2)", "train", "--preset", "tiny", "--out", "t_proc", "--set", *TINY, "data.cache_dir=/proc/nope")
drun("`data.image_size=30` with 2 downsamplings (expect 2 before any work, no run folder)", "train", "--preset", "tiny", "--out", "t_30", "--set", *TINY, "data.image_size=30",
     check=lambda: f"run folder left: {Path('t_30').exists()}")
from vqvae.data import load_dataset
Path("ramp16/a").mkdir(parents=True)
ramp = np.rint(np.linspace(0, 65535, 16))[None].repeat(16, 0).astype(np.uint16)
for i in range(4): Image.fromarray(ramp).save(f"ramp16/a/{i}.png")
def white_share(folder):
    x = load_dataset(folder, DataConfig(image_size=16, channels=1, num_workers=0)).tensor()
    return f"white pixels {float((x == 255).float().mean()):.3f}, mean {float(x.float().mean()):.1f} (want ~0.06, ~127)"
drun("16-bit PNG black-to-white ramp (expect 0, scaled: not 99.5% white)", "encode", R, "--data", "ramp16", "--out", "e17", check=lambda: white_share("ramp16"))
Image.fromarray(ramp.astype(np.int32)).save("ramp16/a/wide.tif"); Image.fromarray((ramp / 65535).astype(np.float32)).save("ramp16/a/float.tif")
drun("32-bit integer and float TIFF ramps (expect 0, scaled)", "encode", R, "--data", "ramp16", "--out", "e18", check=lambda: white_share("ramp16"))
shutil.copytree(bars, "d_stale")
drun("setup: cache d_stale", "encode", R, "--data", "d_stale", "--out", "e19")
victim = sorted(Path("d_stale/h").iterdir())[0]; st = victim.stat()
flipped = np.ascontiguousarray(np.asarray(Image.open(victim))[:, ::-1])  # another picture of the same byte size
Image.fromarray(flipped).save("flip.png")
if Path("flip.png").stat().st_size != st.st_size: Image.fromarray(255 - np.asarray(Image.open(victim))).save("flip.png")
shutil.copyfile("flip.png", victim); os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
def served(folder, rel):
    data = load_dataset(folder, DataConfig(image_size=16, channels=1, num_workers=0))
    files = sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*.png"))
    return bool((data.tensor()[files.index(rel)][0].numpy() == np.asarray(Image.open(Path(folder) / rel))).all())
drun(f"a file replaced by one of the same size, mtime restored (cp -p) (expect 0, the new picture served; same size: {Path('flip.png').stat().st_size == st.st_size})",
     "encode", R, "--data", "d_stale", "--out", "e20", check=lambda: f"new picture served: {served('d_stale', str(victim.relative_to('d_stale')))}")
drun("`--set data.cache_check=mtime` (expect 2)", "train", "--preset", "tiny", "--out", "t_cc", "--set", *TINY, "data.cache_check=mtime")
drun("`--set data.cache_check=content` (expect 0)", "train", "--preset", "tiny", "--out", "t_cc2", "--set", *TINY, "data.cache_check=content", "train.epochs=1")
shutil.copytree(bars, "d_codes")
drun("setup: train a VQ-VAE on d_codes", "train", "--preset", "tiny", "--out", "t_codes", "--set", *TINY, "data.dataset=d_codes", "train.epochs=1")
drun("setup: train-prior (codes cached)", "train-prior", "t_codes", "--set", "prior_train.epochs=1")
before = np.load("t_codes/codes/train.npy")
for p in sorted(Path("d_codes").rglob("*.png")): Image.fromarray(255 - np.asarray(Image.open(p))).save(p)  # same names and count, other pictures
shutil.copytree("t_codes", "t_codes2"); shutil.rmtree("t_codes2/checkpoints"); shutil.copytree("t_codes/checkpoints", "t_codes2/checkpoints")
[p.unlink() for p in Path("t_codes2/checkpoints").glob("prior-*.pt")]
drun("the prior's code cache after the folder's pictures changed (same names, count) (expect 0, codes re-encoded)", "train-prior", "t_codes2", "--set", "prior_train.epochs=1",
     check=lambda: f"codes re-encoded: {not np.array_equal(before, np.load('t_codes2/codes/train.npy'))}")
# --- end harden-data
# --- vqgan-arch: diffusers export and import
from vqvae import VQVAE  # noqa: E402
from vqvae.config import load_config  # noqa: E402
for name, settings in (("vg", ["data.image_size=16"]), ("vg-fsq", ["data.image_size=16", "quantizer.kind=fsq", "quantizer.codebook_size=64"])):
    c = load_config("vqgan-tiny", settings); VQVAE(c.model, c.quantizer).save_pretrained(name)
run("`export RUN --format diffusers` of a model.arch=vqvae run", "export", R, "--format", "diffusers", "--out", "dx")
run("`export --format diffusers` of a vqgan fsq model", "export", "vg-fsq", "--format", "diffusers", "--out", "dx")
run("setup: `export --format diffusers` of a vqgan-tiny model folder", "export", "vg", "--format", "diffusers", "--out", "dvq", "--no-verify")
Path("busy-folder").mkdir(); Path("busy-folder/notes.txt").write_text("mine")
run("`export --format diffusers --out` a non-empty folder of other files", "export", "vg", "--format", "diffusers", "--out", "busy-folder", "--no-verify")
run("`import` of a run folder (not a VQModel)", "import", R, "--out", "imp")
run("`import` of a folder with no config.json", "import", "bars", "--out", "imp")
run("`import` of a file", "import", "empty.npy", "--out", "imp")
for name, edit in (("AutoencoderKL config", lambda d: Path(d, "config.json").write_text('{"_class_name": "AutoencoderKL"}')),
                   ("config.json a JSON list", lambda d: Path(d, "config.json").write_text("[1, 2]")),
                   ("truncated config.json", lambda d: Path(d, "config.json").write_text('{"_class_name": "VQMod')),
                   ("weights missing", lambda d: Path(d, "diffusion_pytorch_model.safetensors").unlink()),
                   ("only a pickled .bin", lambda d: (Path(d, "diffusion_pytorch_model.safetensors").unlink(), Path(d, "diffusion_pytorch_model.bin").write_bytes(b"x"))),
                   ("truncated safetensors", lambda d: Path(d, "diffusion_pytorch_model.safetensors").write_bytes(Path(d, "diffusion_pytorch_model.safetensors").read_bytes()[:1000])),
                   ("norm_type spatial (MoVQ)", lambda d: Path(d, "config.json").write_text(json.dumps({**json.load(open(Path(d, "config.json"))), "norm_type": "spatial"}))),
                   ("block_out_channels not matching the weights", lambda d: Path(d, "config.json").write_text(json.dumps({**json.load(open(Path(d, "config.json"))), "block_out_channels": [16, 16, 64]})))):
    folder = "dvq-" + "-".join(name.split()[:2]).lower(); shutil.copytree("dvq", folder); edit(folder)
    run(f"`import` of a VQModel folder: {name}", "import", folder, "--out", "imp")
run("`encode` a diffusers VQModel folder directly (not imported)", "encode", "dvq", "--out", "codes-dvq")
run("`import --image-size 30` (not a multiple of 4)", "import", "dvq", "--out", "imp", "--image-size", "30")
run("`import --data` a missing folder", "import", "dvq", "--out", "imp", "--data", "no-such-folder")
run("`import --out` a non-empty folder", "import", "dvq", "--out", "busy-folder")
run("`import` then `train-prior` with no --data recorded", "import", "dvq", "--out", "imp-nodata", "--preset", "vqgan-tiny")
run("`train-prior` of an import with no data.dataset", "train-prior", "imp-nodata")
# --- metrics
# Weight files for rFID / LPIPS (`evaluate --inception-weights/--lpips-vgg-weights`): each wrong one exit 2, one line.
# A colour run, since grey images skip both metrics before their weights are read.
rgb = np.random.default_rng(0).integers(0, 256, (60, 16, 16, 3), dtype=np.uint8)
Path("colour").mkdir()
for i, img in enumerate(rgb):
    Image.fromarray(img).save(f"colour/{i:03d}.png")
run("setup: tiny colour run", "train", "--preset", "tiny", "--data", "colour", "--out", "crun", "--set", *TINY[1:],
    "data.channels=3", "model.in_channels=3", "train.epochs=1")
run("`evaluate --inception-weights missing.pth` (expected: exit 2, no such file)", "evaluate", R, "--no-samples",
    "--inception-weights", "missing.pth")
run("`evaluate --lpips-vgg-weights text.pt` (expected: exit 2, not a PyTorch weights file)", "evaluate", "crun",
    "--no-samples", "--lpips-vgg-weights", "text.pt")
torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, "partial-vgg.pth")
run("`evaluate --lpips-vgg-weights` a VGG16 file missing layers (expected: exit 2, names the missing entry)",
    "evaluate", "crun", "--no-samples", "--lpips-vgg-weights", "partial-vgg.pth")
run("`evaluate --inception-weights` the VGG16 file (expected: exit 2, not torch-fidelity's Inception-v3)",
    "evaluate", "crun", "--no-samples", "--inception-weights", "partial-vgg.pth")
torch.save(Evil(), "evil-weights.pth")
run("`evaluate --inception-weights` a pickle that runs code (expected: exit 2, not loaded)", "evaluate", "crun",
    "--no-samples", "--inception-weights", "evil-weights.pth")
# --- gan-losses
for s in ["train.adam_betas=0.5", "train.adam_betas=0.5,1", "train.adam_betas=a,b", "train.ema_decay=1",
          "loss.adversarial=wasserstein", "loss.reconstruction=l3", "loss.perceptual=vgg", "loss.disc_weight=-1",
          "loss.collapse_action=explode", "loss.collapse_accuracy=0.3"]:
    run(f"`--set {s}`", "train", "--preset", "tiny", "--out", "x", "--set", s)
run("`--set loss.adversarial=hinge loss.disc_layers=4` on 16-pixel images (no patch left)", "train", "--preset", "tiny",
    "--out", "x", "--set", *TINY, "loss.adversarial=hinge", "loss.disc_layers=4")
run("`--set loss.perceptual=lpips` with loss.lpips_vgg_weights a missing file", "train", "--preset", "tiny", "--out",
    "x", "--set", *TINY, "loss.perceptual=lpips", "loss.lpips_vgg_weights=nowhere/vgg16.pth")
Path("notvgg.pth").write_text("hello")
run("`--set loss.perceptual=lpips` with loss.lpips_vgg_weights a text file", "train", "--preset", "tiny", "--out",
    "x", "--set", *TINY, "loss.perceptual=lpips", "loss.lpips_vgg_weights=notvgg.pth")
import torch  # noqa: E402
torch.save({"features.0.weight": torch.zeros(3)}, "wrongvgg.pth")
run("`--set loss.perceptual=lpips` with loss.lpips_vgg_weights a state_dict of other shapes", "train", "--preset",
    "tiny", "--out", "x", "--set", *TINY, "loss.perceptual=lpips", "loss.lpips_vgg_weights=wrongvgg.pth")
run("`train --resume RUN --set loss.adversarial=hinge` (a discriminator the run never had)", "train", "--resume", R,
    "--set", "loss.adversarial=hinge", "loss.disc_layers=2")
# --- maskgit: the MaskGIT prior's options and `inpaint`; every row expects exit 2 with a one-line error
shutil.copytree(R, "mg", ignore=shutil.ignore_patterns("prior-*.pt"))
run("setup: a maskgit prior (`train-prior --set prior.kind=maskgit`)", "train-prior", "mg", "--set", "prior.kind=maskgit", "prior.num_heads=2")
Image.fromarray(images[0]).save("one.png")
Image.fromarray(np.zeros((16, 16), np.uint8)).save("empty-mask.png")
Image.fromarray(np.full((8, 8), 255, np.uint8)).save("small-mask.png")
Image.fromarray(np.zeros((8, 8), np.uint8)).save("small-image.png")
Path("notimage.png").write_text("not an image")
INP = ["inpaint", "mg", "--image", "one.png", "--out", "inp.png"]
for label, extra in [("box outside the image `--mask 0,0,17,4`", ["--mask", "0,0,17,4"]),
                     ("empty box `--mask 3,3,3,9`", ["--mask", "3,3,3,9"]), ("`--mask a,b,c,d`", ["--mask", "a,b,c,d"]),
                     ("`--mask` an all-zero mask image", ["--mask", "empty-mask.png"]),
                     ("`--mask` an 8x8 mask for 16x16 images", ["--mask", "small-mask.png"]),
                     ("`--mask` a file that is not an image", ["--mask", "notimage.png"]),
                     ("`--mask /no/such.png`", ["--mask", "/no/such.png"]),
                     ("`--margin -1`", ["--mask", "0,0,4,4", "--margin", "-1"]),
                     ("`--margin wide`", ["--mask", "0,0,4,4", "--margin", "wide"]),
                     ("`--class 1` on an unconditional prior", ["--mask", "0,0,4,4", "--class", "1"]),
                     ("`--guidance 2` on an unconditional prior", ["--mask", "0,0,4,4", "--guidance", "2"]),
                     ("`--steps 0`", ["--mask", "0,0,4,4", "--steps", "0"]),
                     ("`--choice-temperature -1`", ["--mask", "0,0,4,4", "--choice-temperature", "-1"])]:
    run(f"`inpaint` {label} (expect 2)", *INP, *extra)
run("`inpaint --image` an 8x8 image for a 16x16 model (expect 2)", "inpaint", "mg", "--image", "small-image.png", "--mask", "0,0,4,4", "--out", "inp.png")
run("`inpaint --image` a file that is not an image (expect 2)", "inpaint", "mg", "--image", "notimage.png", "--mask", "0,0,4,4", "--out", "inp.png")
run("`inpaint --out RUN/checkpoints/x.png` (expect 2)", "inpaint", "mg", "--image", "one.png", "--mask", "0,0,4,4", "--out", "mg/checkpoints/x.png")
run("`inpaint --steps 8` on a pixelcnn prior (expect 2)", "inpaint", R, "--image", "one.png", "--mask", "0,0,4,4", "--out", "inp.png", "--steps", "8")
run("`sample --steps 8` on a pixelcnn prior (expect 2)", "sample", R, "--steps", "8", "--out", "s")
run("`sample --steps 0` on a maskgit prior (expect 2)", "sample", "mg", "--steps", "0", "--out", "s")
run("`train --set sample.steps=8` with prior.kind=pixelcnn (expect 2)", "train", "--preset", "tiny", "--out", "x", "--set", "sample.steps=8")
run("`train-prior --set prior.kind=maskgit prior.num_heads=3` (16 channels; expect 2)", "train-prior", "mg", "--set", "prior.kind=maskgit", "prior.num_heads=3")
run("`inpaint` a good box, for contrast (expect 0)", *INP, "--mask", "0,8,16,16")
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
# --- settings of the new features (#17-#19): each an invalid value, expect exit 2 with a one-line error
for s in ["model.arch=unet", "model.channel_mult=1,2", "model.arch=vqgan", "model.arch=vqgan model.channel_mult=0,1",
          "model.arch=vqgan model.channel_mult=1,2 model.norm_groups=3", "model.arch=vqgan model.channel_mult=1,2 model.norm_groups=8 model.attention_resolutions=3",
          "model.arch=vqgan model.channel_mult=1,2,2,2,2,2", "model.arch=vqgan model.channel_mult=1,2 model.layers_per_block=0",
          "model.arch=vqgan model.channel_mult=1,2 model.num_residual_blocks=5", "model.layers_per_block=3",
          "loss.reconstruction=l3", "loss.adversarial=wgan", "loss.perceptual=vgg", "loss.disc_weight=-1", "loss.disc_layers=0",
          "loss.disc_start=-1", "loss.disc_ramp_steps=-5", "loss.r1_weight=-1", "loss.collapse_accuracy=2", "loss.collapse_action=maybe",
          "loss.collapse_steps=0", "loss.disc_lr=-0.1", "loss.perceptual=lpips loss.lpips_vgg_weights=/no/such/vgg16.pth",
          "train.adam_betas=1,2", "train.adam_betas=0.5", "train.adam_betas=a,b", "train.ema_decay=1", "train.ema_decay=-0.5",
          "prior.kind=maskgit prior.hidden_channels=64 prior.num_heads=3", "sample.steps=0", "sample.steps=1000",
          "sample.choice_temperature=-1", "prior.pseudo_classes=1", "prior.pseudo_classes=5000", "data.cache_check=sometimes",
          "loss.disc_warmup_steps=-1", "loss.adversarial=hinge loss.disc_layers=2 loss.disc_start=3 loss.disc_warmup_steps=4",
          "loss.stall_accuracy=1", "loss.stall_accuracy=-0.1", "loss.adversarial=hinge loss.disc_layers=2 loss.stall_accuracy=0.995"]:
    run(f"`--set {s}` (expect 2)", "train", "--preset", "tiny", "--out", "x", "--set", *s.split())
run("`tune-sampling RUN --recall-margin -1` (expect 2)", "tune-sampling", R, "--recall-margin", "-1")
run("`tune-sampling RUN --num-images 0` (expect 2)", "tune-sampling", R, "--num-images", "0")
run("`evaluate RUN --lpips-vgg-weights` a missing file (expect 2)", "evaluate", R, "--lpips-vgg-weights", "no-such-vgg.pth")
# --- inpaint-infer: `inpaint --class-choice` and `--class none`; every row expects exit 2 with a one-line error
for label, extra in [("`--class-choice maybe`", ["--class-choice", "maybe"]),
                     ("`--class-choice ''`", ["--class-choice", ""]),
                     ("`--class-choice sample` on an unconditional prior", ["--class-choice", "sample"]),
                     ("`--class-choice argmax --class 1`", ["--class-choice", "argmax", "--class", "1"]),
                     ("`--class none` on an unconditional prior", ["--class", "none"]),
                     ("`--class none --guidance 2`", ["--class", "none", "--guidance", "2"])]:
    run(f"`inpaint` {label} (expect 2)", *INP, "--mask", "0,8,16,16", *extra)
run("`inpaint --class none` on an unconditional pixelcnn prior (expect 2)", "inpaint", R, "--image",
    "one.png", "--mask", "0,8,16,16", "--out", "inp.png", "--class", "none")
# --- inpaint-batch: a class named like a command's word; a class only in a held-out split. Rows expect exit 2
from vqvae.config import load_config
from vqvae.data import load_splits
for i, (img, lab) in enumerate(zip(images, labels)):
    d = root / "word-classes" / ("all" if lab == 0 else "none"); d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(d / f"{i:03d}.png")
Image.fromarray(images[0]).save("word.png")
run("setup: a conditional pipeline on classes named 'all' and 'none'", "pipeline", "--preset", "tiny", "--out", "words",
    "--set", *tiny_overrides(root / "word-classes"), "prior.conditional=true", "prior.label_dropout=0.1", "train.epochs=1",
    "prior_train.epochs=1")
run("`sample --class all`, a class named 'all' (expect 2)", "sample", "words", "--class", "all", "--out", "sw")
run("`inpaint --class none`, a class named 'none' (expect 2)", "inpaint", "words", "--image", "word.png", "--mask",
    "0,8,16,16", "--out", "iw.png", "--class", "none")
marked = images.copy()
marked[:, 0, 0] = np.arange(len(images))  # each image's index: which split it lands in
np.savez("held.npz", images=marked, labels=np.where(labels == 0, 3, 7))
first_test = int(load_splits(load_config("tiny", tiny_overrides("held.npz")).data).test.tensor()[0, 0, 0, 0])
values = np.where(labels == 0, 3, 7)
values[first_test] = 9
np.savez("held.npz", images=marked, labels=values)
run("setup: a VQ-VAE on labels {3, 7, 9}, the one 9 in the held-out test split", "train", "--preset", "tiny", "--out",
    "held", "--set", *tiny_overrides("held.npz"), "train.epochs=1")
run("`train-prior --conditional`, class 9 only in the test split (expect 2)", "train-prior", "held", "--conditional")
# --- probe3: a user's own files and settings on the newer commands; each label ends with its expected outcome
# (expect), a measured fact in brackets (note); a row that misses its expectation reads UNEXPECTED.
run("setup: tiny run with a weight average and a discriminator (as the vqgan presets train)", "train", "--preset", "tiny",
    "--out", "gan", "--set", *TINY, "train.epochs=1", "train.ema_decay=0.9", "loss.adversarial=hinge", "loss.disc_layers=2")
expect("`export RUN --format folder` of that run", 0, "wrote model folder", "export", "gan", "--format", "folder", "--out", "m_gan")
expect("`export RUN --format onnx --num-images 0`", 2, "num_images=0", "export", R, "--format", "onnx", "--out", "o0", "--num-images", "0")
note(f"folder left: {Path('o0').exists()}")
ramp = np.rint(np.linspace(0, 65535, 16))[None].repeat(16, 0).astype(np.uint16)
Image.fromarray(ramp).save("ramp16.png")
expect("`inpaint --image` a 16-bit black-to-white ramp PNG", 0, "re-drawn", "inpaint", "mg", "--image", "ramp16.png", "--mask", "0,8,16,16", "--out", "i16.png")
note(f"kept row 0 equals the ramp scaled to 8 bits: {np.load('i16.npy')[0, 0, 0].tolist() == np.rint(ramp[0] / 257).astype(int).tolist()}")
hole = np.full((16, 16, 4), 255, np.uint8); hole[8:, :, 3] = 0
Image.fromarray(hole, "RGBA").save("mask-alpha.png")
expect("`inpaint --mask` white RGBA, the hole transparent", 2, "has transparent pixels", *INP, "--mask", "mask-alpha.png")
painted = np.zeros((16, 16, 2), np.uint8); painted[8:] = 255
Image.fromarray(painted, "LA").save("mask-la.png")
expect("`inpaint --mask` a hole painted on a transparent LA layer", 2, "has transparent pixels", *INP, "--mask", "mask-la.png")
ones = np.zeros((16, 16), np.float32); ones[:, :4] = 0.4
Image.fromarray(ones).save("mask-float.tif")
expect("`inpaint --mask` a float TIFF of 0.4s", 0, "64 pixels", *INP, "--mask", "mask-float.tif")
Image.fromarray((ones > 0).astype(np.uint16)).save("mask-16.png")
expect("`inpaint --mask` a 16-bit PNG of 1s", 0, "64 pixels", *INP, "--mask", "mask-16.png")
for name in ("x.npy", "x.json", "x", "x.gif"):
    expect(f"`inpaint --out {name}`", 2, "must end in .png, .jpg, .jpeg", "inpaint", "mg", "--image", "one.png", "--mask", "0,8,16,16", "--out", name)
note(f"files written: {sorted(p.name for p in Path('.').glob('x.*'))}")
expect("`inpaint --out x.jpg`", 0, "re-drawn", "inpaint", "mg", "--image", "one.png", "--mask", "0,8,16,16", "--out", "x.jpg")
note(f"format {Image.open('x.jpg').format}")
expect("`inpaint --margin rf`", 0, "re-drawn", *INP, "--mask", "0,8,16,16", "--margin", "rf")
Image.fromarray(images[0]).convert("CMYK").save("cmyk.jpg")
expect("`inpaint --image` a CMYK JPEG", 0, "re-drawn", "inpaint", "mg", "--image", "cmyk.jpg", "--mask", "0,8,16,16", "--out", "ic.png")
Image.fromarray(images[0]).save("anim.gif", save_all=True, append_images=[Image.fromarray(images[1])])
expect("`inpaint --image` an animated GIF (its first frame)", 0, "re-drawn", "inpaint", "mg", "--image", "anim.gif", "--mask", "0,8,16,16", "--out", "ia.png")
shutil.copytree(bars / "h", "one-bad"); Path("one-bad/zero.png").write_bytes(b"")
expect("`inpaint --image` a folder with one zero-byte PNG (one warning line)", 0, "skipped 1 unreadable", "inpaint", "mg", "--image", "one-bad", "--mask", "0,8,16,16",
       "--out", "ib.png")
note(f"images inpainted: {len(np.load('ib.npy'))} of {len(list(Path('one-bad').iterdir()))} files; ib.json names them, "
     f"without zero.png: {json.load(open('ib.json')).get('inputs') == sorted(p.name for p in Path('one-bad').glob('*.png') if p.name != 'zero.png')}")
np.save("one-2d.npy", images[0])
expect("`inpaint --image` an .npy of one 2-D image (H, W)", 2, "expected images (N, H, W)", "inpaint", "mg", "--image", "one-2d.npy", "--mask", "0,8,16,16", "--out", "id.png")
shutil.copytree(R, "fewer")
before = sha("fewer/config.json")
expect("`train --resume RUN --set train.epochs=2` on a run of 3 epochs", 2, "resuming cannot take epochs back", "train", "--resume", "fewer", "--set", "train.epochs=2")
note(f"config.json unchanged: {sha('fewer/config.json') == before}")
expect("`train-prior RUN --resume --set prior_train.epochs=1` on a prior of 2 epochs", 2, "resuming cannot take epochs back", "train-prior", "fewer", "--resume", "--set", "prior_train.epochs=1")
run("setup: `train --resume RUN --set train.epochs=4` (the VQ-VAE trained further; its prior's codes are now stale)", "train", "--resume", "fewer",
    "--set", "train.epochs=4")
expect("then `train-prior RUN --resume`", 2, "trained on the codes of a different VQ-VAE", "train-prior", "fewer", "--resume", "--set", "prior_train.epochs=3")
expect("`pipeline --set quantizer.kind=rvq quantizer.rvq_depth=2`", 2, "one code index per position", "pipeline", "--preset", "tiny", "--out", "p-rvq", "--set", *TINY,
       "quantizer.kind=rvq", "quantizer.rvq_depth=2")
note(f"run folder left (trained for nothing): {Path('p-rvq').exists()}")
expect("`--set quantizer.kind=rvq quantizer.rvq_depth=1`", 2, "must be >= 2", "train", "--preset", "tiny", "--out", "x", "--set", "quantizer.kind=rvq", "quantizer.rvq_depth=1")
Path("grey-palette/h").mkdir(parents=True)
for i, img in enumerate(images[:20]):
    Image.fromarray(img).quantize(4).save(f"grey-palette/h/{i}.png")
expect("`encode --data` a folder of grey palette PNGs (pngquant's kind), grey model", 0, "", "encode", R, "--data", "grey-palette", "--out", "e-gp")
note(f"codes written: {list(np.load('e-gp/codes.npy').shape) if Path('e-gp/codes.npy').exists() else None}")
torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(3)}, "inception-shapes.pth")
expect("`evaluate --inception-weights` an Inception state dict of other shapes", 2, "does not hold torch-fidelity's Inception-v3", "evaluate", "crun",
       "--no-samples", "--inception-weights", "inception-shapes.pth")
# --- end probe3
# --- benchmark scripts' flags (bench_tokenizer, probe_discriminator: checked before any data is read; exit 1 is
# its SystemExit with the message)
BENCHMARKS = Path(__file__).resolve().parent


def script_row(script: str, args: list[str], label: str, text: str, codes: tuple[int, ...] = (1,)) -> None:
    """A row for a benchmark script run with bad arguments: expect an exit in `codes` whose last
    stderr line contains `text` (its SystemExit message), never a traceback."""
    bench = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], env=ENV, capture_output=True, text=True)
    last = bench.stderr.strip().splitlines()[-1] if bench.stderr.strip() else ""
    code = "TRACEBACK" if "Traceback" in bench.stderr else bench.returncode
    rows.append((label, code, last[:230] + ("" if code in codes and text in last else " [UNEXPECTED]")))


TOKENIZER_ARGS = ["--train", "none", "--test", "none", "--image-size", "16", "--work", "bt", "--out", "bt/out.json",
                  "--model", "a=tiny"]
for value, text in [("a=0", "must be finite numbers"), ("a=-1", "must be finite numbers"), ("a=nan", "must be finite numbers"),
                    ("a=inf", "must be finite numbers"), ("a=fast", "expected NAME=RATE"), ("b=3", "names no --model: b")]:
    script_row("bench_tokenizer.py", [*TOKENIZER_ARGS, "--throughput", value],
               f"`bench_tokenizer.py --throughput {value}` (expect exit 1: {text})", text)
for flag, value in [("--disc-warmup-fraction", "1.5"), ("--disc-warmup-fraction", "-0.1"), ("--disc-warmup-fraction", "nan"),
                    ("--disc-start-fraction", "2")]:
    script_row("bench_tokenizer.py", [*TOKENIZER_ARGS, flag, value],
               f"`bench_tokenizer.py {flag} {value}` (expect exit 1: a fraction in [0, 1])", "a fraction in [0, 1]")
for args, text in [(["--run", "norun"], "expected NAME=RUN"), (["--run", "a=x", "--steps", "0"], "--steps 0: must be at least 1"),
                   (["--run", "a=no/such/run"], "")]:
    script_row("probe_discriminator.py", ["--train", "none", "--test", "none", *args],
               f"`probe_discriminator.py {' '.join(args)}` (expect a one-line stop{': ' + text if text else ''})", text,
               codes=(1, 2))
print("| input | exit | outcome (first error line, or last line of output) |\n|---|---|---|")
for label, code, line in rows:
    print(f"| {label} | {code} | {line.replace('|', '/')} |")
os.chdir("/")
shutil.rmtree(root, ignore_errors=True)
print(f"\n{sum('TRACEBACK' in str(code) for _, code, _ in rows)} tracebacks in {len(rows)} rows")
