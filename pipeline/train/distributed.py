"""Several processes (torchrun, accelerate launch): what SFTConfig needs for DDP or FSDP, and the launches refused.

transformers starts DDP by itself under a launcher, but on a CPU only with `use_cpu=True` (without it, every process
trains alone on the whole data set, world size 1). Each process takes per_device_train_batch_size samples a step, so
the global batch is that x gradient_accumulation_steps x processes; accelerate deals out the batches of one seeded
order in turn (rank r gets batches r, r + N, ...), and the loss is averaged over the tokens of all processes
(`average_tokens_across_devices`), so N processes of batch B train like one process of batch N x B.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import ConfigError, RunFailed

ONE_PROCESS_FIX = ("start several: distributed.processes=N, or torchrun --nproc_per_node N -m pipeline.train ... "
                   "(accelerate launch --cpu starts one process whatever --num_processes says), or distributed=none")


def check_launch(run: Any, context: Any, device: str) -> None:
    """Refuse, before any weight loads, a launch that cannot do what the distributed group asks."""
    dist = run.distributed
    if dist.backend == "nccl" and device != "cuda":
        raise ConfigError("distributed.backend", "nccl needs CUDA GPUs and this machine has none",
                          "use distributed.backend=auto (gloo on CPU)")
    if dist.strategy == "fsdp" and device != "cuda":
        # accelerate keeps an FSDP plugin for GPU process groups only: on CPU the trainer would run DDP, silently
        raise ConfigError("distributed", "fsdp shards over CUDA GPUs and this machine has none (accelerate would "
                          "drop the sharding and run DDP)", "use distributed=ddp on CPU (each process holds the "
                          "whole model)")
    if dist.strategy == "fsdp" and run.backend == "unsloth":
        # Unsloth's FSDP2 is its own launch mode (UNSLOTH_FSDP2=1), not transformers' fsdp arguments
        raise ConfigError("distributed", "fsdp runs on backend=hf only", "add backend=hf, or use distributed=ddp")
    if dist.strategy != "none" and context.world_size == 1:
        raise ConfigError("distributed", f"{dist.strategy} needs several processes and this is one", ONE_PROCESS_FIX)
    if context.world_size > 1 and context.multirun:
        raise ConfigError("hydra.mode", "a sweep (-m) cannot run inside a launch of several processes",
                          "launch each job of the sweep on its own: torchrun ... -m pipeline.train <one job's values>")


def trainer_kwargs(dist: Any, device: str, world_size: int) -> dict[str, Any]:
    """SFTConfig's arguments for the launch: the device always, the process group and sharding when several."""
    kwargs: dict[str, Any] = {"use_cpu": device == "cpu"}  # on CPU, DDP starts only with use_cpu
    if world_size == 1:
        return kwargs
    kwargs.update(ddp_backend=None if dist.backend == "auto" else dist.backend,
                  ddp_find_unused_parameters=dist.find_unused_parameters)
    if dist.strategy == "fsdp":
        kwargs.update(fsdp=True, fsdp_config={
            "version": 2,  # FSDP2 (per-parameter sharding: LoRA's trainable and frozen weights mix freely)
            "reshard_after_forward": dist.reshard_after_forward,
            "cpu_ram_efficient_loading": dist.cpu_ram_efficient_loading,
            "cpu_offload": dist.cpu_offload,
            "state_dict_type": "FULL_STATE_DICT",  # the adapter is saved whole, as with one process
        })
    return kwargs


def quant_storage(dist: Any, compute_dtype: Any) -> dict[str, Any]:
    """FSDP shards 4-bit weights only if they are stored in a float dtype, the same as the rest of the model."""
    return {"bnb_4bit_quant_storage": compute_dtype} if dist.strategy == "fsdp" else {}


# what gloo and NCCL say when a process of the launch is gone (not a timeout: a stalled peer is not a stopped one)
LOST_PEER = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "remote process exited",
             "ncclRemoteError")


def lost_peer(error: BaseException, world_size: int) -> ConfigError | None:
    """A collective that failed because another process of the launch is gone (killed, or stopped by its own error):
    one line saying so, instead of gloo's or NCCL's traceback; that process's own output says why."""
    sign = next((sign for sign in LOST_PEER if sign in str(error)), None)
    if world_size == 1 or sign is None:
        return None
    return RunFailed("distributed", f"another process of this launch stopped (its connection: {sign.lower()})",
                     "its own output says why; resume=auto continues from the newest complete checkpoint")

