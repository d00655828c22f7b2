//! Turning runs into tables (median and min–max over repetitions, ratio
//! against the best peer), the issue's targets, an SVG chart and
//! docs/benchmarks.md.

use std::fmt::Write as _;

use serde_json::Value;

use crate::libs::Lib;
use crate::orchestrate::{VariantResult, thousands};
use crate::scenarios::{FleetSend, Scenario};

/// One reported number of a scenario.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Metric {
    pub(crate) key: &'static str,
    pub(crate) label: &'static str,
    /// Lower is better (a cost) or higher is better (a rate).
    pub(crate) lower_better: bool,
}

const fn m(key: &'static str, label: &'static str, lower_better: bool) -> Metric {
    Metric {
        key,
        label,
        lower_better,
    }
}

const IDLE: &[Metric] = &[
    m("heap_per_conn", "heap B/conn", true),
    m("rss_per_conn", "RSS B/conn", true),
];
const ECHO_SMALL: &[Metric] = &[
    m("msgs_per_s", "round trips/s", false),
    m("cpu_s_per_million", "client CPU s per 1M", true),
];
const ECHO_LARGE: &[Metric] = &[
    m("mb_per_s", "MB/s", false),
    m("cpu_s_per_gb", "client CPU s per GB", true),
];
const CONNECT: &[Metric] = &[
    m("handshakes_per_s", "handshakes/s", false),
    m("cpu_us_per_handshake", "client CPU µs per handshake", true),
];
const FLEET: &[Metric] = &[
    m("ramp_s", "ramp s", true),
    m("heap_per_conn", "idle heap B/conn", true),
    m("rss_per_conn", "idle RSS B/conn", true),
    m("rss_total_mb", "idle process RSS MB", true),
    m("echo_msgs_per_s", "echo msgs/s", false),
    m("echo_cpu_s_per_million", "echo CPU s per 1M", true),
    m("rss_total_busy_mb", "process RSS after echo MB", true),
];

pub(crate) fn metrics(s: Scenario) -> &'static [Metric] {
    match s {
        Scenario::Idle => IDLE,
        Scenario::EchoSmall => ECHO_SMALL,
        Scenario::EchoLarge => ECHO_LARGE,
        Scenario::Connect => CONNECT,
        Scenario::Fleet => FLEET,
    }
}

/// A one-line summary of a run, for progress output.
pub(crate) fn summary(s: Scenario, r: &Value) -> String {
    if let Some(e) = r.get("error") {
        return format!("ERROR {e}");
    }
    let mut out = String::new();
    for mt in metrics(s) {
        if let Some(x) = r.get(mt.key).and_then(Value::as_f64) {
            let _ = write!(out, "{} {}  ", mt.label, fmt_num(x));
        }
    }
    for k in ["failed", "first_error"] {
        if let Some(x) = r.get(k).filter(|x| !x.is_null() && x.as_u64() != Some(0)) {
            let _ = write!(out, "{k} {x}  ");
        }
    }
    out
}

/// Median, min, max of the successful runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stat {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

pub(crate) fn stat(runs: &[Value], key: &str) -> Option<Stat> {
    let mut xs: Vec<f64> = runs
        .iter()
        .filter(|r| r.get("error").is_none())
        .filter_map(|r| r.get(key).and_then(Value::as_f64))
        .filter(|x| x.is_finite())
        .collect();
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    let median = if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    };
    Some(Stat {
        median,
        min: xs[0],
        max: xs[n - 1],
    })
}

