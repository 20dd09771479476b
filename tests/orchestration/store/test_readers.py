"""The README's snippet for reading a sweep's tables with pandas, polars and duckdb runs as written, on
a store written by ResultStore, while the table has rows of several statuses and versions."""

from __future__ import annotations

import re
from pathlib import Path

from orchestration.store.results import ResultStore
from orchestration.store.storage import Storage
from tests.conftest import REPO


def _snippet() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## The result store"):readme.index("## Ablations and reports")]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


def test_the_readme_readers_see_the_rows(tmp_path: Path) -> None:
    store = ResultStore(Storage.from_uri(str(tmp_path / "runs" / "sweeps" / "NAME")))
    for i in range(7):
        store.write_trial({"trial_key": f"k{i}", "status": "running", "eta": float(i)})
    for i in range(6):  # one stays running; finished rows move to their partition
        store.write_trial({"trial_key": f"k{i}", "status": "finished", "eta": float(i), "val_auroc": i / 10})
    names: dict[str, object] = {}
    exec(compile(_snippet().replace('"runs/sweeps', f'"{tmp_path}/runs/sweeps'), "README.md", "exec"), names)
    frame = names["frame"]
    assert sorted(frame["trial_key"]) == [f"k{i}" for i in range(7)]  # type: ignore[index]
    assert names["best"]["trial_key"].to_list() == ["k5", "k4", "k3", "k2", "k1"]  # type: ignore[index]
    assert [r[0] for r in names["top"]] == ["k5", "k4", "k3", "k2", "k1"]  # type: ignore[union-attr]
    assert names["top"][0][1:] == (5.0, 0.5)  # type: ignore[index]
