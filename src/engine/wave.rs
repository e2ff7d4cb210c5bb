//! One wave of a batch: at most one reading per device ([`Engine::process`] cuts the batch
//! into waves), stepped together.
//!
//! The phases, in order:
//!
//! 1. **normalise**: the readings into model units, clamped, as the rows of `x`;
//! 2. **locate** (timed as "gather", the name of the phase when it copied the state): where
//!    each device's state lies in the per-device arrays, zeroed for a device that starts cold;
//! 3. **step**: the LSTM stack over all rows at once ([`kernel`]), each row's previous hidden
//!    state read and its cell state updated where they lie, the new hidden states into the rows
//!    of `h`, per layer a `rows × hidden` block;
//! 4. **head**: the top layer's new hidden state through the forecast head, all rows at once;
//! 5. **score**, in passes over the rows: the forecast and drift evidence (the reading
//!    against the forecasts made for it) and the deviation evidence (the reading against the
//!    device's own normal) of each row; their forecast scores and likelihoods; their joint
//!    distances; their tail look-ups, all rows at once, one feature's table at a time; their
//!    explanations; then each row's combination and the alarm policy. Compiled for AVX2 too
//!    ([`Engine::score_avx2`]);
//! 6. **finish**: the new forecasts are kept and the new hidden state is scattered back to the
//!    device. Compiled for AVX2 too ([`Engine::finish_avx2`]).
//!
//! Every row is computed from its own device's state alone, so any batching gives the same
//! bits (§3.6).

use super::*;
use crate::config::Evidence;
use std::ops::Range;
use std::time::{Duration, Instant};

/// Scratch of the scoring, reused across parts: per-reading values, and per-part blocks with
/// one row of `nf` values per row of the part (row `r` at `r·nf..(r + 1)·nf`).
#[derive(Debug, Default)]
pub(super) struct Scratch {
    /// The standardised residuals of a reading against one forecast.
    zs: Vec<f32>,
    /// The one-step standardised residual of each feature (signed), the drift's input.
    znear: Vec<f64>,
    /// The standardised departures (signed) of the rows that have them, one row after
    /// another: the joint distance's input; each feature's share of it; and the same
    /// departures in columns, a few rows at a time ([`detect::Joint::parts_of_rows`]).
    zjoint: Vec<f64>,
    jparts: Vec<f64>,
    zt: Vec<[f64; detect::JOINT_LANES]>,
    /// The forecast σ of each value of the head (normalised units), for keeping forecasts.
    sigma: Vec<f32>,
    /// Each feature's √calibration, for the bands.
    spread: Vec<f32>,
    /// Per row: the largest standardised residual of each feature (signed); then its signed
    /// square.
    z: Vec<f64>,
    /// Per row: the drift statistic of each feature (signed square).
    qdrift: Vec<f64>,
    /// Per row: the squared standardised departure from the device's normal (signed).
    parts: Vec<f64>,
    /// Per row: the per-feature surprisals of each piece of evidence.
    s_fc: Vec<f64>,
    s_dr: Vec<f64>,
    s_dev: Vec<f64>,
    s_joint: Vec<f64>,
    /// The rows whose evidence is looked up in the tails, per piece ([`FORECAST`], [`DRIFT`],
    /// [`DEVIATION`]).
    wanted: [Vec<usize>; 3],
    /// One feature's statistics of the wanted rows, and their surprisals (in
    /// [`Engine::joint_evidence`], the rows' joint distances and theirs); the largest
    /// surprisal of each wanted row so far.
    column: Vec<f64>,
    column_s: Vec<f64>,
    most: Vec<f64>,
    /// The part's rows with their evidence, from the first pass of [`Engine::score`] until
    /// [`Engine::finish`]: kept in place, not moved from pass to pass.
    pending: Vec<Pending>,
    /// Columns for the forecast scores and likelihoods ([`Engine::forecast_scores`]).
    scores: ScoreColumns,
}

/// Columns of `f64`s for the forecast scores and likelihoods, one value per row taken, so that
/// their arithmetic runs as vector code; and the residual count of each row.
#[derive(Debug, Default)]
pub(super) struct ScoreColumns {
    columns: [Vec<f64>; 5],
    residuals: Vec<u32>,
}

impl ScoreColumns {
    /// The five columns, `rows` long each (their values are the last use's, or 0), and the
    /// residual counts.
    fn columns(&mut self, rows: usize) -> ([&mut [f64]; 5], &mut Vec<u32>) {
        let columns = self.columns.each_mut().map(|c| {
            c.resize(rows, 0.0);
            c.as_mut_slice()
        });
        (columns, &mut self.residuals)
    }
}

impl Scratch {
    /// Ready for a part of `rows` readings of `nf` features: the largest residuals start at
    /// zero. The other per-row blocks are written before they are read at every reading (each
    /// piece of evidence writes its own where it is measured, and only a piece measured is
    /// read), so they are sized, not cleared.
    fn reset(&mut self, rows: usize, nf: usize) {
        let n = rows * nf;
        self.z.clear();
        self.z.resize(n, 0.0);
        for v in [
            &mut self.qdrift,
            &mut self.parts,
            &mut self.s_fc,
            &mut self.s_dr,
            &mut self.s_dev,
            &mut self.s_joint,
        ] {
            v.resize(n, 0.0);
        }
        self.znear.resize(nf, 0.0);
        for w in &mut self.wanted {
            w.clear();
        }
        self.pending.clear();
    }
}

/// The pieces of evidence looked up in per-feature tails, as indices of [`Scratch::wanted`].
const FORECAST: usize = 0;
const DRIFT: usize = 1;
const DEVIATION: usize = 2;

/// A row of the part, its evidence measured: between the passes of [`Engine::score`], then
/// until its forecasts and state are kept ([`Engine::finish`]).
#[derive(Debug)]
pub(super) struct Pending {
    row: Row,
    fe: ForecastEvidence,
    de: DeviationEvidence,
    /// The readings its device had before this one.
    seen: u32,
}

/// One reading's place in the wave and in its device's history.
#[derive(Debug)]
pub(super) struct Row {
    /// Its row in the wave's blocks.
    r: usize,
    /// Its index in the batch.
    index: usize,
    slot: usize,
    /// The device starts cold with this reading.
    reset: bool,
    step_ns: i64,
    ts: i64,
    /// Readings the device's LSTM state has taken in before this one (0: cold).
    step: usize,
    /// Past the warm-up: the reading is judged, and teaches the calibration.
    warm: bool,
    /// In a maintenance window: the reading neither raises nor clears an alarm, nor teaches.
    maintenance: bool,
    /// Start of the device's horizon-H ring entry that falls due with this reading.
    ring: usize,
}

