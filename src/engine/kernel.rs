//! Batched LSTM inference kernel on exported weights.
//!
//! Owns the hot loop of the streaming engine: one time step for many independent sequences at
//! once (each row's input and previous hidden state packed from where they lie → one matrix
//! product per layer → cell update, the cell state in place; [`StateAt`]). burn trains and stores the
//! model; this module runs it at streaming rates on the CPU.
//!
//! Invariant kept here: **determinism** (docs/ARCHITECTURE.md §3.6). Every output element is computed with
//! the same sequence of floating-point operations whatever the batch size or the row it sits
//! in: each dot product accumulates over `k` in order with fused multiply-adds, rows are padded to
//! a fixed block and never mixed, and the SIMD paths (AVX-512, AVX2+FMA) and the scalar fallback
//! share one generic body, so a reading replayed alone or inside a batch of 4096 gives the same
//! bits.
//!
//! The gate equations are PyTorch's and burn's (docs/ARCHITECTURE.md §4), gate order (i, f, g, o):
//! `gates = [x, h] · W + b`, `i, f, o = σ(·)`, `g = tanh(·)`, `c' = f·c + i·g`, `h' = o·tanh(c')`.
//!
//! [`BiLstm`], the bidirectional variant, is the kernel for the coming "BiLSTM confirmation"
//! (lagged re-scoring); the streaming engine does not run it yet, only the tests do.

use super::error::ModelError;

/// Columns per packed weight panel.
pub const NR: usize = 32;
/// Row padding of every batch matrix; every micro-kernel's row count divides it.
pub const ROW_PAD: usize = 8;

/// Rows an LSTM layer steps at a time ([`LstmLayer::step`]): a multiple of [`ROW_PAD`] and of
/// the AVX2 kernel's 6-row blocks, small enough that the gates of a hidden width of 128 (96 ×
/// 512 floats, 192 KiB) stay in a core's L2 cache between the matrix product and the cell update.
pub const STEP_CHUNK: usize = 96;

/// Rounds a batch size up to the row padding.
pub fn padded_rows(rows: usize) -> usize {
    rows.div_ceil(ROW_PAD) * ROW_PAD
}

/// A `k × n` weight matrix (`y = x · W + b`) packed into column panels of width [`NR`], so
/// that the micro-kernel streams each panel contiguously. Columns past `n` are zero.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    k: usize,
    n: usize,
    n_pad: usize,
    panels: Vec<f32>,
    bias: Vec<f32>,
}

impl PackedMatrix {
    /// Whether every weight and bias is finite (the padding is zeros).
    pub fn all_finite(&self) -> bool {
        self.panels.iter().chain(&self.bias).all(|x| x.is_finite())
    }

    /// Packs a row-major `k × n` matrix and its bias of length `n`.
    pub fn new(k: usize, n: usize, weights: &[f32], bias: &[f32]) -> Self {
        assert_eq!(weights.len(), k * n, "weight matrix must be k × n");
        assert_eq!(bias.len(), n, "bias must have n entries");
        let n_pad = n.div_ceil(NR) * NR;
        let mut panels = vec![0.0; k * n_pad];
        for p in 0..n_pad / NR {
            let panel = &mut panels[p * k * NR..(p + 1) * k * NR];
            for kk in 0..k {
                for j in 0..NR {
                    let col = p * NR + j;
                    if col < n {
                        panel[kk * NR + j] = weights[kk * n + col];
                    }
                }
            }
        }
        let mut padded_bias = vec![0.0; n_pad];
        padded_bias[..n].copy_from_slice(bias);
        Self {
            k,
            n,
            n_pad,
            panels,
            bias: padded_bias,
        }
    }

    /// Rows of the matrix (input width).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of the matrix (output width).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Output row stride (columns rounded up to the panel width).
    pub fn n_pad(&self) -> usize {
        self.n_pad
    }
}

/// One LSTM layer's weights, packed as a single `(input + hidden) × 4·hidden` matrix with gate
/// blocks in the order (i, f, g, o) and the input and hidden biases summed.
#[derive(Debug, Clone)]
pub struct LstmLayer {
    input: usize,
    hidden: usize,
    gates: PackedMatrix,
}

impl LstmLayer {
    /// Builds a layer from PyTorch-layout weights: `w_ih` is `[4H, input]`, `w_hh` is `[4H, H]`
    /// (rows in gate order i, f, g, o), `b_ih` and `b_hh` are `[4H]`.
    pub fn from_pytorch(
        input: usize,
        hidden: usize,
        w_ih: &[f32],
        w_hh: &[f32],
        b_ih: &[f32],
        b_hh: &[f32],
    ) -> Self {
        let n = 4 * hidden;
        let k = input + hidden;
        let mut w = vec![0.0; k * n];
        for row in 0..n {
            for col in 0..input {
                w[col * n + row] = w_ih[row * input + col];
            }
            for col in 0..hidden {
                w[(input + col) * n + row] = w_hh[row * hidden + col];
            }
        }
        let bias: Vec<f32> = b_ih.iter().zip(b_hh).map(|(a, b)| a + b).collect();
        Self {
            input,
            hidden,
            gates: PackedMatrix::new(k, n, &w, &bias),
        }
    }

    /// Builds a layer from burn's layout: per gate (order i, f, g, o) an input transform
    /// `[input, H]`, a hidden transform `[H, H]` (both `y = x · W`), and their biases `[H]`.
    pub fn from_gate_transforms(input: usize, hidden: usize, gates: [GateWeights<'_>; 4]) -> Self {
        let n = 4 * hidden;
        let k = input + hidden;
        let mut w = vec![0.0; k * n];
        let mut bias = vec![0.0; n];
        for (g, gate) in gates.iter().enumerate() {
            for row in 0..input {
                for j in 0..hidden {
                    w[row * n + g * hidden + j] = gate.input_weight[row * hidden + j];
                }
            }
            for row in 0..hidden {
                for j in 0..hidden {
                    w[(input + row) * n + g * hidden + j] = gate.hidden_weight[row * hidden + j];
                }
            }
            for j in 0..hidden {
                bias[g * hidden + j] = gate.input_bias[j] + gate.hidden_bias[j];
            }
        }
        Self {
            input,
            hidden,
            gates: PackedMatrix::new(k, n, &w, &bias),
        }
    }

    /// Input width of the layer.
    pub fn input(&self) -> usize {
        self.input
    }

    /// Hidden width of the layer.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// The packed gate matrix `[x, h] · W + b` of [`Self::step`]'s product, for timing the
    /// product apart from the cell (`sensorcast bench --kernel`).
    pub fn gates(&self) -> &PackedMatrix {
        &self.gates
    }
}

/// One gate's weights in burn's layout, borrowed for [`LstmLayer::from_gate_transforms`].
#[derive(Debug, Clone, Copy)]
pub struct GateWeights<'a> {
    /// `[input, H]`, row-major.
    pub input_weight: &'a [f32],
    /// `[H]`.
    pub input_bias: &'a [f32],
    /// `[H, H]`, row-major.
    pub hidden_weight: &'a [f32],
    /// `[H]`.
    pub hidden_bias: &'a [f32],
}

/// Scratch buffers reused across steps so the hot loop does not allocate.
#[derive(Debug, Default)]
pub struct Workspace {
    a: Vec<f32>,
    out: Vec<f32>,
}

/// Which instruction set the kernel runs on; chosen once, at start-up.
///
/// Only the checked constructors make one ([`Isa::detect`], [`Isa::avx2`], [`Isa::avx512`],
/// [`Isa::PORTABLE`]), so holding an `Isa` proves the CPU has its features: the safe kernel
/// functions that take it may run its instructions. Nothing else can make one:
///
/// ```compile_fail
/// let isa = sensorcast::engine::kernel::Isa::Avx512;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Isa(Kind);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// AVX-512F with AVX2 and FMA (x86-64).
    Avx512,
    /// AVX2 with FMA (x86-64).
    Avx2,
    /// Portable code; `f32::mul_add` keeps it bit-identical to the SIMD paths.
    Portable,
}

impl Isa {
    /// Portable code, on any CPU.
    pub const PORTABLE: Isa = Isa(Kind::Portable);

    /// The best instruction set this CPU supports.
    pub fn detect() -> Self {
        Self::avx512().or_else(Self::avx2).unwrap_or(Self::PORTABLE)
    }

