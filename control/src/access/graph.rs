//! The access graph as one self-contained HTML page (inline SVG and CSS,
//! no script, no external asset): identities as nodes, observed calls as
//! edges weighted by count, denied attempts red, grants the policies give
//! and nobody used dashed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use warden_proxy::control::api::{AccessReport, UsageRow};

/// `text` escaped for HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => {
                let _ = write!(out, "&#x{:x};", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

#[derive(Default)]
struct EdgeCounts {
    allowed: u64,
    denied: u64,
    /// Grants on this edge nobody used in the window.
    unused: usize,
}

fn label(id: &str) -> &str {
    let short = id.rsplit('/').next().unwrap_or(id);
    if short.is_empty() { id } else { short }
}

/// The page for `rows` (the window's usage) and `report` (its grants).
pub fn render(rows: &[UsageRow], report: &AccessReport, title: &str) -> String {
    let mut nodes: BTreeSet<&str> = BTreeSet::new();
    let mut edges: BTreeMap<(&str, &str), EdgeCounts> = BTreeMap::new();
    for r in rows {
        nodes.insert(&r.caller);
        nodes.insert(&r.callee);
        let e = edges.entry((&r.caller, &r.callee)).or_default();
        if r.decision == "allow" {
            e.allowed += r.count;
        } else {
            e.denied += r.count;
        }
    }
    for identity in &report.identities {
        for g in identity.granted.iter().filter(|g| g.count == 0) {
            nodes.insert(&identity.identity);
            nodes.insert(&g.callee);
            edges
                .entry((&identity.identity, &g.callee))
                .or_default()
                .unused += 1;
        }
    }
    let nodes: Vec<&str> = nodes.into_iter().collect();
    let n = nodes.len().max(1);
    let radius = (60.0 * n as f64 / std::f64::consts::PI).max(160.0);
    let size = 2.0 * radius + 240.0;
    let center = size / 2.0;
    let position: BTreeMap<&str, (f64, f64)> = nodes
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let angle =
                2.0 * std::f64::consts::PI * i as f64 / n as f64 - std::f64::consts::FRAC_PI_2;
            (
                *id,
                (center + radius * angle.cos(), center + radius * angle.sin()),
            )
        })
        .collect();
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"graph\" width=\"{size:.0}\" height=\"{size:.0}\" viewBox=\"0 0 {size:.0} {size:.0}\">\
         <defs>\
         <marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerUnits=\"userSpaceOnUse\" markerWidth=\"12\" markerHeight=\"12\" orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"#444\"/></marker>\
         <marker id=\"arrow-denied\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerUnits=\"userSpaceOnUse\" markerWidth=\"12\" markerHeight=\"12\" orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"#c62828\"/></marker>\
         </defs>"
    );
    for ((from, to), counts) in &edges {
        let (x1, y1) = position[from];
        let (x2, y2) = position[to];
        for (kind, count, bend) in [
            ("allowed", counts.allowed, 0.0_f64),
            ("denied", counts.denied, 28.0),
            ("unused", counts.unused as u64, -28.0),
        ] {
            if count == 0 {
                continue;
            }
            let d = if from == to {
                // A service calling itself: a loop above its node.
                let spread = 18.0 + bend.abs() / 2.0;
                format!(
                    "M {:.1} {:.1} C {:.1} {:.1} {:.1} {:.1} {:.1} {:.1}",
                    x1 - 12.0,
                    y1 - 16.0,
                    x1 - spread * 2.5,
                    y1 - 90.0 - bend,
                    x1 + spread * 2.5,
                    y1 - 90.0 - bend,
                    x1 + 12.0,
                    y1 - 16.0
                )
            } else {
                // A quadratic curve, bent to one side per kind so the three
                // kinds of one pair stay apart; stopped short of the node.
                let (dx, dy) = (x2 - x1, y2 - y1);
                let len = (dx * dx + dy * dy).sqrt().max(1.0);
                let (ux, uy) = (dx / len, dy / len);
                let (sx, sy) = (x1 + ux * 22.0, y1 + uy * 22.0);
                let (ex, ey) = (x2 - ux * 24.0, y2 - uy * 24.0);
                let (cx, cy) = ((sx + ex) / 2.0 - uy * bend, (sy + ey) / 2.0 + ux * bend);
                format!("M {sx:.1} {sy:.1} Q {cx:.1} {cy:.1} {ex:.1} {ey:.1}")
            };
            let width = if kind == "unused" {
                1.5
            } else {
                (1.0 + (count as f64 + 1.0).log2()).min(9.0)
            };
            let style = match kind {
                "allowed" => "stroke=\"#444\" marker-end=\"url(#arrow)\"",
                "denied" => "stroke=\"#c62828\" marker-end=\"url(#arrow-denied)\"",
                _ => "stroke=\"#888\" stroke-dasharray=\"6 4\" marker-end=\"url(#arrow)\"",
            };
            let what = match kind {
                "allowed" => format!("{count} allowed requests"),
                "denied" => format!("{count} denied requests"),
                _ => format!("{count} grants never used"),
            };
            let _ = write!(
                svg,
                "<path class=\"edge {kind}\" data-from=\"{}\" data-to=\"{}\" data-count=\"{count}\" \
                 d=\"{d}\" fill=\"none\" stroke-width=\"{width:.1}\" {style}>\
                 <title>{} -&gt; {}: {}</title></path>",
                escape(from),
                escape(to),
                escape(from),
                escape(to),
                escape(&what),
            );
        }
    }
    for id in &nodes {
        let (x, y) = position[id];
        let unauthenticated = id.starts_with("unauthenticated:");
        let fill = if unauthenticated {
            "#ffe0b2"
        } else {
            "#e3f2fd"
        };
        let _ = write!(
            svg,
            "<g class=\"node\" data-id=\"{}\"><circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"20\" fill=\"{fill}\" stroke=\"#1565c0\" stroke-width=\"2\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text><title>{}</title></g>",
            escape(id),
            y + 38.0,
            escape(label(id)),
            escape(id),
        );
    }
    svg.push_str("</svg>");
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>body{{font-family:sans-serif;margin:24px;color:#222}}svg text{{font-size:12px}}\
         table{{border-collapse:collapse}}td,th{{padding:2px 10px;text-align:left}}\
         .legend span{{display:inline-block;width:36px;height:0;margin-right:6px;vertical-align:middle}}</style></head>\
         <body><h1>{}</h1><p id=\"window\">Usage since {} (Unix seconds); policy version {}. \
         {} identities, {} edges.</p>\
         <p class=\"legend\"><span style=\"border-top:3px solid #444\"></span>allowed calls (width: count) \
         <span style=\"border-top:3px solid #c62828\"></span>denied attempts \
         <span style=\"border-top:2px dashed #888\"></span>allowed by the policies, never used</p>\n{svg}\n",
        escape(title),
        escape(title),
        report.since,
        escape(&report.policy_version),
        nodes.len(),
        edges.len(),
    );
    page.push_str(
        "<h2>Per identity</h2><table id=\"summary\"><tr><th>identity</th><th>summary</th></tr>",
    );
    for i in &report.identities {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td></tr>",
            escape(&i.identity),
            escape(&i.summary)
        );
    }
    page.push_str("</table></body></html>\n");
    page
}
