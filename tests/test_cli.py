"""The command line as a user drives it: one-line errors before any work, role maps, cheap imports,
and the README's Python example."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from designspace.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", [["show", "s4"], ["train", "s4", "--n-train", "16"],
                                     ["apply", "s4", "--task", "sst2"]])
@pytest.mark.parametrize("backbone", ["/nonexistent", "minilm-l12"])
def test_an_unknown_backbone_is_one_line_before_any_work(capsys, command, backbone):
    """These printed 34-47-line tracebacks before."""
    code, out, err = run_cli(capsys, *command, "--backbone", backbone)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and f"backbone={backbone!r}" in err


def test_a_zero_budget_is_refused_not_replaced(capsys):
    """`train --budget 0` trained at 0.5 % and exited 0 (`if args.budget:`)."""
    for command in (["train", "s4"], ["show", "s4"]):
        code, _, err = run_cli(capsys, *command, "--budget", "0")
        assert code == 2 and "--budget=0.0 is invalid" in err and err.count("\n") == 1


def test_refine_with_an_unknown_backbone_writes_nothing(capsys, tmp_path):
    exp = tmp_path / "e.yaml"
    exp.write_text(yaml.safe_dump({"name": "e", "backbone": "minilm-l12", "output": str(tmp_path / "out")}))
    code, _, err = run_cli(capsys, "refine", str(exp))
    assert code == 2 and "'minilm-l12' is not a short name" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


PHI_MAP = {
    "family": "phi",
    "stacks": [{"layers": "layers", "roles": {
        "attn": "self_attn", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_o": "self_attn.dense", "ffn_in": "mlp.fc1", "ffn_out": "mlp.fc2", "ln_attn": "input_layernorm"}}],
}


@pytest.fixture(scope="module")
def custom_model(tmp_path_factory) -> Path:
    """A tiny model of a family without a built-in role map (GPT-NeoX), saved as a folder."""
    import torch
    import transformers as T

    folder = tmp_path_factory.mktemp("neox")
    cfg = T.GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                          intermediate_size=48)
    torch.manual_seed(0)
    T.AutoModel.from_config(cfg).save_pretrained(folder)
    return folder


NEOX_MAP = {"family": "gpt_neox", "stacks": [{"layers": "layers", "roles": {
    "attn": "attention", "attn_q": "attention.query_key_value#0/3", "attn_k": "attention.query_key_value#1/3",
    "attn_v": "attention.query_key_value#2/3", "attn_o": "attention.dense", "ffn_in": "mlp.dense_h_to_4h",
    "ffn_out": "mlp.dense_4h_to_h", "ln_attn": "input_layernorm", "ln_ffn": "post_attention_layernorm"}}]}


def test_a_role_map_from_the_command_line(capsys, tmp_path, custom_model):
    """The error message suggested passing a role map, and no command could take one."""
    code, _, err = run_cli(capsys, "show", "all-lora", "--backbone", str(custom_model))
    assert code == 2 and "has no built-in role map" in err and "--role-map" in err
    role_map = tmp_path / "neox.yaml"
    role_map.write_text(yaml.safe_dump(NEOX_MAP))
    code, out, _ = run_cli(capsys, "show", "all-lora", "--backbone", str(custom_model), "--role-map", str(role_map),
                           "--budget", "0.1")
    assert code == 0 and "lora(r=" in out


def test_a_role_map_in_an_experiment_file(tmp_path, custom_model):
    from designspace import Experiment

    (tmp_path / "neox.yaml").write_text(yaml.safe_dump(NEOX_MAP))
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({"name": "e", "backbone": str(custom_model), "role_map": "neox.yaml"}))
    exp = Experiment.load(path)
    assert exp.role_map["family"] == "gpt_neox" and len(exp.check_backbone().layers) == 4
    inline = Experiment.from_dict({"name": "e", "backbone": str(custom_model), "role_map": NEOX_MAP})
    assert inline.role_map == exp.role_map
    bad = {**NEOX_MAP, "stacks": [{"layers": "layers", "roles": {"attn_x": "attention"}}]}
    with pytest.raises(Exception, match="role_map role 'attn_x' is invalid"):
        Experiment.from_dict({"name": "e", "backbone": str(custom_model), "role_map": bad})


@pytest.mark.parametrize("experiment", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_importing_the_data_model_and_reading_experiment_files_loads_no_torch(experiment):
    code = ("import sys, designspace\n"
            "from designspace import Design, DesignSpace, Experiment, TrialStore\n"
            "from designspace.report import status\n"
            "from designspace.cli import build_parser\n"
            "build_parser()\n"
            "Experiment.load(sys.argv[1]) if 's3pet' not in sys.argv[1] else None\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(experiment)], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_status_reads_a_store_without_torch(tmp_path):
    from designspace import Experiment
    from designspace.refine import Refiner

    exp = Experiment.from_dict({"name": "s", "tasks": ["sst2"], "backend": "sequential", "stages": ["grouping"],
                                "scorer": {"synthetic": {"n_layers": 6}}, "output": str(tmp_path / "s")})
    Refiner(exp, log=lambda m: None, progress=False).run()
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in exp.to_dict().items() if v is not None}))
    code = ("import sys\nfrom designspace.cli import main\nmain(['status', sys.argv[1]])\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout
    assert "1-grouping" in out and out.strip().endswith("False")


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's "use it from Python" section is this test's code."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Use it from Python.*?```python\n(.*?)```", text, re.S)
    assert block, "README has a 'Use it from Python' section with a python block"
    monkeypatch.chdir(tmp_path)
    exec(compile(block.group(1), "README.md", "exec"), {})


SCRIPTS = sorted([*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "experiments").glob("*.py")])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_committed_script_still_starts(script):
    """Results name the command that made them: the command must still run (its --help at least)."""
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-1500:]
