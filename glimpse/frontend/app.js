// Glimpse web page: text and image search over the gateway's public API (see docs/frontend.md).
// Plain ES module, no build step, nothing loaded from elsewhere.

const PAGE_SIZE = 40;
// Start loading the next page this far before the end of the grid comes into view.
const PREFETCH_MARGIN = "600px";

const $ = (id) => document.getElementById(id);
const els = {
  form: $("search-form"),
  input: $("q"),
  file: $("file"),
  pick: $("pick-image"),
  chip: $("query-chip"),
  chipImg: $("query-chip-img"),
  chipLabel: $("query-chip-label"),
  chipClear: $("query-chip-clear"),
  status: $("status"),
  message: $("message"),
  messageTitle: $("message-title"),
  messageText: $("message-text"),
  retry: $("retry"),
  showClosest: $("show-closest"),
  grid: $("results"),
  resultsHeading: $("results-heading"),
  sentinel: $("sentinel"),
  more: $("more"),
  moreError: $("more-error"),
  moreErrorText: $("more-error-text"),
  moreRetry: $("more-retry"),
  end: $("end"),
  stats: $("stats"),
  dropzone: $("dropzone"),
  lightbox: $("lightbox"),
  lbImg: $("lb-img"),
  lbPath: $("lb-path"),
  lbDetail: $("lb-detail"),
  lbLive: $("lb-live"),
  lbSimilar: $("lb-similar"),
  lbOpen: $("lb-open"),
  lbPrev: $("lb-prev"),
  lbNext: $("lb-next"),
  lbClose: $("lb-close"),
};

// ---------------------------------------------------------------------------------------------
// The API

/** An error answer of the gateway, or a network failure (status 0). */
class ApiError extends Error {
  constructor(message, errorType, status) {
    super(message);
    this.errorType = errorType;
    this.status = status;
  }
}

/** Relative to the page, so the page also works behind a reverse proxy under a path prefix. */
function apiUrl(path) {
  return new URL(path, document.baseURI).toString();
}

async function requestJson(path, init = {}) {
  let response;
  try {
    response = await fetch(apiUrl(path), init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError("Could not reach the Glimpse gateway. Is it running?", "network_error", 0);
  }
  if (!response.ok) {
    // Every Glimpse error answer has {"error": sentence, "error_type": name}; a proxy's may not.
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    const message =
      body && typeof body.error === "string"
        ? body.error
        : `The server answered ${response.status} ${response.statusText}.`.replace(" .", ".");
    const errorType = body && typeof body.error_type === "string" ? body.error_type : `http_${response.status}`;
    throw new ApiError(message, errorType, response.status);
  }
  return response.json();
}

/** An error that asking again may cure: no answer, a timeout, overload, a server fault. A 4xx
 * says the request itself is refused, so the page offers no "Try again" for it. */
function isTransient(err) {
  return err.status === 0 || err.status === 408 || err.status === 429 || err.status >= 500;
}

/** One page of ``k`` results for a query: {results, relevant_count, no_good_match, ...}.
 * The page asks for the relevant hits only ("auto"), unless the user chose to see the closest
 * anyway (query.all). */
function fetchPage(query, offset, k, signal) {
  const relevance = query.all ? "all" : "auto";
  if (query.kind === "text") {
    return requestJson("search/text", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query: query.text, k, offset, relevance, ...filtersBody() }),
      signal,
    });
  }
  if (query.kind === "similar") {
    const params = new URLSearchParams({ k: String(k), offset: String(offset), relevance });
    const { filters, sort } = filtersBody();
    if (filters) params.set("filters", JSON.stringify(filters));
    if (sort) params.set("sort", sort);
    return requestJson(`images/${query.id}/similar?${params}`, { signal });
  }
  // An upload has no URL: each page sends the image again.
  const form = new FormData();
  form.append("file", query.upload.file, query.upload.file.name || "image");
  form.append("k", String(k));
  form.append("offset", String(offset));
  form.append("relevance", relevance);
  const { filters, sort } = filtersBody();
  if (filters) form.append("filters", JSON.stringify(filters));
  if (sort) form.append("sort", sort);
  return requestJson("search/image", { method: "POST", body: form, signal });
}

