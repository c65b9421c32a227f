"""Pretrain a conformer-CTC model from scratch as a Ray Train job (DDP on CPU workers with gloo, or GPUs with nccl).

    python -m speechadapt.training.pretrain --config training/configs/tiny.yaml [--set train.max_steps=300 ...]
    ray job submit --address http://HEAD:8265 -- python -m speechadapt.training.pretrain --config FILE
    speechadapt pretrain --config FILE [--set KEY=VALUE ...]

The config is YAML: the `PretrainConfig` keys at the top level, the `TrainConfig` under `train:` and the
model under `train.model:`; `--set` overrides any of them with dotted keys (`--set train.model.d_model=176`).
Relative paths resolve against the current directory.

Every worker loads both manifests and computes the same feature statistics; each epoch's length-bucketed
batches are drawn with the same seed on every rank and rank r trains on batches[r::world] (SpecAugment,
dynamic chunks, warmup + cosine LR and gradient clipping as in `loop.Trainer`). Every `checkpoint_every`
steps the ranks decode a share of the dev set each, agree on the dev WER, and rank 0 writes a checkpoint
(model, optimiser, step, RNG states of every rank, best state and WER, history) that all ranks report
through `ray.train.report`. A worker that dies costs at most `checkpoint_every` steps: Ray Train restarts
the worker group (up to `max_failures` times) and training resumes from the last reported checkpoint.
Re-running the same command after the driver died resumes the run kept in `storage_path`. At the end
rank 0 writes the state with the best dev WER as a model package in `out` (temp folder, fsync, rename).

`train.eval_every` is replaced by `checkpoint_every`; `train.max_minutes` (a budget for the training loop,
summed over restarts) is checked at those points. On a multi-node cluster `storage_path` must be shared
(NFS or s3://...), and the manifests, their audio and `out` must be reachable from every node.

Neither torch nor ray is imported at module level: `add_arguments` and `run` are cheap to import.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from speechadapt.asr.store import fsync_dir

if TYPE_CHECKING:
    from speechadapt.training.loop import TrainConfig

CHECKPOINT_FILE = "trainer.pt"
FAULT_MARKER = ".fault-injected"


def _default_train() -> "TrainConfig":
    from speechadapt.training.loop import TrainConfig

    return TrainConfig()


@dataclass(frozen=True)
class PretrainConfig:
    train_manifest: str = ""
    dev_manifest: str = ""
    out: str = ""  # the model package folder to write, e.g. models/base-en/1
    name: str = "pretrained"
    version: int = 1
    description: str = ""
    storage_path: str = ""  # Ray Train run storage (checkpoints); "" = <out's parent>/.runs
    run_name: str = ""  # the run's folder in storage_path; "" = <name>-v<version>
    resume: bool = True  # continue a run already in storage_path/run_name; false deletes it and starts over
    overwrite: bool = False  # replace an existing package in `out`
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # > 0: nccl on CUDA, else gloo on CPU
    checkpoint_every: int = 0  # steps between dev evaluation + checkpoint; 0 = train.eval_every
    keep_checkpoints: int = 2  # checkpoints kept in storage (newest); each holds the best state too
    max_failures: int = 2  # worker-group restarts before the run fails
    ray_address: str | None = None  # None: $RAY_ADDRESS if set (ray job submit), else a local head on 127.0.0.1
    log_level: str = "WARNING"  # Ray Train's own logs (INFO shows every report and checkpoint)
    fail_at_step: int = 0  # fault injection (tests): rank `fail_rank` exits once after this step
    fail_rank: int = 1
    train: TrainConfig = field(default_factory=_default_train)

    @staticmethod
    def _type_namespace() -> dict:
        from speechadapt.training.loop import TrainConfig

        return {"TrainConfig": TrainConfig}

    def resolved(self) -> "PretrainConfig":
        """Absolute paths, defaults filled in, values checked (ConfigError)."""
        from speechadapt.config_io import ConfigError

        for key in ("train_manifest", "dev_manifest", "out"):
            if not getattr(self, key):
                raise ConfigError(f"{key} is required (in the config file or --set {key}=...)")
        checks = [
            (self.version >= 1, "version must be >= 1"),
            (self.workers >= 1, "workers must be >= 1"),
            (self.cpus_per_worker > 0, "cpus_per_worker must be > 0"),
            (self.gpus_per_worker >= 0, "gpus_per_worker must be >= 0"),
            (self.checkpoint_every >= 0, "checkpoint_every must be >= 0"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
            (self.max_failures >= -1, "max_failures must be >= -1 (-1 = unlimited)"),
            (self.train.max_steps >= 1, "train.max_steps must be >= 1"),
            (self.train.eval_every >= 1 or self.checkpoint_every >= 1, "checkpoint_every (or train.eval_every) must be >= 1"),
            (self.train.model.vocab_size == 29, "train.model.vocab_size must be 29 (the character tokenizer)"),
            (self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
             "log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL"),
            ("/" not in self.run_name and self.run_name not in (".", ".."), "run_name must be a plain folder name"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        if _is_uri(self.storage_path) and (self.fail_at_step or not self.resume):
            raise ConfigError("fail_at_step and resume=false need a local (or mounted) storage_path")
        out = Path(self.out).expanduser().absolute()
        if _is_uri(self.storage_path):
            storage = self.storage_path  # s3://..., gs://...: Ray Train writes checkpoints through pyarrow
        else:
            storage = Path(self.storage_path).expanduser().absolute() if self.storage_path else out.parent / ".runs"
        return replace(
            self,
            train_manifest=str(Path(self.train_manifest).expanduser().absolute()),
            dev_manifest=str(Path(self.dev_manifest).expanduser().absolute()),
            out=str(out),
            storage_path=str(storage),
            run_name=self.run_name or f"{self.name}-v{self.version}",
            checkpoint_every=self.checkpoint_every or self.train.eval_every,
        )


def _is_uri(path: str) -> bool:
    return "://" in path


# ---------------------------------------------------------------------------------------------------------
# Config and CLI


def load_config(path: str | Path | None, overrides=()) -> PretrainConfig:
    from speechadapt.config_io import load

    return load(PretrainConfig, path, overrides)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, metavar="FILE", help="YAML recipe (PretrainConfig keys; TrainConfig under train:)")
    p.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override a config value, dotted for nested keys: --set train.max_steps=300 workers=4")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def _overrides(args: argparse.Namespace) -> list[str]:
    return [o for group in (getattr(args, "overrides", None) or []) for o in ([group] if isinstance(group, str) else group)]


def _command(args: argparse.Namespace) -> str:
    cmd = ["python", "-m", "speechadapt.training.pretrain"]
    if args.config:
        cmd += ["--config", str(Path(args.config).absolute())]
    for o in _overrides(args):
        cmd += ["--set", o]
    return shlex.join(cmd)


def run(args: argparse.Namespace) -> int:
    """The `pretrain` command: 0 on success, 1 if training failed, 2 on a bad config."""
    from speechadapt.config_io import ConfigError, dump

    try:
        cfg = load_config(args.config, _overrides(args)).resolved()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if getattr(args, "print_config", False):
        print(dump(cfg), end="")
        return 0
    problem = _preflight(cfg)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        summary = pretrain(cfg, command=_command(args))
    except Exception as e:  # TrainingFailedError and friends: report, don't dump a Ray traceback on users
        print(f"error: pretraining failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"wrote {summary['out']}: dev WER {summary['dev_wer']:.1%} (best at step {summary['best_step']}), "
          f"{summary['steps']} steps on {summary['workers']} workers in {summary['wall_seconds']:.0f} s"
          + (f", resumed {summary['restarts']}x from steps {summary['resumed_from_steps']}" if summary["restarts"] else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m speechadapt.training.pretrain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return run(ap.parse_args(argv))


def _preflight(cfg: PretrainConfig) -> str | None:
    for key in ("train_manifest", "dev_manifest"):
        if not Path(getattr(cfg, key)).is_file():
            return f"{key} not found: {getattr(cfg, key)}"
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite and (not out.is_dir() or any(out.iterdir())):
        return f"{out} already exists; pick another out/version or set overwrite=true"
    return None


# ---------------------------------------------------------------------------------------------------------
# Driver


def pretrain(cfg: PretrainConfig, *, command: str = "") -> dict:
    """Run the Ray Train job for a `resolved()` config; returns rank 0's summary (see `_worker_loop`).

    Uses the caller's Ray if `ray.is_initialized()`, else connects to `cfg.ray_address` / $RAY_ADDRESS, else
    starts a local head bound to 127.0.0.1 (temp dir under storage_path) and shuts it down afterwards."""
    local = _local_head_wanted(cfg)
    undo_loopback = _loopback_only() if local else None  # before `import ray` where possible: read at import

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.train.v2.api.config import LoggingConfig

    if not _is_uri(cfg.storage_path):
        run_dir = Path(cfg.storage_path) / cfg.run_name
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        if run_dir.exists() and not cfg.resume:
            shutil.rmtree(run_dir)
        elif run_dir.exists():
            print(f"continuing the run in {run_dir} (set resume=false to start over)", flush=True)
    shutdown, temp_to_remove = _connect(cfg, local)
    try:
        use_gpu = cfg.gpus_per_worker > 0
        resources = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if use_gpu else {})}
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"cfg": cfg, "command": command, "started": time.time()},
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker=resources),
            run_config=RunConfig(
                name=cfg.run_name,
                storage_path=cfg.storage_path,
                failure_config=FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                logging_config=LoggingConfig(log_level=cfg.log_level),
            ),
        )
        result = trainer.fit()
        summary = result.return_value
        if not isinstance(summary, dict):
            raise RuntimeError(f"rank 0 returned no summary (got {summary!r}); see the run in {cfg.storage_path}")
        return summary
    finally:
        if shutdown:
            ray.shutdown()
        if temp_to_remove:
            shutil.rmtree(temp_to_remove, ignore_errors=True)
        if undo_loopback:
            undo_loopback()


# On Linux, ray.init(_node_ip_address="127.0.0.1") still registers the node under the host's routable IP and its
# servers listen on all interfaces (Ray "resolves" localhost to a remotely reachable IP). Ray's single-machine
# mode (the Windows/macOS default) keeps everything on loopback: node IP 127.0.0.1, servers bound to 127.0.0.1,
# and torch.distributed's MASTER_ADDR 127.0.0.1. Child processes (GCS, raylet, workers) inherit the variable.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _local_head_wanted(cfg: PretrainConfig) -> bool:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return False
    return not (cfg.ray_address or os.environ.get("RAY_ADDRESS"))


def _loopback_only():
    """Switch a local head to loopback only; returns a function that undoes it (for this process)."""
    saved = os.environ.get(LOOPBACK_ENV)
    os.environ[LOOPBACK_ENV] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    flag = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if constants is not None:  # ray was imported before us: its constant is already read
        constants.ENABLE_RAY_CLUSTER = False

    def undo() -> None:
        if saved is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = saved
        if constants is not None:
            constants.ENABLE_RAY_CLUSTER = flag

    return undo


def _connect(cfg: PretrainConfig, local: bool) -> tuple[bool, str | None]:
    """Make sure this process is a Ray driver. Returns (ours to shut down, temp dir to remove)."""
    import ray

    if ray.is_initialized():
        return False, None
    if not local:
        ray.init(address=cfg.ray_address or os.environ["RAY_ADDRESS"])
        return True, None
    # Ray puts unix sockets under the temp dir and they must stay under 107 bytes: fall back to a short /tmp path.
    temp = Path(cfg.storage_path) / ".ray"
    remove = None
    if _is_uri(cfg.storage_path) or len(str(temp)) > 40:
        temp = Path(tempfile.mkdtemp(prefix="sa-ray-"))
        remove = str(temp)
    temp.mkdir(parents=True, exist_ok=True)
    cpus = max(os.cpu_count() or 1, math.ceil(cfg.workers * cfg.cpus_per_worker))
    # The dashboard (on 127.0.0.1) serves the state API that Ray Train's placement-group cleaner polls.
    ray.init(_node_ip_address="127.0.0.1", _temp_dir=str(temp), num_cpus=cpus,
             include_dashboard=True, dashboard_host="127.0.0.1")
    return True, remove


# ---------------------------------------------------------------------------------------------------------
# Per-worker training


def _worker_loop(config: dict) -> dict | None:
    import torch
    import torch.distributed as dist
    import ray
    import ray.train
    import ray.train.torch

    from speechadapt.asr.beam import BeamDecoder
    from speechadapt.asr.model import ConformerCTC
    from speechadapt.asr.package import lexicon_from_texts
    from speechadapt.asr.text import CharTokenizer
    from speechadapt.config_io import to_dict
    from speechadapt.training.loop import Trainer, feature_stats, load_examples, lr_at

    cfg: PretrainConfig = config["cfg"]
    tc = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    distributed = world > 1 and dist.is_available() and dist.is_initialized()
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    _quiet_reports(cfg.log_level)

    def log(msg: str) -> None:
        if rank == 0:  # straight to stdout (Ray streams it to the driver); Ray Train's print patch would log it twice
            sys.stdout.write(f"[pretrain] {msg}\n")
            sys.stdout.flush()

    gather = rank_gather(world)
    t_start = time.monotonic()
    torch.manual_seed(tc.seed)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
    tokenizer = CharTokenizer()
    train = load_examples(cfg.train_manifest, tokenizer, tc.features)
    dev = load_examples(cfg.dev_manifest, tokenizer, tc.features)
    net = ConformerCTC(tc.model)
    mean, std = feature_stats(train)  # the same data on every rank: the same statistics
    net.feat_mean.copy_(mean)
    net.feat_std.copy_(std)
    model = ray.train.torch.prepare_model(net)  # moves net to the device; DDP when world > 1
    lexicon = lexicon_from_texts(e.text for e in train)  # what the package ships and serving searches over
    trainer = Trainer(tc, net, tokenizer, train, dev, model=model, rank=rank, world_size=world, gather=gather,
                      decoder=BeamDecoder(tokenizer, lexicon))
    # Per-rank streams for dropout and SpecAugment; the batch/chunk RNG (trainer.rng) stays shared.
    torch.manual_seed(tc.seed + 1009 * (rank + 1))
    trainer.gen.manual_seed(tc.seed + 1009 * (rank + 1))
    train_hours = sum(e.feats.shape[0] for e in train) * tc.features.frame_shift_ms / 1000 / 3600
    log(f"rank 0 of {world}: {len(train)} train / {len(dev)} dev utterances ({train_hours:.2f} h), "
        f"{net.num_parameters():,} parameters, loaded in {time.monotonic() - t_start:.1f} s")

    meta = {"restarts": 0, "resumed_from_steps": [], "train_seconds": 0.0, "best_step": 0, "best_cer": float("nan"),
            "last_wer": float("nan"), "last_loss": float("nan")}
    restored = restore_checkpoint(trainer, rank, world)
    if restored is not None:
        meta = restored
        log(f"resumed from the checkpoint at step {trainer.step_no} (restart {meta['restarts']}, best dev WER {trainer.best_wer:.1%})")

    run_dir = f"{cfg.storage_path.rstrip('/')}/{cfg.run_name}"
    marker = Path(run_dir) / FAULT_MARKER  # fail_at_step requires local storage (resolved() checks)
    t_attempt, seconds_before = time.monotonic(), meta["train_seconds"]
    losses: list[float] = []
    while trainer.step_no < tc.max_steps:
        losses.append(trainer.step())
        step = trainer.step_no
        if cfg.fail_at_step and step == cfg.fail_at_step and rank == cfg.fail_rank % world and not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"rank {rank} exited at step {step}\n")
            sys.stdout.write(f"[pretrain] fault injection: rank {rank} exits after step {step}\n")
            sys.stdout.flush()
            time.sleep(3.0)  # let the controller take in the last report, then die like a lost node would
            os._exit(1)
        if step % cfg.checkpoint_every and step < tc.max_steps:
            continue
        train_seconds = seconds_before + time.monotonic() - t_attempt
        loss_sum = torch.tensor([sum(losses), len(losses), float(tc.max_minutes > 0 and train_seconds > tc.max_minutes * 60)])
        if distributed:
            loss_sum = loss_sum.to(net.feat_mean.device)
            dist.all_reduce(loss_sum)  # mean loss over ranks; any rank over the time budget stops all
        loss = float(loss_sum[0] / loss_sum[1])
        out_of_time = bool(loss_sum[2] > 0)
        losses.clear()
        previous_best = trainer.best_wer
        wer = trainer.evaluate()
        if wer < previous_best:
            meta["best_step"], meta["best_cer"] = step, trainer.last_cer
        meta.update(train_seconds=train_seconds, last_wer=wer, last_loss=loss)
        event = {"step": step, "total_steps": tc.max_steps, "loss": round(loss, 4), "dev_wer": wer,
                 "dev_cer": trainer.last_cer, "lr": lr_at(step - 1, tc), "elapsed_s": round(train_seconds, 1)}
        trainer.history.append(event)
        log(f"step {step}/{tc.max_steps}  loss {loss:.3f}  dev WER {wer:.1%} (best {trainer.best_wer:.1%})  {train_seconds:.0f} s")
        rng_states = gather({"gen": trainer.gen.get_state(), "torch": torch.get_rng_state()})
        metrics = {**event, "best_dev_wer": trainer.best_wer, "restarts": meta["restarts"]}
        report_checkpoint(rank, metrics, step, {"trainer": trainer.state_dict(), "rng": rng_states, "meta": meta},
                          {"progress.json": json.dumps({"step": step, "best_dev_wer": trainer.best_wer, **meta,
                                                        "history": trainer.history}, indent=1) + "\n"})
        if out_of_time:
            log(f"time budget of {tc.max_minutes} min used up at step {step}")
            break

    if rank != 0:
        return None
    if trainer.best_state is not None:
        net.load_state_dict(trainer.best_state)
    wall = time.time() - config["started"]
    dev_hours = sum(e.feats.shape[0] for e in dev) * tc.features.frame_shift_ms / 1000 / 3600
    metrics = {
        "dev_wer": trainer.best_wer,
        "dev_cer": meta["best_cer"],
        "final_dev_wer": meta["last_wer"],
        "final_train_loss": meta["last_loss"],
        "train_utterances": len(train),
        "train_hours": round(train_hours, 4),
        "dev_utterances": len(dev),
    }
    lineage = {
        "strategy": "pretrain",
        "training_data": f"{cfg.train_manifest} ({len(train)} utterances, {train_hours:.2f} h)",
        "dev_data": f"{cfg.dev_manifest} ({len(dev)} utterances, {dev_hours:.2f} h)",
        "steps": trainer.step_no,
        "best_step": meta["best_step"],
        "wall_seconds": round(wall, 1),
        "train_seconds": round(meta["train_seconds"], 1),
        "workers": world,
        "cpus_per_worker": cfg.cpus_per_worker,
        "gpus_per_worker": cfg.gpus_per_worker,
        "backend": "nccl" if cfg.gpus_per_worker > 0 else "gloo",
        "restarts": meta["restarts"],
        "resumed_from_steps": meta["resumed_from_steps"],
        "run": run_dir,
        "reproduce": config.get("command") or "",
        "software": f"torch {torch.__version__}, ray {ray.__version__}",
        "config": to_dict(cfg),
        "history": trainer.history,
    }
    export_package(Path(cfg.out), net.cpu().eval(), tokenizer, tc.features, overwrite=cfg.overwrite, name=cfg.name,
                   version=cfg.version, description=cfg.description, metrics=metrics, lineage=lineage,
                   lexicon=lexicon)
    log(f"wrote {cfg.out} (best dev WER {trainer.best_wer:.1%} at step {meta['best_step']})")
    return {"out": cfg.out, "dev_wer": trainer.best_wer, "best_step": meta["best_step"], "steps": trainer.step_no,
            "workers": world, "wall_seconds": round(wall, 1), "restarts": meta["restarts"],
            "resumed_from_steps": meta["resumed_from_steps"], "history": trainer.history}


def rank_gather(world: int):
    """`gather(obj) -> [obj of every rank]` (all_gather_object under DDP, else `[obj]`)."""
    import torch.distributed as dist

    distributed = world > 1 and dist.is_available() and dist.is_initialized()

    def gather(obj) -> list:
        if not distributed:
            return [obj]
        out = [None] * world
        dist.all_gather_object(out, obj)
        return out

    return gather


def report_checkpoint(rank: int, metrics: dict, step: int, payload: dict, extra_files: dict | None = None,
                      filename: str = CHECKPOINT_FILE) -> None:
    """`ray.train.report` at `step`: rank 0 saves `payload` (torch.save) and `extra_files` (name -> text) as the
    checkpoint; the other ranks report their metrics only."""
    import ray.train
    import torch
    from ray.train import Checkpoint

    name = f"checkpoint-{step:07d}"
    if rank != 0:
        ray.train.report(metrics, checkpoint_dir_name=name)
        return
    folder = Path(tempfile.mkdtemp(prefix="sa-ckpt-"))
    try:
        torch.save(payload, folder / filename)
        for fname, text in (extra_files or {}).items():
            (folder / fname).write_text(text)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(folder)), checkpoint_dir_name=name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def restore_checkpoint(trainer, rank: int, world: int) -> dict | None:
    """Load the last checkpoint reported through `ray.train.report` (if any) into `trainer` and this rank's RNGs.
    Returns the checkpoint's meta with the restart counted, or None when the run starts fresh."""
    import ray.train
    import torch

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        state = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    trainer.load_state_dict(state["trainer"])
    if len(state["rng"]) == world:
        trainer.gen.set_state(state["rng"][rank]["gen"])
        torch.set_rng_state(state["rng"][rank]["torch"])
    meta = dict(state["meta"])
    meta["restarts"] += 1
    meta["resumed_from_steps"] = list(meta["resumed_from_steps"]) + [trainer.step_no]
    trainer.history.append({"event": "resume", "step": trainer.step_no, "restarts": meta["restarts"]})
    return meta


def _quiet_reports(level: str) -> None:
    """Ray 2.60 logs every report at INFO under a logger named by file path, which LoggingConfig's filter
    (names starting "ray.train") misses; hold it to `level` too."""
    import logging

    try:
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(level.upper())
    except Exception:  # a private module: if it moved, the reports are only noisier
        pass


# ---------------------------------------------------------------------------------------------------------
# Export


def export_package(out: Path, net, tokenizer, features, *, overwrite: bool = False, **card):
    """`save_package` into a temp sibling of `out`, fsync, then rename it into place: readers of `out` see
    nothing or a whole package. An existing package is replaced only with `overwrite`."""
    from speechadapt.asr.package import save_package

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = None
    try:
        result = save_package(tmp, net, tokenizer, features, **card)
        fsync_dir(tmp)
        if out.exists():
            if out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            elif overwrite:
                old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
                os.rename(out, old)
            else:
                raise FileExistsError(f"{out} already exists (set overwrite=true to replace it)")
        os.rename(tmp, out)
        fsync_dir(out.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return result


if __name__ == "__main__":
    sys.exit(main())
