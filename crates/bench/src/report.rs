//! One row of the report, the statistics behind it, the printed table and
//! `target/bench/report.json`.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The figures, in the order of the table. `relock_spread_draining` is the
/// one extra row: issue 9's "every relock within 20 ms of unlock_ms while the
/// outbox drains", measured with `card_to_unlock_draining`.
pub const NAMES: [&str; 18] = [
    "card_to_unlock",
    "card_to_unlock_draining",
    "relock_spread_draining",
    "decisions_per_s",
    "lookup_2m",
    "lookup_10m",
    "snapshot_2m",
    "snapshot_10m",
    "outbox_drain",
    "offline_10m",
    "qr_clean",
    "qr_noisy",
    "qr_none",
    "camera_idle_cpu",
    "dcc_es256",
    "dcc_ps256",
    "rss_2m",
    "rss_10m",
];

/// One figure beside its ceiling. `value` is `None` when the figure could not
/// be measured (then `met` is false and `note` says why).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub value: Option<f64>,
    pub unit: String,
    pub ceiling_name: String,
    pub ceiling_value: Option<f64>,
    pub ratio: Option<f64>,
    pub goal: String,
    pub met: bool,
    /// Latencies: the median, in the same unit as `value` (the p99).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50: Option<f64>,
    /// Everything else measured on the way (sizes, the parts of a ceiling
    /// sum, a second ceiling, a secondary goal's figure).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Row {
    pub fn new(name: &str, value: f64, unit: &str) -> Row {
        Row {
            name: name.to_owned(),
            value: Some(value),
            unit: unit.to_owned(),
            ceiling_name: "-".to_owned(),
            ceiling_value: None,
            ratio: None,
            goal: String::new(),
            met: false,
            p50: None,
            details: BTreeMap::new(),
            note: None,
        }
    }

    /// A figure that could not be measured, and why.
    pub fn missing(name: &str, unit: &str, goal: &str, why: String) -> Row {
        let mut row = Row::new(name, 0.0, unit);
        row.value = None;
        row.goal = goal.to_owned();
        row.note = Some(why);
        row
    }

    /// Sets the ceiling and the ratio value / ceiling.
    pub fn ceiling(mut self, name: &str, value: f64) -> Row {
        self.ceiling_name = name.to_owned();
        self.ceiling_value = Some(value);
        self.ratio = self.value.filter(|_| value > 0.0).map(|v| v / value);
        self
    }

    pub fn goal(mut self, goal: &str, met: bool) -> Row {
        self.goal = goal.to_owned();
        self.met = met;
        self
    }

    pub fn p50(mut self, p50: f64) -> Row {
        self.p50 = Some(p50);
        self
    }

    pub fn detail(mut self, key: &str, value: impl Into<serde_json::Value>) -> Row {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = Some(note.into());
        self
    }
}

/// p50 and p99 (and the maximum) of a set of durations, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub count: usize,
}

impl Stats {
    /// Nearest-rank percentiles. `None` for an empty set.
    pub fn of(samples: &[Duration]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        sorted.sort_by(f64::total_cmp);
        Some(Stats {
            p50: percentile(&sorted, 0.50),
            p99: percentile(&sorted, 0.99),
            max: sorted[sorted.len() - 1],
            count: sorted.len(),
        })
    }
}

/// Nearest rank: the smallest sample with at least `q` of the samples at
/// or below it.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Rows in the table's order.
pub fn ordered(rows: &[Row]) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::with_capacity(rows.len());
    for name in NAMES {
        out.extend(rows.iter().filter(|r| r.name == name).cloned());
    }
    out.extend(rows.iter().filter(|r| !NAMES.contains(&r.name.as_str())).cloned());
    out
}

pub fn write_json(rows: &[Row], path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(&ordered(rows))?;
    // Written whole and renamed: a run stopped halfway leaves the last
    // complete report, never half a file.
    let partial = path.with_extension("json.partial");
    std::fs::write(&partial, text + "\n")?;
    std::fs::rename(&partial, path)?;
    Ok(())
}

fn number(v: Option<f64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    }
}

