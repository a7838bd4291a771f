"""The web gallery (api/static/), driven through a real browser: Debian's Chromium via Playwright.

The page talks to the real API, which hands work to the two real Celery workers of the integration
fixtures. Screenshots go to artifacts/ (gitignored).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.images import photo_bytes
from tests.integration.client_helpers import index, wait_job

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
JOB_TIMEOUT_MS = 180_000  # the first forward passes of freshly started workers can be slow

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="the browser test needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _photos(tmp_path: Path, seeds: list[int], prefix: str = "photo") -> list[Path]:
    paths = []
    for i, seed in enumerate(seeds):
        path = tmp_path / f"{prefix}-{i}.jpg"
        path.write_bytes(photo_bytes(seed))
        paths.append(path)
    return paths


def _drop_file(page, selector: str, path: Path) -> None:
    """Drag a file onto an element, as a user dropping it from the desktop."""
    transfer = page.evaluate_handle(
        """([name, b64]) => {
            const transfer = new DataTransfer();
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            transfer.items.add(new File([bytes], name, {type: "image/jpeg"}));
            return transfer;
        }""",
        [path.name, base64.b64encode(path.read_bytes()).decode()],
    )
    page.dispatch_event(selector, "dragenter", {"dataTransfer": transfer})
    assert "over" in page.locator(selector).get_attribute("class")
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def _wait_images_loaded(page, timeout_s: float = 30) -> None:
    """Every <img> of the page shows a decoded picture (screenshots must not catch them loading)."""
    script = """() => [...document.images]
        .filter((i) => !(i.complete && i.naturalWidth > 0))
        .map((i) => ({src: i.src.slice(0, 120), complete: i.complete, loading: i.loading,
                      cls: i.className, top: Math.round(i.getBoundingClientRect().top),
                      parent: i.closest('[id]')?.id}))"""
    pending = page.evaluate(script)
    for _ in range(int(timeout_s * 10)):
        if not pending:
            return
        page.wait_for_timeout(100)
        pending = page.evaluate(script)
    raise AssertionError(f"images not loaded after {timeout_s}s: {pending}")


def _watch_errors(page) -> list[str]:
    """Script errors, and failed loads of the page's own files (API 4xx answers are part of the flows)."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: (
            errors.append(f"console: {msg.text}")
            if msg.type == "error" and not msg.text.startswith("Failed to load resource")
            else None
        ),
    )
    page.on(
        "response",
        lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 and "/v1/" not in r.url else None,
    )
    return errors


def _open(browser, api_url: str, collection: str, height: int) -> tuple[object, list[str]]:
    """A desktop-sized page of the gallery with `collection` opened; and its console errors."""
    page = browser.new_context(viewport={"width": 1280, "height": height}).new_page()
    errors = _watch_errors(page)
    page.goto(f"{api_url}/")
    name = page.get_by_label("Name")
    name.fill(collection)
    name.press("Enter")
    return page, errors


