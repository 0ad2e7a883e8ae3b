//! The compliance report as one HTML page (`GET /admin/compliance`):
//! rendered on the server, no script, no external asset. Its only
//! stylesheet is the inline [`CSS`], allowed by its SHA-256 in the
//! Content-Security-Policy ([`csp`]), so nothing else (an injected
//! `<style>`, `style=` attribute or `<script>`) would run even if escaping
//! failed; every dynamic string goes through [`escape`] anyway.

use std::fmt::Write as _;
use std::sync::LazyLock;

use base64::Engine as _;

use super::{Report, Scope, Status};

/// The page's stylesheet (its hash is in the CSP: change it freely, the
/// hash follows).
pub const CSS: &str = r#"
:root{--pass:#1a7f37;--warn:#9a6700;--fail:#cf222e;--ink:#1f2328;--mute:#59636e;--line:#d1d9e0;--bg:#f6f8fa}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);background:var(--bg)}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:19px;margin:32px 0 12px}
h3{font-size:16px;margin:0;flex:1}
.meta{color:var(--mute);margin:0}
.badge{display:inline-block;min-width:52px;text-align:center;padding:1px 8px;border-radius:999px;font-size:12px;font-weight:700;letter-spacing:.04em;text-transform:uppercase;color:#fff}
.badge.pass{background:var(--pass)}.badge.warn{background:var(--warn)}.badge.fail{background:var(--fail)}
.summary{display:flex;gap:12px;flex-wrap:wrap;margin:20px 0 8px}
.count{flex:1;min-width:140px;background:#fff;border:1px solid var(--line);border-left:6px solid;border-radius:8px;padding:10px 14px}
.count b{display:block;font-size:28px;line-height:1.1}
.count.pass{border-left-color:var(--pass)}.count.warn{border-left-color:var(--warn)}.count.fail{border-left-color:var(--fail)}.count.total{border-left-color:var(--ink)}
.bar{display:block;width:100%;height:12px;border-radius:6px;overflow:hidden;background:var(--line)}
.bar .pass{fill:var(--pass)}.bar .warn{fill:var(--warn)}.bar .fail{fill:var(--fail)}
table{width:100%;border-collapse:collapse;background:#fff;border:1px solid var(--line);border-radius:8px;overflow:hidden}
th,td{text-align:left;padding:7px 12px;border-bottom:1px solid var(--line);vertical-align:top}
th{background:#eef1f4;font-size:13px;color:var(--mute)}
td.n{text-align:right;font-variant-numeric:tabular-nums}
a{color:#0969da;text-decoration:none}a:hover{text-decoration:underline}
.control{background:#fff;border:1px solid var(--line);border-left:6px solid;border-radius:8px;padding:12px 16px;margin:0 0 12px}
.control.pass{border-left-color:var(--pass)}.control.warn{border-left-color:var(--warn)}.control.fail{border-left-color:var(--fail)}
.control header{display:flex;align-items:center;gap:10px}
.control code{color:var(--mute);font-size:12px}
.fw{list-style:none;padding:0;margin:8px 0;display:flex;gap:6px;flex-wrap:wrap}
.fw li{font-size:12px;background:#eef1f4;border:1px solid var(--line);border-radius:4px;padding:0 6px}
dl{margin:6px 0 0;display:grid;grid-template-columns:110px 1fr;gap:4px 12px}
dt{color:var(--mute);font-size:13px}
dd{margin:0;overflow-wrap:anywhere}
footer{color:var(--mute);font-size:13px;margin:32px 0 0}
"#;

/// The page's Content-Security-Policy: nothing but its own stylesheet.
pub fn csp() -> &'static str {
    static CSP: LazyLock<String> = LazyLock::new(|| {
        let digest = crate::model::sha256(CSS.as_bytes());
        let hash = base64::engine::general_purpose::STANDARD.encode(digest);
        format!(
            "default-src 'none'; style-src 'sha256-{hash}'; img-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
        )
    });
    &CSP
}

/// `s` safe in HTML text and in a quoted attribute.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn badge(s: Status) -> String {
    format!(r#"<span class="badge {0}">{0}</span>"#, s.as_str())
}

/// The page.
pub fn render(report: &Report) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let scope = match &report.scope {
        Scope::Tenant {
            tenant_id,
            organization_name,
        } => format!(
            "tenant {} ({})",
            escape(tenant_id),
            escape(organization_name)
        ),
        Scope::All { tenants, .. } => format!("all tenants ({tenants})"),
    };
    let _ = write!(
        h,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer"><title>costguard compliance: {scope}</title>
<style>{CSS}</style></head>
<body><main>
<h1>Compliance report</h1>
<p class="meta">Scope: {scope} · generated {at} · overall {overall}</p>
"#,
        at = escape(&report.generated_at),
        overall = badge(report.status),
    );
    let s = &report.summary;
    let _ = write!(
        h,
        r#"<section id="summary" aria-label="Summary"><div class="summary">
<div class="count pass"><b>{}</b>pass</div><div class="count warn"><b>{}</b>warn</div><div class="count fail"><b>{}</b>fail</div><div class="count total"><b>{}</b>controls</div>
</div>
"#,
        s.pass, s.warn, s.fail, s.total
    );
    // The bar's widths are SVG attributes: no style attribute is needed
    // (the CSP allows none).
    let total = s.total.max(1) as f64;
    let mut x = 0.0;
    let _ = write!(
        h,
        r#"<svg class="bar" viewBox="0 0 1000 12" preserveAspectRatio="none" role="img" aria-label="{} pass, {} warn, {} fail">"#,
        s.pass, s.warn, s.fail
    );
    for (n, class) in [(s.pass, "pass"), (s.warn, "warn"), (s.fail, "fail")] {
        let w = n as f64 / total * 1000.0;
        if n > 0 {
            let _ = write!(
                h,
                r#"<rect class="{class}" x="{x:.1}" y="0" width="{w:.1}" height="12"/>"#
            );
        }
        x += w;
    }
    h.push_str("</svg></section>\n");

    h.push_str(
        r#"<h2>Frameworks</h2>
<table><thead><tr><th>Clause</th><th>Status</th><th class="n">Pass</th><th class="n">Warn</th><th class="n">Fail</th><th>Controls</th></tr></thead><tbody>
"#,
    );
    for f in &report.frameworks {
        let links: Vec<String> = f
            .controls
            .iter()
            .map(|id| format!(r##"<a href="#c-{0}">{0}</a>"##, escape(id)))
            .collect();
        let _ = writeln!(
            h,
            r#"<tr><td>{}</td><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td>{}</td></tr>"#,
            escape(f.id),
            badge(f.status),
            f.summary.pass,
            f.summary.warn,
            f.summary.fail,
            links.join(", ")
        );
    }
    h.push_str("</tbody></table>\n<h2>Controls</h2>\n");
    for c in &report.controls {
        let fws: String = c
            .frameworks
            .iter()
            .map(|f| format!("<li>{}</li>", escape(f)))
            .collect();
        let _ = write!(
            h,
            r#"<article class="control {st}" id="c-{id}"><header>{badge}<h3>{title}</h3><code>{id}</code></header>
<ul class="fw">{fws}</ul>
<dl><dt>Evidence</dt><dd>{evidence}</dd><dt>Remediation</dt><dd>{remediation}</dd><dt>Applies to</dt><dd>{applies}</dd></dl></article>
"#,
            st = c.status.as_str(),
            id = escape(c.id),
            badge = badge(c.status),
            title = escape(c.title),
            evidence = escape(&c.evidence),
            remediation = escape(&c.remediation),
            applies = match c.applies {
                super::Applies::Deployment => "the deployment",
                super::Applies::Tenant => "each tenant",
            },
        );
    }
    h.push_str(
        r#"<footer>Computed from the live configuration and state when this page was asked for. The same report as JSON: GET /admin/v1/compliance; on the command line: costguard compliance.</footer>
</main></body></html>
"#,
    );
    h
}