/// The table: figure, value, ceiling, ratio, goal, met.
pub fn table(rows: &[Row]) -> String {
    let rows = ordered(rows);
    let mut lines = vec![[
        "figure".to_owned(),
        "value".to_owned(),
        "ceiling".to_owned(),
        "ratio".to_owned(),
        "goal".to_owned(),
        "met".to_owned(),
    ]];
    for r in &rows {
        let value = match r.p50 {
            Some(p50) => format!("{} {} (p50 {})", number(r.value), r.unit, number(Some(p50))),
            None => format!("{} {}", number(r.value), r.unit),
        };
        let ceiling = match r.ceiling_value {
            Some(c) => format!("{} {}", number(Some(c)), r.ceiling_name),
            None => r.ceiling_name.clone(),
        };
        lines.push([
            r.name.clone(),
            value,
            ceiling,
            r.ratio.map_or("-".to_owned(), |x| format!("{x:.2}")),
            r.goal.clone(),
            if r.met { "yes".to_owned() } else { "NO".to_owned() },
        ]);
    }
    let widths: Vec<usize> = (0..6).map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (n, line) in lines.iter().enumerate() {
        let cells: Vec<String> =
            line.iter().zip(&widths).map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count()))).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if n == 0 {
            out.push_str(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
            out.push('\n');
        }
    }
    for r in rows.iter().filter(|r| r.note.is_some()) {
        out.push_str(&format!("{}: {}\n", r.name, r.note.as_deref().unwrap_or_default()));
    }
    out
}

/// A report as written by [`write_json`]: a list holding every figure, each
/// with every field; each measured (a `dcc_ps256` without conformance data
/// may be missing unless `conformance_required`).
pub fn check(text: &str, conformance_required: bool) -> anyhow::Result<()> {
    let rows: Vec<serde_json::Value> = serde_json::from_str(text)?;
    let mut problems = Vec::new();
    for name in NAMES {
        let Some(row) = rows.iter().find(|r| r.get("name").and_then(|n| n.as_str()) == Some(name)) else {
            problems.push(format!("{name}: absent"));
            continue;
        };
        for key in ["value", "unit", "ceiling_name", "ceiling_value", "ratio", "goal", "met"] {
            if row.get(key).is_none() {
                problems.push(format!("{name}: no `{key}`"));
            }
        }
        if !row.get("met").is_some_and(serde_json::Value::is_boolean) {
            problems.push(format!("{name}: `met` is not true or false"));
        }
        let measured = row.get("value").is_some_and(serde_json::Value::is_number);
        if !measured && (name != "dcc_ps256" || conformance_required) {
            problems.push(format!("{name}: not measured ({})", row.get("note").unwrap_or(&serde_json::Value::Null)));
        }
        if row.get("unit").and_then(|u| u.as_str()).is_some_and(|u| u.starts_with("us"))
            && measured
            && !row.get("p50").is_some_and(serde_json::Value::is_number)
            && name.starts_with("card")
        {
            problems.push(format!("{name}: a latency without its p50"));
        }
    }
    if problems.is_empty() { Ok(()) } else { anyhow::bail!("{}", problems.join("; ")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let stats = Stats::of(&samples).expect("samples");
        assert_eq!((stats.p50, stats.p99, stats.max), (50.0, 99.0, 100.0));
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn ratio_is_value_over_ceiling_and_json_has_every_field() {
        let row = Row::new("lookup_2m", 30.0, "us").ceiling("raw lookup p99", 20.0).goal("<= 1.5x", true).p50(10.0);
        assert_eq!(row.ratio, Some(1.5));
        let json = serde_json::to_value(&row).expect("json");
        for key in ["name", "value", "unit", "ceiling_name", "ceiling_value", "ratio", "goal", "met", "p50"] {
            assert!(json.get(key).is_some(), "{key} missing");
        }
        let missing = Row::missing("dcc_ps256", "us", "p99 <= 2 ms", "no sample".into());
        assert!(!missing.met && missing.value.is_none());
    }

    #[test]
    fn check_finds_an_absent_figure_and_a_missing_field() {
        let mut rows: Vec<Row> = NAMES.iter().map(|n| Row::new(n, 1.0, "s").ceiling("c", 1.0)).collect();
        let full = serde_json::to_string(&rows).expect("json");
        check(&full, true).expect("a complete report");
        rows.pop();
        let short = serde_json::to_string(&rows).expect("json");
        assert!(check(&short, true).is_err_and(|e| e.to_string().contains("rss_10m: absent")));
        let no_goal = full.replacen("\"goal\"", "\"gaol\"", 1);
        assert!(check(&no_goal, true).is_err_and(|e| e.to_string().contains("no `goal`")));
        let mut unmeasured: Vec<Row> = NAMES.iter().map(|n| Row::new(n, 1.0, "s")).collect();
        unmeasured[15] = Row::missing("dcc_ps256", "us", "p99 <= 2 ms", "no data".into());
        let text = serde_json::to_string(&unmeasured).expect("json");
        check(&text, false).expect("PS256 may be missing without the data");
        assert!(check(&text, true).is_err());
    }

    #[test]
    fn table_follows_the_issue_order() {
        let rows = vec![Row::new("rss_2m", 1.0, "MB"), Row::new("card_to_unlock", 2.0, "us")];
        let text = table(&rows);
        let first = text.find("card_to_unlock").expect("row");
        let last = text.find("rss_2m").expect("row");
        assert!(first < last);
    }
}
