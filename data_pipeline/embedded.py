"""The old name of `data_pipeline.world` (the embedded world's generator), kept so that existing scripts'
`python -m data_pipeline.embedded --output DIR ...` and `embedded.generate(...)` still work. New code: use
`python -m data_pipeline.world` and `data_pipeline.world.generator`."""
import sys

from data_pipeline.world.generator import generate, main  # noqa: F401  (generate: the old module's API)

if __name__ == "__main__":
  sys.exit(main())
