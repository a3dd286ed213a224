"""Sweep output store: local paths and file:// URIs, atomic shard files, the resume guard (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from cluster.sweep_store import MANIFEST, StoreError, SweepStore

MANIFEST_A = {"data_hash": "a" * 64, "model_sha256": "m" * 64}


def _table(start: int, n: int) -> pa.Table:
    return pa.table({"map_index": list(range(start, start + n)), "value": [float(i) for i in range(n)]})


@pytest.mark.parametrize("as_uri", [False, True])
def test_shards_round_trip_in_map_order(tmp_path: Path, as_uri: bool) -> None:
    target = f"file://{tmp_path}/out" if as_uri else str(tmp_path / "out")
    store = SweepStore.open(target)
    store.write_shard(1, _table(3, 3))
    store.write_shard(0, _table(0, 3))
    assert store.done_shards() == {0, 1}
    assert store.read_table().column("map_index").to_pylist() == list(range(6))
    assert sorted(p.name for p in (tmp_path / "out" / "shards").iterdir()) == [
        "shard-00000.parquet", "shard-00001.parquet"]


def test_relative_paths_resolve_against_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert SweepStore.open("rel/out").root == str(tmp_path / "rel" / "out")


def test_temp_files_and_directories_are_not_finished_shards(tmp_path: Path) -> None:
    store = SweepStore.open(str(tmp_path))
    shards = tmp_path / "shards"
    (shards / "_tmp.shard-00002.parquet.abc").write_bytes(b"partial")
    (shards / "shard-00003.parquet").mkdir()
    assert store.done_shards() == set()
    with pytest.raises(OSError):  # a real failure: the final name is taken by a directory
        store.write_shard(3, _table(0, 1))


def test_claim_writes_the_manifest_and_removes_stale_temp_files(tmp_path: Path) -> None:
    store = SweepStore.open(str(tmp_path))
    (tmp_path / "shards" / "_tmp.shard-00000.parquet.dead").write_bytes(b"partial")
    store.claim(MANIFEST_A)
    assert json.loads((tmp_path / MANIFEST).read_text()) == MANIFEST_A
    assert list((tmp_path / "shards").iterdir()) == []
    store.claim(MANIFEST_A)  # the same sweep may resume


@pytest.mark.parametrize("key", ["data_hash", "model_sha256"])
def test_claim_refuses_an_output_of_another_sweep_or_model(tmp_path: Path, key: str) -> None:
    store = SweepStore.open(str(tmp_path))
    store.claim(MANIFEST_A)
    with pytest.raises(StoreError, match=f"holds a different sweep \\({key}"):
        store.claim(MANIFEST_A | {key: "b" * 64})


def test_unknown_uri_scheme_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="cannot open output"):
        SweepStore.open("nosuchscheme://bucket/path")
