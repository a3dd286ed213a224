"""Where a sweep writes: a local directory or a URI, through pyarrow.fs.

Layout under the output root:
    sweep.json            the manifest: config, its data hash, the model's sha256 (guards resumes)
    shards/shard-NNNNN.parquet   one file per finished shard, written to a temp name and renamed
    summary.json, report.md, plots/*.png

Every file appears atomically (temp file + move), so a file under its final name is always complete
and "the shard file exists" is the resume test. Temp names start with "_", which pyarrow.dataset and
pandas skip when they read the shards directory.
"""

from __future__ import annotations

import json
import os
import re
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SHARD_DIR = "shards"
MANIFEST = "sweep.json"
_SHARD_NAME = re.compile(r"^shard-(\d{5,})\.parquet$")
_TEMP_PREFIX = "_tmp."


class StoreError(RuntimeError):
    """The output location cannot be used for this sweep (it holds another sweep, or is unreachable)."""


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.parquet"


class SweepStore:
    """A sweep's output root on a pyarrow filesystem (local, file://, s3://, gs://, ...)."""

    def __init__(self, filesystem: pafs.FileSystem, root: str, target: str) -> None:
        self.fs = filesystem
        self.root = root.rstrip("/")
        self.target = target

    @classmethod
    def open(cls, target: str) -> SweepStore:
        """Resolve a local path (relative to the current directory) or a URI and create the root."""
        if "://" in target:
            try:
                filesystem, root = pafs.FileSystem.from_uri(target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as error:
                raise StoreError(f"cannot open output {target}: {error}") from None
        else:
            filesystem, root = pafs.LocalFileSystem(), os.path.abspath(target)
        store = cls(filesystem, root, target if "://" in target else root)
        store.fs.create_dir(store.path(SHARD_DIR), recursive=True)
        return store

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    # --- atomic writes ---------------------------------------------------------------------------

    def _temp_for(self, name: str) -> str:
        folder, _, base = name.rpartition("/")
        temp = f"{_TEMP_PREFIX}{base}.{uuid.uuid4().hex}"
        return self.path(f"{folder}/{temp}" if folder else temp)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write `data` to `name` (relative to the root) atomically."""
        folder = name.rpartition("/")[0]
        if folder:
            self.fs.create_dir(self.path(folder), recursive=True)
        temp = self._temp_for(name)
        with self.fs.open_output_stream(temp) as stream:
            stream.write(data)
        self.fs.move(temp, self.path(name))

    def write_shard(self, shard: int, table: pa.Table) -> None:
        """Write one shard's table as Parquet, atomically."""
        name = f"{SHARD_DIR}/{shard_name(shard)}"
        temp = self._temp_for(name)
        with self.fs.open_output_stream(temp) as stream:
            pq.write_table(table, stream)
        self.fs.move(temp, self.path(name))

    # --- reads -----------------------------------------------------------------------------------

    def read_bytes(self, name: str) -> bytes | None:
        if self.fs.get_file_info(self.path(name)).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(self.path(name)) as stream:
            return stream.read()

    def _shard_entries(self) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(self.path(SHARD_DIR), allow_not_found=True)
        return self.fs.get_file_info(selector)

    def done_shards(self) -> set[int]:
        """Indices of shards whose file is in place."""
        done = set()
        for info in self._shard_entries():
            match = _SHARD_NAME.match(info.base_name)
            if match and info.type == pafs.FileType.File:
                done.add(int(match.group(1)))
        return done

    def read_table(self) -> pa.Table:
        """All finished shards as one table, ordered by map_index."""
        tables = []
        for shard in sorted(self.done_shards()):
            with self.fs.open_input_file(self.path(f"{SHARD_DIR}/{shard_name(shard)}")) as handle:
                tables.append(pq.read_table(handle))
        if not tables:
            raise StoreError(f"no finished shards in {self.target}")
        return pa.concat_tables(tables).sort_by("map_index")

    # --- the manifest ----------------------------------------------------------------------------

    def check(self, **expected: str) -> None:
        """StoreError if the manifest in place (if any) has other values for these keys."""
        existing = self.read_bytes(MANIFEST)
        if existing is None:
            return
        previous = json.loads(existing)
        for key, value in expected.items():
            if previous.get(key) != value:
                raise StoreError(
                    f"output {self.target} holds a different sweep ({key} {str(previous.get(key))[:12]} != "
                    f"{value[:12]}); use a new output, or the config and model it was made with"
                )

    def claim(self, manifest: dict) -> None:
        """Write the manifest, or check that the one in place describes the same sweep and model.

        Stale temp files of an interrupted run are removed: one output serves one run at a time.
        """
        self.check(data_hash=manifest["data_hash"], model_sha256=manifest["model_sha256"])
        for info in self._shard_entries():
            if info.base_name.startswith(_TEMP_PREFIX):
                self.fs.delete_file(info.path)
        self.write_bytes(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
