"""The stage store: reuse by key, nothing half-written, one builder per key at a time."""

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from fincompress.store import ensure_stage, folder_fingerprint, resume_folder, stage_key


def write_answer(staging: Path) -> None:
    (staging / "answer.txt").write_text("42")


def test_a_stage_is_built_once_then_reused(tmp_path):
    inputs = {"teacher": {"lr": 5e-5}, "seed": 42}
    folder, reused = ensure_stage(tmp_path, "teacher", inputs, write_answer)
    assert not reused and (folder / "answer.txt").read_text() == "42"
    assert folder == tmp_path / "stages" / "teacher" / stage_key(inputs)
    record = json.loads((folder / "stage.json").read_text())
    assert record["inputs"] == inputs and record["stage"] == "teacher"

    def never(staging):
        raise AssertionError("rebuilt")

    assert ensure_stage(tmp_path, "teacher", inputs, never) == (folder, True)
    assert not (tmp_path / "stages" / "teacher" / stage_key({**inputs, "seed": 7})).exists()


def test_a_folder_fingerprint_follows_the_model_files_not_the_run_records(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    first = folder_fingerprint(tmp_path)
    (tmp_path / "checkpoint_info.json").write_text('{"metrics": {}}')
    assert folder_fingerprint(tmp_path) == first
    (tmp_path / "model.safetensors").write_bytes(b"weights, retrained")
    assert folder_fingerprint(tmp_path) != first


def test_a_tokenizer_saved_before_or_after_a_call_gives_one_fingerprint(tmp_path):
    """The bundled MiniLM's tokenizer.json says ``padding: Fixed 128``; saved after a call it says
    ``null``. Stage keys downstream must not depend on which happened first."""
    from fincompress.models.sources import load_tokenizer

    fresh, called = tmp_path / "fresh", tmp_path / "called"
    load_tokenizer("bundled:minilm-l6").save_pretrained(fresh)
    tokenizer = load_tokenizer("bundled:minilm-l6")
    tokenizer(["Sales rose."], padding=True, truncation=True, max_length=16)
    tokenizer.backend_tokenizer.no_padding()
    tokenizer.backend_tokenizer.no_truncation()
    tokenizer.save_pretrained(called)
    padding = [json.loads((folder / "tokenizer.json").read_text())["padding"]
               for folder in (fresh, called)]
    assert padding[0] != padding[1]  # the files differ where the call left its state
    assert folder_fingerprint(fresh) == folder_fingerprint(called)
    vocab = json.loads((called / "tokenizer.json").read_text())
    vocab["model"]["vocab"]["[unused0]"] = 99999  # what the tokenizer does to text changed
    (called / "tokenizer.json").write_text(json.dumps(vocab))
    assert folder_fingerprint(fresh) != folder_fingerprint(called)


def test_every_input_changes_the_key():
    base = {"teacher": {"lr": 5e-5, "epochs": 4}, "data": {"batch_size": 16}, "seed": 42}
    keys = {stage_key(base), stage_key({**base, "seed": 7}),
            stage_key({**base, "data": {"batch_size": 32}}),
            stage_key({**base, "teacher": {"lr": 5e-5, "epochs": 5}})}
    assert len(keys) == 4
    assert stage_key(dict(reversed(list(base.items())))) == stage_key(base)


def test_a_failed_build_leaves_nothing_and_an_interrupted_one_is_cleaned(tmp_path):
    def crash(staging):
        (staging / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed mid-stage")

    with pytest.raises(RuntimeError, match="killed mid-stage"):
        ensure_stage(tmp_path, "stage1", {"a": 1}, crash)
    stage_dir = tmp_path / "stages" / "stage1"
    assert list(stage_dir.iterdir()) == []
    # what kill -9 leaves: a staging folder nobody removed
    stale = stage_dir / f".{stage_key({'a': 1})}.deadbeef.partial"
    stale.mkdir()
    folder, reused = ensure_stage(tmp_path, "stage1", {"a": 1}, write_answer)
    assert not reused and not stale.exists() and [p.name for p in stage_dir.iterdir()] == [folder.name]


def _build_slowly(root: str, log: str) -> str:
    def build(staging):
        with open(log, "a") as f:
            f.write("built\n")
        time.sleep(1.0)
        write_answer(staging)

    folder, _ = ensure_stage(root, "pseudo_labels", {"corpus": "news"}, build)
    return str(folder)


def test_two_runs_at_once_build_a_key_once(tmp_path):
    log = tmp_path / "builds.log"
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        folders = pool.starmap(_build_slowly, [(str(tmp_path), str(log))] * 2)
    assert folders[0] == folders[1]
    assert log.read_text() == "built\n"
    assert (Path(folders[0]) / "answer.txt").read_text() == "42"


def test_a_stage_in_progress_is_skipped_without_waiting_and_its_resume_folder_outlives_a_failure(
        tmp_path):
    seen = {}

    def inner(staging):
        seen["inner"] = resume_folder()
        # the same stage is being built (by this process here): a worker that will not wait
        seen["skipped"] = ensure_stage(tmp_path, "shard", {"n": 1}, lambda s: None, wait=False)
        seen["inner"].mkdir(parents=True, exist_ok=True)
        (seen["inner"] / "kept.ckpt").write_text("progress")
        if "fail" not in seen:
            seen["fail"] = True
            raise RuntimeError("killed")

    assert resume_folder() is None
    with pytest.raises(RuntimeError, match="killed"):
        ensure_stage(tmp_path, "shard", {"n": 1}, inner)
    assert seen["skipped"] == (None, False)
    assert (seen["inner"] / "kept.ckpt").read_text() == "progress"  # what a rerun resumes from
    assert seen["inner"].parent.name == ".resume"
    folder, reused = ensure_stage(tmp_path, "shard", {"n": 1}, inner)
    assert not reused and not seen["inner"].exists()  # removed once the stage is stored
    assert resume_folder() is None
