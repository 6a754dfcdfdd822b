"""Every example of README.md runs: each ```python block as written, and each ```bash block's
commands in order, in a fresh folder (so `runs/...` paths land there), with the size flags
appended that keep the suite fast (training commands: one epoch, 600 training and 300 test
images of MNIST; a resumed run: its epochs, 2). Device: as the commands say (`--device gpu`
falls back to the CPU, saying so, without a GPU)."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```python\n(.*?)^```", README, re.S | re.M)
BASH = re.findall(r"^```bash\n(.*?)^```", README, re.S | re.M)


def test_readme_is_short_and_links_its_docs():
    assert len(README.encode()) <= 15 * 1024
    for page in ("math", "design", "performance", "gpu", "distributed", "export", "images"):
        assert f"docs/{page}.md" in README and (REPO / "docs" / f"{page}.md").exists(), page


def test_readme_has_the_library_examples():
    """The PyTorch-style loop and the Keras-style fit() are both shown (and so run below)."""
    code = "\n".join(BLOCKS)
    for needle in ("gpucnn.manual_seed(", "loss_fn(", "model.zero_grad()", "optimizer.step()",
                   "model.eval()", "model.predict(", "model.save(", "gpucnn.load(", "fit("):
        assert needle in code, f"no README python block uses {needle}"
    assert "rng=rng" not in code  # layers need no generator


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=lambda i: f"block{i}")
def test_readme_python_block_runs(index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # model.save("model.npz") writes here, not into the repository
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out  # every example shows its result


def commands(block: str) -> list[list[str]]:
    """The block's commands: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.split("#")[0].strip()]


def fast(argv: list[str]) -> list[str]:
    """The command with the size flags appended (the last occurrence of a flag wins)."""
    if argv[:2] != ["python", "scripts/train.py"]:
        return argv
    if "--resume" in argv:
        return [*argv, "--epochs", "2"]
    sizes = ["--limit-train", "600", "--limit-test", "300"] if "--dataset" not in argv else []
    return [*argv, "--epochs", "1", *sizes]


def write_shapes(folder: Path) -> None:
    """shapes/circle/*.png and shapes/square/*.png: 12 small drawings each."""
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(0)
    for name in ("circle", "square"):
        (folder / name).mkdir(parents=True)
        for i in range(12):
            image = Image.new("L", (20, 20), 0)
            draw, (x, y) = ImageDraw.Draw(image), rng.integers(2, 6, 2)
            box = (int(x), int(y), int(x) + 12, int(y) + 12)
            draw.ellipse(box, fill=255) if name == "circle" else draw.rectangle(box, fill=255)
            image.save(folder / name / f"{i}.png")


@pytest.mark.parametrize("index", range(len(BASH)), ids=lambda i: f"bash{i}")
def test_readme_bash_block_runs(index, tmp_path):
    if "--dataset shapes" in BASH[index]:
        write_shapes(tmp_path / "shapes")
    for argv in commands(BASH[index]):
        assert argv[0] == "python" and argv[1].startswith("scripts/"), argv
        argv = fast(argv)
        run = subprocess.run([sys.executable, str(REPO / argv[1]), *argv[2:],
                              *(["--cache-dir", str(tmp_path / "cache")] if "--dataset" in argv else [])],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"{shlex.join(argv)}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