/// What the forecasts made for a reading say of it.
#[derive(Debug, Default)]
struct ForecastEvidence {
    /// The largest |standardised residual| against the forecasts, of `residuals` (0 of 0
    /// without a forecast), for the score.
    worst: f64,
    residuals: usize,
    /// Score from the largest standardised residual (0 without a forecast).
    score: f64,
    /// The device's smoothed likelihood of that score (0 before warm).
    likelihood: f64,
    /// Largest squared standardised residual (once warm).
    stat: Option<f64>,
    /// p-value of the forecast residuals (once warm, where it counts).
    p: Option<f64>,
    /// p-value of the drift of the one-step residuals (once warm, where it counts).
    p_drift: Option<f64>,
}

/// What the device's own normal says of a reading.
#[derive(Debug, Default)]
struct DeviationEvidence {
    /// Largest squared standardised departure (once learnt).
    stat: Option<f64>,
    /// p-value of the departures (once learnt, where it counts).
    p: Option<f64>,
    /// Joint distance of the departures (once learnt, with a joint calibration).
    joint_stat: Option<f64>,
    /// p-value of the joint distance (where it counts).
    p_joint: Option<f64>,
}

/// Which pieces of evidence count under an [`Evidence`] setting. Only those are turned into
/// p-values; the others' statistics are still measured (for calibration in training, the drift
/// state and the settle rule), which costs no tail look-up and no exponential.
#[derive(Debug, Clone, Copy)]
struct Counted {
    forecast: bool,
    drift: bool,
    deviation: bool,
    joint: bool,
}

impl Counted {
    fn of(evidence: Evidence) -> Self {
        let (forecast, drift, deviation, joint) = match evidence {
            Evidence::Default => (true, false, true, true),
            Evidence::All => (true, true, true, true),
            Evidence::Forecast => (true, false, false, false),
            Evidence::Drift => (false, true, false, false),
            Evidence::Deviation => (false, false, true, false),
            Evidence::Joint => (false, false, false, true),
        };
        Self {
            forecast,
            drift,
            deviation,
            joint,
        }
    }
}

/// The pieces of evidence that count (the p-values [`Counted`] asked for), in a fixed order.
#[derive(Debug, Clone, Copy)]
struct Chosen {
    forecast: Option<f64>,
    drift: Option<f64>,
    deviation: Option<f64>,
    joint: Option<f64>,
}

impl Chosen {
    fn of(fe: &ForecastEvidence, de: &DeviationEvidence) -> Self {
        Self {
            forecast: fe.p,
            drift: fe.p_drift,
            deviation: de.p,
            joint: de.p_joint,
        }
    }
}

/// What the last pass of scoring found of one row (beside its [`Pending`] evidence), kept
/// until the row's forecasts and state are written ([`Engine::finish_row`]).
#[derive(Debug)]
pub(super) struct Judged {
    verdict: Verdict,
    stuck_edge: Edge,
    stuck_features: u64,
}

/// Where an engine's time went, by phase of its waves (measured only where asked for:
/// [`Engine::time_phases`]; `sensorcast bench` prints it).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseTimes {
    /// Normalising the readings and locating their devices' LSTM state (named for when it
    /// copied the state).
    pub gather: Duration,
    /// The LSTM step.
    pub step: Duration,
    /// The forecast head.
    pub head: Duration,
    /// Detection: the evidence, its combination and explanation, the alarm policy, stuck
    /// sensors.
    pub detect: Duration,
    /// Keeping the forecasts (with their bands) and scattering the state back.
    pub finish: Duration,
    /// Detection's time, pass by pass over each part's rows.
    pub detect_passes: DetectPasses,
}

/// Where detection's time went, by pass over a part's rows ([`PhaseTimes::detect`] is their
/// sum).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DetectPasses {
    /// Each row's forecast, drift and deviation evidence measured, its device's detection state
    /// moved on.
    pub measure: Duration,
    /// The forecast scores and likelihoods.
    pub scores: Duration,
    /// The joint distances and their p-values.
    pub joint: Duration,
    /// The per-feature tail look-ups and each piece's p-value.
    pub look_up: Duration,
    /// The explanations.
    pub explain: Duration,
    /// Each row's verdict and alarm, its baseline and stuck sensors moved on.
    pub verdict: Duration,
}

/// Laps of a wave's phases; reads no clock unless on.
struct Clock(Option<Instant>);

impl Clock {
    fn start(on: bool) -> Self {
        Self(on.then(Instant::now))
    }

    /// Time since the last lap (zero when off).
    fn lap(&mut self) -> Duration {
        match &mut self.0 {
            Some(t) => {
                let now = Instant::now();
                let d = now - *t;
                *t = now;
                d
            }
            None => Duration::ZERO,
        }
    }
}

/// The judgement of one reading.
#[derive(Debug)]
struct Verdict {
    /// The combined p-value.
    p: f64,
    over_line: bool,
    top_feature: usize,
    edge: Edge,
    is_anomaly: bool,
    peak: f32,
}

/// Standardises reading `x` against one forecast of it (`mean`, `sigma`, and the device's
/// calibration `calib`) into `zs`: keeps each feature's residual in `near` where given, its
/// largest residual so far in `z`, and returns the largest |z|. With `learn` (the calibration's
/// weight), folds the squared residual into `calib`, capped at 5σ so that a fault does not
/// teach the device that faults are normal. Each pass is a plain loop over the features,
/// without a branch and without a chain from one feature to the next (the largest |z| is
/// taken in lanes, [`detect::largest_magnitude`]), so that the compiler can run it as vector
/// code.
#[inline(always)]
fn judge(
    (x, mean, sigma): (&[f32], &[f32], &[f32]),
    calib: &mut [f32],
    learn: Option<f32>,
    (zs, z): (&mut Vec<f32>, &mut [f64]),
    near: Option<&mut [f64]>,
) -> f64 {
    zs.clear();
    zs.extend(
        x.iter()
            .zip(mean)
            .zip(sigma.iter().zip(calib.iter()))
            .map(|((x, m), (s, c))| (x - m) / (s * c.sqrt())),
    );
    debug_assert_eq!(zs.len(), z.len(), "a residual for every feature");
    for (zf, z) in zs.iter().zip(z.iter_mut()) {
        let zf = f64::from(*zf);
        *z = if zf.abs() > z.abs() { zf } else { *z };
    }
    // The largest |z| as `f32`, then widened: widening is exact and keeps the order.
    let worst = f64::from(detect::largest_magnitude(zs, f32::abs));
    if let Some(near) = near {
        for (n, zf) in near.iter_mut().zip(zs.iter()) {
            *n = f64::from(*zf);
        }
    }
    if let Some(alpha) = learn {
        for (c, zf) in calib.iter_mut().zip(zs.iter()) {
            let z2 = (zf * zf * *c).min(CALIBRATION_CAP);
            *c = (*c + alpha * (z2 - *c)).clamp(CALIBRATION_MIN, CALIBRATION_MAX);
        }
    }
    worst
}