    /// AVX-512F (with the AVX2 and FMA its kernels also use), if this CPU has them.
    pub fn avx512() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            return Some(Isa(Kind::Avx512));
        }
        None
    }

    /// AVX2 with FMA, if this CPU has them.
    pub fn avx2() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Some(Isa(Kind::Avx2));
        }
        None
    }

    /// Whether this instruction set includes AVX2 (the kinds AVX-512 and AVX2; not
    /// [`Isa::PORTABLE`], nor a CPU with AVX2 but without FMA), for code other than the
    /// kernel's that is compiled for it too (`#[target_feature(enable = "avx2")]`): true
    /// only on a CPU that has AVX2.
    pub fn has_avx2(self) -> bool {
        matches!(self.0, Kind::Avx512 | Kind::Avx2)
    }
}

/// `out[rows × n_pad] = a[rows × k] · W + b`; `rows` must be a multiple of [`ROW_PAD`]. The
/// columns past `n` (padding) are zeros for finite inputs; only the first `n` are results.
pub fn gemm_bias(isa: Isa, a: &[f32], rows: usize, w: &PackedMatrix, out: &mut [f32]) {
    assert_eq!(rows % ROW_PAD, 0, "rows must be padded to ROW_PAD");
    assert!(a.len() >= rows * w.k && out.len() >= rows * w.n_pad);
    match isa.0 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Isa` of kind Avx512 is only made by `Isa::avx512`, after detecting
        // AVX-512F, AVX2 and FMA on this CPU.
        Kind::Avx512 => unsafe { simd::gemm_avx512(a, rows, w, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above: `Isa::avx2` detected AVX2 and FMA.
        Kind::Avx2 => unsafe { simd::gemm_avx2(a, rows, w, out) },
        _ => gemm_generic::<1>(a, rows, w, out),
    }
}

/// The most floating-point operations a second one core does in fused multiply-adds on `isa`:
/// independent 8- or 16-lane multiply-adds, enough of them to hide the unit's latency, for
/// about `time`. The ceiling to hold [`gemm_bias`] against; `None` for portable code (no vector
/// multiply-add to measure).
pub fn fma_peak_flops(isa: Isa, time: std::time::Duration) -> Option<f64> {
    /// Multiply-adds per chain and call.
    const ROUND: u64 = 1 << 16;
    // Lanes, chains, and the loop (unsafe: it runs the instruction set's instructions).
    let (lanes, chains, chains_fn): (u64, usize, unsafe fn(u64) -> f32) = match isa.0 {
        #[cfg(target_arch = "x86_64")]
        Kind::Avx512 => (16, simd::PEAK_CHAINS_AVX512, simd::fma_chains_avx512),
        #[cfg(target_arch = "x86_64")]
        Kind::Avx2 => (8, simd::PEAK_CHAINS_AVX2, simd::fma_chains_avx2),
        _ => return None,
    };
    let start = std::time::Instant::now();
    let (mut rounds, mut sink) = (0u64, 0.0f32);
    while rounds == 0 || start.elapsed() < time {
        // SAFETY: an `Isa` of kind Avx512 or Avx2 is only made after detecting the features
        // its loop uses (AVX-512F; AVX2 and FMA).
        sink += unsafe { chains_fn(ROUND) };
        rounds += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    std::hint::black_box(sink);
    let flop = (rounds * ROUND * chains as u64 * lanes * 2) as f64;
    Some(flop / elapsed)
}

#[inline(always)]
fn gemm_generic<const MR: usize>(a: &[f32], rows: usize, w: &PackedMatrix, out: &mut [f32]) {
    let k = w.k;
    let n_pad = w.n_pad;
    for r0 in (0..rows).step_by(MR) {
        let a_rows: [&[f32]; MR] = std::array::from_fn(|r| &a[(r0 + r) * k..(r0 + r + 1) * k]);
        for (p, panel) in w.panels.chunks_exact(k * NR).enumerate() {
            let bias: &[f32; NR] = w.bias[p * NR..(p + 1) * NR]
                .try_into()
                .unwrap_or_else(|_| unreachable!("bias is padded to whole panels"));
            let mut acc = [*bias; MR];
            for (kk, wk) in panel.chunks_exact(NR).enumerate() {
                let wk: &[f32; NR] = wk
                    .try_into()
                    .unwrap_or_else(|_| unreachable!("panel rows are NR wide"));
                for r in 0..MR {
                    let av = a_rows[r][kk];
                    for j in 0..NR {
                        acc[r][j] = av.mul_add(wk[j], acc[r][j]);
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                let start = (r0 + r) * n_pad + p * NR;
                out[start..start + NR].copy_from_slice(acc_r);
            }
        }
    }
}

/// log₂ e, and ln 2 split in two (`n · LN2_HI` is exact for the small `n` seen here): the range
/// reduction of [`exp_approx`] and [`exp_unfused`].
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes' polynomial for `(eʳ − 1 − r) / r²` on the reduced range, highest power first.
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// Exponential with a Cephes-style polynomial: branch-free, vectorisable and, unlike `f32::exp`,
/// the same bits on every code path. Relative error about 1e-7 on the clamped range. One lane
/// of `exp_lanes`, which the cell runs.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    let mut v = [x];
    exp_lanes(&mut v);
    v[0]
}

/// [`exp_approx`]'s polynomial in plain multiplications and additions, for code compiled
/// without FMA (the finishing after the step, in its baseline and AVX2 copies): no fused
/// multiply-add (a library call there) and no `floor` (no vector instruction in the baseline;
/// round-to-nearest by adding 1.5·2²³ instead), so that a loop of it runs as vector code and
/// gives the same bits on every machine. For finite `|x| < 85`; NaN stays NaN. Relative error
/// below 3e-7 on the forecast σ's range (`engine::tests`).
#[inline(always)]
pub fn exp_unfused(x: f32) -> f32 {
    // Adding 1.5·2²³ rounds to an integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = EXP_POLY[1..].iter().fold(EXP_POLY[0], |p, c| p * r + *c);
    let y = p * (r * r) + r + 1.0;
    // 2ⁿ from bits: `t`'s low mantissa bits hold n + 2²², shifted into the exponent field.
    let n_bits = t.to_bits().wrapping_sub(0x4b40_0000);
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    y * scale
}

/// Logistic sigmoid on top of [`exp_approx`].
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_approx(-x))
}

/// Hyperbolic tangent on top of [`exp_approx`]; absolute error about 2e-7.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp_approx(2.0 * x) + 1.0)
}

/// [`exp_approx`] of `N` values, one operation at a time across all of them. Compiled for a
/// vector instruction set, that is `N / width` independent vector chains side by side: one
/// chain alone is a run of about twenty dependent operations, of which the core keeps too few
/// in flight to fill its pipes (four chains of eight lanes: 594–596 → 555–557 ns a row of the
/// hidden-64 step on an AVX2 core, PERFORMANCE.md §3). `x = n·ln 2 + r` with
/// `n = ⌊x·log₂e + ½⌋`, `eʳ` by the polynomial (Horner's scheme), `2ⁿ` from bits. The same
/// operations whatever `N`, hence the same bits.
// One indexed sweep per operation: the zipped form (two operations in some sweeps) measured
// 5–7 ns a row slower.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn exp_lanes<const N: usize>(x: &mut [f32; N]) {
    // 2^23 + 127: adding it leaves `n + 127` in the low mantissa bits.
    const MAGIC: f32 = 8_388_735.0;
    let mut n = [0.0f32; N];
    for l in 0..N {
        x[l] = x[l].clamp(-87.0, 88.0);
    }
    for l in 0..N {
        n[l] = (x[l] * LOG2E + 0.5).floor();
    }
    let mut r = [0.0f32; N];
    for l in 0..N {
        r[l] = n[l].mul_add(-LN2_HI, x[l]);
    }
    for l in 0..N {
        r[l] = n[l].mul_add(-LN2_LO, r[l]);
    }
    let mut p = [EXP_POLY[0]; N];
    for c in &EXP_POLY[1..] {
        for l in 0..N {
            p[l] = p[l].mul_add(r[l], *c);
        }
    }
    for l in 0..N {
        p[l] = p[l].mul_add(r[l] * r[l], r[l]) + 1.0;
    }
    // 2ⁿ built from bits: (n + 127) shifted into the exponent field.
    for l in 0..N {
        x[l] = p[l] * f32::from_bits((n[l] + MAGIC).to_bits() << 23);
    }
}

/// [`sigmoid`] on `N` lanes (see [`exp_lanes`]).
#[inline(always)]
fn sigmoid_lanes<const N: usize>(x: &mut [f32; N]) {
    for v in x.iter_mut() {
        *v = -*v;
    }
    exp_lanes(x);
    for v in x.iter_mut() {
        *v = 1.0 / (1.0 + *v);
    }
}

/// [`tanh`] on `N` lanes (see [`exp_lanes`]).
#[inline(always)]
fn tanh_lanes<const N: usize>(x: &mut [f32; N]) {
    for v in x.iter_mut() {
        *v *= 2.0;
    }
    exp_lanes(x);
    for v in x.iter_mut() {
        *v = 1.0 - 2.0 / (*v + 1.0);
    }
}

/// σ (or, with `TANH`, tanh) of every element of `v`: `N` at a time ([`exp_lanes`]), what is
/// left 8 at a time, then one at a time. Which activation is a const parameter: passed as a
/// function argument (`impl Fn`), the lanes functions were called through `Fn::call` from the
/// AVX2 copy instead of inlined into it (seen in its machine code), and their `mul_add`s became
/// library calls.
#[inline(always)]
fn activate<const N: usize, const TANH: bool>(v: &mut [f32]) {
    let mut chunks = v.chunks_exact_mut(N);
    for chunk in &mut chunks {
        activate_lanes::<N, TANH>(chunk);
    }
    let mut eights = chunks.into_remainder().chunks_exact_mut(8);
    for chunk in &mut eights {
        activate_lanes::<8, TANH>(chunk);
    }
    for v in eights.into_remainder() {
        *v = if TANH { tanh(*v) } else { sigmoid(*v) };
    }
}

/// [`activate`] on one chunk of exactly `N` elements.
#[inline(always)]
fn activate_lanes<const N: usize, const TANH: bool>(chunk: &mut [f32]) {
    let chunk: &mut [f32; N] = chunk
        .try_into()
        .unwrap_or_else(|_| unreachable!("chunks are N long"));
    if TANH {
        tanh_lanes(chunk);
    } else {
        sigmoid_lanes(chunk);
    }
}

/// The LSTM cell update for `rows` rows given their gate pre-activations (row stride `stride`,
/// blocks i, f, g, o of width `h`): updates the rows' cell states in place (`cells`: the array,
/// where its rows lie, and the first row's index there) and writes `h_out` (`rows × h`, which
/// holds c′ on the way). The gates are overwritten by their activations, which run `N` lanes at
/// a time ([`exp_lanes`]).
#[inline(always)]
fn cell_update<const N: usize>(
    gates: &mut [f32],
    stride: usize,
    rows: usize,
    h: usize,
    (c, at, r0): Cells<'_, '_>,
    h_out: &mut [f32],
) {
    for r in 0..rows {
        let g = &mut gates[r * stride..r * stride + 4 * h];
        activate::<N, false>(&mut g[..2 * h]);
        activate::<N, true>(&mut g[2 * h..3 * h]);
        activate::<N, false>(&mut g[3 * h..]);
        let (i, rest) = g.split_at(h);
        let (f, rest) = rest.split_at(h);
        let (cand, o) = rest.split_at(h);
        let start = at.start(r0 + r, h);
        let c = &mut c[start..start + h];
        let ho = &mut h_out[r * h..(r + 1) * h];
        // h' = o·tanh(c'): c' first, then its tanh in place, then the product.
        for j in 0..h {
            let cj = f[j] * c[j] + i[j] * cand[j];
            c[j] = cj;
            ho[j] = cj;
        }
        activate::<N, true>(ho);
        for (hj, oj) in ho.iter_mut().zip(o) {
            *hj *= *oj;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::*;
    use std::arch::x86_64::*;

    /// Lanes the cell's activations run at a time ([`exp_lanes`]): four vectors of 8 on AVX2
    /// (two vectors were slower than one, eight no faster than four; PERFORMANCE.md §3) and
    /// four of 16 on AVX-512 (on a Xeon, the step less its products took 127–151 ns a row at
    /// hidden 64 and 8 features, 138–160 with 32 lanes and ≈ 290 with 128, which spill).
    const LANES_AVX2: usize = 32;
    const LANES_AVX512: usize = 64;

    /// Bytes of the input rows [`gemm_avx512`] takes through every panel before the next rows:
    /// with one panel (`k × 32` floats, 9 KiB at k = 72) they stay in a 48 KiB L1 cache.
    const A_BLOCK_BYTES: usize = 24 * 1024;

    /// AVX-512 micro-kernel: 12 rows × one 32-column panel in 24 accumulators
    /// ([`tile_avx512`]; with 8 rows and 16 accumulators each pair of weight vectors loaded
    /// served fewer multiply-adds, and the products of hidden 64 took 4–9 % longer), with
    /// tiles of 8 and 4 rows for what 12-row tiles leave of a padded block. Each accumulator
    /// starts at the bias and takes one fused multiply-add per `k`, in order — the same
    /// operations as `gemm_generic`, so the bits agree. The rows go in blocks of
    /// [`A_BLOCK_BYTES`], each block through one panel after another, so that a panel stays
    /// in L1 while the block's rows pass it: the weights of a layer of hidden 64 (72 KiB at 8
    /// features) do not fit L1 together, and taking all panels for each 8 rows read them from
    /// L2 again and again (the products of hidden 64 took 9–13 % longer so).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gemm_avx512(a: &[f32], rows: usize, w: &PackedMatrix, out: &mut [f32]) {
        let k = w.k;
        let n_pad = w.n_pad;
        debug_assert!(
            rows.is_multiple_of(ROW_PAD) && a.len() >= rows * k && out.len() >= rows * n_pad
        );
        let block_rows = (A_BLOCK_BYTES / (4 * k.max(1)) / ROW_PAD).max(1) * ROW_PAD;
        // SAFETY: bounds are asserted by `gemm_bias`: rows·k floats of `a`, rows·n_pad of
        // `out`, and n_pad/NR panels of k·NR weights plus n_pad biases in `w`; each tile
        // covers rows r0..r0 + MR ≤ rows.
        unsafe {
            for block in (0..rows).step_by(block_rows) {
                let end = rows.min(block + block_rows);
                for p in 0..n_pad / NR {
                    let mut r0 = block;
                    while end - r0 >= 12 {
                        tile_avx512::<12>(a, r0, w, p, out);
                        r0 += 12;
                    }
                    // A block is a multiple of 8 rows, so what is left is 8 or 4 rows.
                    if end - r0 >= 8 {
                        tile_avx512::<8>(a, r0, w, p, out);
                        r0 += 8;
                    }
                    if end - r0 >= 4 {
                        tile_avx512::<4>(a, r0, w, p, out);
                    }
                }
            }
        }
    }

    /// Rows `r0..r0 + MR` of [`gemm_avx512`] through panel `p`: `2·MR` accumulators (24 of the
    /// 32 registers at 12 rows, with the two weight vectors and a broadcast).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile_avx512<const MR: usize>(
        a: &[f32],
        r0: usize,
        w: &PackedMatrix,
        p: usize,
        out: &mut [f32],
    ) {
        let (k, n_pad) = (w.k, w.n_pad);
        debug_assert!(a.len() >= (r0 + MR) * k && out.len() >= (r0 + MR) * n_pad);
        // SAFETY: as for `gemm_avx512`, for rows r0..r0 + MR and panel p < n_pad/NR.
        unsafe {
            let (arow, panel) = (a.as_ptr().add(r0 * k), w.panels.as_ptr().add(p * k * NR));
            let bp = w.bias.as_ptr().add(p * NR);
            let (b0, b1) = (_mm512_loadu_ps(bp), _mm512_loadu_ps(bp.add(16)));
            let mut c = [[b0, b1]; MR];
            for kk in 0..k {
                let w0 = _mm512_loadu_ps(panel.add(kk * NR));
                let w1 = _mm512_loadu_ps(panel.add(kk * NR + 16));
                for (r, cr) in c.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*arow.add(r * k + kk));
                    cr[0] = _mm512_fmadd_ps(av, w0, cr[0]);
                    cr[1] = _mm512_fmadd_ps(av, w1, cr[1]);
                }
            }
            let op = out.as_mut_ptr();
            for (r, cr) in c.iter().enumerate() {
                let dst = op.add((r0 + r) * n_pad + p * NR);
                _mm512_storeu_ps(dst, cr[0]);
                _mm512_storeu_ps(dst.add(16), cr[1]);
            }
        }
    }

    /// AVX2: blocks of 6 rows × 16 columns (half a panel) in 12 accumulators. With the two
    /// weight vectors and a broadcast that is 15 of the 16 registers, and 12 independent
    /// multiply-adds per `k` cover the latency of cores with two FMA pipes (4 rows, 8
    /// accumulators, left them idle a fifth of the time). `rows` is a multiple of
    /// [`ROW_PAD`], so what 6-row blocks leave is 2 or 4 rows: the same body with fewer
    /// accumulators. Every output is the bias plus one multiply-add per `k`, in order, as in
    /// `gemm_generic`, whatever the block it falls in.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gemm_avx2(a: &[f32], rows: usize, w: &PackedMatrix, out: &mut [f32]) {
        debug_assert!(
            rows.is_multiple_of(2) && a.len() >= rows * w.k && out.len() >= rows * w.n_pad
        );
        let mut r0 = 0;
        // SAFETY: as for `gemm_avx512`; each call covers rows r0..r0 + MR ≤ rows.
        unsafe {
            while rows - r0 >= 6 {
                block_avx2::<6>(a, r0, w, out);
                r0 += 6;
            }
            if rows - r0 >= 4 {
                block_avx2::<4>(a, r0, w, out);
                r0 += 4;
            }
            if rows - r0 >= 2 {
                block_avx2::<2>(a, r0, w, out);
            }
        }
    }

    /// Rows `r0..r0 + MR` of [`gemm_avx2`], every panel.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn block_avx2<const MR: usize>(a: &[f32], r0: usize, w: &PackedMatrix, out: &mut [f32]) {
        let (k, n_pad) = (w.k, w.n_pad);
        debug_assert!(a.len() >= (r0 + MR) * k && out.len() >= (r0 + MR) * n_pad);
        let (arow, wp, bp, op) = (
            // SAFETY: r0·k ≤ a.len() (asserted above).
            unsafe { a.as_ptr().add(r0 * k) },
            w.panels.as_ptr(),
            w.bias.as_ptr(),
            out.as_mut_ptr(),
        );
        // SAFETY: as for `gemm_avx512`, for rows r0..r0 + MR.
        unsafe {
            for p in 0..n_pad / NR {
                let panel = wp.add(p * k * NR);
                for half in [0, 16] {
                    if p * NR + half >= w.n {
                        // Columns of padding only (the forecast head's 48 of 64 at 8
                        // features, horizon 3): zeros, without multiplying by zero weights.
                        for r in 0..MR {
                            let dst = op.add((r0 + r) * n_pad + p * NR + half);
                            _mm256_storeu_ps(dst, _mm256_setzero_ps());
                            _mm256_storeu_ps(dst.add(8), _mm256_setzero_ps());
                        }
                        continue;
                    }
                    let b0 = _mm256_loadu_ps(bp.add(p * NR + half));
                    let b1 = _mm256_loadu_ps(bp.add(p * NR + half + 8));
                    let mut c = [[b0, b1]; MR];
                    for kk in 0..k {
                        let w0 = _mm256_loadu_ps(panel.add(kk * NR + half));
                        let w1 = _mm256_loadu_ps(panel.add(kk * NR + half + 8));
                        for (r, cr) in c.iter_mut().enumerate() {
                            let av = _mm256_set1_ps(*arow.add(r * k + kk));
                            cr[0] = _mm256_fmadd_ps(av, w0, cr[0]);
                            cr[1] = _mm256_fmadd_ps(av, w1, cr[1]);
                        }
                    }
                    for (r, cr) in c.iter().enumerate() {
                        let dst = op.add((r0 + r) * n_pad + p * NR + half);
                        _mm256_storeu_ps(dst, cr[0]);
                        _mm256_storeu_ps(dst.add(8), cr[1]);
                    }
                }
            }
        }
    }

    /// Independent multiply-add chains of [`fma_chains_avx2`]: two FMA pipes × 5 cycles of
    /// latency (AMD Zen 2; 4 on Intel) need at least 10.
    pub(super) const PEAK_CHAINS_AVX2: usize = 12;
    /// Of [`fma_chains_avx512`]: two 512-bit pipes × 4 cycles need at least 8.
    pub(super) const PEAK_CHAINS_AVX512: usize = 16;

    /// `rounds` multiply-adds on each of [`PEAK_CHAINS_AVX2`] independent 8-lane chains
    /// (`v ← v·m + a`, which stays near 0.1: no overflow, no subnormals); returns a value that
    /// depends on every chain, so that none is optimised away.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fma_chains_avx2(rounds: u64) -> f32 {
        // Opaque to the optimiser, which could otherwise run the loop ahead of time.
        let (m, a, v0) = std::hint::black_box((0.999_999, 1e-7, 0.1));
        let (m, a) = (_mm256_set1_ps(m), _mm256_set1_ps(a));
        let mut v = [_mm256_set1_ps(v0); PEAK_CHAINS_AVX2];
        for _ in 0..rounds {
            for x in v.iter_mut() {
                *x = _mm256_fmadd_ps(*x, m, a);
            }
        }
        let sum = v
            .iter()
            .fold(_mm256_setzero_ps(), |s, x| _mm256_add_ps(s, *x));
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
        lanes.iter().sum()
    }

    /// [`fma_chains_avx2`] with 16-lane vectors and [`PEAK_CHAINS_AVX512`] chains.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fma_chains_avx512(rounds: u64) -> f32 {
        // Opaque to the optimiser, which could otherwise run the loop ahead of time.
        let (m, a, v0) = std::hint::black_box((0.999_999, 1e-7, 0.1));
        let (m, a) = (_mm512_set1_ps(m), _mm512_set1_ps(a));
        let mut v = [_mm512_set1_ps(v0); PEAK_CHAINS_AVX512];
        for _ in 0..rounds {
            for x in v.iter_mut() {
                *x = _mm512_fmadd_ps(*x, m, a);
            }
        }
        let sum = v
            .iter()
            .fold(_mm512_setzero_ps(), |s, x| _mm512_add_ps(s, *x));
        _mm512_reduce_add_ps(sum)
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn cell_avx512(
        gates: &mut [f32],
        stride: usize,
        rows: usize,
        h: usize,
        cells: Cells<'_, '_>,
        h_out: &mut [f32],
    ) {
        cell_update::<LANES_AVX512>(gates, stride, rows, h, cells, h_out)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn cell_avx2(
        gates: &mut [f32],
        stride: usize,
        rows: usize,
        h: usize,
        cells: Cells<'_, '_>,
        h_out: &mut [f32],
    ) {
        cell_update::<LANES_AVX2>(gates, stride, rows, h, cells, h_out)
    }
}

fn cell(
    isa: Isa,
    gates: &mut [f32],
    stride: usize,
    rows: usize,
    h: usize,
    cells: Cells<'_, '_>,
    h_out: &mut [f32],
) {
    match isa.0 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Isa` of kind Avx512 is only made by `Isa::avx512`, after detecting
        // AVX-512F, AVX2 and FMA on this CPU.
        Kind::Avx512 => unsafe { simd::cell_avx512(gates, stride, rows, h, cells, h_out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above: `Isa::avx2` detected AVX2 and FMA.
        Kind::Avx2 => unsafe { simd::cell_avx2(gates, stride, rows, h, cells, h_out) },
        // Portable code (on x86-64 SSE2, `mul_add` and `floor` library calls): the lane count
        // only groups the loops.
        _ => cell_update::<8>(gates, stride, rows, h, cells, h_out),
    }
}

/// Where the state of a step's rows lies.
#[derive(Debug, Clone, Copy)]
pub enum StateAt<'a> {
    /// In `rows × hidden` blocks, one row after another: the previous hidden state is the
    /// output block itself (updated in place), and row `r`'s cell state is at `r · hidden` of
    /// the cell states.
    Blocks,
    /// Each row at its own place (the engine's per-device arrays): row `r`'s previous hidden
    /// state at `at[r] + base` of `h`, and its cell state at the same place of the cell
    /// states, updated there. The rows' places must not overlap.
    Rows {
        /// The previous hidden states.
        h: &'a [f32],
        /// Where each row's state starts.
        at: &'a [usize],
        /// Where the layer's part of a row's state starts within it.
        base: usize,
    },
}

