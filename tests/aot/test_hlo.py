"""Reading compiled HLO text (qwencoder_jax.aot.hlo) on a hand-written module; the real compiled step is read in
tests/aot/test_aot.py (test_collectives_are_counted_per_layer_of_the_scanned_loop)."""

from qwencoder_jax.aot import hlo

MODULE = """HloModule step

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b)
}

%cond (p: (s32[], f32[8])) -> pred[] {
  %p = (s32[], f32[8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[]{:T(128)} constant(5)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%all-reduce-scatter.1 (x: f32[64]) -> f32[16] {
  %x = f32[64]{0} parameter(0)
  %whole = f32[64]{0} all-reduce(%x), channel_id=1, to_apply=%add
  %offset = u32[] constant(0)
  ROOT %part = f32[16]{0} dynamic-slice(%whole, %offset), dynamic_slice_sizes={16}
}

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]) parameter(0)
  %w = bf16[4,128]{1,0} constant({...})
  %ag = (bf16[4,128]{1,0:T(8,128)(2,1)}, bf16[16,128]{1,0:T(8,128)(2,1)}) all-gather-start(bf16[4,128]{1,0} %w), dimensions={0}
  %g = f32[64]{0} constant({...})
  %rs = f32[16]{0} fusion(%g), kind=kCustom, calls=%all-reduce-scatter.1, backend_config={"collective_algorithm_config":{"emitter":"AllReduceScatterFusion"}}
  ROOT %next = (s32[], f32[8]) tuple(%i1, %v)
}

ENTRY %main (x: f32[8], y: f32[1024]) -> f32[8] {
  %zero = s32[] constant(0)
  %start = s32[]{:T(128)} copy(%zero)
  %x = f32[8]{0} parameter(0)
  %init = (s32[], f32[8]) tuple(%start, %x)
  %loop = (s32[], f32[8]) while(%init), condition=%cond, body=%body
  %known = (s32[], f32[8]) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %cp = (f32[8]{0}, f32[8]{0}, u32[], u32[]) collective-permute-start(f32[8]{0} %x), channel_id=2
  %y = f32[1024]{0} parameter(1)
  %ar = f32[1024]{0} all-reduce(f32[1024]{0} %y), to_apply=%add
  ROOT %k = f32[8]{0} custom-call(f32[8]{0} %x), custom_call_target="tpu_custom_call"
}
"""


def test_collectives_are_weighted_by_the_loops_trip_counts():
    figures, trips = hlo.collectives(MODULE)
    assert trips == [5, 3]  # `i < 5` from a start of 0 (through a copy); XLA's known_trip_count
    # the body's all-gather runs 5 + 3 times; an async start's result is its tuple's second element
    assert figures["all-gather"] == {"count": 8, "bytes": 8 * 16 * 128 * 2}
    # the reduce-scatter fusion counts as one reduce-scatter of its scattered result, not as its inner all-reduce
    assert figures["reduce-scatter"] == {"count": 8, "bytes": 8 * 16 * 4}
    assert figures["all-reduce"] == {"count": 1, "bytes": 1024 * 4}
    assert figures["collective-permute"] == {"count": 1, "bytes": 8 * 4}
    assert figures["all-to-all"] == {"count": 0, "bytes": 0}
    assert hlo.mosaic_kernels(MODULE) == 1


def test_an_unreadable_trip_count_counts_the_body_once():
    figures, trips = hlo.collectives(MODULE.replace("direction=LT", "direction=NE"))
    assert trips == [None, 3] and figures["all-gather"]["count"] == 1 + 3


ASYNC_MODULE = """HloModule step

%start.1 (w: bf16[8,128]) -> (bf16[8,128], bf16[64,128], u32[]) {
  %w = bf16[8,128]{1,0} parameter(0)
  %ag.1 = bf16[64,128]{1,0} all-gather(%w), channel_id=7, dimensions={0}
  ROOT %s = (bf16[8,128]{1,0}, bf16[64,128]{1,0}, u32[]) custom-call(%ag.1), custom_call_target="AsyncCollectiveStart"
}

%async_collective_fusion.1 (w: bf16[8,128], x: f32[16,16]) -> (f32[16,16], bf16[64,128]) {
  %w = bf16[8,128]{1,0} parameter(0)
  %x = f32[16,16]{1,0} parameter(1)
  %ag.2 = bf16[64,128]{1,0} all-gather(%w), channel_id=7, dimensions={0}
  ROOT %t = (f32[16,16]{1,0}, bf16[64,128]{1,0}) tuple(%x, %ag.2)
}

%done.1 (w: bf16[8,128]) -> bf16[64,128] {
  %w = bf16[8,128]{1,0} parameter(0)
  %ag.3 = bf16[64,128]{1,0} all-gather(%w), channel_id=7, dimensions={0}
  ROOT %d = bf16[64,128]{1,0} custom-call(%w, %ag.3), custom_call_target="AsyncCollectiveDone"
}

ENTRY %main (w: bf16[8,128], x: f32[16,16]) -> (f32[16,16], bf16[64,128]) {
  %w = bf16[8,128]{1,0} parameter(0)
  %x = f32[16,16]{1,0} parameter(1)
  %start = (bf16[8,128]{1,0}, bf16[64,128]{1,0}, u32[]) fusion(%w), kind=kCustom, calls=%start.1
  %other = bf16[64,128]{1,0} all-gather(%w), channel_id=7, dimensions={0}
  %busy = (f32[16,16]{1,0}, bf16[64,128]{1,0}) fusion(%w, %x), kind=kCustom, calls=%async_collective_fusion.1
  ROOT %done = bf16[64,128]{1,0} fusion(%w), kind=kCustom, calls=%done.1
}
"""


def test_an_async_collective_fusion_counts_its_collective_once():
    """libtpu's async collective fusion repeats one all-gather (one channel_id) in its start, continuation and done
    computations; another collective that reuses the channel id (XLA TPU does) still counts."""
    figures, _ = hlo.collectives(ASYNC_MODULE)
    assert figures["all-gather"] == {"count": 2, "bytes": 2 * 64 * 128 * 2}  # the async one, and %other


def test_fingerprints_ignore_constant_values_only():
    other = MODULE.replace("constant(5)", "constant(7)")
    assert hlo.fingerprint(other) == hlo.fingerprint(MODULE)
    assert hlo.constant_differences(MODULE, other) == [("5", "7")]
    assert hlo.collectives(other)[1] == [7, 3]
    reshaped = MODULE.replace("f32[1024]", "f32[2048]")
    assert hlo.fingerprint(reshaped) != hlo.fingerprint(MODULE)
    assert hlo.constant_differences(MODULE, reshaped) is None
    stablehlo = "%c = stablehlo.constant dense<2.000000e-05> : tensor<f32>"
    assert hlo.constant_differences(stablehlo, stablehlo.replace("2.0", "7.0")) == [("2.000000e-05", "7.000000e-05")]