impl Engine {
    /// Steps and scores one wave (`items`, at most one per device, of `batch`) into `out`,
    /// [`PART_ROWS`] rows at a time, so that the rows' state, gates and forecasts stay in the
    /// core's cache from one phase to the next. Every row is computed from its own device's
    /// state alone: the same bits however the wave is cut.
    pub(super) fn run_wave(&mut self, batch: &[Reading], items: &[Item], out: &mut BatchOutput) {
        for part in items.chunks(PART_ROWS) {
            self.run_part(batch, part, out);
        }
    }

    /// [`Engine::run_wave`] for rows `items`.
    fn run_part(&mut self, batch: &[Reading], items: &[Item], out: &mut BatchOutput) {
        let model = Arc::clone(&self.model);
        let rows = items.len();
        let mut clock = Clock::start(self.phases.is_some());
        self.normalise(&model, batch, items);
        self.locate(items);
        let gather = clock.lap();
        model.stack.step_rows(
            self.isa,
            &mut self.ws,
            (rows, &self.x),
            (&self.slots.h, &mut self.slots.c, &self.at),
            &mut self.h,
        );
        let step = clock.lap();
        self.head(&model, rows);
        let head = clock.lap();
        let passes = self.score_any(&model, batch, items, out);
        let detect = clock.lap();
        self.finish_any(&model, rows, out);
        let finish = clock.lap();
        if let Some(p) = self.phases.as_mut() {
            p.gather += gather;
            p.step += step;
            p.head += head;
            p.detect += detect;
            p.finish += finish;
            let d = &mut p.detect_passes;
            d.measure += passes.measure;
            d.scores += passes.scores;
            d.joint += passes.joint;
            d.look_up += passes.look_up;
            d.explain += passes.explain;
            d.verdict += passes.verdict;
        }
    }

    /// [`Engine::score`], in its AVX2 copy where the engine's instruction set has AVX2.
    fn score_any(
        &mut self,
        model: &InferenceModel,
        batch: &[Reading],
        items: &[Item],
        out: &mut BatchOutput,
    ) -> DetectPasses {
        #[cfg(target_arch = "x86_64")]
        if self.isa.has_avx2() {
            // SAFETY: an `Isa` with AVX2 is only made on a CPU that has it.
            return unsafe { self.score_avx2(model, batch, items, out) };
        }
        self.score(model, batch, items, out)
    }

    /// [`Engine::finish`], in its AVX2 copy where the engine's instruction set has AVX2.
    fn finish_any(&mut self, model: &InferenceModel, rows: usize, out: &mut BatchOutput) {
        #[cfg(target_arch = "x86_64")]
        if self.isa.has_avx2() {
            // SAFETY: as in `score_any`.
            return unsafe { self.finish_avx2(model, rows, out) };
        }
        self.finish(model, rows, out);
    }

