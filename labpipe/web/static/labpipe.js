/* labpipe web UI: the few things that need a script. Every page works without it. */
(function () {
  "use strict";

  function typing(event) {
    var t = event.target;
    return t && (t.isContentEditable || /^(INPUT|SELECT|TEXTAREA)$/.test(t.tagName)) && t.type !== "checkbox";
  }

  // ---- dashboard: refresh the live part every few seconds --------------------------------------
  function liveRefresh() {
    var box = document.getElementById("live");
    if (!box || !window.fetch) return;
    var url = box.getAttribute("data-refresh");
    var every = parseInt(box.getAttribute("data-interval") || "3000", 10);
    var busy = false;
    function tick() {
      if (busy || document.hidden) return;
      if (box.contains(document.activeElement) && document.activeElement.tagName === "BUTTON") return;
      busy = true;
      fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (r) {
          if (r.redirected) { window.location.reload(); return null; }  // logged out: show the login page
          return r.ok ? r.text() : null;
        })
        .then(function (html) { if (html !== null) box.innerHTML = html; })
        .catch(function () {})
        .then(function () { busy = false; });
    }
    setInterval(tick, every);
  }

  // ---- plate view: zoom and pan by changing the SVG viewBox ----------------------------------
  function plateZoom() {
    var svg = document.getElementById("plate");
    if (!svg) return;
    var W = parseFloat(svg.getAttribute("data-w")), H = parseFloat(svg.getAttribute("data-h"));
    var vb = { x: 0, y: 0, w: W, h: H };
    function apply() { svg.setAttribute("viewBox", vb.x + " " + vb.y + " " + vb.w + " " + vb.h); }
    function toPlate(clientX, clientY) {
      var r = svg.getBoundingClientRect();
      var s = Math.max(vb.w / r.width, vb.h / r.height);  // meet: the larger ratio wins
      var ox = (r.width * s - vb.w) / 2, oy = (r.height * s - vb.h) / 2;
      return { x: vb.x - ox + (clientX - r.left) * s, y: vb.y - oy + (clientY - r.top) * s, s: s };
    }
    function zoom(factor, cx, cy) {
      var w = Math.min(W * 1.5, Math.max(W / 200, vb.w / factor)), h = w * H / W;
      var k = w / vb.w;
      vb.x = cx - (cx - vb.x) * k; vb.y = cy - (cy - vb.y) * k; vb.w = w; vb.h = h;
      apply();
    }
    svg.addEventListener("wheel", function (e) {
      e.preventDefault();
      var p = toPlate(e.clientX, e.clientY);
      zoom(e.deltaY < 0 ? 1.25 : 0.8, p.x, p.y);
    }, { passive: false });
    var drag = null, moved = false;
    svg.addEventListener("pointerdown", function (e) {
      if (e.button !== 0) return;
      drag = { x: e.clientX, y: e.clientY, vx: vb.x, vy: vb.y, s: toPlate(e.clientX, e.clientY).s };
      moved = false;
    });
    window.addEventListener("pointermove", function (e) {
      if (!drag) return;
      var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (!moved && Math.abs(dx) + Math.abs(dy) < 4) return;
      if (!moved) { moved = true; svg.classList.add("dragging"); }
      vb.x = drag.vx - dx * drag.s; vb.y = drag.vy - dy * drag.s; apply();
    });
    window.addEventListener("pointerup", function () { drag = null; svg.classList.remove("dragging"); });
    svg.addEventListener("click", function (e) { if (moved) { e.preventDefault(); e.stopPropagation(); moved = false; } }, true);
    svg.addEventListener("dblclick", function (e) { e.preventDefault(); vb = { x: 0, y: 0, w: W, h: H }; apply(); });
    function centre() { return { x: vb.x + vb.w / 2, y: vb.y + vb.h / 2 }; }
    document.querySelectorAll("[data-zoom]").forEach(function (b) {
      b.addEventListener("click", function () {
        var c = centre(), what = b.getAttribute("data-zoom");
        if (what === "in") zoom(1.5, c.x, c.y);
        else if (what === "out") zoom(1 / 1.5, c.x, c.y);
        else { vb = { x: 0, y: 0, w: W, h: H }; apply(); }
      });
    });
    document.addEventListener("keydown", function (e) {
      if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
      var c = centre();
      if (e.key === "+" || e.key === "=") zoom(1.5, c.x, c.y);
      else if (e.key === "-") zoom(1 / 1.5, c.x, c.y);
      else if (e.key === "0") { vb = { x: 0, y: 0, w: W, h: H }; apply(); }
    });
    var toggle = document.getElementById("show-rejected");
    if (toggle) toggle.addEventListener("change", function () { svg.classList.toggle("hide-rejected", !toggle.checked); });
  }

  // ---- gallery and review queue: ticks, keyboard ----------------------------------------------
  function gallery() {
    var list = document.getElementById("gallery");
    if (!list) return;
    var form = document.getElementById("bulk");
    var cards = Array.prototype.slice.call(list.querySelectorAll(".card"));
    var all = document.getElementById("select-all");
    var count = document.getElementById("selected-count");
    function boxes() { return Array.prototype.slice.call(list.querySelectorAll("input[name=ids]")); }
    function ticked() { return boxes().filter(function (b) { return b.checked; }); }
    function refresh() {
      boxes().forEach(function (b) { b.closest(".card").classList.toggle("ticked", b.checked); });
      if (count) count.textContent = ticked().length + " ticked";
    }
    list.addEventListener("change", refresh);
    if (all) all.addEventListener("change", function () { boxes().forEach(function (b) { b.checked = all.checked; }); refresh(); });
    var current = -1;
    function focus(i) {
      if (!cards.length) return;
      current = Math.max(0, Math.min(cards.length - 1, i));
      cards[current].focus();
      cards[current].scrollIntoView({ block: "nearest" });
    }
    cards.forEach(function (c, i) { c.addEventListener("focus", function () { current = i; }); });
    function clickIn(card, key) {
      var b = card && card.querySelector('[data-key="' + key + '"]');
      if (b) { b.click(); return true; }
      return false;
    }
    function bulk(status) {
      var b = form && form.querySelector('.bulkbar button[value="' + status + '"]');
      if (b) b.click();
    }
    document.addEventListener("keydown", function (e) {
      if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
      var card = current >= 0 ? cards[current] : null;
      var k = e.key;
      if (k === "j" || k === "ArrowRight" || k === "ArrowDown") { focus(current + 1); e.preventDefault(); }
      else if (k === "k" || k === "ArrowLeft" || k === "ArrowUp") { focus(current - 1); e.preventDefault(); }
      else if ((k === "x" || k === " ") && card) {
        var b = card.querySelector("input[name=ids]");
        if (b) { b.checked = !b.checked; refresh(); e.preventDefault(); }
      }
      else if (k === "Enter" && card && document.activeElement === card) { window.location = card.getAttribute("data-href"); }
      else if (k === "c" || k === "n" || k === "m") {
        if (ticked().length) bulk({ c: "confirmed", n: "not_specimen", m: "multiple" }[k]);
        else if (card) clickIn(card, k);
      }
      else if (/^[1-9]$/.test(k) && card) clickIn(card, k);
      else if (k === "]") { var n = document.querySelector('a[data-key="next"]'); if (n) n.click(); }
      else if (k === "[") { var p = document.querySelector('a[data-key="prev"]'); if (p) p.click(); }
    });
    refresh();
  }

  // ---- dense gallery: tile size slider (remembered in this browser), view switch ----------------
  function tileSize() {
    var list = document.getElementById("gallery");
    var slider = document.getElementById("tile-size");
    var view = document.getElementById("view");
    if (view && view.form) view.addEventListener("change", function () { view.form.submit(); });
    if (!list || !slider) return;
    var KEY = "labpipe.tile";
    function apply(v, remember) {
      list.style.setProperty("--tile", v + "px");
      list.querySelectorAll("img[sizes]").forEach(function (img) { img.setAttribute("sizes", v + "px"); });
      if (!remember) return;
      try { window.localStorage.setItem(KEY, String(v)); } catch (e) { /* private mode: not remembered */ }
      if (window.history && window.URL) {
        var url = new URL(window.location.href);
        url.searchParams.set("tile", String(v));
        window.history.replaceState(null, "", url.toString());
      }
    }
    slider.addEventListener("input", function () { apply(parseInt(slider.value, 10), true); });
    var saved = null;
    try { saved = window.localStorage.getItem(KEY); } catch (e) { saved = null; }
    if (saved && !/[?&]tile=/.test(window.location.search)) {
      var v = Math.max(parseInt(slider.min, 10), Math.min(parseInt(slider.max, 10), parseInt(saved, 10)));
      if (!isNaN(v)) { slider.value = String(v); apply(v, false); }
    }
  }

  // ---- undo after a verdict: "u" ----------------------------------------------------------------
  function undoKey() {
    var button = document.getElementById("undo");
    if (!button) return;
    document.addEventListener("keydown", function (e) {
      if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
      if (e.key === "u") { e.preventDefault(); button.click(); }
    });
  }

  // ---- one specimen: keyboard review ----------------------------------------------------------
  function specimen() {
    var form = document.getElementById("verify");
    if (!form) return;
    var family = document.getElementById("family");
    document.addEventListener("keydown", function (e) {
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      if (typing(e)) {
        if (e.key === "Escape") e.target.blur();
        return;
      }
      var k = e.key;
      if (k === "f" || k === "/") { family.focus(); e.preventDefault(); return; }
      if (k === "j") { var n = document.getElementById("next"); if (n) n.click(); return; }
      if (k === "k") { var p = document.getElementById("prev"); if (p) p.click(); return; }
      var b = form.querySelector('[data-key="' + k + '"]');
      if (b) { e.preventDefault(); b.click(); }
    });
    // Enter in the family field corrects (the form's default button would confirm)
    family.addEventListener("keydown", function (e) {
      if (e.key === "Enter") { e.preventDefault(); if (family.value.trim()) document.getElementById("correct").click(); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    liveRefresh();
    plateZoom();
    gallery();
    tileSize();
    undoKey();
    specimen();
  });
})();