impl StateAt<'_> {
    /// Where row `r`'s state starts for a layer of `hidden` units.
    #[inline(always)]
    fn start(&self, r: usize, hidden: usize) -> usize {
        match self {
            Self::Blocks => r * hidden,
            Self::Rows { at, base, .. } => at[r] + base,
        }
    }
}

/// A step's cell states: the array, where its rows lie, and the index of the first row of the
/// chunk being updated.
type Cells<'c, 'a> = (&'c mut [f32], StateAt<'a>, usize);

impl LstmLayer {
    /// Advances `rows` independent sequences by one step.
    ///
    /// `x` is `rows × input`; `h` and `c` are `rows × hidden` and are updated in place.
    ///
    /// Runs [`STEP_CHUNK`] rows at a time, matrix product then cell update, so that the gates
    /// are read back from the core's own cache instead of memory. Every row is computed from
    /// its own inputs alone: the same bits however the rows are cut.
    pub fn step(
        &self,
        isa: Isa,
        ws: &mut Workspace,
        rows: usize,
        x: &[f32],
        h: &mut [f32],
        c: &mut [f32],
    ) {
        assert!(c.len() >= rows * self.hidden);
        self.step_at(isa, ws, (rows, x), (StateAt::Blocks, c), h);
    }

    /// [`Self::step`] for `rows` rows of input `x` (`rows × input`) whose state lies where `at`
    /// says: the cell states in `c`, updated in place; the new hidden states into `h_out`
    /// (`rows × hidden`).
    pub fn step_at(
        &self,
        isa: Isa,
        ws: &mut Workspace,
        (rows, x): (usize, &[f32]),
        (at, c): (StateAt<'_>, &mut [f32]),
        h_out: &mut [f32],
    ) {
        let (inp, hid) = (self.input, self.hidden);
        assert!(x.len() >= rows * inp && h_out.len() >= rows * hid);
        let k = inp + hid;
        let stride = self.gates.n_pad;
        for r0 in (0..rows).step_by(STEP_CHUNK) {
            let n = (rows - r0).min(STEP_CHUNK);
            let padded = padded_rows(n);
            // Every row below `n` is written next: only the padding rows need zeros.
            ws.a.resize(padded * k, 0.0);
            ws.a[n * k..padded * k].fill(0.0);
            for r in 0..n {
                let (row, src) = (&mut ws.a[r * k..(r + 1) * k], r0 + r);
                row[..inp].copy_from_slice(&x[src * inp..(src + 1) * inp]);
                let start = at.start(src, hid);
                let prev = match at {
                    StateAt::Blocks => &h_out[start..start + hid],
                    StateAt::Rows { h, .. } => &h[start..start + hid],
                };
                row[inp..].copy_from_slice(prev);
            }
            ws.out.resize(padded * stride, 0.0);
            gemm_bias(isa, &ws.a, padded, &self.gates, &mut ws.out);
            cell(
                isa,
                &mut ws.out,
                stride,
                n,
                hid,
                (&mut *c, at, r0),
                &mut h_out[r0 * hid..(r0 + n) * hid],
            );
        }
    }
}

/// A stack of LSTM layers: layer `l + 1` reads layer `l`'s new hidden state.
#[derive(Debug, Clone)]
pub struct LstmStack {
    layers: Vec<LstmLayer>,
}

impl LstmStack {
    /// Whether every layer's weights are finite.
    pub fn all_finite(&self) -> bool {
        self.layers.iter().all(|l| l.gates.all_finite())
    }

