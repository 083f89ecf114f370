"""Command line, in-process: help texts, models, train → evaluate → predict on a toy set, and
bad input that must end as one ``error: ...`` line with exit code 1, never a traceback."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from patch_fixtures import write_toy_set
from PIL import Image
from scan_helpers import FAST, invoke
from torch._utils import ExceptionWrapper
from typer.testing import Result

from slidescan.engine.weights import load_weights
from slidescan.errors import SlidescanError, one_line, option_for
from slidescan.io.patches import read_patch_image
from slidescan.models import count_parameters, create_model, list_models

N_PER_CLASS = 20


def _visible_lines(text: str) -> list[str]:
    """What a terminal shows: a carriage return overwrites the line (progress bars); no blanks."""
    shown = []
    for line in text.split("\n"):
        buf: list[str] = []
        for seg in line.split("\r"):
            buf[: len(seg)] = seg
        rendered = "".join(buf).rstrip()
        if rendered:
            shown.append(rendered)
    return shown


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_set(tmp_path_factory.mktemp("toy") / "data", N_PER_CLASS)


@pytest.fixture(scope="module")
def trained(toy: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    out = tmp_path_factory.mktemp("weights") / "toy.pt"
    result = invoke("train", toy, "--out", out, "--epochs", "1", "--batch-size", "8", *FAST)
    return out, result


# ------------------------------------------------------------------------------------------------
# Help


def _option_help(help_text: str, option: str) -> str:
    """The help row(s) of ``option``: its line plus continuation lines up to the next option."""
    lines = help_text.splitlines()
    pattern = re.compile(rf"^[│|\s]*{re.escape(option)}(\s|,|$)")
    for i, line in enumerate(lines):
        if pattern.match(line):
            block = [line]
            for nxt in lines[i + 1 :]:
                if re.match(r"^[│|\s]*-", nxt) or nxt.lstrip().startswith(("╰", "╭")):
                    break
                block.append(nxt)
            return " ".join(block)
    raise AssertionError(f"{option} not in help:\n{help_text}")


def test_app_help_lists_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    for command in ("train", "models", "evaluate", "predict"):
        assert re.search(rf"\b{command}\b", result.stdout), command
    assert "research use only" in result.stdout.lower()


def test_no_arguments_shows_help() -> None:
    result = invoke()
    assert "Usage" in result.output
    assert "train" in result.output


HELP_DEFAULTS = {
    "train": {
        "--out": "slidescan-model.pt",
        "--model": "pcamnet-v2",
        "--val": None,
        "--val-fraction": "0.2",
        "--split": "train",
        "--epochs": "10",
        "--batch-size": "100",
        "--lr": "0.001",
        "--weight-decay": "0.0",
        "--schedule": "cosine",
        "--augment": "strong",
        "--seed": "0",
        "--resume": None,
        "--resize": None,
        "--device": "auto",
        "--workers": "2",
    },
    "models": {},
    "evaluate": {
        "--weights": None,
        "--split": "valid",
        "--tta": "tta",
        "--json": None,
        "--report": None,
        "--batch-size": "256",
        "--resize": None,
        "--device": "auto",
        "--workers": "2",
    },
    "predict": {
        "--out": "predictions.csv",
        "--weights": None,
        "--kaggle": None,
        "--tta": "tta",
        "--batch-size": "256",
        "--resize": None,
        "--device": "auto",
        "--workers": "2",
    },
}


@pytest.mark.parametrize("command", list(HELP_DEFAULTS))
def test_command_help_shows_options_and_defaults(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "Usage" in text and "--help" in text
    for option, default in HELP_DEFAULTS[command].items():
        row = _option_help(text, option)
        # A row with an explanation, not just the flag.
        assert len(row.replace(option, "").strip(" │|")) > 10, row
        if default is not None:
            assert re.search(rf"default: {re.escape(default)}[\];]", row), (option, row)


# ------------------------------------------------------------------------------------------------
# models, train, evaluate, predict


def test_models_lists_all_with_parameter_counts() -> None:
    result = invoke("models")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    names = [spec.name for spec in list_models()]
    assert {"pcamnet-s", "seed-cnn"} <= set(names)
    assert len(lines) == len(names)
    for name, line in zip(names, lines, strict=True):
        assert line.split()[0] == name
        assert f"{count_parameters(create_model(name)):,}" in line, line
    assert "(default)" in next(ln for ln in lines if ln.startswith("pcamnet-v2"))
    assert sum("default" in ln for ln in lines) == 1


def test_train_writes_weights_and_reports_best_epoch(trained: tuple[Path, Result]) -> None:
    out, result = trained
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert re.search(r"best epoch 1: val AUC [0-9.]+, accuracy [0-9.]+ at threshold", result.stdout)
    assert str(out) in result.stdout
    assert "training pcamnet-v2 on image folders" in result.stderr
    card = load_weights(out).card
    assert card.model == "pcamnet-v2" and 0 < card.threshold < 1
    assert card.training["n_train"] + card.training["n_val"] == 2 * N_PER_CLASS
    assert "image folders" in card.training["data"]


def test_evaluate_json_prints_one_object(trained: tuple[Path, Result], toy: Path) -> None:
    weights, _ = trained
    result = invoke("evaluate", toy, "--weights", weights, "--json", *FAST)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must hold the JSON object only: {result.stdout!r}"
    obj = json.loads(lines[0])
    assert isinstance(obj, dict)
    for key in ("n", "auc", "accuracy", "sensitivity", "specificity", "threshold"):
        assert key in obj, key
    assert obj["n"] == 2 * N_PER_CLASS
    assert 0 <= obj["auc"] <= 1 and 0 <= obj["accuracy"] <= 1
    assert obj["threshold"] == pytest.approx(load_weights(weights).card.threshold)
    assert obj["model"] == "pcamnet-v2"


def test_evaluate_text_and_report(trained: tuple[Path, Result], toy: Path, tmp_path: Path) -> None:
    weights, _ = trained
    report = tmp_path / "report"
    result = invoke("evaluate", toy, "--weights", weights, "--report", report, *FAST)
    assert result.exit_code == 0, result.output
    assert "AUC" in result.stdout and "report written" in result.stdout
    for name in ("roc.png", "calibration.png", "confusion.png", "examples.png"):
        with Image.open(report / name) as im:
            assert im.format == "PNG"
            im.verify()
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["n"] == 2 * N_PER_CLASS


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_predict_kaggle_and_default_csv(
    trained: tuple[Path, Result], toy: Path, tmp_path: Path
) -> None:
    weights, _ = trained
    stems = {p.stem for p in toy.rglob("*.png")}

    kaggle_csv = tmp_path / "out" / "submission.csv"
    result = invoke("predict", toy, "--weights", weights, "--kaggle", "--out", kaggle_csv, *FAST)
    assert result.exit_code == 0, result.output
    assert f"{len(stems)} patches" in result.stdout
    rows = _read_csv(kaggle_csv)
    assert rows[0] == ["id", "label"]
    assert len(rows) == 1 + len(stems)
    assert {r[0] for r in rows[1:]} == stems
    kaggle_probs = {r[0]: float(r[1]) for r in rows[1:]}
    assert all(0 <= p <= 1 for p in kaggle_probs.values())

    plain_csv = tmp_path / "plain.csv"
    result = invoke("predict", toy, "--weights", weights, "--out", plain_csv, *FAST)
    assert result.exit_code == 0, result.output
    rows = _read_csv(plain_csv)
    assert rows[0] == ["id", "probability", "tumour"]
    assert len(rows) == 1 + len(stems)
    threshold = load_weights(weights).card.threshold
    for id_, prob, tumour in rows[1:]:
        p = float(prob)
        assert p == pytest.approx(kaggle_probs[id_], abs=1e-6)
        assert tumour in ("0", "1")
        if abs(p - threshold) > 1e-5:
            assert int(tumour) == int(p >= threshold), (id_, p, threshold)
    assert not list(tmp_path.rglob("*.tmp"))


def test_predict_backends_agree(trained: tuple[Path, Result], toy: Path, tmp_path: Path) -> None:
    weights, _ = trained
    probs = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / f"{backend}.csv"
        result = invoke(
            "predict", toy, "--weights", weights, "--out", out, "--backend", backend, *FAST
        )
        assert result.exit_code == 0, result.output
        probs[backend] = {r[0]: float(r[1]) for r in _read_csv(out)[1:]}
    assert probs["torch"].keys() == probs["onnx"].keys()
    assert max(abs(probs["torch"][k] - probs["onnx"][k]) for k in probs["torch"]) < 1e-4
    bad = invoke("predict", toy, "--weights", weights, "--backend", "tensorrt", *FAST)
    _assert_usage_error(bad, "--backend", "tensorrt", "onnx-int8")


def test_patches_default_to_the_mean_over_8_flips_and_no_tta_is_one_pass(
    trained: tuple[Path, Result], toy: Path, tmp_path: Path
) -> None:
    """Issue 20: patch commands average the 8 flips/rotations unless told --no-tta."""
    import torch

    from slidescan.engine.augment import dihedral
    from slidescan.engine.inference import Normalizer

    weights, _ = trained
    image = next(iter(sorted((toy / "1").glob("*.png"))))
    loaded = load_weights(weights)
    x = Normalizer(loaded.card, torch.device("cpu"))(
        torch.from_numpy(read_patch_image(image)).permute(2, 0, 1)[None].contiguous()
    )
    with torch.inference_mode():
        logits = np.array([loaded.model(dihedral(x, k)).item() for k in range(8)])
    each = 1 / (1 + np.exp(-logits))
    assert np.ptp(each) > 1e-4  # the flips disagree, so the test can tell them apart
    got = {}
    for flag in ([], ["--no-tta"]):
        out = tmp_path / f"p{len(flag)}.csv"
        result = invoke("predict", image, "--weights", weights, "--out", out, "--backend",
                        "torch", *flag, *FAST)  # fmt: skip
        assert result.exit_code == 0, result.output
        got[bool(flag)] = float(_read_csv(out)[1][1])
    assert got[False] == pytest.approx(1 / (1 + np.exp(-logits.mean())), abs=1e-5)  # mean logit
    assert got[True] == pytest.approx(each[0], abs=1e-5)
    summary = invoke("evaluate", toy, "--weights", weights, "--json", *FAST)
    assert json.loads(summary.stdout)["tta"] is True
    one_pass = invoke("evaluate", toy, "--weights", weights, "--no-tta", *FAST)
    assert "(one pass, no TTA)" in one_pass.stdout


def test_predict_single_file(trained: tuple[Path, Result], toy: Path, tmp_path: Path) -> None:
    weights, _ = trained
    image = next(iter(sorted((toy / "1").glob("*.png"))))
    out = tmp_path / "one.csv"
    result = invoke("predict", image, "--weights", weights, "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    rows = _read_csv(out)
    assert len(rows) == 2 and rows[1][0] == image.stem


# ------------------------------------------------------------------------------------------------
# Bad input: one line, exit code 1


def _assert_one_error_line(result: Result, *needles: str, allow_info: bool = False) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    shown = _visible_lines(result.output)
    errors = [ln for ln in shown if ln.startswith("error: ")]
    assert len(errors) == 1, shown
    if allow_info:  # e.g. train's "training ... on ..." before the data is read
        assert shown[-1] == errors[0], shown
    else:
        assert shown == errors, shown
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_toy_set(tmp_path_factory.mktemp("corrupt") / "data", n_per_class=3, seed=2)
    (root / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root


@pytest.fixture(scope="module")
def junk_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("junk") / "junk.pt"
    path.write_bytes(np.random.default_rng(0).bytes(2048))
    return path


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_missing_data_path(command: str, trained: tuple[Path, Result], tmp_path: Path) -> None:
    weights = ["--weights", trained[0]] if command == "evaluate" else []
    missing = tmp_path / "no-such-data"
    result = invoke(command, missing, *weights, *FAST)
    _assert_one_error_line(result, str(missing), "no such file or folder")


def test_predict_missing_input(trained: tuple[Path, Result], tmp_path: Path) -> None:
    result = invoke("predict", tmp_path / "nothing.png", "--weights", trained[0], *FAST)
    _assert_one_error_line(result, "nothing.png")


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_folder_that_is_not_a_dataset(
    command: str, trained: tuple[Path, Result], tmp_path: Path
) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    weights = ["--weights", trained[0]] if command == "evaluate" else []
    result = invoke(command, folder, *weights, *FAST)
    _assert_one_error_line(result, str(folder), "not a patch dataset")


def test_predict_folder_without_images(trained: tuple[Path, Result], tmp_path: Path) -> None:
    result = invoke("predict", tmp_path, "--weights", trained[0], *FAST)
    _assert_one_error_line(result, "no patch images")


def test_evaluate_corrupt_image_names_the_file(trained: tuple[Path, Result], corrupt: Path) -> None:
    result = invoke("evaluate", corrupt, "--weights", trained[0], *FAST)
    _assert_one_error_line(result, str(corrupt / "1" / "broken.png"), "cannot read image")


def test_error_from_a_loader_worker_becomes_one_line(corrupt: Path) -> None:
    # With --workers > 0 a DataLoader worker re-raises the error with its traceback in the
    # message. Built here the way torch does it: an in-process run with real workers stalls
    # for seconds while torch shuts down a worker after an error.
    broken = corrupt / "1" / "broken.png"
    try:
        read_patch_image(broken)
    except SlidescanError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(SlidescanError) as info:
        wrapped.reraise()
    assert "Traceback" in str(info.value)
    line = one_line(info.value)
    assert line.startswith(f"{broken}: cannot read image"), line
    assert "\n" not in line


def test_predict_corrupt_image_names_the_file(
    trained: tuple[Path, Result], corrupt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "p.csv"
    result = invoke("predict", corrupt, "--weights", trained[0], "--out", out, *FAST)
    _assert_one_error_line(result, "broken.png")
    assert not out.exists(), "no CSV may be left after a failed run"


def test_train_corrupt_image_names_the_file(corrupt: Path, toy: Path, tmp_path: Path) -> None:
    out = tmp_path / "w.pt"
    result = invoke("train", corrupt, "--val", toy, "--out", out, "--epochs", "1", *FAST)
    _assert_one_error_line(result, "broken.png", allow_info=True)
    assert not out.exists()


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_non_slidescan_weights(command: str, toy: Path, junk_weights: Path) -> None:
    result = invoke(command, toy, "--weights", junk_weights, *FAST)
    _assert_one_error_line(result, str(junk_weights), "not a slidescan weights file")


def _assert_usage_error(result: Result, *needles: str) -> None:
    """A bad choice: click's usage error (exit 2) naming the option, the value and the choices."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    for needle in needles:
        assert needle in text, (needle, text)


