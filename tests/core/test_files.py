"""Files and folders put into place whole: racing writers and a reader never meet half a file,
and no temp is left behind."""
import multiprocessing
import os

import pytest

from harness.core.files import atomic_write, staged_dir

SIZE = 1 << 20  # large enough that one write takes several system calls


def _write_many(path: str, letter: str, times: int) -> None:
    for _ in range(times):
        atomic_write(path, letter * SIZE)


def test_two_writers_racing_leave_a_whole_file(tmp_path):
    path = tmp_path / "cache.json"
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_write_many, args=(str(path), c, 40)) for c in "ab"]
    for w in writers:
        w.start()
    seen = set()
    while any(w.is_alive() for w in writers):  # a reader meanwhile: one writer's whole file
        if path.exists():
            text = path.read_text()
            assert text in ("a" * SIZE, "b" * SIZE), (len(text), set(text))
            seen.add(text[0])
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert path.read_text() in ("a" * SIZE, "b" * SIZE)
    assert os.listdir(tmp_path) == ["cache.json"]  # each writer's temp renamed away
    assert seen  # the reader did read while they wrote


def test_bytes_mode_and_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, b"\x00\x01")
    os.chmod(path, 0o640)
    atomic_write(path, "new", fsync=True)
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o640
    with pytest.raises(TypeError):
        atomic_write(path, 3)  # not str or bytes: fails before replacing anything
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["f.bin"]


def test_a_staged_folder_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "models" / "m"
    with pytest.raises(RuntimeError):
        with staged_dir(out) as d:
            (d / "config.json").write_text("{}")
            raise RuntimeError("killed mid-save")
    assert not out.exists() and os.listdir(out.parent) == []
    with staged_dir(out) as d:
        (d / "config.json").write_text("{}")
        assert not out.exists()  # not yet: only when the block ends
    assert os.listdir(out) == ["config.json"] and os.listdir(out.parent) == ["m"]
    with staged_dir(out) as d:  # a new version replaces the old one
        (d / "weights").write_text("w")
    assert os.listdir(out) == ["weights"]
