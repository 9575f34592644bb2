r"""The ingest of `data_pipeline.ingest` as an Apache Beam pipeline, for more videos than one machine converts.

    bash scripts/setup_beam.sh  # its own venv, .venv-beam: apache-beam pins an older protobuf than TF 2.21
    # Locally (DirectRunner, several processes), from the repository root:
    .venv-beam/bin/python -m data_pipeline.beam_ingest --input videos.csv --output /data/audioset \
        --direct_num_workers 8 --direct_running_mode multi_processing
    # On Dataflow (any Beam runner flag passes through; workers install avcl from setup.py):
    .venv-beam/bin/python -m data_pipeline.beam_ingest --input audioset_train.csv --output gs://BUCKET/audioset/train \
        --runner DataflowRunner --project P --region us-central1 --temp_location gs://BUCKET/tmp \
        --setup_file ./setup.py --max_num_workers 500

The per-video work is `data_pipeline.ingest.convert_job` (so `convert_video`), unchanged, run in a decoder
process per DoFn instance (`ingest.WorkerPool`, under `--timeout-s`): a crash or a hang is a `crash` or
`timeout` skip that flows to its shard's summary and the manifest like any other, not a failed job. The
shard plan (input i goes to shard i // --shard-clips, records in input order), the per-shard summaries, the resume
state and `manifest.json` are those of the local path (`ingest.shard_summary`, `ingest.build_manifest`,
the same `.ingest/` files and fingerprint), so both paths write the same shards and manifest and either
can resume the other's output. Flags are the local ingest's (see `python -m data_pipeline.ingest --help`);
`--strict` cannot stop a distributed run at the first bad input, so it fails the run at the end instead.

Pipeline: the driver reads the input list and writes it as JSON lines to `OUTPUT/.ingest/<split>-jobs.jsonl`
(so the job list is not baked into the pipeline graph; millions of rows are fine), then
    ReadFromText(jobs) -> keep pending shards -> Reshuffle (spread videos over workers)
    -> convert_job in a decoder process -> (shard, (index, records or skip)) -> GroupByKey
    -> write shard + summary (temp name, rename)
and finally builds the manifest from the summaries. Output and input paths may be any Beam file system
(`gs://...` with apache-beam[gcp]); remote videos (CSV rows with `gs://` paths) are copied to a local temp
file for PyAV. Input folders must be local; list remote videos in a CSV.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

from data_pipeline import ingest, optional, paths, schema

log = logging.getLogger("data_pipeline.beam_ingest")


# ---- file system helpers: Beam's FileSystems, so gs:// (and hdfs://, s3://) work as local paths do ----------

def _join(base: str, *parts: str) -> str:
  from apache_beam.io.filesystems import FileSystems  # Deferred: optional (the beam extra).
  return FileSystems.join(base, *parts)


def _makedirs(path: str) -> None:
  if not paths.is_remote(path):  # Object stores have no folders to make.
    os.makedirs(path, exist_ok=True)


def _exists(path: str) -> bool:
  from apache_beam.io.filesystems import FileSystems  # Deferred: optional (the beam extra).
  return FileSystems.exists(path)


def _read_bytes(path: str) -> bytes:
  from apache_beam.io.filesystems import FileSystems  # Deferred: optional (the beam extra).
  with FileSystems.open(path, compression_type="uncompressed") as f:
    return f.read()


def _write_atomic(path: str, write) -> None:
  """Calls `write(file)` on a temporary name next to `path`, then renames it to `path`.

  As in the local path, a crash leaves at most a `*.tmp-*` file, never a partial file under the final name.
  """
  from apache_beam.io.filesystems import FileSystems  # Deferred: optional (the beam extra).
  tmp = f"{path}.tmp-{os.getpid()}-{time.monotonic_ns()}"
  try:
    with FileSystems.create(tmp, compression_type="uncompressed") as f:
      write(f)
    if FileSystems.exists(path):  # GCS renames are copy+delete and refuse to overwrite.
      FileSystems.delete([path])
    FileSystems.rename([tmp], [path])
  finally:
    if FileSystems.exists(tmp):
      FileSystems.delete([tmp])


def _write_json(path: str, obj) -> None:
  data = json.dumps(obj, indent=1).encode("utf-8")
  _write_atomic(path, lambda f: f.write(data))


def write_tfrecords(path: str, records: Sequence[bytes]) -> int:
  """TFRecord framing (as tf.io.TFRecordWriter writes it) through Beam's file systems; returns the count."""
  # Deferred: optional (the beam extra). The framing + masked CRC32C Beam's own sink uses.
  from apache_beam.io.tfrecordio import _TFRecordUtil

  def write(f):
    for r in records:
      _TFRecordUtil.write_record(f, r)
  _write_atomic(path, write)
  return len(records)


