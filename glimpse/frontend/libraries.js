// One status line in the footer while a library (GATEWAY_LIBRARIES) has work pending, from
// GET /admin/libraries (docs/library.md), polled by poll.js: once idle, a look now and then
// notices a new scan (a folder added, POST /admin/libraries/{name}/scan).

import { poll } from "./poll.js";

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

poll("admin/libraries", {
  onAnswer(body) {
    const text = describe(Array.isArray(body.libraries) ? body.libraries : []);
    show(text);
    return text !== "";
  },
  onStop: () => show(""),
});