pub(crate) fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a >= 100_000.0 {
        thousands(x.round() as u64)
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// The best peer's (not wsfleet's) median of a metric in a variant.
pub(crate) fn best_peer(v: &VariantResult, mt: &Metric) -> Option<(Lib, f64)> {
    v.runs
        .iter()
        .filter(|(l, _)| *l != Lib::Wsfleet)
        .filter_map(|(l, runs)| stat(runs, mt.key).map(|s| (*l, s.median)))
        .reduce(|a, b| {
            let b_better = if mt.lower_better {
                b.1 < a.1
            } else {
                b.1 > a.1
            };
            if b_better { b } else { a }
        })
}

pub(crate) fn median_of(v: &VariantResult, lib: Lib, key: &str) -> Option<f64> {
    v.runs
        .iter()
        .find(|(l, _)| *l == lib)
        .and_then(|(_, runs)| stat(runs, key))
        .map(|s| s.median)
}

/// Markdown tables, one per variant.
pub(crate) fn tables(results: &[VariantResult]) -> String {
    let mut out = String::new();
    for v in results {
        let ms = metrics(v.variant.scenario);
        let peers = v.runs.len() > 1;
        let _ = writeln!(out, "### {}\n", v.variant.title);
        let mut head = String::from("| client |");
        let mut rule = String::from("|---|");
        for mt in ms {
            let arrow = if mt.lower_better { "↓" } else { "↑" };
            let _ = write!(head, " {} {arrow} median [min–max] |", mt.label);
            rule.push_str("---:|");
            if peers {
                head.push_str(" × best peer |");
                rule.push_str("---:|");
            }
        }
        let _ = writeln!(out, "{head}\n{rule}");
        for (lib, runs) in &v.runs {
            let mut row = format!("| {} |", lib.display());
            let errors: Vec<&str> = runs
                .iter()
                .filter_map(|r| r.get("error").and_then(Value::as_str))
                .collect();
            for mt in ms {
                match stat(runs, mt.key) {
                    Some(s) => {
                        let _ = write!(
                            row,
                            " {} [{}–{}] |",
                            fmt_num(s.median),
                            fmt_num(s.min),
                            fmt_num(s.max)
                        );
                        if peers {
                            match best_peer(v, mt) {
                                Some((_, b)) if b > 0.0 => {
                                    let _ = write!(row, " {:.2}× |", s.median / b);
                                }
                                _ => row.push_str(" – |"),
                            }
                        }
                    }
                    None => {
                        row.push_str(" failed |");
                        if peers {
                            row.push_str(" – |");
                        }
                    }
                }
            }
            let _ = writeln!(out, "{row}");
            if !errors.is_empty() {
                let _ = writeln!(
                    out,
                    "| ↳ {} of {} runs failed: {} |",
                    errors.len(),
                    runs.len(),
                    errors[0].replace('|', "/")
                );
            }
        }
        let notes = notes(v);
        if !notes.is_empty() {
            let _ = writeln!(out, "\n{notes}");
        }
        out.push('\n');
    }
    out
}

/// Footnotes: failed connections, sizes, a successful-run count below reps.
fn notes(v: &VariantResult) -> String {
    let mut out = String::new();
    for (lib, runs) in &v.runs {
        let failed: u64 = runs
            .iter()
            .filter_map(|r| r.get("failed").and_then(Value::as_u64))
            .sum();
        if failed > 0 {
            let first = runs
                .iter()
                .find_map(|r| r.get("first_error").and_then(Value::as_str))
                .unwrap_or("");
            let _ = writeln!(
                out,
                "- {}: {failed} connection attempts failed over all runs ({first})",
                lib.display()
            );
        }
    }
    if v.variant.scenario == Scenario::EchoLarge {
        let faults: Vec<String> = v
            .runs
            .iter()
            .filter_map(|(l, runs)| {
                stat(runs, "minor_faults_per_mb")
                    .map(|s| format!("{} {}", l.display(), fmt_num(s.median)))
            })
            .collect();
        let _ = writeln!(
            out,
            "- minor page faults per MB echoed (fresh memory touched; median): {}",
            faults.join(", ")
        );
    }
    if v.variant.scenario == Scenario::Idle {
        let sizes: Vec<String> = v
            .runs
            .iter()
            .filter_map(|(l, runs)| {
                let r = runs.iter().find(|r| r.get("conn_size_of").is_some())?;
                let get = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
                Some(format!(
                    "{} {} / {} / {} B",
                    l.display(),
                    get("conn_size_of"),
                    get("recv_future_size"),
                    get("task_future_size")
                ))
            })
            .collect();
        let _ = writeln!(
            out,
            "- sizes of the connection value / one pending `recv` future / the idle task's future \
             (all inline in the task's heap cell, so counted above): {}",
            sizes.join(", ")
        );
    }
    out
}

/// One issue target: what, the measured value, the bar, and whether it holds.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) what: String,
    pub(crate) measured: String,
    pub(crate) holds: Option<bool>,
}

fn find(results: &[VariantResult], s: Scenario, pick: usize) -> Option<&VariantResult> {
    results.iter().filter(|v| v.variant.scenario == s).nth(pick)
}

