/* Helpers shared by the planner and the widget. No dependency but Leaflet; no build step. */
(function () {
  "use strict";
  const H = {};

  /* Return a URL with query parameters set (null/undefined removes one). The URL may be a tile
     template: its {z}/{x}/{y} are in the path, so only the query part is parsed. */
  H.withQuery = function (url, params) {
    const i = url.indexOf("?");
    const base = i < 0 ? url : url.slice(0, i);
    const q = new URLSearchParams(i < 0 ? "" : url.slice(i + 1));
    for (const [k, v] of Object.entries(params || {})) {
      if (v === null || v === undefined) q.delete(k);
      else q.set(k, String(v));
    }
    const s = q.toString();
    return s ? base + "?" + s : base;
  };

  /* Return the query parameters naming what an answer's ``window`` object describes: a
     release by its tick (?release=as_of), a closed window by its start (?window=start). Both
     name answers that never change (immutable URLs); no object names the latest release. */
  H.refOf = function (w) {
    if (!w) return { window: null, release: null };
    return w.kind === "release" ? { window: null, release: w.as_of } : { window: w.start, release: null };
  };

  /* Return the words of a ``window`` object: "Now · updated 14:05" for a release (its tick,
     in the service's time zone), "11-27 13:55–14:00 · complete" for a closed window. */
  H.describeWindow = function (w, t, fmtTime, fmtClock) {
    if (!w) return t.no_data;
    if (w.kind === "release") return t.now_updated.replace("{time}", fmtClock(w.as_of));
    return fmtTime(w.start) + "–" + fmtClock(w.end) + " · " + t.closed;
  };

  /* GET a JSON document; a non-2xx answer throws an Error carrying the API's reason.
     fresh: revalidate with the server (ETag, usually a 304) instead of trusting the HTTP cache;
     for polling the latest release. */
  H.getJSON = async function (url, params, fresh) {
    const r = await fetch(params ? H.withQuery(url, params) : url, {
      credentials: "omit",
      cache: fresh ? "no-cache" : "default",
      headers: { Accept: "application/json" },
    });
    const body = await r.json().catch(() => null);
    if (!r.ok) {
      const err = new Error((body && body.detail) || r.status + " " + r.statusText);
      err.status = r.status;
      throw err;
    }
    return body;
  };

  /* Create an element: el("li", {class: "x", text: "..."}, child, ...). Text is never parsed
     as HTML, so API values cannot inject markup. */
  H.el = function (tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") e.textContent = v;
      else if (k === "style") e.style.cssText = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  };

  H.locale = (lang) => (lang === "en" ? "en" : "zh-CN");

  H.num = function (lang, n, digits) {
    if (n === null || n === undefined) return "–";
    return Number(n).toLocaleString(H.locale(lang), { maximumFractionDigits: digits || 0 });
  };

  /* Format an ISO instant as local time in the service's time zone. */
  H.timeFormat = function (lang, tz, withDate) {
    const opts = { timeZone: tz, hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
    if (withDate) Object.assign(opts, { month: "2-digit", day: "2-digit" });
    const f = new Intl.DateTimeFormat(H.locale(lang), opts);
    return (iso) => (iso ? f.format(new Date(iso)) : "–");
  };

  /* A band's words: the page language first, the other one after (both always shown). */
  H.label = function (label, lang) {
    if (!label) return "";
    return lang === "en" ? label.en + " · " + label.zh : label.zh + " · " + label.en;
  };

  H.swatch = (color) => H.el("span", { class: "swatch", style: "background:" + color, "aria-hidden": "true" });

  /* Return {band name -> legend band} of /api/v1/legend. */
  H.bandIndex = function (legend) {
    const out = {};
    for (const b of legend.bands) out[b.band] = b;
    return out;
  };

  /* Fill a list with the legend: swatch, zh/en words and the density range. */
  H.renderLegend = function (ul, legend, lang, t) {
    ul.replaceChildren();
    for (const b of legend.bands) {
      const range =
        b.max_km2 === null || b.max_km2 === undefined
          ? "≥ " + H.num(lang, b.min_km2)
          : H.num(lang, b.min_km2) + "–" + H.num(lang, b.max_km2);
      ul.append(
        H.el("li", { "data-band": b.band }, H.swatch(b.color),
          H.el("span", { class: "words", text: H.label(b.label, lang) }),
          H.el("span", { class: "range", text: range }))
      );
    }
  };

  /* The words of a trend answer ({direction, ...}) in the page language. */
  H.trendText = function (trend, t) {
    if (!trend || !trend.direction) return t.no_trend;
    return t[trend.direction] || trend.direction;
  };

  /* The URL of another /api/v1 endpoint beside the page's /api/v1/windows (same root). */
  H.apiUrl = function (api, name) {
    return api.windows.replace(/windows$/, name);
  };

  /* Follow the service's event stream (Server-Sent Events): on.release(data) at each new
     release, on.alert(data) when an alert opens or closes, on.reset() when the stream could
     not resume. EventSource reconnects by itself and resumes after the last event it got
     (Last-Event-ID); the pages poll besides, so a blocked stream only makes them slower.
     body[data-events] tells the stream's state: open, retrying, closed. */
  H.follow = function (url, on) {
    if (!window.EventSource) return null;
    const es = new EventSource(url);
    const state = (s) => { document.body.dataset.events = s; };
    const json = (e) => { try { return JSON.parse(e.data); } catch (err) { return null; } };
    es.addEventListener("ready", () => state("open"));
    es.addEventListener("release", (e) => { const d = json(e); if (d && on.release) on.release(d); });
    es.addEventListener("alert", (e) => { const d = json(e); if (d && on.alert) on.alert(d); });
    es.addEventListener("reset", () => { if (on.reset) on.reset(); });
    es.onerror = () => state(es.readyState === 2 ? "closed" : "retrying");
    return es;
  };

  /* Run fn after a random 2-5 s. A release event reaches every open page at the same moment;
     spread out, their tile and JSON requests reach the server as a ramp, not a spike. */
  H.spread = function (fn) {
    return setTimeout(fn, 2000 + Math.random() * 3000);
  };

  /* GET /api/v1/alerts: the public's alerts, or with a planner token every alert. */
  H.getAlerts = async function (url, token) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    const r = await fetch(url, { credentials: "omit", cache: "no-cache", headers: headers });
    const body = await r.json().catch(() => null);
    if (!r.ok) throw new Error((body && body.detail) || r.status + " " + r.statusText);
    return body;
  };

  /* The words of an alert in the page language: the target's name and what its rule says. */
  H.alertWords = function (a, lang) {
    const name = a.target && a.target.name ? (lang === "en" ? a.target.name.en : a.target.name.zh) : "";
    const says = a.watch && a.watch.says ? (lang === "en" ? a.watch.says.en : a.watch.says.zh) : "";
    return { name: name || (a.watch && a.watch.name) || "", says: says };
  };

  window.HeatmapCommon = H;
})();