    /// Stacks layers; each layer's input width must equal the previous layer's hidden width.
    pub fn new(layers: Vec<LstmLayer>) -> Result<Self, ModelError> {
        if layers.is_empty() {
            return Err(ModelError::Shape(
                "an LSTM stack needs at least one layer".into(),
            ));
        }
        for pair in layers.windows(2) {
            if pair[1].input != pair[0].hidden {
                return Err(ModelError::Shape(format!(
                    "layer input width {} does not match previous hidden width {}",
                    pair[1].input, pair[0].hidden
                )));
            }
        }
        Ok(Self { layers })
    }

    /// The layers, bottom first.
    pub fn layers(&self) -> &[LstmLayer] {
        &self.layers
    }

    /// Input width.
    pub fn input(&self) -> usize {
        self.layers[0].input
    }

    /// Hidden width of the top layer.
    pub fn hidden(&self) -> usize {
        self.layers[self.layers.len() - 1].hidden
    }

    /// Floats of state per sequence per kind (h or c): the sum of the layers' hidden widths.
    pub fn state_len(&self) -> usize {
        self.layers.iter().map(|l| l.hidden).sum()
    }

    /// `out = top · W + b` for `rows` sequences, `top` the top layer's hidden state: the last
    /// block of `h` as [`Self::step`] leaves it. Zero rows appended to `h` pad that block for the
    /// kernel in place, with no copy, and are cut off again; `out` becomes the padded rows ×
    /// `w.n_pad()`. The forecast head of the engine and of `sensorcast bench --kernel`.
    pub fn top_gemm(
        &self,
        isa: Isa,
        rows: usize,
        h: &mut Vec<f32>,
        w: &PackedMatrix,
        out: &mut Vec<f32>,
    ) {
        let (top, state_len) = (self.hidden(), self.state_len());
        assert_eq!(h.len(), rows * state_len, "h holds rows × state_len floats");
        let top_block = rows * (state_len - top);
        let padded = padded_rows(rows);
        h.resize(top_block + padded * top, 0.0);
        out.resize(padded * w.n_pad, 0.0);
        gemm_bias(isa, &h[top_block..], padded, w, out);
        h.truncate(rows * state_len);
    }

