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
//!
//! The engine's behaviour depends on the thresholds it runs with: a device's normal learns
//! from a reading in proportion to how healthy the thresholds call it, and not at all while
//! it is alarmed. Tables measured with an engine running on other thresholds would not be
//! the ones `serve` meets, so they are measured again, the engine running on the previous
//! pass's tables, until the deepest thresholds settle (the first pass runs on Gaussian
//! tails, whatever the model carried before).

use super::detect::{Calibration, TailTable};
use super::{BatchOutput, Engine, EngineSettings, InferenceModel, Outcome, RunError};
use crate::decode::Reading;
use std::sync::Arc;

/// Streams each device's readings (each slice in time order) through an engine and fits the
/// tail tables, one per feature and piece of evidence, on the readings from the device's
/// held-out index on (the second element). `None` when there are too few warm readings
/// (fewer than 100 for some table): the engine then assumes Gaussian tails. The model's own
/// calibration is not used.
pub fn calibrate(
    model: Arc<InferenceModel>,
    settings: EngineSettings,
    devices: &[(&[&Reading], usize)],
) -> Result<Option<Calibration>, RunError> {
    let mut model = (*model).clone();
    model.set_calibration(None);
    let mut previous: Option<Calibration> = None;
    for _ in 0..MAX_PASSES {
        let Some(next) = measure(Arc::new(model.clone()), settings.clone(), devices)? else {
            return Ok(None);
        };
        let settled = previous
            .as_ref()
            .is_some_and(|p| deep_change(p, &next) < SETTLED);
        model.set_calibration(Some(next.clone()));
        previous = Some(next);
        if settled {
            break;
        }
    }
    Ok(previous)
}

/// Passes of [`calibrate`] at most. On SKAB the deep thresholds move 8× from the first pass
/// (Gaussian tails) to the second and under 10 % after that.
const MAX_PASSES: usize = 4;
/// Largest relative change of any table's deepest threshold at which the passes stop.
const SETTLED: f64 = 0.1;

/// Largest relative change between two calibrations' deepest thresholds, over every table.
fn deep_change(a: &Calibration, b: &Calibration) -> f64 {
    let tables = |c: &Calibration| -> Vec<f64> {
        c.forecast
            .iter()
            .chain(&c.drift)
            .chain(&c.deviation)
            .chain(c.joint.as_ref().map(|j| &j.tail))
            .map(|t| t.values.last().copied().unwrap_or(0.0))
            .collect()
    };
    let (a, b) = (tables(a), tables(b));
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / x.abs().max(y.abs()).max(f64::MIN_POSITIVE))
        .fold(0.0, f64::max)
}

/// One pass: streams the devices through an engine with `model`'s calibration and fits the
/// tables to what it measured.
fn measure(
    model: Arc<InferenceModel>,
    settings: EngineSettings,
    devices: &[(&[&Reading], usize)],
) -> Result<Option<Calibration>, RunError> {
    let measured_with = settings.measured_with();
    let mut engine = Engine::new(model, settings)?.keeping_evidence();
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
        engine.process(&batch, &mut out)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::{settings, small_model};
    use crate::synth::{FleetSpec, generate};

    fn fleet() -> Vec<Reading> {
        generate(&FleetSpec {
            devices: 24,
            readings: 400,
            faults: 0,
            ..FleetSpec::default()
        })
        .readings
    }

    fn model() -> InferenceModel {
        small_model(16, 4)
    }

    fn by_device(rs: &[Reading]) -> Vec<Vec<&Reading>> {
        let mut m: std::collections::BTreeMap<&str, Vec<&Reading>> = Default::default();
        for r in rs {
            m.entry(r.device.as_str()).or_default().push(r);
        }
        m.into_values().collect()
    }

    #[test]
    fn thresholds_do_not_depend_on_what_the_model_carried_and_settle() {
        let rs = fleet();
        let devices = by_device(&rs);
        let slices: Vec<(&[&Reading], usize)> = devices
            .iter()
            .map(|d| (d.as_slice(), d.len() / 2))
            .collect();
        let mut s = settings();
        s.detect.learning = 50;
        let fresh = calibrate(Arc::new(model()), s.clone(), &slices)
            .expect("calibrates")
            .expect("enough readings");
        // A model that carries thresholds (here: absurdly tight ones) gets the same result.
        let mut carried = fresh.clone();
        for t in carried.deviation.iter_mut() {
            t.values.iter_mut().for_each(|v| *v *= 1e-3);
        }
        let mut m = model();
        m.set_calibration(Some(carried));
        let again = calibrate(Arc::new(m), s.clone(), &slices)
            .expect("calibrates")
            .expect("enough readings");
        assert_eq!(fresh, again);
        // Measured once more on an engine running on them, they move far less than the
        // first pass (on Gaussian tails) is off from them: they are close to the thresholds
        // `serve` will meet.
        let first = measure(Arc::new(model()), s.clone(), &slices)
            .expect("measures")
            .expect("enough readings");
        let mut m = model();
        m.set_calibration(Some(fresh.clone()));
        let next = measure(Arc::new(m), s, &slices)
            .expect("measures")
            .expect("enough readings");
        let (settled, off) = (deep_change(&fresh, &next), deep_change(&first, &fresh));
        assert!(
            settled < 0.3 && settled < off / 2.0,
            "deepest thresholds moved by {settled:.3} (the first pass was off by {off:.3})"
        );
    }
}
