// simsearch web gallery: plain ES module, no build step, talks to the /v1 API of the same origin.

const BATCH_FILES = 50; // files per POST .../images
const BATCH_BYTES = 48 * 1024 * 1024; // and at most this many bytes per request (one bigger file goes alone)
const PROGRESS_WAIT = 1; // seconds of long poll per progress update while indexing
const RESULT_WAIT = 10; // seconds of long poll when only the final result matters
const FINAL = new Set(["succeeded", "partial", "failed"]);
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const KEY_STORAGE = "simsearch.apiKey";
const COLLECTION_STORAGE = "simsearch.collection";

const $ = (selector) => document.querySelector(selector);
const enc = encodeURIComponent;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const scrollBehavior = () => (matchMedia("(prefers-reduced-motion: reduce)").matches ? "auto" : "smooth");

const els = {
  status: $("#status"),
  statusText: $("#status-text"),
  statusClose: $("#status-close"),
  keyForm: $("#key-form"),
  apiKey: $("#api-key"),
  keyForget: $("#key-forget"),
  collectionForm: $("#collection-form"),
  collectionSelect: $("#collection-select"),
  collectionName: $("#collection-name"),
  collectionRefresh: $("#collection-refresh"),
  collectionInfo: $("#collection-info"),
  indexDrop: $("#index-drop"),
  indexFiles: $("#index-files"),
  indexSummary: $("#index-summary"),
  batches: $("#batches"),
  failedBox: $("#failed-box"),
  failed: $("#failed"),
  failedCount: $("#failed-count"),
  queryDrop: $("#query-drop"),
  queryFile: $("#query-file"),
  searchForm: $("#search-form"),
  k: $("#k"),
  minSim: $("#min-sim"),
  minSimValue: $("#min-sim-value"),
  searchAgain: $("#search-again"),
  results: $("#results"),
  queryImg: $("#query-img"),
  queryCaption: $("#query-caption"),
  searchStatus: $("#search-status"),
  matches: $("#matches"),
  browseAll: $("#browse-all"),
  browseTitle: $("#browse-title"),
  browse: $("#browse"),
  prev: $("#prev"),
  next: $("#next"),
  pageInfo: $("#page-info"),
  pageSize: $("#page-size"),
  clusterRun: $("#cluster-run"),
  clusterStatus: $("#cluster-status"),
  clusters: $("#clusters"),
  filter: $("#filter"),
  filterError: $("#filter-error"),
  examples: $("#examples"),
  examplesText: $("#examples-text"),
  examplesSearch: $("#examples-search"),
  examplesClear: $("#examples-clear"),
  batch: $("#batch"),
  batchStatus: $("#batch-status"),
  batchRows: $("#batch-rows"),
  dupForm: $("#dup-form"),
  dupMin: $("#dup-min"),
  dupRun: $("#dup-run"),
  dupStatus: $("#dup-status"),
  dupGroups: $("#dup-groups"),
};

const state = {
  collection: "",
  browse: { offset: 0, limit: 24, cluster: null, total: 0 },
  lastQuery: null, // {kind: "file", file} | {kind: "id", id, filename} | {kind: "examples"}
  // "More like these, less like those": image id -> file name, chosen on the matches
  examples: { positive: new Map(), negative: new Map() },
  queryUrl: null,
  activeRuns: 0,
  failedTotal: 0,
};

// ---------------------------------------------------------------------------------------------
// Stale responses: each panel remembers its latest request, and an answer changes the page only
// while it still belongs to that request. A slow answer to an older request (a 422 for a filter
// since cleared, the matches of a query since replaced) is dropped, however late it comes.

const latest = new Map();

/** Start a request of `panel`; the returned function tells whether it is still the panel's latest. */
function begin(panel) {
  const token = (latest.get(panel) ?? 0) + 1;
  latest.set(panel, token);
  return () => latest.get(panel) === token;
}

/** Make every request in flight for these panels stale (another collection was opened). */
function invalidate(...panels) {
  for (const panel of panels) begin(panel);
}

// ---------------------------------------------------------------------------------------------
// Storage (localStorage may be unavailable, e.g. in some private modes)

function stored(key) {
  try {
    return localStorage.getItem(key) || "";
  } catch {
    return "";
  }
}

function store(key, value) {
  try {
    if (value) localStorage.setItem(key, value);
    else localStorage.removeItem(key);
  } catch {
    /* not persisted; still used for this page */
  }
}

let apiKeyValue = stored(KEY_STORAGE);

// ---------------------------------------------------------------------------------------------
// API client

class ApiError extends Error {
  constructor(status, code, detail) {
    super(`${code}: ${formatDetail(detail)}`);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

function formatDetail(detail) {
  if (detail == null) return "";
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((e) => (e && typeof e === "object" ? `${(e.loc || []).join(".")}: ${e.msg ?? JSON.stringify(e)}` : String(e)))
      .join("; ");
  }
  return JSON.stringify(detail);
}

function authHeaders() {
  return apiKeyValue ? { Authorization: `Bearer ${apiKeyValue}` } : {};
}

async function api(path, { method = "GET", json, body, query } = {}) {
  const url = new URL(path, document.baseURI);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null) url.searchParams.set(name, String(value));
  }
  const headers = authHeaders();
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let resp;
  try {
    resp = await fetch(url, { method, headers, body });
  } catch (err) {
    throw new ApiError(0, "network_error", `could not reach the API (${err.message})`);
  }
  if (resp.status === 204) return null;
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const code = data && typeof data === "object" && data.error ? data.error : `http_${resp.status}`;
    const detail = data && typeof data === "object" && "detail" in data ? data.detail : text.slice(0, 300) || resp.statusText;
    throw new ApiError(resp.status, code, detail);
  }
  return data;
}