fn find_last(results: &[VariantResult], s: Scenario) -> Option<&VariantResult> {
    results.iter().rfind(|v| v.variant.scenario == s)
}

/// The issue's targets, evaluated on these results (the largest idle N, the
/// fleet at whatever N was run: the bar is for 10,000).
pub(crate) fn targets(results: &[VariantResult]) -> Vec<Target> {
    let mut t = Vec::new();
    let cost_vs_peer = |v: &VariantResult, key: &str| -> Option<(f64, Lib, f64)> {
        let mt = metrics(v.variant.scenario)
            .iter()
            .find(|m| m.key == key)
            .copied()?;
        let w = median_of(v, Lib::Wsfleet, key)?;
        let (lib, b) = best_peer(v, &mt)?;
        Some((w, lib, b))
    };
    if let Some(v) = find_last(results, Scenario::Idle)
        && let Some((w, lib, b)) = cost_vs_peer(v, "heap_per_conn")
    {
        t.push(Target {
            what: format!(
                "idle heap ≤ 2 KiB/conn and ≥ 4.5× leaner than the best peer ({})",
                v.variant.title
            ),
            measured: format!(
                "{} B/conn; best peer {} {} B/conn = {:.1}× wsfleet",
                fmt_num(w),
                lib.display(),
                fmt_num(b),
                b / w.max(1.0)
            ),
            holds: Some(w <= 2048.0 && b / w.max(1.0) >= 4.5),
        });
    }
    if let Some(v) = find(results, Scenario::EchoSmall, 0)
        && let Some((w, lib, b)) = cost_vs_peer(v, "cpu_s_per_million")
    {
        t.push(Target {
            what: "small echo: client CPU per round trip ≤ 1/1.3 of the best peer's".into(),
            measured: format!(
                "{} s per 1M; best peer {} {} = {:.2}× wsfleet (needs ≥ 1.30×)",
                fmt_num(w),
                lib.display(),
                fmt_num(b),
                b / w
            ),
            holds: Some(w * 1.3 <= b),
        });
    }
    for i in 0..2 {
        if let Some(v) = find(results, Scenario::EchoLarge, i)
            && let Some((w, lib, b)) = cost_vs_peer(v, "cpu_s_per_gb")
        {
            let size = if i == 0 { "1 MiB" } else { "16 MiB" };
            t.push(Target {
                what: format!("{size} echo: client CPU per GB ≤ the best peer's"),
                measured: format!(
                    "{} s/GB; best peer {} {} s/GB ({:.2}×)",
                    fmt_num(w),
                    lib.display(),
                    fmt_num(b),
                    w / b
                ),
                holds: Some(w <= b),
            });
        }
    }
    if let Some(v) = find(results, Scenario::Connect, 0)
        && let Some((w, lib, b)) = cost_vs_peer(v, "cpu_us_per_handshake")
    {
        t.push(Target {
            what: "handshake: client CPU ≤ the best peer's".into(),
            measured: format!(
                "{} µs; best peer {} {} µs ({:.2}×)",
                fmt_num(w),
                lib.display(),
                fmt_num(b),
                w / b
            ),
            holds: Some(w <= b),
        });
    }
    if let Some(v) = find(results, Scenario::Fleet, 0) {
        let idle = median_of(v, Lib::Wsfleet, "rss_total_mb");
        let busy = median_of(v, Lib::Wsfleet, "rss_total_busy_mb");
        let n = v
            .runs
            .first()
            .and_then(|(_, r)| r.first())
            .and_then(|r| r.get("n"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if let (Some(idle), Some(busy)) = (idle, busy) {
            let worst = idle.max(busy);
            t.push(Target {
                what: "fleet of 10,000: process RSS ≤ 60 MB".into(),
                measured: format!(
                    "{} connections: {} MB idle, {} MB after echoing",
                    thousands(n),
                    fmt_num(idle),
                    fmt_num(busy)
                ),
                holds: (n >= 10_000).then_some(worst <= 60.0),
            });
        }
    }
    t
}

pub(crate) fn targets_table(ts: &[Target]) -> String {
    let mut out = String::from("| target | measured | holds |\n|---|---|---|\n");
    for t in ts {
        let h = match t.holds {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "n/a (smaller N than the target's)",
        };
        let _ = writeln!(out, "| {} | {} | {h} |", t.what, t.measured);
    }
    out
}

/// The bars of the chart: per metric, each client's median relative to the
/// best peer, as a cost (1.0 = best peer, lower is better; rates inverted).
fn chart_rows(results: &[VariantResult]) -> Vec<(String, Vec<(Lib, f64)>)> {
    let mut rows = Vec::new();
    let mut add = |v: &VariantResult, key: &str, label: String| {
        let Some(mt) = metrics(v.variant.scenario).iter().find(|m| m.key == key) else {
            return;
        };
        let Some((_, best)) = best_peer(v, mt) else {
            return;
        };
        let bars: Vec<(Lib, f64)> = v
            .runs
            .iter()
            .filter_map(|(l, runs)| {
                let s = stat(runs, key)?;
                let r = if mt.lower_better {
                    s.median / best
                } else {
                    best / s.median
                };
                Some((*l, r))
            })
            .collect();
        if !bars.is_empty() {
            rows.push((label, bars));
        }
    };
    for v in results {
        match v.variant.scenario {
            Scenario::Idle => {
                let n = v.variant.title.trim_start_matches("idle, ");
                add(v, "heap_per_conn", format!("idle heap/conn ({n})"));
                add(v, "rss_per_conn", format!("idle RSS/conn ({n})"));
            }
            Scenario::EchoSmall => {
                let n = thousands(
                    arg_value(v, "--n")
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0),
                );
                add(
                    v,
                    "cpu_s_per_million",
                    format!("echo-small CPU/round trip (N = {n})"),
                );
                add(
                    v,
                    "msgs_per_s",
                    format!("echo-small time/round trip (N = {n})"),
                );
            }
            Scenario::EchoLarge => {
                let size = if v.variant.title.contains("16 MiB") {
                    "16 MiB"
                } else {
                    "1 MiB"
                };
                add(v, "cpu_s_per_gb", format!("echo-large {size} CPU/GB"));
                add(v, "mb_per_s", format!("echo-large {size} time/GB"));
            }
            Scenario::Connect => {
                add(v, "cpu_us_per_handshake", "connect CPU/handshake".into());
                add(v, "handshakes_per_s", "connect time/handshake".into());
            }
            Scenario::Fleet => {}
        }
    }
    rows
}

fn color(l: Lib) -> &'static str {
    match l {
        Lib::Wsfleet => "#1f77b4",
        Lib::Tungstenite => "#ff7f0e",
        Lib::Fastwebsockets => "#2ca02c",
        Lib::TokioWebsockets => "#9467bd",
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A horizontal bar chart of cost relative to the best peer (log scale from
/// 1/8× to 64×), hand-written SVG.
pub(crate) fn svg(results: &[VariantResult]) -> String {
    let rows = chart_rows(results);
    let (label_w, plot_w, bar_h, gap, top) = (230.0, 560.0, 11.0, 12.0, 84.0);
    let (lo, hi) = (-3.0f64, 5.0f64); // log2 range: 1/8× .. 32×
    let x_of = |r: f64| label_w + (r.log2().clamp(lo, hi) - lo) / (hi - lo) * plot_w;
    let nbars: usize = rows.iter().map(|(_, b)| b.len()).sum();
    let height = top + nbars as f64 * bar_h + rows.len() as f64 * gap + 40.0;
    let width = label_w + plot_w + 70.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="18" font-size="14" font-weight="bold">wsfleet-bench: cost relative to the best peer (lower is better, log scale)</text>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="34">1× = best median of tokio-tungstenite, fastwebsockets, tokio-websockets; "time/…" rows are inverted rates</text>"#
    );
    let mut lx = 10.0;
    for l in Lib::ALL {
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="46" width="12" height="12" fill="{}"/><text x="{}" y="56">{}</text>"#,
            color(l),
            lx + 16.0,
            l.display()
        );
        lx += 150.0;
    }
    let axis_bottom = height - 30.0;
    for e in lo as i32..=hi as i32 {
        let r = 2f64.powi(e);
        let x = x_of(r);
        let label = if e < 0 {
            format!("1/{}×", 1 << -e)
        } else {
            format!("{}×", 1 << e)
        };
        let stroke = if e == 0 { "#000" } else { "#ddd" };
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{axis_bottom}" stroke="{stroke}"/><text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"#,
            top - 8.0,
            axis_bottom + 14.0
        );
    }
    let mut y = top;
    for (label, bars) in &rows {
        let group_h = bars.len() as f64 * bar_h;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            label_w - 8.0,
            y + group_h / 2.0 + 4.0,
            xml_escape(label)
        );
        for (lib, r) in bars {
            let x0 = x_of(1.0);
            let x1 = x_of(*r);
            let (x, w) = if x1 >= x0 {
                (x0, x1 - x0)
            } else {
                (x1, x0 - x1)
            };
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {r:.2}×</title></rect><text x="{:.1}" y="{:.1}" font-size="9">{r:.2}×</text>"#,
                w.max(1.0),
                bar_h - 2.0,
                color(*lib),
                lib.display(),
                x1.max(x0) + 3.0,
                y + bar_h - 3.0
            );
            y += bar_h;
        }
        y += gap;
    }
    s.push_str("</svg>\n");
    s
}

