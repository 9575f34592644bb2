"""benchmarks/compute_estimate.py on the tiny default-config encoders: XLA FLOPs are positive, linear in the
batch, grow with the video resolution, and the lowered count agrees with the compiled one."""
import pytest

from benchmarks import compute_estimate as ce
from configs import default


@pytest.fixture(scope="module")
def config():
  return default.get_config()


@pytest.mark.parametrize("enc", ["logmel", "video"])
def test_flops_positive_and_linear_in_batch(config, enc):
  r = ce.per_clip(config, config, enc, (2, 4))
  for kind in ("forward", "train"):
    assert r[kind] > 0
    assert r[f"{kind}_linearity"] < 0.03, (kind, r[f"{kind}_by_batch"])
  # The backward pass costs about twice the forward (weight and activation gradients).
  assert 2.0 < r["train"] / r["forward"] < 4.5


def test_video_flops_grow_with_resolution(config):
  flops = []
  for size in (16, 32, 64):
    c = default.get_config()
    c.data.frame_size = size
    flops.append(ce.encoder_flops(config, c, "video", 2)["forward"])
  assert flops[0] < flops[1] < flops[2]
  # Conv FLOPs scale with pixels: 4x the pixels is 2.5-4.5x the FLOPs (the pooled tail does not grow).
  assert 2.5 < flops[2] / flops[1] < 4.5


def test_lowered_count_matches_compiled(config):
  lowered = ce.encoder_flops(config, config, "video", 2)["forward"]
  compiled = ce.encoder_flops(config, config, "video", 2, compile=True)["forward"]
  assert abs(lowered - compiled) / compiled < 0.05


def test_bad_input_names_the_problem(config):
  with pytest.raises(ValueError, match="wave.name is empty"):
    ce.encoder_flops(config, config, "wave", 2)
  with pytest.raises(ValueError, match="batch must be >= 1"):
    ce.input_spec(config, "video", 0)
