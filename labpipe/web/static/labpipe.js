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
    var shared = window.labpipePlate = { toPlate: null, grabbed: false };
    function apply() { svg.setAttribute("viewBox", vb.x + " " + vb.y + " " + vb.w + " " + vb.h); }
    function toPlate(clientX, clientY) {
      var r = svg.getBoundingClientRect();
      var s = Math.max(vb.w / r.width, vb.h / r.height);  // meet: the larger ratio wins
      var ox = (r.width * s - vb.w) / 2, oy = (r.height * s - vb.h) / 2;
      return { x: vb.x - ox + (clientX - r.left) * s, y: vb.y - oy + (clientY - r.top) * s, s: s };
    }
    shared.toPlate = toPlate;
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
      if (e.button !== 0 || shared.grabbed) return;
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


  // ---- plate view: edit boxes (new, delete, split, resize, undo); one overlay, one set of listeners
  function plateEdit() {
    var bar = document.getElementById("edit-bar"), toggle = document.getElementById("edit-toggle");
    var svg = document.getElementById("plate");
    if (!bar || !toggle || !svg || !window.fetch) return;
    var shared = window.labpipePlate;
    var layer = document.getElementById("edit-layer"), group = svg.querySelector("g.boxes");
    var say = document.getElementById("edit-status");
    var imageId = bar.getAttribute("data-image"), csrf = bar.getAttribute("data-csrf");
    var NS = "http://www.w3.org/2000/svg";
    var on = false, drawing = false, selected = null, undoStack = [], grab = null, busy = false;
    function el(name, attrs) {
      var n = document.createElementNS(NS, name);
      for (var k in attrs) n.setAttribute(k, attrs[k]);
      return n;
    }
    function rectOf(link) {
      var r = link.querySelector("rect");
      return { x: +r.getAttribute("x"), y: +r.getAttribute("y"), w: +r.getAttribute("width"), h: +r.getAttribute("height") };
    }
    function setMode(v) {
      on = v; drawing = false; bar.hidden = !v; toggle.setAttribute("aria-pressed", String(v));
      svg.classList.toggle("editing", v); select(null);
    }
    function link(id) { return group.querySelector('a[data-specimen="' + id + '"]'); }
    function handles() {
      while (layer.firstChild) layer.removeChild(layer.firstChild);
      if (!selected) return;
      var b = grab ? grab.box : rectOf(selected), s = shared.toPlate(0, 0).s, hs = 5 * s;
      layer.appendChild(el("rect", { x: b.x, y: b.y, width: b.w, height: b.h, "class": "edit-selected", "vector-effect": "non-scaling-stroke" }));
      [["nw", b.x, b.y], ["ne", b.x + b.w, b.y], ["sw", b.x, b.y + b.h], ["se", b.x + b.w, b.y + b.h],
       ["n", b.x + b.w / 2, b.y], ["s", b.x + b.w / 2, b.y + b.h], ["w", b.x, b.y + b.h / 2], ["e", b.x + b.w, b.y + b.h / 2]]
        .forEach(function (h) {
          layer.appendChild(el("rect", { x: h[1] - hs, y: h[2] - hs, width: 2 * hs, height: 2 * hs, "class": "edit-handle", "data-handle": h[0] }));
        });
    }
    function select(a) {
      if (selected) selected.classList.remove("selected");
      selected = a; if (a) a.classList.add("selected");
      handles();
    }
    function status(text) { say.textContent = text; }
    function post(url, body, remember) {
      if (busy) return Promise.resolve(null);
      busy = true; body.csrf = csrf; status("saving…");
      return fetch(url, { method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json", Accept: "application/json" }, body: JSON.stringify(body) })
        .then(function (r) { return r.json().then(function (j) { return { ok: r.ok, j: j }; }); })
        .then(function (res) {
          busy = false;
          if (!res.ok) { status("refused: " + (res.j.detail || "error")); return null; }
          apply(res.j);
          if (remember) undoStack.push(res.j.event_id);
          status(res.j.action + " saved (" + res.j.seconds + " s)" + (undoStack.length ? " · z to undo" : ""));
          return res.j;
        }, function () { busy = false; status("not saved: the server did not answer"); return null; });
    }
    function apply(j) {
      j.hidden.forEach(function (id) { var a = link(id); if (a) { if (a === selected) select(null); a.remove(); } });
      j.shown.forEach(function (b) {
        var a = link(b.id);
        if (!a) {
          a = el("a", { href: "/specimens/" + b.id, "class": "box-link box-drawn", "data-specimen": b.id });
          a.appendChild(el("rect", { "class": "box drawn", "vector-effect": "non-scaling-stroke" }));
          group.appendChild(a);
        }
        var r = a.querySelector("rect");
        r.setAttribute("x", b.box[0]); r.setAttribute("y", b.box[1]); r.setAttribute("width", b.box[2]); r.setAttribute("height", b.box[3]);
      });
      handles();
    }
    function clamp(b) {
      var W = +svg.getAttribute("data-w"), H = +svg.getAttribute("data-h");
      var x0 = Math.max(0, Math.round(Math.min(b.x, b.x + b.w))), y0 = Math.max(0, Math.round(Math.min(b.y, b.y + b.h)));
      var x1 = Math.min(W, Math.round(Math.max(b.x, b.x + b.w))), y1 = Math.min(H, Math.round(Math.max(b.y, b.y + b.h)));
      return [x0, y0, x1 - x0, y1 - y0];
    }
    toggle.addEventListener("click", function () { setMode(!on); });
    // in edit mode a click on a box selects it (one delegated listener for every box)
    svg.addEventListener("click", function (e) {
      if (!on) return;
      e.preventDefault();
      var a = e.target.closest && e.target.closest("a.box-link");
      if (a) select(a);
    }, true);
    svg.addEventListener("pointerdown", function (e) {
      if (!on || e.button !== 0) return;
      var p = shared.toPlate(e.clientX, e.clientY);
      var h = e.target.getAttribute && e.target.getAttribute("data-handle");
      if (drawing) grab = { kind: "new", x0: p.x, y0: p.y, box: { x: p.x, y: p.y, w: 0, h: 0 } };
      else if (h && selected) grab = { kind: h, start: rectOf(selected), box: rectOf(selected) };
      else return;
      shared.grabbed = true; e.preventDefault(); e.stopPropagation();
    }, true);
    window.addEventListener("pointermove", function (e) {
      if (!grab) return;
      var p = shared.toPlate(e.clientX, e.clientY), b = grab.box;
      if (grab.kind === "new") { b.x = grab.x0; b.y = grab.y0; b.w = p.x - grab.x0; b.h = p.y - grab.y0; }
      else {
        var s = grab.start, x1 = s.x + s.w, y1 = s.y + s.h, k = grab.kind;
        b.x = k.indexOf("w") >= 0 ? p.x : s.x; b.y = k.indexOf("n") >= 0 ? p.y : s.y;
        b.w = (k.indexOf("e") >= 0 ? p.x : x1) - b.x; b.h = (k.indexOf("s") >= 0 ? p.y : y1) - b.y;
      }
      if (grab.kind === "new") {
        while (layer.firstChild) layer.removeChild(layer.firstChild);
        var c = clamp(b);
        layer.appendChild(el("rect", { x: c[0], y: c[1], width: c[2], height: c[3], "class": "edit-selected", "vector-effect": "non-scaling-stroke" }));
      } else handles();
    });
    window.addEventListener("pointerup", function () {
      if (!grab) return;
      var g = grab, box = clamp(g.box);
      grab = null; shared.grabbed = false;
      setTimeout(function () { shared.grabbed = false; }, 0);
      if (box[2] < 2 || box[3] < 2) { status("too small: drag a larger box"); handles(); return; }
      if (g.kind === "new") {
        drawing = false; svg.classList.remove("drawing");
        post("/images/" + imageId + "/boxes", { box: box }, true).then(function (j) {
          if (j) select(link(j.shown[0].id));
        });
      } else {
        post("/specimens/" + selected.getAttribute("data-specimen") + "/box", { box: box }, true);
      }
    });
    document.addEventListener("keydown", function (e) {
      if (typing(e) || e.altKey) return;
      var k = e.key;
      if ((e.ctrlKey || e.metaKey) && k !== "z") return;
      if (k === "e" && !e.ctrlKey) { setMode(!on); return; }
      if (!on) return;
      if (k === "Escape") { drawing = false; grab = null; shared.grabbed = false; svg.classList.remove("drawing"); select(null); status(""); }
      else if (k === "n") { drawing = true; svg.classList.add("drawing"); select(null); status("drag to draw the new box"); }
      else if ((k === "x" || k === "Delete" || k === "Backspace") && selected) {
        e.preventDefault();
        post("/specimens/" + selected.getAttribute("data-specimen") + "/box/delete", {}, true);
      }
      else if (k === "s" && selected) {
        var b = rectOf(selected), parts;
        if (b.w >= b.h) { var w1 = Math.round(b.w / 2); parts = [[b.x, b.y, w1, b.h], [b.x + w1, b.y, b.w - w1, b.h]]; }
        else { var h1 = Math.round(b.h / 2); parts = [[b.x, b.y, b.w, h1], [b.x, b.y + h1, b.w, b.h - h1]]; }
        post("/specimens/" + selected.getAttribute("data-specimen") + "/box/split", { boxes: parts }, true);
      }
      else if (k === "z") {
        e.preventDefault();
        var id = undoStack.pop();
        if (id === undefined) { status("nothing to undo"); return; }
        post("/box-events/" + id + "/undo", {}, false).then(function (j) { if (!j) undoStack.push(id); });
      }
    });
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
    plateEdit();
    gallery();
    tileSize();
    undoKey();
    specimen();
  });
})();
