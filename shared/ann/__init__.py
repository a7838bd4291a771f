"""A collection's vectors for search at scale: exact when small, approximate + exact re-rank when large.

`AnnIndex` has the surface of `shared.index.VectorIndex` (ids, upsert, remove, search, ...), so a
replica can hold either. Below `AnnParams.threshold` vectors it *is* the exact index: a dense
float32 matrix and one matrix-vector product per query, with VectorIndex's results to the bit.
From the threshold on it keeps, instead of float32 rows, a faiss IVF index whose lists hold 4-bit
product-quantisation codes in fast-scan layout ("IVF{nlist},PQ{dim/2}x4fs": one 4-bit code per
two dimensions, 320 bytes for a 1280-d vector, 1/16 of float32). A query then

1. asks the IVF index for the `candidates` (C) best labels by approximate inner product,
2. takes those candidates' source-of-truth vectors -- fetched with `fetch_vectors(ids)` (the
   float16 vectors in Redis) or, with `hold=True`, float16 copies held here -- and
3. re-ranks them exactly: similarity = float32 dot product with the query, ties broken by id.

So the order and similarities returned are those of exact cosine over the candidates; only recall
(whether the true top-k are among the C) is approximate. bench/ann_choice.py compared this design
with faiss HNSW-SQ8, IVF-SQ8/SQ4, IVF-PQ fast-scan at two code sizes and usearch (int8, float16)
on 1 M x 1280 vectors; its measurements set the defaults below (1 M x 1280: recall@10 0.99 with
C = 100, ~1 ms inside the process plus ~1 ms to fetch the candidates from Redis, ~0.5 GB).

Changes apply incrementally: `upsert` adds to the IVF lists (encoding needs no retraining) and
`remove` clears the label's bit in an "alive" bitmap that every search passes to faiss as a
selector, so a removed id can never come back (an id re-added gets a new label). Training (IVF
centroids, PQ codebooks) happens when the collection crosses the threshold, again whenever it has
grown `regrow` times since (more lists for more vectors) or removed vectors' codes pile up
(`compact`). Training runs in a background thread while the current structure keeps answering;
vectors added meanwhile are journaled and added to the new index before it takes over. Below
threshold / 2 the index goes back to exact.

Filters: `mask` is a boolean array aligned to `ids` or a predicate on ids. An array becomes an
IVF selector (more lists are probed the more selective it is); when it allows at most
`exact_subset` vectors the search is exact over exactly those. A predicate is first applied to an
oversampled candidate list; if too few pass it is evaluated over all ids and treated as an array.

Snapshots (`save` / `load`) hold the ids, the labels and the serialised faiss index (or the exact
matrix), so a restarted worker loads one and replays the log after it instead of rebuilding.

The package: params (tuning), ivf (the faiss index), rows (ids, labels, vectors; upsert, remove),
search and masks, training, snapshot (save / load), bulk (a whole collection at once).
"""

from shared.ann.bulk import BULK_BLOCK, BulkBuild
from shared.ann.ivf import _faiss, nlist_for
from shared.ann.params import AnnParams, FetchVectors, fetcher
from shared.ann.rows import LIST_ASSIGN_MAX
from shared.ann.search import MIN_SCAN, Search
from shared.ann.snapshot import SNAPSHOT_VERSION, Snapshots
from shared.ann.training import Training
from shared.index import Mask

__all__ = [
    "BULK_BLOCK",
    "LIST_ASSIGN_MAX",
    "MIN_SCAN",
    "SNAPSHOT_VERSION",
    "AnnIndex",
    "AnnParams",
    "FetchVectors",
    "Mask",
    "_faiss",
    "fetcher",
    "nlist_for",
]


class AnnIndex(Search, Training, Snapshots, BulkBuild):
    """The rows (rows.Rows: the VectorIndex surface, upsert, remove), searched (search), trained
    (training), saved and loaded (snapshot) and bulk-built (bulk): each concern is a class over
    the same state, and this is all of them at once."""
