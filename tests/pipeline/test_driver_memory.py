"""The driver streams pairs instead of materialising them (its memory must not grow with the number
of pairs): chunked pair building, part-wise writing, part-wise unique images, Arrow-side counting;
plus the pure helpers of the performance suite (benchmarks/)."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from tests.helpers.paths import REPO


def write_pairs(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "pairs.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def pairs_conf(tmp_path: Path, pairs_file: Path) -> dict:
    from matchmill.pipeline.config import load_config

    return load_config(None, [f"storage=file://{tmp_path}/runs", "data.source=pairs_file",
                              f"data.pairs_file={pairs_file}", f"data.images_dir={tmp_path}/images"])


LINES = [
    "# header comment",
    "a.png b.png",
    "a.png c.png",
    "",
    "a.png b.png",  # duplicate of line 2: dropped
    "b.png c.png 90 0",  # EXIF rotation: a failed row that flows on
    "c.png d.png",
    "only_one_name.png",  # malformed: a failed row keyed by its location
    "d.png e.png",
    "e.png a.png",
]


def test_pairs_file_is_read_lazily_with_the_same_rows(tmp_path):
    from matchmill.datasets.pairs_file import iter_pairs_file, read_pairs_file

    path = write_pairs(tmp_path, LINES)
    rows = iter_pairs_file(path, tmp_path)
    assert inspect.isgenerator(rows)
    assert list(rows) == read_pairs_file(path, tmp_path)
    assert len(read_pairs_file(path, tmp_path)) == 7  # comment, blank line and duplicate skipped
    assert read_pairs_file(path, tmp_path)[4]["error"].startswith(f"{path}:8:")  # line numbers kept


@pytest.mark.parametrize("chunk_rows", [1, 3, 1024])
def test_pair_tables_come_in_chunks_and_equal_build_pairs(tmp_path, chunk_rows):
    from matchmill.stages.pairs import build_pairs, iter_pair_tables

    conf = pairs_conf(tmp_path, write_pairs(tmp_path, LINES))
    tables = list(iter_pair_tables(conf, chunk_rows=chunk_rows))
    assert all(0 < t.num_rows <= chunk_rows for t in tables)
    whole = pa.concat_tables(tables)
    assert whole.equals(build_pairs(conf))
    ids = whole.column("pair_id").to_pylist()
    assert len(ids) == len(set(ids)) == 7  # the duplicate is dropped even across chunk boundaries
    assert whole.column("status").to_pylist().count("failed") == 2


def test_empty_pairs_file_gives_one_empty_table(tmp_path):
    from matchmill.manifests.schemas import PAIRS
    from matchmill.stages.pairs import iter_pair_tables

    conf = pairs_conf(tmp_path, write_pairs(tmp_path, ["# nothing"]))
    (table,) = iter_pair_tables(conf)
    assert table.num_rows == 0 and table.schema.equals(PAIRS, check_metadata=False)


@pytest.mark.parametrize("sizes, expected_parts", [([3, 5, 0, 2], [4, 4, 2]), ([4, 4], [4, 4]), ([], [0])])
def test_write_in_parts_streams_tables_into_fixed_size_parts(tmp_path, sizes, expected_parts):
    from matchmill.manifests.commit import part_files, read_stage
    from matchmill.manifests.schemas import IMAGES
    from matchmill.manifests.storage import read_manifest
    from matchmill.pipeline.graph import get_stage
    from matchmill.pipeline.runner import write_in_parts

    def table(start: int, n: int) -> pa.Table:
        rows = [{"image_id": f"im{i:03d}", "scene": None, "path": f"/x/{i}.png", "crop": None, "status": "ok",
                 "error": None} for i in range(start, start + n)]
        return pa.Table.from_pylist(rows, schema=IMAGES)

    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    url = f"file://{tmp_path}/run"
    total = write_in_parts((table(s, n) for s, n in zip(starts, sizes)), url, get_stage("images"), rows_per_part=4)
    assert total == sum(sizes)
    parts = part_files(url, "images")
    assert [read_manifest(p, "images").num_rows for p in parts] == expected_parts
    assert read_stage(url, "images").column("image_id").to_pylist() == [f"im{i:03d}" for i in range(sum(sizes))]


def test_unique_images_from_parts_equals_whole_table(tmp_path):
    from matchmill.stages.images import IMAGE_SOURCE_COLUMNS, unique_images
    from matchmill.stages.pairs import build_pairs

    pairs = build_pairs(pairs_conf(tmp_path, write_pairs(tmp_path, LINES)))
    parts = [pairs.slice(0, 2).select(IMAGE_SOURCE_COLUMNS), pairs.slice(2, 3), pairs.slice(5)]
    streamed = unique_images(iter(parts))
    assert streamed.equals(unique_images(pairs))
    assert streamed.column("image_id").to_pylist() == ["a.png", "b.png", "c.png", "d.png", "e.png",
                                                      "only_one_name.png"]  # a failed row keeps its image


def test_input_rows_are_counted_from_parquet_footers(tmp_path):
    from matchmill.manifests.storage import write_manifest
    from matchmill.pipeline.runner import count_input_rows
    from matchmill.stages.pairs import build_pairs

    pairs = build_pairs(pairs_conf(tmp_path, write_pairs(tmp_path, LINES)))
    url = f"file://{tmp_path}/run"
    write_manifest(pairs.slice(0, 3), f"{url}/pairs/part-00000.parquet", "pairs")
    write_manifest(pairs.slice(3), f"{url}/pairs/part-00001.parquet", "pairs")
    assert count_input_rows(url, "pairs") == 7


# ----------------------------------------------------------------------------- benchmark helpers


@pytest.fixture
def benchmarks_on_path():
    sys.path.insert(0, str(REPO / "benchmarks"))
    yield
    sys.path.remove(str(REPO / "benchmarks"))


def test_driver_rss_helpers(tmp_path, benchmarks_on_path):
    import driver_rss

    assert [driver_rss.images_needed(n) for n in (1, 3, 4, 1000, 10000)] == [2, 3, 4, 46, 142]
    names = driver_rss.make_images(tmp_path / "images", 5)
    assert len(set(names)) == 5 and all((tmp_path / "images" / n).stat().st_size > 0 for n in names)
    lines = driver_rss.write_pairs_file(tmp_path / "p.txt", names, 7).read_text().splitlines()
    assert len(lines) == len(set(lines)) == 7 and all(a != b for a, b in (line.split() for line in lines))


def test_exhaustive_pair_list_covers_every_pair_once(tmp_path, benchmarks_on_path):
    import perf_suite

    images = tmp_path / "scene" / "demo" / "images"
    images.mkdir(parents=True)
    for i in range(6):
        (images / f"demo_{i:03d}.jpg").write_bytes(b"x")
    path, folder, n, pairs = perf_suite.exhaustive_pairs(tmp_path / "scene", tmp_path)
    assert (folder, n, pairs) == (images, 6, 15)
    unordered = {frozenset(line.split()) for line in path.read_text().splitlines()}
    assert len(unordered) == 15 and all(len(p) == 2 for p in unordered)
