"""``distillseg train --strategy X`` without ``--init`` warms the student up supervised before
the strategy's first round (a round prompted by an untrained student is wasted)."""

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
                            (["--strategy", "muduo"], DEFAULT_WARMUP_STEPS),
                            (["--strategy", "muduo", "--init", "s.pt"], 0),
                            ([], 0),  # supervised
                            (["--strategy", "muduo", "--warmup-steps", "0"], 0),
                            (["--strategy", "muduo", "--init", "s.pt", "--warmup-steps", "7"], 7)):
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