const collectionPath = (c) => `v1/collections/${enc(c)}`;
const contentPath = (c, id) => `${collectionPath(c)}/images/${enc(id)}/content`;

/** Poll a job until it is final; `onUpdate` sees every intermediate view. Transient failures are retried. */
async function pollJob(jobId, { wait = RESULT_WAIT, onUpdate } = {}) {
  let retries = 0;
  for (;;) {
    const started = performance.now();
    let job;
    try {
      job = await api(`v1/jobs/${enc(jobId)}`, { query: { wait } });
      retries = 0;
    } catch (err) {
      if ((err.status === 0 || err.status === 502 || err.status === 503 || err.status === 504) && retries < 5) {
        retries += 1;
        await sleep(500 * 2 ** retries);
        continue;
      }
      throw err;
    }
    onUpdate?.(job);
    if (FINAL.has(job.status)) return job;
    // A server that answers at once (no long poll) must not be hammered.
    const elapsed = performance.now() - started;
    if (elapsed < 300) await sleep(300 - elapsed);
  }
}

// Thumbnails: plain URLs (HTTP-cacheable) unless an API key is set; <img> cannot send headers, so
// then they are fetched with the key and shown from blob URLs.
const blobUrls = new Map();

function clearBlobUrls() {
  for (const url of blobUrls.values()) URL.revokeObjectURL(url);
  blobUrls.clear();
}

function setThumb(img, collection, imageId) {
  const path = contentPath(collection, imageId);
  img.dataset.wanted = path; // an <img> reused (the query's) shows only the image asked for last
  if (!apiKeyValue) {
    img.src = path;
    return;
  }
  const cached = blobUrls.get(path);
  if (cached) {
    img.src = cached;
    return;
  }
  fetch(new URL(path, document.baseURI), { headers: authHeaders() })
    .then((resp) => (resp.ok ? resp.blob() : Promise.reject(new Error(`HTTP ${resp.status}`))))
    .then((blob) => {
      const url = URL.createObjectURL(blob);
      blobUrls.set(path, url);
      if (img.dataset.wanted === path) img.src = url;
    })
    .catch(() => {
      if (img.dataset.wanted === path) img.classList.add("broken");
    });
}

// ---------------------------------------------------------------------------------------------
// Status area

let statusTimer = null;

function showStatus(message, kind = "info") {
  clearTimeout(statusTimer);
  els.status.setAttribute("aria-live", kind === "error" ? "assertive" : "polite");
  els.status.className = message ? `status ${kind}` : "status";
  els.statusText.textContent = message;
  els.statusClose.hidden = !message;
  if (message && kind !== "error") statusTimer = setTimeout(() => showStatus(""), 8000);
}

function showError(err, context) {
  const text =
    err instanceof ApiError
      ? `${context ? `${context}: ` : ""}${err.code}${err.status ? ` (HTTP ${err.status})` : ""} — ${formatDetail(err.detail)}`
      : `${context ? `${context}: ` : ""}${err?.message || err}`;
  showStatus(text, "error");
}

els.statusClose.addEventListener("click", () => showStatus(""));

// ---------------------------------------------------------------------------------------------
// Small DOM helpers

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name in node && !name.startsWith("aria") && !name.startsWith("data")) node[name] = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

const srOnly = (text) => el("span", { class: "visually-hidden", text });
const plural = (n, word, many = `${word}s`) => `${n} ${n === 1 ? word : many}`;

function thumbButton(image, { similarity, rank } = {}) {
  const img = el("img", { alt: image.filename || image.image_id, loading: "lazy", decoding: "async" });
  setThumb(img, state.collection, image.image_id);
  const parts = [img, el("span", { class: "name", "aria-hidden": "true", title: image.filename, text: image.filename })];
  if (similarity !== undefined) {
    const value = similarity.toFixed(3);
    parts.push(
      el(
        "span",
        { class: "sim" },
        rank !== undefined ? el("span", { class: "rank", "aria-hidden": "true", text: `#${rank}` }) : null,
        srOnly("similarity "),
        el("span", { class: "sim-value", text: value }),
        el("meter", { min: 0, max: 1, value: Math.max(0, similarity), "aria-hidden": "true" }),
      ),
    );
  }
  parts.push(srOnly(", search for similar images"));
  return el(
    "button",
    {
      type: "button",
      class: "thumb",
      "data-image-id": image.image_id,
      title: `Search for images similar to ${image.filename}`,
      onclick: () => runSearch({ kind: "id", id: image.image_id, filename: image.filename }),
    },
    parts,
  );
}

// ---------------------------------------------------------------------------------------------
// Collections

async function loadCollections() {
  const current = begin("collections");
  let list;
  try {
    list = await api("v1/collections");
  } catch (err) {
    if (!current()) return;
    els.collectionSelect.replaceChildren(el("option", { value: "", text: "(could not load)" }));
    showError(err, "Listing collections");
    return;
  }
  if (!current()) return;
  const options = [el("option", { value: "", text: list.length ? "— choose —" : "(none yet)" })];
  for (const c of list) {
    options.push(el("option", { value: c.name, text: `${c.name} (${plural(c.image_count, "image")})` }));
  }
  els.collectionSelect.replaceChildren(...options);
  els.collectionSelect.value = list.some((c) => c.name === state.collection) ? state.collection : "";
}

