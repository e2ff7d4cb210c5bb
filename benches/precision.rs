//! Would narrower numbers pay in the LSTM step's matrix product? (Issue 20, item 2: "consider
//! bf16/AVX-512-BF16 or int8 (VNNI) weights".) One step chunk of rows ([`STEP_CHUNK`]) through
//! a layer's gate product `[x, h] · W + b`, three ways, on one core:
//!
//! - **f32**: the engine's own kernel ([`gemm_bias`]), what `serve` runs;
//! - **bf16**: weights and inputs rounded to bfloat16, pairs of products accumulated in f32 by
//!   `VDPBF16PS` (AVX-512 BF16);
//! - **int8**: weights quantised per column, each row's inputs per row, products of four
//!   accumulated in i32 by `VPDPBUSD` (AVX-512 VNNI), then scaled back.
//!
//! The two narrow products are sketches written for this measurement, laid out as the f32
//! kernel is (panels of 32 columns, tiles of 12 rows, rows in blocks that stay in L1): they
//! are not in the engine. Each prints ns a row (best of the rounds, interleaved) and how far
//! its gate pre-activations fall from the f32 kernel's (largest absolute difference, and its
//! root mean square), the first thing an accuracy check would look at. Shapes: hidden 32/64/128
//! × 8 features. The narrow products run only where the CPU has both AVX-512 BF16 and VNNI
//! (their sketches are compiled for both); elsewhere only the f32 column is printed.
//!
//! `cargo bench --bench precision` (`taskset -c 0` to pin it; `-- ROUNDS`, default 5).

// The narrow products are x86-64 sketches; elsewhere only the f32 kernel is timed.
#![cfg_attr(
    not(target_arch = "x86_64"),
    allow(dead_code, unused_imports, unused_mut, unused_variables)
)]

use sensorcast::engine::kernel::{Isa, PackedMatrix, ROW_PAD, STEP_CHUNK, gemm_bias};
use std::hint::black_box;
use std::time::Instant;

/// Columns per packed panel, as in the engine's kernel.
const NR: usize = 32;
/// Bytes of a block of input rows that pass one panel together, as in the engine's kernel.
const A_BLOCK_BYTES: usize = 24 * 1024;
/// Chunks timed per round (about 4096 rows, the engine's micro-batch).
const CHUNKS: usize = 4096 / STEP_CHUNK;

/// One shape's inputs: row-major weights `k × n`, bias, and the rows `[x, h]`.
struct Case {
    hidden: usize,
    k: usize,
    n: usize,
    weights: Vec<f32>,
    bias: Vec<f32>,
    rows: Vec<f32>,
}

impl Case {
    /// PyTorch's initialisation (uniform within ±1/√hidden), inputs as the engine sees them:
    /// standardised readings (within ±3) and hidden states in (−1, 1).
    fn new(hidden: usize, features: usize, seed: u64) -> Self {
        let mut s = seed;
        let mut uniform = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let (k, n) = (features + hidden, 4 * hidden);
        let bound = 1.0 / (hidden as f32).sqrt();
        let weights = (0..k * n).map(|_| uniform() * bound).collect();
        let bias = (0..n).map(|_| uniform() * bound).collect();
        let rows = (0..CHUNKS * STEP_CHUNK * k)
            .map(|i| {
                if i % k < features {
                    uniform() * 3.0
                } else {
                    (uniform() * 2.0).tanh()
                }
            })
            .collect();
        Self {
            hidden,
            k,
            n,
            weights,
            bias,
            rows,
        }
    }
}

