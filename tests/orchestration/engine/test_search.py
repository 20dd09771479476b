"""The Optuna side of a resume: the study (SQLite, never a pickle) is the searcher's whole memory, and
the configurations a dead driver left RUNNING are asked for again, first."""

from __future__ import annotations

from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from orchestration.spec.load import parse_spec
from orchestration.spec.model import SweepSpec
from orchestration.store.storage import Storage
from tests.orchestration.sweeps_helpers import small_spec


def _tpe_spec() -> SweepSpec:
    d = small_spec("tpe", search={"algorithm": "tpe", "num_trials": 4, "seed": 0,
                                  "space": {"eta": {"distribution": "log_uniform", "low": 0.1, "high": 10.0}}})
    return parse_spec(yaml.safe_dump(d), "tpe.yaml")


def test_a_resume_fails_the_orphaned_trials_and_asks_for_their_configurations_first(tmp_path: Path) -> None:
    # imported here: orchestration.engine.search imports Ray, and Ray fixes its auth mode at import (see
    # tests/test_no_ray_at_collection.py)
    from orchestration.engine.search import optuna_space, recover_orphans, study_storage

    spec = _tpe_spec()
    sweep = Storage.from_uri(str(tmp_path / "tpe"))
    assert recover_orphans(spec, sweep) == 0  # no study yet: nothing to do
    storage, _ = study_storage(spec, sweep)
    study = optuna.create_study(study_name="tpe", storage=storage, direction="maximize")
    space = optuna_space(spec)
    done = study.ask(space)
    study.tell(done, 0.8)
    orphan = study.ask(space)  # asked by a driver that was then killed
    eta = orphan.params["eta"]

    assert recover_orphans(spec, sweep) == 1
    again = optuna.load_study(study_name="tpe", storage=study_storage(spec, sweep)[0])
    states = [t.state for t in again.get_trials(deepcopy=False)]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert study_storage(spec, sweep)[1] == 1  # finished configurations
    nxt = again.ask(space)
    assert nxt.params == {"eta": eta}, "the orphaned configuration runs again, first"
    assert recover_orphans(spec, sweep) == 1  # (that one is RUNNING now)