async function showCollectionInfo() {
  const c = state.collection;
  const current = begin("info");
  try {
    const info = await api(collectionPath(c));
    if (!current()) return;
    const model = info.model ? ` · model ${info.model}${info.dimension ? ` (${info.dimension}-d)` : ""}` : "";
    els.collectionInfo.textContent = `“${info.name}”: ${plural(info.image_count, "image")}${model}`;
  } catch (err) {
    if (!current()) return;
    if (err.status === 404) els.collectionInfo.textContent = `“${c}” is a new collection: index images to create it.`;
    else showError(err, "Reading the collection");
  }
}

function openCollection(name) {
  name = name.trim();
  els.collectionName.removeAttribute("aria-invalid");
  if (!NAME_RE.test(name)) {
    els.collectionName.setAttribute("aria-invalid", "true");
    showStatus("A collection name is 1–64 letters, digits, “_”, “-” or “.”, starting with a letter or digit.", "error");
    els.collectionName.focus();
    return false;
  }
  const changed = name !== state.collection;
  state.collection = name;
  els.collectionName.value = name;
  store(COLLECTION_STORAGE, name);
  if ([...els.collectionSelect.options].some((o) => o.value === name)) els.collectionSelect.value = name;
  if (changed) {
    invalidate("search", "batch", "duplicates", "browse", "clusters", "clustering", "info");
    els.dupRun.disabled = false; // the runs just made stale no longer hold their buttons
    els.clusterRun.disabled = false;
    state.browse.offset = 0;
    state.browse.cluster = null;
    state.lastQuery = null;
    els.searchAgain.disabled = true;
    els.results.hidden = true;
    els.batch.hidden = true;
    els.dupGroups.replaceChildren();
    els.dupStatus.textContent = "";
    clearExamples();
    clearBlobUrls();
  }
  showCollectionInfo();
  loadBrowse();
  loadClusters();
  return true;
}

/** The collection to act on: the open one, or the typed name when it was not opened yet. */
function requireCollection() {
  const typed = els.collectionName.value.trim();
  if (typed && typed !== state.collection) {
    if (!openCollection(typed)) return null;
  }
  if (!state.collection) {
    showStatus("Choose a collection or type a new name first.", "error");
    els.collectionName.focus();
    return null;
  }
  return state.collection;
}

els.collectionForm.addEventListener("submit", (event) => {
  event.preventDefault();
  openCollection(els.collectionName.value);
});
els.collectionSelect.addEventListener("change", () => {
  if (els.collectionSelect.value) openCollection(els.collectionSelect.value);
});
els.collectionRefresh.addEventListener("click", () => {
  loadCollections();
  if (state.collection) showCollectionInfo();
});

// ---------------------------------------------------------------------------------------------
// Indexing

const ARCHIVE = /\.(zip|tar|tgz|tar\.gz|tar\.bz2|tar\.xz)$/i;

function splitBatches(files) {
  const batches = [];
  let current = [];
  let bytes = 0;
  for (const file of files) {
    if (ARCHIVE.test(file.name)) {
      batches.push([file]); // alone: the server expands it into a job of its own
      continue;
    }
    if (current.length && (current.length >= BATCH_FILES || bytes + file.size > BATCH_BYTES)) {
      batches.push(current);
      current = [];
      bytes = 0;
    }
    current.push(file);
    bytes += file.size;
  }
  if (current.length) batches.push(current);
  return batches;
}

let batchIds = 0;

function batchRow(number, count, of) {
  const labelId = `batch-label-${++batchIds}`;
  const state_ = el("span", { class: "batch-state", text: "waiting" });
  const counts = el("span", { class: "batch-count", text: `0 / ${count}` });
  const bar = el("progress", { max: count, value: 0, "aria-labelledby": labelId });
  const row = el(
    "li",
    { class: "batch", "data-status": "waiting" },
    el(
      "div",
      { class: "batch-head" },
      el("span", { id: labelId, text: `Batch ${number} of ${of} · ${plural(count, "file")}` }),
      state_,
    ),
    bar,
    el("div", { class: "batch-head" }, counts),
  );
  const update = (status, done, total, failed) => {
    row.dataset.status = status;
    state_.textContent = status;
    bar.max = total;
    bar.value = done;
    counts.textContent = `${done} / ${total} processed${failed ? ` · ${failed} failed` : ""}`;
  };
  return { row, update };
}

function addFailures(errors) {
  for (const e of errors) {
    state.failedTotal += 1;
    els.failed.append(
      el(
        "li",
        {},
        el("strong", { text: e.filename || e.image_id || `item ${e.index ?? "?"}` }),
        " — ",
        el("span", { class: "code", text: e.error }),
        e.detail ? `: ${formatDetail(e.detail)}` : "",
      ),
    );
  }
  els.failedCount.textContent = String(state.failedTotal);
  els.failedBox.hidden = state.failedTotal === 0;
}

