"""README's code blocks, run, so README cannot drift from the code.

Every fenced block in README.md runs here unless the line above it says why it cannot:
`<!-- not run in tests: reason -->` (a GPU, torchrun, installing packages, example output).
- ```bash blocks: every line is a `vqvae ...` command, run in order through `vqvae.cli.main` in one
  folder that holds small image folders under the names README uses; training commands get the
  `tiny` preset and the tests' tiny settings appended (`train-prior` only prior settings).
- blocks of `$ vqvae ...` lines followed by their output: run the same way, the output must match.
- ```python blocks: executed as written, with `vqvae.load_config` giving tiny sizes.
Links from README and docs/ to docs pages and their sections must resolve.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from PIL import Image

import vqvae
from conftest import bar_images, tiny_overrides
from vqvae.cli import main
from vqvae.config import CODEBOOK_CHOICES

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NOT_RUN = re.compile(r"<!--\s*not run in tests:\s*(\S.*?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
# After the preset's own and README's settings: the tests' tiny data and sizes, one epoch each.
TRAIN_SETTINGS = [s for s in tiny_overrides("") if not s.startswith("data.dataset=")] + [
    "train.epochs=1", "prior_train.epochs=1"]
PRIOR_SETTINGS = ["prior.num_layers=2", "prior.hidden_channels=8", "prior_train.epochs=1",
                  "prior_train.batch_size=32", "prior_train.warmup_steps=0", "prior_train.device=cpu"]
# Folders README's commands read: labelled bar images, each folder different.
DATA_FOLDERS = {"my_images": 0, "cifar10/train": 1, "cifar10/test": 2}


def fenced_blocks(text: str) -> list[dict]:
    """Every fenced block: language, code lines, the not-run reason above it (or None), line number."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        above = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        reason = NOT_RUN.fullmatch(above)
        blocks.append({"language": match.group(1), "lines": lines[i + 1:end], "line": i + 1,
                       "not_run": reason.group(1) if reason else None})
        i = end + 1
    return blocks


def readme_blocks(kind: str) -> list[dict]:
    blocks = [b for b in fenced_blocks(README.read_text()) if b["not_run"] is None]
    if kind == "console":
        return [b for b in blocks if any(line.startswith("$ ") for line in b["lines"])]
    return [b for b in blocks if b["language"] == kind]


def write_bar_folder(folder: Path, seed: int, n: int = 96) -> None:
    images, labels = bar_images(n, seed)
    for i, (image, label) in enumerate(zip(images, labels)):
        target = folder / ("horizontal" if label == 0 else "vertical")
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(target / f"{i:03d}.png")


def tiny_argv(argv: list[str], default_data: Path) -> list[str]:
    """A README command line at tiny sizes: what it asks for, on small data and models."""
    command = argv[0]
    if command in ("train", "pipeline") and "--resume" not in argv:
        if "--preset" in argv:
            at = argv.index("--preset")
            argv = argv[:at] + argv[at + 2:]
        if "--data" not in argv:
            argv = argv + ["--data", str(default_data)]
        settings = TRAIN_SETTINGS
        if {"quantizer.kind=fsq", "quantizer.kind=lfq"} & set(argv):  # codebook options are errors there
            settings = [s for s in settings if s.split("=")[0] not in {f"quantizer.{c}" for c in CODEBOOK_CHOICES}]
        return argv + ["--preset", "tiny", "--set", *settings]
    if command == "train-prior":
        return argv + ["--set", *PRIOR_SETTINGS]
    return argv


def command_lines(block: dict) -> list[str]:
    """The command lines of a bash block, comments dropped; anything but `vqvae ...` is an error."""
    out = []
    for number, line in enumerate(block["lines"], start=block["line"] + 1):
        code = line.split(" #")[0].strip()
        if not code or code.startswith("#"):
            continue
        assert code.startswith("vqvae "), (f"README.md:{number}: `{code}` is not a vqvae command; mark its block "
                                           f"<!-- not run in tests: reason --> if it cannot run in the tests")
        out.append(code)
    return out


