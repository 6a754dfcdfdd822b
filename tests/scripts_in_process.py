"""Running the commands of scripts/ in the test process: load one as a module, call its
main() and collect what it printed (faster than a subprocess, and monkeypatch reaches it)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str, tag: str = "cli"):
    """scripts/<name>.py as a fresh module (named ``<name>_<tag>``: each test file its own copy)."""
    spec = importlib.util.spec_from_file_location(f"{name}_{tag}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(script, argv, capsys):
    """(exit status, stdout, stderr) of ``script.main(argv)``."""
    try:
        status = script.main([str(a) for a in argv])
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def interrupt_at_epoch(monkeypatch, epoch):
    """gpucnn.training.loops.train_epoch raises KeyboardInterrupt (as Ctrl-C would) when epoch
    ``epoch`` starts."""
    from gpucnn.training import loops

    real, calls = loops.train_epoch, []

    def train_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(loops, "train_epoch", train_epoch)  # fit looks it up there
