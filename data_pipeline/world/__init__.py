"""The embedded audio-visual world: the synthetic pretraining set and downstream tasks this repository trains
and evaluates on when no real video is at hand.

- `generator`: plans the world from one seed, renders its clips and writes its shards, world.json and
  task.json files (design.md, "Embedded world layout"); `generator.generate(output, ...)` is the Python API.
- `synth/`: the sound and picture synthesisers it renders clips with (speech, music, events, acoustics, video).
- `__main__`: the command line, `python -m data_pipeline.world --output DIR [--clips N] [--seed S]`.
"""
