"""Multi-process JAX: start the distributed runtime, and feed each process its own slice of the global batch.

    from qwencoder_jax import distributed
    distributed.initialize()                     # from env / flags; a no-op for one process
    batch = distributed.global_batch(local_rows, mesh)

Design notes: docs/TRAINING.md, section `qwencoder_jax/distributed.py`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Sequence

import jax
import numpy as np

from qwencoder_jax import sharding

COORDINATOR_ENV = "QWENCODER_COORDINATOR"
NUM_PROCESSES_ENV = "QWENCODER_NUM_PROCESSES"
PROCESS_ID_ENV = "QWENCODER_PROCESS_ID"
HEARTBEAT_ENV = "QWENCODER_HEARTBEAT_TIMEOUT_SECONDS"

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: Sequence[int] | None = None
    # Seconds without a heartbeat before the coordinator declares a process dead (jax's default is 100).
    heartbeat_timeout_seconds: int = 100
    initialization_timeout_seconds: int = 300

    @classmethod
    def from_env(cls, **overrides: Any) -> "DistributedConfig":
        env = os.environ
        values: dict[str, Any] = {
            "coordinator_address": env.get(COORDINATOR_ENV),
            "num_processes": int(env[NUM_PROCESSES_ENV]) if NUM_PROCESSES_ENV in env else None,
            "process_id": int(env[PROCESS_ID_ENV]) if PROCESS_ID_ENV in env else None,
        }
        if HEARTBEAT_ENV in env:
            values["heartbeat_timeout_seconds"] = int(env[HEARTBEAT_ENV])
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)

    @property
    def explicit(self) -> bool:
        return self.coordinator_address is not None or self.num_processes is not None

    def validate(self) -> None:
        if not self.explicit:
            return
        missing = [name for name in ("coordinator_address", "num_processes", "process_id")
                   if getattr(self, name) is None]
        if missing:
            raise ValueError(f"multi-process run misconfigured: {missing} not set (flags, or env {COORDINATOR_ENV}, "
                             f"{NUM_PROCESSES_ENV}, {PROCESS_ID_ENV})")
        if not 0 <= self.process_id < self.num_processes:
            raise ValueError(f"process_id {self.process_id} is outside [0, num_processes={self.num_processes})")


def _on_tpu_vm() -> bool:
    # Cloud TPU VMs and GKE TPU pods export these; jax then finds the coordinator from the metadata server.
    return any(name in os.environ for name in ("TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID", "MEGASCALE_COORDINATOR_ADDRESS",
                                               "TPU_ACCELERATOR_TYPE"))


def initialize(config: DistributedConfig | None = None, **overrides: Any) -> bool:
    """Start jax.distributed if this is a multi-process run; True when it started. Call before any jax work."""
    config = config or DistributedConfig.from_env(**overrides)
    config.validate()
    if jax.distributed.is_initialized():
        return True
    if config.explicit:
        if config.num_processes == 1:
            return False
        platforms = os.environ.get("JAX_PLATFORMS", "") or str(jax.config.jax_platforms or "")
        if "cpu" in platforms or not _on_tpu_vm():
            # CPU collectives across processes need gloo; harmless for accelerator platforms.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address, num_processes=config.num_processes,
            process_id=config.process_id, local_device_ids=config.local_device_ids,
            initialization_timeout=config.initialization_timeout_seconds,
            heartbeat_timeout_seconds=config.heartbeat_timeout_seconds)
    elif _on_tpu_vm():
        jax.distributed.initialize(heartbeat_timeout_seconds=config.heartbeat_timeout_seconds)
    else:
        return False
    log.info("process %d of %d: %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return True


def process_rows(global_batch_size: int) -> slice:
    """The rows of the global batch this process loads (contiguous, in process order)."""
    count, index = jax.process_count(), jax.process_index()
    if global_batch_size % count:
        raise ValueError(f"global batch {global_batch_size} does not split over {count} processes")
    per_process = global_batch_size // count
    return slice(index * per_process, (index + 1) * per_process)


def global_batch(local_batch: dict[str, np.ndarray], mesh, rules=sharding.LOGICAL_AXIS_RULES) -> dict[str, jax.Array]:
    """Global arrays from each process's own rows (jax.make_array_from_process_local_data): no process ever
    holds, or reads, the rows of another. Rows are laid out over the mesh's batch axes."""
    out = {}
    for key, value in local_batch.items():
        value = np.asarray(value)
        data_sharding = sharding.data_sharding(mesh, value.ndim, rules)
        global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
        out[key] = jax.make_array_from_process_local_data(data_sharding, value, global_shape)
    return out