# ---- the plan (driver side) -----------------------------------------------------------------------------

@dataclasses.dataclass
class Plan:
  jobs_path: str  # JSON lines {"index": i, "job": {...}}.
  num_inputs: int
  num_shards: int
  pending: list[int]  # Shards still to write.
  shard_paths: list[str]
  summary_paths: list[str]
  vocabulary: list[str]


def _job_from_dict(d: dict) -> ingest.Job:
  return ingest.Job(**{**d, "labels": tuple(d["labels"]), "label_index": tuple(d["label_index"])})


def make_plan(input_path: str, output: str, *, labels_csv: str | None, options: ingest.Options,
              shard_clips: int, split: str) -> Plan:
  """Reads the inputs, checks or writes the resume fingerprint, writes labels.csv and the job list."""
  options.validate()
  ingest.check_split(split)
  if shard_clips < 1:
    raise ValueError(f"shard_clips must be >= 1, got {shard_clips}.")
  jobs, vocabulary = ingest.read_inputs(input_path, labels_csv)
  # CSV rows naming remote videos (gs://...) are not relative paths: keep them as written.
  jobs = [dataclasses.replace(j, path=j.video_id) if paths.is_remote(j.video_id) else j for j in jobs]
  num_shards = math.ceil(len(jobs) / shard_clips)
  state = _join(output, ingest.STATE_DIR)
  _makedirs(state)
  # The same fingerprint and plan file as the local path, so either path resumes the other's output.
  fingerprint = ingest._fingerprint(jobs, options, shard_clips, split)  # pylint: disable=protected-access
  plan_path = _join(state, "plan.json")
  if _exists(plan_path):
    if json.loads(_read_bytes(plan_path))["fingerprint"] != fingerprint:
      raise ingest.IngestError(f"{output!r} holds an ingest of other inputs or options (see {plan_path}); "
                               "use a new --output folder or delete that one.")
  else:
    _write_json(plan_path, {"fingerprint": fingerprint, "inputs": len(jobs), "shards": num_shards})
  labels = io.StringIO(newline="")
  csv.writer(labels).writerows([i, name] for i, name in enumerate(vocabulary))
  data = labels.getvalue().encode("utf-8")
  _write_atomic(_join(output, "labels.csv"), lambda f: f.write(data))

  shard_paths = [_join(output, schema.shard_name(split, k, num_shards)) for k in range(num_shards)]
  summary_paths = [_join(state, f"{split}-{k:05d}.json") for k in range(num_shards)]
  pending = [k for k in range(num_shards) if not (_exists(shard_paths[k]) and _exists(summary_paths[k]))]
  jobs_path = _join(state, f"{split}-jobs.jsonl")
  lines = "".join(json.dumps({"index": i, "job": dataclasses.asdict(j)}) + "\n" for i, j in enumerate(jobs))
  encoded = lines.encode("utf-8")
  _write_atomic(jobs_path, lambda f: f.write(encoded))
  return Plan(jobs_path, len(jobs), num_shards, pending, shard_paths, summary_paths, vocabulary)


# ---- the pipeline's steps (worker side) -----------------------------------------------------------------