async function indexFiles(fileList) {
  const files = Array.from(fileList || []);
  if (!files.length) return;
  const collection = requireCollection();
  if (!collection) return;
  if (state.activeRuns === 0) {
    // A new run: forget the previous run's rows and failures.
    els.batches.replaceChildren();
    els.failed.replaceChildren();
    state.failedTotal = 0;
    els.failedBox.hidden = true;
  }
  state.activeRuns += 1;
  const batches = splitBatches(files);
  const rows = batches.map((b, i) => batchRow(i + 1, b.length, batches.length));
  els.batches.append(...rows.map((r) => r.row));
  const totals = { created: 0, existing: 0, failed: 0, done: 0 };
  els.indexSummary.textContent = `Uploading ${plural(files.length, "file")} to “${collection}” in ${plural(batches.length, "batch", "batches")}…`;

  const polls = [];
  for (const [i, batch] of batches.entries()) {
    const { update } = rows[i];
    update("uploading", 0, batch.length, 0);
    const form = new FormData();
    for (const file of batch) form.append("files", file, file.name);
    let accepted;
    try {
      accepted = await api(`${collectionPath(collection)}/images`, { method: "POST", body: form });
    } catch (err) {
      update("error", batch.length, batch.length, batch.length);
      totals.failed += batch.length;
      addFailures(batch.map((f) => ({ filename: f.name, error: err.code || "error", detail: err.detail ?? err.message })));
      showError(err, `Uploading batch ${i + 1}`);
      continue;
    }
    update("queued", 0, accepted.total ?? batch.length, 0);
    polls.push(
      pollJob(accepted.job_id, {
        wait: PROGRESS_WAIT,
        onUpdate: (job) => update(job.status, job.progress.done, job.progress.total, job.progress.failed),
      })
        .then((job) => {
          const result = job.result || {};
          totals.created += (result.created || []).length;
          totals.existing += (result.existing || []).length;
          totals.failed += job.progress.failed;
          totals.done += job.progress.done;
          addFailures(job.errors || []);
          els.indexSummary.textContent = `Batch ${i + 1} of ${batches.length}: ${job.status}, ${job.progress.done} / ${job.progress.total} processed, ${job.progress.failed} failed.`;
        })
        .catch((err) => {
          update("error", 0, batch.length, batch.length);
          showError(err, `Following batch ${i + 1}`);
        }),
    );
  }
  await Promise.all(polls);
  state.activeRuns -= 1;
  els.indexSummary.textContent =
    `Done: ${plural(files.length, "file")} — ${totals.created} new, ${totals.existing} already indexed, ${totals.failed} failed.`;
  if (collection === state.collection) {
    loadCollections();
    showCollectionInfo();
    loadBrowse();
    loadClusters();
  }
}

els.indexFiles.addEventListener("change", () => {
  const files = Array.from(els.indexFiles.files);
  els.indexFiles.value = ""; // picking the same files again fires "change" again
  indexFiles(files);
});

// Pasted URLs: the server fetches them (public addresses only); 1,000 per import job.
const URLS_PER_IMPORT = 1000;

async function importUrls(urls) {
  const collection = requireCollection();
  if (!collection || !urls.length) return;
  const batches = [];
  for (let i = 0; i < urls.length; i += URLS_PER_IMPORT) batches.push(urls.slice(i, i + URLS_PER_IMPORT));
  els.batches.replaceChildren();
  const rows = batches.map((b, i) => batchRow(i + 1, b.length, batches.length));
  els.batches.append(...rows.map((r) => r.row));
  els.indexSummary.textContent = `Importing ${plural(urls.length, "URL")} into “${collection}”…`;
  await Promise.all(
    batches.map(async (batch, i) => {
      const { update } = rows[i];
      try {
        const accepted = await api(`${collectionPath(collection)}/imports`, { method: "POST", json: { urls: batch } });
        const job = await pollJob(accepted.job_id, {
          wait: PROGRESS_WAIT,
          onUpdate: (j) => update(j.status, j.progress.done, j.progress.total, j.progress.failed),
        });
        addFailures(job.errors || []);
        els.indexSummary.textContent = `Import ${i + 1} of ${batches.length}: ${job.status}, ${job.progress.done} / ${job.progress.total} processed, ${job.progress.failed} failed.`;
      } catch (err) {
        update("error", batch.length, batch.length, batch.length);
        showError(err, `Importing URLs (batch ${i + 1})`);
      }
    }),
  );
  if (collection === state.collection) {
    loadCollections();
    showCollectionInfo();
    loadBrowse();
  }
}

$("#url-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const box = $("#url-list");
  const urls = box.value.split(/\s+/).map((u) => u.trim()).filter(Boolean);
  box.value = "";
  importUrls(urls);
});

// ---------------------------------------------------------------------------------------------
// Drag and drop

function dropZone(zone, onFiles) {
  let depth = 0;
  zone.addEventListener("dragenter", (event) => {
    event.preventDefault();
    depth += 1;
    zone.classList.add("over");
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  zone.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) zone.classList.remove("over");
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    zone.classList.remove("over");
    const items = Array.from(event.dataTransfer.items || []);
    const files = Array.from(event.dataTransfer.files || []).filter((file, i) => {
      const entry = items[i]?.webkitGetAsEntry?.();
      return !(entry && entry.isDirectory);
    });
    if (files.length) onFiles(files);
  });
}

// Dropping a file elsewhere must not navigate away from the page.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());

dropZone(els.indexDrop, indexFiles);
dropZone(els.queryDrop, searchFiles);

// ---------------------------------------------------------------------------------------------
// Search

function searchParams() {
  let k = Number.parseInt(els.k.value, 10);
  if (!Number.isFinite(k) || k < 1) k = 10;
  k = Math.min(k, 1000);
  els.k.value = String(k);
  const minSimilarity = Number.parseFloat(els.minSim.value);
  return { k, min_similarity: minSimilarity > 0 ? minSimilarity : undefined };
}

/** The metadata filter typed in, parsed: undefined when empty, null (and an inline error) when invalid. */
function currentFilter() {
  const text = els.filter.value.trim();
  els.filterError.hidden = true;
  els.filter.removeAttribute("aria-invalid");
  if (!text) return undefined;
  let value;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return filterError(`Not valid JSON: ${err.message}`);
  }
  if (!value || typeof value !== "object" || Array.isArray(value)) return filterError("A filter is a JSON object.");
  return value;
}

