//! Pictures: the accuracy-drop heat map of a precision-sensitivity profile.
//!
//! Drawn with `plotters` into PNG; text uses DejaVu Sans (Debian `fonts-dejavu-core`,
//! installed by `scripts/setup.sh`), registered once.
use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::{Error, Result};
use crate::profile::{AccuracyProfile, Metric};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn plot_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Profile {
        path: path.to_path_buf(),
        reason: format!("cannot draw the heat map: {e}"),
    }
}

/// Registers the font for plotters' "sans-serif" family (once per process).
pub(crate) fn register_font(path: &Path) -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT).map_err(|e| {
                format!("{FONT}: {e}; install the Debian package fonts-dejavu-core (scripts/setup.sh does)")
            })?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{FONT} is not a usable font"))
        })
        .clone()
        .map_err(|e| plot_error(path, e))
}

/// Green (no loss) through yellow to red (`max_points` or more lost).
fn drop_colour(points: f64, max_points: f64) -> RGBColor {
    let t = (points / max_points).clamp(0.0, 1.0);
    let (r, g) = if t < 0.5 {
        (2.0 * t, 1.0)
    } else {
        (1.0, 2.0 * (1.0 - t))
    };
    RGBColor((40.0 + 215.0 * r) as u8, (60.0 + 170.0 * g) as u8, 60)
}

/// The index of a segment's value (its lower edge).
fn segment(v: &SegmentValue<usize>) -> Option<usize> {
    match v {
        SegmentValue::Exact(i) | SegmentValue::CenterOf(i) => Some(*i),
        SegmentValue::Last => None,
    }
}

/// Writes a PNG heat map of the accuracy drop over split x precision.
pub fn accuracy_heatmap(p: &AccuracyProfile, path: &Path) -> Result<()> {
    register_font(path)?;
    let rows: Vec<String> = p.splits.first().map_or(vec![], |s| {
        s.entries.iter().map(|e| e.precision.to_string()).collect()
    });
    let (cols, nrows) = (p.splits.len(), rows.len());
    let width = (160 + 36 * cols as u32).max(520);
    let root = BitMapBackend::new(path, (width, 680)).into_drawing_area();
    let (plot_area, legend_area) = root.split_vertically(630);
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let metric = match p.metric {
        Metric::Accuracy => "top-1 accuracy",
        Metric::Agreement => "top-1 agreement with fp32",
    };
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(
            format!(
                "{}: drop in {metric} (points), {} inputs",
                p.model, p.inputs
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((0..cols).into_segmented(), (0..nrows).into_segmented())
        .map_err(|e| plot_error(path, e))?;
    let splits: Vec<usize> = p.splits.iter().map(|s| s.split).collect();
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("split point")
        .y_desc("bits")
        .x_labels(cols.min(25))
        .y_labels(nrows)
        .x_label_formatter(&|v| {
            segment(v)
                .and_then(|i| splits.get(i))
                .map_or(String::new(), |s| s.to_string())
        })
        .y_label_formatter(&|v| {
            segment(v)
                .and_then(|i| rows.get(i))
                .cloned()
                .unwrap_or_default()
        })
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| plot_error(path, e))?;
    let max_points = 10.0;
    chart
        .draw_series(p.splits.iter().enumerate().flat_map(|(x, s)| {
            s.entries.iter().enumerate().map(move |(y, e)| {
                let corners = [
                    (SegmentValue::Exact(x), SegmentValue::Exact(y)),
                    (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1)),
                ];
                Rectangle::new(corners, drop_colour(e.drop_points, max_points).filled())
            })
        }))
        .map_err(|e| plot_error(path, e))?;
    // A legend of the colour scale, under the chart.
    let legend = [0.0, 1.0, 2.0, 5.0, 10.0];
    for (i, v) in legend.iter().enumerate() {
        let x0 = width as i32 - 330 + 62 * i as i32;
        let swatch = Rectangle::new(
            [(x0, 16), (x0 + 16, 32)],
            drop_colour(*v, max_points).filled(),
        );
        legend_area.draw(&swatch).map_err(|e| plot_error(path, e))?;
        let label = if *v >= max_points {
            format!(">={v}")
        } else {
            format!("{v}")
        };
        let text = Text::new(label, (x0 + 20, 17), ("sans-serif", 13));
        legend_area.draw(&text).map_err(|e| plot_error(path, e))?;
    }
    root.present().map_err(|e| plot_error(path, e))
}
