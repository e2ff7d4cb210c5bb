//! The demo's chart: actual values against the one-step forecast and its 90% band, with
//! injected fault windows shaded and flagged readings marked, for a few devices.

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
