/* The planner map: density layer (PNG or MVT), time slider with play/pause over the stored
   windows, live refresh, popup on click, city totals, top places, export of the view.
   Every URL comes from the server (cfg); tile templates come from its TileJSON. */
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
      windows: [], // oldest first: {start, end, complete}
      index: -1,
      follow: true, // showing the newest window, and moving with it
      liveSig: "", // changes when the newest window's published numbers change
      v: 0, // cache buster of the open window's tiles
      stats: null,
      play: null,
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

    const current = () => S.windows[S.index] || null;
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
      const w = current();
      const open = w && !w.complete;
      return H.withQuery(template(), { window: w ? w.start : null, v: open ? S.v : null });
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

    /* Show the tiles of the selected window; the old layer stays until the new one has loaded,
       so playing through history does not flash. */
    function showTiles() {
      if (!S.tj[S.fmt] || !current()) return;
      const url = tileUrl();
      if (url === S.layerUrl && S.layer) return;
      const old = S.layer;
      const layer = makeLayer(url);
      S.layer = layer;
      S.layerUrl = url;
      const drop = () => { if (old && S.layer !== old) map.removeLayer(old); };
      layer.once("load", drop);
      setTimeout(drop, 5000);
      layer.addTo(map);
    }

    async function setFormat(fmt) {
      S.fmt = fmt;
      if (!S.tj[fmt]) S.tj[fmt] = await H.getJSON(cfg.tilejson[fmt]);
      S.layerUrl = "";
      showTiles();
    }

    // -- windows and the time slider ------------------------------------------------------------
    const slider = $("slider");

    function mergeWindows(list) {
      const shown = current();
      const byStart = new Map(S.windows.map((w) => [w.start, w]));
      for (const w of list) byStart.set(w.start, w);
      const all = [...byStart.values()].sort((a, b) => (a.start < b.start ? -1 : 1));
      const grew = all.length !== S.windows.length;
      S.windows = all.slice(-cfg.maxWindows);
      slider.max = String(Math.max(S.windows.length - 1, 0));
      if (S.follow || !shown) S.index = S.windows.length - 1;
      else S.index = Math.max(0, S.windows.findIndex((w) => w.start === shown.start));
      return grew;
    }

    function showWindowLabel() {
      const w = current();
      if (!w) {
        $("window-label").textContent = t.no_data;
        return;
      }
      const text = fmtTime(w.start) + "–" + fmtClock(w.end) + " · " +
        (w.complete ? t.closed : t.partial) + (S.follow ? " · " + t.live : "");
      $("window-label").textContent = text;
      slider.setAttribute("aria-valuetext", text);
      slider.value = String(S.index);
      $("live").disabled = S.follow;
    }

    let panelTimer = null;
    function select(i) {
      S.index = Math.max(0, Math.min(i, S.windows.length - 1));
      S.follow = S.index === S.windows.length - 1;
      showWindowLabel();
      showTiles();
      updateExport();
      clearTimeout(panelTimer);
      panelTimer = setTimeout(loadPanel, 300);
    }

    slider.addEventListener("input", () => select(Number(slider.value)));
    $("live").addEventListener("click", () => select(S.windows.length - 1));

    function setPlaying(on) {
      const btn = $("play");
      clearInterval(S.play);
      S.play = on ? setInterval(() => select((S.index + 1) % S.windows.length), cfg.playMs) : null;
      btn.setAttribute("aria-pressed", String(on));
      btn.querySelector(".icon").textContent = on ? "⏸" : "▶";
      btn.querySelector(".text").textContent = on ? t.pause : t.play;
    }
    $("play").addEventListener("click", () => setPlaying(!S.play));

    // -- live refresh: new windows, and new numbers in the open one ----------------------------
    async function poll() {
      try {
        const page = await H.getJSON(cfg.api.windows, { limit: 3 }, true);
        const grew = mergeWindows(page.windows);
        const stats = await H.getJSON(cfg.api.stats, null, true);
        const sig = [stats.window.start, stats.people, stats.published_cells].join("|");
        const changed = S.liveSig && sig !== S.liveSig;
        S.liveSig = sig;
        if (changed) S.v += 1;
        if (S.follow && (grew || changed)) select(S.windows.length - 1);
        else showWindowLabel();
        status("");
      } catch (err) {
        status(t.error + ": " + err.message);
      }
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
          H.getJSON(cfg.api.stats, { window: w.start }),
          H.getJSON(cfg.api.places, { window: w.start }),
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
        [t.window, fmtTime(d.window.start) + "–" + fmtClock(d.window.end) + " · " +
          (d.window.complete ? t.closed : t.partial)],
        [t.trend, H.trendText(trend, t) + change],
        [t.cell, d.cell + " (res " + d.res + ")"],
      ];
      const dl = H.el("dl", { class: "popup", "data-cell": d.cell, "data-people": d.people });
      for (const [k, v] of rows) dl.append(H.el("dt", { text: k }), H.el("dd", {}, v));
      return dl;
    }

    /* Open the popup of the hexagon drawn at a point (at ``zoom``: the map may still be
       animating towards it). */
    async function openPopup(latlng, zoom) {
      const w = current();
      const res = cfg.zoomToRes[Math.round(zoom === undefined ? map.getZoom() : zoom)];
      const popup = L.popup({ maxWidth: 320 }).setLatLng(latlng).setContent(t.loading).openOn(map);
      try {
        const d = await H.getJSON(cfg.api.density, {
          lat: latlng.lat.toFixed(6), lng: latlng.lng.toFixed(6), res: res,
          window: w ? w.start : null,
        });
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
        const d = await H.getJSON(cfg.api.place + encodeURIComponent(p.id), { window: w ? w.start : null });
        const band = d.now.band ? S.bands[d.now.band] : null;
        const best = d.best_time_today;
        const usual = d.usual && d.usual.busier_than_usual;
        const rows = [
          [t.band, H.el("span", {}, band ? H.swatch(band.color) : null, H.label(d.now.label, lang))],
          [t.people, d.now.suppressed ? "–" : H.num(lang, d.now.people)],
          [t.trend, H.trendText(d.trend, t) +
            (usual === null || usual === undefined ? "" : " · " + (usual ? t.vs_usual_busier : t.vs_usual_not))],
          [t.best_time, best ? fmtClock(best.start) + "–" + fmtClock(best.end) + " · " + H.label(best.label, lang) : "–"],
          [t.window, fmtTime(d.window.start) + "–" + fmtClock(d.window.end)],
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
      const w = current();
      return H.withQuery(cfg.api.cells, { bbox: bbox, res: resAtZoom(), window: w ? w.start : null });
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
        const stamp = fc.window.start.replace(/[:]/g, "").replace(/Z$/, "");
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
        mergeWindows(page.windows);
        S.tj.png = await H.getJSON(cfg.tilejson.png);
        const checked = document.querySelector('input[name="format"]:checked');
        await setFormat(checked ? checked.value : "png");
        select(S.windows.length - 1);
        clearTimeout(panelTimer);
        await loadPanel();
        await poll();
        setInterval(poll, cfg.pollMs);
        document.body.dataset.ready = "true";
      } catch (err) {
        status(t.error + ": " + err.message);
      }
    })();
  };
})();
