/* The citizen widget: how crowded a place is now, in words and colour, its trend and the best
   time to go today; place search, "locate me", a small map of the density (PNG tiles). */
(function () {
  "use strict";
  const H = window.HeatmapCommon;
  const fold = (s) => String(s).toLowerCase().replace(/[\s'’\-_./·()（）]+/g, "");

  window.HeatmapWidget = function (map, cfg) {
    const t = cfg.strings;
    const lang = cfg.lang;
    const $ = (id) => document.getElementById(id);
    const fmtClock = H.timeFormat(lang, cfg.tz, false);
    const S = { places: [], bands: {}, tpl: null, layer: null, layerUrl: "", shown: null, marker: null };
    const nameOf = (p) => (lang === "en" ? p.name.en : p.name.zh);
    const otherName = (p) => (lang === "en" ? p.name.zh : p.name.en);

    // The map sits in its slot between the search and the card (folium puts it first).
    $("map-slot").append(map.getContainer());
    map.invalidateSize();

    // -- density tiles of the answer shown: a release by its tick (?release=), which never changes --
    function showTiles(w) {
      const url = H.withQuery(S.tpl, H.refOf(w));
      if (S.layer && url === S.layerUrl) return;
      // A new release: the old layer stays until the new one has loaded (no flash).
      const old = S.layer;
      S.layerUrl = url;
      S.layer = L.tileLayer(url, { pane: "density", maxNativeZoom: cfg.maxZoom, attribution: cfg.attribution });
      const drop = () => { if (old && S.layer !== old) map.removeLayer(old); };
      S.layer.once("load", drop);
      setTimeout(drop, 5000);
      S.layer.addTo(map);
    }

    // -- the card ----------------------------------------------------------------------------------
    function bandLine(label, band) {
      const b = band ? S.bands[band] : null;
      return H.el("p", { class: "now", "data-band": band || "none", style: b ? "border-color:" + b.color : null },
        b ? H.swatch(b.color) : null,
        H.el("strong", { class: "band-label", text: lang === "en" ? label.en : label.zh }),
        H.el("span", { class: "band-other", text: lang === "en" ? label.zh : label.en }));
    }

    function showPlace(d) {
      const card = $("card");
      const usual = d.usual || {};
      const bits = [];
      if (!d.now.suppressed) bits.push("≈ " + H.num(lang, d.now.people) + " " + t.people_unit);
      bits.push(t.trend + ": " + H.trendText(d.trend, t));
      if (usual.busier_than_usual !== null && usual.busier_than_usual !== undefined) {
        bits.push(usual.busier_than_usual ? t.vs_usual_busier : t.vs_usual_not);
      }
      const best = d.best_time_today;
      const bestLine = best
        ? H.el("p", { class: "best", id: "best-time" }, t.best_time + ": ",
          H.el("strong", { text: fmtClock(best.start) + "–" + fmtClock(best.end) }),
          best.band ? H.el("span", {}, " ", H.swatch(S.bands[best.band].color), lang === "en" ? best.label.en : best.label.zh) : null)
        : H.el("p", { class: "best", id: "best-time", text: t.no_best_time });
      const forecast = H.el("ul", { class: "forecast", "aria-label": t.forecast });
      for (const f of d.forecast || []) {
        if (!f.band) continue;
        forecast.append(H.el("li", {}, H.el("span", { class: "at", text: fmtClock(f.at) }),
          H.swatch(S.bands[f.band].color), lang === "en" ? f.label.en : f.label.zh));
      }
      card.replaceChildren(
        H.el("h2", { text: nameOf(d) }, H.el("span", { class: "sub", text: " " + otherName(d) })),
        bandLine(d.now.label, d.now.band),
        H.el("p", { class: "facts", text: bits.join(" · ") }),
        bestLine,
        forecast.childElementCount ? H.el("p", { class: "small", text: t.forecast }) : null,
        forecast.childElementCount ? forecast : null,
        H.el("p", { class: "small updated", text: t.updated + " " + fmtClock(d.window.as_of) }));
      card.dataset.place = d.id;
      showTiles(d.window);
    }

    function showPoint(d, title) {
      $("card").replaceChildren(
        H.el("h2", { text: title }),
        bandLine(d.label, d.band),
        H.el("p", { class: "facts", text: (d.suppressed ? "" : "≈ " + H.num(lang, d.people) + " " + t.people_unit + " · ") + t.trend + ": " + H.trendText(d.trend, t) }),
        H.el("p", { class: "small updated", text: t.updated + " " + fmtClock(d.window.as_of) }));
      delete $("card").dataset.place;
      showTiles(d.window);
    }

    function fail(err) {
      $("card").replaceChildren(H.el("p", { class: "error", text: t.error + (err ? ": " + err.message : "") }));
    }

    async function choosePlace(id, zoom) {
      S.shown = { place: id };
      try {
        const d = await H.getJSON(cfg.api.place + encodeURIComponent(id));
        showPlace(d);
        map.setView([d.lat, d.lng], zoom || Math.max(map.getZoom(), 14));
        mark(d.lat, d.lng);
      } catch (err) { fail(err); }
    }

    async function choosePoint(lat, lng, title) {
      S.shown = { lat: lat, lng: lng, title: title };
      try {
        showPoint(await H.getJSON(cfg.api.density, { lat: lat.toFixed(6), lng: lng.toFixed(6) }), title);
        mark(lat, lng);
      } catch (err) { fail(err); }
    }

    function mark(lat, lng) {
      if (S.marker) S.marker.setLatLng([lat, lng]);
      else S.marker = L.circleMarker([lat, lng], { radius: 7, color: "#111", weight: 2, fillOpacity: 0, interactive: false }).addTo(map);
    }

    // -- search --------------------------------------------------------------------------------------
    function matches(q) {
      const f = fold(q);
      if (!f) return S.places.slice(0, cfg.suggestions);
      // Exact names first, then prefixes, then substrings; busiest first within each.
      const rank = (p) => {
        const keys = [p.id, p.name.zh, p.name.en].map(fold);
        if (keys.includes(f)) return 0;
        if (keys.some((k) => k.startsWith(f))) return 1;
        return keys.some((k) => k.includes(f)) ? 2 : 3;
      };
      return S.places.map((p) => [rank(p), p]).filter((x) => x[0] < 3)
        .sort((a, b) => a[0] - b[0]).map((x) => x[1]);
    }

    function showResults(list, q) {
      const ul = $("results");
      ul.replaceChildren();
      if (q && !list.length) ul.append(H.el("li", { class: "none", text: t.no_match }));
      for (const p of list.slice(0, cfg.suggestions)) {
        const b = p.band ? S.bands[p.band] : null;
        ul.append(H.el("li", {}, H.el("button", {
          type: "button",
          onclick: () => { showResults([], ""); $("q").value = nameOf(p); choosePlace(p.id); },
        }, b ? H.swatch(b.color) : null, H.el("span", { text: nameOf(p) }),
        H.el("span", { class: "small", text: " " + (lang === "en" ? p.label.en : p.label.zh) }))));
      }
    }

    $("q").addEventListener("input", () => showResults(matches($("q").value), $("q").value));
    $("q").addEventListener("focus", () => showResults(matches($("q").value), $("q").value));
    $("search").addEventListener("submit", (e) => {
      e.preventDefault();
      const found = matches($("q").value);
      if (found.length) { showResults([], ""); $("q").value = nameOf(found[0]); choosePlace(found[0].id); }
      else showResults([], $("q").value);
    });

    const locate = $("locate");
    if (!navigator.geolocation) locate.hidden = true;
    locate.addEventListener("click", () => {
      locate.disabled = true;
      locate.textContent = t.locating;
      navigator.geolocation.getCurrentPosition((pos) => {
        locate.disabled = false;
        locate.textContent = t.locate;
        map.setView([pos.coords.latitude, pos.coords.longitude], Math.max(map.getZoom(), 15));
        choosePoint(pos.coords.latitude, pos.coords.longitude, t.near_you);
      }, () => {
        locate.disabled = false;
        locate.textContent = t.locate;
        $("card").replaceChildren(H.el("p", { class: "error", text: t.locate_failed }));
      }, { timeout: 10000, maximumAge: 60000 });
    });

    function refresh() {
      const s = S.shown;
      if (!s) return;
      // The latest release: the card and its tiles move to a new one when it is made.
      if (s.place) {
        H.getJSON(cfg.api.place + encodeURIComponent(s.place), null, true)
          .then(showPlace, () => {});
      } else {
        H.getJSON(cfg.api.density, { lat: s.lat.toFixed(6), lng: s.lng.toFixed(6) }, true)
          .then((d) => showPoint(d, s.title), () => {});
      }
    }

    // -- start ------------------------------------------------------------------------------------------
    map.createPane("density").style.zIndex = 350;
    (async function start() {
      try {
        const [legend, tj, ranking] = await Promise.all([
          H.getJSON(cfg.api.legend), H.getJSON(cfg.tilejson), H.getJSON(cfg.api.places),
        ]);
        S.bands = H.bandIndex(legend);
        H.renderLegend($("legend"), legend, lang, t);
        $("privacy").textContent = t.privacy.replace("{k}", legend.k_min);
        S.tpl = tj.tiles[0];
        cfg.attribution = tj.attribution;
        S.places = ranking.places;
        showTiles(ranking.window);
        const init = cfg.initial;
        if (init.place) await choosePlace(init.place, init.zoom);
        else if (init.lat !== null && init.lng !== null) await choosePoint(init.lat, init.lng, t.here);
        else {
          $("card").replaceChildren(H.el("p", { class: "small", text: t.search_hint }));
          if (init.query) { $("q").value = init.query; showResults(matches(init.query), init.query); }
        }
        setInterval(refresh, cfg.pollMs);
        document.body.dataset.ready = "true";
      } catch (err) { fail(err); }
    })();
  };
})();