/// Round to nearest even, as `VCVTNE2PS2BF16` does for normal numbers.
fn bf16(x: f32) -> u16 {
    let b = x.to_bits();
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// Weights packed for the narrow products: for each panel of [`NR`] columns and each group of
/// `per` consecutive `k`, one 32-bit word per column holding the group's `per` narrow values.
struct Narrow {
    groups: usize,
    n_pad: usize,
    words: Vec<u32>,
    bias: Vec<f32>,
    /// int8 only: each column's scale, and the sum of its quantised weights (the correction
    /// for the inputs' offset of 128).
    scale: Vec<f32>,
    sums: Vec<i32>,
}

impl Narrow {
    fn pack(case: &Case, per: usize, value: impl Fn(usize, usize) -> u32) -> Self {
        let n_pad = case.n.div_ceil(NR) * NR;
        let groups = case.k.div_ceil(per);
        let mut words = vec![0u32; groups * n_pad];
        for p in 0..n_pad / NR {
            for g in 0..groups {
                for j in 0..NR {
                    let col = p * NR + j;
                    if col >= case.n {
                        continue;
                    }
                    let mut word = 0u32;
                    for e in 0..per {
                        let kk = g * per + e;
                        if kk < case.k {
                            word |= value(kk, col) << (e * 32 / per);
                        }
                    }
                    words[p * groups * NR + g * NR + j] = word;
                }
            }
        }
        let mut bias = vec![0.0; n_pad];
        bias[..case.n].copy_from_slice(&case.bias);
        Self {
            groups,
            n_pad,
            words,
            bias,
            scale: vec![0.0; n_pad],
            sums: vec![0; n_pad],
        }
    }

    fn bf16(case: &Case) -> Self {
        Self::pack(case, 2, |kk, col| {
            u32::from(bf16(case.weights[kk * case.n + col]))
        })
    }

    fn int8(case: &Case) -> Self {
        let scale: Vec<f32> = (0..case.n)
            .map(|col| {
                let most = (0..case.k)
                    .map(|kk| case.weights[kk * case.n + col].abs())
                    .fold(0.0f32, f32::max);
                if most > 0.0 { most / 127.0 } else { 1.0 }
            })
            .collect();
        let q = |kk: usize, col: usize| {
            (case.weights[kk * case.n + col] / scale[col])
                .round()
                .clamp(-127.0, 127.0) as i8
        };
        let mut packed = Self::pack(case, 4, |kk, col| u32::from(q(kk, col) as u8));
        packed.scale[..case.n].copy_from_slice(&scale);
        for (col, sum) in packed.sums[..case.n].iter_mut().enumerate() {
            *sum = (0..case.k).map(|kk| i32::from(q(kk, col))).sum();
        }
        packed
    }
}

/// Rows in the bf16 layout: pairs of consecutive inputs per word.
fn rows_bf16(case: &Case, rows: &[f32], out: &mut Vec<u32>) {
    out.clear();
    for row in rows.chunks_exact(case.k) {
        for pair in row.chunks(2) {
            let odd = pair.get(1).map_or(0, |&v| bf16(v));
            out.push(u32::from(bf16(pair[0])) | u32::from(odd) << 16);
        }
    }
}

/// Rows in the int8 layout: each row scaled to ±127 by its largest magnitude, offset by 128
/// (`VPDPBUSD` multiplies unsigned by signed bytes), four a word; and each row's scale.
fn rows_int8(case: &Case, rows: &[f32], out: &mut Vec<u32>, scales: &mut Vec<f32>) {
    out.clear();
    scales.clear();
    for row in rows.chunks_exact(case.k) {
        let most = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = if most > 0.0 { most / 127.0 } else { 1.0 };
        scales.push(scale);
        for quad in row.chunks(4) {
            let mut word = 0u32;
            for (e, v) in quad.iter().enumerate() {
                let q = (v / scale).round().clamp(-127.0, 127.0) as i32 + 128;
                word |= (q as u32) << (8 * e);
            }
            out.push(word);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod narrow {
    use super::{A_BLOCK_BYTES, NR, Narrow, ROW_PAD};
    use std::arch::x86_64::*;

    /// Which of the two narrow products a tile runs.
    #[derive(Clone, Copy, PartialEq)]
    pub enum Kind {
        Bf16,
        Int8,
    }

    /// `out[rows × n_pad]` from rows of `w.groups` words each (and, for int8, each row's
    /// scale), in blocks of rows through one panel after another, as the f32 kernel.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and, for `Kind::Bf16`, AVX-512 BF16, for `Kind::Int8`,
    /// AVX-512 VNNI; `a` must hold `rows · w.groups` words and `out` `rows · w.n_pad` floats.
    #[target_feature(enable = "avx512f,avx512bf16,avx512vnni")]
    pub unsafe fn gemm(
        kind: Kind,
        a: &[u32],
        scales: &[f32],
        rows: usize,
        w: &Narrow,
        out: &mut [f32],
    ) {
        assert!(a.len() >= rows * w.groups && out.len() >= rows * w.n_pad);
        assert!(rows.is_multiple_of(ROW_PAD));
        let block_rows = (A_BLOCK_BYTES / (4 * w.groups) / ROW_PAD).max(1) * ROW_PAD;
        for block in (0..rows).step_by(block_rows) {
            let end = rows.min(block + block_rows);
            for p in 0..w.n_pad / NR {
                // SAFETY: each tile covers rows block..end ≤ rows and panel p (asserted
                // bounds above; `scales`, read for int8 only, is indexed with bounds checks);
                // the caller vouches for the CPU.
                unsafe {
                    match kind {
                        Kind::Bf16 => tiles::<true>(a, scales, (block, end), w, p, out),
                        Kind::Int8 => tiles::<false>(a, scales, (block, end), w, p, out),
                    }
                }
            }
        }
    }

    /// Rows `rows.0..rows.1` (a multiple of 4) through panel `p`: tiles of 12 rows, then 8, 4.
    #[target_feature(enable = "avx512f,avx512bf16,avx512vnni")]
    #[inline]
    unsafe fn tiles<const BF16: bool>(
        a: &[u32],
        scales: &[f32],
        (mut r0, end): (usize, usize),
        w: &Narrow,
        p: usize,
        out: &mut [f32],
    ) {
        // SAFETY: as for `gemm`.
        unsafe {
            while end - r0 >= 12 {
                tile::<12, BF16>(a, scales, r0, w, p, out);
                r0 += 12;
            }
            if end - r0 >= 8 {
                tile::<8, BF16>(a, scales, r0, w, p, out);
                r0 += 8;
            }
            if end - r0 >= 4 {
                tile::<4, BF16>(a, scales, r0, w, p, out);
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16,avx512vnni")]
    #[inline]
    unsafe fn tile<const MR: usize, const BF16: bool>(
        a: &[u32],
        scales: &[f32],
        r0: usize,
        w: &Narrow,
        p: usize,
        out: &mut [f32],
    ) {
        let (groups, n_pad) = (w.groups, w.n_pad);
        // SAFETY: within the bounds `gemm` asserted.
        unsafe {
            let arow = a.as_ptr().add(r0 * groups);
            let panel = w.words.as_ptr().add(p * groups * NR);
            let col = |v: &[f32], half: usize| _mm512_loadu_ps(v.as_ptr().add(p * NR + half));
            let (b0, b1) = (col(&w.bias, 0), col(&w.bias, 16));
            let mut c = [[_mm512_setzero_si512(); 2]; MR];
            if BF16 {
                c = [[_mm512_castps_si512(b0), _mm512_castps_si512(b1)]; MR];
            }
            for g in 0..groups {
                let w0 = _mm512_loadu_si512(panel.add(g * NR).cast());
                let w1 = _mm512_loadu_si512(panel.add(g * NR + 16).cast());
                for (r, cr) in c.iter_mut().enumerate() {
                    let av = _mm512_set1_epi32(*arow.add(r * groups + g) as i32);
                    match BF16 {
                        true => {
                            let dot = |acc: __m512i, wv: __m512i| {
                                _mm512_castps_si512(_mm512_dpbf16_ps(
                                    _mm512_castsi512_ps(acc),
                                    std::mem::transmute::<__m512i, __m512bh>(av),
                                    std::mem::transmute::<__m512i, __m512bh>(wv),
                                ))
                            };
                            cr[0] = dot(cr[0], w0);
                            cr[1] = dot(cr[1], w1);
                        }
                        false => {
                            cr[0] = _mm512_dpbusd_epi32(cr[0], av, w0);
                            cr[1] = _mm512_dpbusd_epi32(cr[1], av, w1);
                        }
                    }
                }
            }
            let op = out.as_mut_ptr();
            for (r, cr) in c.iter().enumerate() {
                let dst = op.add((r0 + r) * n_pad + p * NR);
                let (v0, v1) = match BF16 {
                    true => (_mm512_castsi512_ps(cr[0]), _mm512_castsi512_ps(cr[1])),
                    false => {
                        // (Σ (q_a + 128)·q_w − 128·Σ q_w) · s_row · s_col + b
                        let row = _mm512_set1_ps(scales[r0 + r]);
                        let back = |acc: __m512i, half: usize, b: __m512| {
                            let sums =
                                _mm512_loadu_si512(w.sums.as_ptr().add(p * NR + half).cast());
                            let exact = _mm512_sub_epi32(acc, _mm512_slli_epi32::<7>(sums));
                            let scale = _mm512_mul_ps(row, col(&w.scale, half));
                            _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), scale, b)
                        };
                        (back(cr[0], 0, b0), back(cr[1], 16, b1))
                    }
                };
                _mm512_storeu_ps(dst, v0);
                _mm512_storeu_ps(dst.add(16), v1);
            }
        }
    }
}

/// Largest absolute difference and root mean square difference over the real columns.
fn error(case: &Case, n_pad: usize, ours: &[f32], exact: &[f32]) -> (f32, f32) {
    let (mut most, mut sq, mut count) = (0.0f32, 0.0f64, 0usize);
    for (a, b) in ours.chunks_exact(n_pad).zip(exact.chunks_exact(n_pad)) {
        for (x, y) in a[..case.n].iter().zip(&b[..case.n]) {
            most = most.max((x - y).abs());
            sq += f64::from(x - y).powi(2);
            count += 1;
        }
    }
    (most, (sq / count.max(1) as f64).sqrt() as f32)
}

/// Nanoseconds a row of one pass over every chunk.
fn time_rows(mut pass: impl FnMut()) -> f64 {
    let start = Instant::now();
    pass();
    start.elapsed().as_nanos() as f64 / (CHUNKS * STEP_CHUNK) as f64
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5)
        .max(1);
    let isa = Isa::detect();
    #[cfg(target_arch = "x86_64")]
    let narrow_ok = Isa::avx512().is_some()
        && std::arch::is_x86_feature_detected!("avx512bf16")
        && std::arch::is_x86_feature_detected!("avx512vnni");
    #[cfg(not(target_arch = "x86_64"))]
    let narrow_ok = false;
    println!("isa={isa:?} narrow_products={narrow_ok} rounds={rounds} rows_a_chunk={STEP_CHUNK}");
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9}  {:>21} {:>22}  {:>13}",
        "shape",
        "f32_ns",
        "bf16_ns",
        "int8_ns",
        "bf16/f32",
        "int8/f32",
        "bf16 err (max, rms)",
        "int8 err (max, rms)",
        "rounding_ns"
    );
    for hidden in [32, 64, 128] {
        let case = Case::new(hidden, 8, 0x9e37_79b9_7f4a_7c15 ^ hidden as u64);
        let packed = PackedMatrix::new(case.k, case.n, &case.weights, &case.bias);
        let n_pad = packed.n_pad();
        assert_eq!(
            n_pad,
            case.n.div_ceil(NR) * NR,
            "the narrow layouts pad as the kernel does"
        );
        let chunk_out = STEP_CHUNK * n_pad;
        let mut exact = vec![0.0f32; CHUNKS * chunk_out];
        let f32_pass = |out: &mut [f32]| {
            for (c, o) in out.chunks_exact_mut(chunk_out).enumerate() {
                let a = &case.rows[c * STEP_CHUNK * case.k..(c + 1) * STEP_CHUNK * case.k];
                gemm_bias(isa, a, STEP_CHUNK, &packed, o);
            }
        };
        f32_pass(&mut exact);
        let mut best = [f64::MAX; 3];
        let (mut a16, mut a8, mut scales): (Vec<u32>, Vec<u32>, Vec<f32>) = Default::default();
        let (w16, w8) = (Narrow::bf16(&case), Narrow::int8(&case));
        let mut narrow_out = vec![0.0f32; CHUNKS * chunk_out];
        let mut errors = [(f32::NAN, f32::NAN); 2];
        let mut round_ns = [f64::MAX; 2];
        // Written once before the rounds, so that no round's time includes first touches.
        let mut out = exact.clone();
        for _ in 0..rounds {
            best[0] = best[0].min(time_rows(|| f32_pass(black_box(&mut out))));
            if !narrow_ok {
                continue;
            }
            #[cfg(target_arch = "x86_64")]
            for (i, kind) in [narrow::Kind::Bf16, narrow::Kind::Int8]
                .into_iter()
                .enumerate()
            {
                let w = if kind == narrow::Kind::Bf16 {
                    &w16
                } else {
                    &w8
                };
                let chunk_in = STEP_CHUNK * w.groups;
                // The inputs rounded up front (scalar code, timed apart: vector code would
                // take a fraction of it), the product timed alone.
                let start = Instant::now();
                match kind {
                    narrow::Kind::Bf16 => rows_bf16(&case, &case.rows, &mut a16),
                    narrow::Kind::Int8 => rows_int8(&case, &case.rows, &mut a8, &mut scales),
                }
                let rounding = start.elapsed().as_nanos() as f64 / (CHUNKS * STEP_CHUNK) as f64;
                round_ns[i] = round_ns[i].min(rounding);
                let a = if kind == narrow::Kind::Bf16 {
                    &a16
                } else {
                    &a8
                };
                best[1 + i] = best[1 + i].min(time_rows(|| {
                    for (c, o) in narrow_out.chunks_exact_mut(chunk_out).enumerate() {
                        let (rows, scales) = (
                            &a[c * chunk_in..(c + 1) * chunk_in],
                            scales.get(c * STEP_CHUNK..).unwrap_or(&[]),
                        );
                        // SAFETY: `narrow_ok` checked AVX-512F, BF16 and VNNI; `rows` holds
                        // STEP_CHUNK rows of `w.groups` words (and `scales` their scales for
                        // int8), `o` STEP_CHUNK · n_pad floats.
                        unsafe { narrow::gemm(kind, rows, scales, STEP_CHUNK, w, black_box(o)) };
                    }
                }));
                errors[i] = error(&case, n_pad, &narrow_out, &exact);
            }
        }
        let ratio = |b: f64| if b == f64::MAX { f64::NAN } else { b / best[0] };
        let ns = |b: f64| if b == f64::MAX { f64::NAN } else { b };
        println!(
            "{:<10} {:>9.1} {:>9.1} {:>9.1} {:>9.2} {:>9.2}  {:>10.2e} {:>10.2e}  {:>10.2e} {:>10.2e}  {:>6.1} {:>6.1}",
            format!("{}x8", case.hidden),
            best[0],
            ns(best[1]),
            ns(best[2]),
            ratio(best[1]),
            ratio(best[2]),
            errors[0].0,
            errors[0].1,
            errors[1].0,
            errors[1].1,
            ns(round_ns[0]),
            ns(round_ns[1]),
        );
    }
    println!(
        "(ns a row of the gate product [x, h]·W + b, best of the rounds, the narrow ones on inputs \
         rounded up front; rounding_ns: that rounding, bf16 then int8, in scalar code; err: the \
         narrow products' gate pre-activations against the f32 kernel's)"
    );
}
