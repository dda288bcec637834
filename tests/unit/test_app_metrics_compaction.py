"""Folding exited workers' prometheus-client files into one archive per kind changes nothing that a scrape
shows: real multiprocess files (written with prometheus-client's own file format), collected with its own
MultiProcessCollector before and after."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from corral.admin.app_metrics import compact_dead_files

LIVE, DEAD_A, DEAD_B = 100, 201, 202


def write(directory: Path, kind: str, pid: int, entries: list[tuple[str, str, dict[str, str], float, float]]) -> None:
    """entries: (metric, sample name, labels, value, timestamp) into <kind>_<pid>.db."""
    values = MmapedDict(str(directory / f"{kind}_{pid}.db"))
    try:
        for metric, name, labels, value, timestamp in entries:
            key = mmap_key(metric, name, list(labels), list(labels.values()), f"{metric} help")
            values.write_value(key, value, timestamp)
    finally:
        values.close()


def a_workers_files(directory: Path, pid: int, scale: float) -> None:
    write(directory, "counter", pid, [("jobs", "jobs_total", {"queue": "a"}, 3 * scale, 0.0),
                                      ("jobs", "jobs_total", {"queue": "b"}, 1 * scale, 0.0)])  # fmt: skip
    write(directory, "histogram", pid, [("lat", "lat_sum", {}, 2.5 * scale, 0.0),
                                        ("lat", "lat_bucket", {"le": "0.1"}, 1 * scale, 0.0),
                                        ("lat", "lat_bucket", {"le": "1.0"}, 4 * scale, 0.0),
                                        ("lat", "lat_bucket", {"le": "+Inf"}, 5 * scale, 0.0)])  # fmt: skip
    write(directory, "gauge_sum", pid, [("seen", "seen", {}, 1.0, 0.0)])
    write(directory, "gauge_max", pid, [("peak", "peak", {}, 10 * scale, 0.0)])
    write(directory, "gauge_min", pid, [("low", "low", {}, 10 * scale, 0.0)])
    write(directory, "gauge_mostrecent", pid, [("last", "last", {}, scale, 1000.0 + scale)])
    write(directory, "gauge_all", pid, [("each", "each", {}, scale, 0.0)])


def scrape(directory: Path) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {
        (sample.name, tuple(sorted(sample.labels.items())), sample.value)
        for family in MultiProcessCollector(None, path=str(directory)).collect()
        for sample in family.samples
    }


def test_folding_exited_workers_files_leaves_the_scrape_unchanged(tmp_path: Path) -> None:
    for pid, scale in ((LIVE, 1.0), (DEAD_A, 2.0), (DEAD_B, 3.0)):
        a_workers_files(tmp_path, pid, scale)
    before = scrape(tmp_path)

    folded = compact_dead_files(str(tmp_path), exited=lambda pid: pid in (DEAD_A, DEAD_B))

    assert folded == 12  # 6 foldable kinds x 2 exited workers; gauge_all files stay (one series per pid)
    assert scrape(tmp_path) == before
    names = sorted(path.name for path in tmp_path.iterdir())
    assert f"counter_{LIVE}.db" in names and "counter_archive.db" in names
    assert not any(f"_{DEAD_A}.db" in name and not name.startswith("gauge_all") for name in names)
    assert f"gauge_all_{DEAD_A}.db" in names


def test_a_later_fold_adds_to_the_archive(tmp_path: Path) -> None:
    a_workers_files(tmp_path, DEAD_A, 2.0)
    compact_dead_files(str(tmp_path), exited=lambda pid: True)
    a_workers_files(tmp_path, DEAD_B, 3.0)
    a_workers_files(tmp_path, LIVE, 1.0)
    before = scrape(tmp_path)

    compact_dead_files(str(tmp_path), exited=lambda pid: pid != LIVE)

    after = scrape(tmp_path)
    assert after == before
    assert ("jobs_total", (("queue", "a"),), 18.0) in after  # 3 x (2 + 3 + 1)
    assert ("peak", (), 30.0) in after and ("low", (), 10.0) in after and ("last", (), 3.0) in after


def test_nothing_is_folded_while_every_writer_lives(tmp_path: Path) -> None:
    a_workers_files(tmp_path, LIVE, 1.0)
    files = sorted(tmp_path.iterdir())
    assert compact_dead_files(str(tmp_path), exited=lambda pid: False) == 0
    assert sorted(tmp_path.iterdir()) == files
