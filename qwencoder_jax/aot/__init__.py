"""Ahead-of-time compilation for TPU topologies on a CPU host (`python -m qwencoder_apps.aot --help`)."""