/** {filters, sort} of the filter bar (filters.js); each only when set. */
function filtersBody() {
  const filters = window.glimpseFilters?.body();
  const sort = window.glimpseFilters?.sort();
  return { ...(filters ? { filters } : {}), ...(sort ? { sort } : {}) };
}

// ---------------------------------------------------------------------------------------------
// Queries and the URL
//
// A query is {kind: "text", text} | {kind: "similar", id} | {kind: "image", upload} | null,
// with all: true when it shows the closest images whether or not they are good matches.
// Text and "similar" queries live in the URL (?q=..., ?similar=<id>) so links can be shared and
// the back button works. An upload cannot be put in a URL: its history entry carries a token that
// names the upload kept in memory for as long as the page lives.

const uploads = new Map();
let uploadCount = 0;
// Older uploads are forgotten (their history entries then open the start page).
const KEPT_UPLOADS = 20;

function urlFor(query) {
  const base = location.pathname;
  const all = query?.all ? { all: "1" } : {};
  const filters = window.glimpseFilters?.params() ?? {};
  if (query?.kind === "text") return `${base}?${new URLSearchParams({ q: query.text, ...all, ...filters })}`;
  if (query?.kind === "similar") return `${base}?${new URLSearchParams({ similar: String(query.id), ...all, ...filters })}`;
  return base;
}

function historyStateFor(query) {
  return query?.kind === "image" ? { upload: query.upload.token, all: query.all === true } : {};
}

function queryFromLocation() {
  const params = new URLSearchParams(location.search);
  const all = params.get("all") === "1";
  const text = (params.get("q") || "").trim();
  if (text) return { kind: "text", text, all };
  const similar = params.get("similar");
  if (similar !== null && /^\d+$/.test(similar)) return { kind: "similar", id: Number(similar), all };
  const token = history.state?.upload;
  if (token && uploads.has(token)) return { kind: "image", upload: uploads.get(token), all: history.state?.all === true };
  return null;
}

function navigate(query) {
  const url = urlFor(query);
  const current = location.pathname + location.search;
  // Searching again for what is already shown refreshes it without a new history entry.
  if (url === current && query?.kind !== "image") history.replaceState(historyStateFor(query), "", url);
  else history.pushState(historyStateFor(query), "", url);
  run(query);
}

function searchByFile(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    showMessage("That is not an image", `“${file.name}” is a ${file.type || "file of unknown type"}; drop or pick a JPEG, PNG, WebP or GIF.`, { error: true });
    return;
  }
  uploadCount += 1;
  const upload = { token: `u${Date.now()}-${uploadCount}`, file, previewUrl: URL.createObjectURL(file) };
  uploads.set(upload.token, upload);
  for (const [token, old] of uploads) {
    if (uploads.size <= KEPT_UPLOADS) break;
    URL.revokeObjectURL(old.previewUrl);
    uploads.delete(token);
  }
  navigate({ kind: "image", upload });
}

// ---------------------------------------------------------------------------------------------
// Running a query and paging through its results

const state = {
  query: null,
  results: [],
  seen: new Set(),
  offset: 0,
  done: true,
  loading: false,
  failed: false,
  firstPage: null,
  generation: 0,
  controller: null,
  lightboxIndex: -1,
  pendingAdvance: false,
};

function run(query) {
  state.generation += 1;
  state.controller?.abort();
  state.controller = new AbortController();
  Object.assign(state, {
    query, results: [], seen: new Set(), offset: 0, done: query === null,
    loading: false, failed: false, firstPage: null, pendingAdvance: false,
  });
  if (els.lightbox.open) els.lightbox.close();
  els.grid.replaceChildren();
  window.scrollTo({ top: 0 });
  els.more.hidden = true;
  els.moreError.hidden = true;
  els.end.hidden = true;
  els.resultsHeading.hidden = query === null;
  showQuery(query);
  if (query === null) {
    showHome();
    return;
  }
  hideMessage();
  setStatus(loadingText(query), { busy: true });
  showPlaceholders();
  loadPage();
}

