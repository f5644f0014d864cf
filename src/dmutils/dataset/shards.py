"""``dmutils merge-shards OUT [SHARD ...]``: merge the shards that ``dmutils generate --shard i/n`` wrote.

Each shard is a complete dataset folder (default ``<out_dir>/shards/i-of-n``) holding samples
``i, i+n, ...``. Merging checks that every shard was made with the same params (hash) and that no
sample index appears twice with different content, copies the files (atomically), and writes the
manifest in index order and the splits: the result is byte for byte what one unsharded run writes.
"""
from __future__ import annotations

import re
from pathlib import Path

from dmutils.data import voc
from dmutils.dataset.layout import (
    MANIFEST,
    MAPS,
    META,
    Manifest,
    prepare_output,
    read_meta,
    summarize,
    write_splits,
)
from dmutils.dataset.preview import with_preview
from dmutils.errors import ParamsError
from dmutils.locks import folder_lock
from dmutils.paths import atomic_write_bytes

SHARD_NAME = re.compile(r"^(\d+)-of-(\d+)$")


def find_shards(out: Path) -> list[Path]:
    return sorted((p for p in (Path(out) / "shards").glob("*-of-*") if SHARD_NAME.match(p.name)),
                  key=lambda p: int(SHARD_NAME.match(p.name).group(1)))


def merge_shards(out: str | Path, shards: list[str | Path] | None = None, partial: bool = False) -> dict:
    """Merge shard folders (default: ``out/shards/*-of-*``) into ``out``; returns the summary."""
    out = Path(out)
    shards = [Path(s) for s in shards] if shards else find_shards(out)
    if not shards:
        raise ParamsError(f"no shards to merge: give shard folders, or run 'dmutils generate --shard i/n' "
                          f"so that {out / 'shards'} holds i-of-n folders")
    metas = {}
    for s in shards:
        if not (s / META).is_file():
            raise ParamsError(f"{s} is not a dataset shard (no {META})")
        metas[s] = read_meta(s, need_params=True)
    hashes = {m["params_hash"] for m in metas.values()}
    if len(hashes) > 1:
        listing = ", ".join(f"{s.name}: {m['params_hash']}" for s, m in metas.items())
        raise ParamsError(f"shards were made with different params ({listing}); regenerate the odd ones with the same params")
    names = [SHARD_NAME.match(s.name) for s in shards]
    if all(names) and not partial:
        counts = {int(m.group(2)) for m in names}
        have = {int(m.group(1)) for m in names}
        want = set(range(max(counts))) if len(counts) == 1 else have
        if len(counts) > 1 or have != want:
            raise ParamsError(f"shards {sorted(s.name for s in shards)} are not a complete set "
                              f"(missing {sorted(want - have) or 'a consistent n'}); pass --partial to merge them anyway")
    with folder_lock(out, "--out"):  # one job a folder: not two merges, nor a merge while generate writes there
        prepare_output(out, next(iter(metas.values())))
        manifest = Manifest(out / MANIFEST)
        records = manifest.read()
        for s in shards:
            for index, rec in Manifest(s / MANIFEST).read().items():
                if index in records and records[index] != rec:
                    raise ParamsError(f"sample {index} ({rec['id']}) differs between {s} and another shard or {out}")
                records[index] = rec
                if rec["status"] != "ok":
                    continue
                for sub, ext in ((voc.IMAGES, "jpg"), (voc.LABELS, "png"), (MAPS, "npz")):
                    src = s / sub / f"{rec['id']}.{ext}"
                    if src.is_file():
                        atomic_write_bytes(out / sub / src.name, src.read_bytes())
                    elif ext != "npz":
                        raise ParamsError(f"{src} is missing although the shard's manifest lists {rec['id']} as written; "
                                          "re-run that shard's 'dmutils generate' to repair it")
        manifest.rewrite([records[i] for i in sorted(records)])
        write_splits(out, records)
        classes = next(iter(metas.values()))["classes"][1:]
        return with_preview({"out_dir": str(out), "shards": len(shards), **summarize(records, classes)})
