// trainboard's only script: every page works without it; it adds live updates of a job's page,
// copy buttons, a confirmation before cancelling, and the compare selection count.
// Served from /static (no inline scripts), so a Content-Security-Policy of script-src 'self' holds.
"use strict";

// ---- Live job page --------------------------------------------------------------------------
// The server renders the changing parts of the page as a fragment whose top-level elements all
// carry ids. Polling it and swapping only the elements that differ keeps hover, focus and
// scroll positions everywhere else.

function atBottom(element) {
  return element.scrollHeight - element.scrollTop - element.clientHeight < 8;
}

function swapChanged(container, html) {
  const fresh = document.createElement("template");
  fresh.innerHTML = html;
  for (const next of Array.from(fresh.content.children)) {
    const current = next.id && document.getElementById(next.id);
    if (!current || current.isEqualNode(next)) {
      continue;
    }
    const focusedId = current.contains(document.activeElement) ? document.activeElement.id : "";
    const followed = new Map();
    for (const log of current.querySelectorAll("[data-follow]")) {
      followed.set(log.id, atBottom(log) ? Infinity : log.scrollTop);
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
    if (focusedId && document.getElementById(focusedId)) {
      document.getElementById(focusedId).focus();
    }
  }
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
        announcer.textContent = `Job ${after}.`;
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

function watchCompareSelection(form) {
  const button = document.getElementById("compare-button");
  const hint = document.getElementById("compare-hint");
  const boxes = document.querySelectorAll(`input[form="${form.id}"]`);
  const low = Number(form.dataset.min);
  const high = Number(form.dataset.max);
  const initial = hint.textContent;
  function update() {
    const count = Array.from(boxes).filter((box) => box.checked).length;
    button.disabled = count < low || count > high;
    hint.textContent = count === 0 ? initial
      : count > high ? `${count} selected: at most ${high}.` : `${count} selected.`;
  }
  for (const box of boxes) {
    box.addEventListener("change", update);
  }
  update();
}

document.documentElement.classList.add("js");

document.addEventListener("DOMContentLoaded", () => {
  enhance(document);
  for (const container of document.querySelectorAll("[data-live-src]")) {
    followLive(container);
  }
  const compare = document.getElementById("compare-form");
  if (compare) watchCompareSelection(compare);
});