function filterError(message) {
  els.filterError.textContent = message;
  els.filterError.hidden = false;
  els.filter.setAttribute("aria-invalid", "true");
  els.filter.focus();
  return null;
}

/** An API error about the filter (422 invalid_filter) goes next to the field, not only to the status bar. */
function reportFilterError(err) {
  if (err instanceof ApiError && err.code === "invalid_filter") filterError(formatDetail(err.detail));
}

function searchFiles(files) {
  const list = Array.from(files || []);
  if (list.length > 1) runBatch(list);
  else if (list.length === 1) runSearch({ kind: "file", file: list[0] });
}

function showQuery(query) {
  if (state.queryUrl) URL.revokeObjectURL(state.queryUrl);
  state.queryUrl = null;
  if (query.kind === "examples") {
    delete els.queryImg.dataset.wanted; // a thumbnail still on its way is no longer this query's
    els.queryImg.removeAttribute("src");
    els.queryImg.alt = "";
    const { positive, negative } = state.examples;
    els.queryCaption.textContent = `Query: more like ${plural(positive.size, "image")}${negative.size ? `, less like ${negative.size}` : ""} (examples are excluded from the matches)`;
    const first = positive.keys().next().value;
    if (first) setThumb(els.queryImg, state.collection, first);
  } else if (query.kind === "file") {
    state.queryUrl = URL.createObjectURL(query.file);
    els.queryImg.dataset.wanted = state.queryUrl;
    els.queryImg.src = state.queryUrl;
    els.queryImg.alt = `Query image ${query.file.name}`;
    els.queryCaption.textContent = `Query: ${query.file.name} (uploaded)`;
  } else {
    setThumb(els.queryImg, state.collection, query.id);
    els.queryImg.alt = `Query image ${query.filename}`;
    els.queryCaption.textContent = `Query: ${query.filename} (from the collection; excluded from its matches)`;
  }
}

async function runSearch(query) {
  if (!query) return;
  const collection = requireCollection();
  if (!collection) return;
  const filter = currentFilter();
  if (filter === null) return;
  state.lastQuery = query;
  els.searchAgain.disabled = false;
  const current = begin("search");
  const params = searchParams();
  els.results.hidden = false;
  showQuery(query);
  els.matches.replaceChildren();
  els.matches.setAttribute("aria-busy", "true");
  els.results.dataset.state = "searching";
  els.searchStatus.textContent = "Searching…";
  if (query.kind === "id") els.results.scrollIntoView({ behavior: scrollBehavior(), block: "start" });

  const finish = (text, stateName) => {
    if (!current()) return;
    els.searchStatus.textContent = text;
    els.results.dataset.state = stateName;
    els.matches.removeAttribute("aria-busy");
  };
  try {
    let accepted;
    const path = `${collectionPath(collection)}/search`;
    if (query.kind === "file") {
      const form = new FormData();
      form.append("file", query.file, query.file.name);
      if (filter) form.append("filter", JSON.stringify(filter));
      accepted = await api(path, { method: "POST", body: form, query: params });
    } else {
      const body = query.kind === "examples" ? exampleBody() : { image_id: query.id };
      if (filter) body.filter = filter;
      accepted = await api(path, { method: "POST", json: body, query: params });
    }
    if (!current()) return;
    const job = await pollJob(accepted.job_id, { wait: RESULT_WAIT });
    if (!current()) return;
    if (job.status === "failed") {
      const e = (job.errors || [])[0] || job.result || {};
      const err = new ApiError(0, e.error || "search_failed", e.detail || "the search job failed");
      showError(err, "Search");
      finish(`Search failed: ${err.message}`, "error");
      return;
    }
    const result = job.result || { matches: [] };
    const matches = result.matches || [];
    els.matches.replaceChildren(
      ...matches.map((m, i) =>
        el("li", { class: "match-item" }, thumbButton(m, { similarity: m.similarity, rank: i + 1 }), votes(m)),
      ),
    );
    if (!matches.length) {
      finish(result.message || "No similar images found.", "empty");
      return;
    }
    const bits = [`${plural(matches.length, "match", "matches")} among ${plural(result.collection_size ?? 0, "image")}`];
    if (result.threshold) bits.push(thresholdText(result.threshold));
    if (result.filter_matches !== undefined && result.filter_matches !== null) bits.push(`${plural(result.filter_matches, "image")} pass the filter`);
    if (result.query_cluster !== undefined && result.query_cluster !== null) bits.push(`query is nearest cluster ${result.query_cluster}`);
    if (result.served_by) bits.push(`served by ${result.served_by}`);
    finish(bits.join(" · "), "done");
  } catch (err) {
    if (!current()) return; // an older search's failure (a filter since cleared): not this one's
    reportFilterError(err);
    showError(err, "Search");
    finish(`Search failed: ${err.message}`, "error");
  }
}

/** Which similarity the matches had to reach, and where that threshold came from. */
function thresholdText(threshold) {
  const origin = { collection: " (calibrated on the collection)", model: " (the model's floor)" }[threshold.source] || "";
  return `similarity ≥ ${threshold.value.toFixed(3)}${origin}`;
}

