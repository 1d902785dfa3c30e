//! The throughput-latency chart of one or several runs (`--chart`, `inhaus bench plot`): three
//! panels (TTFT, TPOT, end-to-end latency, log scale) against output throughput, p50 solid and p99
//! dashed, one colour per run, each point marked with its load, the legend under the panels. SVG or PNG by the file's extension; text
//! is drawn with an embedded font, so no system font libraries are needed.
use super::report::Report;
use super::stats::{PointStats, Summary};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("{0}: the chart's file name must end in .svg or .png")]
    Format(PathBuf),
    #[error("{path}: {why}")]
    Draw { path: PathBuf, why: String },
    #[error("nothing to draw: the runs have no completed points")]
    Empty,
}

const FONT: &[u8] = include_bytes!("DejaVuSans-ascii.ttf");
const WIDTH: u32 = 1500;
const HEIGHT: u32 = 520;

struct Panel {
    title: &'static str,
    get: fn(&PointStats) -> Summary,
}

const PANELS: [Panel; 3] = [
    Panel {
        title: "TTFT (ms)",
        get: |s| s.ttft_ms,
    },
    Panel {
        title: "TPOT (ms)",
        get: |s| s.tpot_ms,
    },
    Panel {
        title: "End-to-end latency (ms)",
        get: |s| s.e2e_ms,
    },
];

/// Draws `reports` into `path` (.svg or .png).
pub fn draw(reports: &[Report], path: &Path) -> Result<(), ChartError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    // Registering the same font again replaces it; an error would only mean a broken embedded file.
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).map_err(|_| {
        ChartError::Draw {
            path: path.to_path_buf(),
            why: "embedded font unreadable".into(),
        }
    })?;
    if !reports
        .iter()
        .any(|r| r.points.iter().any(|p| p.stats.completed > 0))
    {
        return Err(ChartError::Empty);
    }
    let fail = |why: String| ChartError::Draw {
        path: path.to_path_buf(),
        why,
    };
    match ext.as_deref() {
        Some("svg") => {
            let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
            draw_on(root, reports).map_err(fail)
        }
        Some("png") => {
            let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
            draw_on(root, reports).map_err(fail)
        }
        _ => Err(ChartError::Format(path.to_path_buf())),
    }
}

fn title(reports: &[Report]) -> String {
    // Each model once, in the order the runs name them (runs of two servers interleave them).
    let mut uniq: Vec<&str> = Vec::new();
    for r in reports {
        if !uniq.contains(&r.model.as_str()) {
            uniq.push(&r.model);
        }
    }
    let workload = reports.first().map(|r| r.workload.as_str()).unwrap_or("");
    format!("{} - {workload}", uniq.join(", "))
}

/// Tableau's ten colours: distinct, and readable on white.
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Height of the legend strip under the panels: one row per two runs.
fn legend_height(runs: usize) -> u32 {
    24 * runs.div_ceil(2) as u32 + 16
}

fn draw_on<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    reports: &[Report],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let root = root
        .titled(&title(reports), ("sans-serif", 20))
        .map_err(e)?;
    let (_, height) = root.dim_in_pixel();
    let (charts, legend) =
        root.split_vertically(height.saturating_sub(legend_height(reports.len())));
    let panels = charts.split_evenly((1, PANELS.len()));
    let x_max = reports
        .iter()
        .flat_map(|r| r.points.iter().map(|p| p.stats.output_throughput))
        .fold(0.0f64, f64::max)
        * 1.1;
    let done = |r: &Report| -> Vec<_> {
        r.points
            .iter()
            .filter(|p| p.stats.completed > 0)
            .cloned()
            .collect()
    };
    for (area, panel) in panels.iter().zip(PANELS.iter()) {
        // Latencies span orders of magnitude across a sweep: a log scale shows them all.
        let values: Vec<f64> = reports
            .iter()
            .flat_map(&done)
            .flat_map(|p| {
                let s = (panel.get)(&p.stats);
                [s.p50, s.p99]
            })
            .filter(|v| *v > 0.0)
            .collect();
        let y_min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let y_max = values.iter().copied().fold(0.0f64, f64::max);
        let (y_min, y_max) = if y_min.is_finite() {
            (y_min * 0.7, (y_max * 1.4).max(y_min * 2.0))
        } else {
            (0.1, 1.0)
        };
        let mut chart = ChartBuilder::on(area)
            .caption(panel.title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max.max(1.0), (y_min..y_max).log_scale())
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("output tok/s")
            .y_desc("ms (log scale)")
            .light_line_style(RGBColor(240, 240, 240))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| {
                if *v >= 10.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.1}")
                }
            })
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(e)?;
        for (i, r) in reports.iter().enumerate() {
            let color = COLORS[i % COLORS.len()].to_rgba();
            let pts = done(r);
            let at = |v: f64| v.max(y_min);
            let p50: Vec<(f64, f64)> = pts
                .iter()
                .map(|p| (p.stats.output_throughput, at((panel.get)(&p.stats).p50)))
                .collect();
            let p99: Vec<(f64, f64)> = pts
                .iter()
                .map(|p| (p.stats.output_throughput, at((panel.get)(&p.stats).p99)))
                .collect();
            chart
                .draw_series(LineSeries::new(p50.clone(), color.stroke_width(2)))
                .map_err(e)?;
            chart
                .draw_series(p50.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(e)?;
            chart
                .draw_series(DashedLineSeries::new(
                    p99.clone(),
                    6,
                    4,
                    color.stroke_width(1),
                ))
                .map_err(e)?;
            chart
                .draw_series(
                    p99.iter()
                        .map(|&p| TriangleMarker::new(p, 4, color.filled())),
                )
                .map_err(e)?;
            chart
                .draw_series(pts.iter().zip(&p50).map(|(p, &(x, y))| {
                    // The load's label just right of and above its p50 marker.
                    EmptyElement::at((x, y))
                        + Text::new(
                            p.load.to_string(),
                            (5, -14),
                            ("sans-serif", 11).into_font().color(&color),
                        )
                }))
                .map_err(e)?;
        }
    }
    // The legend: one entry per run, two to a row, under the panels.
    let (width, _) = legend.dim_in_pixel();
    let column = (width / 2) as i32;
    for (i, r) in reports.iter().enumerate() {
        let color = COLORS[i % COLORS.len()].to_rgba();
        let x = 60 + column * (i % 2) as i32;
        let y = 12 + 24 * (i / 2) as i32;
        legend
            .draw(&PathElement::new(
                vec![(x, y), (x + 28, y)],
                color.stroke_width(2),
            ))
            .map_err(e)?;
        legend
            .draw(&Text::new(
                format!("{}: p50 solid, p99 dashed", r.label),
                (x + 36, y - 7),
                ("sans-serif", 13).into_font(),
            ))
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}
