// whizorch console: live pages over Server-Sent Events, and copy buttons.
// The server says "topic X moved to revision N"; the page fetches its own fragment
// (?fragment=1) and swaps it in, keeping open <details> open. No build step, no CDN.
"use strict";

(function () {
  const main = document.getElementById("main");
  const live = document.getElementById("live");
  const topic = main && main.dataset.topic;
  let rendered = Number((main && main.dataset.rev) || 0);
  let wanted = rendered;
  let busy = false;

  function setLive(state, text) {
    if (!live) return;
    live.className = "live " + state;
    live.textContent = text;
  }

  function fragmentUrl() {
    const url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    return url.toString();
  }

  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      while (wanted > rendered) {
        const target = wanted;
        const response = await fetch(fragmentUrl(), { credentials: "same-origin", cache: "no-store" });
        if (!response.ok && response.status !== 404) {
          setLive("stale", "update failed (" + response.status + ")");
          return;
        }
        const doc = new DOMParser().parseFromString(await response.text(), "text/html");
        const fragment = doc.getElementById("fragment");
        if (!fragment) return;
        const open = new Set();
        main.querySelectorAll("details[data-keep]").forEach(function (d) {
          if (d.open) open.add(d.dataset.keep);
        });
        main.replaceChildren(...Array.from(fragment.childNodes).map(function (n) { return document.adoptNode(n); }));
        main.querySelectorAll("details[data-keep]").forEach(function (d) {
          if (open.has(d.dataset.keep)) d.open = true;
        });
        rendered = Math.max(target, Number(fragment.dataset.rev || 0));
        main.dataset.rev = String(rendered);
        setLive("on", "live (rev " + rendered + ")");
      }
    } catch (err) {
      setLive("stale", "update failed");
    } finally {
      busy = false;
    }
  }

  if (topic && window.EventSource) {
    const source = new EventSource("/events?topic=" + encodeURIComponent(topic) + "&since=" + rendered);
    source.onopen = function () { setLive("on", "live (rev " + rendered + ")"); };
    source.onerror = function () { setLive("stale", "reconnecting..."); };
    source.onmessage = function (event) {
      const rev = Number(event.data);
      if (rev > wanted) wanted = rev;
      refresh();
    };
  } else {
    setLive("off", "static page");
  }

  document.addEventListener("click", function (event) {
    const button = event.target.closest && event.target.closest("button.copy");
    if (!button) return;
    const pre = document.getElementById(button.dataset.copy);
    if (!pre) return;
    const text = pre.textContent;
    const done = function () { button.textContent = "copied"; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { selectCopy(pre); done(); });
    } else {
      selectCopy(pre);
      done();
    }
  });

  function selectCopy(pre) {
    const range = document.createRange();
    range.selectNodeContents(pre);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    document.execCommand("copy");
  }

  // the filter form submits on change (no button press needed)
  document.addEventListener("change", function (event) {
    const form = event.target.closest && event.target.closest("form#filters");
    if (form && event.target.tagName === "SELECT") form.submit();
  });
})();
