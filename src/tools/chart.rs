//! The demo's chart: actual values against the one-step forecast and its 90% band, with
//! injected fault windows shaded and flagged readings marked, for a few devices.

use crate::decode::Reading;
use crate::synth::{FEATURES, Fleet, device_name};
use anyhow::Context;
use plotters::prelude::*;
use std::path::Path;

/// Draws up to four devices (those with faults first) into an SVG file.
pub fn draw(
    path: &Path,
    fleet: &Fleet,
    forecast1: &[[f32; 3]],
    flagged: &[bool],
    feature_of: &[usize],
    devices: usize,
) -> anyhow::Result<()> {
    let mut chosen: Vec<usize> = Vec::new();
    for f in &fleet.faults {
        if !chosen.contains(&f.device) && chosen.len() < 4 {
            chosen.push(f.device);
        }
    }
    if chosen.is_empty() {
        chosen.extend(0..devices.min(2));
    }
    let height = 260 * chosen.len() as u32;
    let root = SVGBackend::new(path, (1200, height.max(260))).into_drawing_area();
    root.fill(&WHITE).context("chart: fill")?;
    let panels = root.split_evenly((chosen.len().max(1), 1));
    for (panel, &d) in panels.iter().zip(&chosen) {
        let feature = feature_of[d];
        // Series of this device, by step; forecasts are for the next step.
        let idx: Vec<usize> = (0..fleet.readings.len())
            .filter(|&i| i % devices == d)
            .collect();
        let actual: Vec<(f64, f64)> = idx
            .iter()
            .enumerate()
            .map(|(t, &i)| (t as f64, fleet.readings[i].values[feature] as f64))
            .collect();
        let warm = 10;
        let fc: Vec<(f64, [f64; 3])> = idx
            .iter()
            .enumerate()
            .skip(warm)
            .map(|(t, &i)| ((t + 1) as f64, forecast1[i].map(|v| v as f64)))
            .collect();
        let (mut lo, mut hi) = (f64::MAX, f64::MIN);
        for &(_, v) in &actual[warm.min(actual.len())..] {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        for (_, f) in &fc {
            lo = lo.min(f[1]);
            hi = hi.max(f[2]);
        }
        if !(lo.is_finite() && hi.is_finite()) || lo >= hi {
            lo = 0.0;
            hi = 1.0;
        }
        let pad = (hi - lo) * 0.05;
        let steps = idx.len() as f64;
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{} — {} (actual, 1-step forecast, 90% band; red: flagged; shaded: injected fault)", device_name(d), FEATURES[feature]), ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..steps, (lo - pad)..(hi + pad))
            .context("chart: axes")?;
        chart
            .configure_mesh()
            .x_desc("reading")
            .light_line_style(WHITE)
            .draw()
            .context("chart: mesh")?;
        for f in fleet.faults.iter().filter(|f| f.device == d) {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(f.start as f64, lo - pad), (f.end as f64, hi + pad)],
                    RGBColor(255, 220, 220).filled(),
                )))
                .context("chart: fault")?;
        }
        let band = RGBColor(150, 180, 240);
        chart
            .draw_series(LineSeries::new(fc.iter().map(|(t, f)| (*t, f[1])), band))
            .context("chart: band")?;
        chart
            .draw_series(LineSeries::new(fc.iter().map(|(t, f)| (*t, f[2])), band))
            .context("chart: band")?;
        chart
            .draw_series(LineSeries::new(
                fc.iter().map(|(t, f)| (*t, f[0])),
                BLUE.stroke_width(1),
            ))
            .context("chart: forecast")?;
        chart
            .draw_series(LineSeries::new(
                actual.iter().copied(),
                BLACK.stroke_width(1),
            ))
            .context("chart: actual")?;
        chart
            .draw_series(
                idx.iter()
                    .enumerate()
                    .filter(|(_, i)| flagged[**i])
                    .map(|(t, &i)| {
                        Circle::new(
                            (t as f64, fleet.readings[i].values[feature] as f64),
                            3,
                            RED.filled(),
                        )
                    }),
            )
            .context("chart: flags")?;
    }
    root.present().context("chart: write")?;
    Ok(())
}

/// One labelled device as `evaluate` judged it, for [`draw_labelled`].
pub struct Labelled<'a> {
    /// Readings in time order.
    pub readings: &'a [Reading],
    /// Label per reading (true: anomalous).
    pub labels: &'a [bool],
    /// Rows before this one were not scored.
    pub scored_from: usize,
    /// Per scored reading: the score (1 − p-value) and whether an alarm was raised.
    pub verdicts: Vec<(f64, bool)>,
}

