"""The OpenAPI document, for the served models, and a docs page rendered from it (no scripts, no CDN)."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Blueprint, Response, current_app, render_template_string
from markupsafe import Markup, escape

from service.web.api.common import plane, respond
from service.web.openapi import build_spec

bp = Blueprint("docs", __name__)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ spec.info.title }} API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:15px/1.5 system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
code,pre{font:13px ui-monospace,monospace;background:#f4f4f4;border-radius:4px}
pre{padding:.6em;overflow-x:auto} .op{border:1px solid #ddd;border-radius:6px;margin:1em 0;padding:.2em 1em}
.m{display:inline-block;min-width:4em;font-weight:bold} .get{color:#00734a} .post{color:#0453a8}
table{border-collapse:collapse} td{padding:2px 8px;vertical-align:top;border-top:1px solid #eee}
</style></head><body><main>
<h1>{{ spec.info.title }} {{ spec.info.version }}</h1>
<p>{{ spec.info.description }} Machine-readable: <a href="openapi.json">openapi.json</a>.</p>
<p><strong>Try it:</strong> <a href="/">draw or upload a digit</a> and see every served model's answer
(the page calls the routes below, as any client would); each model has a page at
<code>/ui/models/{name}/{version}</code>.</p>
<h2>Routes</h2>
{% for path, ops in spec.paths.items() %}{% for method, op in ops.items() %}
<div class="op"><h3><span class="m {{ method }}">{{ method.upper() }}</span> <code>{{ path }}</code></h3>
<p>{{ op.summary }}{% if path.endswith(":classify") %} (<a href="/">try it</a>){% endif %}</p>
{% if op.description %}<p>{{ markdown_code(op.description) }}</p>{% endif %}
{% if op.parameters %}<table>{% for p in op.parameters %}<tr><td><code>{{ p.name }}</code></td>
<td>{{ p["in"] }}</td><td>{{ markdown_code(p.description or "") }}</td></tr>{% endfor %}</table>{% endif %}
{% if op.requestBody %}<p>Body: {% for ctype in op.requestBody.content %}<code>{{ ctype }}</code>
{% endfor %}</p>{% endif %}
<table>{% for status, r in op.responses.items() %}
<tr><td><code>{{ status }}</code></td><td>{{ r.description }}</td></tr>{% endfor %}</table>
</div>{% endfor %}{% endfor %}
<h2>Schemas</h2>
{% for name, schema in spec.components.schemas.items() %}
<h3>{{ name }}</h3><pre tabindex="0">{{ pretty(schema) }}</pre>{% endfor %}
</main></body></html>"""


def _spec() -> dict[str, Any]:
    # Built once per catalog generation: a restarted runtime, or a hot reload, may serve other models.
    catalog = plane().catalog
    cache = current_app.extensions.setdefault("trainserve.openapi", {})
    if cache.get("generations") != catalog.generations:
        cache.update(spec=build_spec(catalog, current_app.url_map), generations=catalog.generations)
    return cache["spec"]


_CODE_SPAN = re.compile(r"`([^`]+)`")


def markdown_code(text: str) -> Markup:
    """OpenAPI descriptions are CommonMark: their `code spans` as <code>, everything else escaped."""
    return Markup(_CODE_SPAN.sub(lambda m: f"<code>{m.group(1)}</code>", str(escape(text))))


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3 document."""
    return respond(_spec())


@bp.get("/docs")
def docs() -> str:
    """A self-contained HTML page describing every endpoint."""
    return render_template_string(_PAGE, spec=_spec(), pretty=lambda s: json.dumps(s, indent=2),
                                  markdown_code=markdown_code)
