"""The train stage as a Ray Train job (`train.launcher: ray`): the stage, still one DVC stage on the
machine of `selfimprove run`, is the job's driver; `train.processes` workers, placed by Ray anywhere
on the cluster, each run the trainer the local stage builds (selfimprove.stages.train.ray_worker).

    train: {launcher: ray, processes: 2, ray_address: "", ray_use_gpu: false,
            ray_resources_per_worker: {CPU: 1}, ray_storage_path: "", ray_max_failures: 1}

- The cluster: ray_address, else RAY_ADDRESS, else a local one (Ray's own rule for ray.init()).
- Inputs: the pairs and the settings travel in the job's config, the starting model's files through
  Ray's object store (a LoRA chain as its merged model), so workers need no shared disk; a hub id is
  loaded by each worker itself. A LoRA adapter trained on the merged model is recorded as trained on
  the stage's model reference, as the local stage records it.
- Checkpoints: Ray Train's (RunConfig.storage_path: ray_storage_path, a shared filesystem or an object
  store URI Ray supports; by default a folder beside the output, which only a one-machine cluster
  shares), one every train.save_steps, the last two kept. The job is named by a fingerprint of its
  inputs, so a rerun of the same stage after the driver was killed resumes from the last checkpoint
  (Ray Train V2 reloads the run's snapshot by name), and a finished job hands its model back without
  starting anything.
- A lost worker: Ray Train restarts the group from the last checkpoint, ray_max_failures times.
- The result: rank 0 reports the saved model (and its DVCLive curves) as the job's last checkpoint;
  the driver copies it to the stage's output.

The global batch is batch_size * grad_accum * processes, as with accelerate: the same pairs, seed and
batch give the same model (measured here: bitwise equal to `accelerate launch --num_processes 2`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from selfimprove.core.errors import UserError

FINAL = "final_model"  # the checkpoint rank 0 reports last: the trained model and its curves
KEEP_CHECKPOINTS = 2


def train_on_ray(build_trainer, settings: dict, pairs: list[dict], model_ref: str, out: Path,
                 revision: str | None, curves, run_name: str | None) -> dict:
    """Train with the stage's build_trainer on `processes` Ray Train workers; copy the trained model to
    out (and the curves to curves); the stage's figures."""
    from selfimprove.models import model_identity

    name = "train-" + hashlib.sha256(json.dumps([settings, pairs, model_identity(model_ref, revision)],
                                                sort_keys=True).encode()).hexdigest()[:16]
    storage = storage_path(settings["ray_storage_path"], out)
    if not _finished(storage, name):
        _fit(build_trainer, settings, pairs, model_ref, revision, run_name, storage, name)
    figures = _collect(storage, name, out, curves)
    _record_base(out, model_ref, revision)
    return figures


def storage_path(given: str, out: Path) -> str:
    """Where the job keeps its checkpoints: a URI as given, a folder made absolute (from the project
    root, where the stage runs), by default beside the stage's output."""
    if "://" in given:
        return given.rstrip("/")
    return str(Path(given).resolve() if given else out.parent.resolve() / f".{out.name}-ray")


def _fit(build_trainer, settings, pairs, model_ref, revision, run_name, storage, name) -> None:
    ray = import_ray_train()
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ray.init(address=settings["ray_address"] or None, log_to_driver=False)
    try:
        # build_trainer travels by reference (its module and name): each worker imports the stage's code
        job = {"settings": settings, "pairs": pairs, "model": _ship(ray, model_ref, revision), "name": name,
               "run_name": run_name, "progress": os.environ.get("SELFIMPROVE_PROGRESS"),
               "build_trainer": build_trainer}
        use_gpu = settings["ray_use_gpu"]
        trainer = TorchTrainer(
            worker, train_loop_config=job, torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=settings["processes"], use_gpu=use_gpu,
                                         resources_per_worker=settings["ray_resources_per_worker"] or None,
                                         placement_strategy=settings["ray_placement"]),
            run_config=RunConfig(name=name, storage_path=storage,
                                 failure_config=FailureConfig(max_failures=settings["ray_max_failures"]),
                                 checkpoint_config=CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS)))
        trainer.fit()
    finally:
        ray.shutdown()


def import_ray_train():
    try:
        import ray
        import ray.train.torch  # noqa: F401
    except ImportError:
        raise UserError("train.launcher: ray needs Ray Train: pip install 'selfimprove[ray-train]' (ray[train]), "
                        "or remove launcher: ray to train on this machine") from None
    # Ray Train V2 patches print() in its workers; dill (datasets' fingerprints) prints through it, and each
    # disassembly it makes then floods the job's log (measured). Usage stats would try the network.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return ray


def _ship(ray, model_ref: str, revision: str | None):
    """The starting model for the workers: its files in Ray's object store ({relative path: bytes}); a
    LoRA chain as the merged model it stands for; a hub id as itself."""
    from selfimprove.models import full_weights_dir

    if not Path(model_ref).exists():
        return {"hub": model_ref, "revision": revision}
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(full_weights_dir(model_ref, scratch, revision))
        files = {str(f.relative_to(directory)): f.read_bytes() for f in directory.rglob("*") if f.is_file()}
    return {"files": ray.put(files)}


def worker(job: dict) -> None:
    """One Ray Train worker: the trainer the local stage builds, on the starting model the driver shipped."""
    from selfimprove import models
    from selfimprove.models.trainer_config import curves_callback, training_config

    model_dir, scratch = worker_files(job)
    config = training_config(job["settings"], str(scratch))
    config.run_name = job["run_name"] or config.run_name
    model, tokenizer = models.load(str(model_dir), None, for_training=True)
    trainer = job["build_trainer"](job["settings"], job["pairs"], model, tokenizer, config, None)
    train_and_report(trainer, job, lambda folder: curves_callback(folder, resume=False))


