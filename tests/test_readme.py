"""Every ```python block of README.md runs as written: the examples cannot rot."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)


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
