//! The report: a folder per run with the history, the nemesis schedule, node logs, a summary and
//! an HTML page (SVG charts of throughput and latency over time with fault windows shaded, and the
//! same charts as PNG files) that opens offline.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::checker::{Violation, CHECKERS};
use crate::history::{pairs, Kind, Op};
use crate::nemesis::Window;

/// The summary of a run.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Nodes.
    pub nodes: usize,
    /// Seconds of workload.
    pub seconds: f64,
    /// Operations (invocations) in all.
    pub operations: usize,
    /// Per operation, per outcome.
    pub outcomes: BTreeMap<String, BTreeMap<String, usize>>,
    /// Fault windows.
    pub faults: usize,
    /// Workflows started (acknowledged).
    pub workflows: usize,
    /// Workflows completed after the final heal.
    pub finished: usize,
    /// Final history reads (one per workflow per node).
    pub histories_read: usize,
    /// Replica histories compared (one per workflow per replica).
    pub replicas_compared: usize,
    /// The checkers run.
    pub checkers: Vec<String>,
    /// What they found.
    pub violations: Vec<Violation>,
    /// True when nothing was found.
    pub valid: bool,
}

/// Builds the summary.
pub fn summarize(
    nodes: usize,
    ops: &[Op],
    windows: &[Window],
    violations: Vec<Violation>,
    workflows: usize,
) -> Summary {
    let ps = pairs(ops);
    let mut outcomes: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for p in &ps {
        let k = match p.done.as_ref().map(|d| d.kind) {
            Some(Kind::Ok) => "ok",
            Some(Kind::Fail) => "fail",
            _ => "info",
        };
        *outcomes.entry(p.invoke.f.clone()).or_default().entry(k.into()).or_default() += 1;
    }
    let seconds = ops.last().map(|o| o.time_ns as f64 / 1e9).unwrap_or(0.0);
    Summary {
        nodes,
        seconds,
        operations: ps.len(),
        outcomes,
        faults: windows.len(),
        workflows,
        finished: 0,
        histories_read: 0,
        replicas_compared: 0,
        checkers: CHECKERS.iter().map(|s| s.to_string()).collect(),
        valid: violations.is_empty(),
        violations,
    }
}

/// Writes the whole report into `dir`.
pub fn write(
    dir: &Path,
    ops: &[Op],
    windows: &[Window],
    summary: &Summary,
    logs: &[(u64, std::path::PathBuf)],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut h = String::new();
    for op in ops {
        h.push_str(&serde_json::to_string(op)?);
        h.push('\n');
    }
    std::fs::write(dir.join("history.jsonl"), h)?;
    let mut n = String::new();
    for w in windows {
        n.push_str(&serde_json::to_string(w)?);
        n.push('\n');
    }
    std::fs::write(dir.join("nemesis.jsonl"), n)?;
    std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(summary)?)?;
    std::fs::write(dir.join("summary.txt"), text(summary, windows))?;
    let secs = summary.seconds.ceil().max(1.0) as usize;
    let (ok, bad, p50, p99) = series(ops, secs);
    let throughput = crate::plot::chart_png(&[(&ok, [34, 170, 34]), (&bad, [204, 34, 34])], windows, secs, "ops/s");
    std::fs::write(dir.join("throughput.png"), throughput)?;
    std::fs::write(
        dir.join("latency.png"),
        crate::plot::chart_png(&[(&p50, [34, 68, 204]), (&p99, [238, 136, 0])], windows, secs, "ms"),
    )?;
    std::fs::write(dir.join("index.html"), html(ops, windows, summary))?;
    let logs_dir = dir.join("logs");
    std::fs::create_dir_all(&logs_dir)?;
    for (id, path) in logs {
        let _ = std::fs::copy(path, logs_dir.join(format!("node-{id}.log")));
    }
    Ok(())
}

/// The summary as text.
pub fn text(s: &Summary, windows: &[Window]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{} nodes, {:.0} s, {} operations, {} workflows, {} faults",
        s.nodes, s.seconds, s.operations, s.workflows, s.faults
    );
    let _ = writeln!(
        t,
        "after the heal: {} workflows completed, {} histories read through the nodes, {} replica histories compared",
        s.finished, s.histories_read, s.replicas_compared
    );
    let _ = writeln!(t, "{:<16} {:>8} {:>8} {:>8}", "operation", "ok", "fail", "info");
    for (f, by) in &s.outcomes {
        let g = |k: &str| by.get(k).copied().unwrap_or(0);
        let _ = writeln!(t, "{f:<16} {:>8} {:>8} {:>8}", g("ok"), g("fail"), g("info"));
    }
    let mut by_fault: BTreeMap<&str, usize> = BTreeMap::new();
    for w in windows {
        *by_fault.entry(&w.name).or_default() += 1;
    }
    let _ = writeln!(t, "faults: {by_fault:?}");
    let _ = writeln!(t, "checkers: {}", s.checkers.join(", "));
    if s.valid {
        let _ = writeln!(t, "valid: no violations");
    } else {
        let _ = writeln!(t, "INVALID: {} violations", s.violations.len());
        for v in s.violations.iter().take(50) {
            let _ = writeln!(t, "  [{}] {}: {} ({} ops)", v.checker, v.wf, v.detail, v.ops.len());
        }
    }
    t
}

