"""A task family added from outside metaexp: a data set and a sampler defined in this module, configs in a
folder on `hydra.searchpath`, and not one edit to metaexp/. It trains, evaluates, and shows up in
`metaexp summarize` under its own setting name and metric, all in process."""

import json

import torch
import torch.nn.functional as F

import metaexp
from conftest import metrics
from metaexp import summarize
from metaexp.evaluate import evaluate_checkpoint
from metaexp.objectives import Objective
from metaexp.samplers import TaskBatch, TaskSampler


class Lines:
    """Tasks y = slope * x with slope U[-2, 2]; every split is the same family."""

    def split(self, name: str) -> "Lines":
        return self


def hits(prediction: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The fraction of query points predicted within 0.5: higher is better."""
    return ((prediction - y).abs() < 0.5).to(prediction.dtype).mean()


class LineSampler(TaskSampler):
    objective = Objective("hits", True, F.mse_loss, hits, task="line fitting")
    outputs = 1
    label_format = "{points}pts"

    def __init__(self, data, points: int = 4, device="cpu"):
        self.points, self.device = points, torch.device(device)

    def describe(self) -> str:
        return f"lines through the origin, {self.points} points each"

    def sample(self, meta_batch: int, generator: torch.Generator) -> TaskBatch:
        slope = torch.rand(meta_batch, 1, 1, generator=generator, device=self.device) * 4 - 2
        x = torch.rand(meta_batch, 2 * self.points, 1, generator=generator, device=self.device) * 2 - 1
        y = slope * x
        return TaskBatch(x[:, : self.points], y[:, : self.points], x[:, self.points :], y[:, self.points :])


def family_configs(folder):
    """The config folder a user would put on hydra.searchpath: one option in the dataset and sampler groups."""
    (folder / "dataset").mkdir(parents=True)
    (folder / "sampler").mkdir()
    (folder / "dataset" / "lines.yaml").write_text(f"_target_: {__name__}.Lines\n")
    (folder / "sampler" / "lines.yaml").write_text(f"_target_: {__name__}.LineSampler\npoints: 4\n")
    return folder


def test_a_task_family_from_outside_trains_evaluates_and_is_summarized(tmp_path, capsys):
    configs = family_configs(tmp_path / "myconf")
    cfg = metaexp.compose(
        [f"hydra.searchpath=[file://{configs}]", "dataset=lines", "sampler=lines", "trainer.device=cpu",
         "trainer.steps=6", "trainer.val_every=3", "trainer.log_every=3", "trainer.val_tasks=8", "trainer.meta_batch=4"]
    )  # fmt: skip
    run = tmp_path / "run"
    metaexp.train(cfg, run)
    assert "training MAML on Lines: lines through the origin, 4 points each" in (run / "train.log").read_text()
    assert json.loads((run / "task.json").read_text())["setting"] == "4pts"
    assert all("hits" in row for row in metrics(run))

    trust = f"trust=[{__name__}.]"  # a class of this module, not metaexp's: named as trusted
    for overrides in ([], ["+sampler.points=8"]):  # `+`: conf/eval.yaml lists only metaexp's own families' keys
        evaluate_checkpoint(metaexp.compose([f"checkpoint={run}", "eval.episodes=6", trust, *overrides], "eval"))
    reports = sorted(p.name for p in run.glob("eval-*.json"))
    assert reports == ["eval-test-4pts-1steps-6ep.json", "eval-test-8pts-1steps-6ep.json"], reports
    report = json.loads((run / reports[0]).read_text())
    assert report["metric"] == "hits" and report["higher_is_better"] is True and 0 <= report["mean"] <= 1

    capsys.readouterr()  # what training and evaluation printed
    summarize.main([str(run), "--json"])
    records = json.loads(capsys.readouterr().out)
    assert {r["test"] for r in records} == {"4pts", "8pts"} and {r["metric"] for r in records} == {"hits"}
    assert all(r["higher_is_better"] is True for r in records)
