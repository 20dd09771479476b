"""``deepsad replay`` through the command line: the table, the verdict and the exit codes (0 equal,
3 differ, 2 user error), JSON output, and a sweep on S3."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from orchestration.cli.app import main
from orchestration.jobs.replay import METRICS
from tests.orchestration.jobs.test_replay import Sweep, edited_copy, make_sweep, one_by_one, plain, tiny
from tests.s3_servers import BUCKET, S3Server, use_server

__all__ = ["plain"]  # the module-scoped sweep fixture of test_replay, trained once here too


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


def test_an_equal_replay_prints_the_table_and_exits_0(plain: Sweep, capsys: pytest.CaptureFixture[str]) -> None:
    key = plain.row(cache_hit=True)["trial_key"]
    rc, out, err = run(["replay", plain.name, key, "--storage", plain.storage], capsys)
    assert rc == 0, out + err
    assert err.startswith(f"replaying trial {key} (deepsad, seed 0) of sweep plain on cpu\n")
    assert "autoencoder: taken from the sweep's cache" in err
    lines = out.splitlines()
    assert lines[0].split() == ["metric", "recorded", "replayed", "difference"]
    for name, line in zip(METRICS, lines[1:7], strict=True):
        fields = line.split()
        assert fields[0] == name and fields[1] == fields[2] and fields[3] == "0", line
    assert "model weights: identical to the recorded checkpoint" in out and lines[-1] == "equal"


def test_a_differing_metric_is_listed_and_exits_3(plain: Sweep, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    row = plain.row(cache_hit=False)
    copy = edited_copy(plain, tmp_path, row["trial_key"], val_ap=0.5)
    rc, out, err = run(["replay", plain.name, row["trial_key"], "--storage", copy.storage], capsys)
    assert rc == 3, out + err
    (line,) = [x for x in out.splitlines() if x.startswith("val_ap ")]
    assert line.split()[:3] == ["val_ap", "0.5", repr(row["val_ap"])] and line.endswith("≠")
    assert f"{row['val_ap'] - 0.5:+.3e}" in line
    assert out.splitlines()[-1] == "1 metric differs"


def test_json_output(plain: Sweep, capsys: pytest.CaptureFixture[str]) -> None:
    key = plain.row(cache_hit=False)["trial_key"]
    rc, out, _ = run(["replay", plain.name, key, "--storage", plain.storage, "--json"], capsys)
    assert rc == 0
    doc = json.loads(out)
    assert doc["equal"] is True and doc["trial_key"] == key and doc["kind"] == "trial" and doc["differing"] == 0
    assert [m["metric"] for m in doc["metrics"]] == list(METRICS)
    assert all(m["recorded"] == m["replayed"] and m["difference"] == 0 for m in doc["metrics"])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["replay", "nope", "0123456789abcdef"], "error: no sweep 'nope' under "),
        (["replay", "plain", "0123456789abcdef"], "error: sweep plain: no row '0123456789abcdef'"),
        (["replay", "plain", "KEY", "--device", "tpu"], "error: --device: must be one of auto, cpu, cuda"),
    ],
    ids=["unknown sweep", "unknown key", "bad device"],
)
def test_user_errors_are_one_line_and_exit_2(plain: Sweep, argv: list[str], expected: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    argv = [plain.rows[0]["trial_key"] if a == "KEY" else a for a in argv]
    rc, out, err = run([*argv, "--storage", plain.storage], capsys)
    assert rc == 2 and out == "" and len(err.splitlines()) == 1 and err.startswith(expected), err


def test_a_tampered_fingerprint_is_refused_in_one_line_with_exit_2(plain: Sweep, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    key = plain.rows[0]["trial_key"]
    copy = edited_copy(plain, tmp_path, key, fingerprint="0" * 64)
    rc, out, err = run(["replay", plain.name, key, "--storage", copy.storage], capsys)
    assert rc == 2 and out == "" and len(err.splitlines()) == 1, err
    assert "but the row records 0000000000000000: the data is not the data the sweep used" in err


@pytest.mark.integration
def test_a_row_of_a_sweep_on_s3_replays_equal(moto_server: S3Server, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    use_server(monkeypatch, moto_server, tmp_path)
    storage = f"s3://{BUCKET}/replay-{uuid.uuid4().hex[:8]}"
    sweep = make_sweep(storage, tmp_path, tiny("ons3"), one_by_one)
    for row in sorted(sweep.rows, key=lambda r: r["cache_hit"]):  # one pretrained its AE, one took it from S3
        rc, out, err = run(["replay", "ons3", row["trial_key"], "--storage", storage], capsys)
        assert rc == 0, out + err
        assert out.splitlines()[-1] == "equal" and "model weights: identical" in out
