# %% [markdown]
# # Tutorial: from a run to a picture, in the three fields
#
# A jupytext script (open it as a notebook with `jupytext --to notebook docs/tutorial.py`, or run it with
# `python docs/tutorial.py`); `tests/test_tutorial.py` runs it on CI's CPU in a few minutes, and
# docs/tutorial.md shows it with its output. It trains MAML on Finn et al.'s sinusoid family, reads the run
# directory, evaluates the checkpoint, summarises and plots the run, and draws MAML's own figure: what the
# meta-learned initialisation does after one and ten gradient steps on ten points, against a network
# pretrained on all tasks at once; then it meta-trains a navigation policy briefly and draws its paths before and
# after one policy-gradient step, draws an Omniglot test episode with a ProtoNet's predictions, and flies a
# rotorcraft through wind with meta-learned features in its adaptive controller.

# %%
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from metaexp.api import compose, load_run, train
from metaexp.backbones import predict

out = Path(os.environ.get("TUTORIAL_OUT", "tutorial"))
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)

# %% [markdown]
# ## 1. Train
# The preset is the paper's setting (K = 10 support points, one inner step of 0.01, meta-batch 25); the
# tutorial shortens it from 70,000 meta-steps to 3,000 (the full run is `metaexp train
# experiment=maml_sinusoid_10shot`). `train` is `metaexp train` in process: the same loop and run directory.

# %%
shortened = ["trainer.steps=3000", "trainer.val_every=1000", "trainer.val_tasks=200", "trainer.log_every=1000"]
cfg = compose(["experiment=maml_sinusoid_10shot", *shortened, "trainer.device=cpu", "trainer.threads=1"])
run = out / "maml_sinusoid"
best = train(cfg, run)
print(f"best validation MSE {best:.3f}")

# %% [markdown]
# ## 2. The run directory
# Everything the run did is in it: the composed config (`.hydra/`), the metrics of every logged step, the
# checkpoints, what the run's task family is (`task.json`) and the machine it ran on.

# %%
print(sorted(p.name for p in run.iterdir()))
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
print([(r["step"], r["split"], round(r["mse"], 3)) for r in rows if r["split"] == "val"])

# %% [markdown]
# ## 3. Evaluate
# `metaexp eval` adapts on 600 fresh test tasks (here 200) and writes a report beside the checkpoint: the
# mean and its 95% interval, and the settings that name the test.

# %%
command = [sys.executable, "-m", "metaexp", "eval", f"checkpoint={run}", "eval.episodes=200", "trainer.device=cpu"]
subprocess.run(command, check=True, capture_output=True)
(report_file,) = run.glob("eval-test-*.json")
report = json.loads(report_file.read_text())
print(report_file.name, report["metric"], round(report["mean"], 3), "+-", round(report["ci95"], 3))

# %% [markdown]
# ## 4. Summarise and plot
# `metaexp summarize` reads any number of run directories into one table (`--markdown`, `--csv`, `--json`)
# and draws their learning curves (`--plot`).

# %%
summarize = [sys.executable, "-m", "metaexp", "summarize", str(run), "--markdown", "--plot"]
table = subprocess.run([*summarize, str(out / "tutorial_curves.png")], check=True, capture_output=True, text=True)
print(table.stdout.splitlines()[0])

# %% [markdown]
# ## 5. What adaptation does
# One test task: ten support points of a sinusoid. The meta-learned initialisation fits no task by itself;
# one gradient step on the ten points already bends it toward this one, ten steps fit it. A network
# pretrained on points of all tasks together (the same architecture and budget, plain regression) learns
# their average (a sinusoid of smaller amplitude, every phase lying in [0, pi]), and the same ten steps move
# it only part of the way.

# %%
loaded = load_run(run, checkpoint="best")
maml, meta = loaded.algorithm, loaded.params
family = compose(["dataset=sinusoid"]).dataset
from metaexp.datasets.sinusoid import Sinusoid  # noqa: E402

tasks = Sinusoid(family.amplitude, family.phase, family.inputs)
generator = torch.Generator().manual_seed(1)

