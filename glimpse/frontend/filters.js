// The filter bar: date taken, folder, camera and "has location" (issue 26), the inline syntax
// typed in the search box (after:2023-06 before:2023-09 in:Holidays/2023 camera:pixel), and
// the filters in the URL so a search can be shared and reloaded.
//
// app.js asks window.glimpseFilters for the request's `filters` body and the URL's parameters;
// a change here submits the search form again, so app.js runs the search its usual way. This
// script runs before app.js (its tag comes first) so the filters are read from the URL first.

// The URL's names of the filters.
const PARAMS = ["after", "before", "in", "camera", "located", "sort"];
const form = document.getElementById("search-form");
const input = document.getElementById("q");

const bar = document.createElement("details");
bar.className = "filters";
bar.innerHTML = `
  <summary>Filters <span class="filters-count" aria-live="polite"></span></summary>
  <div class="filters-body">
    <label>Taken from <select name="after"><option value="">Any month</option></select></label>
    <label>to <select name="to"><option value="">Any month</option></select></label>
    <label>Folder <input type="text" name="in" list="filter-folders" maxlength="1024"
      placeholder="Holidays/2023" spellcheck="false"></label>
    <datalist id="filter-folders"></datalist>
    <label>Camera <select name="camera"><option value="">Any</option></select></label>
    <label class="filters-check"><input type="checkbox" name="located"> Has location</label>
    <label>Order <select name="sort">
      <option value="">Best match</option>
      <option value="newest">Newest first</option>
      <option value="oldest">Oldest first</option>
    </select></label>
    <button type="button" class="button filters-clear">Clear</button>
    <details class="filters-help">
      <summary>Typing filters</summary>
      <p>In the search box: <code>after:2023-06</code> <code>before:2023-09</code>
      (June to August), <code>in:Holidays/2023</code>, <code>camera:pixel</code>,
      and <code>-people</code> to steer away from a word.</p>
    </details>
  </div>`;
// A landmark of its own, so it is in a screen reader's list of landmarks like the rest.
const region = document.createElement("section");
region.setAttribute("aria-label", "Search filters");
region.append(bar);
document.querySelector(".topbar")?.after(region);
const field = (name) => bar.querySelector(`[name="${name}"]`);

/** "2023-06" + n months, as "YYYY-MM". */
function addMonths(month, n) {
  const [y, m] = month.split("-").map(Number);
  const total = y * 12 + (m - 1) + n;
  return `${String(Math.floor(total / 12)).padStart(4, "0")}-${String((total % 12) + 1).padStart(2, "0")}`;
}

const MONTH = /^\d{4}-\d{2}$/;

/** The filters as URL parameters (only those set). */
function params() {
  const out = {};
  const after = field("after").value;
  const to = field("to").value;
  if (MONTH.test(after)) out.after = after;
  if (MONTH.test(to)) out.before = addMonths(to, 1); // "to June" is "before July"
  if (field("in").value.trim()) out.in = field("in").value.trim();
  if (field("camera").value) out.camera = field("camera").value;
  if (field("located").checked) out.located = "1";
  if (field("sort").value) out.sort = field("sort").value;
  return out;
}

/** The request's `filters` body, or null when none is set. */
function body() {
  const p = params();
  const filters = {};
  if (p.after) filters.taken_after = p.after;
  if (p.before) filters.taken_before = p.before;
  if (p.in) filters.folder = [p.in];
  if (p.camera) filters.camera = p.camera;
  if (p.located) filters.has_location = true;
  return Object.keys(filters).length ? filters : null;
}

function ensureOption(select, value) {
  if (value && ![...select.options].some((o) => o.value === value)) select.add(new Option(value, value));
}

/** Set the controls from URL-style values (missing ones cleared). */
function setControls(values) {
  const after = MONTH.test(values.after || "") ? values.after : "";
  const to = MONTH.test(values.before || "") ? addMonths(values.before, -1) : "";
  // A month from the URL or typed syntax is offered even when no photo was taken in it.
  ensureOption(field("after"), after);
  ensureOption(field("to"), to);
  field("after").value = after;
  field("to").value = to;
  field("in").value = values.in || "";
  ensureOption(field("camera"), values.camera);
  field("camera").value = values.camera || "";
  field("located").checked = values.located === "1";
  field("sort").value = ["newest", "oldest"].includes(values.sort) ? values.sort : "";
  showCount();
}

