"""``matchmill viz pyramid`` says in one stderr line when its net has random weights, and not otherwise."""

from __future__ import annotations

from matchmill.cli import main
from matchmill.viz.viz_command import RANDOM_WEIGHTS_WARNING, SHIPPED_PUMP


def test_random_weights_warn_once_and_shipped_ones_do_not(demo_root, tmp_path, capsys):
    a, b = sorted((demo_root / "demo" / "images").glob("*.jpg"))[3:5]
    common = ["viz", "pyramid", str(a), str(b), "--x", "150", "--y", "100", "--resize", "96"]
    assert main([*common, "--out", str(tmp_path / "random.png")]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == [RANDOM_WEIGHTS_WARNING] and SHIPPED_PUMP in err
    assert main([*common, "--out", str(tmp_path / "shipped.png"), "--weights", SHIPPED_PUMP]) == 0
    assert capsys.readouterr().err == ""
    assert (tmp_path / "shipped.png").stat().st_size > 0


def test_bad_input_stays_one_line_without_the_warning(demo_root, tmp_path, capsys):
    a, b = sorted((demo_root / "demo" / "images").glob("*.jpg"))[3:5]
    assert main(["viz", "pyramid", str(a), str(b), "--x", "5000", "--y", "10", "--resize", "96",
                 "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "outside image 1" in err[0]