def worker_files(job: dict) -> tuple[Path, Path]:
    """In a worker: (the starting model's directory, written from the object store once per node; the
    worker's own scratch folder for the Trainer's checkpoints)."""
    import ray

    root = Path(tempfile.gettempdir()) / "selfimprove-ray" / job["name"]
    scratch = root / f"rank-{ray.train.get_context().get_world_rank()}"
    shipped = job["model"]
    if "hub" in shipped:
        return Path(shipped["hub"]), scratch
    model = root / "model"
    if not (model / ".complete").exists():
        partial = root / f"model.{os.getpid()}.partial"
        for relative, data in ray.get(shipped["files"]).items():
            (partial / relative).parent.mkdir(parents=True, exist_ok=True)
            (partial / relative).write_bytes(data)
        (partial / ".complete").write_text("")
        try:
            os.replace(partial, model)
        except OSError:  # another worker of this node wrote it first
            shutil.rmtree(partial, ignore_errors=True)
    return model, scratch


def train_and_report(trainer, job: dict, curves_callback) -> None:
    """In a worker: train (from the job's last Ray checkpoint when there is one), then rank 0 reports the
    saved model and its curves as the final checkpoint. Every rank reports: it is a barrier."""
    import ray.train
    from ray.train.huggingface.transformers import RayTrainReportCallback

    rank = ray.train.get_context().get_world_rank()
    if job["progress"] and Path(job["progress"]).parent.is_dir():  # the driver's disk (one machine): the row moves
        os.environ["SELFIMPROVE_PROGRESS"] = job["progress"]
    trainer.add_callback(RayTrainReportCallback())
    resume = _resume_point(Path(trainer.args.output_dir))
    with tempfile.TemporaryDirectory() as final:
        if rank == 0:
            trainer.add_callback(curves_callback(Path(final) / "curves"))
        result = trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(str(Path(final) / "model"))
        trainer.accelerator.wait_for_everyone()
        figures = {"pairs": len(job["pairs"]), "steps": result.global_step, "loss": result.training_loss,
                   "resumed_from_step": _step_of(resume), "processes": trainer.accelerator.num_processes,
                   "ray_nodes": _nodes_used(),
                   "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)}
        if rank == 0:
            (Path(final) / "figures.json").write_text(json.dumps(figures))
        checkpoint = ray.train.Checkpoint.from_directory(final) if rank == 0 else None
        ray.train.report(figures, checkpoint=checkpoint, checkpoint_dir_name=FINAL)


def _nodes_used() -> int:
    """How many cluster nodes the job's workers ran on (every rank asks; a collective)."""
    import ray
    import torch.distributed as dist

    node = ray.get_runtime_context().get_node_id()
    if not dist.is_initialized():
        return 1
    nodes = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node)
    return len(set(nodes))


def _resume_point(scratch: Path) -> str | None:
    """The Hugging Face checkpoint inside the job's last Ray checkpoint, copied to this worker's scratch."""
    import ray.train
    from ray.train.huggingface.transformers import RayTrainReportCallback

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        saved = Path(folder) / RayTrainReportCallback.CHECKPOINT_NAME
        if not saved.is_dir():
            return None
        local = scratch / "resume" / _hf_name(saved)
        shutil.rmtree(local.parent, ignore_errors=True)
        shutil.copytree(saved, local)
    return str(local)


def _hf_name(saved: Path) -> str:
    state = json.loads((saved / "trainer_state.json").read_text())
    return f"checkpoint-{state['global_step']}"


def _step_of(resume: str | None) -> int:
    return int(Path(resume).name.split("-")[1]) if resume else 0


def _finished(storage: str, name: str) -> bool:
    """Whether the job already ran to its end (its last checkpoint is the final model): a rerun must not
    hand that to the workers as a point to resume from (they would start again from step 0)."""
    text = _read(f"{storage}/{name}/checkpoint_manager_snapshot.json")
    if text is None:
        return False
    latest = (json.loads(text).get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    return latest == FINAL


def _read(location: str) -> str | None:
    """A small file's text from a folder or a storage URI (pyarrow's filesystems, as Ray reads them)."""
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(location if "://" in location else str(Path(location)))
    try:
        with filesystem.open_input_stream(path) as stream:
            return stream.read().decode()
    except (FileNotFoundError, OSError):
        return None


def _collect(storage: str, name: str, out: Path, curves) -> dict:
    """Copy the final checkpoint's model to out (whole or not at all) and its curves; its figures."""
    import ray.train

    from selfimprove.models.trainer_config import canonical_model_files

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tempfile.TemporaryDirectory() as scratch:
        final = Path(ray.train.Checkpoint(f"{storage}/{name}/{FINAL}").to_directory(scratch))
        if not (final / "model").is_dir():
            raise UserError(f"train.launcher: ray: the job {name} ended without its model in {storage}; see the "
                            "stage's log, and run again to resume from its last checkpoint")
        shutil.copytree(final / "model", partial)
        if curves is not None:
            Path(curves).mkdir(parents=True, exist_ok=True)
            if (final / "curves").is_dir():
                shutil.copytree(final / "curves", curves, dirs_exist_ok=True)
        figures = json.loads((final / "figures.json").read_text())
    canonical_model_files(partial)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)
    return figures


def _record_base(out: Path, model_ref: str, revision: str | None) -> None:
    """A LoRA adapter the workers trained on the shipped merged model: record the stage's model as its base,
    as the local stage does (a later iteration loads the chain through it)."""
    config_path = out / "adapter_config.json"
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"], config["revision"] = model_ref, revision
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
