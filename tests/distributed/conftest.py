"""Shared by the multi-process tests."""

import pytest


@pytest.fixture(scope="module")
def stage1_data(tmp_path_factory):
    """Stage 1's three sources in the data pipelines' output layout (shards + manifest): stdlib code, docs, math."""
    import data_helpers

    root = tmp_path_factory.mktemp("stage1_data")
    data_helpers.write_code_files(root / "code", limit=20)
    data_helpers.write_text(root / "text", limit=10)
    data_helpers.write_text(root / "math", kind="math", limit=10)
    return root
