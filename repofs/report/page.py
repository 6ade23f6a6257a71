"""The report's HTML document: style, sections and one small script, all inline.

Every figure is printed by the server side in ``units``' style with the exact byte count in
``data-bytes`` (and a tooltip), so the page reads the same without its script; the script
only adds the totals line from the embedded figures (``<script id="figures">``), which shows
the page's numbers and ``stats --json`` agree.
"""
from __future__ import annotations

import json
from html import escape
from typing import Any

from repofs.cli.units import format_duration, format_size, format_time

from . import svg

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:980px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.9em}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}.bad{color:#b00}.ok{color:#070}
.muted{color:#777}
"""

SCRIPT = """
(function(){
  var f = JSON.parse(document.getElementById('figures').textContent);
  var units = ['B','KiB','MiB','GiB','TiB','PiB'];
  function size(n){var i=0;while(n>=1024&&i<units.length-1){n/=1024;i++;}return i?n.toFixed(1)+' '+units[i]:n+' B';}
  var logical = 0, stored = 0;
  f.stats.vms.forEach(function(v){stored += 0; v.generations.forEach(function(g){logical += g.data_bytes;});});
  stored = f.stats.total.stored_bytes;
  var el = document.getElementById('js-totals');
  el.setAttribute('data-logical-bytes', String(logical));
  el.setAttribute('data-stored-bytes', String(stored));
  el.textContent = 'Checked in the browser: ' + f.generations.length + ' generations, ' + size(logical) +
                   ' logical, ' + size(stored) + ' stored.';
})();
"""


def _size_cell(n: int | None) -> str:
    if n is None:
        return '<td class="num muted">-</td>'
    return f'<td class="num" data-bytes="{n}" title="{n} bytes">{escape(format_size(n))}</td>'


def render(doc: dict[str, Any]) -> str:
    stats, gens, ratios = doc["stats"], doc["generations"], doc["ratios"]
    total = stats["total"]
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'; '
           'script-src \'unsafe-inline\'; img-src data:">',
           f"<title>repofs report: {escape(doc['repository'])}</title><style>{STYLE}</style></head><body>",
           f"<h1>repofs report</h1><p>Repository <code>{escape(doc['repository'])}</code>, "
           f"made {escape(format_time(doc['generated_ns']))}.</p>",
           '<h2>Summary</h2><table id="summary">',
           f'<tr><th>VMs</th><td class="num" id="vm-count">{len(stats["vms"])}</td></tr>',
           f'<tr><th>generations</th><td class="num" id="generation-count">{len(gens)}</td></tr>',
           f'<tr id="logical"><th>logical bytes (all generations)</th>{_size_cell(total["logical_bytes"])}</tr>',
           f'<tr id="stored"><th>stored bytes (chunks)</th>{_size_cell(total["stored_bytes"])}</tr>',
           f'<tr id="index"><th>index bytes</th>{_size_cell(total["index_bytes"])}</tr>',
           f'<tr><th>chunks</th><td class="num" id="chunk-count">{total["chunks"]}</td></tr>']
    for key, label in (("dedup", "deduplication"), ("compression", "compression"), ("overall", "logical / stored")):
        v = ratios.get(key)
        out.append(f'<tr id="ratio-{key}"><th>{label} ratio</th><td class="num" data-ratio="{v if v else ""}">'
                   f'{f"{v:.2f}x" if v else "-"}</td></tr>')
    out.append('</table><p id="js-totals" class="muted">(the page\'s script did not run)</p>')
    if not gens:
        out.append("<p>This repository holds no generations yet.</p>")
    else:
        out.append("<h2>Repository growth</h2>" + svg.growth(gens))
        out.append("<h2>Ratios</h2>" + svg.ratios([("deduplication", ratios.get("dedup")),
                                                    ("compression", ratios.get("compression")),
                                                    ("logical / stored", ratios.get("overall"))]))
    stats_by_gen = {(v["vm"], g["generation"]): g for v in stats["vms"] for g in v["generations"]}
    for v in stats["vms"]:
        mine = [g for g in gens if g["vm"] == v["vm"]]
        out.append(f'<section class="vm" data-vm="{escape(v["vm"], quote=True)}"><h2>VM {escape(v["vm"])}</h2>')
        out.append(f'<p>{v["chunks"]} chunks, <span data-bytes="{v["stored_bytes"]}">{escape(format_size(v["stored_bytes"]))}</span> '
                   f'stored, <span data-bytes="{v["unique_bytes"]}">{escape(format_size(v["unique_bytes"]))}</span> only this VM\'s.</p>')
        if mine:
            out.append(svg.timeline(v["vm"], mine))
        out.append('<table class="generations"><tr><th>generation</th><th>time (UTC)</th><th>kind</th>'
                   '<th>logical</th><th>stored (referenced)</th><th>unique</th><th>new stored</th>'
                   '<th>verified chunks</th><th>boot test</th><th>marks</th></tr>')
        for g in mine:
            s = stats_by_gen.get((g["vm"], g["generation"]), {})
            verified = (f'{g["verified_chunks"]}/{g["chunks"]}' if g["chunks"] else "-")
            vclass = "ok" if g["chunks"] and g["verified_chunks"] == g["chunks"] else "muted"
            boot = g.get("boot_test")
            boot_text = (f'<span class="{"ok" if boot.get("result") == "passed" else "bad"}" '
                         f'title="{escape(str(boot.get("reason") or ""), quote=True)}">{escape(str(boot.get("result")))}</span>'
                         if isinstance(boot, dict) else "-")
            marks = " ".join(m for m, on in (("latest", g["latest"]), ("protected", g["protected"])) if on)
            out.append(f'<tr class="generation" data-generation="{escape(g["generation"], quote=True)}">'
                       f'<td>{escape(g["generation"])}</td><td>{escape(format_time(g["time_ns"]))}</td>'
                       f'<td>{g["kind"]}</td>{_size_cell(s.get("data_bytes", g["logical_bytes"]))}'
                       f'{_size_cell(s.get("stored_bytes"))}{_size_cell(s.get("unique_bytes"))}'
                       f'{_size_cell(g["new_bytes"])}<td class="{vclass}">{verified}</td><td>{boot_text}</td>'
                       f'<td>{marks}</td></tr>')
        out.append("</table></section>")
    out.append("<h2>Last errors</h2>")
    if doc["errors"]:
        out.append('<table id="errors"><tr><th>time (UTC)</th><th>command</th><th>exit</th><th>error</th></tr>')
        for e in reversed(doc["errors"]):
            out.append(f'<tr><td>{escape(format_time(int(e.get("time_ns", 0))))}</td><td>{escape(str(e.get("command", "")))}</td>'
                       f'<td class="bad">{int(e.get("exit_code", 0))}</td><td>{escape(str(e.get("error") or ""))}</td></tr>')
        out.append("</table>")
    else:
        out.append('<p id="errors">No failed operation in the log of operations of this host.</p>')
    if doc["operations"]:
        out.append('<h2>Last operations</h2><table id="operations"><tr><th>time (UTC)</th><th>command</th>'
                   '<th>exit</th><th>duration</th></tr>')
        for e in reversed(doc["operations"][-20:]):
            out.append(f'<tr><td>{escape(format_time(int(e.get("time_ns", 0))))}</td><td>{escape(str(e.get("command", "")))}</td>'
                       f'<td class="{"bad" if e.get("exit_code") else "ok"}">{int(e.get("exit_code", 0))}</td>'
                       f'<td>{escape(format_duration(float(e.get("seconds") or 0)))}</td></tr>')
        out.append("</table>")
    figures = json.dumps(doc, sort_keys=True).replace("</", "<\\/")
    out.append(f'<script type="application/json" id="figures">{figures}</script>')
    out.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(out)
