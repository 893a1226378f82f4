//! An experiment's plots, each as PNG and SVG (plotters): throughput against bandwidth
//! per policy, bytes per inference per policy, and a time series of one device's link
//! and plan.
use std::path::{Path, PathBuf};

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::Outcome;

type Series = Vec<(String, Vec<(f64, f64)>)>;

fn lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &Series,
    log_x: bool,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE).map_err(|e| e.to_string())?;
    let pts = series.iter().flat_map(|s| s.1.iter());
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        if y.is_finite() {
            y1 = y1.max(y);
        }
    }
    if !x0.is_finite() {
        return Ok(());
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 > 0.0 { y1 * 1.1 } else { 1.0 };
    let mut b = ChartBuilder::on(area);
    b.caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64);
    let labels = (x_label, y_label);
    if log_x {
        let mut chart = b
            .build_cartesian_2d((x0..x1).log_scale(), 0.0..y1)
            .map_err(|e| e.to_string())?;
        draw_series(&mut chart, labels, series)
    } else {
        let mut chart = b
            .build_cartesian_2d(x0..x1, 0.0..y1)
            .map_err(|e| e.to_string())?;
        draw_series(&mut chart, labels, series)
    }
}

/// The mesh with its axis labels, then every series with its legend.
fn draw_series<'a, DB, X>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, RangedCoordf64>>,
    (x_label, y_label): (&str, &str),
    series: &Series,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    X: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| e.to_string())
}

/// Draws a chart on a PNG's, or an SVG's, drawing area.
type DrawPng<'a> = dyn Fn(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), String> + 'a;
type DrawSvg<'a> = dyn Fn(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), String> + 'a;

/// Draws one chart into `<stem>.png` and `<stem>.svg`.
fn both(dir: &Path, stem: &str, f: &DrawPng<'_>, g: &DrawSvg<'_>) -> anyhow::Result<Vec<PathBuf>> {
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    {
        let root = BitMapBackend::new(&png, (900, 560)).into_drawing_area();
        f(&root).map_err(|e| anyhow::anyhow!("{}: {e}", png.display()))?;
        root.present()
            .map_err(|e| anyhow::anyhow!("{}: {e}", png.display()))?;
    }
    {
        let root = SVGBackend::new(&svg, (900, 560)).into_drawing_area();
        g(&root).map_err(|e| anyhow::anyhow!("{}: {e}", svg.display()))?;
        root.present()
            .map_err(|e| anyhow::anyhow!("{}: {e}", svg.display()))?;
    }
    Ok(vec![png, svg])
}

/// Writes every plot the outcome supports into `dir`.
pub fn write(out: &Outcome, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    crate::plot::register_font(dir)?;
    let mut files = Vec::new();
    let policies: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for r in &out.rows {
            if !v.contains(&r.policy) {
                v.push(r.policy.clone());
            }
        }
        v
    };
    let swept = out.rows.iter().any(|r| r.mbps.is_some());
    if swept {
        let by = |f: &dyn Fn(&super::Row) -> f64| -> Series {
            policies
                .iter()
                .map(|p| {
                    let pts = out
                        .rows
                        .iter()
                        .filter(|r| &r.policy == p)
                        .filter_map(|r| Some((r.mbps?, f(r))))
                        .collect();
                    (p.clone(), pts)
                })
                .collect()
        };
        let thr = by(&|r| r.throughput);
        let title = format!(
            "{}: {} devices, {} workers",
            out.model, out.devices, out.workers
        );
        files.extend(both(
            dir,
            "throughput_vs_bandwidth",
            &|a| {
                lines(
                    a,
                    &title,
                    "bandwidth (Mbit/s)",
                    "inferences/s (fleet)",
                    &thr,
                    true,
                )
            },
            &|a| {
                lines(
                    a,
                    &title,
                    "bandwidth (Mbit/s)",
                    "inferences/s (fleet)",
                    &thr,
                    true,
                )
            },
        )?);
        let bytes = by(&|r| r.bytes_per_inference / 1e3);
        files.extend(both(
            dir,
            "bytes_per_inference",
            &|a| {
                lines(
                    a,
                    &title,
                    "bandwidth (Mbit/s)",
                    "kB sent per inference",
                    &bytes,
                    true,
                )
            },
            &|a| {
                lines(
                    a,
                    &title,
                    "bandwidth (Mbit/s)",
                    "kB sent per inference",
                    &bytes,
                    true,
                )
            },
        )?);
    }
    // The time series of device 0 under the first DynO policy run (first sweep point).
    let pick = policies
        .iter()
        .find(|p| p.starts_with("dyno"))
        .or(policies.first())
        .cloned();
    if let Some(p) = pick {
        let point = out.rows.iter().find(|r| r.policy == p).and_then(|r| r.mbps);
        let ticks: Vec<_> = out
            .ticks
            .iter()
            .filter(|(q, m, t)| *q == p && *m == point && t.device == 0)
            .map(|x| &x.2)
            .collect();
        let frames: Vec<_> = out
            .frames
            .iter()
            .filter(|(q, m, f)| *q == p && *m == point && f.device == 0)
            .map(|x| &x.2)
            .collect();
        let mut per_s = vec![0.0; out.duration_s.ceil() as usize + 1];
        for f in &frames {
            // A live frame may end after the run's last second.
            if let Some(n) = per_s.get_mut(f.end_s.max(0.0) as usize) {
                *n += 1.0;
            }
        }
        let series: Series = vec![
            (
                "bandwidth (Mbit/s)".into(),
                ticks.iter().map(|t| (t.time_s, t.true_mbps)).collect(),
            ),
            (
                // Live runs know the link but not the coordinator's estimate of it.
                "estimate (Mbit/s)".into(),
                ticks
                    .iter()
                    .filter(|t| t.estimated_mbps.is_finite())
                    .map(|t| (t.time_s, t.estimated_mbps))
                    .collect(),
            ),
            (
                // The testbed's tbf rate, read back from the kernel.
                "kernel rate (Mbit/s)".into(),
                ticks
                    .iter()
                    .filter(|t| t.kernel_mbps.is_finite())
                    .map(|t| (t.time_s, t.kernel_mbps))
                    .collect(),
            ),
            (
                "split".into(),
                ticks.iter().map(|t| (t.time_s, t.split as f64)).collect(),
            ),
            (
                "bits (fp16/fp32 as 16/32)".into(),
                ticks
                    .iter()
                    .map(|t| {
                        (
                            t.time_s,
                            t.precision
                                .parse::<crate::pack::Precision>()
                                .map_or(32.0, |p| f64::from(p.bits_per_value())),
                        )
                    })
                    .collect(),
            ),
            (
                // The device's correction factor its plans were made with.
                "k_dev x 10".into(),
                ticks
                    .iter()
                    .filter(|t| t.k_dev.is_finite())
                    .map(|t| (t.time_s, 10.0 * t.k_dev))
                    .collect(),
            ),
            (
                "inferences/s".into(),
                per_s
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i as f64, *v))
                    .collect(),
            ),
        ];
        let title = format!("{}: device 0 under {p}", out.model);
        files.extend(both(
            dir,
            "timeseries",
            &|a| lines(a, &title, "time (s)", "", &series, false),
            &|a| lines(a, &title, "time (s)", "", &series, false),
        )?);
    }
    Ok(files)
}