    /// One step for `rows` sequences. `h` and `c` hold, per layer in order, a `rows × hidden`
    /// block (so `rows × state_len()` floats each); after the call the top layer's new hidden
    /// state is the last block of `h`.
    pub fn step(
        &self,
        isa: Isa,
        ws: &mut Workspace,
        rows: usize,
        x: &[f32],
        h: &mut [f32],
        c: &mut [f32],
    ) {
        self.each_layer((rows, x), h, |layer, input, h_l, base| {
            let c_l = &mut c[rows * base..rows * (base + layer.hidden)];
            layer.step(isa, ws, rows, input, h_l, c_l);
        });
    }

    /// [`Self::step`] for the engine, whose devices' states stay in per-device arrays: row `r`'s
    /// state (every layer's, `state_len()` floats) starts at `at[r]` of `h_prev` and `c`. The
    /// cell states are updated there; the new hidden states go into `h_out`, per layer a `rows
    /// × hidden` block as [`Self::step`] leaves them, and are not written back.
    pub fn step_rows(
        &self,
        isa: Isa,
        ws: &mut Workspace,
        (rows, x): (usize, &[f32]),
        (h_prev, c, at): (&[f32], &mut [f32], &[usize]),
        h_out: &mut [f32],
    ) {
        assert!(at.len() >= rows);
        self.each_layer((rows, x), h_out, |layer, input, h_l, base| {
            let state = StateAt::Rows {
                h: h_prev,
                at,
                base,
            };
            layer.step_at(isa, ws, (rows, input), (state, &mut *c), h_l);
        });
    }

    /// Calls `step(layer, input, h_l, base)` for each layer, bottom first: its input (`x` for
    /// the first layer, the new hidden states of the layer below for the others), its
    /// `rows × hidden` block of `h`, and where its part of a row's state starts (the hidden
    /// widths of the layers below, summed).
    fn each_layer(
        &self,
        (rows, x): (usize, &[f32]),
        h: &mut [f32],
        mut step: impl FnMut(&LstmLayer, &[f32], &mut [f32], usize),
    ) {
        assert!(h.len() >= rows * self.state_len());
        let mut base = 0;
        for (l, layer) in self.layers.iter().enumerate() {
            let (below, rest) = h.split_at_mut(rows * base);
            let input = match l.checked_sub(1) {
                None => x,
                Some(prev) => &below[rows * (base - self.layers[prev].hidden)..],
            };
            step(layer, input, &mut rest[..rows * layer.hidden], base);
            base += layer.hidden;
        }
    }

