//! Latency against offered load, as SVG (plotters), for BENCHMARKS.md.

use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

/// `points`: the bench loop's JSON results (`offered_per_s`, `intents_per_s`, `p50_ms`,
/// `p99_ms`).
pub fn latency_svg(path: &Path, points: &[Value]) -> Result<(), String> {
    let get = |p: &Value, k: &str| p[k].as_f64().unwrap_or(0.0);
    let xmax = points
        .iter()
        .map(|p| get(p, "offered_per_s"))
        .fold(1.0, f64::max)
        * 1.05;
    // Log scale: the knee takes latency from milliseconds to seconds.
    let ymax = points.iter().map(|p| get(p, "p99_ms")).fold(1.0, f64::max) * 1.5;
    let ymin = points
        .iter()
        .map(|p| get(p, "p50_ms"))
        .filter(|v| *v > 0.0)
        .fold(ymax, f64::min)
        / 1.5;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Mirage: one-step intent latency against offered load",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax, (ymin..ymax).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("offered intents/s")
        .y_desc("submit → finished (ms, log scale)")
        .draw()
        .map_err(|e| e.to_string())?;
    for (key, colour) in [("p50_ms", BLUE), ("p99_ms", RED)] {
        let series: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (get(p, "offered_per_s"), get(p, key)))
            .collect();
        chart
            .draw_series(LineSeries::new(series.clone(), colour.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(key.trim_end_matches("_ms"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        chart
            .draw_series(
                series
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, colour.filled())),
            )
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
