"""The cache of decoded image folders (gpucnn.data.datasets.image_cache) and its command line,
scripts/image_cache.py: each file records the folder it was made from, a read marks its
last use, a changed folder's stale file is pruned (same folder and settings only), and
the cache lists and clears, all of it or one folder's files."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402
from scripts_in_process import load_script, main  # noqa: E402

from gpucnn.data.datasets import default_cache_dir, load_image_folder  # noqa: E402
from gpucnn.data.datasets.image_cache import clear_cache, list_cache  # noqa: E402

cache_cli = load_script("image_cache", "cache_cli")
QUIET = {"log": lambda *a: None}


def write_folder(root: Path, per_class: int = 3, size: int = 8) -> Path:
    """root/a, root/b: ``per_class`` grayscale PNGs of ``size`` pixels each."""
    for c, name in enumerate("ab"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", (size, size), 40 * i + c).save(root / name / f"{i}.png")
    return root


def change(folder: Path) -> None:
    """One more image: the folder's key changes."""
    Image.new("L", (8, 8), 255).save(folder / "a" / "new.png")


def test_a_cache_file_records_its_folder_and_is_listed(tmp_path):
    folder = write_folder(tmp_path / "shapes")
    load_image_folder(folder, cache_dir=tmp_path / "cache", **QUIET)
    [entry] = list_cache(tmp_path / "cache")
    assert entry.source == str(folder.resolve()) and entry.path.parent == tmp_path / "cache"
    assert (entry.images, entry.unreadable, entry.shape) == (6, 0, (1, 8, 8))
    assert entry.bytes == entry.path.stat().st_size > 0
    with np.load(entry.path) as archive:  # the arrays the loader reads are all still there
        assert {"images", "ok", "channels", "image_size", "bad_paths", "bad_reasons", "source"} <= set(archive.files)


def test_a_read_marks_the_last_use(tmp_path):
    folder = write_folder(tmp_path / "shapes")
    load_image_folder(folder, cache_dir=tmp_path / "cache", **QUIET)
    [entry] = list_cache(tmp_path / "cache")
    os.utime(entry.path, (1_000_000, 1_000_000))
    assert list_cache(tmp_path / "cache")[0].last_used == 1_000_000
    lines = []
    load_image_folder(folder, cache_dir=tmp_path / "cache", log=lines.append)
    assert any("read from the cache" in line for line in lines)
    assert list_cache(tmp_path / "cache")[0].last_used > 1_000_000


def test_a_changed_folder_prunes_only_its_own_stale_file_with_the_same_settings(tmp_path):
    cache = tmp_path / "cache"
    folder = write_folder(tmp_path / "one" / "shapes")
    namesake = write_folder(tmp_path / "two" / "shapes")  # same name, another folder
    load_image_folder(folder, cache_dir=cache, **QUIET)
    load_image_folder(folder, channels=3, cache_dir=cache, **QUIET)  # other settings: a file of its own
    load_image_folder(namesake, cache_dir=cache, **QUIET)
    before = {e.path.name: e for e in list_cache(cache)}
    assert len(before) == 3

    change(folder)
    lines = []
    load_image_folder(folder, cache_dir=cache, log=lines.append)
    assert any("deleted 1 stale cache file of this folder" in line for line in lines), lines
    after = {e.path.name: e for e in list_cache(cache)}
    gone, new = set(before) - set(after), set(after) - set(before)
    assert len(gone) == 1 and len(new) == 1
    [gone], [new] = gone, new
    assert before[gone].source == str(folder.resolve()) and before[gone].images == 6
    assert before[gone].shape == (1, 8, 8)  # the auto-settings file, not the --channels 3 one
    assert after[new].source == str(folder.resolve()) and after[new].images == 7
    sources = sorted((e.source, e.shape) for e in after.values())
    assert sources == sorted([(str(folder.resolve()), (1, 8, 8)), (str(folder.resolve()), (3, 8, 8)),
                              (str(namesake.resolve()), (1, 8, 8))])