pretrained = {k: v.clone().requires_grad_() for k, v in maml.init_params().items()}
optimizer = torch.optim.Adam(pretrained.values(), lr=1e-3)
for _ in range(3000):  # the meta-run's budget of steps, each on 25 tasks x 20 points
    x, y = (t.reshape(-1, 1) for t in tasks.sample(25, 20, generator, "cpu"))  # the tasks' points pooled
    loss = torch.nn.functional.mse_loss(predict(maml.model, pretrained, x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
pretrained = {k: v.detach() for k, v in pretrained.items()}


def fine_tune(weights, x, y, steps, rate=0.01):
    """`steps` plain gradient steps of MAML's inner rate on the support points."""
    weights = {k: v.clone().requires_grad_() for k, v in weights.items()}
    for _ in range(steps):
        grads = torch.autograd.grad(
            torch.nn.functional.mse_loss(predict(maml.model, weights, x), y), list(weights.values())
        )
        weights = {k: (v - rate * g).detach().requires_grad_() for (k, v), g in zip(weights.items(), grads)}
    return {k: v.detach() for k, v in weights.items()}


a_true, p_true = 3.5, 1.0  # one test task: y = 3.5 sin(x - 1)
x_support = torch.rand(1, 10, 1, generator=generator) * 10 - 5
y_support = a_true * torch.sin(x_support - p_true)
grid = torch.linspace(-5, 5, 200).view(1, -1, 1)
curves = {"true function": a_true * torch.sin(grid - p_true)}
for name, start in (("MAML", meta), ("pretrained", pretrained)):
    weights = maml.model_params(start)
    for steps in (0, 1, 10):
        adapted = fine_tune(weights, x_support[0], y_support[0], steps)
        curves[f"{name}, {steps} steps"] = predict(maml.model, adapted, grid[0]).unsqueeze(0)

errors = {name: torch.nn.functional.mse_loss(c, curves["true function"]).item() for name, c in curves.items()}
print({name: round(e, 3) for name, e in errors.items() if name != "true function"})

# %%
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for axis, name in zip(axes, ("MAML", "pretrained")):
    axis.plot(grid[0, :, 0], curves["true function"][0, :, 0], "k", label="true function")
    for steps, style in ((0, ":"), (1, "--"), (10, "-")):
        axis.plot(grid[0, :, 0], curves[f"{name}, {steps} steps"][0, :, 0], style, label=f"after {steps} steps")
    axis.scatter(x_support[0, :, 0], y_support[0, :, 0], color="tab:red", zorder=3, label="10 support points")
    axis.set_title(f"{name} initialisation, fine-tuned on the support points")
    axis.set_xlabel("x")
    axis.legend(fontsize=8)
axes[0].set_ylabel("y")
figure.tight_layout()
figure.savefig(out / "tutorial_adaptation.png", dpi=100)

# %% [markdown]
# ## 6. A policy that adapts: 2D navigation
# Finn et al.'s point robot must reach a goal it is not shown: its only clue is the reward (minus the distance
# to the goal) along its own paths. The tutorial meta-trains `experiment=maml_navigation2d` for 20 of the
# preset's 100 TRPO iterations, then draws, for one held-out goal, five paths of the meta-learned policy and
# five of the same policy after one policy-gradient step on twenty paths like them: the step turns the paths
# toward the goal.

# %%
from torch.func import vmap  # noqa: E402

from metaexp.components import build as build_component, build_sampler  # noqa: E402

navigation = ["experiment=maml_navigation2d", "trainer.steps=20", "trainer.val_every=20", "trainer.val_tasks=10"]
nav_run = out / "maml_navigation2d"
train(compose([*navigation, "trainer.log_every=10", "trainer.device=cpu", "trainer.threads=1"]), nav_run)
policy = load_run(nav_run, checkpoint="last")
world = build_sampler(policy.cfg, build_component(policy.cfg.dataset, "dataset"), "test", torch.device("cpu"))
world.bind(policy.algorithm, policy.params, inner_steps=1)
generator = torch.Generator().manual_seed(3)
goal = world.tasks(1, generator)
weights = policy.algorithm.model_params(policy.params)
support = world.collect(goal, weights, generator, shared=True)  # 20 paths to adapt on
adapted = vmap(policy.algorithm.adapted_weights, in_dims=(None, 0, 0, None))(policy.params, *support, 1)
paths = {
    "before the step": world.rollout(goal, weights, generator, True, 5),
    "after one step": world.rollout(goal, adapted, generator, False, 5),
}
for name, (positions, _, rewards, masks, *_) in paths.items():
    print(name, "mean return", round((rewards * masks).sum(-1).mean().item(), 2))

# %%
figure, axis = plt.subplots(figsize=(5, 5))
for (name, (positions, *_, masks, _, _)), colour in zip(paths.items(), ("tab:grey", "tab:blue")):
    for k in range(positions.shape[1]):
        steps = int(masks[0, k].sum())
        axis.plot(*positions[0, k, :steps].T, color=colour, alpha=0.8, label=name if k == 0 else None)
axis.scatter(*goal[0], marker="*", s=250, color="tab:red", zorder=3, label="goal")
axis.set_aspect("equal")
axis.set_title("2D navigation: paths before and after one step")
axis.legend(fontsize=8)
figure.tight_layout()
figure.savefig(out / "tutorial_navigation.png", dpi=100)

# %% [markdown]
# ## 7. A few-shot episode: Omniglot
# The task distribution here is Omniglot's handwritten characters: an episode draws 5 characters the network
# has never seen, one drawing of each as the support set and five more of each as queries. ProtoNets is the
# quickest learner to train on a CPU: 300 five-way episodes (the preset trains 20,000 sixty-way ones). The
# adapted model is the classifier the support set defines, each query labelled by its nearest class mean in
# the embedding. Omniglot must be under `$METAEXP_DATA/omniglot` (the two archives of the official release).

# %%
omniglot = ["experiment=protonet_omniglot_5w1s", "sampler.ways=5", "trainer.steps=300", "trainer.val_every=300"]
few_shot_run = out / "protonet_omniglot"
train(compose([*omniglot, "trainer.log_every=100", "trainer.device=cpu", "trainer.threads=1"]), few_shot_run)
few_shot = load_run(few_shot_run, checkpoint="last")
images = build_component(few_shot.cfg.dataset, "dataset")
episodes = build_sampler(few_shot.cfg, images, "test", torch.device("cpu"))
episode = episodes.sample(1, torch.Generator().manual_seed(0))
support_x, support_y, query_x, query_y = (t[0] for t in episode)
with torch.no_grad():
    guesses = few_shot.algorithm.adapt(few_shot.params, support_x, support_y)(query_x).argmax(-1)
print(f"{int((guesses == query_y).sum())} of {len(query_y)} queries right")

# %%
ways = len(support_y)
figure, axes = plt.subplots(ways, 1 + len(query_y) // ways, figsize=(8, 6.5))
for row in range(ways):
    axes[row, 0].imshow(support_x[support_y == row][0, 0], cmap="gray_r")
    axes[row, 0].set_ylabel(f"class {row}", fontsize=8)
    for column, index in enumerate(torch.nonzero(query_y == row).flatten(), start=1):
        right = bool(guesses[index] == row)
        axes[row, column].imshow(query_x[index, 0], cmap="Greens" if right else "Reds")
        axes[row, column].set_title(f"-> {int(guesses[index])}", fontsize=8, color="black" if right else "red")
for axis in axes.flat:
    axis.set_xticks([])
    axis.set_yticks([])
axes[0, 0].set_title("support", fontsize=8)
figure.suptitle("A 5-way 1-shot test episode: support (left), queries and their predicted class")
figure.tight_layout()
figure.savefig(out / "tutorial_omniglot.png", dpi=100)

# %% [markdown]
# ## 8. A controller that adapts: the rotorcraft in wind
# Adaptive control is meta-learning's third field. A planar rotorcraft must follow a reference path in a wind it
# does not know; its controller cancels an estimate of the wind's force, `f_hat = A_hat y(q, dq)`, and adapts
# the coefficients `A_hat` online from the tracking error. What is meta-learned are the features y: ACMRR fits
# them (a 6-32-32 tanh network) so that one ridge regression per training flight explains its disturbance.
# The tutorial trains ACMRR on M = 10 flights for 300 of the preset's 5,000 steps and flies one test reference
# with its features and with PID's (the integral of the error, no model of the wind).

# %%
from metaexp.datasets.rotorcraft import Gains, fly, integral_features, wind_drag  # noqa: E402

control = ["experiment=acmrr_rotorcraft_m10", "trainer.steps=300", "trainer.val_every=100", "trainer.log_every=100"]
control_run = out / "acmrr_rotorcraft"
train(compose([*control, "trainer.device=cpu", "trainer.threads=1"]), control_run)
acmrr = load_run(control_run, checkpoint="best")
flights = build_component(acmrr.cfg.dataset, "dataset").split("test")
reference, wind = tuple(x[:1] for x in flights.reference), flights.wind[:1]
features = {"PID": integral_features, "ACMRR": acmrr.algorithm.regressor(acmrr.params)}
with torch.no_grad():
    flown = {
        name: fly(reference, y, Gains.scaled(), lambda q, dq: wind_drag(q, dq, wind), flights.dt)
        for name, y in features.items()
    }
for name, flight in flown.items():
    print(name, "RMS tracking error", round(flight.rms_error().item(), 3))

# %%
figure, (plane, error) = plt.subplots(1, 2, figsize=(10, 4))
plane.plot(*reference[0][0, :, :2].T, "k--", label="reference")
times = torch.arange(reference[0].shape[1]) * flights.dt
for (name, flight), colour in zip(flown.items(), ("tab:gray", "tab:blue")):
    plane.plot(*flight.q[0, :, :2].T, color=colour, label=name)
    gap = flight.error()[0].norm(dim=-1)  # positions and velocities
    error.plot(times, gap, color=colour, label=f"{name} (RMS {gap.square().mean().sqrt():.3f})")
plane.set_title(f"one test reference, wind {float(wind[0]):.1f} m/s")
plane.set_xlabel("x (m)")
plane.set_ylabel("y (m)")
plane.legend(fontsize=8)
error.set_xlabel("t (s)")
error.set_ylabel("|(q - r, dq - dr)|")
error.set_yscale("log")
error.legend(fontsize=8)
figure.tight_layout()
figure.savefig(out / "tutorial_flight.png", dpi=100)
