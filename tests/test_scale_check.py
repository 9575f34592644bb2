"""benchmarks/scale_check.py: reading collectives out of optimised HLO, and one real point end to end."""
import pytest

from benchmarks import scale_check

# A hand-written module in the optimised-HLO text format: an all-gather in the entry computation, a
# conditional whose branches move different amounts (one runs), a loop with a known trip count, and an
# async all-reduce.
HLO = """HloModule jit_step, num_partitions=4

%branch_small (p: f32[8,10]) -> f32[8,10] {
  %p = f32[8,10]{1,0} parameter(0)
  ROOT %cp = f32[8,10]{1,0} collective-permute(%p), channel_id=1, source_target_pairs={{0,1},{1,2},{2,3},{3,0}}
}

%branch_big (p: f32[8,10]) -> f32[8,10] {
  %p = f32[8,10]{1,0} parameter(0)
  %cp1 = f32[8,10]{1,0} collective-permute(%p), channel_id=2, source_target_pairs={{0,2},{1,3},{2,0},{3,1}}
  ROOT %cp2 = f32[8,10]{1,0} collective-permute(%cp1), channel_id=3, source_target_pairs={{0,2},{1,3},{2,0},{3,1}}
}

%body (t: (s32[], f32[16])) -> (s32[], f32[16]) {
  %t = (s32[], f32[16]{0}) parameter(0)
  %x = f32[16]{0} get-tuple-element(%t), index=1
  %ar = f32[16]{0} all-reduce(%x), channel_id=4, replica_groups=[1,4]<=[4], to_apply=%add
  %i = s32[] get-tuple-element(%t), index=0
  ROOT %out = (s32[], f32[16]{0}) tuple(%i, %ar)
}

ENTRY %main (a: f32[8,10], s: s32[]) -> f32[32,10] {
  %a = f32[8,10]{1,0} parameter(0)
  %s = s32[] parameter(1)
  %c = f32[8,10]{1,0} conditional(%s, %a, %a), branch_computations={%branch_small, %branch_big}
  %w = (s32[], f32[16]{0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %rs = bf16[2,10]{1,0} reduce-scatter(%b), channel_id=5, replica_groups={{0,1,2,3}}, dimensions={0}
  %ars = f32[4]{0} all-reduce-start(%v), channel_id=6, replica_groups=[1,4]<=[4], to_apply=%add
  %ard = f32[4]{0} all-reduce-done(%ars)
  ROOT %ag = f32[32,10]{1,0} all-gather(%c), channel_id=7, replica_groups=[1,4]<=[4], dimensions={0}
}
"""


def test_parse_collectives_counts_what_one_step_runs():
  found = scale_check.parse_collectives(HLO)
  kinds = sorted(c["kind"] for c in found["instances"])
  assert kinds == ["all-gather", "all-reduce", "all-reduce", "collective-permute", "collective-permute",
                   "collective-permute", "reduce-scatter"]
  step = found["per_step"]
  assert step["all-gather"] == [1, 32 * 10 * 4]
  assert step["collective-permute"] == [2, 2 * 8 * 10 * 4]  # The larger branch only.
  assert step["all-reduce"] == [3 + 1, 3 * 16 * 4 + 4 * 4]  # Loop body x 3, plus the async one once.
  assert step["reduce-scatter"] == [1, 4 * 2 * 10 * 2]  # Its input: the result times the group size.
  assert step["all-to-all"] == [0, 0]


def test_array_bytes_reads_tuples_and_dtypes():
  assert scale_check.array_bytes("(f32[2,3]{1,0}, bf16[4]{0}, u8[5], pred[])") == [24, 8, 5, 1]


def test_stablehlo_stats_counts_convolutions_and_im2col_matmuls():
  text = "\n".join([
      '%0 = stablehlo.convolution(%a, %w) dim_numbers = [b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f], '
      'window = {stride = [1, 1]} : (tensor<8x4x4x3xf32>, tensor<3x3x3x8xf32>) -> tensor<8x4x4x8xf32>',
      '%1 = stablehlo.convolution(%b, %w) dim_numbers = [b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f], '
      'window = {stride = [1, 1]} : (tensor<8x4x4x3xf32>, tensor<3x3x3x8xf32>) -> tensor<8x4x4x8xf32>',
      '%2 = stablehlo.dot_general %p, %k, contracting_dims = [3] x [0] : (tensor<8x2x2x27xf32>, '
      'tensor<27x8xf32>) -> tensor<8x2x2x8xf32>',
      '%3 = stablehlo.dot_general %x, %y, contracting_dims = [1] x [0] : (tensor<8x27xf32>, '
      'tensor<27x8xf32>) -> tensor<8x8xf32>',
      '%4 = stablehlo.custom_call @Sharding(%x) : (tensor<8x8xf32>) -> tensor<8x8xf32>',
  ])
  stats = scale_check.stablehlo_stats(text)
  assert stats["convolutions"] == 2 and stats["distinct_convolutions"] == 1
  assert stats["im2col_matmuls"] == 1
  assert stats["custom_call_targets"] == {"Sharding": 1}


@pytest.mark.parametrize("partner, moves", [("global", True), ("local", False)])
def test_one_point_end_to_end(partner, moves):
  """A child process with 2 simulated devices compiles the tiny config's step and reports its figures."""
  r = scale_check.run_point("configs.test_tiny", 2, 16, False, [f"augment.mix.partner='{partner}'"],
                            hlo_stats=False, timeout_s=600)
  assert "error" not in r, r
  assert r["devices"] == 2 and r["per_device_batch"] == 8 and r["mix_partner"] == partner
  assert r["peak_bytes"] >= r["argument_bytes"] > 0 and r["flops"] > 0 and r["compile_s"] > 0
  assert r["collectives"]["all-reduce"][0] > 0  # Gradients (and synchronised BatchNorm statistics).
  assert r["collectives"]["all-gather"][0] > 0  # The loss's embeddings.
  assert (r["collectives"]["collective-permute"][1] > 0) == moves  # Mixing partners from the other device.
