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


def _add_keys(collection: str, image_ids: Sequence[str]) -> list[str]:
    return [
        keys.COLLECTIONS,
        keys.collection(collection),
        keys.images(collection),
        keys.vectors(collection),
        keys.thumbnails(collection),
        keys.log(collection),
        keys.order(collection),
        keys.staged_vectors(collection),
        *(keys.tombstone(collection, image_id) for image_id in image_ids),
    ]


def _delete_keys(collection: str, image_id: str) -> list[str]:
    return [
        keys.images(collection),
        keys.vectors(collection),
        keys.thumbnails(collection),
        keys.log(collection),
        keys.collection(collection),
        keys.labels(collection),
        keys.order(collection),
        keys.staged_vectors(collection),
        keys.SEQUENCE,
        keys.tombstone(collection, image_id),
    ]


def _swap_keys(collection: str) -> list[str]:
    return [
        keys.collection(collection),
        keys.images(collection),
        keys.vectors(collection),
        keys.staged_vectors(collection),
        keys.thumbnails(collection),
        keys.labels(collection),
        keys.order(collection),
        keys.log(collection),
    ]


ADD_IMAGES = Script("add_images", lua.ADD_IMAGES, _add_keys)
DELETE_IMAGE = Script("delete_image", lua.DELETE_IMAGE, _delete_keys)
STAGE_VECTORS = Script(
    "stage_vectors",
    lua.STAGE_VECTORS,
    lambda c: [keys.images(c), keys.staged_vectors(c), keys.collection(c)],
)
SWAP_VECTORS = Script("swap_vectors", lua.SWAP_VECTORS, _swap_keys)
ABORT_REEMBED = Script("abort_reembed", lua.ABORT_REEMBED, lambda c: [keys.collection(c), keys.staged_vectors(c)])
BEGIN_REEMBED = Script(
    "begin_reembed",
    lua.BEGIN_REEMBED,
    lambda c: [keys.collection(c), keys.images(c), keys.staged_vectors(c)],
)
CREATE_COLLECTION = Script("create_collection", lua.CREATE_COLLECTION, lambda c: [keys.COLLECTIONS, keys.collection(c)])
PUBLISH_SNAPSHOT = Script(
    "publish_snapshot",
    lua.PUBLISH_SNAPSHOT,
    lambda c, part="": [keys.snapshot(c, part), keys.collection(c)],
)

REPLACE_RECORDS = Script("replace_records", lua.REPLACE_RECORDS, lambda c: [keys.images(c)])

SCRIPTS = {
    s.name: s.source
    for s in (
        ADD_IMAGES,
        DELETE_IMAGE,
        STAGE_VECTORS,
        SWAP_VECTORS,
        ABORT_REEMBED,
        BEGIN_REEMBED,
        CREATE_COLLECTION,
        PUBLISH_SNAPSHOT,
        REPLACE_RECORDS,
    )
}
