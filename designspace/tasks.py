"""GLUE tasks: what each one is, where its files are, and how to read them into one column layout.

Every reader returns rows ``{"idx", "text_a", "text_b", "label"}``: ``idx`` is the 0-based position of
the example among the split's data rows (so a trial can record exactly what it saw), ``text_b`` is
None for single-sentence tasks, ``label`` is a class index (float score for STS-B).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from designspace.errors import DesignSpaceError, invalid

if TYPE_CHECKING:
    import datasets

ENV_VAR = "DESIGNSPACE_GLUE_DIR"
SPLITS = ("train", "dev")
_SPLIT_ALIASES = {"train": "train", "dev": "dev", "validation": "dev", "val": "dev"}
_HOW_TO_POINT = f"point elsewhere with --data-dir, `data_dir:` in the experiment file, or env {ENV_VAR}"


@dataclass(frozen=True)
class TaskSpec:
    """One GLUE task: names, file layout, label space and metrics."""

    name: str  # canonical lowercase, as in the hub config: sst2, cola, ...
    folder: str  # folder name in the original GLUE download: SST-2, CoLA, ...
    is_regression: bool
    num_labels: int  # 1 for regression
    label_names: tuple[str, ...]  # index order of class labels (HF glue order); () for regression
    metric_names: tuple[str, ...]
    main_metric: str
    text_columns: tuple[str, str | None]  # TSV column names of text_a, text_b
    label_column: str
    hub_text_columns: tuple[str, str | None]  # column names in nyu-mll/glue
    file_columns: tuple[str, ...] | None = None  # names for a headerless TSV (CoLA); None: file has a header
    dev_file: str = "dev.tsv"
    hub_dev_split: str = "validation"

    @property
    def hub_config(self) -> str:
        """Config name of this task in the ``nyu-mll/glue`` hub dataset."""
        return self.name

    def file_name(self, split: str) -> str:
        """TSV file name of a split ('train' or 'dev')."""
        return "train.tsv" if _split(split) == "train" else self.dev_file


_NLI2 = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("sst2", "SST-2", False, 2, ("negative", "positive"), ("accuracy",), "accuracy",
                 ("sentence", None), "label", ("sentence", None)),
        # CoLA ships without a header; these are GLUE's documented column names.
        TaskSpec("cola", "CoLA", False, 2, ("unacceptable", "acceptable"), ("mcc", "accuracy"), "mcc",
                 ("sentence", None), "label", ("sentence", None),
                 file_columns=("source", "label", "original_label", "sentence")),
        TaskSpec("mrpc", "MRPC", False, 2, ("not_equivalent", "equivalent"), ("f1", "accuracy"), "f1",
                 ("#1 String", "#2 String"), "Quality", ("sentence1", "sentence2")),
        TaskSpec("rte", "RTE", False, 2, _NLI2, ("accuracy",), "accuracy",
                 ("sentence1", "sentence2"), "label", ("sentence1", "sentence2")),
        TaskSpec("stsb", "STS-B", True, 1, (), ("pearson", "spearman"), "pearson",
                 ("sentence1", "sentence2"), "score", ("sentence1", "sentence2")),
        TaskSpec("qnli", "QNLI", False, 2, _NLI2, ("accuracy",), "accuracy",
                 ("question", "sentence"), "label", ("question", "sentence")),
        TaskSpec("qqp", "QQP", False, 2, ("not_duplicate", "duplicate"), ("f1", "accuracy"), "f1",
                 ("question1", "question2"), "is_duplicate", ("question1", "question2")),
        TaskSpec("mnli", "MNLI", False, 3, ("entailment", "neutral", "contradiction"), ("accuracy",),
                 "accuracy", ("sentence1", "sentence2"), "gold_label", ("premise", "hypothesis"),
                 dev_file="dev_matched.tsv", hub_dev_split="validation_matched"),
    )
}


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


_ALIASES = {_key(t.name): t.name for t in TASKS.values()} | {_key(t.folder): t.name for t in TASKS.values()}
_ALIASES |= {"mnlim": "mnli", "mnlimatched": "mnli", "stsbenchmark": "stsb"}


def get_task(name: str | TaskSpec) -> TaskSpec:
    """Look a task up by name, case/dash-insensitively ('SST-2', 'sst2', 'STS-B', ...)."""
    if isinstance(name, TaskSpec):
        return name
    canonical = _ALIASES.get(_key(str(name)))
    if canonical is None:
        raise invalid("task", name, sorted(TASKS))
    return TASKS[canonical]


def _split(split: str) -> str:
    s = _SPLIT_ALIASES.get(str(split).lower())
    if s is None:
        raise invalid("split", split, SPLITS)
    return s


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Folder holding the GLUE task folders: explicit arg > env DESIGNSPACE_GLUE_DIR > shared/data/glue.

    The default is the first existing of ``cwd/../shared/data/glue`` and ``<repo>/../shared/data/glue``.
    When none exists the last candidate is returned, so the reader's error names a real path.
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser().resolve()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    repo_root = Path(__file__).resolve().parent.parent
    candidates = [Path.cwd() / ".." / "shared" / "data" / "glue", repo_root / ".." / "shared" / "data" / "glue"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return candidates[-1].resolve()


def split_path(task: str | TaskSpec, split: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Path of a split's TSV file (it may not exist)."""
    spec = get_task(task)
    return resolve_data_dir(data_dir) / spec.folder / spec.file_name(split)


