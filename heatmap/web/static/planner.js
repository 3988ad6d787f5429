/* The planner map: density layer (PNG or MVT), time slider with play/pause over the closed
   windows and, at its right end, "Now" (the latest release), live refresh (release events over
   Server-Sent Events, a poll besides), popup on click, city totals, top places, open crowd
   warnings on the map and in a list, export of the view and of the whole city (planners),
   place search; the map stays on the city (max bounds, min zoom).
   Every URL comes from the server (cfg); tile templates come from its TileJSON. A release and a
   closed window never change, so every request names one (?release= or ?window=) and its
   answer can be cached for good; only the poll of /api/v1/windows asks for the latest. */
(function () {
  "use strict";
  const H = window.HeatmapCommon;

  window.HeatmapPlanner = function (map, cfg) {
    const t = cfg.strings;
    const lang = cfg.lang;
    const $ = (id) => document.getElementById(id);
    const fmtTime = H.timeFormat(lang, cfg.tz, true);
    const fmtClock = H.timeFormat(lang, cfg.tz, false);
    const S = {
      fmt: "png",
      tj: {}, // TileJSON per format
      layer: null,
      layerUrl: "",
      bands: {},
      windows: [], // closed windows, oldest first: {start, end, complete, kind, as_of, horizon_s}
      release: null, // the latest release ("Now"), or null before the first one
      items: [], // the slider's stops: the closed windows, then the release
      index: -1,
      follow: true, // showing "Now", and moving to each new release
      stats: null,
      play: null,
      alerts: [], // the alerts this page may see (/api/v1/alerts), open ones first
    };

    map.createPane("density");
    map.getPane("density").style.zIndex = 350; // above a basemap, below popups
    map.getPane("density").style.pointerEvents = "none"; // clicks go to the map (popup)

    // The city outline, for orientation when there is no basemap.
    map.createPane("outline").style.zIndex = 360;
    map.getPane("outline").style.pointerEvents = "none";
    H.getJSON(cfg.outline).then((geo) => L.geoJSON(geo, {
      pane: "outline", interactive: false,
      style: { color: "#4a4a4a", weight: 1.2, opacity: 0.7, fill: false },
    }).addTo(map), () => {});

    const current = () => S.items[S.index] || null;
    const last = () => S.items.length - 1;
    const resAtZoom = () => cfg.zoomToRes[Math.round(map.getZoom())];
    const colour = (band) => (S.bands[band] ? S.bands[band].color : "#888");

    function status(text) {
      $("status").textContent = text || "";
    }

    // -- density layer ------------------------------------------------------------------------
    function template() {
      const tj = S.tj[S.fmt];
      if (S.fmt === "png" && window.devicePixelRatio > 1 && tj.tiles_2x) return tj.tiles_2x[0];
      return tj.tiles[0];
    }

    function tileUrl() {
      return H.withQuery(template(), H.refOf(current()));
    }

    function makeLayer(url) {
      const tj = S.tj[S.fmt];
      const b = tj.bounds;
      const opts = {
        pane: "density",
        minZoom: tj.minzoom,
        maxZoom: cfg.maxZoom,
        bounds: L.latLngBounds([b[1], b[0]], [b[3], b[2]]),
        attribution: tj.attribution,
      };
      if (S.fmt === "png") return L.tileLayer(url, Object.assign(opts, { maxNativeZoom: tj.maxzoom }));
      return L.vectorGrid.protobuf(url, Object.assign(opts, {
        rendererFactory: L.canvas.tile,
        interactive: false,
        fetchOptions: { credentials: "omit" },
        vectorTileLayerStyles: {
          density: (p) => ({
            fill: true, fillColor: colour(p.band), fillOpacity: cfg.fillOpacity,
            stroke: true, color: "#ffffff", weight: 0.5, opacity: 0.4,
          }),
        },
      }));
    }

    /* Show the tiles of the selected window or release; the old layer stays until the new one
       has loaded, so playing through history or moving to a new release does not flash. */
    function showTiles() {
      if (!S.tj[S.fmt] || !current()) return;
      const url = tileUrl();
      if (url === S.layerUrl && S.layer) return;
      const old = S.layer;
      const layer = makeLayer(url);
      S.layer = layer;
      S.layerUrl = url;
      const drop = () => { if (old && S.layer !== old) map.removeLayer(old); };
      // body[data-tiles] names the format whose tiles are all drawn ("loading" meanwhile).
      document.body.dataset.tiles = "loading";
      layer.once("load", () => {
        drop();
        if (S.layer === layer) document.body.dataset.tiles = S.fmt;
      });
      setTimeout(drop, 5000);
      layer.addTo(map);
    }

    async function setFormat(fmt) {
      S.fmt = fmt;
      if (!S.tj[fmt]) S.tj[fmt] = await H.getJSON(cfg.tilejson[fmt]);
      S.layerUrl = "";
      showTiles();
    }

    // -- closed windows, the latest release and the time slider --------------------------------
    const slider = $("slider");
    const describe = (w) => H.describeWindow(w, t, fmtTime, fmtClock);
    const sameStop = (a, b) => a.kind === b.kind && (a.kind === "release" || a.start === b.start);

    /* Merge a page of /api/v1/windows (closed windows, newest first, and latest_release).
       Returns true when the slider's stops changed: a window closed or a new release was made. */
    function mergeWindows(page) {
      const shown = current();
      const byStart = new Map(S.windows.map((w) => [w.start, w]));
      for (const w of page.windows) byStart.set(w.start, w);
      const all = [...byStart.values()].sort((a, b) => (a.start < b.start ? -1 : 1));
      const release = page.latest_release || S.release;
      const changed = all.length !== S.windows.length ||
        (release ? release.as_of : null) !== (S.release ? S.release.as_of : null);
      S.windows = all.slice(-cfg.maxWindows);
      S.release = release;
      S.items = release ? [...S.windows, release] : S.windows;
      slider.max = String(Math.max(last(), 0));
      if (S.follow || !shown) S.index = last();
      else S.index = Math.max(0, S.items.findIndex((w) => sameStop(w, shown)));
      return changed;
    }

    function showWindowLabel() {
      const w = current();
      if (!w) {
        $("window-label").textContent = t.no_data;
        return;
      }
      const text = describe(w);
      $("window-label").textContent = text;
      $("window-label").dataset.kind = w.kind;
      slider.setAttribute("aria-valuetext", text);
      slider.value = String(S.index);
      $("live").disabled = S.follow;
    }

    let panelTimer = null;
    function select(i) {
      S.index = Math.max(0, Math.min(i, last()));
      S.follow = S.index === last();
      showWindowLabel();
      showTiles();
      updateExport();
      clearTimeout(panelTimer);
      panelTimer = setTimeout(loadPanel, 300);
    }

    slider.addEventListener("input", () => select(Number(slider.value)));
    $("live").addEventListener("click", () => select(last()));

    function setPlaying(on) {
      const btn = $("play");
      clearInterval(S.play);
      S.play = on ? setInterval(() => select((S.index + 1) % S.items.length), cfg.playMs) : null;
      btn.setAttribute("aria-pressed", String(on));
      btn.querySelector(".icon").textContent = on ? "⏸" : "▶";
      btn.querySelector(".text").textContent = on ? t.pause : t.play;
    }
    $("play").addEventListener("click", () => setPlaying(!S.play));

    // -- live refresh: a new release (every HEATMAP_RELEASE_S), newly closed windows ----------------
    async function poll() {
      try {
        const page = await H.getJSON(cfg.api.windows, { limit: 3 }, true);
        const before = S.release ? S.release.as_of : null;
        const changed = mergeWindows(page);
        if (S.follow && changed) select(last());
        else showWindowLabel();
        if ((S.release ? S.release.as_of : null) !== before) alertsSoon(); // evaluated per release
        status("");
      } catch (err) {
        status(t.error + ": " + err.message);
      }
    }

    // -- crowd warnings: the open alerts, on the map and in the panel ---------------------------
    const alertsUrl = H.apiUrl(cfg.api, "alerts");
    map.createPane("alerts").style.zIndex = 380; // above the density and the outline
    const alertLayer = L.layerGroup().addTo(map);

    function goToTarget(tgt) {
      if (tgt.lat === undefined || tgt.lat === null) return;
      map.setView([tgt.lat, tgt.lng], Math.max(map.getZoom(), 14));
      if (tgt.kind === "place") openPlacePopup({ id: tgt.place, lat: tgt.lat, lng: tgt.lng });
    }

    function showAlerts() {
      const open = S.alerts.filter((a) => a.state === "open");
      const ol = $("alerts");
      ol.replaceChildren();
      $("alerts-none").hidden = open.length > 0;
      const byTarget = new Map(); // one spot per place or area, with every rule that holds
      for (const a of open) {
        const w = H.alertWords(a, lang);
        const o = a.opened || {};
        const meta = [w.says];
        if (o.people !== null && o.people !== undefined) meta.push(H.num(lang, o.people) + " " + t.people_unit);
        if (o.release) meta.push(t.alert_since.replace("{time}", fmtClock(o.release)));
        const tgt = a.target || {};
        ol.append(H.el("li", { "data-alert": a.id, "data-target": tgt.place || "" },
          H.el("button", { type: "button", class: "place alert", onclick: () => goToTarget(tgt) },
            H.el("span", { class: "icon", "aria-hidden": "true", text: "⚠" }),
            H.el("span", { class: "name", text: w.name }),
            H.el("span", { class: "meta", text: meta.join(" · ") }))));
        if (tgt.lat === undefined || tgt.lat === null) continue;
        const key = tgt.place || JSON.stringify(tgt.polygon);
        if (!byTarget.has(key)) byTarget.set(key, { tgt: tgt, name: w.name, says: [] });
        byTarget.get(key).says.push(w.says);
      }
      S.alertSpots = [...byTarget.values()];
      drawAlertSpots();
      document.body.dataset.alerts = String(open.length);
    }

    /* The warnings on the map: spots closer than FLAG_GAP px on screen share one flag (with
       their count), set on a stem above the northernmost of them, so a flag never covers the
       crowding it warns about; redrawn at every zoom. */
    const FLAG_GAP = 100;
    function drawAlertSpots() {
      alertLayer.clearLayers();
      const spots = (S.alertSpots || []).map((s) => ({ s: s, p: map.latLngToLayerPoint([s.tgt.lat, s.tgt.lng]) }));
      const group = spots.map((_, i) => i);
      const root = (i) => (group[i] === i ? i : (group[i] = root(group[i])));
      for (let i = 0; i < spots.length; i++) {
        for (let j = i + 1; j < spots.length; j++) {
          if (spots[i].p.distanceTo(spots[j].p) < FLAG_GAP) group[root(i)] = root(j);
        }
      }
      const groups = new Map();
      spots.forEach((x, i) => {
        const g = root(i);
        if (!groups.has(g)) groups.set(g, []);
        groups.get(g).push(x);
      });
      for (const members of groups.values()) {
        for (const { s } of members) {
          if (s.tgt.kind === "polygon" && s.tgt.polygon) {
            L.geoJSON(s.tgt.polygon, { pane: "alerts", interactive: false,
              style: { color: "#9b1c1c", weight: 3, fill: false, dashArray: "6 4" } }).addTo(alertLayer);
          }
        }
        const top = members.reduce((a, b) => (b.p.y < a.p.y ? b : a));
        const label = t.warning + " · " +
          members.map(({ s }) => s.name + t.colon + s.says.join(" · ")).join("; ");
        const count = members.length > 1 ? " " + members.length : "";
        const go = () => {
          if (members.length === 1) goToTarget(top.s.tgt);
          else map.fitBounds(L.latLngBounds(members.map(({ s }) => [s.tgt.lat, s.tgt.lng])).pad(0.5));
        };
        L.marker([top.s.tgt.lat, top.s.tgt.lng], {
          pane: "alerts", keyboard: true, title: label, alt: label,
          icon: L.divIcon({ className: "alert-marker", html: '<span class="badge">⚠' + count + "</span>",
            iconSize: [24, 50], iconAnchor: [12, 50] }),
        }).bindTooltip(label).on("click", go).addTo(alertLayer);
      }
    }
    map.on("zoomend", drawAlertSpots);

    /* The planner token (typed in the export section) shows every alert; without it, or with a
       wrong one, the public's. */
    async function loadAlerts() {
      const token = $("token").value.trim();
      try {
        let answer;
        try {
          answer = await H.getAlerts(alertsUrl, token);
        } catch (err) {
          if (!token) throw err;
          answer = await H.getAlerts(alertsUrl, "");
        }
        S.alerts = answer.alerts || [];
        showAlerts();
      } catch (err) {
        /* keep the list shown: the next release or poll tries again */
      }
    }

    let alertsTimer = null;
    function alertsSoon() {
      if (alertsTimer === null) alertsTimer = H.spread(() => { alertsTimer = null; loadAlerts(); });
    }
    $("token").addEventListener("change", loadAlerts);

    /* A release event: show the new release (its tiles loaded before the old ones leave), the
       panel and the warnings, a moment later (H.spread); then the closed windows (poll). */
    function onRelease(ev) {
      H.spread(() => {
        const changed = mergeWindows({ windows: [], latest_release: ev.window });
        if (S.follow && changed) select(last());
        else showWindowLabel();
        loadAlerts();
        poll();
      });
    }

    // -- side panel: city totals and top places -------------------------------------------------
    function showTotals() {
      const dl = $("totals");
      const st = S.stats;
      dl.replaceChildren();
      if (!st) return;
      const res = resAtZoom();
      const row = st.by_res.find((r) => r.res === res) || st.by_res[0];
      dl.append(H.el("dt", { text: t.people_seen }), H.el("dd", { text: H.num(lang, st.people) }));
      dl.append(H.el("dt", { text: t.cells_by_band + " (H3 res " + row.res + ")" }));
      for (const b of Object.values(S.bands)) {
        dl.append(H.el("dd", { class: "band-row" }, H.swatch(b.color),
          H.el("span", { text: (lang === "en" ? b.label.en : b.label.zh) + ": " }),
          H.el("span", { text: H.num(lang, row.cells_by_band[b.band] || 0) })));
      }
    }

    function showPlaces(answer) {
      const ol = $("places");
      ol.replaceChildren();
      const top = answer.places.filter((p) => p.people !== null).slice(0, cfg.topPlaces);
      for (const p of top) {
        const name = lang === "en" ? p.name.en : p.name.zh;
        const btn = H.el("button", {
          type: "button", class: "place",
          onclick: () => {
            map.setView([p.lat, p.lng], Math.max(map.getZoom(), 14));
            openPlacePopup(p);
          },
        }, H.swatch(colour(p.band)),
        H.el("span", { class: "name", text: name }),
        H.el("span", { class: "meta", text: H.label(p.label, lang) + " · " + H.num(lang, p.people) + " " + t.people_unit }));
        ol.append(H.el("li", {}, btn));
      }
    }

    async function loadPanel() {
      const w = current();
      if (!w) return;
      try {
        const [stats, places] = await Promise.all([
          H.getJSON(cfg.api.stats, H.refOf(w)),
          H.getJSON(cfg.api.places, H.refOf(w)),
        ]);
        if (current() !== w) return; // the slider moved on meanwhile
        S.stats = stats;
        showTotals();
        showPlaces(places);
      } catch (err) {
        status(t.error + ": " + err.message);
      }
    }

    // -- popup of a hexagon -------------------------------------------------------------------------
    function popupContent(d) {
      const band = d.band ? S.bands[d.band] : null;
      const trend = d.trend || {};
      const change = trend.change === null || trend.change === undefined ? "" :
        " (" + (trend.change > 0 ? "+" : "") + H.num(lang, trend.change) + ")";
      const rows = [
        [t.band, H.el("span", {}, band ? H.swatch(band.color) : null, H.label(d.label, lang))],
        [t.people, d.suppressed ? "–" : H.num(lang, d.people)],
        [t.density, d.suppressed ? "–" : H.num(lang, d.density_km2) + " " + t.per_km2],
        [t.time, describeLong(d.window)],
        [t.trend, H.trendText(trend, t) + change],
        [t.cell, d.cell + " (res " + d.res + ")"],
      ];
      // A withheld hexagon is drawn with its published parent's values: say so.
      if (d.note) rows.push(["", H.el("span", { class: "note", text: lang === "en" ? d.note.en : d.note.zh })]);
      const dl = H.el("dl", { class: "popup", "data-cell": d.cell, "data-people": d.people });
      for (const [k, v] of rows) dl.append(H.el("dt", { text: k }), H.el("dd", {}, v));
      return dl;
    }

    /* A window object's words with, for a release, the span it counts (its horizon). */
    function describeLong(w) {
      if (w.kind !== "release") return describe(w);
      return describe(w) + " (" + t.last_min.replace("{n}", H.num(lang, w.horizon_s / 60, 1)) + ")";
    }

    /* Open the popup of the hexagon drawn at a point (at ``zoom``: the map may still be
       animating towards it). */
    async function openPopup(latlng, zoom) {
      const w = current();
      const res = cfg.zoomToRes[Math.round(zoom === undefined ? map.getZoom() : zoom)];
      const popup = L.popup({ maxWidth: 320 }).setLatLng(latlng).setContent(t.loading).openOn(map);
      try {
        const d = await H.getJSON(cfg.api.density, Object.assign({
          lat: latlng.lat.toFixed(6), lng: latlng.lng.toFixed(6), res: res,
        }, H.refOf(w)));
        popup.setContent(popupContent(d));
      } catch (err) {
        popup.setContent(t.error + ": " + err.message);
      }
    }

    /* Open the popup of a named place: its own numbers (all its cells), trend, usual level and
       best time today, from /api/v1/places/{id}. */
    async function openPlacePopup(p) {
      const w = current();
      const popup = L.popup({ maxWidth: 320 }).setLatLng([p.lat, p.lng]).setContent(t.loading).openOn(map);
      try {
        const d = await H.getJSON(cfg.api.place + encodeURIComponent(p.id), H.refOf(w));
        const band = d.now.band ? S.bands[d.now.band] : null;
        const best = d.best_time_today;
        const usual = d.usual && d.usual.busier_than_usual;
        const rows = [
          [t.band, H.el("span", {}, band ? H.swatch(band.color) : null, H.label(d.now.label, lang))],
          [t.people, d.now.suppressed ? "–" : H.num(lang, d.now.people)],
          [t.trend, H.trendText(d.trend, t) +
            (usual === null || usual === undefined ? "" : " · " + (usual ? t.vs_usual_busier : t.vs_usual_not))],
          [t.best_time, best ? fmtClock(best.start) + "–" + fmtClock(best.end) + " · " + H.label(best.label, lang) : "–"],
          [t.time, describeLong(d.window)],
        ];
        const dl = H.el("dl", { class: "popup", "data-place": d.id, "data-people": d.now.people });
        for (const [k, v] of rows) dl.append(H.el("dt", { text: k }), H.el("dd", {}, v));
        const names = lang === "en" ? [d.name.en, d.name.zh] : [d.name.zh, d.name.en];
        popup.setContent(H.el("div", {}, H.el("strong", { text: names[0] }),
          H.el("span", { class: "sub", text: " " + names[1] }), dl));
      } catch (err) {
        popup.setContent(t.error + ": " + err.message);
      }
    }

    map.on("click", (e) => openPopup(e.latlng));
    // Keyboard users: Enter on the focused map opens the popup of the hexagon at the centre.
    map.on("keypress", (e) => { if (e.originalEvent.key === "Enter") openPopup(map.getCenter()); });

    // -- export of the current view -----------------------------------------------------------------
    function exportUrl() {
      const b = map.getBounds();
      const clip = (v, lo, hi) => Math.max(lo, Math.min(hi, v)).toFixed(5);
      const bbox = [clip(b.getWest(), -180, 180), clip(b.getSouth(), -85, 85),
        clip(b.getEast(), -180, 180), clip(b.getNorth(), -85, 85)].join(",");
      return H.withQuery(cfg.api.cells, Object.assign({ bbox: bbox, res: resAtZoom() }, H.refOf(current())));
    }

    function updateExport() {
      const url = exportUrl();
      $("export-geojson").href = url;
      $("export-csv").href = url;
    }

    function toCsv(fc) {
      const cols = ["window_start", "window_end", "res", "cell", "people", "density_km2", "band"];
      const lines = [cols.join(",")];
      for (const f of fc.features) {
        const p = f.properties;
        lines.push([fc.window.start, fc.window.end, fc.res, p.cell, p.people, p.density_km2, p.band].join(","));
      }
      return lines.join("\n") + "\n";
    }

    async function download(e, kind) {
      e.preventDefault();
      const msg = $("export-msg");
      msg.textContent = t.loading;
      try {
        const fc = await H.getJSON(e.currentTarget.href);
        // Named by the time the numbers hold for: a release's tick, a closed window's start.
        const at = fc.window.kind === "release" ? fc.window.as_of : fc.window.start;
        const stamp = at.replace(/[:]/g, "").replace(/Z$/, "");
        const body = kind === "csv" ? toCsv(fc) : JSON.stringify(fc);
        const type = kind === "csv" ? "text/csv" : "application/geo+json";
        const a = H.el("a", {
          href: URL.createObjectURL(new Blob([body], { type: type })),
          download: "cells-res" + fc.res + "-" + stamp + "." + kind,
        });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(a.href), 10000);
        msg.textContent = fc.count + " " + t.cell;
      } catch (err) {
        msg.textContent = (err.status === 422 ? t.export_too_big + ". " : t.error + ": ") + err.message;
      }
    }
    $("export-geojson").addEventListener("click", (e) => download(e, "geojson"));
    $("export-csv").addEventListener("click", (e) => download(e, "csv"));

    // -- whole-city exports for planners: any resolution, one release or window -----------------
    /* The planner API needs a bearer token: fetch with it, then hand the file to the browser. The
       token stays in this page (no cookie, no storage). */
    async function exportCity(fmt) {
      const msg = $("city-export-msg");
      const token = $("token").value.trim();
      if (!token) { msg.textContent = t.need_token; $("token").focus(); return; }
      const ref = H.refOf(current());
      const url = fmt === "pmtiles"
        ? H.withQuery(cfg.exports.pmtiles, ref)
        : H.withQuery(cfg.exports.cells + fmt, Object.assign({ res: $("export-res").value }, ref));
      msg.textContent = t.loading;
      try {
        const r = await fetch(url, { credentials: "omit", headers: { Authorization: "Bearer " + token } });
        if (!r.ok) {
          const body = await r.json().catch(() => null);
          throw new Error((body && body.detail) || r.status + " " + r.statusText);
        }
        const name = (/filename="([^"]+)"/.exec(r.headers.get("content-disposition") || "") || [])[1] || "heatmap." + fmt;
        const a = H.el("a", { href: URL.createObjectURL(await r.blob()), download: name });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(a.href), 10000);
        msg.textContent = t.downloaded + ": " + name;
        msg.dataset.file = name;
      } catch (err) {
        msg.textContent = t.error + ": " + err.message;
      }
    }
    document.querySelectorAll("#city-exports button").forEach((b) =>
      b.addEventListener("click", () => exportCity(b.dataset.format)));
    map.on("zoomend", () => { $("export-res").value = String(resAtZoom()); });

    // -- place search (names, aliases, pinyin: the index is in the page) ---------------------------
    const fold = (s) => String(s).toLowerCase().replace(/[\s'’\-_./·()（）]+/g, "");
    const index = cfg.places.map((p) => ({ id: p[0], name: { zh: p[1], en: p[2] }, lat: p[3], lng: p[4], keys: p[5] }));
    function findPlaces(q) {
      const f = fold(q);
      if (!f) return [];
      const rank = (p) => (p.keys.includes(f) ? 0 : p.keys.some((k) => k.startsWith(f)) ? 1 : p.keys.some((k) => k.includes(f)) ? 2 : 3);
      return index.map((p) => [rank(p), p]).filter((x) => x[0] < 3).sort((a, b) => a[0] - b[0]).map((x) => x[1]);
    }
    function goTo(p) {
      $("place-results").replaceChildren();
      $("pq").value = lang === "en" ? p.name.en : p.name.zh;
      map.setView([p.lat, p.lng], Math.max(map.getZoom(), 14));
      openPlacePopup(p);
    }
    $("pq").addEventListener("input", () => {
      const ul = $("place-results");
      ul.replaceChildren(...findPlaces($("pq").value).slice(0, 6).map((p) => H.el("li", {},
        H.el("button", { type: "button", class: "place", "data-place": p.id, onclick: () => goTo(p) },
          H.el("span", { class: "name", text: lang === "en" ? p.name.en : p.name.zh }),
          H.el("span", { class: "meta", text: lang === "en" ? p.name.zh : p.name.en })))));
    });
    $("place-search").addEventListener("submit", (e) => {
      e.preventDefault();
      const found = findPlaces($("pq").value);
      if (found.length) goTo(found[0]);
      else $("place-results").replaceChildren(H.el("li", { class: "note", text: t.no_match }));
    });

    map.on("moveend", updateExport);
    map.on("zoomend", showTotals);

    $("panel-toggle").addEventListener("click", () => {
      const panel = $("panel");
      const hidden = panel.classList.toggle("collapsed");
      $("panel-toggle").setAttribute("aria-expanded", String(!hidden));
    });

    // -- start ------------------------------------------------------------------------------------
    document.querySelectorAll('input[name="format"]').forEach((r) =>
      r.addEventListener("change", () => { if (r.checked) setFormat(r.value); }));

    (async function start() {
      try {
        const legend = await H.getJSON(cfg.api.legend);
        S.bands = H.bandIndex(legend);
        H.renderLegend($("legend"), legend, lang, t);
        $("privacy").textContent = t.privacy.replace("{k}", legend.k_min) +
          (legend.dp_epsilon ? " ε = " + legend.dp_epsilon : "");
        const page = await H.getJSON(cfg.api.windows, { limit: cfg.maxWindows });
        mergeWindows(page);
        S.tj.png = await H.getJSON(cfg.tilejson.png);
        // The city and a margin: panning stops at its edge, zooming out at the whole city.
        const b = S.tj.png.bounds;
        map.setMinZoom(cfg.cityMinZoom);
        map.setMaxBounds(L.latLngBounds([b[1], b[0]], [b[3], b[2]]).pad(0.25));
        map.options.maxBoundsViscosity = 1.0;
        $("export-res").value = String(resAtZoom());
        const checked = document.querySelector('input[name="format"]:checked');
        await setFormat(checked ? checked.value : "png");
        select(last());
        clearTimeout(panelTimer);
        await loadPanel();
        await poll();
        await loadAlerts();
        // Release and alert events as they happen; the poll goes on (a stream a proxy holds
        // back looks open but says nothing).
        H.follow(H.apiUrl(cfg.api, "events"), { release: onRelease, alert: alertsSoon, reset: poll });
        setInterval(poll, cfg.pollMs);
        document.body.dataset.ready = "true";
      } catch (err) {
        status(t.error + ": " + err.message);
      }
    })();
  };
})();