/** Grey tiles where the first results will be, so the page does not jump when they arrive. */
function showPlaceholders() {
  const placeholders = Array.from({ length: 12 }, () => {
    const li = document.createElement("li");
    li.className = "placeholder";
    li.setAttribute("aria-hidden", "true");
    return li;
  });
  els.grid.replaceChildren(...placeholders);
}

function loadingText(query) {
  if (query.kind === "text") return `Searching for “${query.text}”…`;
  if (query.kind === "similar") return "Finding similar images…";
  return `Searching by “${query.upload.file.name || "your image"}”…`;
}

/** The gateway gives no result past its window (k + offset, from GET stats); Infinity while
 * it is unknown. */
function resultWindow() {
  const limit = Number(stats?.max_result_window);
  return Number.isInteger(limit) && limit > 0 ? limit : Infinity;
}

async function loadPage() {
  if (state.loading || state.done || state.failed || state.query === null) return;
  const generation = state.generation;
  const query = state.query;
  const first = state.offset === 0;
  state.loading = true;
  els.grid.setAttribute("aria-busy", "true");
  if (!first) els.more.hidden = false;
  try {
    // The first page does not wait for the window: it is far from it.
    if (!first) await statsLoaded;
    if (generation !== state.generation) return;
    const k = Math.min(PAGE_SIZE, resultWindow() - state.offset);
    const page = await fetchPage(query, state.offset, k, state.controller.signal);
    if (generation !== state.generation) return;
    state.offset += k;
    if (first) state.firstPage = page;
    const fresh = page.results.filter((r) => !state.seen.has(r.id));
    fresh.forEach((r) => state.seen.add(r.id));
    // A short page is the last one; a page of nothing new means the server ignores the offset.
    state.done = page.results.length < k || fresh.length === 0 || state.offset >= resultWindow();
    appendResults(fresh);
    if (state.results.length === 0 && page.no_good_match && !query.all) {
      setStatus("No good match");
      showMessage("No good match", noGoodMatchText(query), { closest: true });
    } else if (state.results.length === 0) {
      setStatus(`No results${queryWords(query)}`);
      showMessage("No results", emptyText(query));
    } else {
      setStatus(resultsText());
    }
  } catch (err) {
    if (err.name === "AbortError" || generation !== state.generation) return;
    state.failed = true;
    showError(err, first);
  } finally {
    if (generation === state.generation) {
      els.grid.querySelectorAll(".placeholder").forEach((p) => p.remove());
      state.loading = false;
      els.grid.removeAttribute("aria-busy");
      els.more.hidden = true;
      showEnd();
    }
  }
  if (generation !== state.generation) return;
  if (state.pendingAdvance) {
    state.pendingAdvance = false;
    if (state.lightboxIndex + 1 < state.results.length) openLightbox(state.lightboxIndex + 1);
  }
  // The observer only reports changes: if the end of the grid is still in view, keep going.
  if (!state.done && !state.failed && sentinelNearView()) loadPage();
}

function emptyText(query) {
  if (query.kind === "text") return `Nothing in the collection matches “${query.text}”. The collection may be empty: see the footer.`;
  return "The collection has no other images to compare with.";
}

function noGoodMatchText(query) {
  const what = query.kind === "text" ? `“${query.text}”` : "this image";
  return `Nothing in the collection is a good match for ${what}: no image stands out from the rest.`;
}

/** The same query, showing the closest images even though none is a good match; it takes the
 * query's place in the history, so Back goes to the query before. */
function showClosest(event) {
  event.preventDefault();
  if (!state.query) return;
  const query = { ...state.query, all: true };
  history.replaceState(historyStateFor(query), "", urlFor(query));
  run(query);
}

/** " for “text”", " similar to the chosen image" or " like your image". */
function queryWords(query) {
  if (query.kind === "text") return ` for “${query.text}”`;
  return query.kind === "similar" ? " similar to the chosen image" : " like your image";
}