def test_clear_one_folder_or_all_and_never_another_programs_file(tmp_path):
    cache = tmp_path / "cache"
    folder, other = write_folder(tmp_path / "shapes"), write_folder(tmp_path / "other")
    load_image_folder(folder, cache_dir=cache, **QUIET)
    load_image_folder(other, cache_dir=cache, **QUIET)
    foreign = cache / "run-0123456789abcdef0123.npz"  # named like a cache file, but not one
    np.savez(foreign, weights=np.zeros(3))
    (cache / "notes.txt").write_text("mine")
    damaged = cache / "old-aaaaaaaaaaaaaaaaaaaa.npz"
    damaged.write_bytes(b"half a file")
    assert sorted(e.images for e in list_cache(cache)) == [-1, 6, 6]  # the damaged one is listed

    removed = clear_cache(cache, folder)
    assert [e.source for e in removed] == [str(folder.resolve())]
    assert sorted(str(e.source) for e in list_cache(cache)) == sorted([str(other.resolve()), "None"])
    removed = clear_cache(cache)
    assert len(removed) == 2 and list_cache(cache) == []
    assert foreign.exists() and (cache / "notes.txt").exists()
    with zipfile.ZipFile(foreign) as archive:
        assert archive.namelist() == ["weights.npy"]
    assert clear_cache(tmp_path / "no such folder") == []


def test_the_default_cache_folder_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "gpucnn" / "images"


def test_the_command_lists_and_clears(tmp_path, capsys):
    cache = tmp_path / "cache"
    folder, other = write_folder(tmp_path / "shapes"), write_folder(tmp_path / "other", per_class=4)
    load_image_folder(folder, cache_dir=cache, **QUIET)
    load_image_folder(other, channels=3, image_size=(6, 5), cache_dir=cache, **QUIET)
    status, out, err = main(cache_cli, ["list", "--cache-dir", cache], capsys)
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 3 and lines[2].startswith("2 cache files, ") and lines[2].endswith(f" in {cache}")
    by_source = {line.split()[0]: line for line in lines[:2]}
    assert set(by_source) == {str(folder.resolve()), str(other.resolve())}
    assert "6 images" in by_source[str(folder.resolve())] and "1x8x8 (auto)" in by_source[str(folder.resolve())]
    assert "8 images" in by_source[str(other.resolve())]
    assert "3x6x5 (--channels 3 --image-size 6x5)" in by_source[str(other.resolve())]
    assert all("KiB" in line and "last used 20" in line and line.endswith(".npz") for line in lines[:2])

    status, out, _ = main(cache_cli, ["--cache-dir", cache, "clear", tmp_path / "shapes"], capsys)
    assert status == 0 and out.startswith(f"deleted 1 cache file made from {folder.resolve()} (")
    assert [e.source for e in list_cache(cache)] == [str(other.resolve())]
    status, out, _ = main(cache_cli, ["clear", tmp_path / "shapes", "--cache-dir", cache], capsys)
    assert status == 0 and out.startswith("no cache files made from ")
    status, out, _ = main(cache_cli, ["clear", "--cache-dir", cache], capsys)
    assert status == 0 and out.startswith("deleted 1 cache file (") and list_cache(cache) == []
    status, out, _ = main(cache_cli, ["list", "--cache-dir", cache], capsys)
    assert status == 0 and out == f"no cache files in {cache}\n"


@pytest.mark.parametrize("argv, expected", [
    ([], "the following arguments are required: {list,clear}"),
    (["lst"], "invalid choice: 'lst'"),
    (["list", "extra"], "unrecognized arguments: extra"),
    (["list", "--cache-dir", "FILE"], "expected a folder, got a file"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, expected):
    (tmp_path / "file").write_text("not a folder")
    argv = [str(tmp_path / "file") if a == "FILE" else a for a in argv]
    status, out, err = main(cache_cli, argv, capsys)
    lines = err.splitlines()
    assert status == 2 and out == ""
    assert len(lines) <= 2 and lines[0].startswith("image_cache.py") and ": error: " in lines[0], err
    assert expected in lines[0]
    assert all(line.startswith("try 'image_cache.py") and line.endswith("--help'") for line in lines[1:])