def convert_remote_or_local(job: ingest.Job, options: ingest.Options, pool: ingest.WorkerPool | None = None,
                            index: int = 0, convert_job=ingest.convert_job) -> dict:
  """`ingest.convert_job`, after copying a remote video to a local temp file that PyAV can open.

  With `pool` (what the pipeline does) the conversion runs in the pool's worker process under its time
  limit, so a decoder that crashes or hangs costs this element only (a `crash` or `timeout` skip), as in the
  local ingest, instead of killing or stalling the Beam worker (whose retries would fail the whole job on
  the same input). `convert_job`: as `ingest.ingest`'s `convert` (a module-level function).
  """
  def convert(local_job):
    if pool is None:
      return convert_job(local_job, options)
    return pool.run_one((index, local_job, options, convert_job))

  if not paths.is_remote(job.path):
    return convert(job)
  from apache_beam.io.filesystems import FileSystems  # Deferred: optional (the beam extra).
  suffix = os.path.splitext(job.path)[1]
  with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
    try:
      with FileSystems.open(job.path, compression_type="uncompressed") as src:
        shutil.copyfileobj(src, tmp)
      tmp.flush()
    except Exception as e:  # pylint: disable=broad-except
      return {"path": job.path, "seconds": 0.0,
              "skip": ingest.Skip(job.path, "unreadable", f"cannot copy: {type(e).__name__}: {e}").as_dict()}
    result = convert(dataclasses.replace(job, path=tmp.name))
  result["path"] = job.path  # Report the input as named, not the temp copy.
  if "skip" in result:
    result["skip"]["path"] = job.path
  return result


def write_shard(shard: int, items, *, plan: Plan, shard_clips: int) -> int:
  """All results of one shard -> its TFRecord file (records in input order) and its summary JSON."""
  results = [r for _, r in sorted(items, key=lambda x: x[0])]
  expected = min(plan.num_inputs, (shard + 1) * shard_clips) - shard * shard_clips
  if len(results) != expected:  # A lost or duplicated element would otherwise go unnoticed.
    raise RuntimeError(f"shard {shard}: got {len(results)} results for {expected} inputs")
  write_tfrecords(plan.shard_paths[shard], list(ingest.shard_records(results)))
  _write_json(plan.summary_paths[shard], ingest.shard_summary(results))
  return shard


def _convert_dofn(options: ingest.Options, shard_clips: int, timeout_s: float, convert_job):
  """A DoFn: (index, Job) -> (shard, (index, result)); each Beam worker thread keeps one decoder process."""
  import apache_beam as beam  # Deferred: optional (the beam extra).
  from apache_beam.metrics import Metrics  # Deferred: optional (the beam extra).

  class Convert(beam.DoFn):
    """Skips are results like records: they go to their shard's summary and so into manifest.json."""

    def setup(self):
      self.pool = ingest.WorkerPool(1, timeout_s)
      self.clips, self.skipped = Metrics.counter("ingest", "clips"), Metrics.counter("ingest", "skipped")

    def process(self, item):
      i, job = item
      result = convert_remote_or_local(job, options, self.pool, i, convert_job)
      if "skip" in result:
        s = result["skip"]
        self.skipped.inc()
        logging.getLogger("data_pipeline.beam_ingest").warning("Skipped %s: %s (%s)", s["path"], s["reason"],
                                                               s["detail"])
      else:
        self.clips.inc(len(result["records"]))
      yield i // shard_clips, (i, result)

    def teardown(self):
      self.pool.close()

  return Convert()


