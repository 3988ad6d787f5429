"""The pages' words in Chinese (default) and English: one table for the templates and the JS."""

from __future__ import annotations

from typing import Final, Literal

Lang = Literal["zh", "en"]

HTML_LANG: Final[dict[Lang, str]] = {"zh": "zh-CN", "en": "en"}
"""Value of ``<html lang>`` per page language."""

STRINGS: Final[dict[str, dict[Lang, str]]] = {
    "title_planner": {"zh": "上海人流密度", "en": "Shanghai crowd density"},
    "title_widget": {"zh": "人流拥挤度", "en": "How crowded is it?"},
    "layer": {"zh": "图层格式", "en": "Layer format"},
    "png": {"zh": "栅格 PNG", "en": "Raster PNG"},
    "mvt": {"zh": "矢量 MVT", "en": "Vector MVT"},
    "time": {"zh": "时间", "en": "Time"},
    "time_slider": {"zh": "时间窗口", "en": "Time window"},
    "play": {"zh": "播放", "en": "Play"},
    "pause": {"zh": "暂停", "en": "Pause"},
    "live": {"zh": "实时", "en": "Live"},
    "closed": {"zh": "已完成", "en": "complete"},
    "now_updated": {"zh": "现在 · 更新于 {time}", "en": "Now · updated {time}"},
    "last_min": {"zh": "近 {n} 分钟内出现", "en": "seen in the last {n} min"},
    "legend": {"zh": "图例（人/平方公里）", "en": "Legend (people per km²)"},
    "legend_short": {"zh": "图例", "en": "Legend"},
    "totals": {"zh": "全市概况", "en": "City totals"},
    "people_seen": {"zh": "统计人数", "en": "People counted"},
    "cells_by_band": {"zh": "各级网格数", "en": "Cells by band"},
    "top_places": {"zh": "最拥挤的地点", "en": "Most crowded places"},
    "export": {"zh": "导出当前视图", "en": "Export this view"},
    "export_too_big": {"zh": "范围过大，请放大地图", "en": "Too many cells: zoom in"},
    "cell": {"zh": "网格", "en": "Cell"},
    "people": {"zh": "人数", "en": "People"},
    "people_unit": {"zh": "人", "en": "people"},
    "density": {"zh": "密度", "en": "Density"},
    "per_km2": {"zh": "人/平方公里", "en": "people/km²"},
    "band": {"zh": "拥挤程度", "en": "Crowding"},
    "window": {"zh": "时间窗口", "en": "Window"},
    "trend": {"zh": "趋势", "en": "Trend"},
    "busier": {"zh": "人数在增加", "en": "getting busier"},
    "quieter": {"zh": "人数在减少", "en": "getting quieter"},
    "steady": {"zh": "基本持平", "en": "steady"},
    "no_trend": {"zh": "暂无趋势", "en": "no trend yet"},
    "vs_usual_busier": {"zh": "比平时更拥挤", "en": "busier than usual"},
    "vs_usual_not": {"zh": "不比平时拥挤", "en": "not busier than usual"},
    "best_time": {"zh": "今天最佳出行时间", "en": "Best time to go today"},
    "no_best_time": {"zh": "今天暂无建议", "en": "No suggestion for today"},
    "forecast": {"zh": "未来两小时", "en": "Next two hours"},
    "search": {"zh": "搜索地点", "en": "Search a place"},
    "search_hint": {"zh": "例如：外滩", "en": "e.g. The Bund"},
    "search_go": {"zh": "搜索", "en": "Search"},
    "no_match": {"zh": "没有找到该地点", "en": "No place found"},
    "locate": {"zh": "我的位置", "en": "Locate me"},
    "locating": {"zh": "正在定位…", "en": "Locating…"},
    "locate_failed": {"zh": "无法获取位置", "en": "Could not get your location"},
    "here": {"zh": "此处", "en": "This spot"},
    "near_you": {"zh": "您附近", "en": "Near you"},
    "updated": {"zh": "更新于", "en": "Updated"},
    "loading": {"zh": "加载中…", "en": "Loading…"},
    "error": {"zh": "数据暂不可用", "en": "Data unavailable"},
    "no_data": {"zh": "暂无数据", "en": "No data yet"},
    "privacy": {
        "zh": "仅显示匿名汇总；少于{k}台设备的网格不显示。",
        "en": "Anonymous totals only; cells with fewer than {k} devices are hidden.",
    },
    "close": {"zh": "关闭", "en": "Close"},
    "panel": {"zh": "面板", "en": "Panel"},
    "other_lang": {"zh": "English", "en": "中文"},
    "key_areas": {"zh": "重点区域拥挤度", "en": "Key areas now"},
    "busiest": {"zh": "最拥挤", "en": "Busiest"},
    "nearest": {"zh": "离我最近", "en": "Nearest"},
    "quieter_at": {"zh": "{time} 起较空闲", "en": "quieter at {time}"},
    "popular_times": {"zh": "通常拥挤程度（按小时）", "en": "Popular times (usual by hour)"},
    "now_marker": {"zh": "现在", "en": "now"},
    "usual_at": {"zh": "{hour} 时通常：{label}", "en": "{hour}:00 usually: {label}"},
    "no_usual": {"zh": "暂无历史数据", "en": "no history yet"},
    "no_forecast": {"zh": "暂无预测", "en": "No forecast yet"},
    "levels": {"zh": "数据来自第 {res} 级网格", "en": "from H3 resolution {res}"},
    "outside": {"zh": "不在覆盖范围内", "en": "Outside the covered area"},
    "place_search": {"zh": "查找地点", "en": "Find a place"},
    "export_city": {"zh": "导出全市（规划人员）", "en": "Export the whole city (planners)"},
    "token": {"zh": "规划人员令牌", "en": "Planner token"},
    "resolution": {"zh": "分辨率（H3）", "en": "Resolution (H3)"},
    "need_token": {"zh": "请先输入规划人员令牌", "en": "Enter a planner token first"},
    "downloaded": {"zh": "已下载", "en": "Downloaded"},
    "alerts": {"zh": "人流预警", "en": "Crowd warnings"},
    "no_alerts": {"zh": "目前没有人流预警", "en": "No crowd warnings now"},
    "warning": {"zh": "人流预警", "en": "Crowd warning"},
    "alert_since": {"zh": "{time} 起", "en": "since {time}"},
    "colon": {"zh": "：", "en": ": "},
}
"""Every UI string, keyed by name, in both languages."""


def strings(lang: Lang) -> dict[str, str]:
    """Return the UI strings of one language (the table the page's script receives)."""
    return {key: text[lang] for key, text in STRINGS.items()}


def parse_lang(value: str | None) -> Lang:
    """Return ``en`` for an English request (``en``, ``en-GB``, ...), else ``zh`` (the default).

    >>> parse_lang("en-US"), parse_lang(None), parse_lang("zh-CN")
    ('en', 'zh', 'zh')
    """
    return "en" if value and value.lower().startswith("en") else "zh"
