"""python -m data_pipeline.world --output DIR [--clips N] [--seed S] [--workers W]: see `generator.main`."""
import sys

from data_pipeline.world import generator

if __name__ == "__main__":
  sys.exit(generator.main())