/// Per second of the run: operations ok, operations failed or indeterminate, p50 and p99 latency
/// (ms) of the operations that completed in it.
type Series = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);

fn series(ops: &[Op], secs: usize) -> Series {
    let ps = pairs(ops);
    let mut ok = vec![0f64; secs + 1];
    let mut bad = vec![0f64; secs + 1];
    let mut lat: Vec<Vec<f64>> = vec![Vec::new(); secs + 1];
    for p in &ps {
        let Some(d) = &p.done else { continue };
        let b = ((d.time_ns / 1_000_000_000) as usize).min(secs);
        if d.kind == Kind::Ok {
            ok[b] += 1.0;
        } else {
            bad[b] += 1.0;
        }
        lat[b].push((d.time_ns.saturating_sub(p.invoke.time_ns)) as f64 / 1e6);
    }
    let pct = |v: &mut Vec<f64>, q: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() - 1) as f64 * q).round() as usize]
    };
    let p50: Vec<f64> = lat.iter().map(|v| pct(&mut v.clone(), 0.5)).collect();
    let p99: Vec<f64> = lat.iter().map(|v| pct(&mut v.clone(), 0.99)).collect();
    (ok, bad, p50, p99)
}

fn html(ops: &[Op], windows: &[Window], s: &Summary) -> String {
    let secs = s.seconds.ceil().max(1.0) as usize;
    let (ok, bad, p50, p99) = series(ops, secs);
    let mut page = String::from(
        "<!doctype html><meta charset=utf-8><title>norn-jepsen run</title>\
         <style>body{font:14px sans-serif;margin:2em}pre{background:#f6f6f6;padding:1em}</style>",
    );
    let _ = write!(page, "<h1>norn-jepsen: {}</h1>", if s.valid { "valid" } else { "INVALID" });
    let _ = write!(page, "<pre>{}</pre>", escape(&text(s, windows)));
    page.push_str("<h2>Throughput (operations/s; green ok, red fail or indeterminate)</h2>");
    page.push_str(&chart(&[(&ok, "#2a2"), (&bad, "#c22")], windows, secs, "ops/s"));
    page.push_str("<h2>Latency (ms; p50 blue, p99 orange)</h2>");
    page.push_str(&chart(&[(&p50, "#24c"), (&p99, "#e80")], windows, secs, "ms"));
    page.push_str("<h2>Faults</h2><ul>");
    for w in windows {
        let _ = write!(
            page,
            "<li>{:.1}-{:.1} s <b>{}</b>: {}</li>",
            w.start_ns as f64 / 1e9,
            w.end_ns as f64 / 1e9,
            escape(&w.name),
            escape(&w.detail)
        );
    }
    page.push_str(
        "</ul><h2>The same charts as PNG files</h2><p><img src='throughput.png' alt='throughput'><br>\
         <img src='latency.png' alt='latency'></p><p>Shaded: fault windows. Files: history.jsonl, nemesis.jsonl, \
         summary.json, throughput.png, latency.png, logs/.</p>",
    );
    page
}

fn chart(series: &[(&Vec<f64>, &str)], windows: &[Window], secs: usize, unit: &str) -> String {
    let (w, h, pad) = (900.0, 240.0, 40.0);
    let max = series.iter().flat_map(|(v, _)| v.iter().copied()).fold(1.0f64, f64::max);
    let x = |t: f64| pad + t / secs as f64 * (w - 2.0 * pad);
    let y = |v: f64| h - pad - v / max * (h - 2.0 * pad);
    let mut svg = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}'>");
    for win in windows {
        let (a, b) = (x(win.start_ns as f64 / 1e9), x(win.end_ns as f64 / 1e9));
        let _ = write!(
            svg,
            "<rect x='{a:.1}' y='{pad}' width='{:.1}' height='{:.1}' fill='#fdd' ><title>{}</title></rect>",
            (b - a).max(1.0),
            h - 2.0 * pad,
            escape(&win.name)
        );
    }
    let _ = write!(svg, "<line x1='{pad}' y1='{0}' x2='{1}' y2='{0}' stroke='#888'/>", h - pad, w - pad);
    let _ = write!(svg, "<text x='4' y='{pad}' font-size='11'>{max:.0} {unit}</text>");
    let _ = write!(svg, "<text x='{}' y='{}' font-size='11'>{secs} s</text>", w - pad - 20.0, h - pad + 14.0);
    for (v, color) in series {
        let pts: Vec<String> =
            v.iter().enumerate().map(|(i, val)| format!("{:.1},{:.1}", x(i as f64), y(*val))).collect();
        let _ = write!(svg, "<polyline fill='none' stroke='{color}' stroke-width='1.5' points='{}'/>", pts.join(" "));
    }
    svg.push_str("</svg>");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
