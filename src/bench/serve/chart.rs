//! The throughput-latency chart of one or several runs (`--chart`, `inhaus bench plot`): three
//! panels (TTFT, TPOT, end-to-end latency) against output throughput, p50 solid and p99 dashed,
//! one colour per run, each point marked with its load. SVG or PNG by the file's extension; text
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
    let models: Vec<&str> = reports.iter().map(|r| r.model.as_str()).collect();
    let mut uniq = models.clone();
    uniq.dedup();
    let workload = reports.first().map(|r| r.workload.as_str()).unwrap_or("");
    format!("{} - {workload}", uniq.join(", "))
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
    let panels = root.split_evenly((1, PANELS.len()));
    let x_max = reports
        .iter()
        .flat_map(|r| r.points.iter().map(|p| p.stats.output_throughput))
        .fold(0.0f64, f64::max)
        * 1.1;
    for (n, (area, panel)) in panels.iter().zip(PANELS.iter()).enumerate() {
        let y_max = reports
            .iter()
            .flat_map(|r| r.points.iter().map(|p| (panel.get)(&p.stats).p99))
            .fold(0.0f64, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(panel.title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max.max(1.0), 0f64..y_max.max(1.0))
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("output tok/s")
            .y_desc("ms")
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(e)?;
        for (i, r) in reports.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<_> = r.points.iter().filter(|p| p.stats.completed > 0).collect();
            let p50: Vec<(f64, f64)> = pts
                .iter()
                .map(|p| (p.stats.output_throughput, (panel.get)(&p.stats).p50))
                .collect();
            let p99: Vec<(f64, f64)> = pts
                .iter()
                .map(|p| (p.stats.output_throughput, (panel.get)(&p.stats).p99))
                .collect();
            chart
                .draw_series(LineSeries::new(p50.clone(), color.stroke_width(2)))
                .map_err(e)?
                .label(format!("{} p50", r.label))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
                });
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
                .map_err(e)?
                .label(format!("{} p99", r.label))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 8, y)], color.stroke_width(1))
                });
            chart
                .draw_series(
                    p99.iter()
                        .map(|&p| TriangleMarker::new(p, 4, color.filled())),
                )
                .map_err(e)?;
            chart
                .draw_series(pts.iter().zip(&p50).map(|(p, &(x, y))| {
                    Text::new(
                        p.load.to_string(),
                        (x, y),
                        ("sans-serif", 11).into_font().color(&color),
                    )
                }))
                .map_err(e)?;
        }
        if n == 0 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 12))
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(e)?;
        }
    }
    root.present().map_err(e)?;
    Ok(())
}