def test_gallery_index_search_browse_cluster(browser, api_url: str, collection: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    photos = _photos(tmp_path, [101, 102, 103, 104, 105])
    bad = tmp_path / "x.jpg"
    bad.write_text("this is a text file, not a JPEG\n")
    other = tmp_path / "other.jpg"
    other.write_bytes(photo_bytes(999))

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = _watch_errors(page)
    # Listening from the start turns file-chooser interception on before any key press (enabling it
    # inside expect_file_chooser() races with the press).
    choosers: list = []
    page.on("filechooser", lambda chooser: choosers.append(chooser))
    page.goto(f"{api_url}/")
    expect(page).to_have_title("simsearch gallery")

    # The optional API key: kept in localStorage and sent as a bearer token.
    page.get_by_text("Settings").click()
    page.get_by_label("API key").fill("gallery-test-key")
    with page.expect_request(lambda r: r.url.endswith("/v1/collections")) as listed:
        page.get_by_role("button", name="Save").click()
    assert listed.value.headers.get("authorization") == "Bearer gallery-test-key"
    assert page.evaluate("localStorage.getItem('simsearch.apiKey')") == "gallery-test-key"
    page.get_by_text("Settings").click()  # fold the settings away again

    # A new collection, typed in.
    name = page.get_by_label("Name")
    name.fill(collection)
    name.press("Enter")
    expect(page.locator("#collection-info")).to_contain_text("new collection")

    # Keyboard: Tab from the name field reaches the file picker, whose button shows a focus ring,
    # and Enter opens the file chooser.
    name.focus()
    for _ in range(6):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "index-files":
            break
    assert page.evaluate("document.activeElement.id") == "index-files", "Tab never reached the file picker"
    outline = page.locator("label[for=index-files]").evaluate("l => getComputedStyle(l).outlineStyle")
    assert outline == "solid", f"no visible focus on the file picker (outline {outline})"
    page.keyboard.press("Enter")
    for _ in range(100):
        if choosers:
            break
        page.wait_for_timeout(50)
    assert choosers, "Enter on the focused file picker opened no file chooser"
    assert choosers[0].is_multiple()

    # Index 5 photos and a text file named x.jpg with the file picker.
    page.set_input_files("#index-files", [*map(str, photos), str(bad)])
    batch = page.locator("#batches li.batch")
    expect(batch).to_have_count(1)
    expect(batch).to_have_attribute("data-status", "partial", timeout=JOB_TIMEOUT_MS)
    expect(batch).to_contain_text("6 / 6 processed · 1 failed")
    assert batch.locator("progress").evaluate("p => [p.value, p.max]") == [6, 6]
    expect(page.locator("#failed li")).to_have_count(1)
    expect(page.locator("#failed li")).to_contain_text("x.jpg")
    expect(page.locator("#index-summary")).to_contain_text("5 new, 0 already indexed, 1 failed")
    expect(page.locator("#collection-info")).to_contain_text("5 images")
    expect(page.locator("#browse li")).to_have_count(5)

    # Search with an indexed photo: it comes first, with similarity ~1.
    page.set_input_files("#query-file", str(photos[2]))
    results = page.locator("#results")
    expect(results).to_have_attribute("data-state", "done", timeout=JOB_TIMEOUT_MS)
    matches = page.locator("#matches li")
    expect(matches).to_have_count(5)
    expect(matches.first.locator(".name")).to_have_text("photo-2.jpg")
    assert float(matches.first.locator(".sim-value").inner_text()) >= 0.99
    expect(matches.first.locator("img")).to_have_attribute("alt", "photo-2.jpg")
    assert matches.first.locator("img").evaluate("i => i.complete && i.naturalWidth > 0")
    expect(page.locator("#query-caption")).to_contain_text("photo-2.jpg")

    # Slider to 1.0 (keyboard: End) and a photo that is not in the collection, dropped on the
    # search drop zone: nothing passes.
    slider = page.get_by_label("Minimum similarity")
    slider.focus()
    page.keyboard.press("End")
    expect(page.locator("#min-sim-value")).to_have_text("1.00")
    _drop_file(page, "#query-drop", other)
    expect(page.locator("#query-caption")).to_contain_text("other.jpg")
    expect(results).to_have_attribute("data-state", "empty", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#search-status")).to_contain_text("No similar images found")
    expect(matches).to_have_count(0)
    slider.focus()
    page.keyboard.press("Home")
    expect(page.locator("#min-sim-value")).to_have_text("auto")  # 0: the collection's calibrated threshold

    # Search by clicking an image of the collection: it is not among its own matches.
    page.locator("#browse button.thumb", has_text="photo-0.jpg").click()
    expect(page.locator("#query-caption")).to_contain_text("photo-0.jpg")
    expect(results).to_have_attribute("data-state", "done", timeout=JOB_TIMEOUT_MS)
    expect(matches).to_have_count(4)
    assert "photo-0.jpg" not in matches.locator(".name").all_inner_texts()

    # Page through the collection, two images a page.
    size = page.get_by_label("Per page")
    size.fill("2")
    size.press("Tab")
    info = page.locator("#page-info")
    expect(info).to_have_text("1–2 of 5 (page 1 of 3)")
    prev, nxt = page.get_by_role("button", name="Previous"), page.get_by_role("button", name="Next")
    expect(prev).to_be_disabled()
    seen = page.locator("#browse .name").all_inner_texts()
    nxt.click()
    expect(info).to_have_text("3–4 of 5 (page 2 of 3)")
    seen += page.locator("#browse .name").all_inner_texts()
    nxt.click()
    expect(info).to_have_text("5–5 of 5 (page 3 of 3)")
    expect(nxt).to_be_disabled()
    seen += page.locator("#browse .name").all_inner_texts()
    assert sorted(seen) == sorted(p.name for p in photos)
    prev.click()
    expect(info).to_have_text("3–4 of 5 (page 2 of 3)")

    # Clusters: run, list them, page through one, go back to all images.
    expect(page.locator("#cluster-status")).to_have_text("Not clustered yet.")
    page.get_by_role("button", name="Run clustering").click()
    clusters = page.locator("#clusters li")
    expect(page.locator("#cluster-status")).to_contain_text("K = ", timeout=JOB_TIMEOUT_MS)
    count = clusters.count()
    assert count >= 2
    sizes = [int(t.split()[0]) for t in clusters.locator("button span > span:not(.stale)").all_inner_texts()]
    assert sum(sizes) == 5
    clusters.first.locator("button").click()
    expect(clusters.first.locator("button")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#browse-title")).to_contain_text("Cluster 0:")
    expect(page.locator("#browse li")).to_have_count(min(sizes[0], 2))
    page.get_by_role("button", name="All images").click()
    expect(page.locator("#browse-title")).to_contain_text("All images")
    expect(info).to_have_text("1–2 of 5 (page 1 of 3)")
    dismiss = page.get_by_role("button", name="Dismiss message")  # the status toast ("Clustered … into K …")
    if dismiss.is_visible():
        dismiss.click()
    expect(page.locator("#status-text")).to_be_empty()
    expect(dismiss).to_be_hidden()
    _wait_images_loaded(page)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "gallery.png"), full_page=True)

    # A name the API would refuse is caught on the page; an API error lands in the status area.
    page.get_by_label("Name").fill("-not a name")
    page.get_by_label("Name").press("Enter")
    expect(page.locator("#status-text")).to_contain_text("collection name")
    expect(page.get_by_label("Name")).to_have_attribute("aria-invalid", "true")
    page.get_by_label("Name").fill(f"{collection}-empty")
    page.get_by_label("Name").press("Enter")
    page.get_by_role("button", name="Run clustering").click()
    expect(page.locator("#status-text")).to_contain_text("collection_not_found (HTTP 404)")
    expect(page.locator("#status")).to_have_class("status error")

    assert not errors, errors
    context.close()


def test_gallery_phone_layout(browser, api_url: str, collection: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    photos = _photos(tmp_path, [201, 202, 203, 204], prefix="pic")
    with httpx.Client(base_url=api_url, timeout=60) as client:
        job = index(client, collection, [(p.name, p.read_bytes()) for p in photos])
    assert job["status"] == "succeeded", job

    context = browser.new_context(viewport={"width": 375, "height": 812}, is_mobile=True, has_touch=True)
    page = context.new_page()
    errors = _watch_errors(page)
    page.goto(f"{api_url}/")
    # Choose the existing collection from the list.
    select = page.get_by_label("Existing collections")
    expect(select.locator(f"option[value='{collection}']")).to_have_count(1)
    select.select_option(collection)
    expect(page.locator("#browse li")).to_have_count(4)
    page.locator("#browse button.thumb").nth(1).click()
    expect(page.locator("#results")).to_have_attribute("data-state", "done", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#matches li")).to_have_count(3)
    _wait_images_loaded(page)

    overflow = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert overflow[0] <= overflow[1], f"horizontal overflow at phone width: {overflow}"
    wide = page.evaluate(
        """() => [...document.querySelectorAll('main *')]
              .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
              .map(e => e.tagName + '#' + e.id + '.' + e.className)"""
    )
    assert not wide, f"elements past the right edge: {wide}"
    # The thumbnail grid has at least two columns on a phone.
    boxes = page.locator("#browse li").evaluate_all("els => els.slice(0, 2).map(e => e.getBoundingClientRect().top)")
    assert boxes[0] == boxes[1]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "gallery-phone.png"), full_page=True)
    assert not errors, errors
    context.close()


def test_gallery_archive_drop_and_pasted_urls(browser, api_url: str, collection: str, tmp_path: Path) -> None:
    import io
    import zipfile

    from playwright.sync_api import expect

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(3):
            zf.writestr(f"album/{i}.jpg", photo_bytes(700 + i))
    archive = tmp_path / "album.zip"
    archive.write_bytes(buf.getvalue())

    page, errors = _open(browser, api_url, collection, 900)
    # A dropped archive is one batch; the server expands it and the job's total grows to 3.
    page.set_input_files("#index-files", str(archive))
    batch = page.locator("#batches li.batch")
    expect(batch).to_have_count(1)
    expect(batch).to_have_attribute("data-status", "succeeded", timeout=JOB_TIMEOUT_MS)
    expect(batch).to_contain_text("3 / 3 processed")
    expect(page.locator("#collection-info")).to_contain_text("3 images")
    # Pasted URLs: this stack's workers refuse private addresses, and the page says which and why.
    page.get_by_label("Or paste image URLs").fill("http://127.0.0.1:9/a.jpg\nhttp://169.254.169.254/latest")
    page.get_by_role("button", name="Import URLs").click()
    expect(page.locator("#batches li.batch")).to_have_attribute("data-status", "failed", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#failed li")).to_have_count(2)
    expect(page.locator("#failed li").first).to_contain_text("blocked_address")
    assert errors == []


def test_gallery_filters_examples_batch_and_duplicates(browser, api_url: str, collection: str, tmp_path: Path) -> None:
    """The issue-14 controls: a metadata filter (browse and search, with inline errors), picking
    examples on the matches, several query images as one batch search, near-duplicate groups."""
    import json

    from playwright.sync_api import expect

    files = [(f"cat{i}.jpg", photo_bytes(800 + i)) for i in range(4)]
    files += [(f"dog{i}.jpg", photo_bytes(810 + i)) for i in range(4)]
    metadata = {name: {"label": name[:3]} for name, _ in files}
    with httpx.Client(base_url=api_url, timeout=60) as client:
        parts = [("files", (name, data, "image/jpeg")) for name, data in files]
        resp = client.post(f"/v1/collections/{collection}/images", files=parts, data={"metadata": json.dumps(metadata)})
        assert resp.status_code == 202, resp.text
        job = wait_job(client, resp.json()["job_id"])
        assert job["status"] == "succeeded", job

    page, errors = _open(browser, api_url, collection, 1000)
    expect(page.locator("#browse li")).to_have_count(8)

    # A filter narrows Browse at once, and then searches.
    flt = page.get_by_label("Metadata filter")
    flt.fill('{"label": "cat"}')
    flt.press("Enter")
    expect(page.locator("#browse-title")).to_contain_text("4 images")
    expect(page.locator("#browse li")).to_have_count(4)
    page.locator("#browse button.thumb").first.click()
    matches = page.locator("#matches li")
    expect(matches).to_have_count(3, timeout=JOB_TIMEOUT_MS)  # the other cats; the query is not its own match
    for text in matches.locator(".name").all_inner_texts():
        assert text.startswith("cat"), text
    expect(page.locator("#search-status")).to_contain_text("4 images pass the filter")

    # A malformed filter: an inline error from the page; a bad operator: the API's 422 beside the field.
    flt.fill("{label: cat")
    flt.press("Enter")
    expect(page.locator("#filter-error")).to_be_visible()
    expect(page.locator("#filter")).to_have_attribute("aria-invalid", "true")
    flt.fill('{"label": {"$like": "c%"}}')
    flt.press("Enter")
    expect(page.locator("#filter-error")).to_contain_text("filter.label.$like")
    flt.fill("")
    flt.press("Enter")
    expect(page.locator("#filter-error")).to_be_hidden()
    expect(page.locator("#browse li")).to_have_count(8)

    # Examples: "more like" one match, "less like" another, then search with them.
    page.locator("#search-again").click()
    expect(matches).to_have_count(7, timeout=JOB_TIMEOUT_MS)
    first, second = (matches.nth(i).locator(".name").inner_text() for i in (0, 1))
    matches.nth(0).get_by_role("button", name="More like").click()
    matches.nth(1).get_by_role("button", name="Less like").click()
    expect(page.locator("#examples-text")).to_have_text("Examples: more like 1 image, less like 1 image.")
    with page.expect_request(lambda r: r.url.split("?")[0].endswith("/search") and r.method == "POST") as sent:
        page.get_by_role("button", name="Search with these examples").click()
    body = json.loads(sent.value.post_data)
    assert len(body["positive"]) == 1 and len(body["negative"]) == 1
    expect(page.locator("#query-caption")).to_contain_text("more like 1 image, less like 1")
    expect(matches).to_have_count(6, timeout=JOB_TIMEOUT_MS)  # 8 less the two examples
    shown = matches.locator(".name").all_inner_texts()
    assert first not in shown and second not in shown

    # Several query images at once: one batch search, a row per query.
    queries = _photos(tmp_path, [800, 811, 900], prefix="q")
    page.set_input_files("#query-file", [str(p) for p in queries])
    rows = page.locator("#batch-rows tr")
    expect(rows).to_have_count(3, timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#batch-status")).to_contain_text("3 queries searched")
    expect(rows.nth(0)).to_contain_text("cat0.jpg")  # the same bytes: similarity 1
    expect(rows.nth(1)).to_contain_text("dog1.jpg")

    # Near-duplicates (random weights: every photo is close to every other, so one big group).
    page.get_by_role("button", name="Find duplicates").click()
    expect(page.locator("#dup-status")).to_contain_text("group", timeout=JOB_TIMEOUT_MS)
    assert page.locator("#dup-groups .thumb").count() >= 2
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "gallery-search-features.png"), full_page=True)
    assert not errors, errors


def test_gallery_drops_stale_responses(browser, api_url: str, collection: str, tmp_path: Path) -> None:
    """A slow answer to an older request never changes what the page shows: the 422s of a filter
    since cleared (search and browse), and an older batch search's rows. The older requests are
    held in the browser until the newer ones have been answered, then let through."""
    import json

    from playwright.sync_api import expect

    files = [(f"cat{i}.jpg", photo_bytes(850 + i)) for i in range(3)] + [
        (f"dog{i}.jpg", photo_bytes(860 + i)) for i in range(3)
    ]
    metadata = {name: {"label": name[:3]} for name, _ in files}
    with httpx.Client(base_url=api_url, timeout=60) as client:
        parts = [("files", (name, data, "image/jpeg")) for name, data in files]
        resp = client.post(f"/v1/collections/{collection}/images", files=parts, data={"metadata": json.dumps(metadata)})
        assert resp.status_code == 202, resp.text
        assert wait_job(client, resp.json()["job_id"])["status"] == "succeeded"

    page, errors = _open(browser, api_url, collection, 1000)
    expect(page.locator("#browse li")).to_have_count(6)
    page.locator("#browse button.thumb").first.click()
    matches = page.locator("#matches li")
    expect(matches).to_have_count(5, timeout=JOB_TIMEOUT_MS)

    held: list = []

    def hold_if(predicate):
        def handler(route) -> None:
            if predicate(route.request):
                held.append(route)  # answered later, by the test
            else:
                route.continue_()

        return handler

    bad = '{"label": {"$like": "c%"}}'
    stale_filter = hold_if(lambda r: "%24like" in r.url or "$like" in r.url or "$like" in (r.post_data or ""))
    page.route("**/v1/collections/**", stale_filter)
    flt = page.get_by_label("Metadata filter")
    flt.fill(bad)
    flt.press("Enter")  # a browse and a search (Enter both changes and submits) with the bad filter: held
    for _ in range(100):
        if len(held) >= 2:
            break
        page.wait_for_timeout(50)
    page.wait_for_timeout(300)
    assert len(held) >= 2 and any("/images?" in r.request.url for r in held), [r.request.url for r in held]
    flt.fill("")
    flt.press("Enter")  # the newer browse and search, answered at once
    expect(page.locator("#browse li")).to_have_count(6)
    expect(page.locator("#search-status")).to_contain_text("5 matches", timeout=JOB_TIMEOUT_MS)
    while held:
        with page.expect_response(lambda r: r.status == 422) as late:
            held.pop().continue_()
        assert late.value.status == 422
    page.wait_for_timeout(500)  # let the page handle the late answers
    expect(page.locator("#filter-error")).to_be_hidden()
    expect(page.locator("#filter")).not_to_have_attribute("aria-invalid", "true")
    expect(page.locator("#browse li")).to_have_count(6)
    expect(matches).to_have_count(5)
    page.unroute("**/v1/collections/**", stale_filter)

    # Two batch searches: the first's upload is held until the second has shown its rows.
    older = _photos(tmp_path, [850, 851], prefix="old")
    newer = _photos(tmp_path, [860, 861, 862], prefix="new")
    stale_batch = hold_if(
        lambda r: r.url.split("?")[0].endswith("/search/batch") and b"old-0.jpg" in (r.post_data_buffer or b"")
    )
    page.route("**/search/batch*", stale_batch)
    page.set_input_files("#query-file", [str(p) for p in older])
    for _ in range(100):
        if held:
            break
        page.wait_for_timeout(50)
    assert len(held) == 1
    page.set_input_files("#query-file", [str(p) for p in newer])
    rows = page.locator("#batch-rows tr")
    expect(rows).to_have_count(3, timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#batch-status")).to_contain_text("3 queries searched")
    with page.expect_response(lambda r: r.url.split("?")[0].endswith("/search/batch")):
        held.pop().continue_()
    page.wait_for_timeout(3000)  # the older job runs and would be polled and rendered by a stale page
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_contain_text("new-0.jpg")
    expect(page.locator("#batch-status")).to_contain_text("3 queries searched")
    page.unroute("**/search/batch*", stale_batch)
    assert not errors, errors
