"""Fixed episode sets through `metaexp eval`: saved episodes replay exactly; episodes named by image path go
through the checkpoint's preprocessing and score the same as the same images named by dataset row."""

import json
import shutil

import pytest


from conftest import OMNIGLOT_LAKE, TINY, make_layout, run_inline

PROTONET = [
    "algorithm=protonet",
    *OMNIGLOT_LAKE,
    "sampler.ways=3",
    "sampler.shots=1",
    "sampler.queries=2",
    "test.sampler.ways=3",
    "test.sampler.queries=2",
    "backbone.hidden=8",
    *TINY,
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("episodes")
    root = make_layout(base / "omniglot")
    run = base / "run"
    result = run_inline("train", *PROTONET, f"dataset.root={root}", f"hydra.run.dir={run}", cwd=base)
    assert result.returncode == 0, result.stdout + result.stderr
    return base, root, run / "checkpoints" / "last.pt"


def evaluate(cli, checkpoint, output, *extra):
    result = cli("eval", f"checkpoint={checkpoint}", f"eval.output={output}", "trainer.device=cpu", *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(output.read_text())


def test_saved_episodes_replay_identically(cli, trained, tmp_path):
    _, _, checkpoint = trained
    episodes = tmp_path / "episodes.json"
    sampled = evaluate(
        cli, checkpoint, tmp_path / "a.json", "eval.episodes=12", "eval.meta_batch=5", f"eval.save_episodes={episodes}"
    )
    document = json.loads(episodes.read_text())
    assert document["format"] == "metaexp-episodes/1" and len(document["episodes"]) == 12
    first = document["episodes"][0]
    assert len(first["support"]) == 3 and len(first["query"]) == 6
    assert {e[1] for e in first["support"]} == {0, 1, 2} and all(e[2] % 90 == 0 for e in first["query"])
    replayed = evaluate(cli, checkpoint, tmp_path / "b.json", f"eval.episodes_file={episodes}", "seed=5")
    assert replayed["episodes"] == 12
    assert replayed["mean"] == sampled["mean"] and replayed["loss"] == sampled["loss"]


def test_episodes_by_path_match_episodes_by_row(cli, trained, tmp_path):
    _, root, checkpoint = trained
    characters = [root / "images_evaluation" / "Angelic" / f"character0{c}" for c in (1, 2)] + [
        root / "images_evaluation" / "Tengwar" / "character01"
    ]
    rows = {0: 0, 1: 4, 2: 8}
    images = tmp_path / "images"
    by_path, by_row = {"support": [], "query": []}, {"support": [], "query": []}
    for label, folder in enumerate(characters):
        files = sorted(folder.glob("*.png"))
        for i, file in enumerate(files[:3]):
            part = "support" if i == 0 else "query"
            target = images / f"{label}_{i}.png"
            target.parent.mkdir(exist_ok=True)
            shutil.copy(file, target)
            by_path[part].append([f"images/{target.name}", label])
            by_row[part].append([rows[label] + i, label])
    for name, episode in (("path.json", by_path), ("row.json", by_row)):
        (tmp_path / name).write_text(json.dumps({"format": "metaexp-episodes/1", "episodes": [episode]}))
    a = evaluate(cli, checkpoint, tmp_path / "a.json", f"eval.episodes_file={tmp_path / 'path.json'}")
    b = evaluate(cli, checkpoint, tmp_path / "b.json", f"eval.episodes_file={tmp_path / 'row.json'}")
    assert a["episodes"] == b["episodes"] == 1
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["mean"] == b["mean"]


def test_bad_episode_file_is_a_clear_error(cli, trained, tmp_path):
    _, _, checkpoint = trained
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    result = cli("eval", f"checkpoint={checkpoint}", f"eval.episodes_file={broken}", "trainer.device=cpu")
    assert result.returncode == 2 and "not a readable episode file" in result.stdout


def test_malformed_episodes_name_the_problem(cli, trained, tmp_path):
    _, _, checkpoint = trained
    cases = {
        "missing.json": ([{"support": [[0, 0]]}], "needs non-empty `support` and `query` lists of [ref, label]"),
        "empty.json": ([{"support": [], "query": [[1, 0]]}], "needs non-empty `support` and `query`"),
        "float.json": ([{"support": [[0, 0.0], [4, 1.0]], "query": [[1, 0.0]]}], "the label 0.0 of [0, 0.0]"),
        "gap.json": ([{"support": [[0, 7]], "query": [[1, 0]]}], "support has [7], query has [0]"),
        "unsupported.json": (
            [{"support": [[0, 0], [4, 1]], "query": [[1, 0], [8, 2]]}],
            "at least one support example each",
        ),
        "mixed.json": (
            [
                {"support": [[0, 0], [4, 1]], "query": [[1, 0]]},
                {"support": [[0, 0], [4, 1], [8, 2]], "query": [[1, 0]]},
            ],
            "mixes episodes of [2, 3]",
        ),
        "none.json": ([], "lists no episodes"),
        "row.json": ([{"support": [[10**6, 0]], "query": [[1, 0]]}], "is outside the split"),
    }
    for name, (episodes, expected) in cases.items():
        (tmp_path / name).write_text(json.dumps({"format": "metaexp-episodes/1", "episodes": episodes}))
        result = cli("eval", f"checkpoint={checkpoint}", f"eval.episodes_file={tmp_path / name}", "trainer.device=cpu")
        assert result.returncode == 2 and expected in result.stdout, (name, result.stdout)
        assert "Traceback" not in result.stdout + result.stderr


def test_episode_file_sets_its_own_ways(cli, trained, tmp_path):
    """A 2-way file on a checkpoint trained 3-way (the ProtoNets protocol: train wider than test) scores 2-way
    episodes without any sampler.ways on the command line."""
    _, _, checkpoint = trained
    episodes = [{"support": [[0, 0], [4, 1]], "query": [[1, 0], [2, 0], [5, 1], [6, 1]]}] * 3
    (tmp_path / "two.json").write_text(json.dumps({"format": "metaexp-episodes/1", "episodes": episodes}))
    report = evaluate(cli, checkpoint, tmp_path / "r.json", f"eval.episodes_file={tmp_path / 'two.json'}")
    assert report["settings"]["sampler"]["ways"] == 2 and report["episodes"] == 3
    assert 0.0 <= report["mean"] <= 1.0 and report["loss"] == report["loss"], "a finite loss, not NaN"