    /// Runs whole sequences: `x` is `[batch, steps, input]` row-major, `h0`/`c0` are
    /// `[layers, batch, hidden]` (PyTorch's layout) or empty for zeros. With `reverse` the
    /// sequences are read from the last step to the first. Returns the top layer's outputs
    /// `[batch, steps, hidden]` (in the original time order) and the final `(h, c)` in the
    /// `[layers, batch, hidden]` layout.
    pub fn run_sequences(
        &self,
        isa: Isa,
        seq: Sequences<'_>,
        h0: &[f32],
        c0: &[f32],
        reverse: bool,
    ) -> SequenceOutput {
        let Sequences { batch, steps, x } = seq;
        let inp = self.input();
        let top = self.hidden();
        let total = batch * self.state_len();
        let mut h = if h0.is_empty() {
            vec![0.0; total]
        } else {
            h0.to_vec()
        };
        let mut c = if c0.is_empty() {
            vec![0.0; total]
        } else {
            c0.to_vec()
        };
        let mut ws = Workspace::default();
        let mut xt = vec![0.0; batch * inp];
        let mut output = vec![0.0; batch * steps * top];
        let top_offset = total - batch * top;
        for s in 0..steps {
            let t = if reverse { steps - 1 - s } else { s };
            for b in 0..batch {
                let src = &x[(b * steps + t) * inp..(b * steps + t + 1) * inp];
                xt[b * inp..(b + 1) * inp].copy_from_slice(src);
            }
            self.step(isa, &mut ws, batch, &xt, &mut h, &mut c);
            for b in 0..batch {
                let dst = &mut output[(b * steps + t) * top..(b * steps + t + 1) * top];
                dst.copy_from_slice(&h[top_offset + b * top..top_offset + (b + 1) * top]);
            }
        }
        SequenceOutput { output, h, c }
    }
}

/// A batch of whole sequences, `x` being `[batch, steps, input]` row-major.
#[derive(Debug, Clone, Copy)]
pub struct Sequences<'a> {
    /// Sequences.
    pub batch: usize,
    /// Steps per sequence.
    pub steps: usize,
    /// Values.
    pub x: &'a [f32],
}

/// Result of [`LstmStack::run_sequences`].
#[derive(Debug, Clone)]
pub struct SequenceOutput {
    /// `[batch, steps, hidden]`.
    pub output: Vec<f32>,
    /// Final hidden state, `[layers, batch, hidden]`.
    pub h: Vec<f32>,
    /// Final cell state, `[layers, batch, hidden]`.
    pub c: Vec<f32>,
}

/// A bidirectional LSTM (BiLSTM): per layer a forward and a reverse stack, each reading the
/// previous layer's concatenated `[forward, reverse]` outputs. It cannot forecast (the reverse
/// direction reads the future). It is the kernel for the coming "BiLSTM confirmation" (lagged
/// re-scoring of a window); nothing in the engine runs it yet, only the tests (which check it
/// against PyTorch).
#[derive(Debug, Clone)]
pub struct BiLstm {
    layers: Vec<(LstmLayer, LstmLayer)>,
}

impl BiLstm {
    /// Layers as (forward, reverse) pairs; layer `l > 0` must take `2 × hidden` inputs.
    pub fn new(layers: Vec<(LstmLayer, LstmLayer)>) -> Result<Self, ModelError> {
        if layers.is_empty() {
            return Err(ModelError::Shape(
                "a BiLSTM needs at least one layer".into(),
            ));
        }
        for (l, (fwd, rev)) in layers.iter().enumerate() {
            if fwd.input != rev.input || fwd.hidden != rev.hidden {
                return Err(ModelError::Shape(format!(
                    "layer {l}: forward and reverse shapes differ"
                )));
            }
            if l > 0 && fwd.input != 2 * layers[l - 1].0.hidden {
                return Err(ModelError::Shape(format!(
                    "layer {l}: input width must be twice the previous hidden width"
                )));
            }
        }
        Ok(Self { layers })
    }

