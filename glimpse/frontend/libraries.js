// One status line in the footer while a library (GATEWAY_LIBRARIES) has work pending, from
// GET /admin/libraries (docs/library.md). The page sends no API key, so the route is readable
// only on a gateway without one: an answer of 401 (it needs a key) or 404 (no library is
// configured) stops the polling for the life of the page.

// While work is pending the line follows it closely; once idle, a look now and then notices a
// new scan (a folder added, POST /admin/libraries/{name}/scan).
const BUSY_MS = 2000;
const IDLE_MS = 30000;

const line = document.createElement("span");
line.id = "library-status";
line.setAttribute("role", "status");
line.hidden = true;
document.getElementById("stats")?.after(line);

/** The sentence for the libraries' status, or "" when none has work pending. */
function describe(libraries) {
  const busy = libraries.filter((lib) => Number(lib.pending) > 0 || lib.status === "scanning");
  if (busy.length === 0) return "";
  const pending = busy.reduce((sum, lib) => sum + Math.max(0, Number(lib.pending) || 0), 0);
  const names = busy.map((lib) => lib.name).join(", ");
  const which = `${busy.length === 1 ? "library" : "libraries"} ${names}`;
  if (pending === 0) return `Scanning ${which}…`;
  return `Indexing ${which}: ${pending.toLocaleString("en")} file${pending === 1 ? "" : "s"} pending…`;
}

function show(text) {
  line.textContent = text;
  line.hidden = text === "";
}

async function poll() {
  if (document.hidden) {
    // No requests from a tab nobody looks at; the next look is when it is shown again.
    document.addEventListener("visibilitychange", poll, { once: true });
    return;
  }
  let response;
  try {
    response = await fetch(new URL("admin/libraries", document.baseURI), { cache: "no-store" });
  } catch {
    setTimeout(poll, IDLE_MS); // the gateway is unreachable: app.js says so; look again later
    return;
  }
  if (response.status === 401 || response.status === 403 || response.status === 404) {
    show("");
    return;
  }
  let text = "";
  if (response.ok) {
    try {
      text = describe((await response.json()).libraries ?? []);
    } catch {
      text = "";
    }
  }
  show(text);
  setTimeout(poll, text ? BUSY_MS : IDLE_MS);
}

poll();
