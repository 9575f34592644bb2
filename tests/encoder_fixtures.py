"""One tiny trained-encoder workdir per test session (a real orbax checkpoint of tests/test_hear's tiny
config), shared by the tests of avcl.embed and avcl.export."""
import pytest

from tests.test_eval_checkpoint import write_checkpoint
from tests.test_hear import tiny_config


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("encoder") / "run")
  write_checkpoint(workdir, tiny_config(), step=7, seed=5)
  return workdir