function resultsText() {
  const n = state.results.length;
  const page = state.firstPage;
  const what = queryWords(state.query);
  const ms = page ? ` · ${Math.round(page.total_ms)} ms` : "";
  const weak = state.query.all && page?.no_good_match ? " (no good match: the closest shown)" : "";
  return `${n}${state.done ? "" : "+"} result${n === 1 ? "" : "s"}${what}${weak}${ms}`;
}

function showError(err, first) {
  const type = err.errorType ? ` (${err.errorType})` : "";
  const text = `${err.message}${type}`;
  const retry = isTransient(err);
  if (first) {
    const title = err.status === 0 ? "Cannot reach Glimpse" : "The search failed";
    setStatus(`${title}: ${err.message}`);
    showMessage(title, text, { error: true, retry });
  } else {
    setStatus(`Loading more results failed: ${err.message}`);
    // Shown where the user is looking: at the end of the grid.
    els.moreErrorText.textContent = `Loading more results failed: ${text}`;
    els.moreRetry.hidden = !retry;
    els.moreError.hidden = false;
  }
}

/** The line under the last result once there are no more; at the window, it says why. */
function showEnd() {
  const shown = state.done && state.results.length > 0;
  els.end.hidden = !shown;
  if (!shown) return;
  els.end.textContent = state.offset >= resultWindow()
    ? `End of results: the ${state.offset.toLocaleString("en")} best matches are shown. Describe what you are looking for more closely to see others.`
    : "End of results.";
}

function sentinelNearView() {
  const rect = els.sentinel.getBoundingClientRect();
  return rect.top < window.innerHeight + parseInt(PREFETCH_MARGIN, 10);
}

// ---------------------------------------------------------------------------------------------
// Rendering

function appendResults(results) {
  els.grid.querySelectorAll(".placeholder").forEach((p) => p.remove());
  const start = state.results.length;
  state.results.push(...results);
  const fragment = document.createDocumentFragment();
  results.forEach((r, i) => fragment.append(tileFor(r, start + i)));
  els.grid.append(fragment);
}

function tileFor(result, index) {
  const li = document.createElement("li");
  const a = document.createElement("a");
  a.className = "tile";
  a.href = result.image_url;
  a.dataset.index = String(index);
  a.dataset.id = String(result.id);
  // A hit the keyword search found (fusion.py) says so in words, on the tile and to a reader.
  const matched = result.keyword ? "matched by name or keyword" : "";
  a.title = matched ? `${result.path} (${matched})` : result.path;
  // The grid is one Tab stop (a roving tabindex): the arrow keys move inside it.
  a.tabIndex = index === 0 ? 0 : -1;
  a.setAttribute("aria-label", `${result.path}, score ${formatScore(result.score)}${matched ? `, ${matched}` : ""}`);
  const img = document.createElement("img");
  // Set before src, or the browser may start loading every thumbnail at once.
  img.loading = "lazy";
  img.decoding = "async";
  img.alt = result.path;
  // A phone's tiles show fewer pixels than 320: the browser takes the 240 px thumbnail there.
  // "auto" is the tile's laid-out width (lazy images); the rest is for browsers without it.
  img.sizes = "auto, (max-width: 640px) 34vw, 240px";
  img.srcset = `${thumbnailUrl(result, 240)} 240w, ${result.thumbnail_url} 320w`;
  img.src = result.thumbnail_url;
  img.addEventListener("load", () => a.classList.add("loaded"), { once: true });
  img.addEventListener("error", () => a.classList.add("broken"), { once: true });
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = matched ? `${formatScore(result.score)} · keyword` : formatScore(result.score);
  score.setAttribute("aria-hidden", "true");
  a.append(img, score);
  li.append(a);
  return li;
}

/** A result's thumbnail at another size (GET /images/{id}/thumbnail?size=). */
function thumbnailUrl(result, size) {
  const url = new URL(result.thumbnail_url, document.baseURI);
  url.searchParams.set("size", String(size));
  return url.pathname + url.search;
}

function formatScore(score) {
  return Number.isFinite(score) ? score.toFixed(3) : "–";
}

