"""The two pages as folium (Leaflet) documents pointed at the app's own assets.

folium builds the map, the optional basemap and the page skeleton; a :class:`PageApp` element adds
the page's own markup (``templates/``), its stylesheet and script, and the JSON configuration the
script reads: every URL the page uses is in it, built by the server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Final

import folium
import jinja2
from branca.element import Figure, MacroElement
from folium.template import Template

from heatmap.web.assets import AssetStore
from heatmap.web.i18n import HTML_LANG, Lang, strings

TEMPLATES: Final = Path(__file__).resolve().parent / "templates"

RESIZER: Final = "vendor/@iframe-resizer/child/index.umd.js"
"""The iframe-resizer child (npm ``@iframe-resizer/child``): a parent page running
``@iframe-resizer/parent`` sizes the widget's iframe to it (the widget also posts its height in a
plain message, see README "Embedding")."""

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def json_for_html(obj: object) -> str:
    """Return JSON that is safe inside a ``<script>`` element (no ``<``, ``>`` or ``&``).

    >>> json_for_html({"a": "</script>"})
    '{"a": "\\\\u003c/script\\\\u003e"}'
    """
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ": "))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class PageFigure(Figure):
    """The HTML document: language, title, no favicon request, folium's header and body."""

    _template = Template(
        "<!DOCTYPE html>\n"
        '<html lang="{{ this.lang }}">\n<head>\n'
        '<meta charset="utf-8">\n'
        "<title>{{ this.title }}</title>\n"
        '<link rel="icon" href="data:,">\n'
        "{{ this.header.render(**kwargs) }}\n"
        "</head>\n<body>\n{{ this.html.render(**kwargs) }}\n</body>\n"
        "<script>\n{{ this.script.render(**kwargs) }}\n</script>\n</html>\n"
    )

    def __init__(self, lang: Lang, title: str) -> None:
        super().__init__(title=title)
        self.lang = HTML_LANG[lang]


class LocalMap(folium.Map):
    """A folium map whose Leaflet comes from the app (no CDN) and whose page can be zoomed.

    folium's own header disables pinch zoom on phones (``user-scalable=no``); this template keeps
    the default viewport so a reader can enlarge the text.
    """

    _template = Template(
        """
        {% macro header(this, kwargs) %}
        <meta name="viewport" content="width=device-width, initial-scale=1">
        {% endmacro %}
        {% macro html(this, kwargs) %}
        <div class="map" id="{{ this.get_name() }}" role="region"
             aria-label="{{ this.aria_label }}"></div>
        {% endmacro %}
        {% macro script(this, kwargs) %}
        var {{ this.get_name() }} = L.map({{ this.get_name()|tojson }}, {
            center: {{ this.location|tojson }},
            ...{{ this.options|tojavascript }}
        });
        {% if this.control_scale %}L.control.scale().addTo({{ this.get_name() }});{% endif %}
        {% endmacro %}
        """
    )

    def __init__(
        self, js: list[tuple[str, str]], css: list[tuple[str, str]], aria_label: str, **kw: Any
    ) -> None:
        super().__init__(tiles=None, **kw)
        self.default_js = js
        self.default_css = css
        self.aria_label = aria_label


class PageApp(MacroElement):
    """The page's own part: markup, stylesheet, script and configuration, started on the map."""

    _template = Template(
        """
        {% macro header(this, kwargs) %}
        <link rel="stylesheet" href="{{ this.css_url }}">
        <script src="{{ this.js_url }}"></script>
        <script type="application/json" id="heatmap-config">{{ this.config_json }}</script>
        {% endmacro %}
        {% macro html(this, kwargs) %}
        {{ this.markup }}
        {% endmacro %}
        {% macro script(this, kwargs) %}
        {{ this.entry }}({{ this._parent.get_name() }},
            JSON.parse(document.getElementById("heatmap-config").textContent));
        {% endmacro %}
        """
    )

    def __init__(self, entry: str, js_url: str, css_url: str, markup: str, config: object) -> None:
        super().__init__()
        self._name = "PageApp"
        self.entry = entry
        self.js_url = js_url
        self.css_url = css_url
        self.markup = markup
        self.config_json = json_for_html(config)


@dataclass(frozen=True)
class Basemap:
    """An optional XYZ basemap (``HEATMAP_BASEMAP_URL``); an empty URL means none."""

    url: str = ""
    attribution: str = ""


@dataclass(frozen=True)
class PageSpec:
    """What a page needs from the server: language, view, assets root and its configuration."""

    lang: Lang
    root: str  # the app's root path ("" or "/prefix")
    center: tuple[float, float]
    zoom: int
    min_zoom: int
    max_zoom: int
    basemap: Basemap
    config: dict[str, Any] = field(default_factory=dict)


@cache
def _assets() -> AssetStore:
    return AssetStore()


def asset_store() -> AssetStore:
    """Return the process-wide asset store (files read and compressed once)."""
    return _assets()


def _build(spec: PageSpec, name: str, extra_js: list[str], title: str, control_scale: bool) -> str:
    assets = asset_store()
    js = [("leaflet", assets.url(spec.root, "vendor/leaflet/leaflet.js"))]
    js += [(p.rsplit("/", 1)[-1], assets.url(spec.root, p)) for p in [*extra_js, "web/common.js"]]
    css = [("leaflet_css", assets.url(spec.root, "vendor/leaflet/leaflet.css"))]
    words = strings(spec.lang)
    fig = PageFigure(spec.lang, title)
    m = LocalMap(
        js,
        css,
        aria_label=words["title_" + name],
        location=list(spec.center),
        zoom_start=spec.zoom,
        min_zoom=spec.min_zoom,
        max_zoom=spec.max_zoom,
        control_scale=control_scale,
        zoom_control=True,
        width="100%",
        height="100%",
        position="absolute",
    )
    fig.add_child(m)
    if spec.basemap.url:
        folium.TileLayer(
            tiles=spec.basemap.url,
            attr=spec.basemap.attribution or spec.basemap.url,
            name="basemap",
            max_zoom=spec.max_zoom,
            max_native_zoom=min(spec.max_zoom, 19),
        ).add_to(m)
    config = {"lang": spec.lang, "strings": words, **spec.config}
    markup = _env.get_template(f"{name}.html").render(t=words, lang=spec.lang, cfg=config)
    app = PageApp(
        entry=f"Heatmap{name.capitalize()}",
        js_url=assets.url(spec.root, f"web/{name}.js"),
        css_url=assets.url(spec.root, f"web/{name}.css"),
        markup=markup,
        config=config,
    )
    m.add_child(app)
    return fig.render()


def planner_html(spec: PageSpec) -> str:
    """Return the planner page: full-screen city map, layer switch, time slider, side panel."""
    words = strings(spec.lang)
    return _build(
        spec,
        "planner",
        ["vendor/leaflet.vectorgrid/Leaflet.VectorGrid.bundled.min.js"],
        words["title_planner"],
        control_scale=True,
    )


def widget_html(spec: PageSpec) -> str:
    """Return the citizen widget: small map, place search, crowding in words, legend."""
    words = strings(spec.lang)
    return _build(spec, "widget", [RESIZER], words["title_widget"], control_scale=False)