/// Where and when it ran.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    pub(crate) cpu: String,
    pub(crate) ncpus: usize,
    pub(crate) mem_gib: f64,
    pub(crate) kernel: String,
    pub(crate) rustc: String,
    pub(crate) revision: String,
    pub(crate) load_before: String,
    pub(crate) load_after: String,
    pub(crate) nofile: u64,
    pub(crate) server: &'static str,
    pub(crate) quick: bool,
    pub(crate) reps: usize,
    pub(crate) wall_s: f64,
}

const METHOD: &str = include_str!("method.md");

/// The value of `--flag` in a variant's client arguments.
fn arg_value<'a>(v: &'a VariantResult, flag: &str) -> Option<&'a str> {
    let args = &v.variant.args;
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).map(String::as_str)
}

/// Client CPU per echo at each fleet size, one message in flight per
/// connection: this run's fleet rows, bare connections (echo-small) for
/// scale, and the multi-process run of `scripts/scale` (`docs/scale.json`)
/// when there is one. Empty without fleet rows.
pub(crate) fn per_size(results: &[VariantResult], scale: Option<&Value>) -> String {
    let fleets: Vec<(u64, FleetSend, f64)> = results
        .iter()
        .filter(|v| v.variant.scenario == Scenario::Fleet)
        .filter(|v| arg_value(v, "--in-flight") == Some("1"))
        .filter_map(|v| {
            let n = arg_value(v, "--n")?.parse().ok()?;
            let send = arg_value(v, "--send")
                .and_then(|s| <FleetSend as clap::ValueEnum>::from_str(s, false).ok())
                .unwrap_or(FleetSend::Any);
            let cpu = median_of(v, Lib::Wsfleet, "echo_cpu_s_per_million")?;
            Some((n, send, cpu))
        })
        .collect();
    if fleets.len() < 2 {
        return String::new();
    }
    let base = |send: FleetSend| {
        fleets
            .iter()
            .filter(|(_, s, _)| *s == send)
            .min_by_key(|(n, _, _)| *n)
            .map(|&(n, _, cpu)| (n, cpu))
    };
    // Bare connections (echo-small), one in flight each: (size, variant).
    let mut bare: Vec<(u64, &VariantResult)> = results
        .iter()
        .filter(|v| v.variant.scenario == Scenario::EchoSmall)
        .filter_map(|v| Some((arg_value(v, "--n")?.parse().ok()?, v)))
        .collect();
    bare.sort_by_key(|&(n, _)| n);
    let bare_wsfleet = |n: u64| {
        bare.iter()
            .find(|&&(b, _)| b == n)
            .and_then(|&(_, v)| median_of(v, Lib::Wsfleet, "cpu_s_per_million"))
    };
    let mut out = String::from(
        "## Cost per message by fleet size\n\n\
         Client CPU per echo (one 32-byte message written, its echo read), \
         with one message in flight per connection at every size, so no size \
         batches more messages per system call than another. \
         \"× smallest\" divides by the smallest fleet sent to the same way; \
         \"× bare\" by wsfleet's bare `Connection`s at the same size, which is \
         what the fleet itself adds.\n\n\
         | connections | sent through | processes | client CPU µs per echo | × smallest | × bare |\n\
         |---:|---|---|---:|---:|---:|\n",
    );
    for &(n, v) in &bare {
        if let Some(cpu) = median_of(v, Lib::Wsfleet, "cpu_s_per_million") {
            let _ = writeln!(
                out,
                "| {} | bare `Connection`s (echo-small) | 1 | {cpu:.2} | – | 1× |",
                thousands(n)
            );
        }
    }
    for &(n, send, cpu) in &fleets {
        let ratio = match base(send) {
            Some((b, bc)) if b != n && bc > 0.0 => format!("{:.2}×", cpu / bc),
            _ => "1×".into(),
        };
        let over_bare = match bare_wsfleet(n) {
            Some(b) if b > 0.0 => format!("{:.2}×", cpu / b),
            _ => "–".into(),
        };
        let _ = writeln!(
            out,
            "| {} | `Fleet::{}` | 1 | {cpu:.2} | {ratio} | {over_bare} |",
            thousands(n),
            send.method(),
        );
    }
    // The 100,000 row closes the table; its own section follows the
    // bare connections' table.
    let mut section = String::new();
    if let Some(s) = scale {
        let get = |k: &str| s.get(k).and_then(Value::as_f64);
        if let (Some(n), Some(shards), Some(cpu)) =
            (get("connections"), get("shards"), get("cpu_us_per_echo"))
        {
            let ratio = match base(FleetSend::Broadcast) {
                Some((_, bc)) if bc > 0.0 => format!("{:.2}×", cpu / bc),
                _ => "–".into(),
            };
            let _ = writeln!(
                out,
                "| {} | control API broadcast rounds (`scripts/scale`) | {shards:.0} `wsfleet run` shards | {cpu:.2} | {ratio} | – |",
                thousands(n as u64)
            );
            section = format!(
                "\n### {} connections on this machine (`scripts/scale`)\n\n\
                 Run of {} at {} (not this run: `scripts/scale --json docs/scale.json`, \
                 about 5 minutes; see [scale.md](scale.md)).\n\n\
                 | connections | processes | ramp s | RSS B/conn | idle CPU % of a core (hold s) | client CPU µs per echo | messages echoed | reconnects | fds/process (max) |\n\
                 |---:|---|---:|---:|---:|---:|---:|---:|---:|\n\
                 | {} | {shards:.0} shards + {shards:.0} echo servers | {:.1} | {} | {:.1} ({:.0}) | {cpu:.2} | {} | {:.0} | {} |\n",
                thousands(n as u64),
                s.get("date").and_then(Value::as_str).unwrap_or("?"),
                s.get("revision").and_then(Value::as_str).unwrap_or("?"),
                thousands(n as u64),
                get("ramp_s").unwrap_or(f64::NAN),
                thousands(get("rss_per_conn").unwrap_or(0.0) as u64),
                get("idle_cpu_pct").unwrap_or(f64::NAN),
                get("hold_s").unwrap_or(f64::NAN),
                thousands(get("echoed").unwrap_or(0.0) as u64),
                get("reconnects").unwrap_or(f64::NAN),
                thousands(get("fds_max").unwrap_or(0.0) as u64),
            );
        }
    }
    if bare.len() >= 2 {
        let (small, large) = (bare[0], bare[bare.len() - 1]);
        let _ = writeln!(
            out,
            "\nThe same growth without a fleet, for every library: bare connections, \
             one message in flight each (echo-small at {} and at {} connections, same \
             server, same run). Every library's cost grows with the number of \
             sockets taking turns: each one's state, in the kernel and in the \
             client, is cold in the caches by the time its turn comes.\n\n\
             | library | µs per echo, {} connections | µs per echo, {} connections | × |\n\
             |---|---:|---:|---:|",
            thousands(small.0),
            thousands(large.0),
            thousands(small.0),
            thousands(large.0),
        );
        for lib in Lib::ALL {
            let at = |v: &VariantResult| median_of(v, lib, "cpu_s_per_million");
            if let (Some(a), Some(b)) = (at(small.1), at(large.1)) {
                let _ = writeln!(
                    out,
                    "| {} | {a:.2} | {b:.2} | {:.2}× |",
                    lib.display(),
                    b / a.max(f64::MIN_POSITIVE)
                );
            }
        }
    }
    out.push_str(&section);
    out.push('\n');
    out
}

