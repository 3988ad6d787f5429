/* The citizen widget: the key areas with their crowding on the first screen, a place's crowding
   in words and colour with its trend, popular times, forecast and best time to go; search by
   name, alias or pinyin; "locate me"; a small map of the density (PNG tiles); a warning on a
   place with an open crowd alert; new releases followed as they are made (Server-Sent Events,
   a poll besides); the page's height posted to an embedding parent. */
(function () {
  "use strict";
  const H = window.HeatmapCommon;
  const fold = (s) => String(s).toLowerCase().replace(/[\s'’\-_./·()（）]+/g, "");

  window.HeatmapWidget = function (map, cfg) {
    const t = cfg.strings;
    const lang = cfg.lang;
    const $ = (id) => document.getElementById(id);
    const fmtClock = H.timeFormat(lang, cfg.tz, false);
    const S = {
      ranking: {}, // place id -> its /api/v1/places item (band, people, trend, quieter_at)
      order: [], // ids, busiest first
      bands: {}, tpl: null, layer: null, layerUrl: "", shown: null, marker: null,
      sort: "busiest", here: null,
      alerts: {}, // place id -> its open alerts (/api/v1/alerts: the key places' warnings)
    };
    // The search index is in the page (names, aliases, pinyin): search works before any request.
    const index = cfg.places.map((p) => ({ id: p[0], name: { zh: p[1], en: p[2] }, lat: p[3], lng: p[4], keys: p[5] }));
    const byId = new Map(index.map((p) => [p.id, p]));
    const nameOf = (p) => (lang === "en" ? p.name.en : p.name.zh);
    const otherName = (p) => (lang === "en" ? p.name.zh : p.name.en);
    const words = (label) => (label ? (lang === "en" ? label.en : label.zh) : "");

    // The map sits in its slot below the card and the key areas (folium puts it first).
    $("map-slot").append(map.getContainer());
    map.invalidateSize();
    // Leaflet's credit as words: a link there would be a tap target far under 44 px.
    if (map.attributionControl) map.attributionControl.setPrefix("Leaflet");

    // -- density tiles of the answer shown: a release by its tick (?release=), which never changes --
    function showTiles(w) {
      const url = H.withQuery(S.tpl, H.refOf(w));
      if (S.layer && url === S.layerUrl) return;
      const old = S.layer; // stays until the new release's tiles have loaded (no flash)
      S.layerUrl = url;
      S.layer = L.tileLayer(url, { pane: "density", maxNativeZoom: cfg.maxZoom, attribution: cfg.attribution });
      const drop = () => { if (old && S.layer !== old) map.removeLayer(old); };
      S.layer.once("load", drop);
      setTimeout(drop, 5000);
      S.layer.addTo(map);
    }

    // -- the place card --------------------------------------------------------------------------
    function bandLine(label, band) {
      const b = band ? S.bands[band] : null;
      return H.el("p", { class: "now", "data-band": band || "none", style: b ? "border-color:" + b.color : null },
        b ? H.swatch(b.color) : null,
        H.el("strong", { class: "band-label", text: lang === "en" ? label.en : label.zh }),
        H.el("span", { class: "band-other", text: lang === "en" ? label.zh : label.en }));
    }

    /* Popular times: the usual level of each hour of the day, coloured by band, now outlined. */
    function chart(today) {
      const known = today.filter((h) => h.usual !== null);
      if (!known.length) return H.el("p", { class: "small", id: "popular", text: t.popular_times + ": " + t.no_usual });
      const top = Math.max(...known.map((h) => h.usual), 1);
      const ol = H.el("ol", { class: "chart", id: "popular", "aria-label": t.popular_times });
      for (const h of today) {
        const b = h.band ? S.bands[h.band] : null;
        const label = t.usual_at.replace("{hour}", String(h.hour).padStart(2, "0"))
          .replace("{label}", b ? words(b.label) : t.no_usual);
        const pct = h.usual === null ? 0 : Math.max(4, Math.round((100 * h.usual) / top));
        ol.append(H.el("li", { class: h.current ? "current" : null, title: label, "data-hour": h.hour, "data-band": h.band || "none" },
          H.el("span", { class: "bar-fill", style: "height:" + pct + "%" + (b ? ";background:" + b.color : "") }),
          H.el("span", { class: "sr-only", text: label + (h.current ? " (" + t.now_marker + ")" : "") })));
      }
      return H.el("div", {}, H.el("p", { class: "chart-title", text: t.popular_times }), ol,
        H.el("p", { class: "chart-axis", "aria-hidden": "true" },
          ...["00", "06", "12", "18", "24"].map((x) => H.el("span", { text: x }))));
    }

    /* The warning of a place with open alerts: what each rule says, in words (never a colour
       alone). None when the place has no open alert. */
    function warningEl(id) {
      const open = S.alerts[id] || [];
      if (!open.length) return null;
      // What holds now before what is expected.
      const later = (a) => (a.watch && a.watch.rule && a.watch.rule.kind === "forecast" ? 1 : 0);
      const says = open.slice().sort((a, b) => later(a) - later(b))
        .map((a) => H.alertWords(a, lang).says).filter(Boolean);
      return H.el("p", { class: "warning", id: "warning", role: "alert" },
        H.el("span", { class: "icon", "aria-hidden": "true", text: "⚠ " }),
        H.el("strong", { text: t.warning }),
        says.length ? H.el("span", { text: t.colon + says.join(" · ") }) : null);
    }

    /* Put the card's warning in step with the alerts (added, changed or cleared in place). */
    function showWarning() {
      const card = $("card");
      const old = $("warning");
      const el = card.dataset.place ? warningEl(card.dataset.place) : null;
      if (old && el) old.replaceWith(el);
      else if (old) old.remove();
      else if (el) {
        const now = card.querySelector(".now");
        if (now) now.after(el);
      }
      card.dataset.warning = el ? "open" : "none";
    }

    async function loadAlerts() {
      try {
        const answer = await H.getAlerts(H.apiUrl(cfg.api, "alerts"), "");
        const by = {};
        for (const a of answer.alerts || []) {
          const id = a.state === "open" && a.target ? a.target.place : null;
          if (id) (by[id] = by[id] || []).push(a);
        }
        S.alerts = by;
        showWarning();
        if (S.order.length) showAreas(); // once the ranking is in
      } catch (err) {
        /* keep what is shown: the next release or poll tries again */
      }
    }

    function showPlace(d) {
      const card = $("card");
      const usual = d.usual || {};
      const bits = [];
      if (!d.now.suppressed && d.now.people !== null) bits.push("≈ " + H.num(lang, d.now.people) + " " + t.people_unit);
      bits.push(t.trend + ": " + H.trendText(d.trend, t));
      if (usual.busier_than_usual !== null && usual.busier_than_usual !== undefined) {
        bits.push(usual.busier_than_usual ? t.vs_usual_busier : t.vs_usual_not);
      }
      const best = d.best_time_today;
      const bestLine = best
        ? H.el("p", { class: "best", id: "best-time" }, t.best_time + ": ",
          H.el("strong", { text: fmtClock(best.start) + "–" + fmtClock(best.end) }),
          best.band ? H.el("span", {}, " ", H.swatch(S.bands[best.band].color), words(best.label)) : null)
        : H.el("p", { class: "best", id: "best-time", text: t.no_best_time });
      const forecast = H.el("ul", { class: "forecast", id: "forecast", "aria-label": t.forecast });
      for (const f of d.forecast || []) {
        if (!f.band) continue;
        forecast.append(H.el("li", {}, H.el("span", { class: "at", text: fmtClock(f.at) }),
          H.swatch(S.bands[f.band].color), words(f.label)));
      }
      const levels = (d.now.levels || []).filter((r) => r !== d.res);
      // Only elements go in (replaceChildren would print a null as the text "null").
      const parts = [
        H.el("h2", { text: nameOf(d) }, H.el("span", { class: "sub", text: " " + otherName(d) })),
        bandLine(d.now.label, d.now.band),
        warningEl(d.id),
        H.el("p", { class: "facts", text: bits.join(" · ") }),
        levels.length ? H.el("p", { class: "small levels", text: t.levels.replace("{res}", levels.join(", ")) }) : null,
        bestLine,
        H.el("p", { class: "chart-title", text: t.forecast }),
        forecast.childElementCount ? forecast : H.el("p", { class: "small", id: "forecast", text: t.no_forecast }),
        chart(d.today || []),
        H.el("p", { class: "small updated", text: t.updated + " " + fmtClock(d.window.as_of) }),
      ];
      card.replaceChildren(...parts.filter((x) => x !== null));
      card.hidden = false;
      card.dataset.place = d.id;
      card.dataset.warning = S.alerts[d.id] ? "open" : "none";
      showTiles(d.window);
    }

    function showPoint(d, title) {
      const facts = (d.people === null ? "" : "≈ " + H.num(lang, d.people) + " " + t.people_unit + " · ") +
        t.trend + ": " + H.trendText(d.trend, t);
      const card = $("card");
      card.replaceChildren(...[
        H.el("h2", { text: title }),
        bandLine(d.label, d.band),
        H.el("p", { class: "facts", text: facts }),
        d.note ? H.el("p", { class: "small note", text: words(d.note) }) : null,
        H.el("p", { class: "small updated", text: t.updated + " " + fmtClock(d.window.as_of) }),
      ].filter((x) => x !== null));
      card.hidden = false;
      card.dataset.coverage = d.coverage || "";
      delete card.dataset.place;
      showTiles(d.window);
    }

    function fail(err) {
      $("card").hidden = false;
      $("card").replaceChildren(H.el("p", { class: "error", text: t.error + (err ? ": " + err.message : "") }));
    }

    /* Keep the chosen place in the address and in the language link: switching the language
       (or reloading, or sharing the link) keeps it. */
    function remember(id) {
      const here = new URL(window.location.href);
      if (id) here.searchParams.set("place", id); else here.searchParams.delete("place");
      here.searchParams.delete("lat");
      here.searchParams.delete("lng");
      try { window.history.replaceState(null, "", here.pathname + here.search); } catch (e) { /* sandboxed */ }
      const other = new URL($("lang").href, window.location.href);
      if (id) other.searchParams.set("place", id); else other.searchParams.delete("place");
      $("lang").href = other.pathname + other.search;
    }

    async function choosePlace(id, zoom) {
      S.shown = { place: id };
      remember(id);
      const p = byId.get(id);
      if (p) map.setView([p.lat, p.lng], zoom || Math.max(map.getZoom(), 14));
      try {
        const [d] = await Promise.all([
          H.getJSON(cfg.api.place + encodeURIComponent(id)), legendLoaded, alertsLoaded,
        ]);
        showPlace(d);
        map.setView([d.lat, d.lng], zoom || Math.max(map.getZoom(), 14));
        mark(d.lat, d.lng);
      } catch (err) { fail(err); }
    }

    async function choosePoint(lat, lng, title) {
      S.shown = { lat: lat, lng: lng, title: title };
      try {
        const [d] = await Promise.all([
          H.getJSON(cfg.api.density, { lat: lat.toFixed(6), lng: lng.toFixed(6) }), legendLoaded,
        ]);
        showPoint(d, title);
        mark(lat, lng);
      } catch (err) { fail(err); }
    }

    function mark(lat, lng) {
      if (S.marker) S.marker.setLatLng([lat, lng]);
      else S.marker = L.circleMarker([lat, lng], { radius: 7, color: "#111", weight: 2, fillOpacity: 0, interactive: false }).addTo(map);
    }

    // -- the key areas: busiest first, or nearest to the user ----------------------------------------
    const dist = (a, b) => Math.hypot(a.lat - b.lat, (a.lng - b.lng) * Math.cos((a.lat * Math.PI) / 180));

    function areaButton(p) {
      const r = S.ranking[p.id] || {};
      const b = r.band ? S.bands[r.band] : null;
      const meta = [r.label ? words(r.label) : t.loading];
      if (S.alerts[p.id]) meta.unshift("⚠ " + t.warning);
      if (r.people !== null && r.people !== undefined) meta.push("≈ " + H.num(lang, r.people) + " " + t.people_unit);
      if (r.trend && r.trend.direction) meta.push(H.trendText(r.trend, t));
      if (r.quieter_at) meta.push(t.quieter_at.replace("{time}", fmtClock(r.quieter_at.start)));
      return H.el("button", { type: "button", "data-place": p.id, "data-band": r.band || "none", onclick: () => {
        $("q").value = nameOf(p);
        choosePlace(p.id);
      } }, b ? H.swatch(b.color) : null, H.el("span", { class: "name", text: nameOf(p) }),
      H.el("span", { class: "meta", text: meta.join(" · ") }));
    }

    function showAreas() {
      let list = S.order.map((id) => byId.get(id)).filter(Boolean);
      if (S.sort === "nearest" && S.here) list = index.slice().sort((a, b) => dist(a, S.here) - dist(b, S.here));
      const ol = $("areas");
      ol.replaceChildren(...list.slice(0, cfg.areas).map((p) => H.el("li", {}, areaButton(p))));
      $("sort-busiest").setAttribute("aria-pressed", String(S.sort === "busiest"));
      $("sort-nearest").setAttribute("aria-pressed", String(S.sort === "nearest"));
    }

    function setRanking(answer) {
      S.ranking = {};
      for (const p of answer.places) S.ranking[p.id] = p;
      S.order = answer.places.filter((p) => p.people !== null).map((p) => p.id);
      showAreas();
    }

    $("sort-busiest").addEventListener("click", () => { S.sort = "busiest"; showAreas(); });
    const nearest = $("sort-nearest");
    if (!navigator.geolocation) nearest.hidden = true;
    nearest.addEventListener("click", () => {
      navigator.geolocation.getCurrentPosition((pos) => {
        S.here = { lat: pos.coords.latitude, lng: pos.coords.longitude };
        S.sort = "nearest";
        showAreas();
      }, () => { $("areas").prepend(H.el("li", { class: "error", text: t.locate_failed })); },
      { timeout: 10000, maximumAge: 60000 });
    });

    // -- search ----------------------------------------------------------------------------------
    function matches(q) {
      const f = fold(q);
      if (!f) return S.order.map((id) => byId.get(id)).filter(Boolean);
      // Names and aliases first, then pinyin; exact, then prefix, then substring; busiest first.
      const rank = (p) => {
        if (p.keys.includes(f)) return 0;
        if (p.keys.some((k) => k.startsWith(f))) return 1;
        return p.keys.some((k) => k.includes(f)) ? 2 : 3;
      };
      const busy = (p) => { const i = S.order.indexOf(p.id); return i < 0 ? 1e6 : i; };
      return index.map((p) => [rank(p), busy(p), p]).filter((x) => x[0] < 3)
        .sort((a, b) => a[0] - b[0] || a[1] - b[1]).map((x) => x[2]);
    }

    function showResults(list, q) {
      const ul = $("results");
      ul.replaceChildren();
      if (q && !list.length) ul.append(H.el("li", { class: "none", text: t.no_match }));
      for (const p of list.slice(0, cfg.suggestions)) {
        const r = S.ranking[p.id] || {};
        const b = r.band ? S.bands[r.band] : null;
        ul.append(H.el("li", {}, H.el("button", {
          type: "button", "data-place": p.id,
          onclick: () => { showResults([], ""); $("q").value = nameOf(p); choosePlace(p.id); },
        }, b ? H.swatch(b.color) : null, H.el("span", { text: nameOf(p) }),
        H.el("span", { class: "small", text: " " + (r.label ? words(r.label) : otherName(p)) }))));
      }
    }

    $("q").addEventListener("input", () => showResults($("q").value ? matches($("q").value) : [], $("q").value));
    $("search").addEventListener("submit", (e) => {
      e.preventDefault();
      const found = matches($("q").value);
      if ($("q").value && found.length) { showResults([], ""); $("q").value = nameOf(found[0]); choosePlace(found[0].id); }
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
        remember(null);
        map.setView([pos.coords.latitude, pos.coords.longitude], Math.max(map.getZoom(), 15));
        choosePoint(pos.coords.latitude, pos.coords.longitude, t.near_you);
      }, () => {
        locate.disabled = false;
        locate.textContent = t.locate;
        fail(new Error(t.locate_failed));
      }, { timeout: 10000, maximumAge: 60000 });
    });

    function refresh() {
      H.getJSON(cfg.api.places, null, true).then(setRanking, () => {});
      loadAlerts();
      const s = S.shown;
      if (!s) return;
      // The latest release: the card and its tiles move to a new one when it is made.
      if (s.place) {
        H.getJSON(cfg.api.place + encodeURIComponent(s.place), null, true).then(showPlace, () => {});
      } else {
        H.getJSON(cfg.api.density, { lat: s.lat.toFixed(6), lng: s.lng.toFixed(6) }, true)
          .then((d) => showPoint(d, s.title), () => {});
      }
    }

    // -- the embedding parent: our height, so its iframe fits (iframe-resizer, or a plain message) --
    function postHeight() {
      if (window.parent === window) return;
      const height = Math.ceil(document.documentElement.scrollHeight);
      window.parent.postMessage({ type: "heatmap-widget:height", height: height }, "*");
    }
    if (window.parent !== window) {
      new ResizeObserver(postHeight).observe(document.body);
      window.addEventListener("load", postHeight);
    }

    // -- start ------------------------------------------------------------------------------------------
    map.createPane("density").style.zIndex = 350;
    // The legend (band colours and words) and the tile template come first; a card waits for them.
    const tilejson = H.getJSON(cfg.tilejson).then((tj) => { S.tpl = tj.tiles[0]; cfg.attribution = tj.attribution; });
    const legendLoaded = Promise.all([H.getJSON(cfg.api.legend), tilejson]).then(([legend]) => {
      S.bands = H.bandIndex(legend);
      H.renderLegend($("legend"), legend, lang, t);
      $("privacy").textContent = t.privacy.replace("{k}", legend.k_min);
    });
    // The warnings too: a place's card is drawn once, with its warning if it has one.
    const alertsLoaded = loadAlerts();
    (async function start() {
      const init = cfg.initial;
      // A place named in the address is fetched at once, beside the key areas.
      const first = init.place ? choosePlace(init.place, init.zoom) : null;
      if (init.query) { $("q").value = init.query; showResults(matches(init.query), init.query); }
      try {
        const [ranking] = await Promise.all([H.getJSON(cfg.api.places), legendLoaded]);
        setRanking(ranking);
        showTiles(ranking.window);
        if (first) await first;
        if (!init.place && init.lat !== null && init.lng !== null) await choosePoint(init.lat, init.lng, t.here);
        await alertsLoaded;
        // A new release: the card, the key areas and the warnings follow it (spread over a few
        // seconds across pages); the poll goes on for a stream that is blocked.
        let alertsTimer = null;
        H.follow(H.apiUrl(cfg.api, "events"), {
          release: () => H.spread(refresh),
          alert: () => {
            if (alertsTimer === null) alertsTimer = H.spread(() => { alertsTimer = null; loadAlerts(); });
          },
          reset: refresh,
        });
        setInterval(refresh, cfg.pollMs);
        document.body.dataset.ready = "true";
      } catch (err) { fail(err); }
    })();
  };
})();
