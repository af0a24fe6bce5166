// trainboard's only script: every page works without it; it adds live updates of a job's page, a
// sweep's page and the list, copy buttons, a confirmation before cancelling, the compare selection
// count, and the new-job form's summary line.
// Served from /static (no inline scripts), so a Content-Security-Policy of script-src 'self' holds.
"use strict";

// ---- Live pages -----------------------------------------------------------------------------
// The server renders the changing parts of a page (a job's, the list) as a fragment whose
// top-level elements all carry ids. Polling it and swapping only the elements that differ keeps
// hover, focus, ticked boxes and scroll positions everywhere else. An element marked
// data-swap-children whose children keep their ids and order is updated child by child, so a
// table only swaps the rows that changed.

function atBottom(element) {
  return element.scrollHeight - element.scrollTop - element.clientHeight < 8;
}

function swapChanged(container, html) {
  const fresh = document.createElement("template");
  fresh.innerHTML = html;
  for (const next of Array.from(fresh.content.children)) {
    const current = next.id && document.getElementById(next.id);
    if (current) {
      swapElement(current, next);
    }
  }
  updateCompareSelection();
}

function sameChildIds(current, next) {
  const before = Array.from(current.children, (child) => child.id);
  const after = Array.from(next.children, (child) => child.id);
  return before.length === after.length && before.every((id, index) => id && id === after[index]);
}

function swapElement(current, next) {
  // data-keep: the page's own state lives there (the compare bar's count); left as it is.
  if (current.isEqualNode(next) || "keep" in current.dataset) {
    return;
  }
  if ("swapChildren" in current.dataset && sameChildIds(current, next)) {
    const pairs = Array.from(current.children, (child, index) => [child, next.children[index]]);
    for (const [child, nextChild] of pairs) {
      swapElement(child, nextChild);
    }
    for (const name of current.getAttributeNames()) {
      if (!next.hasAttribute(name)) current.removeAttribute(name);
    }
    for (const name of next.getAttributeNames()) {
      current.setAttribute(name, next.getAttribute(name));
    }
    return;
  }
  const focus = focusPlace(current);
  const followed = new Map();
  for (const log of current.querySelectorAll("[data-follow]")) {
    followed.set(log.id, atBottom(log) ? Infinity : log.scrollTop);
  }
  for (const box of current.querySelectorAll("input[type=checkbox][id]:checked")) {
    const same = next.querySelector(`#${CSS.escape(box.id)}`);
    if (same) same.checked = true;
  }
  current.replaceWith(next);
  for (const [id, top] of followed) {
    const log = document.getElementById(id);
    if (log) {
      followedLogs.add(log);
      log.scrollTop = top === Infinity ? log.scrollHeight : top;
    }
  }
  enhance(next);
  restoreFocus(focus);
}

const FOCUSABLE = "a[href], button, input, select, textarea, [tabindex]";

// Where the focus is inside `element`, if it is: the nearest element with an id around it and
// its position among that element's focusable descendants.
function focusPlace(element) {
  const active = document.activeElement;
  if (!active || active === document.body || !element.contains(active)) {
    return null;
  }
  const anchor = active.id ? active : active.parentElement.closest("[id]");
  const index = Array.from(anchor.querySelectorAll(FOCUSABLE)).indexOf(active);
  return { id: anchor.id, index };
}

function restoreFocus(place) {
  const anchor = place && document.getElementById(place.id);
  if (!anchor) return;
  const target = place.index < 0 ? anchor : anchor.querySelectorAll(FOCUSABLE)[place.index];
  if (target) target.focus({ preventScroll: true });
}

function followLive(container) {
  const source = container.dataset.liveSrc;
  const interval = Number(container.dataset.liveInterval) || 2000;
  let failures = 0;
  let timer = 0;
  const notice = document.createElement("p");
  notice.className = "live-notice";
  notice.setAttribute("role", "status");
  container.before(notice);
  // The status badge is swapped out with its section, so a region of its own announces changes.
  const announcer = document.createElement("p");
  announcer.className = "visually-hidden";
  announcer.setAttribute("aria-live", "polite");
  container.before(announcer);

  async function poll() {
    timer = 0;
    if (document.hidden) {
      return;  // visibilitychange polls again when the tab is shown
    }
    try {
      const response = await fetch(source, { headers: { Accept: "text/html" }, cache: "no-store" });
      if (response.redirected) {
        // Sent elsewhere (an expired session goes to the login page): let the whole page go there.
        window.location.reload();
        return;
      }
      if (!response.ok) {
        throw new Error(`the server answered ${response.status}`);
      }
      const before = document.getElementById("status")?.textContent;
      swapChanged(container, await response.text());
      const after = document.getElementById("status")?.textContent;
      if (after && after !== before) {
        announcer.textContent = `${container.dataset.liveSubject || "Job"} ${after}.`;
      }
      failures = 0;
      notice.textContent = "";
    } catch (error) {
      failures += 1;
      notice.textContent = `Live updates paused (${error.message}); retrying.`;
    }
    const state = document.getElementById("live-state");
    if (state && state.dataset.title) {
      document.title = state.dataset.title;
    }
    if (state && state.dataset.active === "false") {
      notice.remove();
      return;
    }
    // Back off while the server is unreachable, up to half a minute.
    timer = setTimeout(poll, Math.min(interval * 2 ** failures, 30000));
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && !timer && document.getElementById("live-state")?.dataset.active !== "false") {
      poll();
    }
  });
  timer = setTimeout(poll, interval);
}