function setStatus(text, { busy = false } = {}) {
  els.status.textContent = text;
  els.status.classList.toggle("busy", busy);
}

function showMessage(title, text, { error = false, retry = false, closest = false } = {}) {
  els.messageTitle.textContent = title;
  els.messageText.textContent = text;
  els.message.classList.toggle("error", error);
  els.retry.hidden = !retry;
  els.showClosest.hidden = !closest;
  if (closest && state.query) els.showClosest.href = urlFor({ ...state.query, all: true });
  els.message.hidden = false;
}

function hideMessage() {
  els.message.hidden = true;
  els.showClosest.hidden = true;
}

function showHome() {
  setStatus("");
  document.title = "Glimpse";
  const images = stats?.images;
  if (images === 0) {
    showMessage(
      "The collection is empty",
      "Add photos with “glimpse ingest YOUR_FOLDER” (or “make demo” for sample photos), then search them here.",
    );
  } else {
    showMessage(
      "Search your photos",
      "Describe what you are looking for and press Enter, or drop, paste or pick an image to find similar ones.",
    );
  }
}

/** The search box and the chip reflect the query shown, whichever way it was reached. */
function showQuery(query) {
  els.input.value = query?.kind === "text" ? query.text : "";
  if (query?.kind === "image") {
    els.chipImg.src = query.upload.previewUrl;
    els.chipImg.hidden = false;
    els.chipLabel.textContent = query.upload.file.name || "Pasted image";
    els.chip.hidden = false;
    document.title = "Image search · Glimpse";
  } else if (query?.kind === "similar") {
    els.chipImg.hidden = true;
    els.chipImg.removeAttribute("src");
    els.chipLabel.textContent = `Similar to #${query.id}`;
    els.chip.hidden = false;
    document.title = `Similar to #${query.id} · Glimpse`;
    describeSimilar(query);
  } else {
    els.chip.hidden = true;
    els.chipImg.removeAttribute("src");
    if (query?.kind === "text") document.title = `${query.text} · Glimpse`;
  }
  els.input.placeholder = query && query.kind !== "text" ? "Or describe a photo" : "Describe a photo, or drop one here";
}

/** Fills the "similar to" chip with the image's thumbnail and path once its record arrives. */
async function describeSimilar(query) {
  try {
    const meta = await requestJson(`images/${query.id}/meta`);
    if (state.query !== query) return;
    els.chipImg.src = meta.thumbnail_url;
    els.chipImg.hidden = false;
    els.chipLabel.textContent = `Similar to ${basename(meta.path)}`;
    document.title = `Similar to ${basename(meta.path)} · Glimpse`;
  } catch {
    // The chip keeps its "#id" label; the search itself reports what went wrong.
  }
}

function basename(path) {
  return String(path).split("/").pop() || String(path);
}

// ---------------------------------------------------------------------------------------------
// The lightbox

function openLightbox(index) {
  const result = state.results[index];
  if (!result) return;
  state.lightboxIndex = index;
  els.lbPath.textContent = result.path;
  const position = `${index + 1} of ${state.results.length}${state.done ? "" : "+"}`;
  els.lbDetail.textContent =
    `${result.width} × ${result.height} · score ${formatScore(result.score)} · #${result.id} · ${position}`;
  els.lbLive.textContent = `Image ${position}: ${result.path}`;
  els.lbOpen.href = result.image_url;
  els.lbImg.alt = result.path;
  els.lbImg.style.setProperty("--ar", `${result.width} / ${result.height}`);
  els.lbImg.style.setProperty("--w", `${result.width}px`);
  // Show the tile's thumbnail (cached, whichever size it took) at once, then swap in the
  // original when it has loaded.
  const tileImg = els.grid.querySelector(`.tile[data-index="${index}"] img`);
  els.lbImg.src = tileImg?.currentSrc || result.thumbnail_url;
  els.lbImg.classList.add("preview");
  const original = new Image();
  original.onload = () => {
    if (state.lightboxIndex !== index || !els.lightbox.open) return;
    els.lbImg.src = result.image_url;
    els.lbImg.classList.remove("preview");
  };
  original.onerror = () => {
    if (state.lightboxIndex !== index || !els.lightbox.open) return;
    els.lbImg.classList.remove("preview");
    els.lbDetail.textContent += " · the original could not be loaded, showing the thumbnail";
  };
  original.src = result.image_url;
  els.lbPrev.disabled = index === 0;
  els.lbNext.disabled = index + 1 >= state.results.length && state.done;
  if (!els.lightbox.open) {
    els.lightbox.showModal();
    els.lbClose.focus();
  }
}