def run(line: str, data: Path, capsys) -> tuple[int, str]:
    argv = tiny_argv(shlex.split(line)[1:], data)
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture
def readme_folder(tmp_path, monkeypatch):
    for name, seed in DATA_FOLDERS.items():
        write_bar_folder(tmp_path / name, seed)
    write_bar_folder(tmp_path / "default_data", 3, n=280)  # a validation split of 20+ images: tune-sampling scores on it
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_block_runs_or_says_why_not():
    blocks = fenced_blocks(README.read_text())
    assert len(blocks) >= 6
    for block in blocks:
        if block["not_run"] is not None:
            continue
        runnable = block["language"] in ("bash", "python") or any(l.startswith("$ ") for l in block["lines"])
        assert runnable, (f"README.md:{block['line']}: a ```{block['language']} block the tests cannot run; mark it "
                          f"<!-- not run in tests: reason -->")
    assert readme_blocks("bash") and readme_blocks("python") and readme_blocks("console")


def test_readme_command_lines_run(readme_folder, capsys):
    data = readme_folder / "default_data"
    lines = [line for block in readme_blocks("bash") for line in command_lines(block)]
    assert len(lines) >= 15
    for line in lines:
        code, output = run(line, data, capsys)
        assert code == 0, f"`{line}` exited {code}:\n{output[-3000:]}"
    assert (readme_folder / "runs/mnist/samples.png").is_file()
    assert (readme_folder / "onnx/encoder.onnx").is_file()
    # The error examples: same command, same message, exit status 2.
    for block in readme_blocks("console"):
        commands = [(i, line[2:]) for i, line in enumerate(block["lines"]) if line.startswith("$ ")]
        for k, (i, line) in enumerate(commands):
            end = commands[k + 1][0] if k + 1 < len(commands) else len(block["lines"])
            expected = [text for text in block["lines"][i + 1:end] if text.strip()]
            code, output = run(line, data, capsys)
            assert expected and all(text in output.splitlines() for text in expected), (line, output[-2000:])
            assert code == (2 if expected[0].startswith("error:") else 0), (line, code)


def test_readme_python_runs(readme_folder, monkeypatch):
    load_config = vqvae.load_config
    settings = tiny_overrides(readme_folder / "default_data") + [
        "model.hidden_channels=8", "quantizer.codebook_size=16", "prior.num_layers=2", "prior.hidden_channels=8",
        "prior.train_shifts=0", "train.epochs=1", "prior_train.epochs=1"]
    monkeypatch.setattr(vqvae, "load_config", lambda preset, overrides=(), **kw: load_config(
        preset, list(overrides) + settings, **kw))
    for block in readme_blocks("python"):
        namespace: dict = {}
        exec(compile("\n".join(block["lines"]), f"README.md:{block['line']}", "exec"), namespace)
    assert namespace["codes"].shape == (16, 4, 4)
    assert namespace["images"].shape == (16, 1, 16, 16)
    assert (readme_folder / "my-tokenizer" / "config.json").is_file()


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text()
    inside = set()
    for block in fenced_blocks(text):
        inside.update(range(block["line"], block["line"] + len(block["lines"]) + 2))
    return {slug(line.lstrip("#")) for number, line in enumerate(text.splitlines(), start=1)
            if line.startswith("#") and number not in inside}


def test_links_to_docs_and_sections_resolve():
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    checked = 0
    for page in pages:
        for target, anchor in re.findall(r"\]\(([^)#\s]*\.md|)(?:#([^)\s]+))?\)", page.read_text()):
            if target.startswith("http"):
                continue
            linked = (page.parent / target).resolve() if target else page
            assert linked.is_file(), f"{page.name} links to {target}, which does not exist"
            if anchor:
                assert anchor in anchors(linked), f"{page.name} links to {target}#{anchor}: no such section"
            checked += 1
    assert checked >= 20
