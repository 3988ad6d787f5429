"""Crowd warnings: watches on places and areas, alerts per release, events and webhooks.

Crowd crushes build faster than anyone watching a map notices. A *watch* names a target (a key
place, or a polygon inside the covered area) and a rule (:mod:`heatmap.alerts.rules`); once per
release the engine reads the release's *published* values for every target
(:mod:`heatmap.alerts.measure`: the numbers the place pages show, nothing finer), steps each
watch's state (:mod:`heatmap.alerts.lifecycle`: open after ``N`` releases in a row, close when
the rule stops holding, a cooldown) and records alerts, events and webhook messages in one
store transaction (:mod:`heatmap.alerts.engine`). The event stream is served from each
process's feed of those events (:mod:`heatmap.alerts.feed`); webhooks are signed and delivered
at least once from the store's outbox, only to allowed addresses (:mod:`heatmap.alerts.webhooks`).
:class:`heatmap.alerts.service.Alerting` ties them together for the HTTP layer.

No web framework here: ``heatmap.api.watches`` and ``heatmap.api.events`` are the HTTP edge.
"""

from heatmap.alerts.service import Alerting

__all__ = ["Alerting"]