def build_pipeline(p, plan: Plan, options: ingest.Options, shard_clips: int,
                   timeout_s: float = ingest.DEFAULT_TIMEOUT_S, convert=ingest.convert_job):
  import apache_beam as beam  # Deferred: optional (the beam extra).
  pending = frozenset(plan.pending)

  def parse(line):
    d = json.loads(line)
    return d["index"], _job_from_dict(d["job"])

  return (p
          | "ReadJobs" >> beam.io.ReadFromText(plan.jobs_path)
          | "Parse" >> beam.Map(parse)
          | "PendingShards" >> beam.Filter(lambda item: item[0] // shard_clips in pending)
          | "Spread" >> beam.Reshuffle()
          | "Convert" >> beam.ParDo(_convert_dofn(options, shard_clips, timeout_s, convert))
          | "ByShard" >> beam.GroupByKey()
          | "WriteShard" >> beam.MapTuple(lambda k, items: write_shard(k, items, plan=plan,
                                                                        shard_clips=shard_clips)))


def run(input_path: str, output: str, *, labels_csv: str | None = None, options: ingest.Options | None = None,
        shard_clips: int = 256, split: str = "train", strict: bool = False,
        pipeline_args: Sequence[str] = (), timeout_s: float = ingest.DEFAULT_TIMEOUT_S,
        convert=ingest.convert_job) -> dict:
  """Plans, runs the Beam pipeline on the pending shards, writes and returns the manifest.

  Each input converts in a decoder process under `timeout_s` (see `convert_remote_or_local`); `convert`
  replaces `ingest.convert_job` as in `ingest.ingest` (tests use it to crash or hang a decoder).
  """
  import apache_beam as beam  # Deferred: optional (the beam extra).
  from apache_beam.options.pipeline_options import PipelineOptions  # Deferred: optional (the beam extra).
  options = options or ingest.Options()
  if not timeout_s > 0:
    raise ValueError(f"timeout_s must be > 0, got {timeout_s}.")
  t0 = time.perf_counter()
  plan = make_plan(input_path, output, labels_csv=labels_csv, options=options, shard_clips=shard_clips,
                   split=split)
  if len(plan.pending) < plan.num_shards:
    log.info("Resuming: %d of %d shards already written.", plan.num_shards - len(plan.pending), plan.num_shards)
  if plan.pending:
    args = list(pipeline_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
      args.append("--runner=DirectRunner")
    with beam.Pipeline(options=PipelineOptions(args)) as p:
      build_pipeline(p, plan, options, shard_clips, timeout_s, convert)
  summaries = [json.loads(_read_bytes(s)) for s in plan.summary_paths]
  manifest = ingest.build_manifest(summaries, num_inputs=plan.num_inputs, options=options, split=split,
                                   shards=plan.shard_paths, vocabulary=plan.vocabulary,
                                   elapsed_s=time.perf_counter() - t0)
  _write_json(_join(output, "manifest.json"), manifest)
  if strict and manifest["skipped"]:
    first = manifest["skipped"][0]
    raise ingest.IngestError(f"--strict: {manifest['skipped_count']} inputs skipped, first {first['path']}: "
                             f"{first['reason']} ({first['detail']})")
  return manifest


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m data_pipeline.beam_ingest", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="Unrecognised flags are Beam pipeline options (--runner, --project, ...).")
  p.add_argument("--input", required=True,
                 help="Folder of videos (local, recursive) or CSV path[,start_s,end_s,labels].")
  p.add_argument("--output", required=True, help="Output folder (local or gs://) for shards and manifest.json.")
  p.add_argument("--labels", default=None, help="Label vocabulary CSV: name, or index,name[,alias...] rows.")
  p.add_argument("--strict", action="store_true", help="Fail the run (at the end) if any input was skipped.")
  ingest.add_arguments(p)
  args, pipeline_args = p.parse_known_args(argv)
  optional.exit_if_missing("apache_beam", "python -m data_pipeline.beam_ingest")
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  options = ingest.options_from_args(args)
  try:
    m = run(args.input, args.output, labels_csv=args.labels, options=options, shard_clips=args.shard_clips,
            split=args.split, strict=args.strict, pipeline_args=pipeline_args, timeout_s=args.timeout_s)
  except (ingest.IngestError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(ingest.summary_line(m, _join(args.output, 'manifest.json')))
  return 0


if __name__ == "__main__":
  sys.exit(main())