    /// [`Engine::score`] compiled for AVX2: the scoring is plain scalar code, which the
    /// compiler then runs as 256-bit vector code where it vectorises it, instead of the
    /// baseline's 128-bit (detection 462 → 399 ns a reading when it came in; `sensorcast
    /// bench`). The same bits: Rust never fuses a multiplication and an addition on its own
    /// (and `fma` is not enabled here), and every other operation rounds the same at any
    /// width. What is inlined into it (the functions marked `#[inline(always)]` below, and
    /// whatever else the compiler inlines) is compiled so; what it calls out of line is not.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn score_avx2(
        &mut self,
        model: &InferenceModel,
        batch: &[Reading],
        items: &[Item],
        out: &mut BatchOutput,
    ) -> DetectPasses {
        self.score(model, batch, items, out)
    }

    /// [`Engine::finish`] compiled for AVX2, as [`Engine::score_avx2`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn finish_avx2(&mut self, model: &InferenceModel, rows: usize, out: &mut BatchOutput) {
        self.finish(model, rows, out);
    }

    /// Scores every row of the stepped wave into `judged`, in passes: each row's evidence (its
    /// device's calibration, drift and departure move on); the forecast scores and the joint
    /// distances ([`Engine::forecast_scores`], [`Engine::joint_evidence`]); the tail look-ups
    /// of all rows, one feature's table at a time (vector code); the explanations; then each
    /// row's verdict and alarm. Each pass takes the rows in order, and every row is its own
    /// device's, so the passes give the bits of scoring one row at a time. Returns the time of
    /// each pass where the engine times its phases (zeros otherwise).
    #[inline(always)]
    fn score(
        &mut self,
        model: &InferenceModel,
        batch: &[Reading],
        items: &[Item],
        out: &mut BatchOutput,
    ) -> DetectPasses {
        let mut clock = Clock::start(self.phases.is_some());
        self.scratch.reset(items.len(), model.features.len());
        for (r, it) in items.iter().enumerate() {
            if let Some(ahead) = items.get(r + PREFETCH_ROWS) {
                self.prefetch_scoring_state(model, ahead.slot);
            }
            let row = self.row(model, &batch[it.index], r, it);
            self.measure_row(model, row, out);
        }
        let measure = clock.lap();
        self.forecast_scores();
        let scores = clock.lap();
        self.joint_evidence(model);
        let joint = clock.lap();
        self.look_up(model);
        let look_up = clock.lap();
        self.explain_rows(model.features.len(), out);
        let explain = clock.lap();
        self.judged.clear();
        let pending = std::mem::take(&mut self.scratch.pending);
        for p in &pending {
            let judged = self.judge_row(model, &batch[p.row.index], p, out);
            self.judged.push(judged);
        }
        self.scratch.pending = pending;
        DetectPasses {
            measure,
            scores,
            joint,
            look_up,
            explain,
            verdict: clock.lap(),
        }
    }

    /// Asks for the cache lines of `slot`'s scoring state ahead of its row: each device's
    /// state lies in a score of per-device arrays, a cache miss each in a large fleet.
    #[inline(always)]
    fn prefetch_scoring_state(&self, model: &InferenceModel, slot: usize) {
        let (nf, hz, sl) = (model.features.len(), model.horizon, &self.slots);
        for v in [
            &sl.pred_mean,
            &sl.pred_sigma,
            &sl.calib,
            &sl.calib_far,
            &sl.drift,
            &sl.event_sum,
            &sl.flat_last,
        ] {
            prefetch(v, slot * nf);
        }
        for k in (0..3 * nf).step_by(16) {
            prefetch(&sl.dev, slot * 3 * nf + k);
        }
        for k in (0..hz * nf).step_by(16) {
            prefetch(&sl.far_mean, slot * hz * nf + k);
            prefetch(&sl.far_sigma, slot * hz * nf + k);
        }
        prefetch(&sl.flat_since, slot * nf);
        prefetch(&sl.stats, slot);
        prefetch(&sl.alarm, slot);
        prefetch(&sl.stuck, slot);
        prefetch(&sl.silent, slot);
        prefetch(&sl.rate, slot);
        prefetch(&sl.count, slot);
        prefetch(&sl.seen, slot);
    }

    /// Keeps every scored row's forecasts and scatters its state back.
    #[inline(always)]
    fn finish(&mut self, model: &InferenceModel, rows: usize, out: &mut BatchOutput) {
        let (judged, pending) = (
            std::mem::take(&mut self.judged),
            std::mem::take(&mut self.scratch.pending),
        );
        debug_assert_eq!(pending.len(), judged.len(), "a verdict for every row");
        for (p, j) in pending.iter().zip(&judged) {
            self.finish_row(model, p, j, rows, out);
        }
        (self.judged, self.scratch.pending) = (judged, pending);
    }

    /// The readings in model units, one row each, clamped so that an absurd but finite value
    /// cannot overflow the state.
    fn normalise(&mut self, model: &InferenceModel, batch: &[Reading], items: &[Item]) {
        let nf = model.features.len();
        let lim = self.settings.max_abs_z;
        self.x.clear();
        for it in items {
            let values = &batch[it.index].values[..nf];
            for ((v, mean), std) in values.iter().zip(&model.mean).zip(&model.std) {
                let z = (v - mean) / std;
                if z.abs() > lim {
                    self.counters.clamped += 1;
                }
                self.x.push(z.clamp(-lim, lim));
            }
        }
    }

    /// Where each row's device state lies, for the step to read it there (and update the cell
    /// state in place) rather than from copies; a device starting over starts from zeros.
    fn locate(&mut self, items: &[Item]) {
        let (rows, s_len) = (items.len(), self.state_len);
        // The step writes every row of every layer's block of new hidden states.
        self.h.resize(rows * s_len, 0.0);
        self.at.clear();
        for it in items {
            let at = it.slot * s_len;
            if it.reset {
                self.slots.h[at..at + s_len].fill(0.0);
                self.slots.c[at..at + s_len].fill(0.0);
            }
            self.at.push(at);
        }
    }

    /// The forecast head on the top layer's new hidden state, into `head_out`.
    fn head(&mut self, model: &InferenceModel, rows: usize) {
        model
            .stack
            .top_gemm(self.isa, rows, &mut self.h, &model.head, &mut self.head_out);
    }

    #[inline(always)]
    fn row(&self, model: &InferenceModel, reading: &Reading, r: usize, it: &Item) -> Row {
        let maintenance = !self.settings.maintenance.is_empty()
            && self
                .settings
                .maintenance
                .covers(&reading.device, reading.ts);
        let step = if it.reset {
            0
        } else {
            self.slots.count[it.slot] as usize
        };
        let (hz, nf) = (model.horizon, model.features.len());
        Row {
            r,
            index: it.index,
            slot: it.slot,
            reset: it.reset,
            step_ns: it.step_ns,
            ts: reading.ts,
            step,
            warm: step >= self.settings.warmup as usize,
            maintenance,
            ring: (it.slot * hz + step % hz) * nf,
        }
    }

    /// The first pass over a row of the stepped wave: its forecast, drift and deviation
    /// evidence, with its device's detection state moved on, recorded for calibration where
    /// the engine keeps it; notes which of it is looked up in the tails ([`Engine::look_up`]).
    #[inline(always)]
    fn measure_row(&mut self, model: &InferenceModel, row: Row, out: &mut BatchOutput) {
        let (nf, slot) = (model.features.len(), row.slot);
        let fe = self.forecast_evidence(model, &row);
        if row.reset {
            self.slots.drift[slot * nf..(slot + 1) * nf].fill(0.0);
        }
        // Deviation from the device's own normal (not reset by gaps: it is the device's
        // normal, not the LSTM's memory).
        let seen = self.slots.seen[slot];
        let de = self.deviation_evidence(model, &row, seen);
        if self.keep_evidence {
            self.record_evidence(nf, &row, &fe, &de, out);
        }
        let counted = Counted::of(self.settings.detect.evidence);
        let wanted = &mut self.scratch.wanted;
        if fe.stat.is_some() {
            if counted.forecast {
                wanted[FORECAST].push(row.r);
            }
            if counted.drift {
                wanted[DRIFT].push(row.r);
            }
        }
        if counted.deviation && de.stat.is_some() {
            wanted[DEVIATION].push(row.r);
        }
        self.scratch.pending.push(Pending { row, fe, de, seen });
    }

    /// The forecast score of every row with a forecast, and the likelihood of every warm one,
    /// each in a loop over the rows of its own, their inputs taken into columns: a score is a
    /// chain of dependent arithmetic (an `erfc`, a power, then the likelihood's `erfc` of
    /// it), which runs as vector code over the columns (plain arithmetic throughout, the
    /// exponential included: [`score::exp`]). Each row is its own device's, so the order of
    /// rows changes nothing.
    #[inline(always)]
    fn forecast_scores(&mut self) {
        let Scratch {
            pending, scores, ..
        } = &mut self.scratch;
        let rows = pending.len();
        // Residuals: the row has a forecast (a model has at least one feature). Rows without
        // keep their score of 0.
        let ([worst, _, _, score, _], n) = scores.columns(rows);
        n.clear();
        for (p, w) in pending.iter().zip(worst.iter_mut()) {
            *w = p.fe.worst;
            n.push(u32::try_from(p.fe.residuals).unwrap_or(u32::MAX));
        }
        score.fill(0.0);
        score::scores_from_max_z(worst, n, score);
        for (p, s) in pending.iter_mut().zip(score.iter()) {
            p.fe.score = *s;
        }
        // The likelihood of each warm row, its device's statistics taken into columns and
        // put back (one test of warmth for both, so that they stay aligned).
        let is_warm = |p: &Pending| p.fe.stat.is_some();
        let warm = pending.iter().filter(|p| is_warm(p));
        let k = warm.clone().count();
        let stats = &mut self.slots.stats;
        let ([short, mean, var, score, out], _) = scores.columns(k);
        for (i, p) in warm.clone().enumerate() {
            let s = &stats[p.row.slot];
            (short[i], mean[i], var[i], score[i]) = (s.short, s.mean, s.var, p.fe.score);
        }
        let likelihood = &self.settings.likelihood;
        likelihood.update_all((short, mean, var), score, out);
        let warm = pending.iter_mut().filter(|p| is_warm(p));
        for (i, p) in warm.enumerate() {
            stats[p.row.slot] = score::ScoreStats {
                short: short[i],
                mean: mean[i],
                var: var[i],
            };
            p.fe.likelihood = out[i];
        }
    }

    /// The per-feature surprisals of the rows that want them, one feature's
    /// tail table at a time, and each row's p-value for that piece of evidence.
    #[inline(always)]
    fn look_up(&mut self, model: &InferenceModel) {
        let nf = model.features.len();
        let calibration = model.calibration.as_ref();
        let Scratch {
            z,
            qdrift,
            parts,
            s_fc,
            s_dr,
            s_dev,
            wanted,
            column,
            column_s,
            most,
            pending,
            ..
        } = &mut self.scratch;
        let pieces = [
            (
                FORECAST,
                &*z,
                s_fc,
                calibration.map(|c| c.forecast.as_slice()),
            ),
            (
                DRIFT,
                &*qdrift,
                s_dr,
                calibration.map(|c| c.drift.as_slice()),
            ),
            (
                DEVIATION,
                &*parts,
                s_dev,
                calibration.map(|c| c.deviation.as_slice()),
            ),
        ];
        for (piece, q, s, tables) in pieces {
            let rows = &wanted[piece];
            if rows.is_empty() {
                continue;
            }
            // Each row's largest surprisal, kept feature after feature as the columns come
            // out, so that the rows are not read again.
            most.clear();
            most.resize(rows.len(), 0.0);
            for f in 0..nf {
                column.clear();
                column.extend(rows.iter().map(|r| q[r * nf + f]));
                column_s.resize(rows.len(), 0.0);
                detect::column_surprisals(tables.map(|t| &t[f]), column, column_s);
                for ((r, v), m) in rows.iter().zip(column_s.iter()).zip(most.iter_mut()) {
                    s[r * nf + f] = *v;
                    *m = m.max(*v);
                }
            }
            for (&r, m) in rows.iter().zip(most.iter()) {
                let p = Some(detect::piece_p(*m, nf));
                // The rows were measured, and so pushed, in order.
                let pe = &mut pending[r];
                debug_assert_eq!(pe.row.r, r);
                match piece {
                    FORECAST => pe.fe.p = p,
                    DRIFT => pe.fe.p_drift = p,
                    _ => pe.de.p = p,
                }
            }
        }
    }

    /// The last pass over a row: its verdict and alarm, the device's baseline and stuck
    /// sensors moved on. Its forecasts and LSTM state are kept afterwards
    /// ([`Engine::finish_row`]), once every row is scored.
    #[inline(always)]
    fn judge_row(
        &mut self,
        model: &InferenceModel,
        reading: &Reading,
        p: &Pending,
        out: &mut BatchOutput,
    ) -> Judged {
        let Pending { row, fe, de, seen } = p;
        let (nf, slot, seen) = (model.features.len(), row.slot, *seen);
        let chosen = Chosen::of(fe, de);
        // The settle rule compares how far the device is from its normal: the joint
        // distance, or the largest standardised departure, in the statistic's own units
        // (an onset's forecast surprise is no yardstick for how far the level moved, and
        // a p-value's logarithm depends on the shape of the fitted tail). 0 while the
        // device learns: no settling then.
        let level = de.joint_stat.or(de.stat).unwrap_or(0.0);
        let verdict = self.decide(nf, row, seen, chosen, level, out);
        if seen > 0 {
            let healthy = if row.maintenance {
                0.0
            } else {
                let rate = self.slots.rate[slot] as f64;
                let clear = self.settings.detect.clear_factor;
                detect::health_weight(verdict.is_anomaly, verdict.p, rate, clear)
            };
            let x = &self.x[row.r * nf..(row.r + 1) * nf];
            Deviation {
                state: &mut self.slots.dev[slot * 3 * nf..(slot + 1) * 3 * nf],
            }
            .adapt(
                &self.settings.detect,
                self.settings.warmup,
                seen,
                x,
                healthy,
            );
        }
        self.slots.seen[slot] = seen.saturating_add(1);
        let (stuck_edge, stuck_features) = step_stuck(
            &self.stuck_policy,
            &mut self.slots,
            &mut self.counters,
            (slot, reading, row.step_ns, row.maintenance),
        );
        Judged {
            verdict,
            stuck_edge,
            stuck_features,
        }
    }

    /// Keeps a scored row's forecasts and scatters its new LSTM state back to the device;
    /// writes its outcome (a device whose state would turn non-finite starts over instead).
    #[inline(always)]
    fn finish_row(
        &mut self,
        model: &InferenceModel,
        p: &Pending,
        j: &Judged,
        rows: usize,
        out: &mut BatchOutput,
    ) {
        let Pending { row, fe, de, .. } = p;
        let slot = row.slot;
        let verdict = &j.verdict;
        self.keep_forecasts(model, row, out);
        self.scatter(row, rows);
        self.counters.stepped += 1;
        let score = 1.0 - verdict.p;
        let s_len = self.state_len;
        let finite = score.is_finite()
            && fe.likelihood.is_finite()
            && all_finite(out.forecast(row.index))
            && all_finite(&self.slots.h[slot * s_len..(slot + 1) * s_len])
            && all_finite(&self.slots.c[slot * s_len..(slot + 1) * s_len]);
        if !finite {
            // Never write NaN/inf, never carry it on: the device starts over.
            self.counters.poisoned += 1;
            self.reset_slot(slot);
            out.outcomes[row.index] = Outcome::Reset;
            return;
        }
        out.outcomes[row.index] = Outcome::Scored(Scored {
            score,
            surprisal: -verdict.p.max(f64::MIN_POSITIVE).ln(),
            forecast_score: fe.score,
            deviation_score: de.p.map_or(0.0, |q| 1.0 - q),
            likelihood: fe.likelihood,
            over_line: verdict.over_line,
            is_anomaly: verdict.is_anomaly,
            edge: verdict.edge,
            peak: verdict.peak,
            forecast_stat: fe.stat,
            deviation_stat: de.stat,
            top_feature: verdict.top_feature,
            step_ns: row.step_ns,
            cold: row.reset,
            maintenance: row.maintenance,
            stuck_edge: j.stuck_edge,
            stuck_features: j.stuck_features,
        });
    }

    /// The forecast evidence of a reading (how far it falls from the one-step and horizon-H
    /// forecasts made for it) and the drift evidence (a short average of the signed one-step
    /// residuals: a forecaster follows a slow drift a step behind, so its residuals lean one
    /// way for as long as the drift lasts). Updates the device's residual calibration and
    /// drift; leaves the per-feature statistics in the row's scratch, for
    /// [`Engine::look_up`] to turn into p-values, and the largest residual in the evidence, for
    /// [`Engine::forecast_scores`] to score (and the likelihood to follow).
    #[inline(always)]
    fn forecast_evidence(&mut self, model: &InferenceModel, row: &Row) -> ForecastEvidence {
        let mut fe = ForecastEvidence::default();
        if row.step == 0 {
            return fe;
        }
        let (nf, hz) = (model.features.len(), model.horizon);
        let x = &self.x[row.r * nf..(row.r + 1) * nf];
        let learn = (row.warm && !row.maintenance).then_some(self.settings.calibration_alpha);
        let near = row.slot * nf..(row.slot + 1) * nf;
        let own = row.r * nf..(row.r + 1) * nf;
        let (sl, sc) = (&mut self.slots, &mut self.scratch);
        let z = &mut sc.z[own.clone()];
        let mut worst = judge(
            (x, &sl.pred_mean[near.clone()], &sl.pred_sigma[near.clone()]),
            &mut sl.calib[near.clone()],
            learn,
            (&mut sc.zs, z),
            Some(&mut sc.znear),
        );
        let mut judged = nf;
        if hz > 1 && row.step >= hz {
            let far = row.ring..row.ring + nf;
            worst = worst.max(judge(
                (x, &sl.far_mean[far.clone()], &sl.far_sigma[far]),
                &mut sl.calib_far[near.clone()],
                learn,
                (&mut sc.zs, z),
                None,
            ));
            judged += nf;
        }
        // The score and likelihood follow for all rows at once ([`Engine::forecast_scores`]).
        (fe.worst, fe.residuals) = (worst, judged);
        if !row.warm {
            return fe;
        }
        fe.stat = Some(worst * worst);
        for z in z.iter_mut() {
            *z = (*z * *z).copysign(*z);
        }
        let lr = self.settings.detect.drift_smoothing;
        let norm = lr / (2.0 - lr);
        let qdrift = &mut sc.qdrift[own];
        for ((r, z), q) in sl.drift[near].iter_mut().zip(&sc.znear).zip(qdrift) {
            let v = lr * z + (1.0 - lr) * *r as f64;
            *r = v as f32;
            *q = (v * v / norm).copysign(v);
        }
        fe
    }

    /// The deviation evidence of a reading: its departure from the device's own normal
    /// (`seen`: the readings the device had before). Folds the reading into the device's
    /// smoothed departure; leaves the per-feature departures in the row's scratch, for
    /// [`Engine::look_up`] to turn into a p-value and [`Engine::joint_evidence`] into the
    /// joint distance.
    #[inline(always)]
    fn deviation_evidence(
        &mut self,
        model: &InferenceModel,
        row: &Row,
        seen: u32,
    ) -> DeviationEvidence {
        let nf = model.features.len();
        let x = &self.x[row.r * nf..(row.r + 1) * nf];
        let mut dev = Deviation {
            state: &mut self.slots.dev[row.slot * 3 * nf..(row.slot + 1) * 3 * nf],
        };
        let mut de = DeviationEvidence::default();
        if seen == 0 {
            dev.start(x);
            return de;
        }
        let sc = &mut self.scratch;
        let own = row.r * nf..(row.r + 1) * nf;
        let parts = &mut sc.parts[own.clone()];
        de.stat = dev
            .observe(&self.settings.detect, self.settings.warmup, seen, x, parts)
            .stat;
        // The joint distance follows for all rows at once ([`Engine::joint_evidence`]).
        de
    }

    /// The joint distance of the departures of every row that has them, where the model has
    /// a joint calibration, and its p-value where it counts: in loops over the rows of their
    /// own, as [`Engine::forecast_scores`] (each row's is a chain of dependent arithmetic: a
    /// product with the precision matrix, then a tail look-up and an exponential). The
    /// products run eight rows in lockstep ([`detect::Joint::parts_of_rows`]), the look-ups
    /// all rows at once.
    #[inline(always)]
    fn joint_evidence(&mut self, model: &InferenceModel) {
        let Some(joint) = model.calibration.as_ref().and_then(|c| c.joint.as_ref()) else {
            return;
        };
        let nf = model.features.len();
        let Scratch {
            pending,
            parts,
            s_joint,
            zjoint,
            jparts,
            zt,
            column: distance,
            column_s: surprisal,
            ..
        } = &mut self.scratch;
        let has_departures = |p: &&mut Pending| p.de.stat.is_some();
        zjoint.clear();
        for p in pending.iter_mut().filter(has_departures) {
            let own = &parts[p.row.r * nf..(p.row.r + 1) * nf];
            zjoint.extend(own.iter().map(|q| q.abs().sqrt().copysign(*q)));
        }
        let k = zjoint.len() / nf;
        jparts.resize(zjoint.len(), 0.0);
        distance.resize(k, 0.0);
        joint.parts_of_rows(nf, (zjoint, jparts), distance, zt);
        let with = pending.iter_mut().filter(has_departures);
        for ((p, d), share) in with.zip(distance.iter()).zip(jparts.chunks_exact(nf)) {
            p.de.joint_stat = Some(*d);
            s_joint[p.row.r * nf..(p.row.r + 1) * nf].copy_from_slice(share);
        }
        if Counted::of(self.settings.detect.evidence).joint {
            // The p-values: `TailTable::survival`, its look-ups all rows at once.
            surprisal.resize(k, 0.0);
            joint.tail.surprisals(distance, surprisal);
            let with = pending.iter_mut().filter(has_departures);
            for (p, s) in with.zip(surprisal.iter()) {
                p.de.p_joint = Some((-s).exp());
            }
        }
    }

    /// The evidence itself, for calibration in training (NaN: not available).
    #[inline(always)]
    fn record_evidence(
        &self,
        nf: usize,
        row: &Row,
        fe: &ForecastEvidence,
        de: &DeviationEvidence,
        out: &mut BatchOutput,
    ) {
        let sc = &self.scratch;
        let own = row.r * nf..(row.r + 1) * nf;
        let ev = &mut out.evidence[row.index * 3 * nf..(row.index + 1) * 3 * nf];
        let (fc, rest) = ev.split_at_mut(nf);
        let (dr, dev) = rest.split_at_mut(nf);
        if fe.stat.is_some() {
            abs_f32(&sc.z[own.clone()], fc);
            abs_f32(&sc.qdrift[own.clone()], dr);
        } else {
            fc.fill(f32::NAN);
            dr.fill(f32::NAN);
        }
        if de.stat.is_some() {
            for (o, v) in dev.iter_mut().zip(&sc.parts[own]) {
                *o = *v as f32;
            }
        } else {
            dev.fill(f32::NAN);
        }
    }

    /// Combines the chosen evidence into the reading's p-value, finds its top feature in the
    /// explanation ([`Engine::explain_rows`] wrote it), and steps the device's alarm (`level`:
    /// how far the device is from its normal, for the settle rule).
    #[inline(always)]
    fn decide(
        &mut self,
        nf: usize,
        row: &Row,
        seen: u32,
        chosen: Chosen,
        level: f64,
        out: &mut BatchOutput,
    ) -> Verdict {
        let slot = row.slot;
        let set = &self.settings.detect;
        let p = detect::combine(&[
            chosen.forecast,
            chosen.drift,
            chosen.deviation,
            chosen.joint,
        ]);
        let rate = self.slots.rate[slot] as f64;
        let over_line = p <= rate;
        let quiet = p > rate * set.clear_factor;
        let top_feature = top_feature(&out.contributions[row.index * nf..(row.index + 1) * nf]);
        let policy = AlarmPolicy {
            min_duration: set.min_duration,
            cooldown: set.cooldown,
            settle_fraction: set.settle_fraction,
            max_alarm: set.max_alarm,
        };
        let alarm = &mut self.slots.alarm[slot];
        let was_active = alarm.active;
        // In maintenance a reading neither raises nor clears: an alarm is held.
        let judgement = if row.maintenance {
            detect::Judgement::new(false, false, false)
        } else {
            detect::Judgement::new(over_line, p <= rate * rate, quiet)
        };
        let edge = policy.step(alarm, row.ts, judgement, (1.0 - p) as f32, level);
        let (peak, is_anomaly) = (alarm.peak, alarm.active);
        match edge {
            Edge::Raised { .. } => self.counters.alarms_raised += 1,
            Edge::Cleared { .. } => {
                self.counters.alarms_cleared += 1;
                if !quiet && seen > 0 {
                    // Cleared because the condition settled, not because the device came
                    // back: where it settled is its normal from now on.
                    Deviation {
                        state: &mut self.slots.dev[slot * 3 * nf..(slot + 1) * 3 * nf],
                    }
                    .rebase();
                }
            }
            Edge::None => {}
        }
        let contrib = &out.contributions[row.index * nf..(row.index + 1) * nf];
        let ev_sum = &mut self.slots.event_sum[slot * nf..(slot + 1) * nf];
        let ev_out = &mut out.event_contributions[row.index * nf..(row.index + 1) * nf];
        event_contributions(edge, was_active && !quiet, contrib, ev_sum, ev_out);
        Verdict {
            p,
            over_line,
            top_feature,
            edge,
            is_anomaly,
            peak,
        }
    }

    /// Each feature's share of the strongest piece of evidence, signed by its direction,
    /// into `contrib` (left as it is, zeros, where no evidence counts).
    #[inline(always)]
    fn explain(&self, chosen: Chosen, own: Range<usize>, contrib: &mut [f32]) {
        let sc = &self.scratch;
        // The smallest p-value, the first on ties.
        let mut strongest: Option<(f64, &Vec<f64>, &Vec<f64>)> = None;
        for (p, pf, dir) in [
            (chosen.forecast, &sc.s_fc, &sc.z),
            (chosen.drift, &sc.s_dr, &sc.qdrift),
            (chosen.deviation, &sc.s_dev, &sc.parts),
            (chosen.joint, &sc.s_joint, &sc.parts),
        ] {
            if let Some(p) = p
                && strongest.is_none_or(|(best, ..)| p.total_cmp(&best).is_lt())
            {
                strongest = Some((p, pf, dir));
            }
        }
        if let Some((_, pf, dir)) = strongest {
            detect::explain(&pf[own.clone()], &dir[own], contrib);
        }
    }

    /// Each row's explanation into `out`'s contributions ([`Engine::explain`]), in a loop of
    /// its own, as [`Engine::forecast_scores`]: the sum of its surprisals is a chain of
    /// dependent additions.
    #[inline(always)]
    fn explain_rows(&self, nf: usize, out: &mut BatchOutput) {
        for p in &self.scratch.pending {
            let contrib = &mut out.contributions[p.row.index * nf..(p.row.index + 1) * nf];
            self.explain(
                Chosen::of(&p.fe, &p.de),
                p.row.r * nf..(p.row.r + 1) * nf,
                contrib,
            );
        }
    }

    /// Keeps the one-step and horizon-H forecasts for scoring the readings to come, and
    /// writes the forecast with its 90 % band into `out`.
    #[inline(always)]
    fn keep_forecasts(&mut self, model: &InferenceModel, row: &Row, out: &mut BatchOutput) {
        let (nf, slot, ring) = (model.features.len(), row.slot, row.ring);
        let hf = model.horizon * nf;
        let stride = model.head.n_pad();
        let head = &self.head_out[row.r * stride..row.r * stride + 2 * hf];
        let far = (model.horizon - 1) * nf;
        let (sigma, spread) = (&mut self.scratch.sigma, &mut self.scratch.spread);
        sigma.clear();
        sigma.extend(head[hf..2 * hf].iter().map(|&lv| sigma_of(lv)));
        let sl = &mut self.slots;
        let near = slot * nf..(slot + 1) * nf;
        sl.pred_mean[near.clone()].copy_from_slice(&head[..nf]);
        sl.pred_sigma[near.clone()].copy_from_slice(&sigma[..nf]);
        sl.far_mean[ring..ring + nf].copy_from_slice(&head[far..far + nf]);
        sl.far_sigma[ring..ring + nf].copy_from_slice(&sigma[far..far + nf]);
        // Each feature's √calibration, the same at every step ahead.
        spread.clear();
        spread.extend(sl.calib[near].iter().map(|c| c.sqrt()));
        let fc = &mut out.forecasts[row.index * out.per..(row.index + 1) * out.per];
        // Each feature's value, band and scale taken together (no index, so no bound to check
        // inside the loop).
        let scale = spread.iter().zip(&model.std).zip(&model.mean);
        for (fc, (mean, sigma)) in fc
            .chunks_exact_mut(3 * nf)
            .zip(head[..hf].chunks_exact(nf).zip(sigma.chunks_exact(nf)))
        {
            let per_feature = fc.chunks_exact_mut(3).zip(mean.iter().zip(sigma));
            for ((fc, (mean, sigma)), ((c, std), mu)) in per_feature.zip(scale.clone()) {
                let yhat = mean * std + mu;
                let half = Z90 * sigma * c * std;
                fc[0] = yhat;
                fc[1] = yhat - half;
                fc[2] = yhat + half;
            }
        }
    }

    /// The row's new hidden state back to its device (of a wave of `rows`; the step updated
    /// the cell state in place), one reading on.
    #[inline(always)]
    fn scatter(&mut self, row: &Row, rows: usize) {
        let s_len = self.state_len;
        let mut off = 0;
        for layer in self.model.stack.layers() {
            let hl = layer.hidden();
            let dst = row.slot * s_len + off;
            let src = rows * off + row.r * hl;
            self.slots.h[dst..dst + hl].copy_from_slice(&self.h[src..src + hl]);
            off += hl;
        }
        let count = &mut self.slots.count[row.slot];
        *count = if row.reset {
            1
        } else {
            count.saturating_add(1)
        };
    }
}

