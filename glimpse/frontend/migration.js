// A banner while the collection moves to another model (issue 22; glimpse/gateway/migration.py),
// from GET /admin/model: its progress while it runs, then that the new model answers until the
// switch is confirmed or rolled back, polled by poll.js (which says when it stops). Searches
// stay up the whole time; the banner only informs.

import { poll } from "./poll.js";

const banner = document.createElement("p");
banner.id = "migration-banner";
banner.className = "status migration-banner";
banner.setAttribute("role", "status");
banner.hidden = true;
document.querySelector("main")?.prepend(banner);

/** "3 min" for a number of seconds; "" when unknown. */
function duration(seconds) {
  const s = Number(seconds);
  if (!Number.isFinite(s) || s <= 0) return "";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

/** The banner's sentence for GET /admin/model's answer, or "" when there is nothing to say. */
export function describe(status) {
  const model = status.model ?? "another model";
  if (status.state === "running") {
    const done = Math.max(0, Number(status.done) || 0);
    const total = Math.max(0, Number(status.total) || 0);
    const percent = total > 0 ? Math.floor((100 * done) / total) : 0;
    const eta = duration(status.eta_s);
    const counts = total > 0
      ? `${done.toLocaleString("en")} of ${total.toLocaleString("en")} photos (${percent} %)`
      : "starting";
    return `Moving to the model ${model}: ${counts}${eta ? `, about ${eta} left` : ""}. ` +
      "Searches use the current model until it is done.";
  }
  if (status.state === "switched") {
    return `Searches now use the model ${model}; the previous one is kept until the switch is ` +
      "confirmed.";
  }
  if (status.state === "failed") {
    return `Moving to the model ${model} stopped: ${status.error ?? "see GET /admin/model"}. ` +
      "Searches use the previous model.";
  }
  return "";
}

function show(text) {
  banner.textContent = text;
  banner.hidden = text === "";
}

poll("admin/model", {
  onAnswer(status) {
    show(describe(status));
    return status.state === "running";
  },
  onStop: () => show(""),
});
