// The Duplicates view (#duplicates): the groups of GET /duplicates side by side, the suggested
// keeper marked, and the others deleted (DELETE /images/{id}) after a confirmation. Deleting
// needs the gateway's API key when it has one: the view asks for it and keeps it only in memory.

// While the first pass runs the groups so far are shown, and looked at again this often.
const PENDING_MS = 1000;

const link = document.createElement("a");
link.href = "#duplicates";
link.id = "duplicates-link";
link.textContent = "Duplicates";
document.querySelector(".footer-links")?.prepend(link);

const view = document.createElement("dialog");
view.id = "duplicates";
view.className = "dup-view";
view.setAttribute("aria-labelledby", "dup-title");
view.innerHTML = `
  <div class="dup-head">
    <h2 id="dup-title">Duplicates</h2>
    <button type="button" class="button" id="dup-close">Close</button>
  </div>
  <div class="dup-controls">
    <label>Copies
      <select id="dup-mode">
        <option value="exact">Exact: the same pixels</option>
        <option value="similar">Similar: resized, recompressed or edited too</option>
      </select>
    </label>
    <label>API key (to delete)
      <input id="dup-key" type="password" autocomplete="off" spellcheck="false">
    </label>
  </div>
  <p id="dup-status" class="status" role="status" aria-live="polite"></p>
  <ol id="dup-groups" class="dup-groups"></ol>`;
document.body.append(view);

const els = {
  mode: view.querySelector("#dup-mode"),
  key: view.querySelector("#dup-key"),
  status: view.querySelector("#dup-status"),
  groups: view.querySelector("#dup-groups"),
};
let timer = 0;
let asked = 0; // answers to an older request (another mode) are dropped

function say(text) {
  els.status.textContent = text;
}

function url(path) {
  return new URL(path, document.baseURI);
}

function size(bytes) {
  if (bytes == null) return "size unknown";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function facts(item) {
  const pixels = item.width && item.height ? `${item.width} × ${item.height}` : "size unknown";
  const taken = item.date ? `taken ${item.date.replace("T", " ").slice(0, 16)}` : "no date";
  return [pixels, size(item.bytes), taken];
}

function card(item, keeper, group) {
  const li = document.createElement("li");
  li.className = "dup-item";
  li.dataset.id = String(item.id);
  const img = document.createElement("img");
  img.loading = "lazy";
  img.alt = item.path;
  img.src = url(`images/${item.id}/thumbnail`);
  const box = document.createElement("input");
  box.type = "checkbox";
  box.className = "dup-keep";
  box.checked = item.id === keeper;
  box.id = `dup-keep-${item.id}`;
  box.addEventListener("change", () => refresh(group));
  const label = document.createElement("label");
  label.htmlFor = box.id;
  label.textContent = "Keep";
  const keep = document.createElement("div");
  keep.className = "dup-keep-row";
  keep.append(box, label);
  if (item.id === keeper) {
    const badge = document.createElement("span");
    badge.className = "dup-badge";
    badge.textContent = "Suggested keeper";
    keep.append(badge);
  }
  const path = document.createElement("p");
  path.className = "dup-path";
  path.textContent = item.path;
  const detail = document.createElement("p");
  detail.className = "dup-facts";
  detail.textContent = facts(item).join(" · ");
  li.append(img, keep, path, detail);
  return li;
}

/** The group's delete button names how many go; keeping none is not offered. */
function refresh(group) {
  const boxes = [...group.querySelectorAll(".dup-keep")];
  const going = boxes.filter((b) => !b.checked).length;
  const button = group.querySelector(".dup-delete");
  button.disabled = going === 0 || going === boxes.length;
  button.textContent = going === boxes.length
    ? "Keep at least one"
    : `Delete ${going} not kept`;
}

function render(body) {
  els.groups.replaceChildren();
  body.groups.forEach((g, n) => {
    const li = document.createElement("li");
    li.className = "dup-group";
    const heading = document.createElement("h3");
    heading.textContent = `Group ${n + 1}: ${g.items.length} copies`;
    const list = document.createElement("ul");
    list.className = "dup-items";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "button dup-delete";
    button.addEventListener("click", () => remove(li));
    list.append(...g.items.map((item) => card(item, g.keeper, li)));
    li.append(heading, list, button);
    els.groups.append(li);
    refresh(li);
  });
  const count = body.groups.length;
  const found = count === 0 ? "No duplicates found" : `${count} group${count === 1 ? "" : "s"} of duplicates`;
  if (body.complete) say(`${found}.`);
  else say(`Looking for duplicates: ${body.progress.done} of ${body.progress.total} images… ${found} so far.`);
}

async function load() {
  clearTimeout(timer);
  const mine = ++asked;
  let body;
  try {
    const response = await fetch(url(`duplicates?mode=${els.mode.value}`), { cache: "no-store" });
    body = await response.json();
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  } catch (exc) {
    if (mine === asked) say(`The duplicates could not be loaded: ${exc.message}`);
    return;
  }
  if (mine !== asked || !view.open) return;
  render(body);
  if (!body.complete) timer = setTimeout(load, PENDING_MS);
}

async function remove(group) {
  const going = [...group.querySelectorAll(".dup-item")].filter(
    (li) => !li.querySelector(".dup-keep").checked);
  const paths = going.map((li) => li.querySelector(".dup-path").textContent);
  if (!window.confirm(`Delete ${going.length} image${going.length === 1 ? "" : "s"} for good?\n\n${paths.join("\n")}`)) return;
  const key = els.key.value.trim();
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  let deleted = 0;
  for (const li of going) {
    let response;
    try {
      response = await fetch(url(`images/${li.dataset.id}`), { method: "DELETE", headers });
    } catch {
      say("The gateway could not be reached: nothing more was deleted.");
      return;
    }
    if (response.status === 401 || response.status === 403) {
      say("Deleting needs the gateway's API key: type it above and try again.");
      els.key.focus();
      return;
    }
    if (!response.ok && response.status !== 404) {
      say(`Deleting ${li.querySelector(".dup-path").textContent} failed (HTTP ${response.status}).`);
      return;
    }
    li.remove();
    deleted += 1;
  }
  if (group.querySelectorAll(".dup-item").length < 2) group.remove();
  else refresh(group);
  say(`Deleted ${deleted} image${deleted === 1 ? "" : "s"}.`);
}

function open() {
  if (!view.open) view.showModal();
  load();
}

function close() {
  clearTimeout(timer);
  if (location.hash === "#duplicates") {
    history.replaceState(history.state, "", location.pathname + location.search);
  }
}

view.querySelector("#dup-close").addEventListener("click", () => view.close());
view.addEventListener("close", close);
els.mode.addEventListener("change", load);
window.addEventListener("hashchange", () => {
  if (location.hash === "#duplicates") open();
});
if (location.hash === "#duplicates") open();