/// Rows of a wave run through all phases together ([`Engine::run_wave`]): for a hidden width
/// of 64, their state, inputs and forecasts take ≈ 200 KiB, within a core's L2 cache.
const PART_ROWS: usize = 256;

/// Rows ahead whose scoring state is asked for ([`Engine::prefetch_scoring_state`]).
const PREFETCH_ROWS: usize = 4;

/// Asks the CPU to bring the cache line holding `v[i]` closer; a hint, nothing where `i` is out
/// of range or on other architectures.
#[inline(always)]
fn prefetch<T>(v: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(x) = v.get(i) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch reads nothing and writes nothing; the address is inside `v`.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(x).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (v, i);
}

/// `|v|` of each value, as `f32`, into `out`.
fn abs_f32(v: &[f64], out: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(v) {
        *o = v.abs() as f32;
    }
}

/// The feature with the largest share of the explanation `contrib` (by absolute value, in
/// the total order of floats), the lowest index on ties.
fn top_feature(contrib: &[f32]) -> usize {
    // The total order of floats without their sign is the order of their bits; the largest
    // so far kept at hand, and no branch.
    let mut top = 0;
    let mut best = contrib.first().map_or(0, |c| c.to_bits() & 0x7fff_ffff);
    for (f, c) in contrib.iter().enumerate().skip(1) {
        let a = c.to_bits() & 0x7fff_ffff;
        top = if a > best { f } else { top };
        best = best.max(a);
    }
    top
}

