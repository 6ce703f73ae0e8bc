"""Collectives scheduled after a communicating loop must be ordered against it (multi-process XLA:CPU deadlocks
otherwise; docs/reliability.md): the detector on a small program text, and the real train step of the documented
multi-process form."""

from __future__ import annotations

from pathlib import Path

import jax
import pytest

from qwencoder_jax import sharding
from qwencoder_jax.aot import compile as aot_compile
from qwencoder_jax.model.transformer import Transformer
from qwencoder_jax.train.collective_order import collectives_after_loops, unordered_collectives

ROOT = Path(__file__).resolve().parents[2]

BODY = """HloModule jit_step, is_scheduled=true

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}

%body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x.1 = f32[4]{0} get-tuple-element(%p), index=1
  %all-gather = f32[8]{0} %GATHER%(%x.1), channel_id=1, replica_groups={{0,1}}, dimensions={0}
  %slice = f32[4]{0} slice(%all-gather), slice={[0:4]}
  ROOT %t = (s32[], f32[4]{0}) tuple(%i, %slice)
}

%cond (q: (s32[], f32[4])) -> pred[] {
  %q = (s32[], f32[4]{0}) parameter(0)
  %j = s32[] get-tuple-element(%q), index=0
  %two = s32[] constant(2)
  ROOT %lt = pred[] compare(%j, %two), direction=LT
}

ENTRY %main (a: f32[4], b: f32[2]) -> (f32[4], f32[2]) {
  %a = f32[4]{0} parameter(0)
  %b = f32[2]{0} parameter(1)
  %zero = s32[] constant(0)
  %init = (s32[], f32[4]{0}) tuple(%zero, %a)
%ENTRY%
  ROOT %out = (f32[4]{0}, f32[2]{0}) tuple(%all-reduce, %collective-permute)
}
"""
WHILE = ('  %while = (s32[], f32[4]{0}) while(%init), condition=%cond, body=%body, '
         'backend_config={"known_trip_count":{"n":"2"}}\n  %h = f32[4]{0} get-tuple-element(%while), index=1')
PERMUTE = '  %collective-permute = f32[2]{0} collective-permute(%b), channel_id=2, source_target_pairs={{0,1},{1,0}}'
REDUCE = '  %all-reduce = f32[4]{0} all-reduce(%h), channel_id=3, replica_groups={{0,1}}, to_apply=%add'


def program(*entry: str, gather: str = "all-gather") -> str:
    return BODY.replace("%ENTRY%", "\n".join(entry)).replace("%GATHER%", gather)


def test_a_collective_after_a_communicating_loop_with_no_dependency_is_unordered():
    text = program(WHILE, PERMUTE, REDUCE)
    assert collectives_after_loops(text) == [("collective-permute", "while", False), ("all-reduce", "while", True)]
    assert unordered_collectives(text) == [("collective-permute", "while")]


def test_collectives_before_the_loop_or_around_a_silent_loop_are_ordered():
    assert unordered_collectives(program(PERMUTE, WHILE, REDUCE)) == []  # started before the loop on every process
    silent = program(WHILE, PERMUTE, REDUCE, gather="copy")  # the loop body communicates no more
    assert collectives_after_loops(silent) == [] and unordered_collectives(silent) == []


def test_a_program_text_without_an_entry_computation_is_named():
    with pytest.raises(ValueError, match="no ENTRY computation"):
        unordered_collectives("HloModule empty\n")


def _compiled_step(*bindings: str) -> str:
    config = aot_compile.build_config([str(ROOT / "gin/stages/stage1_file_level.gin"),
                                       str(ROOT / "gin/cpu/tiny.gin")], bindings)
    mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:4])
    lowered = aot_compile._train_lowering(config, Transformer(config.model), mesh, config.loader.batch_size * 2)[0]
    return lowered.compile().as_text()


def test_the_documented_multiprocess_step_orders_every_collective_after_its_loops():
    text = _compiled_step("MESH_SHAPE=(1,-1,1,1)")
    assert collectives_after_loops(text), "expected collectives after the layer loops to check"
    assert unordered_collectives(text) == []


@pytest.mark.slow  # one CPU compile each
@pytest.mark.parametrize("bindings", [("MESH_SHAPE=(2,-1,1,1)",), ("MESH_SHAPE=(1,2,2,1)",),
                                      ("MESH_SHAPE=(1,-1,1,1)", "TOKEN_CHUNK_SIZE=0", "HEAD_DTYPE=None"),
                                      ("MESH_SHAPE=(1,-1,1,1)", "TOKEN_CHUNK_SIZE=0", "VOCAB_CHUNK_SIZE=4096"),
                                      ("MESH_SHAPE=(1,-1,1,1)", "ACCUMULATION_STEPS=2")],
                         ids=["data-fsdp", "fsdp-tensor", "plain-loss", "vocab-chunks", "accumulation"])
def test_other_meshes_and_losses_order_their_collectives(bindings):
    assert unordered_collectives(_compiled_step(*bindings)) == []
