//! `gate-platform report flow --site S --day D`: entries and exits of one
//! site and local day from the `flows_hourly` view, as a table per hour,
//! gate and category with totals, and optionally the day's curve as SVG
//! (plotters' SVG backend: text stays text, no fonts needed).

use std::path::Path;

use deadpool_postgres::Pool;
use plotters::prelude::*;

use crate::db::DbError;

/// One row of the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRow {
    pub hour: u32,
    pub gate_id: String,
    pub category: String,
    pub entries: i64,
    pub exits: i64,
}

/// Checks `YYYY-MM-DD`.
pub fn parse_day(day: &str) -> Result<(i32, u32, u32), String> {
    let bad = || format!("bad request: --day {day:?} is not a date YYYY-MM-DD");
    let parts: Vec<&str> = day.split('-').collect();
    let [y, m, d] = parts.as_slice() else { return Err(bad()) };
    let (y, m, d) = (
        y.parse::<i32>().map_err(|_| bad())?,
        m.parse::<u32>().map_err(|_| bad())?,
        d.parse::<u32>().map_err(|_| bad())?,
    );
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if day.len() != 10 || !(1..=12).contains(&m) || d == 0 || d > days[(m - 1) as usize] {
        return Err(bad());
    }
    Ok((y, m, d))
}

pub async fn rows(pool: &Pool, site: &str, day: &str) -> Result<Vec<FlowRow>, DbError> {
    parse_day(day).map_err(DbError::Invalid)?;
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT extract(hour FROM local_hour)::int, gate_id, category, entries, exits FROM flows_hourly
             WHERE site_id = $1 AND local_hour >= $2::text::date AND local_hour < $2::text::date + 1
             ORDER BY 1, 2, 3",
            &[&site, &day],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| FlowRow {
            hour: r.get::<_, i32>(0) as u32,
            gate_id: r.get(1),
            category: r.get(2),
            entries: r.get(3),
            exits: r.get(4),
        })
        .collect())
}

/// The table, with a total line.
pub fn table(site: &str, day: &str, rows: &[FlowRow]) -> String {
    let mut out = format!("flows of {site} on {day} (local time)\n");
    out.push_str(&format!("{:<6} {:<12} {:<10} {:>8} {:>8}\n", "HOUR", "GATE", "CATEGORY", "ENTRIES", "EXITS"));
    for r in rows {
        out.push_str(&format!(
            "{:02}:00  {:<12} {:<10} {:>8} {:>8}\n",
            r.hour, r.gate_id, r.category, r.entries, r.exits
        ));
    }
    let (e, x) = rows.iter().fold((0, 0), |(e, x), r| (e + r.entries, x + r.exits));
    out.push_str(&format!("{:<6} {:<12} {:<10} {:>8} {:>8}\n", "total", "", "", e, x));
    out
}

/// Entries and exits per hour (0..24), all gates and categories.
pub fn hourly(rows: &[FlowRow]) -> [(i64, i64); 24] {
    let mut by_hour = [(0, 0); 24];
    for r in rows {
        if let Some(slot) = by_hour.get_mut(r.hour as usize) {
            slot.0 += r.entries;
            slot.1 += r.exits;
        }
    }
    by_hour
}

/// Draws the day's entries and exits per hour into `path`.
pub fn svg(path: &Path, site: &str, day: &str, rows: &[FlowRow]) -> Result<(), String> {
    let by_hour = hourly(rows);
    let top = by_hour.iter().map(|&(e, x)| e.max(x)).max().unwrap_or(0).max(1);
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    let draw = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{site} {day}: entries and exits per hour"), ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0u32..23u32, 0i64..top + top / 10 + 1)
        .map_err(|e| draw(&e))?;
    chart.configure_mesh().x_desc("hour (local)").y_desc("people").x_labels(24).draw().map_err(|e| draw(&e))?;
    let entries: Vec<(u32, i64)> = (0..24).map(|h| (h as u32, by_hour[h].0)).collect();
    let exits: Vec<(u32, i64)> = (0..24).map(|h| (h as u32, by_hour[h].1)).collect();
    for (name, colour, points) in [("entries", BLUE, entries), ("exits", RED, exits)] {
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(|e| draw(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart.configure_series_labels().border_style(BLACK).draw().map_err(|e| draw(&e))?;
    root.present().map_err(|e| draw(&e))?;
    Ok(())
}

pub async fn flow(pool: &Pool, site: &str, day: &str, svg_path: Option<&Path>) -> Result<(), String> {
    parse_day(day)?;
    crate::db::migrate(pool).await.map_err(|e| e.to_string())?;
    let rows = rows(pool, site, day).await.map_err(|e| e.to_string())?;
    print!("{}", table(site, day, &rows));
    if let Some(path) = svg_path {
        svg(path, site, day, &rows)?;
        println!("curve written to {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(hour: u32, gate: &str, entries: i64, exits: i64) -> FlowRow {
        FlowRow { hour, gate_id: gate.into(), category: "resident".into(), entries, exits }
    }

    #[test]
    fn days_are_checked() {
        assert_eq!(parse_day("2026-02-28"), Ok((2026, 2, 28)));
        assert!(parse_day("2026-02-29").is_err());
        assert!(parse_day("2024-02-29").is_ok());
        assert!(parse_day("2026-13-01").is_err());
        assert!(parse_day("26-1-1").is_err());
    }

    #[test]
    fn hours_sum_over_gates_and_the_svg_names_them() {
        let rows = [row(7, "east-1", 3, 1), row(7, "west-1", 2, 0), row(18, "east-1", 0, 4)];
        let h = hourly(&rows);
        assert_eq!((h[7], h[18], h[0]), ((5, 1), (0, 4), (0, 0)));
        let text = table("s", "2026-12-02", &rows);
        assert!(text.lines().last().is_some_and(|l| l.ends_with("5        5")), "{text}");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("flow.svg");
        svg(&path, "s", "2026-12-02", &rows).expect("drawn");
        let svg = std::fs::read_to_string(&path).expect("written");
        assert!(svg.starts_with("<svg") && svg.contains("entries") && svg.contains("<polyline"), "{svg:.300}");
    }
}