/// Whether every value is finite; without an early exit, so that it can run as vector code
/// (the values are nearly always finite).
fn all_finite(v: &[f32]) -> bool {
    // Non-finite: every exponent bit set (an integer test, which the compiler can run as
    // vector code): the largest exponent field is below all ones. A maximum of integers
    // runs as one instruction a vector, where a fold of booleans packed its lanes into bytes.
    const EXPONENT: u32 = 0x7f80_0000;
    v.iter().fold(0, |m, x| m.max(x.to_bits() & EXPONENT)) < EXPONENT
}

/// An alarm event's explanation: the contributions summed over the alarm while it lasts
/// (`summing`: active and not quiet), written out normalised when it clears, and the raising
/// reading's own when it is raised.
fn event_contributions(
    edge: Edge,
    summing: bool,
    contrib: &[f32],
    sum: &mut [f32],
    out: &mut [f32],
) {
    match edge {
        Edge::Raised { .. } => {
            sum.copy_from_slice(contrib);
            out.copy_from_slice(contrib);
        }
        Edge::Cleared { .. } => {
            let total: f32 = sum.iter().map(|v| v.abs()).sum();
            if total > 0.0 {
                for (o, s) in out.iter_mut().zip(sum.iter()) {
                    *o = s / total;
                }
            }
            sum.fill(0.0);
        }
        Edge::None if summing => {
            for (s, c) in sum.iter_mut().zip(contrib) {
                *s += c;
            }
        }
        Edge::None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The order of `top_feature`: the largest |share| by `f32::total_cmp`, the lowest index
    /// on ties.
    fn top_by_total_cmp(contrib: &[f32]) -> usize {
        let mut top = 0;
        for f in 1..contrib.len() {
            if contrib[f].abs().total_cmp(&contrib[top].abs()).is_gt() {
                top = f;
            }
        }
        top
    }

    /// Values where the order and finiteness of floats have their edges: signed zeros, ties of
    /// either sign, the smallest normal and subnormal, the extremes, infinities and NaNs.
    const EDGES: [f32; 14] = [
        0.0,
        -0.0,
        0.25,
        -0.25,
        1.0,
        -1.0,
        f32::MIN_POSITIVE,
        1e-45,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
    ];

    /// Every row of `len` values drawn from [`EDGES`] (14^len rows).
    fn edge_rows(len: u32) -> impl Iterator<Item = Vec<f32>> {
        let n = EDGES.len();
        (0..n.pow(len)).map(move |k| (0..len).map(|i| EDGES[k / n.pow(i) % n]).collect())
    }

    #[test]
    fn the_top_feature_is_the_largest_share_in_the_total_order_first_on_ties() {
        for row in edge_rows(4) {
            assert_eq!(top_feature(&row), top_by_total_cmp(&row), "{row:?}");
        }
        assert_eq!(top_feature(&[]), 0);
    }

    #[test]
    fn all_finite_is_what_is_finite_says() {
        for row in edge_rows(3) {
            let finite = row.iter().all(|v| v.is_finite());
            assert_eq!(all_finite(&row), finite, "{row:?}");
        }
        // Longer than a vector, with the bad value in the remainder.
        let mut long = vec![1.0f32; 37];
        assert!(all_finite(&long));
        long[36] = f32::NAN;
        assert!(!all_finite(&long));
        assert!(all_finite(&[]));
    }
}