function moveLightbox(step) {
  const target = state.lightboxIndex + step;
  if (target < 0) return;
  if (target < state.results.length) {
    openLightbox(target);
  } else if (!state.done) {
    state.pendingAdvance = true;
    loadPage();
  }
}

els.lightbox.addEventListener("close", () => {
  const tile = els.grid.querySelector(`.tile[data-index="${state.lightboxIndex}"]`);
  els.lbImg.removeAttribute("src");
  if (tile) {
    tile.focus({ preventScroll: true });
    tile.scrollIntoView({ block: "nearest" });
  }
});

els.lightbox.addEventListener("keydown", (event) => {
  if (event.key === "ArrowLeft") {
    event.preventDefault();
    moveLightbox(-1);
  } else if (event.key === "ArrowRight") {
    event.preventDefault();
    moveLightbox(1);
  }
});

// A click on the dark backdrop (outside the picture and its caption) closes the lightbox.
els.lightbox.addEventListener("click", (event) => {
  if (event.target === els.lightbox || event.target.classList.contains("lb-frame")) els.lightbox.close();
});
els.lbClose.addEventListener("click", () => els.lightbox.close());
els.lbPrev.addEventListener("click", () => moveLightbox(-1));
els.lbNext.addEventListener("click", () => moveLightbox(1));
els.lbSimilar.addEventListener("click", () => {
  const result = state.results[state.lightboxIndex];
  if (!result) return;
  els.lightbox.close();
  navigate({ kind: "similar", id: result.id });
  els.grid.focus({ preventScroll: true });
});

els.grid.addEventListener("click", (event) => {
  const tile = event.target.closest(".tile");
  // Modified clicks keep the link's own meaning (open the original in a new tab, ...).
  if (!tile || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  openLightbox(Number(tile.dataset.index));
});

// Arrow keys move between thumbnails (Up/Down by a row, Home/End to the first and last shown),
// so the grid needs no Tab per image.
els.grid.addEventListener("keydown", (event) => {
  const tile = event.target.closest?.(".tile");
  if (!tile || event.altKey || event.ctrlKey || event.metaKey) return;
  const columns = getComputedStyle(els.grid).gridTemplateColumns.split(" ").length;
  const index = Number(tile.dataset.index);
  const to = {
    ArrowLeft: index - 1, ArrowRight: index + 1, ArrowUp: index - columns, ArrowDown: index + columns,
    Home: 0, End: state.results.length - 1,
  }[event.key];
  if (to === undefined) return;
  const target = els.grid.querySelector(`.tile[data-index="${to}"]`);
  event.preventDefault();
  if (target) {
    target.focus();
    target.scrollIntoView({ block: "nearest" });
  }
});

// The tile last focused is the grid's Tab stop, so Tab out and back returns to it.
els.grid.addEventListener("focusin", (event) => {
  const tile = event.target.closest?.(".tile");
  if (!tile || tile.tabIndex === 0) return;
  els.grid.querySelectorAll('.tile[tabindex="0"]').forEach((t) => { t.tabIndex = -1; });
  tile.tabIndex = 0;
});

// The sticky top bar's height, for style.css's scroll-padding: a tile focused by the arrow keys
// scrolls into view below the bar, not under it.
const topbar = document.querySelector(".topbar");
new ResizeObserver(() => {
  document.documentElement.style.setProperty("--topbar-height", `${topbar.offsetHeight}px`);
}).observe(topbar);

// ---------------------------------------------------------------------------------------------
// Input: the search box, the image picker, drag and drop, paste, and shortcuts

els.form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = els.input.value.trim();
  if (text) {
    navigate({ kind: "text", text });
  } else if (state.query?.kind !== "text" && state.query !== null) {
    // Searching again by the same image (filters.js submits when a filter changes): through
    // navigate, so the URL takes the new filters as a text search's does.
    const { all: _all, ...again } = state.query;
    navigate(again);
  } else {
    els.input.focus();
  }
});

