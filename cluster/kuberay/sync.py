"""Write configs/serve-gpu.yaml into the serveConfigV2 block of cluster/kuberay/rayservice.yaml.

    python cluster/kuberay/sync.py            # rewrite the block (the rest of the manifest is kept as is)
    python cluster/kuberay/sync.py --check    # exit 1 when the block differs from configs/serve-gpu.yaml

The block is the serve config's text, comments included, indented under `serveConfigV2: |`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVE_CONFIG = REPO / "configs" / "serve-gpu.yaml"
MANIFEST = REPO / "cluster" / "kuberay" / "rayservice.yaml"
KEY = re.compile(r"^(?P<indent> *)serveConfigV2: \|\s*$")


def synced(manifest: str, serve_config: str) -> str:
    """`manifest` with its serveConfigV2 block replaced by `serve_config`."""
    lines = manifest.splitlines()
    start = next(i for i, line in enumerate(lines) if KEY.match(line))
    match = KEY.match(lines[start])
    assert match is not None  # the line `start` was found by this match
    indent = len(match["indent"])
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip(" ")) > indent):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():  # blank lines before the next key stay outside
        end -= 1
    pad = " " * (indent + 2)
    block = [pad + line if line.strip() else "" for line in serve_config.rstrip("\n").splitlines()]
    return "\n".join(lines[: start + 1] + block + lines[end:]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether the manifest is in sync")
    args = parser.parse_args(argv)
    current = MANIFEST.read_text()
    wanted = synced(current, SERVE_CONFIG.read_text())
    if args.check:
        if current != wanted:
            print(f"{MANIFEST.relative_to(REPO)} is out of date: run python cluster/kuberay/sync.py", file=sys.stderr)
            return 1
        return 0
    if current != wanted:
        MANIFEST.write_text(wanted)
        print(f"updated {MANIFEST.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
