"""Coarse-to-fine SFT: two gin-selected phases, the fine one initialised from the coarse one's workdir."""

from pathlib import Path

import gin

from qwencoder_apps import train as cli

GIN_DIR = Path(__file__).resolve().parents[2] / "gin"


def build(stage, bindings, tmp_path):
    cli.parse([str(GIN_DIR / "stages" / stage), str(GIN_DIR / "models/small.gin")],
              bindings + ["BATCH_SIZE = 2", "TOTAL_STEPS = 1000"])
    try:
        return cli.build(str(tmp_path))[0]
    finally:
        gin.clear_config()


def test_coarse_then_fine_phases_chain_their_weights(tmp_path):
    coarse = build("stage3_sft_coarse.gin", ['SFT_DIR = "/data/sft_coarse"', 'STAGE2_WORKDIR = "/runs/stage2"'],
                   tmp_path)
    fine = build("stage3_sft_fine.gin", ['SFT_DIR = "/data/sft_fine"', 'SFT_COARSE_WORKDIR = "/runs/coarse"'],
                 tmp_path)
    assert coarse.init_from == "/runs/stage2" and fine.init_from == "/runs/coarse"
    assert [(s.name, s.dataset_dir, s.kind) for s in coarse.data_sources] == [("sft_coarse", "/data/sft_coarse", "sft")]
    assert [(s.name, s.dataset_dir, s.kind) for s in fine.data_sources] == [("sft_fine", "/data/sft_fine", "sft")]
    assert coarse.mixture == "sft_coarse" and fine.mixture == "sft_fine"
    assert fine.optimizer.peak_learning_rate < coarse.optimizer.peak_learning_rate
    assert coarse.loader.sequence_length == fine.loader.sequence_length == 8192
