//! The forecasting model in burn: stacked LSTM layers and a linear head giving the mean and
//! log-variance of every feature for each of `horizon` steps (docs/ARCHITECTURE.md §4), plus its export
//! to the streaming kernel.
//!
//! burn trains and stores the model; [`Forecaster::export`] copies its weights into an
//! [`InferenceModel`] for the batched engine. A test proves the two agree to 1e-5.

pub mod history;
pub mod registry;
pub mod retrain;
pub mod train;

use crate::engine::kernel::{GateWeights, LstmLayer, LstmStack, PackedMatrix};
use crate::engine::{InferenceModel, LOGVAR_MAX, LOGVAR_MIN};
use burn::module::Module;
use burn::nn::{GateController, Linear, LinearConfig, Lstm, LstmConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Shape of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Architecture {
    /// Features (input width).
    pub input: usize,
    /// Hidden width of every layer.
    pub hidden: usize,
    /// LSTM layers.
    pub layers: usize,
    /// Forecast steps.
    pub horizon: usize,
}

impl Architecture {
    /// Width of the head's output: means then log-variances of `horizon × input` values.
    pub fn head_width(&self) -> usize {
        2 * self.horizon * self.input
    }
}

/// Stacked LSTM with a Gaussian forecast head.
#[derive(Module, Debug)]
pub struct Forecaster {
    /// LSTM layers, bottom first.
    pub lstms: Vec<Lstm>,
    /// `hidden → 2 · horizon · features`.
    pub head: Linear,
}

impl Forecaster {
    /// A model initialised from `seed`: the same seed gives the same weights. burn's random
    /// generator is shared per backend, so seeding and drawing happen under one lock.
    pub fn seeded(arch: &Architecture, device: &Device, seed: u64) -> Self {
        static SEED_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = SEED_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        device.seed(seed);
        Self::new(arch, device)
    }

    fn new(arch: &Architecture, device: &Device) -> Self {
        let lstms = (0..arch.layers)
            .map(|l| {
                let input = if l == 0 { arch.input } else { arch.hidden };
                LstmConfig::new(input, arch.hidden, true).init(device)
            })
            .collect();
        let head = LinearConfig::new(arch.hidden, arch.head_width()).init(device);
        let model = Self { lstms, head };
        // Parameters are initialised lazily; draw them now so the seed alone decides them.
        let _ = model.clone().into_record();
        model
    }

    /// `[batch, steps, features]` → `[batch, steps, 2·horizon·features]` (zero initial state).
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let mut h = x;
        for lstm in &self.lstms {
            let (out, _) = lstm.forward(h, None);
            h = out;
        }
        self.head.forward(h)
    }

    /// Copies the weights into the streaming kernel's layout.
    pub fn export(
        &self,
        arch: &Architecture,
        version: &str,
        features: &[String],
        mean: &[f32],
        std: &[f32],
    ) -> Result<InferenceModel, ExportError> {
        let mut layers = Vec::with_capacity(self.lstms.len());
        for (l, lstm) in self.lstms.iter().enumerate() {
            let input = if l == 0 { arch.input } else { arch.hidden };
            let forget = lstm
                .forget_gate
                .as_ref()
                .ok_or(ExportError::NoForgetGate(l))?;
            let parts: Vec<GateParts> =
                [&lstm.input_gate, forget, &lstm.cell_gate, &lstm.output_gate]
                    .into_iter()
                    .map(GateParts::of)
                    .collect::<Result<_, _>>()?;
            let gates: [GateWeights<'_>; 4] = std::array::from_fn(|g| parts[g].borrow());
            layers.push(LstmLayer::from_gate_transforms(input, arch.hidden, gates));
        }
        let head_w = to_vec(self.head.weight.val())?;
        let head_b = match &self.head.bias {
            Some(b) => to_vec(b.val())?,
            None => vec![0.0; arch.head_width()],
        };
        let model = InferenceModel {
            version: version.to_string(),
            features: features.to_vec(),
            horizon: arch.horizon,
            mean: mean.to_vec(),
            std: std.to_vec(),
            stack: LstmStack::new(layers)?,
            head: PackedMatrix::new(arch.hidden, arch.head_width(), &head_w, &head_b),
            calibration: None,
            longest_flat_ns: None,
        };
        model.validate()?;
        Ok(model)
    }
}

/// Why a trained model cannot be copied into the streaming kernel.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A layer without its own forget gate.
    #[error("layer {0} has no forget gate (coupled LSTMs are not supported)")]
    NoForgetGate(usize),
    /// burn could not hand over a tensor's values.
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// The weights do not make a usable streaming model.
    #[error(transparent)]
    Model(#[from] crate::engine::ModelError),
}

struct GateParts {
    wx: Vec<f32>,
    bx: Vec<f32>,
    wh: Vec<f32>,
    bh: Vec<f32>,
}

impl GateParts {
    fn of(g: &GateController) -> Result<Self, ExportError> {
        let hidden = g.hidden_transform.weight.val().dims()[1];
        let bias = |l: &Linear| -> Result<Vec<f32>, TensorError> {
            match &l.bias {
                Some(b) => to_vec(b.val()),
                None => Ok(vec![0.0; hidden]),
            }
        };
        Ok(Self {
            wx: to_vec(g.input_transform.weight.val())?,
            bx: bias(&g.input_transform)?,
            wh: to_vec(g.hidden_transform.weight.val())?,
            bh: bias(&g.hidden_transform)?,
        })
    }

    fn borrow(&self) -> GateWeights<'_> {
        GateWeights {
            input_weight: &self.wx,
            input_bias: &self.bx,
            hidden_weight: &self.wh,
            hidden_bias: &self.bh,
        }
    }
}

