"""Test-session setup that must happen before jax is imported anywhere."""

import os

# Eight fake CPU devices, so sharding tests can build real meshes on one machine.
_DEVICE_FLAG = "--xla_force_host_platform_device_count=8"
if _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICE_FLAG}".strip()