_FINGERPRINTS: dict[tuple, str] = {}


def data_fingerprint(task: str | TaskSpec, data_dir: str | os.PathLike | None = None) -> str:
    """A hash of the task's train and dev files: the same data read from another folder is the same
    trial; an edited file is another. Cached per (path, size, mtime)."""
    import hashlib

    spec = get_task(task)
    digest = hashlib.sha256(spec.name.encode())
    for split in SPLITS:
        path = split_path(spec, split, data_dir)
        if not path.is_file():
            raise DesignSpaceError(f"GLUE file for {spec.name} {split} not found: {path}; {_HOW_TO_POINT}")
        st = path.stat()
        memo = (str(path), st.st_size, st.st_mtime_ns)
        if memo not in _FINGERPRINTS:
            _FINGERPRINTS[memo] = hashlib.sha256(path.read_bytes()).hexdigest()
        digest.update(_FINGERPRINTS[memo].encode())
    return digest.hexdigest()[:16]


def _parse_label(spec: TaskSpec, raw: str) -> int | float:
    """Class index (name or digit accepted) or float score; raises ValueError with what was expected."""
    raw = raw.strip()
    if spec.is_regression:
        return float(raw)
    if raw in spec.label_names:
        return spec.label_names.index(raw)
    # Some copies store NLI labels as indices already; accept them in the same order.
    if raw.isdigit() and int(raw) < spec.num_labels:
        return int(raw)
    raise ValueError(f"label {raw!r} is not one of {list(range(spec.num_labels)) + list(spec.label_names)}")


def read_glue_split(
    task: str | TaskSpec, split: str, data_dir: str | os.PathLike | None = None
) -> list[dict]:
    """Read one split's TSV into rows ``{"idx", "text_a", "text_b", "label"}``.

    Class labels are indices in ``TaskSpec.label_names`` order (NLI: entailment=0, not_entailment=1;
    MNLI: entailment=0, neutral=1, contradiction=2), the order ``nyu-mll/glue`` uses.
    """
    spec = get_task(task)
    path = split_path(spec, split, data_dir)
    if not path.parent.is_dir():
        raise DesignSpaceError(f"GLUE folder for {spec.name} not found: {path.parent}; {_HOW_TO_POINT}")
    if not path.is_file():
        raise DesignSpaceError(f"GLUE file for {spec.name} {split} not found: {path}; {_HOW_TO_POINT}")

    rows: list[dict] = []
    # utf-8-sig drops MRPC's BOM, which would otherwise glue itself to the first column name.
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = list(spec.file_columns) if spec.file_columns else next(reader, None)
        if header is None:
            raise DesignSpaceError(f"{path}: file is empty; expected a header line")
        wanted = [c for c in (*spec.text_columns, spec.label_column) if c is not None]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise DesignSpaceError(
                f"{path}:1: header {header} lacks column(s) {missing}; expected GLUE's {spec.folder} layout"
            )
        ia, ib, il = (header.index(c) if c else None for c in (*spec.text_columns, spec.label_column))
        for fields in reader:
            if not fields:  # a blank line, e.g. a trailing one
                continue
            if len(fields) != len(header):
                raise DesignSpaceError(
                    f"{path}:{reader.line_num}: expected {len(header)} tab-separated fields "
                    f"({', '.join(header)}), found {len(fields)}"
                )
            try:
                label = _parse_label(spec, fields[il])
            except ValueError as e:
                raise DesignSpaceError(f"{path}:{reader.line_num}: {e}") from None
            rows.append({
                "idx": len(rows),
                "text_a": fields[ia],
                "text_b": fields[ib] if ib is not None else None,
                "label": label,
            })
    return rows