/// burn could not hand over a tensor's values as `f32` (its reason, as burn words it).
#[derive(Debug, thiserror::Error)]
#[error("cannot read tensor: {0}")]
pub struct TensorError(String);

/// A tensor's values as `f32`.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, TensorError> {
    t.into_data()
        .try_into_vec::<f32>()
        .map_err(|e| TensorError(format!("{e:?}")))
}

/// Gaussian negative log-likelihood of `target` under the head's output `out`
/// (`[…, 2·n]`: `n` means then `n` log-variances), averaged; constants dropped.
pub fn gaussian_nll(out: Tensor<3>, target: Tensor<3>) -> Tensor<1> {
    let n = target.dims()[2];
    let mean = out.clone().narrow(2, 0, n);
    let logvar = out.narrow(2, n, n).clamp(LOGVAR_MIN, LOGVAR_MAX);
    let sq = (target - mean).square();
    (logvar.clone() + sq * logvar.neg().exp())
        .mul_scalar(0.5)
        .mean()
}

impl InferenceModel {
    /// Runs one sequence (`[steps, features]`, already normalised) through the kernel from a
    /// zero state; returns the head outputs `[steps, 2·horizon·features]`.
    pub fn head_outputs(
        &self,
        isa: crate::engine::kernel::Isa,
        steps: usize,
        x: &[f32],
    ) -> Vec<f32> {
        let seq = self.stack.run_sequences(
            isa,
            crate::engine::kernel::Sequences { batch: 1, steps, x },
            &[],
            &[],
            false,
        );
        let top = self.stack.hidden();
        let padded = crate::engine::kernel::padded_rows(steps);
        let mut a = seq.output;
        a.resize(padded * top, 0.0);
        let stride = self.head.n_pad();
        let mut out = vec![0.0; padded * stride];
        crate::engine::kernel::gemm_bias(isa, &a, padded, &self.head, &mut out);
        let n = self.head.n();
        (0..steps)
            .flat_map(|t| out[t * stride..t * stride + n].to_vec())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kernel::Isa;

    #[test]
    fn kernel_agrees_with_burn_forward() {
        let device = Device::flex();
        let arch = Architecture {
            input: 5,
            hidden: 24,
            layers: 2,
            horizon: 3,
        };
        let model = Forecaster::seeded(&arch, &device, 11);
        let steps = 40;
        let xs: Vec<f32> = (0..steps * arch.input)
            .map(|i| ((i as f32) * 0.731).sin() * 1.5)
            .collect();
        let x =
            Tensor::<3>::from_data(TensorData::new(xs.clone(), [1, steps, arch.input]), &device);
        let burn_out = to_vec(model.forward(x)).expect("values");
        let features: Vec<String> = (0..arch.input).map(|i| format!("f{i}")).collect();
        let inf = model
            .export(
                &arch,
                "t",
                &features,
                &vec![0.0; arch.input],
                &vec![1.0; arch.input],
            )
            .expect("export");
        for isa in [Isa::PORTABLE, Isa::detect()] {
            let ours = inf.head_outputs(isa, steps, &xs);
            let diff = ours
                .iter()
                .zip(&burn_out)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(diff <= 1e-5, "{isa:?}: max abs diff {diff}");
        }
    }

    #[test]
    fn same_seed_same_model() {
        let arch = Architecture {
            input: 3,
            hidden: 8,
            layers: 1,
            horizon: 2,
        };
        let device = Device::flex();
        let weights = |seed| {
            to_vec(Forecaster::seeded(&arch, &device, seed).head.weight.val()).expect("weights")
        };
        assert_eq!(weights(5), weights(5));
        assert_ne!(weights(5), weights(6));
    }
}
