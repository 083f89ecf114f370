"""Output lifecycle: fingerprints, the per-slide lock, unique temporary names, commit order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from slidescan.errors import SlidescanError
from slidescan.io import outputs as outputs_mod
from slidescan.io.atomic import writer_token
from slidescan.io.outputs import OutputBusy, SlideOutputs, fingerprint, is_complete, read_report


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_fingerprint_depends_on_every_setting_and_not_on_order() -> None:
    base = {"stride": 96, "tta": False, "weights_sha256": "ab", "mpp_override": None}
    assert fingerprint(base) == fingerprint(dict(reversed(list(base.items()))))
    for key, other in [
        ("stride", 48),
        ("tta", True),
        ("weights_sha256", "cd"),
        ("mpp_override", 0.5),
    ]:
        assert fingerprint({**base, key: other}) != fingerprint(base), key


def test_in_folder_names(tmp_path: Path) -> None:
    out = SlideOutputs.in_folder(tmp_path / "slides" / "a.b.svs", tmp_path / "o", tmp_path / "png")
    assert out.heatmap == tmp_path / "o" / "a.b.zarr"
    assert out.report == tmp_path / "o" / "a.b.json"
    assert out.overlay == tmp_path / "png" / "a.b.png"
    assert out.lock == tmp_path / "o" / ".a.b.zarr.lock"


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    out = SlideOutputs(tmp_path / "x.zarr")
    with out.locked():
        record = json.loads(out.lock.read_text())
        assert record["pid"] == os.getpid()
        with pytest.raises(OutputBusy, match="being written by another run"), out.locked():
            pass
        assert out.lock.exists(), "a refused second writer must not remove the holder's lock"
    assert not out.lock.exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    out = SlideOutputs(tmp_path / "x.zarr")
    host = outputs_mod.socket.gethostname()
    out.lock.write_text(json.dumps({"host": host, "pid": _dead_pid(), "started": time.time()}))
    with out.locked():
        assert json.loads(out.lock.read_text())["pid"] == os.getpid()


def test_old_lock_of_another_host_is_stale_young_one_is_not(tmp_path: Path) -> None:
    out = SlideOutputs(tmp_path / "x.zarr")
    young = {"host": "elsewhere", "pid": 1, "started": time.time() - 60}
    out.lock.write_text(json.dumps(young))
    with pytest.raises(OutputBusy, match="elsewhere pid 1"), out.locked():
        pass
    old = {**young, "started": time.time() - outputs_mod.STALE_LOCK_SECONDS - 1}
    out.lock.write_text(json.dumps(old))
    with out.locked():
        pass
    assert not out.lock.exists()


def test_unwritable_folder_is_one_clean_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(*args: object, **kwargs: object) -> int:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(outputs_mod.os, "open", read_only)  # as root, chmod would not stop us
    with (
        pytest.raises(SlidescanError, match="cannot write there .Read-only file system"),
        SlideOutputs(tmp_path / "x.zarr").locked(),
    ):
        pass


def _stage_result(staging: outputs_mod.Staging, value: str) -> None:
    staging.heatmap.mkdir()
    (staging.heatmap / "zarr.json").write_text(value)
    staging.report.write_text(json.dumps({"value": value, "fingerprint": value}))
    staging.geojson.write_text(value)
    if staging.overlay is not None:
        staging.overlay.write_bytes(b"png")


def test_staged_names_are_unique_per_writer(tmp_path: Path) -> None:
    out = SlideOutputs(tmp_path / "x.zarr", tmp_path / "x.png")
    a = outputs_mod.Staging(out, writer_token())
    b = outputs_mod.Staging(out, writer_token())
    assert {a.heatmap, a.report, a.geojson, a.overlay}.isdisjoint(
        {b.heatmap, b.report, b.geojson, b.overlay}
    )
    assert a.overlay is not None and a.overlay.suffix == ".png"
    assert all(p.name.startswith(".") and "partial" in p.name for p in (a.heatmap, a.report))


def test_commit_puts_everything_in_place_and_report_marks_completion(tmp_path: Path) -> None:
    out = SlideOutputs(tmp_path / "x.zarr", tmp_path / "figs" / "x.png")
    with out.locked(), out.staged() as staging:
        _stage_result(staging, "one")
        assert not out.is_complete()
        staging.commit()
    assert is_complete(out.heatmap) and out.overlay is not None and out.overlay.is_file()
    assert read_report(out.heatmap)["value"] == "one" == out.geojson.read_text()
    assert out.matches("one") and not out.matches("two")
    assert _hidden(tmp_path) == []

    with out.locked(), out.staged() as staging:  # a replacement
        _stage_result(staging, "two")
        staging.commit()
    assert read_report(out.heatmap)["value"] == "two" == out.geojson.read_text()
    assert (out.heatmap / "zarr.json").read_text() == "two"


def test_failed_writer_leaves_nothing_and_keeps_the_old_result(tmp_path: Path) -> None:
    out = SlideOutputs(tmp_path / "x.zarr")
    with out.locked(), out.staged() as staging:
        _stage_result(staging, "old")
        staging.commit()
    with pytest.raises(RuntimeError), out.locked(), out.staged() as staging:
        _stage_result(staging, "new")
        raise RuntimeError("killed mid-scan")
    assert _hidden(tmp_path) == []
    assert read_report(out.heatmap)["value"] == "old"


def test_abandoned_temporaries_are_cleared_by_the_next_writer(tmp_path: Path) -> None:
    out = SlideOutputs(tmp_path / "x.zarr")
    (tmp_path / ".x.zarr.deadhost-1-abc.partial").mkdir()
    (tmp_path / ".x.json.deadhost-1-abc.partial").write_text("{")
    (tmp_path / ".x.zarr.partial").mkdir()  # slidescan 0.1's fixed name
    (tmp_path / ".y.zarr.partial").mkdir()  # another slide's: not ours to touch
    with out.locked(), out.staged() as staging:
        _stage_result(staging, "v")
        staging.commit()
    assert _hidden(tmp_path) == [".y.zarr.partial"]


def test_interrupted_commit_is_recognised(tmp_path: Path) -> None:
    out = SlideOutputs(tmp_path / "x.zarr")
    out.heatmap.mkdir()
    assert not out.interrupted(), "a folder that is not a slidescan heatmap is never ours"


def test_ctrl_c_during_the_commit_waits_until_everything_is_in_place(tmp_path: Path) -> None:
    out = SlideOutputs(tmp_path / "x.zarr", tmp_path / "x.png")
    real_replace = os.replace
    calls = []

    def replace_then_ctrl_c(src: object, dst: object) -> None:
        real_replace(src, dst)  # type: ignore[arg-type]
        calls.append(dst)
        if len(calls) == 1:  # the first rename: the overlay
            os.kill(os.getpid(), signal.SIGINT)

    # Scans run with other threads alive (zarr's I/O loop, torch, ONNX): the signal may reach
    # any of them, and must still wait for the renames.
    stop = threading.Event()
    others = [threading.Thread(target=stop.wait) for _ in range(4)]
    for thread in others:
        thread.start()
    try:
        with pytest.raises(KeyboardInterrupt), out.locked(), out.staged() as staging:
            _stage_result(staging, "one")
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(outputs_mod.os, "replace", replace_then_ctrl_c)
                staging.commit()
    finally:
        stop.set()
    assert len(calls) == 4  # every rename ran before the interrupt arrived
    assert is_complete(out.heatmap) and out.geojson.is_file() and _hidden(tmp_path) == []