def test_missing_weights_file(toy: Path, tmp_path: Path) -> None:
    result = invoke("evaluate", toy, "--weights", tmp_path / "gone.pt", *FAST)
    _assert_one_error_line(result, "gone.pt", "not found")


@pytest.mark.parametrize(
    "option, choices",
    [(["--schedule", "linear"], ["cosine", "constant"]), (["--augment", "max"], ["strong"])],
)
def test_train_bad_choices_list_the_choices(
    option: list[str], choices: list[str], toy: Path, tmp_path: Path
) -> None:
    out = tmp_path / "w.pt"
    result = invoke("train", toy, "--out", out, "--epochs", "1", *option)
    _assert_usage_error(result, option[0], option[1], *choices)
    assert not out.exists()


@pytest.mark.parametrize(
    "option, needle",
    [
        (["--model", "resnet-9000"], "unknown model"),
        (["--device", "warp-drive"], "unknown device 'warp-drive'"),
    ],
)
def test_train_bad_options(option: list[str], needle: str, toy: Path, tmp_path: Path) -> None:
    out = tmp_path / "w.pt"
    args = ["train", toy, "--out", out, "--epochs", "1", "--workers", "0", *option]
    if "--device" not in option:
        args += ["--device", "cpu"]
    result = invoke(*args)
    _assert_one_error_line(result, needle, allow_info=True)
    assert not out.exists()


