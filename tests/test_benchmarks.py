"""benchmarks/gpu_speed.py in its CPU smoke mode: every kind of item runs through the real path and
lands in the JSON and the Markdown table; an exhausted budget skips items instead of running them."""
import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_speed.py"


@pytest.fixture(scope="module")
def gpu_speed():
    spec = importlib.util.spec_from_file_location("gpu_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_smoke_run_measures_every_kind_of_item(gpu_speed, tmp_path):
    items = "data,ms_convlstm/eager,ms_convlstm/fast,ms_convlstm/loss_fp32"
    assert gpu_speed.main(["--cpu", "--out", str(tmp_path), "--only", items, "--seconds", "0.2",
                           "--synthetic-digits"]) == 0
    report = json.loads((tmp_path / "gpu_speed.json").read_text())
    results = report["results"]
    assert sorted(results) == sorted(items.split(",")) and not any("error" in r for r in results.values())
    assert report["machine"]["digits"].startswith("synthetic")
    data = results["data"]
    assert data["sequences_per_s"] > 0 and data["sequences_differing_from_cpu"] == 0
    for path in ("eager", "fast"):
        run = results[f"ms_convlstm/{path}"]
        assert run["path"] == path and run["sequences_per_s"] > 0 and run["timed_steps"] >= 1
        assert run["warmup_s"] >= run["compile_s"] >= 0
    assert results["ms_convlstm/fast"]["fast"] == {"scope": "step", "backend": "eager"}
    loss = results["ms_convlstm/loss_fp32"]
    assert loss["loss_rel_diff"] < 1e-5 and loss["eager_loss"] > 0
    table = (tmp_path / "gpu_speed.md").read_text()
    assert "| ms_convlstm | fast | 32-true | 2 |" in table and "Moving MNIST on the device" in table
    assert "| ms_convlstm | " in table.split("fp32 check")[1]


def test_an_exhausted_budget_skips_items_and_unknown_items_are_refused(gpu_speed, tmp_path):
    assert gpu_speed.main(["--cpu", "--out", str(tmp_path), "--budget", "0", "--only", "data,predrnn/fast"]) == 0
    results = json.loads((tmp_path / "gpu_speed.json").read_text())["results"]
    assert all("budget" in r["skipped"] for r in results.values()) and list(results) == ["data", "predrnn/fast"]
    with pytest.raises(SystemExit, match="unknown items"):
        gpu_speed.main(["--cpu", "--out", str(tmp_path), "--only", "predrnn/slow"])
