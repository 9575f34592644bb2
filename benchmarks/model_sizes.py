"""Prints parameter counts per encoder and head for the default config and the paper-size encoders.

    python -m benchmarks.model_sizes

Shapes only (`nnx.eval_shape`): nothing is allocated, so the full-size models print in seconds.
"""
from flax import nnx

from avcl.models import build_model, model_summary
from configs.default import get_config


def paper_size_model_config():
  """The paper-size encoders: CNN14 and Res1dNet31 (PANNs) and TSM-ResNet50 (MMV)."""
  c = get_config()
  c.model.logmel.update(name="cnn14", width=64, depth=6)
  c.model.wave.update(name="res1dnet31", width=64, depth=7)
  c.model.video.update(name="tsm_resnet", width=64, blocks=(3, 4, 6, 3), bottleneck=True, shift_fraction=0.125)
  return c


def main():
  for title, c in (("configs/default.py", get_config()), ("paper-size encoders", paper_size_model_config())):
    model = nnx.eval_shape(lambda c=c: build_model(c.model, c.audio, rngs=nnx.Rngs(0)))
    print(f"== {title} (embed_dim {c.model.embed_dim}, head_hidden {c.model.head_hidden})")
    print(model_summary(model))
    print()


if __name__ == "__main__":
  main()