els.queryFile.addEventListener("change", () => {
  const files = Array.from(els.queryFile.files);
  els.queryFile.value = "";
  searchFiles(files);
});
els.filter.addEventListener("change", () => {
  if (currentFilter() === null) return;
  state.browse.offset = 0;
  if (state.browse.cluster === null) loadBrowse();
  if (state.lastQuery) runSearch(state.lastQuery);
});
els.minSim.addEventListener("input", () => {
  const value = Number.parseFloat(els.minSim.value);
  els.minSimValue.textContent = value > 0 ? value.toFixed(2) : "auto";
});
els.searchForm.addEventListener("submit", (event) => {
  event.preventDefault();
  if (state.lastQuery) runSearch(state.lastQuery);
  else showStatus("Choose a query image first (or select an image of the collection).", "info");
});

// ---------------------------------------------------------------------------------------------
// Examples: "more like these, less like those", picked on the matches

function votes(match) {
  const { positive, negative } = state.examples;
  const vote = (kind, label) =>
    el("button", {
      type: "button",
      "data-vote": kind,
      "aria-pressed": String((kind === "like" ? positive : negative).has(match.image_id)),
      "aria-label": `${label}: ${match.filename}`,
      text: label,
      onclick: (event) => toggleExample(match, kind, event.currentTarget),
    });
  return el("div", { class: "votes" }, vote("like", "More like"), vote("unlike", "Less like"));
}

function toggleExample(match, kind, button) {
  const { positive, negative } = state.examples;
  const [mine, other] = kind === "like" ? [positive, negative] : [negative, positive];
  if (mine.has(match.image_id)) mine.delete(match.image_id);
  else {
    mine.set(match.image_id, match.filename);
    other.delete(match.image_id);
  }
  for (const b of button.parentElement.querySelectorAll("button[data-vote]")) {
    const set = b.dataset.vote === "like" ? positive : negative;
    b.setAttribute("aria-pressed", String(set.has(match.image_id)));
  }
  renderExamples();
}

function renderExamples() {
  const { positive, negative } = state.examples;
  els.examples.hidden = positive.size + negative.size === 0;
  els.examplesText.textContent = `Examples: more like ${plural(positive.size, "image")}, less like ${plural(negative.size, "image")}.`;
  els.examplesSearch.disabled = positive.size === 0;
  els.examplesSearch.title = positive.size ? "" : "Pick at least one image to search more like";
}

function exampleBody() {
  const ids = (map) => [...map.keys()].map((image_id) => ({ image_id }));
  const body = { positive: ids(state.examples.positive) };
  if (state.examples.negative.size) body.negative = ids(state.examples.negative);
  return body;
}

function clearExamples() {
  state.examples.positive.clear();
  state.examples.negative.clear();
  for (const b of els.matches.querySelectorAll("button[data-vote]")) b.setAttribute("aria-pressed", "false");
  renderExamples();
}

els.examplesSearch.addEventListener("click", () => {
  if (state.examples.positive.size) runSearch({ kind: "examples" });
});
els.examplesClear.addEventListener("click", clearExamples);

// ---------------------------------------------------------------------------------------------
// Batch search: several query images, one job, a row per query

const BATCH_QUERIES = 1000;

async function runBatch(files) {
  const collection = requireCollection();
  if (!collection) return;
  const filter = currentFilter();
  if (filter === null) return;
  if (files.length > BATCH_QUERIES) {
    showStatus(`A batch search takes up to ${BATCH_QUERIES} images; the first ${BATCH_QUERIES} are searched.`, "info");
    files = files.slice(0, BATCH_QUERIES);
  }
  const params = searchParams();
  const current = begin("batch");
  els.batch.hidden = false;
  els.batchRows.replaceChildren();
  els.batchStatus.textContent = `Uploading ${plural(files.length, "query image")}…`;
  els.batch.scrollIntoView({ behavior: scrollBehavior(), block: "start" });
  try {
    const form = new FormData();
    for (const file of files) form.append("files", file, file.name);
    if (filter) form.append("filter", JSON.stringify(filter));
    const accepted = await api(`${collectionPath(collection)}/search/batch`, { method: "POST", body: form, query: params });
    if (!current()) return;
    const job = await pollJob(accepted.job_id, {
      wait: PROGRESS_WAIT,
      onUpdate: (view) => {
        if (!current()) return;
        const p = view.progress || {};
        els.batchStatus.textContent = `Searching: ${p.done ?? 0} of ${p.total ?? files.length} queries done${p.failed ? `, ${p.failed} failed` : ""}…`;
      },
    });
    if (!current()) return;
    const page = await api(`v1/jobs/${enc(accepted.job_id)}/results`, { query: { limit: BATCH_QUERIES } });
    if (!current()) return;
    renderBatch(page.results || [], job, collection);
  } catch (err) {
    if (!current()) return;
    reportFilterError(err);
    showError(err, "Batch search");
    els.batchStatus.textContent = `Batch search failed: ${err.message}`;
  }
}

