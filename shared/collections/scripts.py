"""Each collection script with the KEYS it takes, built in one place: a call site gives the
collection (and image ids), never a list of keys in the script's order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from shared import keys
from shared.collections import lua
from shared.runner import ScriptCall


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    keys: Callable[..., list[str]]

    def call(self, *key_args: Any, args: Sequence[Any]) -> ScriptCall:
        return ScriptCall(self.name, self.keys(*key_args), list(args))


def _add_keys(collection: str, shard: int, image_ids: Sequence[str]) -> list[str]:
    return [
        keys.shard(collection, shard),
        keys.images(collection, shard),
        keys.vectors(collection, shard),
        keys.thumbnails(collection, shard),
        keys.log(collection, shard),
        keys.order(collection, shard),
        keys.staged_vectors(collection, shard),
        *(keys.tombstone(collection, shard, image_id) for image_id in image_ids),
    ]


def _delete_keys(collection: str, shard: int, image_id: str) -> list[str]:
    return [
        keys.images(collection, shard),
        keys.vectors(collection, shard),
        keys.thumbnails(collection, shard),
        keys.log(collection, shard),
        keys.shard(collection, shard),
        keys.order(collection, shard),
        keys.staged_vectors(collection, shard),
        keys.tombstone(collection, shard, image_id),
    ]


def _swap_keys(collection: str, shard: int) -> list[str]:
    return [
        keys.shard(collection, shard),
        keys.images(collection, shard),
        keys.vectors(collection, shard),
        keys.staged_vectors(collection, shard),
        keys.thumbnails(collection, shard),
        keys.order(collection, shard),
        keys.log(collection, shard),
    ]


def _header(collection: str) -> list[str]:
    return [keys.collection(collection)]


# The collection header's scripts (slot `{name}`).
CREATE_COLLECTION = Script("create_collection", lua.CREATE_COLLECTION, _header)
CLAIM_MODEL = Script("claim_model", lua.CLAIM_MODEL, _header)
BEGIN_REEMBED = Script("begin_reembed", lua.BEGIN_REEMBED, _header)
ABORT_REEMBED = Script("abort_reembed", lua.ABORT_REEMBED, _header)
BEGIN_SWAP = Script("begin_swap", lua.BEGIN_SWAP, _header)
FINISH_REEMBED = Script("finish_reembed", lua.FINISH_REEMBED, _header)

# A shard's scripts (slot `{name:i}`).
ADD_IMAGES = Script("add_images", lua.ADD_IMAGES, _add_keys)
DELETE_IMAGE = Script("delete_image", lua.DELETE_IMAGE, _delete_keys)
BEGIN_SHARD_REEMBED = Script(
    "begin_shard_reembed",
    lua.BEGIN_SHARD_REEMBED,
    lambda c, s: [keys.shard(c, s), keys.images(c, s), keys.staged_vectors(c, s)],
)
ABORT_SHARD_REEMBED = Script(
    "abort_shard_reembed", lua.ABORT_SHARD_REEMBED, lambda c, s: [keys.shard(c, s), keys.staged_vectors(c, s)]
)
STAGE_VECTORS = Script(
    "stage_vectors",
    lua.STAGE_VECTORS,
    lambda c, s: [keys.images(c, s), keys.staged_vectors(c, s), keys.shard(c, s)],
)
SWAP_VECTORS = Script("swap_vectors", lua.SWAP_VECTORS, _swap_keys)
PUBLISH_SNAPSHOT = Script(
    "publish_snapshot", lua.PUBLISH_SNAPSHOT, lambda c, s: [keys.snapshot(c, s), keys.shard(c, s)]
)
REPLACE_RECORDS = Script("replace_records", lua.REPLACE_RECORDS, lambda c, s: [keys.images(c, s)])

SCRIPTS = {
    s.name: s.source
    for s in (
        CREATE_COLLECTION,
        CLAIM_MODEL,
        BEGIN_REEMBED,
        ABORT_REEMBED,
        BEGIN_SWAP,
        FINISH_REEMBED,
        ADD_IMAGES,
        DELETE_IMAGE,
        BEGIN_SHARD_REEMBED,
        ABORT_SHARD_REEMBED,
        STAGE_VECTORS,
        SWAP_VECTORS,
        PUBLISH_SNAPSHOT,
        REPLACE_RECORDS,
    )
}
