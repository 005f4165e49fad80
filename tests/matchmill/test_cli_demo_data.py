"""``matchmill demo-data`` writes a scene that the MegaDepth pair source reads."""

from __future__ import annotations

from matchmill.datasets.megadepth import select_megadepth_pairs
from matchmill.cli import main as cli_main


def test_demo_data_command_writes_a_usable_scene(tmp_path, capsys):
    assert cli_main(["demo-data", str(tmp_path), "--cameras", "12", "--seed", "1"]) == 0
    assert "demo scene written" in capsys.readouterr().out
    images = sorted((tmp_path / "demo" / "images").glob("*.jpg"))
    assert len(images) == 12
    assert len(list((tmp_path / "demo" / "depths").glob("*.h5"))) == 12
    pairs = select_megadepth_pairs(tmp_path, {"max_pairs_per_scene": 5})
    assert 0 < len(pairs) <= 5
