//! Measures the tails of the anomaly evidence on normal data, for the thresholds behind the
//! sensitivity knob (`anomaly.false_alarm_rate`): every device's history is streamed through
//! the real engine, exactly as `serve` would see it, and the evidence statistics of its
//! readings are collected into [`TailTable`]s stored with the model.
//!
//! The data is the training history, assumed normal; thresholds are never derived from
//! labels or test data. The forecast and drift evidence is collected from each device's
//! held-out (validation) part, where the forecaster has not seen the readings: residuals on
//! the data a model was fitted to are smaller than on new data, and thresholds measured there
//! would alarm too often. The deviation from a device's normal does not involve the
//! forecaster, so all of its readings after the device's learning count. Where the held-out
//! parts hold too few readings for a table, all readings are used. The joint deviation's
//! covariance and tail are measured on the same deviation readings.

use super::detect::{Calibration, TailTable};
use super::{BatchOutput, Engine, EngineSettings, InferenceModel, Outcome};
use crate::decode::Reading;
use std::sync::Arc;

/// Streams each device's readings (each slice in time order) through an engine and fits the
/// tail tables, one per feature and piece of evidence, on the readings from the device's
/// held-out index on (the second element). `None` when there are too few warm readings
/// (fewer than 100 for some table): the engine then assumes Gaussian tails.
pub fn calibrate(
    model: Arc<InferenceModel>,
    settings: EngineSettings,
    devices: &[(&[&Reading], usize)],
) -> Result<Option<Calibration>, String> {
    let measured_with = super::detect::MeasuredWith::of(&settings);
    let mut engine = Engine::new(model, settings)?;
    let longest = devices.iter().map(|d| d.0.len()).max().unwrap_or(0);
    let mut out = BatchOutput::default();
    let nf = engine.model().features.len();
    // Per table (forecast, drift, deviation) and feature: held-out samples and all samples.
    let mut held: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); nf]; 3];
    let mut all: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); nf]; 3];
    // Standardised departures (signed), one row of `nf` per learnt reading, for the joint
    // deviation.
    let mut departures: Vec<f64> = Vec::new();
    let mut batch = Vec::with_capacity(devices.len());
    let mut from = Vec::with_capacity(devices.len());
    for p in 0..longest {
        batch.clear();
        from.clear();
        for (d, start) in devices {
            if let Some(r) = d.get(p) {
                batch.push((*r).clone());
                from.push(p >= *start);
            }
        }
        engine
            .process(&batch, &mut out)
            .map_err(|e| e.to_string())?;
        for (i, &held_out) in from.iter().enumerate() {
            if !matches!(out.outcomes[i], Outcome::Scored(_)) {
                continue;
            }
            let ev = out.evidence(i);
            if ev[2 * nf].is_finite() {
                departures.extend(ev[2 * nf..3 * nf].iter().map(|&q| {
                    let q = q as f64;
                    q.abs().sqrt().copysign(q)
                }));
            }
            for t in 0..3 {
                for f in 0..nf {
                    // The statistics are squares; the deviation's carries its direction.
                    let v = (ev[t * nf + f] as f64).abs();
                    // The deviation does not depend on the forecaster: every reading of
                    // the device after its learning is out of sample for it.
                    if held_out || t == 2 {
                        held[t][f].push(v);
                    }
                    all[t][f].push(v);
                }
            }
        }
    }
    let mut tables = held
        .into_iter()
        .zip(all)
        .map(|(held, all)| -> Option<Vec<TailTable>> {
            held.into_iter()
                .zip(all)
                .map(|(mut h, mut a)| TailTable::fit(&mut h).or_else(|| TailTable::fit(&mut a)))
                .collect()
        });
    let (forecast, drift, deviation) = (
        tables.next().flatten(),
        tables.next().flatten(),
        tables.next().flatten(),
    );
    Ok(match (forecast, drift, deviation) {
        (Some(forecast), Some(drift), Some(deviation)) => Some(Calibration {
            forecast,
            drift,
            deviation,
            joint: super::detect::Joint::fit(&departures, nf),
            measured_with,
        }),
        _ => None,
    })
}
