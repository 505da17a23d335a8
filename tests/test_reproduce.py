"""`metaexp reproduce`: presets trained within a budget, evaluated in their published settings, recorded
without checkpoints, and the results table regenerated between its markers, the prose around it kept."""

import json

import pytest

from conftest import run_inline

PRESETS = ["maml_sinusoid_5shot", "metasgd_sinusoid_5shot"]


def reproduce(tmp_path, *extra):
    return run_inline(
        "reproduce", *PRESETS, "--device", "cpu", "--runs", tmp_path / "runs", "--records", tmp_path / "records",
        "--page", tmp_path / "results.md", "--set", "debug=fast", "trainer.meta_batch=5",
        "--eval-set", "eval.episodes=20", *extra, cwd=tmp_path,
    )  # fmt: skip


@pytest.mark.slow  # reproduce trains and evaluates each preset in a subprocess of its own
def test_reproduce_trains_evaluates_records_and_regenerates_the_table(tmp_path):
    (tmp_path / "results.md").write_text("# Results\n\nProse above the table.\n")
    first = reproduce(tmp_path, "--minutes", "10")
    assert first.returncode == 0, first.stdout + first.stderr
    for preset in PRESETS:
        record = tmp_path / "records" / preset
        assert (record / ".hydra" / "config.yaml").is_file() and (record / "machine.json").is_file()
        assert not (record / "checkpoints").exists()
        (report,) = record.glob("eval-*.json")
        assert json.loads(report.read_text())["episodes"] == 20
    page = (tmp_path / "results.md").read_text()
    assert page.startswith("# Results\n\nProse above the table.\n")
    table = page.split("<!-- metaexp reproduce: table -->")[1]
    assert "experiment=maml_sinusoid_5shot" in table and "experiment=metasgd_sinusoid_5shot" in table
    assert "| maml_sinusoid_10shot | 10shot |" in table and "not yet run" in table  # the presets not run yet
    assert (tmp_path / "results_curves.png").stat().st_size > 0  # the learning curves, redrawn beside the page
    metrics = (tmp_path / "runs" / PRESETS[0] / "metrics.jsonl").read_text()

    again = reproduce(tmp_path, "--minutes", "10")
    assert again.returncode == 0, again.stdout + again.stderr
    # The first call's records time the presets on this device now.
    assert "no run of its algorithm" in first.stdout.split("== metasgd_sinusoid_5shot")[0], first.stdout
    timed = [line for line in again.stdout.splitlines() if line.startswith("== maml_sinusoid_5shot:")]
    assert timed and " on " in timed[0] and "about " in timed[0], again.stdout
    assert (tmp_path / "runs" / PRESETS[0] / "metrics.jsonl").read_text() == metrics  # finished: not retrained
    assert (tmp_path / "results.md").read_text() == page
    (tmp_path / "results.md").write_text(page.replace("Prose above", "Edited prose above"))
    table_only = reproduce(tmp_path, "--table-only")
    assert table_only.returncode == 0 and "== maml_sinusoid_5shot" not in table_only.stdout, table_only.stdout
    assert (tmp_path / "results.md").read_text() == page.replace("Prose above", "Edited prose above")


def test_a_spent_budget_trains_nothing_and_changes_nothing(tmp_path):
    (tmp_path / "results.md").write_text("# Results\n")
    result = reproduce(tmp_path, "--minutes", "0.001")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the budget is spent" in result.stdout and "results.md is unchanged" in result.stdout
    assert not [p for p in (tmp_path / "runs").glob("*") if p.is_dir()], "no run directory: nothing trained"
    assert (tmp_path / "results.md").read_text() == "# Results\n"


def test_an_unknown_preset_is_one_paragraph(tmp_path):
    result = run_inline("reproduce", "maml_nowhere", cwd=tmp_path)
    assert result.returncode == 2 and "No preset named maml_nowhere" in result.stdout, result.stdout + result.stderr