function renderBatch(rows, job, collection) {
  const failed = new Map((job.errors || []).map((e) => [e.index, e]));
  const cells = rows.map((row, index) => {
    if (!row) {
      const e = failed.get(index) || {};
      return el("tr", { class: "failed-row" }, el("td", { text: e.filename || `#${index + 1}` }), el("td", { colspan: 3, text: `failed: ${e.error || "?"} ${e.detail || ""}` }));
    }
    const best = (row.matches || [])[0];
    if (!best) {
      const text = row.message || "No similar images found";
      return el("tr", { class: "empty-row" }, el("td", { text: row.query }), el("td", { colspan: 3, text }));
    }
    const img = el("img", { alt: "", loading: "lazy", decoding: "async" });
    if (collection === state.collection) setThumb(img, collection, best.image_id);
    const open = el("button", {
      type: "button",
      class: "ghost",
      title: `Search for images similar to ${best.filename}`,
      onclick: () => runSearch({ kind: "id", id: best.image_id, filename: best.filename }),
    }, img, best.filename);
    return el(
      "tr",
      {},
      el("td", { text: row.query }),
      el("td", {}, open),
      el("td", { class: "num", text: best.similarity.toFixed(3) }),
      el("td", { class: "num", text: String(row.matches.length - 1) }),
    );
  });
  els.batchRows.replaceChildren(...cells);
  const p = job.progress || {};
  els.batchStatus.textContent = `${plural(p.total ?? rows.length, "query", "queries")} searched${p.failed ? `, ${p.failed} failed` : ""} · all results: /v1/jobs/${job.job_id}/results?format=jsonl`;
}

// ---------------------------------------------------------------------------------------------
// Near-duplicate groups

els.dupForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const collection = requireCollection();
  if (!collection) return;
  let minSimilarity = Number.parseFloat(els.dupMin.value);
  if (!Number.isFinite(minSimilarity)) minSimilarity = 0.95;
  minSimilarity = Math.min(1, Math.max(0.5, minSimilarity));
  els.dupMin.value = String(minSimilarity);
  const current = begin("duplicates");
  els.dupRun.disabled = true;
  els.dupStatus.textContent = "Looking for near-duplicates…";
  els.dupGroups.replaceChildren();
  try {
    const accepted = await api(`${collectionPath(collection)}/duplicates`, {
      method: "POST",
      json: { min_similarity: minSimilarity },
    });
    const job = await pollJob(accepted.job_id, { wait: RESULT_WAIT });
    if (!current()) return;
    if (job.status === "failed") {
      const e = job.result || (job.errors || [])[0] || {};
      throw new ApiError(0, e.error || "duplicates_failed", e.detail || "the duplicates job failed");
    }
    const result = job.result || {};
    const groups = result.groups || [];
    els.dupStatus.textContent = groups.length
      ? `${plural(result.group_count ?? groups.length, "group")} holding ${plural(result.images_in_groups ?? 0, "image")} (similarity ≥ ${minSimilarity.toFixed(2)})`
      : `No near-duplicates at similarity ≥ ${minSimilarity.toFixed(2)}.`;
    els.dupGroups.replaceChildren(
      ...groups.map((g) =>
        el(
          "li",
          { class: "dup-group" },
          el("ol", { class: "grid", "aria-label": `Group of ${g.size}` }, ...g.members.map((m) => el("li", {}, thumbButton(m, { similarity: m.similarity })))),
        ),
      ),
    );
  } catch (err) {
    if (!current()) return;
    els.dupStatus.textContent = "Finding duplicates failed.";
    showError(err, "Duplicates");
  } finally {
    if (current()) els.dupRun.disabled = false; // a newer run (or collection) owns the button now
  }
});

// ---------------------------------------------------------------------------------------------
// Browse (all images or one cluster)

async function loadBrowse() {
  const collection = state.collection;
  if (!collection) return;
  const current = begin("browse");
  const { offset, limit, cluster } = state.browse;
  const path =
    cluster === null ? `${collectionPath(collection)}/images` : `${collectionPath(collection)}/clusters/${cluster}/images`;
  els.browse.setAttribute("aria-busy", "true");
  const filter = cluster === null ? currentFilter() : undefined;
  if (filter === null) return;
  const query = { offset, limit };
  if (filter) query.filter = JSON.stringify(filter);
  state.browse.filtered = Boolean(filter);
  let page;
  try {
    page = await api(path, { query });
  } catch (err) {
    if (!current()) return;
    els.browse.removeAttribute("aria-busy");
    if (err.code === "invalid_filter") {
      reportFilterError(err);
      showError(err, "Browsing");
      return;
    }
    if (err.status === 404 && err.code === "collection_not_found") {
      renderPage({ total: 0, offset: 0, images: [] });
      return;
    }
    if (cluster !== null && err.status === 404) {
      showError(err, `Cluster ${cluster}`);
      showAllImages();
      return;
    }
    showError(err, "Browsing");
    return;
  }
  if (!current()) return;
  els.browse.removeAttribute("aria-busy");
  if (page.total > 0 && offset >= page.total) {
    // Images were deleted since: go to the last page.
    state.browse.offset = Math.max(0, Math.floor((page.total - 1) / limit) * limit);
    loadBrowse();
    return;
  }
  renderPage(page);
}

function renderPage(page) {
  const { cluster, limit } = state.browse;
  state.browse.total = page.total;
  const images = page.images || [];
  els.browse.replaceChildren(...images.map((image) => el("li", {}, thumbButton(image))));
  els.browseTitle.textContent =
    cluster === null
      ? state.browse.filtered
        ? `${plural(page.total, "image")} of “${state.collection}” pass the filter, in the order they were added.`
        : page.total
          ? `All images of “${state.collection}” (${page.total}), in the order they were added. Select one to search by it.`
          : `“${state.collection}” has no images yet.`
      : `Cluster ${cluster}: ${plural(page.total, "image")}, nearest its centroid first.`;
  els.browseAll.hidden = cluster === null;
  const first = images.length ? page.offset + 1 : 0;
  const last = page.offset + images.length;
  const pages = Math.max(1, Math.ceil(page.total / limit));
  const current = Math.floor(page.offset / limit) + 1;
  els.pageInfo.textContent = page.total ? `${first}–${last} of ${page.total} (page ${current} of ${pages})` : "";
  els.prev.disabled = page.offset <= 0;
  els.next.disabled = page.offset + limit >= page.total;
}

