"""Atomic writes: a block that fails leaves the earlier file or folder as it was and no
``.partial`` behind; one that succeeds replaces it whole."""

import pytest

from fincompress.files import atomic_file, atomic_folder, write_json


def test_a_failed_file_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "results.json"
    write_json({"run": 1}, target)
    with pytest.raises(RuntimeError), atomic_file(target) as handle:
        handle.write('{"run": 2, "half')
        raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "run": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    write_json({"run": 2}, target)
    assert '"run": 2' in target.read_text()


def test_a_failed_folder_keeps_the_old_folder_and_a_finished_one_replaces_it(tmp_path):
    target = tmp_path / "model"
    with atomic_folder(target) as staging:
        (staging / "config.json").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(target) as staging:
        (staging / "config.json").write_text("half")
        raise RuntimeError("killed mid-save")
    assert (target / "config.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    with atomic_folder(target) as staging:
        (staging / "weights.bin").write_bytes(b"new")
    assert sorted(p.name for p in target.iterdir()) == ["weights.bin"]  # replaced whole
    with pytest.raises(FileExistsError):
        with atomic_folder(target, replace=False):
            pass
