import collections

import datasets
import numpy as np
import pytest

from designspace.data import split_dataset
from designspace.errors import DesignSpaceError
from designspace.tasks import (
    TASKS,
    from_hub_columns,
    get_task,
    load_task_dataset,
    read_glue_split,
    resolve_data_dir,
    stratified_counts,
    subsample,
)

# Row counts from shared/data/glue/README.md.
EXPECTED = {
    ("sst2", "train"): 67_349, ("sst2", "dev"): 872,
    ("cola", "train"): 8_551, ("cola", "dev"): 1_043,
    ("mrpc", "train"): 3_668, ("mrpc", "dev"): 408,
    ("rte", "train"): 2_490, ("rte", "dev"): 277,
    ("stsb", "train"): 5_749, ("stsb", "dev"): 1_500,
}


@pytest.fixture(scope="module")
def data_dir(glue_root):
    return glue_root


@pytest.mark.parametrize("alias,name", [
    ("SST-2", "sst2"), ("sst-2", "sst2"), ("sst2", "sst2"), ("STS-B", "stsb"), ("sts_b", "stsb"),
    ("CoLA", "cola"), ("MNLI", "mnli"), ("mnli-m", "mnli"), (" rte ", "rte"),
])
def test_aliases(alias, name):
    assert get_task(alias).name == name
    assert get_task(get_task(alias)) is TASKS[name]


def test_unknown_task_lists_known_ones():
    with pytest.raises(DesignSpaceError, match="task='sst3'.*cola.*mnli.*stsb"):
        get_task("sst3")


def test_specs():
    assert get_task("stsb").num_labels == 1 and get_task("stsb").is_regression
    assert {t: TASKS[t].main_metric for t in ("sst2", "cola", "mrpc", "rte", "stsb")} == {
        "sst2": "accuracy", "cola": "mcc", "mrpc": "f1", "rte": "accuracy", "stsb": "pearson"}
    assert get_task("mnli").file_name("dev") == "dev_matched.tsv"
    assert get_task("mnli").file_name("validation") == "dev_matched.tsv"
    assert get_task("SST-2").hub_config == "sst2"


@pytest.mark.parametrize("task,split", sorted(EXPECTED))
def test_row_counts_and_labels(data_dir, task, split):
    rows = read_glue_split(task, split, data_dir)
    assert len(rows) == EXPECTED[task, split]
    assert [r["idx"] for r in rows[:3]] == [0, 1, 2] and rows[-1]["idx"] == len(rows) - 1
    spec = get_task(task)
    labels = [r["label"] for r in rows]
    if spec.is_regression:
        assert all(isinstance(x, float) for x in labels) and min(labels) == 0.0 and max(labels) == 5.0
    else:
        assert set(labels) == {0, 1}
    pair = spec.text_columns[1] is not None
    assert all((r["text_b"] is not None) == pair and r["text_a"] for r in rows)


def test_field_contents(data_dir):
    rte = read_glue_split("rte", "dev", data_dir)
    # First dev row is "not_entailment", index 1 in the fixed (entailment, not_entailment) order.
    assert rte[0]["label"] == 1 and rte[0]["text_b"] == "Christopher Reeve had an accident."
    # Counts in the file: 146 entailment, 131 not_entailment.
    assert collections.Counter(r["label"] for r in rte) == {0: 146, 1: 131}
    mrpc = read_glue_split("mrpc", "train", data_dir)
    assert mrpc[0]["label"] == 1 and mrpc[0]["text_a"].startswith("Amrozi accused")
    # QUOTE_NONE keeps the quote characters that open a sentence.
    assert read_glue_split("mrpc", "dev", data_dir)[0]["text_b"].startswith('"The foodservice')
    cola = read_glue_split("cola", "dev", data_dir)
    assert cola[0] == {"idx": 0, "text_a": "The sailors rode the breeze clear of the rocks.",
                       "text_b": None, "label": 1}
    assert read_glue_split("stsb", "dev", data_dir)[1]["label"] == 4.75