def _features(spec: TaskSpec) -> datasets.Features:
    import datasets

    label = datasets.Value("float32") if spec.is_regression else datasets.ClassLabel(names=list(spec.label_names))
    return datasets.Features({
        "idx": datasets.Value("int64"),
        "text_a": datasets.Value("string"),
        "text_b": datasets.Value("string"),
        "label": label,
    })


def from_hub_columns(ds: datasets.Dataset, task: str | TaskSpec) -> datasets.Dataset:
    """Rename a ``nyu-mll/glue`` split to the local layout (idx, text_a, text_b, label)."""
    spec = get_task(task)
    a, b = spec.hub_text_columns
    n = len(ds)
    out = {
        "idx": list(ds["idx"]) if "idx" in ds.column_names else list(range(n)),
        "text_a": list(ds[a]),
        "text_b": list(ds[b]) if b is not None else [None] * n,
        "label": list(ds["label"]),
    }
    import datasets

    return datasets.Dataset.from_dict(out, features=_features(spec))


def load_task_dataset(
    task: str | TaskSpec, split: str, data_dir: str | os.PathLike | None = None, hub: bool = False
) -> datasets.Dataset:
    """One split as a ``datasets.Dataset`` with columns idx, text_a, text_b, label.

    ``hub=True`` downloads from ``nyu-mll/glue`` instead of reading the local GLUE folder.
    """
    import datasets

    spec = get_task(task)
    if hub:
        hub_split = "train" if _split(split) == "train" else spec.hub_dev_split
        return from_hub_columns(datasets.load_dataset("nyu-mll/glue", spec.hub_config, split=hub_split), spec)
    rows = read_glue_split(spec, split, data_dir)
    columns = {k: [r[k] for r in rows] for k in ("idx", "text_a", "text_b", "label")}
    return datasets.Dataset.from_dict(columns, features=_features(spec))


def stratified_counts(labels: np.ndarray, n: int) -> dict[int, int]:
    """Per-class sample sizes proportional to class frequency (largest remainder; ties: smaller class id)."""
    classes, counts = np.unique(labels, return_counts=True)
    quotas = n * counts / counts.sum()
    take = np.floor(quotas).astype(int)
    # Stable sort keeps ties in class order, so the result needs no randomness.
    order = np.argsort(-(quotas - take), kind="stable")
    take[order[: n - take.sum()]] += 1
    return {int(c): int(k) for c, k in zip(classes, take, strict=True)}


_LABELS: dict[str, np.ndarray] = {}  # a dataset's fingerprint -> its label column


def _labels(dataset: datasets.Dataset) -> np.ndarray:
    """The label column as one array, read once per dataset: a split carved from train carries an
    indices mapping, through which datasets reads the column in 0.5 s (SST-2); every trial subsamples it."""
    key = dataset._fingerprint
    if key not in _LABELS:
        _LABELS[key] = np.asarray(dataset.with_format("numpy")["label"][:])  # [:]: one array, not row reads
    return _LABELS[key]


def subsample(dataset: datasets.Dataset, n: int, seed: int, stratify: bool = True) -> datasets.Dataset:
    """A deterministic sample of ``n`` rows, returned in original row order.

    Classification with ``stratify``: each class keeps its share (largest remainder), rows drawn per class
    with ``numpy.random.default_rng(seed)``. Regression or ``stratify=False``: a plain seeded sample.
    ``n >= len(dataset)`` returns every row unchanged. The ``idx`` column (added here if absent) says
    which original rows were kept.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise invalid("n", n, "a positive integer number of examples")
    if "idx" not in dataset.column_names:
        dataset = dataset.add_column("idx", list(range(len(dataset))))
    total = len(dataset)
    if n >= total:
        return dataset
    rng = np.random.default_rng(seed)
    import datasets

    label_feature = dataset.features.get("label")
    is_class = isinstance(label_feature, datasets.ClassLabel) or (
        isinstance(label_feature, datasets.Value) and "int" in label_feature.dtype
    )
    if stratify and is_class:
        labels = _labels(dataset)
        chosen = [
            rng.choice(np.flatnonzero(labels == c), size=k, replace=False)
            for c, k in stratified_counts(labels, n).items()
        ]
        picked = np.concatenate(chosen)
    else:
        picked = rng.choice(total, size=n, replace=False)
    return dataset.select(np.sort(picked).tolist())