els.pick.addEventListener("click", () => els.file.click());
els.file.addEventListener("change", () => {
  const file = els.file.files?.[0];
  // Cleared so that picking the same file again still fires "change".
  els.file.value = "";
  searchByFile(file);
});

els.chipClear.addEventListener("click", () => {
  navigate(null);
  els.input.focus();
});

els.retry.addEventListener("click", () => run(state.query));
els.showClosest.addEventListener("click", showClosest);
els.moreRetry.addEventListener("click", () => {
  state.failed = false;
  els.moreError.hidden = true;
  loadPage();
});

function draggingFiles(event) {
  return Array.from(event.dataTransfer?.types || []).includes("Files");
}

let dragDepth = 0;
window.addEventListener("dragenter", (event) => {
  if (!draggingFiles(event)) return;
  dragDepth += 1;
  els.dropzone.hidden = false;
});
window.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) els.dropzone.hidden = true;
});
window.addEventListener("dragover", (event) => {
  if (!draggingFiles(event)) return;
  event.preventDefault();
  event.dataTransfer.dropEffect = "copy";
});
window.addEventListener("drop", (event) => {
  dragDepth = 0;
  els.dropzone.hidden = true;
  const files = Array.from(event.dataTransfer?.files || []);
  if (files.length === 0) return;
  event.preventDefault();
  searchByFile(files.find((f) => f.type.startsWith("image/")) || files[0]);
});

document.addEventListener("paste", (event) => {
  const file = Array.from(event.clipboardData?.files || []).find((f) => f.type.startsWith("image/"));
  if (!file) return;
  event.preventDefault();
  searchByFile(file);
});

document.addEventListener("keydown", (event) => {
  const typing = event.target instanceof HTMLInputElement || event.target instanceof HTMLTextAreaElement;
  if (event.key === "/" && !typing && !els.lightbox.open) {
    event.preventDefault();
    els.input.focus();
    els.input.select();
  }
});

window.addEventListener("popstate", () => run(queryFromLocation()));

new IntersectionObserver(
  (entries) => {
    // A report can be stale: a new query's placeholders bring the end of the grid into view,
    // and its first page may have pushed it out again before the report is delivered.
    if (entries.some((e) => e.isIntersecting) && sentinelNearView()) loadPage();
  },
  { rootMargin: `0px 0px ${PREFETCH_MARGIN} 0px` },
).observe(els.sentinel);

// ---------------------------------------------------------------------------------------------
// The footer: the collection's size and the model

let stats = null;
// Settled (never rejected) when the footer has its answer; later pages wait for it.
let statsLoaded = Promise.resolve();

async function loadStats() {
  try {
    stats = await requestJson("stats");
    const images = Number(stats.images ?? 0);
    const model = modelName(stats.model);
    els.stats.textContent = `${images.toLocaleString("en")} image${images === 1 ? "" : "s"}${model ? ` · ${model}` : ""}`;
    if (state.query === null) showHome();
  } catch (err) {
    els.stats.textContent = `Collection unavailable: ${err.message}`;
  }
}

function modelName(model) {
  if (!model) return "";
  if (typeof model === "string") return model;
  const name = model.name ?? model.model ?? "";
  const pretrained = model.pretrained && model.pretrained !== "none" ? ` (${model.pretrained})` : "";
  return `${name}${pretrained}`;
}

// ---------------------------------------------------------------------------------------------

// Results are fetched again on back/forward, so the browser's scroll restoration would scroll an
// empty page; each search starts at the top instead.
history.scrollRestoration = "manual";
history.replaceState(history.state ?? {}, "", location.href);
statsLoaded = loadStats();
run(queryFromLocation());
document.documentElement.dataset.ready = "true";