/// The whole docs/benchmarks.md.
pub(crate) fn document(results: &[VariantResult], m: &Machine, scale: Option<&Value>) -> String {
    let mut out = String::new();
    out.push_str(
        "# Benchmarks: wsfleet against tokio-tungstenite, fastwebsockets and tokio-websockets\n\n\
         This file is written by the benchmark itself: \
         `cargo run --release -p wsfleet-bench -- all --write-docs` \
         (it also draws [benchmarks.svg](benchmarks.svg)). Do not edit the tables by hand.\n\n",
    );
    out.push_str(METHOD);
    let _ = writeln!(out, "\n## Machine and run\n");
    let _ = writeln!(
        out,
        "- CPU: {} ({} logical CPUs), {:.0} GiB RAM",
        m.cpu, m.ncpus, m.mem_gib
    );
    let _ = writeln!(out, "- Linux {}, {}", m.kernel, m.rustc);
    let _ = writeln!(out, "- wsfleet measured at {}", m.revision);
    let _ = writeln!(
        out,
        "- 1-minute load average {} before the run, {} after; RLIMIT_NOFILE {} (raised to the hard limit)",
        m.load_before, m.load_after, m.nofile
    );
    let _ = writeln!(
        out,
        "- echo server: {}; {} repetitions{}; whole run {:.0} s",
        m.server,
        m.reps,
        if m.quick { " (--quick)" } else { "" },
        m.wall_s
    );
    let _ = writeln!(out, "\n## Results\n");
    out.push_str(
        "Each cell: median [min–max] over the repetitions, from this one run. \
         \"× best peer\" divides by the best median among tokio-tungstenite, fastwebsockets \
         and tokio-websockets (wsfleet excluded); ↓ marks a cost (below 1× is better), \
         ↑ a rate (above 1× is better).\n\n",
    );
    out.push_str(&tables(results));
    out.push_str(&per_size(results, scale));
    let _ = writeln!(out, "## Targets (issue 6)\n");
    out.push_str(&targets_table(&targets(results)));
    let _ = writeln!(
        out,
        "\n## Chart\n\n![cost relative to the best peer](benchmarks.svg)\n"
    );
    out.push_str(
        "Bars start at 1× (the best peer) and run left when cheaper, right when dearer; \
         \"time/…\" rows are the inverse of the measured rate.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrate::{Variant, plan};
    use serde_json::json;

    fn variant(scenario: Scenario, runs: Vec<(Lib, Vec<Value>)>) -> VariantResult {
        VariantResult {
            variant: Variant {
                scenario,
                title: "test".into(),
                args: Vec::new(),
                libs: runs.iter().map(|(l, _)| *l).collect(),
                timeout: std::time::Duration::from_secs(1),
                conns: 1,
            },
            runs,
        }
    }

    #[test]
    fn median_and_range_skip_failed_runs() {
        let runs = vec![
            json!({"x": 3.0}),
            json!({"x": 1.0}),
            json!({"error": "boom", "x": 100.0}),
            json!({"x": 2.0}),
        ];
        let s = stat(&runs, "x").unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let even = stat(&runs[..2], "x").unwrap();
        assert_eq!(even.median, 2.0);
        assert!(stat(&runs, "missing").is_none());
    }

    #[test]
    fn best_peer_excludes_wsfleet_and_respects_direction() {
        let v = variant(
            Scenario::EchoSmall,
            vec![
                (
                    Lib::Wsfleet,
                    vec![json!({"cpu_s_per_million": 1.0, "msgs_per_s": 900.0})],
                ),
                (
                    Lib::Tungstenite,
                    vec![json!({"cpu_s_per_million": 3.0, "msgs_per_s": 100.0})],
                ),
                (
                    Lib::TokioWebsockets,
                    vec![json!({"cpu_s_per_million": 2.0, "msgs_per_s": 200.0})],
                ),
            ],
        );
        let cpu = metrics(Scenario::EchoSmall)[1];
        let rate = metrics(Scenario::EchoSmall)[0];
        assert_eq!(best_peer(&v, &cpu), Some((Lib::TokioWebsockets, 2.0)));
        assert_eq!(best_peer(&v, &rate), Some((Lib::TokioWebsockets, 200.0)));
        let t = targets(&[v]);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].holds, Some(true), "2.0 / 1.0 >= 1.3");
    }

    #[test]
    fn tables_and_chart_render() {
        let v = variant(
            Scenario::Idle,
            vec![
                (
                    Lib::Wsfleet,
                    vec![json!({"heap_per_conn": 1000.0, "rss_per_conn": 2000.0})],
                ),
                (
                    Lib::Fastwebsockets,
                    vec![json!({"heap_per_conn": 9000.0, "rss_per_conn": 8000.0})],
                ),
                (Lib::TokioWebsockets, vec![json!({"error": "refused"})]),
            ],
        );
        let md = tables(std::slice::from_ref(&v));
        assert!(
            md.contains("| wsfleet | 1000 [1000–1000] | 0.11× |"),
            "{md}"
        );
        assert!(md.contains("failed"), "{md}");
        let svg = svg(&[v]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(
            svg.matches("<title>").count(),
            4,
            "two metrics, two clients"
        );
    }

    #[test]
    fn cost_per_message_by_size_divides_by_the_smallest_fleet_sent_the_same_way() {
        let fleet = |n: u64, send: &str, cpu: f64| {
            let mut v = variant(
                Scenario::Fleet,
                vec![(Lib::Wsfleet, vec![json!({"echo_cpu_s_per_million": cpu})])],
            );
            v.variant.args = ["--n", &n.to_string(), "--send", send, "--in-flight", "1"]
                .map(String::from)
                .to_vec();
            v
        };
        let results = [
            fleet(10_000, "any", 15.0),
            fleet(100, "any", 10.0),
            fleet(100, "broadcast", 8.0),
            fleet(10_000, "broadcast", 12.0),
        ];
        let scale = json!({"connections": 100000, "shards": 8, "cpu_us_per_echo": 20.0,
            "date": "2026-12-03", "revision": "abc", "ramp_s": 9.0, "rss_per_conn": 6400,
            "idle_cpu_pct": 20.0, "hold_s": 180, "echoed": 1000000, "reconnects": 0, "fds_max": 12510});
        let md = per_size(&results, Some(&scale));
        assert!(
            md.contains("| 10,000 | `Fleet::send` | 1 | 15.00 | 1.50× |"),
            "{md}"
        );
        assert!(
            md.contains("| 100 | `Fleet::send` | 1 | 10.00 | 1× |"),
            "{md}"
        );
        assert!(
            md.contains("| 10,000 | `Fleet::broadcast` | 1 | 12.00 | 1.50× |"),
            "{md}"
        );
        assert!(md.contains("| 20.00 | 2.50× |"), "{md}");
        assert!(
            md.contains("| 100,000 | 8 shards + 8 echo servers | 9.0 | 6,400 |"),
            "{md}"
        );
        // Without fleet rows to compare, nothing.
        assert!(per_size(&results[..1], Some(&scale)).is_empty());

        // Bare connections at both sizes: the fleet's own share, and every
        // library's growth.
        let bare = |n: u64, wsfleet: f64, peer: f64| {
            let mut v = variant(
                Scenario::EchoSmall,
                vec![
                    (Lib::Wsfleet, vec![json!({"cpu_s_per_million": wsfleet})]),
                    (
                        Lib::TokioWebsockets,
                        vec![json!({"cpu_s_per_million": peer})],
                    ),
                ],
            );
            v.variant.args = ["--n", &n.to_string()].map(String::from).to_vec();
            v
        };
        let mut with_bare = results.to_vec();
        with_bare.push(bare(10_000, 12.5, 14.0));
        with_bare.push(bare(100, 8.0, 7.0));
        let md = per_size(&with_bare, Some(&scale));
        assert!(
            md.contains("| 100 | bare `Connection`s (echo-small) | 1 | 8.00 | – | 1× |"),
            "{md}"
        );
        assert!(
            md.contains("| 10,000 | `Fleet::send` | 1 | 15.00 | 1.50× | 1.20× |"),
            "{md}"
        );
        assert!(
            md.contains("| 100 | `Fleet::broadcast` | 1 | 8.00 | 1× | 1.00× |"),
            "{md}"
        );
        assert!(md.contains("| wsfleet | 8.00 | 12.50 | 1.56× |"), "{md}");
        assert!(
            md.contains("| tokio-websockets | 7.00 | 14.00 | 2.00× |"),
            "{md}"
        );
    }

    #[test]
    fn quick_plan_is_small_and_full_plan_has_every_scenario() {
        let quick = plan(None, true);
        assert!(quick.iter().all(|v| v.conns <= 300));
        let full = plan(None, false);
        for s in [
            Scenario::Idle,
            Scenario::EchoSmall,
            Scenario::EchoLarge,
            Scenario::Connect,
            Scenario::Fleet,
        ] {
            assert!(full.iter().any(|v| v.scenario == s));
        }
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(999), "999");
    }
}
