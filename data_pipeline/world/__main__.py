"""python -m data_pipeline.world --output DIR [--clips N] [--task-clips M] [--seed S] [--workers W].

See `generator.main`.
"""
import sys

from data_pipeline.world import generator

if __name__ == "__main__":
  sys.exit(generator.main())