function showAllImages() {
  state.browse.cluster = null;
  state.browse.offset = 0;
  markCluster(null);
  loadBrowse();
}

els.prev.addEventListener("click", () => {
  state.browse.offset = Math.max(0, state.browse.offset - state.browse.limit);
  loadBrowse();
});
els.next.addEventListener("click", () => {
  state.browse.offset += state.browse.limit;
  loadBrowse();
});
els.pageSize.addEventListener("change", () => {
  let size = Number.parseInt(els.pageSize.value, 10);
  if (!Number.isFinite(size) || size < 1) size = 24;
  size = Math.min(size, 500);
  els.pageSize.value = String(size);
  state.browse.limit = size;
  state.browse.offset = 0;
  loadBrowse();
});
els.browseAll.addEventListener("click", () => {
  showAllImages();
  els.browseTitle.scrollIntoView({ block: "nearest" });
});

// ---------------------------------------------------------------------------------------------
// Clusters

function markCluster(n) {
  for (const button of els.clusters.querySelectorAll("button[data-cluster]")) {
    button.setAttribute("aria-pressed", String(Number(button.dataset.cluster) === n));
  }
}

async function loadClusters() {
  const collection = state.collection;
  if (!collection) return;
  const current = begin("clusters");
  let clustering;
  try {
    clustering = await api(`${collectionPath(collection)}/clusters`);
  } catch (err) {
    if (!current()) return;
    els.clusters.replaceChildren();
    if (err.status === 404) {
      els.clusterStatus.textContent = "Not clustered yet.";
      return;
    }
    showError(err, "Reading clusters");
    return;
  }
  if (!current()) return;
  renderClusters(clustering);
}

function renderClusters(clustering) {
  const score = clustering.silhouette?.[String(clustering.k)];
  const bits = [`K = ${clustering.k}`, `${plural(clustering.image_count ?? 0, "image")} clustered`];
  if (typeof score === "number") bits.push(`silhouette ${score.toFixed(3)}`);
  els.clusterStatus.replaceChildren(
    bits.join(" · "),
    clustering.stale
      ? el("span", { class: "stale", text: " · stale: images were added or deleted since; run clustering again" })
      : "",
  );
  const items = (clustering.clusters || []).map((c) => {
    let img;
    if (c.medoid_image_id) {
      img = el("img", { alt: `Representative image of cluster ${c.cluster}`, loading: "lazy", decoding: "async" });
      setThumb(img, state.collection, c.medoid_image_id);
    } else {
      img = el("span", { class: "no-thumb", "aria-hidden": "true", text: "empty" }); // K-means left it empty
    }
    const button = el(
      "button",
      {
        type: "button",
        class: "cluster-btn",
        "data-cluster": String(c.cluster),
        "aria-pressed": String(state.browse.cluster === c.cluster),
        onclick: () => {
          state.browse.cluster = c.cluster;
          state.browse.offset = 0;
          markCluster(c.cluster);
          loadBrowse();
          els.browseTitle.scrollIntoView({ behavior: scrollBehavior(), block: "nearest" });
        },
      },
      img,
      el(
        "span",
        {},
        el("strong", { text: `Cluster ${c.cluster}` }),
        el("span", { text: plural(c.size, "image") }),
        clustering.stale ? el("span", { class: "stale", text: " (stale)" }) : "",
      ),
    );
    return el("li", {}, button);
  });
  els.clusters.replaceChildren(...items);
}

els.clusterRun.addEventListener("click", async () => {
  const collection = requireCollection();
  if (!collection) return;
  const current = begin("clustering");
  els.clusterRun.disabled = true;
  els.clusterStatus.textContent = "Clustering…";
  try {
    const accepted = await api(`${collectionPath(collection)}/clusters`, { method: "POST", json: { k: null } });
    const job = await pollJob(accepted.job_id, { wait: RESULT_WAIT });
    if (job.status === "failed") {
      const e = job.result || (job.errors || [])[0] || {};
      throw new ApiError(0, e.error || "cluster_failed", e.detail || "the clustering job failed");
    }
    if (current()) {
      state.browse.cluster = null;
      await loadClusters();
      showStatus(`Clustered “${collection}” into ${job.result?.k ?? "?"} clusters.`, "ok");
    }
  } catch (err) {
    if (!current()) return;
    els.clusterStatus.textContent = "Clustering failed.";
    showError(err, "Clustering");
  } finally {
    if (current()) els.clusterRun.disabled = false;
  }
});

// ---------------------------------------------------------------------------------------------
// API key

els.apiKey.value = apiKeyValue;
els.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  apiKeyValue = els.apiKey.value.trim();
  store(KEY_STORAGE, apiKeyValue);
  clearBlobUrls();
  showStatus(apiKeyValue ? "API key saved in this browser." : "No API key is set.", "ok");
  loadCollections();
});
els.keyForget.addEventListener("click", () => {
  apiKeyValue = "";
  els.apiKey.value = "";
  store(KEY_STORAGE, "");
  clearBlobUrls();
  showStatus("API key forgotten.", "ok");
});

// ---------------------------------------------------------------------------------------------
// Start

const initial = new URLSearchParams(location.search).get("collection") || stored(COLLECTION_STORAGE);
loadCollections().then(() => {
  if (initial && NAME_RE.test(initial)) openCollection(initial);
  else els.browseTitle.textContent = "Choose a collection to browse its images.";
});
