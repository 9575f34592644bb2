"""The import graph documents the layers (docs/design.md, "Where things live").

Read from the source with `ast` (nothing is imported):
  * every import in `avcl/` and `data_pipeline/` sits at the top of its module, except an optional or heavy
    dependency deferred on purpose (DEFERRABLE, each with a comment on its line or just above) and
    `avcl/main.py`, the one entry point that must answer --help and check optional packages before JAX and
    TensorFlow load;
  * the library never imports `configs`, `benchmarks`, `launch` or `tests`, and `data_pipeline` never imports
    `avcl`; the configs never import `launch` or `benchmarks`;
  * no import circle among the library's modules (a function-level import counts, and importing
    `a.b.c` imports the packages `a` and `a.b` first).
"""
import ast
import os
import subprocess
import sys

from avcl.evaluate import config as eval_config
from avcl.evaluate import probes
from avcl.models import model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = ("avcl", "data_pipeline")
PROJECT = LIBRARY + ("configs", "launch", "benchmarks", "tests")

# Top-level packages a library function may import where it is used: optional (data_pipeline.optional) or
# heavy ones that only one path needs.
DEFERRABLE = {
    "tensorflow": "TensorFlow: only through data_pipeline.tf_cpu, which hides GPUs first",
    "tensorflow_datasets": "loads TensorFlow; only real-dataset tasks need it",
    "av": "PyAV loads FFmpeg; only decoder processes need it",
    "soxr": "with PyAV, in the decoder processes",
    "PIL": "with PyAV, in the decoder processes",
    "apache_beam": "optional: the beam extra",
    "pyarrow": "optional: Parquet indexes of avcl.embed",
    "tinysoundfont": "optional: the embedded world's music",
    "pretty_midi": "heavy; only the path of its soundfont",
    "espeakng_loader": "native library, only the speech renderer",
    "matplotlib": "the backend must be chosen before pyplot loads",
}
# Entry points that import the project inside functions on purpose (their module docstring says why).
LAZY_ENTRY_POINTS = {"avcl/main.py"}


def _modules(packages):
  """{dotted module name: path relative to REPO} of every .py file under `packages`."""
  out = {}
  for pkg in packages:
    for root, dirs, files in os.walk(os.path.join(REPO, pkg)):
      dirs[:] = [d for d in dirs if d != "__pycache__"]
      for f in files:
        if f.endswith(".py"):
          rel = os.path.relpath(os.path.join(root, f), REPO)
          name = rel[:-3].replace(os.sep, ".")
          out[name.removesuffix(".__init__")] = rel
  return out


def _imports(module: str, path: str):
  """(imported dotted names, lineno, at module level) of every import statement in the file."""
  with open(os.path.join(REPO, path), encoding="utf-8") as f:
    source = f.read()
  tree = ast.parse(source)
  lines = source.splitlines()
  package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  out = []

  def visit(node, top):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, ast.Import):
        out.append(([a.name for a in child.names], child.lineno, top))
      elif isinstance(child, ast.ImportFrom):
        base = child.module or ""
        if child.level:  # Relative import.
          parts = package.split(".")
          base = ".".join(parts[:len(parts) - child.level + 1] + ([base] if base else []))
        out.append(([base] + [f"{base}.{a.name}" for a in child.names], child.lineno, top))
      nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
      visit(child, top and not nested)

  visit(tree, True)
  return out, lines


def _commented(lines, lineno: int) -> bool:
  line = lines[lineno - 1]
  above = lines[lineno - 2].strip() if lineno >= 2 else ""
  return "#" in line or above.startswith("#")


def _project_targets(names, modules):
  """The project modules that importing `names` runs: each name that is a module, and its packages."""
  targets = set()
  for name in names:
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
      prefix = ".".join(parts[:i])
      if prefix in modules:
        targets.add(prefix)
  return targets


def test_imports_at_top_except_deferred_optional_dependencies():
  bad = []
  for module, path in _modules(LIBRARY).items():
    imports, lines = _imports(module, path)
    for names, lineno, top in imports:
      if top:
        continue
      root = names[0].split(".")[0]
      if path in LAZY_ENTRY_POINTS:
        continue
      if root not in DEFERRABLE:
        bad.append(f"{path}:{lineno}: {names[0]} imported inside a function")
      elif not _commented(lines, lineno):
        bad.append(f"{path}:{lineno}: deferred import of {names[0]} without a comment saying why")
  assert not bad, "\n".join(bad)


def test_library_never_imports_upward():
  forbidden = {"avcl": ("configs", "benchmarks", "launch", "tests"),
               "data_pipeline": ("avcl", "configs", "benchmarks", "launch", "tests"),
               "configs": ("launch", "benchmarks", "tests")}
  bad = []
  for module, path in _modules(("avcl", "data_pipeline", "configs")).items():
    imports, _ = _imports(module, path)
    for names, lineno, _ in imports:
      root = names[0].split(".")[0]
      if root in forbidden[module.split(".")[0]]:
        bad.append(f"{path}:{lineno}: imports {names[0]}")
  assert not bad, "\n".join(bad)


def _cycles(graph):
  """The strongly connected components with more than one module (Tarjan), each sorted."""
  index, low, on_stack, stack, out = {}, {}, set(), [], []

  def connect(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        connect(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1 or v in graph[v]:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      connect(v)
  return out


def test_no_import_circle():
  modules = _modules(PROJECT)
  graph = {}
  for module, path in modules.items():
    imports, _ = _imports(module, path)
    # A module never waits on its own packages (they are initialised before it runs).
    own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    graph[module] = {t for names, _, _ in imports for t in _project_targets(names, modules)} - own - {module}
  cycles = _cycles(graph)
  assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_eval_config_names_are_the_owners_names():
  """avcl.evaluate.config stays free of JAX (config files import it): the probe and layer names are defined
  there once, and the modules that implement them use those names."""
  assert tuple(probes.PROBES) == eval_config.PROBES
  assert model.ENCODE_LAYERS is eval_config.ENCODE_LAYERS


def test_config_files_load_without_jax():
  code = ("import sys; from configs import default; from configs.sweeps import tiny; default.get_config(); "
          "bad = [m for m in ('jax', 'flax', 'tensorflow') if m in sys.modules]; assert not bad, bad")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=REPO))
  assert out.returncode == 0, out.stderr