// ---- Copy buttons, confirmations ------------------------------------------------------------

// Enhancements leave the elements' attributes alone, so a fresh fragment compares equal to
// what it would replace when nothing changed.
const followedLogs = new WeakSet();

function enhance(root) {
  for (const log of root.querySelectorAll("[data-follow]")) {
    if (!followedLogs.has(log)) {
      followedLogs.add(log);
      log.scrollTop = log.scrollHeight;
    }
  }
}

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  // Plain-HTTP pages on another host have no Clipboard API; a selected textarea still copies.
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "offscreen";
  document.body.append(area);
  area.select();
  const copied = document.execCommand("copy");
  area.remove();
  if (!copied) {
    throw new Error("the browser refused to copy");
  }
}

document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy-target]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copyTarget);
  try {
    await copyText(source.textContent.trim());
    button.textContent = "Copied";
  } catch (error) {
    button.textContent = "Select and copy by hand";
  }
  setTimeout(() => { button.textContent = "Copy"; }, 2000);
});

document.addEventListener("submit", (event) => {
  const message = event.target.dataset.confirm;
  if (message && !window.confirm(message)) {
    event.preventDefault();
  }
});

// ---- Compare selection on the list ----------------------------------------------------------
// The list's rows are swapped while it updates live, so the count is worked out from the
// boxes present each time, and their changes are heard on the document.

function updateCompareSelection() {
  const form = document.getElementById("compare-form");
  if (!form) return;
  const button = document.getElementById("compare-button");
  const hint = document.getElementById("compare-hint");
  const count = document.querySelectorAll(`input[form="${form.id}"]:checked`).length;
  const low = Number(form.dataset.min);
  const high = Number(form.dataset.max);
  button.disabled = count < low || count > high;
  const text = count === 0 ? hint.dataset.hint
    : count > high ? `${count} selected: at most ${high}.` : `${count} selected.`;
  if (hint.textContent !== text) {
    hint.textContent = text;  // a live region: set only on a change, so it is announced once
  }
}

document.addEventListener("change", (event) => {
  if (event.target.matches('input[form="compare-form"]')) {
    updateCompareSelection();
  }
});

// ---- The new-job form's summary -------------------------------------------------------------
// One line under the form says what the chosen values add up to: epochs x training images, and
// the time that takes at the speed of the last succeeded job with the same model, data set and
// kind of device, which the server worked out (data-speeds, keyed "model/dataset/gpu|cpu").

function roughDuration(seconds) {
  if (seconds < 60) return "under a minute";
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `about ${minutes} min`;
  const hours = Math.floor(minutes / 60);
  return minutes % 60 ? `about ${hours} h ${minutes % 60} min` : `about ${hours} h`;
}

function positiveInteger(input) {
  const value = Number(input.value.trim() || input.placeholder);
  return Number.isInteger(value) && value > 0 ? value : null;
}

function updateFormSummary() {
  const summary = document.getElementById("form-summary");
  if (!summary) return;
  const fields = summary.closest("form").elements;
  const available = JSON.parse(summary.dataset.trainImages)[fields.dataset.value];
  const epochs = positiveInteger(fields.epochs);
  if (!available || !epochs) {
    summary.textContent = "";
    return;
  }
  const images = Math.min(positiveInteger(fields.train_subset) || available, available);
  const total = epochs * images;
  const count = (n) => n.toLocaleString("en-US");
  let text = `${count(epochs)} epoch${epochs === 1 ? "" : "s"} × ${count(images)} images = ${count(total)} training images`;
  // A job that asks for the GPU trains on the CPU where its worker has none.
  const speeds = JSON.parse(summary.dataset.speeds);
  const kind = (fields.use_cuda.checked ? ["gpu", "cpu"] : ["cpu"])
    .find((device) => speeds[`${fields.model.value}/${fields.dataset.value}/${device}`]);
  if (kind) {
    const speed = speeds[`${fields.model.value}/${fields.dataset.value}/${kind}`];
    text += `; ${roughDuration(total / speed.images_per_second)} on a ${kind.toUpperCase()}`
      + ` like the last similar job (#${speed.job_id})`;
  }
  summary.textContent = text;
}

document.addEventListener("input", (event) => {
  if (event.target.form && event.target.form.querySelector("#form-summary")) {
    updateFormSummary();
  }
});

document.documentElement.classList.add("js");

document.addEventListener("DOMContentLoaded", () => {
  enhance(document);
  updateCompareSelection();
  updateFormSummary();
  for (const container of document.querySelectorAll("[data-live-src]")) {
    followLive(container);
  }
});
