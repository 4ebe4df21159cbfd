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
          ["quantizer.kind=lfq", "quantizer.init=uniform"]]:
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
rows.append(("file modes of an exported model folder (umask 022)", "", ", ".join(f"{p.name}: {oct(p.stat().st_mode & 0o777)}" for p in [Path("m"), *sorted(Path("m").iterdir())])))
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
print("| input | exit | outcome (first error line, or last line of output) |\n|---|---|---|")
for label, code, line in rows:
    print(f"| {label} | {code} | {line.replace('|', '/')} |")
os.chdir("/")
shutil.rmtree(root, ignore_errors=True)
print(f"\n{sum('TRACEBACK' in str(code) for _, code, _ in rows)} tracebacks in {len(rows)} rows")