def test_every_preset_states_its_papers_figure_or_that_there_is_none():
    from metaexp.api import compose
    from metaexp.presets import preset_tables

    for preset, table in preset_tables()[0].items():
        if "halfcheetah" not in preset:  # MAML's paper shows HalfCheetah as learning curves only
            assert table, f"{preset} names no test setting"
        if any(v is None for v in table.values()):
            source = compose([f"experiment={preset}"]).test.source
            assert " no " in source, f"{preset}: its source should say that the paper gives no figure"


def test_expected_time_of_a_preset_not_yet_run():
    from metaexp.presets import expected_time
    from metaexp.records import Record

    tasks = {"maml_omniglot_5w1s": (1_920_000, 10), "maml_omniglot_20w1s": (1_920_000, 40), "reptile_x_5w1s": (1, 2)}
    records = [
        Record("a", preset="maml_omniglot_5w1s", tasks_per_sec=100.0, machine="CPU"),
        Record("b", preset="maml_omniglot_5w1s", tasks_per_sec=150.0, machine="CPU"),
        Record("c", preset="maml_omniglot_5w1s", tasks_per_sec=4000.0, machine="GPU"),
        Record("d", preset=None, tasks_per_sec=1.0, machine="CPU"),
    ]
    # One estimate per machine, each from its slowest record.
    assert expected_time("maml_omniglot_5w1s", tasks, records) == "about 5.3 h on CPU; about 8 min on GPU"
    # 20-way tasks hold 4x the work: a quarter of the rate.
    assert expected_time("maml_omniglot_20w1s", tasks, records) == (
        "about 21.3 h on CPU, scaled from maml_omniglot_5w1s; about 32 min on GPU, scaled from maml_omniglot_5w1s"
    )
    assert expected_time("reptile_x_5w1s", tasks, records).startswith("no run")


def test_a_variant_of_a_preset_is_not_compared_with_its_paper():
    from metaexp.presets import attach_published, preset_records
    from metaexp.records import Record

    tables, tasks = {"maml_nav": {"return_1steps": -11.68}}, {"maml_nav": (100, 1)}

    def record(*overrides):
        return Record("run", preset="maml_nav", overrides=["experiment=maml_nav", *overrides], test="return_1steps",
                      test_mean=-10.0, tasks_per_sec=1.0, machine="CPU")  # fmt: skip

    shortened, variant = record("trainer.steps=5", "trainer.device=cpu"), record("dataset.oracle=true")
    attach_published([shortened, variant], tables)
    assert shortened.published == -11.68 and variant.published is None
    # Only the variant ran: the preset's own row is still "not yet run".
    (row,) = preset_records([variant], tables, tasks)
    assert row.preset == "maml_nav" and row.status.startswith("not yet run")
    assert preset_records([shortened, variant], tables, tasks) == []


def test_records_are_read_never_run_and_the_page_is_written_outside_a_checkout(tmp_path):
    """A record someone sends (its config naming a function that writes a file) is only read; reproduce in a
    folder without docs/ writes its page there."""
    import shutil

    from conftest import ROOT

    (source,) = [p for p in (ROOT / "results" / "records").iterdir() if p.name == "maml_sinusoid_5shot"]
    record = tmp_path / "records" / "maml_sinusoid_5shot"
    shutil.copytree(source, record)
    target = tmp_path / "written-by-the-record"
    config = (record / ".hydra" / "config.yaml").read_text()
    crafted = (
        f"  extra:\n    _target_: pathlib.Path.write_text\n"
        f"    _args_: [{{_target_: pathlib.Path, _args_: [{target}]}}, x]\n"
    )
    (record / ".hydra" / "config.yaml").write_text(config.replace("dataset:\n", "dataset:\n" + crafted, 1))
    result = run_inline("reproduce", "--table-only", "--records", tmp_path / "records", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "maml_sinusoid_5shot" in (tmp_path / "docs" / "results.md").read_text()
    assert (tmp_path / "docs" / "results_curves.png").stat().st_size > 0
    assert not target.exists()
