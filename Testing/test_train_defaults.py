"""`distillseg train`'s defaults for users: a strategy without ``--init`` warms the student up
supervised first; ``--preset paper`` runs the papers' configurations; the help says where the
defaults depart."""

from __future__ import annotations

import pytest

from DistillSegLib.student.model_file import load_model

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY_ARGS = ["--spacing", "4,4,4", "--patch-size", "32,32,16", "--channels", "8,16,32", "--res-units", "1",
             "--val-every", "1000", "--threads", "1"]


@pytest.fixture(scope="module")
def data(sts_case_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    for case_id in ("STS_001", "STS_002"):
        (folder / case_id).symlink_to(sts_case_dir(case_id), target_is_directory=True)
    return folder


def test_the_default_warm_up_depends_on_strategy_and_init():
    from DistillSegLib.cli import build_parser
    from DistillSegLib.distill.warmup import DEFAULT_WARMUP_STEPS, warmup_steps_for

    parser = build_parser()
    base = ["train", "--data", "d", "--out", "m.pt"]
    for extra, expected in ((["--strategy", "selftrain"], DEFAULT_WARMUP_STEPS),
                            (["--strategy", "dualview"], DEFAULT_WARMUP_STEPS),
                            (["--strategy", "dualview", "--init", "s.pt"], 0),
                            ([], 0),  # supervised
                            (["--strategy", "dualview", "--warmup-steps", "0"], 0),
                            (["--strategy", "dualview", "--init", "s.pt", "--warmup-steps", "7"], 7)):
        args = parser.parse_args(base + extra)
        assert warmup_steps_for(args.strategy, args.warmup_steps, bool(args.init)) == expected, extra
    assert DEFAULT_WARMUP_STEPS == 200  # the benchmark's protocol


def train(data, out, *extra) -> dict:
    from DistillSegLib.cli import main

    assert main(["train", "--data", str(data), "--labelled", "STS_001", "--unlabelled", "STS_002",
                 "--strategy", "selftrain", "--steps", "2", "--audit-pseudo-labels", "--out", str(out),
                 *TINY_ARGS, *extra]) == 0
    return load_model(out).metadata


def test_a_strategy_without_init_is_warmed_up_first(data, tmp_path, cli):
    warmed = train(data, tmp_path / "warmed.pt")
    assert warmed["warmup"]["steps"] == 200
    assert warmed["training"]["steps_done"] == 2  # --steps counts the strategy's own steps
    cold = train(data, tmp_path / "cold.pt", "--warmup-steps", "0")
    assert "warmup" not in cold
    # the first round's pseudo-label (the student's own mask) against the held-out label
    first = [m["strategy_settings"]["pseudo_label_rounds"][0]["mean"]["student"] for m in (warmed, cold)]
    assert first[0] > first[1] + 0.05, first
    result = cli("train", "--data", data, "--strategy", "selftrain", "--warmup-steps", "-1", "--out", tmp_path / "x.pt")
    assert result.returncode == 2 and "--warmup-steps" in result.stderr


def test_preset_paper_sets_the_papers_options_and_explicit_ones_win():
    import argparse

    from DistillSegLib.demo.run import strategy_instance
    from DistillSegLib.distill.muduo import MuDuoConfig
    from DistillSegLib.distill.options import add_distillation_arguments
    from DistillSegLib.distill.presets import apply_preset
    from DistillSegLib.errors import DistillSegError

    paper = strategy_instance("dualview", ("--preset", "paper"))
    assert paper.config == MuDuoConfig(consistency=0.1, rampup_fraction=1.0, supervised_weight=0.5,
                                       selection="batch", confidence_weight=False, loss="dice")
    assert paper.teaching.tune_steps == 0
    assert strategy_instance("dualview", ("--preset", "paper", "--consistency", "0.3")).config.consistency == 0.3
    assert strategy_instance("knowsam", ("--preset", "paper")).config.prompt_from == "fused"
    assert strategy_instance("knowsam", ("--preset", "paper")).config.teacher_tuning == "lora"
    assert strategy_instance("tskd", ("--preset", "paper")).config.tuning == "lora"
    assert strategy_instance("dualview").config == MuDuoConfig()  # no preset: the defaults
    parser = argparse.ArgumentParser()
    add_distillation_arguments(parser)
    caveats = apply_preset(parser.parse_args(["--preset", "paper"]), "dualview")
    assert any("SAM-Med3D" in c for c in caveats)  # what the preset cannot restore is said
    with pytest.raises(DistillSegError, match="no paper configuration"):
        strategy_instance("selftrain", ("--preset", "paper"))


def test_preset_paper_for_a_strategy_without_a_paper_is_refused_before_loading(data, tmp_path, cli):
    result = cli("train", "--data", data, "--strategy", "selftrain", "--preset", "paper", "--out", tmp_path / "x.pt")
    assert result.returncode == 2 and "no paper configuration" in result.stderr and result.stdout == ""


def test_help_and_methods_page_name_every_strategy_and_its_departures(cli):
    from conftest import ROOT
    from DistillSegLib.distill import strategy_names
    from DistillSegLib.distill.presets import PAPER_OPTIONS

    page = (ROOT / "docs" / "methods.md").read_text()
    for name in strategy_names():
        assert f"## `{name}`" in page, name
    for name in PAPER_OPTIONS:  # every preset has its table of departures
        section = page.split(f"## `{name}`")[1].split("\n## ")[0]
        assert "`--preset paper`" in section and "| setting |" in section
    result = cli("train", "--help")
    assert "docs/methods.md" in result.stdout and "--preset" in result.stdout and "--warmup-steps" in result.stdout


def test_a_strategy_without_unlabelled_cases_is_refused_before_the_warm_up(data, tmp_path, cli):
    result = cli("train", "--data", data, "--labelled", "STS_001", "--strategy", "selftrain", "--out", tmp_path / "x.pt")
    assert result.returncode == 2 and "--unlabelled" in result.stderr and result.stdout == ""


def test_the_former_name_muduo_is_refused_with_what_to_use(data, tmp_path, cli):
    """``muduo``'s defaults are not the paper's method, so the strategy is ``dualview``; a script
    that still asks for ``muduo`` stops with one line saying what to use, before anything loads."""
    result = cli("train", "--data", data, "--labelled", "STS_001", "--unlabelled", "STS_002", "--strategy", "muduo",
                 "--out", tmp_path / "x.pt")
    assert result.returncode == 2 and result.stdout == "" and not (tmp_path / "x.pt").exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "dualview" in lines[0] and "--preset paper" in lines[0], result.stderr