function showCount() {
  const n = Object.keys(params()).filter((name) => name !== "sort").length;
  bar.querySelector(".filters-count").textContent = n ? `(${n})` : "";
}

function fromLocation() {
  const search = new URLSearchParams(location.search);
  setControls(Object.fromEntries(PARAMS.map((name) => [name, search.get(name) || ""])));
  if (Object.keys(params()).length) bar.open = true;
}

// Inline syntax: each `name:value` token (value quoted when it has spaces) becomes the control's
// value and leaves the box; the rest is the query.
const INLINE = /(?:^|\s)(after|before|in|camera):("([^"]*)"|\S+)/g;

function takeInline() {
  const found = {};
  const rest = input.value.replace(INLINE, (_, name, raw, quoted) => {
    found[name] = quoted ?? raw;
    return " ";
  }).replace(/\s+/g, " ").trim();
  if (!Object.keys(found).length) return;
  const values = { ...params(), ...found };
  // A typed month is the start of that month; a typed year its January.
  for (const name of ["after", "before"]) {
    if (/^\d{4}$/.test(values[name] || "")) values[name] += "-01";
  }
  input.value = rest;
  setControls(values);
  bar.open = true;
}

// Runs before app.js's own submit handler (capture, at the document).
document.addEventListener("submit", (event) => {
  if (event.target === form) takeInline();
}, true);

function refresh() {
  showCount();
  // The search runs again with the new filters when there is one: a text, or an image (its
  // chip shows); with none, focus stays on the control.
  if (input.value.trim() || !document.getElementById("query-chip")?.hidden) form.requestSubmit();
}

bar.querySelector(".filters-body").addEventListener("change", refresh);
bar.querySelector(".filters-clear").addEventListener("click", () => {
  setControls({});
  refresh();
});
window.addEventListener("popstate", fromLocation);

async function loadFacets() {
  try {
    const response = await fetch("facets");
    if (!response.ok) return;
    const facets = await response.json();
    const folders = document.getElementById("filter-folders");
    folders.replaceChildren(...facets.folders.map((f) => new Option(`${f.count} images`, f.value)));
    const camera = field("camera");
    for (const c of facets.cameras) ensureOption(camera, c.value);
    for (const name of ["after", "to"]) offerMonths(field(name), facets.years, facets.months);
  } catch {
    // No facets (an older gateway, or none reachable): the controls still take typed values.
  }
}

/** "2023-06" as "June 2023" in the reader's language. */
function monthName(month) {
  const [y, m] = month.split("-").map(Number);
  return new Date(Date.UTC(y, m - 1)).toLocaleString(undefined, { month: "long", year: "numeric", timeZone: "UTC" });
}

/** The months that hold photos (GET /facets), grouped by year with their counts, as the
 * date range's choices: a person sees which months hold photos. */
function offerMonths(select, years, months) {
  const chosen = select.value;
  const counts = new Map(years.map((y) => [y.value, y.count]));
  const groups = new Map();
  for (const m of months) {
    const year = m.value.slice(0, 4);
    if (!groups.has(year)) {
      const group = document.createElement("optgroup");
      const n = counts.get(year);
      group.label = n ? `${year} (${n} photo${n === 1 ? "" : "s"})` : year;
      groups.set(year, group);
    }
    groups.get(year).append(new Option(`${monthName(m.value)} (${m.count})`, m.value));
  }
  // A month the URL put there before the facets came is replaced by its counted choice.
  const offered = new Set(months.map((m) => m.value));
  for (const option of [...select.options]) {
    if (option.parentElement === select && offered.has(option.value)) option.remove();
  }
  select.append(...groups.values());
  select.value = chosen;
}

fromLocation();
loadFacets();

/** The order of the relevant results ("newest", "oldest"), or "" for the best match first. */
function sort() {
  return field("sort").value;
}

window.glimpseFilters = { body, params, sort };
