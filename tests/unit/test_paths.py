"""api/paths.py: the patterns the middlewares match before routing name routes the app has."""

from __future__ import annotations

from api import paths
from api.main import create_app


def test_every_named_path_is_a_route_of_the_app() -> None:
    routes = create_app().openapi()["paths"]
    for path in (paths.IMAGES, paths.IMAGES + paths.LOOKUP, paths.IMPORTS, paths.SEARCH, paths.SEARCH_BATCH):
        assert "post" in routes[path], path
    for path in (paths.JOB, paths.METRICS, paths.HEALTHZ, paths.READYZ, paths.COLLECTIONS):
        assert "get" in routes[path], path


def test_patterns_match_one_segment_per_parameter() -> None:
    assert paths.IMAGES_ROUTE.match("/v1/collections/cats.v2/images")
    assert not paths.IMAGES_ROUTE.match("/v1/collections/a/b/images")
    assert not paths.IMAGES_ROUTE.match("/v1/collections//images")
    assert not paths.IMAGES_ROUTE.match("/v1/collections/a/images/lookup")
    assert paths.LOOKUP_ROUTE.match("/v1/collections/a/images/lookup")
    assert paths.BATCH_ROUTE.match("/v1/collections/a/search/batch")
    assert not paths.SEARCH_ROUTE.match("/v1/collections/a/search/batch")
    route = paths.JOB_ROUTE.match("/v1/jobs/" + "a" * 32)
    assert route is not None and route["job_id"] == "a" * 32
    assert paths.JOB_ROUTE.match("/v1/jobs/") is None
    assert paths.JOB_ROUTE.match("/v1/jobs/x/results") is None
    assert paths.job_url("abc") == "/v1/jobs/abc"