def test_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("DESIGNSPACE_GLUE_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("DESIGNSPACE_GLUE_DIR")
    monkeypatch.chdir(tmp_path)
    # No ../shared beside tmp_path: falls back to the one beside the repo.
    from pathlib import Path

    import designspace
    repo = Path(designspace.__path__[0]).resolve().parent
    assert resolve_data_dir() == (repo / ".." / "shared" / "data" / "glue").resolve()


def test_missing_folder_and_file_errors(tmp_path):
    with pytest.raises(DesignSpaceError) as e:
        read_glue_split("rte", "train", tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "RTE") in msg and "--data-dir" in msg and "DESIGNSPACE_GLUE_DIR" in msg
    assert "\n" not in msg
    (tmp_path / "MNLI").mkdir()
    with pytest.raises(DesignSpaceError, match="dev_matched.tsv"):
        read_glue_split("mnli", "dev", tmp_path)


def test_malformed_rows_name_file_and_line(tmp_path):
    (tmp_path / "RTE").mkdir()
    f = tmp_path / "RTE" / "train.tsv"
    f.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n")
    with pytest.raises(DesignSpaceError, match=r"train.tsv:3: expected 4 tab-separated fields.*found 3"):
        read_glue_split("rte", "train", tmp_path)
    f.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(DesignSpaceError, match=r"train.tsv:2: label 'maybe'"):
        read_glue_split("rte", "train", tmp_path)
    f.write_text("id\tpremise\thypothesis\tlabel\n")
    with pytest.raises(DesignSpaceError, match=r"train.tsv:1: header .* lacks column"):
        read_glue_split("rte", "train", tmp_path)
    # Digit labels are accepted in the same fixed order, and a bad split name is rejected.
    f.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\t1\n")
    assert read_glue_split("rte", "train", tmp_path)[0]["label"] == 1
    with pytest.raises(DesignSpaceError, match="split='test'"):
        read_glue_split("rte", "test", tmp_path)


def test_load_task_dataset(data_dir):
    ds = load_task_dataset("RTE", "dev", data_dir)
    assert ds.column_names == ["idx", "text_a", "text_b", "label"]
    assert ds.features["label"].names == ["entailment", "not_entailment"]
    st = load_task_dataset("stsb", "dev", data_dir)
    assert st.features["label"].dtype == "float32" and len(st) == 1500


def test_hub_columns_mapped_to_local_layout():
    hub = datasets.Dataset.from_dict(
        {"premise": ["p0", "p1"], "hypothesis": ["h0", "h1"], "label": [2, 0], "idx": [7, 8]})
    ds = from_hub_columns(hub, "mnli")
    assert ds[0] == {"idx": 7, "text_a": "p0", "text_b": "h0", "label": 2}
    sst = from_hub_columns(datasets.Dataset.from_dict({"sentence": ["s"], "label": [1], "idx": [0]}), "sst2")
    assert sst[0]["text_b"] is None and sst.features["label"].names == ["negative", "positive"]


def test_stratified_counts_largest_remainder():
    # 70/20/10 of 10 rows, n=4 -> quotas 2.8, 0.8, 0.4 -> floors 2, 0, 0; the two largest remainders
    # (0.8, 0.8) get the 2 spare -> {0: 3, 1: 1, 2: 0}.
    labels = np.array([0] * 7 + [1] * 2 + [2])
    assert stratified_counts(labels, 4) == {0: 3, 1: 1, 2: 0}
    assert sum(stratified_counts(labels, 7).values()) == 7


def test_subsample_stratified_and_deterministic(data_dir):
    ds = load_task_dataset("cola", "train", data_dir)  # 6,023 acceptable (1) / 2,528 unacceptable (0)
    a = subsample(ds, 100, seed=3)
    # quotas: 100 * 6023/8551 = 70.44, 100 * 2528/8551 = 29.56 -> 70 + 29 + 1 spare to class 0.
    assert collections.Counter(a["label"]) == {1: 70, 0: 30}
    assert list(a["idx"]) == list(subsample(ds, 100, seed=3)["idx"])
    assert list(a["idx"]) != list(subsample(ds, 100, seed=4)["idx"])
    assert list(a["idx"]) == sorted(a["idx"])  # original row order
    # idx points back to the original rows.
    i = a["idx"][5]
    assert ds[i]["text_a"] == a[5]["text_a"]


def test_subsample_regression_all_and_errors(data_dir):
    st = load_task_dataset("stsb", "dev", data_dir)
    s = subsample(st, 50, seed=0)
    assert len(s) == 50 and len(set(s["idx"])) == 50
    assert list(subsample(st, 50, seed=0)["idx"]) == list(s["idx"])
    assert len(subsample(st, 5000, seed=0)) == 1500
    with pytest.raises(DesignSpaceError, match="n=0"):
        subsample(st, 0, seed=0)
    # A dataset without idx gets one, so the selection is still recorded.
    plain = datasets.Dataset.from_dict({"label": [0, 1] * 10})
    out = subsample(plain, 4, seed=1, stratify=False)
    assert len(out) == 4 and "idx" in out.column_names


def test_subsample_reads_each_datasets_own_labels():
    """Labels are read once per dataset (a split with an indices mapping reads them slowly): a dataset
    derived from another (other rows, other labels) must not be stratified on the first one's labels."""
    base = datasets.Dataset.from_dict({"label": [0] * 60 + [1] * 40, "idx": list(range(100))})
    a = subsample(base, 10, seed=0)
    assert collections.Counter(a["label"]) == {0: 6, 1: 4}
    flipped = base.map(lambda r: {"label": 1 - r["label"]})
    assert collections.Counter(subsample(flipped, 10, seed=0)["label"]) == {1: 6, 0: 4}
    tail = base.select(range(50, 100))  # an indices mapping, like the training split beside a selection
    b = subsample(tail, 10, seed=2)
    assert collections.Counter(b["label"]) == {1: 8, 0: 2}
    assert list(b["idx"]) == list(subsample(tail.flatten_indices(), 10, seed=2)["idx"])
    assert list(b["idx"]) == list(subsample(tail, 10, seed=2)["idx"])  # the second read: same sample


def test_training_split_beside_a_selection_split(data_dir):
    sel = split_dataset(get_task("mrpc"), "select", data_dir, n_select=300)
    train = split_dataset(get_task("mrpc"), "train", data_dir, n_select=300)
    full = load_task_dataset("mrpc", "train", data_dir)
    assert len(sel) == 300 and len(train) == len(full) - 300
    assert set(sel["idx"]).isdisjoint(train["idx"])
    assert list(train["idx"]) == sorted(train["idx"])  # original order, every row not selected
