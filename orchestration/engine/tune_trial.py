"""What runs inside a Ray Tune trial of a sweep: the payload every trial receives
(:class:`SweepPayload`, which names each trial's job), the reporters that turn epochs into Tune or Ray Train reports and
checkpoints, the AE-cache lock every trial reaches (a named actor holding a :class:`LockTable`), the
driver's committer every row goes to (:mod:`orchestration.engine.committer`), the trial function :func:`tune_trial` and the Ray Train worker of data-parallel trials. The driver side —
submit, resume, the store callback — is :mod:`orchestration.engine.runner`.

Ray is imported inside the functions: this module is imported by the driver before Ray starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestration.engine.committer import ActorSink
from orchestration.engine.ray_session import LOCAL_MARKER
from orchestration.jobs.base import Job, RunContext
from orchestration.jobs.cache_lock import HeartbeatLock
from orchestration.jobs.kinds import job_from_dict
from orchestration.jobs.trial import TrialJob
from orchestration.plan.cells import build_trial
from orchestration.spec.load import parse_spec
from orchestration.spec.model import SweepSpec
from orchestration.store.storage import Storage

# --------------------------------------------------------------------------- what every trial receives


@dataclass(frozen=True)
class SweepPayload:
    """The sweep as its trials see it (passed to every trial through ``tune.with_parameters``)."""

    name: str
    storage_uri: str  # the sweep directory
    spec_text: str
    source: str
    base_dir: str  # where relative paths in the spec are resolved (the submitting command's cwd)
    # planned jobs (grid/random trials, bundles, ablation units): job id -> Job.to_dict(); a Tune
    # trial's config names its job ({"job": id}). tpe: none (the searcher suggests each trial's params, or
    # in bundles each job itself: {"job": id, "job_spec": Job.to_dict()})
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock_name: str = ""
    rows_name: str = ""  # the driver's committer (orchestration.engine.committer)

    @property
    def spec(self) -> SweepSpec:
        return parse_spec(self.spec_text, self.source, base_dir=self.base_dir)

    def job_for(self, config: dict[str, Any]) -> Job:
        """The job of one Tune trial: a planned one, or (tpe) the trial the searcher suggested.

        Raises:
            KeyError: a config of another run (no job of this payload).
        """
        if "job_spec" in config:  # a bundle of a TPE batch (orchestration.engine.batched), planned while it runs
            return job_from_dict(config["job_spec"])
        if "job" in config:
            return job_from_dict(self.jobs[config["job"]])
        spec = self.spec
        keys = [k for k, v in spec.search.space.model_dump().items() if v is not None]
        params = {k: config[k] for k in keys}
        seed = spec.seeds[int(config.get("__trial_index__", 0)) % len(spec.seeds)]
        return TrialJob(build_trial(spec, params, seed))


# --------------------------------------------------------------------------- inside a trial


def load_state(path: Path) -> Any:
    """A trial's checkpoint: a :class:`TrainState`, or a bundle's :class:`BundleState`."""
    from deepsad.bundle import BundleState
    from deepsad.checkpoint import read_bundle_meta
    from deepsad.training import TrainState

    kind = read_bundle_meta(path).get("kind")
    return BundleState.load(path) if kind == BundleState.KIND else TrainState.load(path)


class TuneReporter:
    """Reports of a single-process trial go to Ray Tune; checkpoints are :class:`TrainState` bundles."""

    rank = 0
    world_size = 1

    def restored(self) -> Any:
        from ray import tune

        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return load_state(Path(d) / "state")

    def report(self, metrics: dict[str, Any], state: Any) -> None:
        import tempfile

        from ray import tune

        if state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            state.save(Path(d) / "state")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


class TrainReporter:
    """Reports of a Ray Train worker: every rank reports (a barrier), only rank 0 checkpoints."""

    def __init__(self) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()

    def restored(self) -> Any:
        import ray.train

        from deepsad.training import TrainState

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return TrainState.load(Path(d) / "state")

    def report(self, metrics: dict[str, Any], state: Any) -> None:
        import tempfile

        import ray.train

        if state is None or self.rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            state.save(Path(d) / "state")
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


class RayCacheLock(HeartbeatLock):
    """The AE-cache lock, a :class:`LockTable` in a named actor that every trial of the sweep can
    reach; a held lease is renewed by this process's heartbeat until it is released (so it lasts as
    long as this process lives; see :mod:`orchestration.jobs.cache_lock`)."""

    def __init__(self, name: str) -> None:
        import ray

        actor = ray.get_actor(name, namespace="deepsad")

        def call(method: str, key: str, owner: str) -> Any:
            return ray.get(getattr(actor, method).remote(key, owner))

        lease_s: Any = ray.get(actor.lease_s.remote())
        super().__init__(call, float(lease_s))


def tune_trial(config: dict[str, Any], payload: SweepPayload) -> None:
    """The Tune trainable: run the trial's job, in this process or on Ray Train workers."""
    from ray import tune

    spec = payload.spec
    ctx = RunContext(sweep=payload.name, storage_uri=payload.storage_uri,
                     trial_id=tune.get_context().get_trial_id(),
                     checkpoint_interval_s=spec.resources.checkpoint_interval_s, sink=ActorSink(payload.rows_name))
    job = payload.job_for(config)
    if spec.resources.workers_per_trial == 1:
        job.run(TuneReporter(), ctx, RayCacheLock(payload.lock_name))
        return
    _run_data_parallel(job, ctx, payload, spec)


def _run_data_parallel(job: Job, ctx: RunContext, payload: SweepPayload, spec: SweepSpec) -> None:
    """Run the job on ``workers_per_trial`` Ray Train workers (gloo on CPU, NCCL on GPU)."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    res = spec.resources
    train_dir = Storage.from_uri(payload.storage_uri).child("train")
    per_worker = {"CPU": res.cpus_per_trial}
    if res.gpus_per_trial:
        per_worker["GPU"] = res.gpus_per_trial
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"job": job.to_dict(), "ctx": ctx.__dict__, "lock": payload.lock_name},
        torch_config=_torch_config("nccl" if res.gpus_per_trial else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=res.workers_per_trial,
                                               use_gpu=bool(res.gpus_per_trial), resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            # a stable name under a stable path: a retried or resumed trial finds its Train run again
            name=f"train-{job.id}",
            storage_path=train_dir.root,
            storage_filesystem=train_dir.filesystem,
            failure_config=ray.train.FailureConfig(max_failures=res.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]
        ),
    )
    trainer.fit()


def _torch_config(backend: str) -> Any:
    """On the local Ray we started, keep torch's rendezvous on 127.0.0.1 (the stock one listens on
    every interface); on a cluster the workers need the stock, routable one."""
    from ray.train.torch import TorchConfig

    if os.environ.get(LOCAL_MARKER) == "1":
        from orchestration.engine.loopback import LoopbackTorchConfig

        return LoopbackTorchConfig(backend=backend)
    return TorchConfig(backend=backend)


def _train_worker(config: dict[str, Any]) -> None:
    job_from_dict(config["job"]).run(TrainReporter(), RunContext(**config["ctx"]), RayCacheLock(config["lock"]))