def test_library_errors_name_the_option_that_sets_the_parameter(toy: Path, tmp_path: Path) -> None:
    """The library names its parameter (device, batch_size); the CLI adds the flag."""
    result = invoke("train", toy, "--out", tmp_path / "w.pt", "--device", "warp-drive")
    assert result.exit_code == 1
    assert result.stderr.strip().endswith("(use auto, cpu, cuda, cuda:N or mps) (--device)")
    assert option_for("batch_size") == "--batch-size" and option_for("device") == "--device"


# ------------------------------------------------------------------------------------------------
# One-line messages that say what is wrong (issue 23, item 8)


def _tiny_slide(folder: Path) -> Path:
    rgb = np.full((200, 200, 3), 240, np.uint8)
    rgb[50:150, 50:150] = (150, 80, 160)
    path = folder / "s.png"
    Image.fromarray(rgb).save(path)
    return path


def test_an_empty_slide_file_is_called_empty(tmp_path: Path) -> None:
    (tmp_path / "x.svs").touch()
    result = invoke("run", tmp_path / "x.svs", "--out", tmp_path / "o.zarr", *FAST)
    assert result.exit_code == 1
    assert "x.svs: empty file (0 bytes)" in result.output


def test_an_output_below_a_file_says_the_file_is_no_folder(tmp_path: Path) -> None:
    (tmp_path / "afile").touch()
    slide = _tiny_slide(tmp_path)
    result = invoke("run", slide, "--out", tmp_path / "afile" / "a.zarr", "--default-mpp",
                    "0.972", *FAST)  # fmt: skip
    assert result.exit_code == 1
    assert "is a file, not a folder" in result.output
    assert "File exists" not in result.output


def test_a_weights_file_that_is_no_model_gets_a_whole_reason(tmp_path: Path) -> None:
    slide = _tiny_slide(tmp_path)
    result = invoke("run", slide, "--out", tmp_path / "a.zarr", "--weights", slide, *FAST)
    assert result.exit_code == 1
    line = [r for r in result.output.splitlines() if "weights file" in r][0]
    assert line.endswith("(torch.load cannot read it: UnpicklingError)")