    /// Runs whole sequences (`x`: `[batch, steps, input]`; `h0`/`c0`: `[layers·2, batch, hidden]`
    /// or empty for zeros). Returns `[batch, steps, 2·hidden]` outputs and final states in
    /// PyTorch's `[layers·2, batch, hidden]` layout.
    pub fn run_sequences(
        &self,
        isa: Isa,
        seq: Sequences<'_>,
        h0: &[f32],
        c0: &[f32],
    ) -> SequenceOutput {
        let Sequences { batch, steps, x } = seq;
        let mut input = x.to_vec();
        let (mut h_n, mut c_n) = (Vec::new(), Vec::new());
        for (l, (fwd, rev)) in self.layers.iter().enumerate() {
            let hid = fwd.hidden;
            let block = batch * hid;
            let slice = |v: &[f32], d: usize| -> Vec<f32> {
                if v.is_empty() {
                    Vec::new()
                } else {
                    v[(2 * l + d) * block..(2 * l + d + 1) * block].to_vec()
                }
            };
            let mut outs = Vec::with_capacity(2);
            for (d, layer) in [fwd, rev].into_iter().enumerate() {
                let stack = LstmStack {
                    layers: vec![layer.clone()],
                };
                let seq = Sequences {
                    batch,
                    steps,
                    x: &input,
                };
                let out = stack.run_sequences(isa, seq, &slice(h0, d), &slice(c0, d), d == 1);
                h_n.extend_from_slice(&out.h);
                c_n.extend_from_slice(&out.c);
                outs.push(out.output);
            }
            let mut next = vec![0.0; batch * steps * 2 * hid];
            for bt in 0..batch * steps {
                next[bt * 2 * hid..bt * 2 * hid + hid]
                    .copy_from_slice(&outs[0][bt * hid..(bt + 1) * hid]);
                next[bt * 2 * hid + hid..(bt + 1) * 2 * hid]
                    .copy_from_slice(&outs[1][bt * hid..(bt + 1) * hid]);
            }
            input = next;
        }
        SequenceOutput {
            output: input,
            h: h_n,
            c: c_n,
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn non_finite_weights_are_detected() {
        let ok = PackedMatrix::new(2, 2, &[1.0, 2.0, 3.0, 4.0], &[0.0, 0.5]);
        assert!(ok.all_finite());
        let nan = PackedMatrix::new(2, 2, &[1.0, f32::NAN, 3.0, 4.0], &[0.0, 0.5]);
        assert!(!nan.all_finite());
        let inf = PackedMatrix::new(2, 2, &[1.0, 2.0, 3.0, 4.0], &[f32::INFINITY, 0.5]);
        assert!(!inf.all_finite());
    }

    use super::*;
    use serde_json::Value;

    /// PyTorch's outputs for fixed weights and inputs, kept in the repository.
    fn golden_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden")
    }

    fn flat(v: &Value, out: &mut Vec<f32>) {
        match v {
            Value::Array(items) => items.iter().for_each(|i| flat(i, out)),
            Value::Number(n) => out.push(n.as_f64().expect("number") as f32),
            other => panic!("unexpected JSON value {other}"),
        }
    }

    fn tensor(v: &Value, key: &str) -> Vec<f32> {
        let mut out = Vec::new();
        flat(&v[key], &mut out);
        out
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    fn layer(g: &Value, l: usize, suffix: &str, input: usize, hidden: usize) -> LstmLayer {
        let w = &g["weights"];
        let name = |base: &str| format!("{base}_l{l}{suffix}");
        LstmLayer::from_pytorch(
            input,
            hidden,
            &tensor(w, &name("weight_ih")),
            &tensor(w, &name("weight_hh")),
            &tensor(w, &name("bias_ih")),
            &tensor(w, &name("bias_hh")),
        )
    }

    fn check_golden(name: &str, isa: Isa) {
        let path = golden_dir().join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("golden file {} is needed: {e}", path.display()));
        let g: Value = serde_json::from_str(&text).expect("golden JSON");
        let as_usize = |k: &str| g[k].as_u64().expect(k) as usize;
        let (input, hidden, layers) = (
            as_usize("input_size"),
            as_usize("hidden_size"),
            as_usize("num_layers"),
        );
        let (batch, steps) = (as_usize("batch"), as_usize("steps"));
        let bidirectional = g["bidirectional"].as_bool().expect("bidirectional");
        let (x, h0, c0) = (tensor(&g, "x"), tensor(&g, "h0"), tensor(&g, "c0"));
        let out = if bidirectional {
            let pairs = (0..layers)
                .map(|l| {
                    let inp = if l == 0 { input } else { 2 * hidden };
                    (
                        layer(&g, l, "", inp, hidden),
                        layer(&g, l, "_reverse", inp, hidden),
                    )
                })
                .collect();
            BiLstm::new(pairs).expect("bilstm").run_sequences(
                isa,
                Sequences {
                    batch,
                    steps,
                    x: &x,
                },
                &h0,
                &c0,
            )
        } else {
            let stack = (0..layers)
                .map(|l| layer(&g, l, "", if l == 0 { input } else { hidden }, hidden))
                .collect();
            LstmStack::new(stack).expect("stack").run_sequences(
                isa,
                Sequences {
                    batch,
                    steps,
                    x: &x,
                },
                &h0,
                &c0,
                false,
            )
        };
        for (key, got) in [("output", &out.output), ("h_n", &out.h), ("c_n", &out.c)] {
            let diff = max_abs_diff(got, &tensor(&g, key));
            assert!(
                diff <= 1e-5,
                "{name} {key} ({isa:?}): max abs diff {diff} > 1e-5"
            );
        }
    }

    #[test]
    fn matches_pytorch_golden_vectors() {
        for isa in every_isa() {
            for name in [
                "lstm_small",
                "lstm_state",
                "lstm_2layer",
                "bilstm_small",
                "bilstm_2layer",
            ] {
                check_golden(name, isa);
            }
        }
    }

    /// Inputs over the whole line: a fine grid where the activations bend, then a coarse one
    /// out to where `exp_approx` clamps and far beyond, both signs, and the infinities.
    fn activation_inputs() -> impl Iterator<Item = f32> {
        let fine = (-20_000..=20_000).map(|i| i as f32 / 1000.0);
        let coarse = (0..=400)
            .map(|i| 10f32.powf(i as f32 / 100.0))
            .flat_map(|x| [x, -x]);
        let edges = [87.0, 88.0, 89.0, 1000.0, f32::MAX, f32::INFINITY];
        fine.chain(coarse)
            .chain(edges.into_iter().flat_map(|x| [x, -x]))
    }

    #[test]
    fn activations_match_f64_references_everywhere_without_nan() {
        let (mut exp_rel, mut sig_abs, mut tanh_abs) = (0f64, 0f64, 0f64);
        for x in activation_inputs() {
            let xd = f64::from(x);
            let (s, t) = (sigmoid(x), tanh(x));
            assert!(
                !s.is_nan() && (0.0..=1.0).contains(&s),
                "sigmoid({x}) = {s}"
            );
            assert!(!t.is_nan() && (-1.0..=1.0).contains(&t), "tanh({x}) = {t}");
            // Both saturate to within 1e-37 of the f64 value even where exp_approx clamps.
            sig_abs = sig_abs.max((f64::from(s) - 1.0 / (1.0 + (-xd).exp())).abs());
            tanh_abs = tanh_abs.max((f64::from(t) - xd.tanh()).abs());
            let e = exp_approx(x);
            assert!(e.is_finite() && e > 0.0, "exp_approx({x}) = {e}");
            if (-87.0..=88.0).contains(&x) {
                exp_rel = exp_rel.max(((f64::from(e) - xd.exp()) / xd.exp()).abs());
            }
        }
        assert!(exp_rel < 5e-7, "exp relative error {exp_rel}");
        assert!(sig_abs < 5e-7, "sigmoid abs error {sig_abs}");
        assert!(tanh_abs < 5e-7, "tanh abs error {tanh_abs}");
    }

    /// The exponential as the cell computed it one element at a time before its lanes
    /// (e57dcf1), written out again here so that the cell is held against a formula it does
    /// not share: any change to the bits of [`exp_lanes`] fails the tests below.
    fn exp_reference(x: f32) -> f32 {
        let x = x.clamp(-87.0, 88.0);
        let n = (x * LOG2E + 0.5).floor();
        let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
        let p = EXP_POLY[1..]
            .iter()
            .fold(EXP_POLY[0], |p, c| p.mul_add(r, *c));
        let y = p.mul_add(r * r, r) + 1.0;
        y * f32::from_bits((n + 8_388_735.0).to_bits() << 23)
    }

    fn sigmoid_reference(x: f32) -> f32 {
        1.0 / (1.0 + exp_reference(-x))
    }

    fn tanh_reference(x: f32) -> f32 {
        1.0 - 2.0 / (exp_reference(2.0 * x) + 1.0)
    }

    #[test]
    fn the_activations_keep_the_reference_bits() {
        let bits = |x: f32| x.to_bits();
        for x in activation_inputs().chain([f32::NAN, -f32::NAN]) {
            assert_eq!(bits(exp_approx(x)), bits(exp_reference(x)), "exp({x})");
            assert_eq!(bits(sigmoid(x)), bits(sigmoid_reference(x)), "σ({x})");
            assert_eq!(bits(tanh(x)), bits(tanh_reference(x)), "tanh({x})");
        }
    }

    /// Every instruction set this CPU has (all three on an AVX-512 machine), not only the
    /// portable one and the best.
    fn every_isa() -> Vec<Isa> {
        let isas: Vec<Isa> = [Some(Isa::PORTABLE), Isa::avx2(), Isa::avx512()]
            .into_iter()
            .flatten()
            .collect();
        assert!(isas.contains(&Isa::detect()));
        isas
    }

    #[test]
    fn the_cell_gives_each_element_the_scalar_formulas_bits_on_every_isa_and_width() {
        // Gate pre-activations from the whole activation sweep (both saturations and the
        // infinities); widths that leave whole 32- and 64-lane chunks, chunks of 8 and single
        // elements; a row stride that is not a multiple of anything.
        let inputs: Vec<f32> = activation_inputs().collect();
        let rows = 3;
        for hidden in [1, 7, 13, 40, 64, 77, 128] {
            let stride = 4 * hidden + 5;
            let mut gates0: Vec<f32> = (0..rows * stride)
                .map(|j| inputs[(j * 7919 + hidden) % inputs.len()])
                .collect();
            // The extremes in every gate of the first row.
            let extremes = [f32::NEG_INFINITY, f32::INFINITY, f32::MAX, -f32::MAX];
            let extremes = extremes.into_iter().chain([88.0, -88.0, 89.0, -89.0]);
            for gate in 0..4 {
                for (j, x) in extremes
                    .clone()
                    .cycle()
                    .skip(gate)
                    .take(hidden.min(8))
                    .enumerate()
                {
                    gates0[gate * hidden + j] = x;
                }
            }
            let c0: Vec<f32> = (0..rows * hidden)
                .map(|j| (j as f32 * 0.37).sin() * 30.0)
                .collect();
            // The cell's equations one element at a time, with the reference activations.
            let (sigmoid, tanh) = (sigmoid_reference, tanh_reference);
            let (mut want_c, mut want_h) = (c0.clone(), vec![0.0f32; rows * hidden]);
            for r in 0..rows {
                let g = |gate: usize, j: usize| gates0[r * stride + gate * hidden + j];
                for j in 0..hidden {
                    let (i, f) = (sigmoid(g(0, j)), sigmoid(g(1, j)));
                    let (cand, o) = (tanh(g(2, j)), sigmoid(g(3, j)));
                    let cj = f * want_c[r * hidden + j] + i * cand;
                    want_c[r * hidden + j] = cj;
                    want_h[r * hidden + j] = o * tanh(cj);
                }
            }
            for isa in every_isa() {
                let mut gates = gates0.clone();
                let (mut c, mut h) = (c0.clone(), vec![0.0f32; rows * hidden]);
                let cells = (c.as_mut_slice(), StateAt::Blocks, 0);
                cell(isa, &mut gates, stride, rows, hidden, cells, &mut h);
                assert_eq!(bits(&c), bits(&want_c), "c, hidden {hidden}, {isa:?}");
                assert_eq!(bits(&h), bits(&want_h), "h, hidden {hidden}, {isa:?}");
                // The same rows' cell states each at its own place, in reverse order with gaps
                // between them (the last row's one first), and a chunk that starts at row 1.
                let place = |r: usize| 3 + (rows - 1 - r) * (hidden + 2);
                let at: Vec<usize> = (0..rows).map(place).collect();
                let mut spread = vec![f32::NAN; 3 + rows * (hidden + 2)];
                for r in 0..rows {
                    spread[place(r)..][..hidden].copy_from_slice(&c0[r * hidden..][..hidden]);
                }
                let mut gates = gates0[stride..].to_vec();
                let mut h = vec![0.0f32; (rows - 1) * hidden];
                let rows_at = StateAt::Rows {
                    h: &[],
                    at: &at,
                    base: 0,
                };
                let cells = (spread.as_mut_slice(), rows_at, 1);
                cell(isa, &mut gates, stride, rows - 1, hidden, cells, &mut h);
                for r in 1..rows {
                    let (got, want) = (
                        &spread[place(r)..][..hidden],
                        &want_c[r * hidden..][..hidden],
                    );
                    assert_eq!(bits(got), bits(want), "c at its place, row {r}, {isa:?}");
                }
                assert_eq!(
                    bits(&h),
                    bits(&want_h[hidden..]),
                    "h, rows at their places, {isa:?}"
                );
            }
        }
    }

    #[test]
    fn activations_saturate_to_their_limits() {
        // Far left the sigmoid is e^-88 ≈ 6e-39 (exp_approx clamps at 88): zero to f32's
        // normal range, never negative or NaN; far right exactly 1. tanh reaches ±1 exactly.
        for x in [-88.0, -89.0, -1000.0, -f32::MAX, f32::NEG_INFINITY] {
            let s = sigmoid(x);
            assert!((0.0..1e-37).contains(&s), "sigmoid({x}) = {s}, not ≈ 0");
            assert_eq!(tanh(x), -1.0, "tanh({x})");
        }
        for x in [20.0, 88.0, 1000.0, f32::MAX, f32::INFINITY] {
            assert_eq!(sigmoid(x), 1.0, "sigmoid({x})");
            assert_eq!(tanh(x), 1.0, "tanh({x})");
        }
        assert_eq!(sigmoid(0.0), 0.5);
        assert_eq!(tanh(0.0), 0.0);
    }

    /// The bits of each float, for comparisons that tell −0 from +0 and NaNs apart.
    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Pseudo-random numbers in [−0.5, 0.5] (xorshift) from `seed`.
    fn uniform(mut seed: u32) -> impl FnMut() -> f32 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed as f32 / u32::MAX as f32) - 0.5
        }
    }

    #[test]
    fn every_isa_and_batch_size_gives_identical_bits() {
        // Pseudo-random weights and inputs; a row's result must not depend on its batch.
        // Rows across two step chunks and a part of one, whose 13 rows pad to 16: AVX2 blocks
        // of 6, 6 and 4 rows, AVX-512 tiles of 12 and 4; a lone row pads to 8: blocks of 6 and
        // 2, one AVX-512 tile of 8.
        let (input, hidden, rows) = (5, 24, 2 * STEP_CHUNK + 13);
        let mut next = uniform(0x2545_f491);
        let w_ih: Vec<f32> = (0..4 * hidden * input).map(|_| next()).collect();
        let w_hh: Vec<f32> = (0..4 * hidden * hidden).map(|_| next()).collect();
        let b: Vec<f32> = (0..4 * hidden).map(|_| next()).collect();
        let layer = LstmLayer::from_pytorch(input, hidden, &w_ih, &w_hh, &b, &b);
        let x: Vec<f32> = (0..rows * input).map(|_| next() * 4.0).collect();
        let h0: Vec<f32> = (0..rows * hidden).map(|_| next()).collect();
        let c0: Vec<f32> = (0..rows * hidden).map(|_| next()).collect();
        let mut reference: Option<(Vec<f32>, Vec<f32>)> = None;
        for isa in every_isa() {
            let mut ws = Workspace::default();
            let (mut h, mut c) = (h0.clone(), c0.clone());
            layer.step(isa, &mut ws, rows, &x, &mut h, &mut c);
            match &reference {
                None => reference = Some((h, c)),
                Some((rh, rc)) => {
                    assert_eq!(bits(&h), bits(rh), "h, {isa:?}");
                    assert_eq!(bits(&c), bits(rc), "c, {isa:?}");
                }
            }
            let (rh, rc) = reference.as_ref().expect("set above");
            for r in 0..rows {
                let (mut h1, mut c1) = (
                    h0[r * hidden..(r + 1) * hidden].to_vec(),
                    c0[r * hidden..(r + 1) * hidden].to_vec(),
                );
                layer.step(
                    isa,
                    &mut ws,
                    1,
                    &x[r * input..(r + 1) * input],
                    &mut h1,
                    &mut c1,
                );
                let own = r * hidden..(r + 1) * hidden;
                assert_eq!(bits(&h1), bits(&rh[own.clone()]), "row {r} h, {isa:?}");
                assert_eq!(bits(&c1), bits(&rc[own]), "row {r} c, {isa:?}");
            }
        }
    }
    #[test]
    fn a_stack_stepped_where_its_rows_lie_gives_the_bits_of_blocks() {
        // Two layers; rows across a step chunk and a part of one, each row's state (both
        // layers') at its own slot of a larger per-device array, in no order, slot 0 unused.
        let (input, hidden, top, rows) = (5, 24, 16, STEP_CHUNK + 13);
        let mut next = uniform(0x9e37_79b9);
        let mut layer = |inp: usize, hid: usize| {
            let w_ih: Vec<f32> = (0..4 * hid * inp).map(|_| next()).collect();
            let w_hh: Vec<f32> = (0..4 * hid * hid).map(|_| next()).collect();
            let b: Vec<f32> = (0..4 * hid).map(|_| next()).collect();
            LstmLayer::from_pytorch(inp, hid, &w_ih, &w_hh, &b, &b)
        };
        let stack = LstmStack::new(vec![layer(input, hidden), layer(hidden, top)]).expect("stack");
        let s_len = stack.state_len();
        let x: Vec<f32> = (0..rows * input).map(|_| next() * 4.0).collect();
        // Per layer, a block of rows × width: the layout of `step`.
        let h0: Vec<f32> = (0..rows * s_len).map(|_| next()).collect();
        let c0: Vec<f32> = (0..rows * s_len).map(|_| next()).collect();
        let slot = |r: usize| 1 + (r * 37) % rows;
        let mut slots_h = vec![f32::NAN; (rows + 1) * s_len];
        let mut slots_c = slots_h.clone();
        let mut base = 0;
        for width in [hidden, top] {
            for r in 0..rows {
                let (from, to) = (rows * base + r * width, slot(r) * s_len + base);
                slots_h[to..to + width].copy_from_slice(&h0[from..from + width]);
                slots_c[to..to + width].copy_from_slice(&c0[from..from + width]);
            }
            base += width;
        }
        let at: Vec<usize> = (0..rows).map(|r| slot(r) * s_len).collect();
        for isa in every_isa() {
            let mut ws = Workspace::default();
            let (mut h, mut c) = (h0.clone(), c0.clone());
            stack.step(isa, &mut ws, rows, &x, &mut h, &mut c);
            let (mut h_out, mut cells) = (vec![f32::NAN; rows * s_len], slots_c.clone());
            let state = (slots_h.as_slice(), cells.as_mut_slice(), at.as_slice());
            stack.step_rows(isa, &mut ws, (rows, &x), state, &mut h_out);
            assert_eq!(bits(&h_out), bits(&h), "new hidden states, {isa:?}");
            let mut base = 0;
            for width in [hidden, top] {
                for r in 0..rows {
                    let (want, got) = (rows * base + r * width, slot(r) * s_len + base);
                    let (want, got) = (&c[want..want + width], &cells[got..got + width]);
                    assert_eq!(bits(got), bits(want), "cell state of row {r}, {isa:?}");
                }
                base += width;
            }
        }
    }
}
