//! Charts of runs: takes loaded `Run`s, gives one line chart per quantity (rewards per term,
//! lambda, c and i per key, KL, loss, probe accuracy) as PNG and/or SVG files, every run's
//! series overlaid on the same axes and labelled with the run's name.
//!
//! Text is drawn with plotters' `ab_glyph` feature from DejaVu Sans compiled into the binary
//! (the `dejavu` crate), so charts render the same on a machine with no fonts and no fontconfig.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::metrics::{Run, Series};

/// Which files each chart is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    Svg,
    Both,
}

impl Format {
    fn extensions(self) -> &'static [&'static str] {
        match self {
            Format::Png => &["png"],
            Format::Svg => &["svg"],
            Format::Both => &["png", "svg"],
        }
    }
}

/// One chart: the file stem, its title, the y axis and how to find its series in a run.
struct Chart {
    stem: &'static str,
    title: &'static str,
    y: &'static str,
    series: fn(&Run) -> &Series,
    /// Probes are logged every few steps only, so their points are marked.
    points: bool,
}

const CHARTS: &[Chart] = &[
    Chart {
        stem: "rewards",
        title: "Mean reward per term",
        y: "reward",
        series: |r| &r.rewards,
        points: false,
    },
    Chart {
        stem: "lambda",
        title: "Weight lambda per key (as applied)",
        y: "lambda",
        series: |r| &r.lambda,
        points: false,
    },
    Chart {
        stem: "convergence",
        title: "Convergence c per key",
        y: "c",
        series: |r| &r.convergence,
        points: false,
    },
    Chart {
        stem: "instability",
        title: "Instability i per key",
        y: "i",
        series: |r| &r.instability,
        points: false,
    },
    Chart {
        stem: "kl",
        title: "KL to the reference model",
        y: "KL",
        series: |r| &r.kl,
        points: false,
    },
    Chart {
        stem: "loss",
        title: "Loss",
        y: "loss",
        series: |r| &r.loss,
        points: false,
    },
    Chart {
        stem: "probes",
        title: "Probe accuracy",
        y: "accuracy",
        series: |r| &r.probes,
        points: true,
    },
];

const SIZE: (u32, u32) = (1000, 560);

/// Line colours, cycled: matplotlib's "tab10", chosen to stay apart from each other and readable
/// on white (plotters' own palette starts with a pale yellow).
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
const FONT: &str = "sans-serif";

/// One labelled line of a chart.
struct Line<'a> {
    label: String,
    points: &'a [(u64, f64)],
}

/// Writes every chart that has data into `out` and returns the paths written, in chart order.
pub fn write_charts(runs: &[Run], out: &Path, format: Format) -> Result<Vec<PathBuf>, String> {
    register_font()?;
    let mut written = Vec::new();
    for chart in CHARTS {
        let lines = lines(chart, runs);
        if lines.is_empty() {
            continue;
        }
        for ext in format.extensions() {
            let path = out.join(format!("{}.{ext}", chart.stem));
            let drawn = match *ext {
                "png" => draw(
                    BitMapBackend::new(&path, SIZE).into_drawing_area(),
                    chart,
                    &lines,
                ),
                _ => draw(
                    SVGBackend::new(&path, SIZE).into_drawing_area(),
                    chart,
                    &lines,
                ),
            };
            drawn.map_err(|e| format!("cannot draw `{}`: {e}", path.display()))?;
            written.push(path);
        }
    }
    Ok(written)
}

/// The chart's lines: each run's series, named `run: series` when several runs share the chart.
fn lines<'a>(chart: &Chart, runs: &'a [Run]) -> Vec<Line<'a>> {
    let mut lines = Vec::new();
    for run in runs {
        for (name, points) in (chart.series)(run) {
            let label = if runs.len() == 1 {
                name.clone()
            } else {
                format!("{}: {name}", run.label)
            };
            lines.push(Line { label, points });
        }
    }
    lines
}

fn register_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
                .map_err(|_| "internal error, please report: the embedded font is invalid".into())
        })
        .clone()
}

/// The axes' ranges: every point inside, a little room around flat or single-point data.
fn bounds(lines: &[Line]) -> ((u64, u64), (f64, f64)) {
    let all = || lines.iter().flat_map(|l| l.points.iter());
    let (mut x0, mut x1) = (u64::MAX, 0);
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x1 <= x0 {
        x1 = x0 + 1;
    }
    let pad = if y1 > y0 {
        (y1 - y0) * 0.05
    } else {
        y0.abs().max(1.0) * 0.1
    };
    ((x0, x1), (y0 - pad, y1 + pad))
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    chart: &Chart,
    lines: &[Line],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let ((x0, x1), (y0, y1)) = bounds(lines);
    let mut c = ChartBuilder::on(&root)
        .caption(chart.title, (FONT, 22))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    c.configure_mesh()
        .x_desc("step")
        .y_desc(chart.y)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()
        .map_err(err)?;
    for (i, line) in lines.iter().enumerate() {
        let color = COLOURS[i % COLOURS.len()];
        let points = line.points.iter().copied();
        c.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(line.label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        if chart.points {
            c.draw_series(points.map(|p| Circle::new(p, 3, color.filled())))
                .map_err(err)?;
        }
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}