/// Draws one labelled device for `evaluate`: its sensors normalised with the model's
/// statistics, the score as −log10(p-value) against the alarm line, and the labelled anomalies
/// beside the raised alarms.
pub fn draw_labelled(
    path: &Path,
    title: &str,
    series: &Labelled<'_>,
    model: &crate::engine::InferenceModel,
    rate: f64,
) -> anyhow::Result<()> {
    let rows = &series.verdicts;
    let n = series.readings.len().max(1) as f64;
    let root = SVGBackend::new(path, (1200, 640)).into_drawing_area();
    root.fill(&WHITE).context("chart: fill")?;
    let (top, rest) = root.split_vertically(330);
    let (mid, bottom) = rest.split_vertically(200);
    // Sensors, clipped to ±8 σ of the stream.
    let mut chart = ChartBuilder::on(&top)
        .caption(title, ("sans-serif", 15))
        .margin(8)
        .x_label_area_size(20)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..n, -8.0..8.0)
        .context("chart: axes")?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .y_desc("σ of stream")
        .draw()
        .context("chart: mesh")?;
    for (f, name) in model.features.iter().enumerate() {
        let colour = Palette99::pick(f).to_rgba();
        chart
            .draw_series(LineSeries::new(
                series.readings.iter().enumerate().map(|(t, r)| {
                    let z = (r.values[f] - model.mean[f]) / model.std[f];
                    (t as f64, (z as f64).clamp(-8.0, 8.0))
                }),
                colour.stroke_width(1),
            ))
            .context("chart: sensor")?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 11))
        .draw()
        .context("chart: legend")?;
    // Score.
    let line = -rate.log10();
    let mut chart = ChartBuilder::on(&mid)
        .margin(8)
        .x_label_area_size(20)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..n, 0.0..8.0)
        .context("chart: axes")?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .y_desc("−log10 p")
        .draw()
        .context("chart: mesh")?;
    chart
        .draw_series(LineSeries::new(
            rows.iter().enumerate().map(|(t, &(score, _))| {
                let p = (1.0 - score).max(1e-8);
                (t as f64, (-p.log10()).clamp(0.0, 8.0))
            }),
            BLUE.stroke_width(1),
        ))
        .context("chart: score")?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, line), (n, line)],
            RED.stroke_width(1),
        ))
        .context("chart: line")?;
    // Labels (upper band) and alarms (lower band).
    let mut chart = ChartBuilder::on(&bottom)
        .margin(8)
        .x_label_area_size(24)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..n, 0.0..2.0)
        .context("chart: axes")?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE)
        .x_desc("reading (shaded top: labelled anomaly; bottom: alarm raised; grey: not scored)")
        .draw()
        .context("chart: mesh")?;
    if series.scored_from > 0 {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, 0.0), (series.scored_from as f64, 2.0)],
                RGBColor(230, 230, 230).filled(),
            )))
            .context("chart: training part")?;
    }
    let bands = series
        .labels
        .iter()
        .enumerate()
        .filter(|(_, l)| **l)
        .map(|(t, _)| (t, 1.1, 1.9, RGBColor(240, 150, 150)))
        .chain(
            rows.iter()
                .enumerate()
                .filter(|(_, (_, alarm))| *alarm)
                .map(|(t, _)| (t, 0.1, 0.9, RGBColor(120, 120, 220))),
        );
    chart
        .draw_series(bands.map(|(t, lo, hi, c)| {
            Rectangle::new([(t as f64, lo), (t as f64 + 1.0, hi)], c.filled())
        }))
        .context("chart: bands")?;
    root.present().context("chart: write")?;
    Ok(())
}

/// The sensitivity trade-off of `evaluate`: F1, FAR and MAR (%) against the target
/// false-alarm rate (log scale), one point per rate.
pub fn draw_tradeoff(
    path: &Path,
    title: &str,
    rows: &[(f64, f64, f64, f64)],
    default_rate: f64,
) -> anyhow::Result<()> {
    let mut rows = rows.to_vec();
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (lo, hi) = match (rows.first(), rows.last()) {
        (Some(a), Some(b)) if a.0 < b.0 => (a.0.log10() - 0.2, b.0.log10() + 0.2),
        (Some(a), _) => (a.0.log10() - 1.0, a.0.log10() + 1.0),
        _ => return Ok(()),
    };
    let root = SVGBackend::new(path, (720, 400)).into_drawing_area();
    root.fill(&WHITE).context("chart: fill")?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .right_y_label_area_size(48)
        .build_cartesian_2d(lo..hi, 0.0..1.0)
        .context("chart: axes")?
        .set_secondary_coord(lo..hi, 0.0..100.0);
    chart
        .configure_mesh()
        .x_desc("anomaly.false_alarm_rate (log10)")
        .y_desc("F1")
        .x_label_formatter(&|v| format!("{:.0e}", 10f64.powf(*v)))
        .light_line_style(WHITE)
        .draw()
        .context("chart: mesh")?;
    chart
        .configure_secondary_axes()
        .y_desc("FAR, MAR (%)")
        .draw()
        .context("chart: axes")?;
    let x = |r: f64| r.log10();
    chart
        .draw_series(LineSeries::new(
            rows.iter().map(|r| (x(r.0), r.1)),
            BLACK.stroke_width(2),
        ))
        .context("chart: f1")?
        .label("F1")
        .legend(|(a, b)| PathElement::new(vec![(a, b), (a + 16, b)], BLACK));
    chart
        .draw_secondary_series(LineSeries::new(
            rows.iter().map(|r| (x(r.0), r.2)),
            RED.stroke_width(2),
        ))
        .context("chart: far")?
        .label("FAR %")
        .legend(|(a, b)| PathElement::new(vec![(a, b), (a + 16, b)], RED));
    chart
        .draw_secondary_series(LineSeries::new(
            rows.iter().map(|r| (x(r.0), r.3)),
            BLUE.stroke_width(2),
        ))
        .context("chart: mar")?
        .label("MAR %")
        .legend(|(a, b)| PathElement::new(vec![(a, b), (a + 16, b)], BLUE));
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(x(default_rate), 0.0), (x(default_rate), 1.0)],
            RGBColor(150, 150, 150),
        )))
        .context("chart: default")?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .context("chart: legend")?;
    root.present().context("chart: write")?;
    Ok(())
}
