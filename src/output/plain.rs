//! The shortest round-trip text of an `f32` in plain decimal notation (`0.92726374`,
//! `75.0423`, `2.0`), computed and written straight into a line-protocol body.
//!
//! Most of a point's numbers are `f32`s between 0.001 and a few million: readings, forecasts
//! and their bands, contributions. zmij wrote them into its own buffer, moved the digits
//! around the decimal point there (calls to `memmove` and `memset`), and `put` then read the
//! buffer back while those stores were still in flight, a load that store forwarding cannot
//! serve. Here the digits are made in registers and stored once, where they belong.
//!
//! The digits are the ones every shortest formatter agrees on (ryu, zmij): the fewest
//! significant digits that read back as the same `f32`, and of those the nearest to its exact
//! value, ties to even. `every_f32_is_written_as_ryu_wrote_it` (in `output.rs`; `#[ignore]`d,
//! minutes: `scripts/test.sh` runs it) compares every `f32` bit pattern with ryu's text.
//!
//! How: a normal `f32` is `m·2^e` (`m` < 2^24), and every real number strictly within half a
//! unit in the last place of it reads back as it (the ends too where `m` is even: ties go to
//! the even significand). In units of 2^(e−2) the interval is `[4m − 2, 4m + 2]` (`4m − 1`
//! below where `m` = 2^23: the float below is closer there), and since `e` < 0 here, it
//! scales to `j` decimal places with integer arithmetic only: multiply by 10^j, shift right
//! by `2 − e`. At the `j` where it is between 1 and 10 units wide the answer is found without
//! a search ([`shortest`]); the digits are then made eight at a time in one word
//! ([`eight_digits`]), and stored in place: twice, overlapping, around the point.
//!
//! Measured with `cargo bench --bench encode` (AMD EPYC Zen 2 VM, one core): encoding a
//! reading takes 9–13 % less time than with zmij, the same bytes.

/// `|v|` from 2^−10 (so that `4m + 2` times 10^11, the most places needed, fits in a `u64`)
/// to below 2^23 (so that a unit in the last place is at most ½, and no shorter text with
/// trailing zeros before the point exists); the biased exponents of those.
const FIRST_EXPONENT: u32 = 127 - 10;
const LAST_EXPONENT: u32 = 127 + 22;

/// Appends `v` as its shortest plain decimal where `v` is zero or `|v|` is within
/// [2^−10, 2^23); returns whether it did (else nothing was appended).
#[inline(always)]
pub(super) fn push(out: &mut String, v: f32) -> bool {
    let bits = v.to_bits();
    let negative = bits >> 31 != 0;
    let biased = (bits >> 23) & 0xff;
    let fraction = bits & 0x7f_ffff;
    if bits << 1 == 0 {
        super::put(out, if negative { "-0.0" } else { "0.0" });
        return true;
    }
    // The digits are assembled in the byte order of a little-endian machine.
    if cfg!(target_endian = "big") || !(FIRST_EXPONENT..=LAST_EXPONENT).contains(&biased) {
        return false;
    }
    let (digits, places) = shortest(fraction, biased);
    // SAFETY: `shortest` gives at most 11 places (10, or 11 for a power of two).
    unsafe { write(out, negative, digits, places) };
    true
}

/// The shortest decimal of the normal `f32` with these fields, as an integer of at most nine
/// digits and the number of places after the point (`(75042, 3)` for 75.042).
///
/// At `places` = floor(−e·log10 2) + 1 the interval is between 1 and 10 units wide (the ends
/// of an odd `m` excluded, of an even one included), so it holds one integer or more, and at
/// most one multiple of ten. Where it holds one, that is the answer, with its trailing zeros
/// dropped (a place each); where not, every integer in it has as many digits, and the answer
/// is the one nearest to the exact value. No branch depends on the parity.
#[inline(always)]
fn shortest(fraction: u32, biased: u32) -> (u64, u32) {
    let m = u64::from(fraction | 0x80_0000);
    let e = biased as i32 - 150; // v = m·2^e, −33 ≤ e ≤ −1
    let shift = (2 - e) as u32;
    let centre = 4 * m;
    if fraction == 0 {
        return power_of_two(centre, shift, e);
    }
    let places = log10_pow2((-e) as u32) + 1; // ≤ 10: (centre + 2)·10^10 < 2^26 · 10^10
    let scale = POW10[places as usize];
    let (first, last) = bounds(centre - 2, centre + 2, scale, shift, m & 1 == 0);
    let tens = first.div_ceil(10);
    let (t, places) = std::hint::select_unpredictable(
        tens * 10 <= last,
        (tens, places - 1),
        (nearest(centre * scale, shift).clamp(first, last), places),
    );
    if places > 0 && t.is_multiple_of(10) {
        return trimmed(t, places);
    }
    (t, places)
}

/// `t` with its trailing zeros dropped, a place each (down to none). Out of line: the
/// forecasts and bands, most of a point's numbers, never come here, and a loop inlined into
/// every writer slowed them. Readings sent with few decimals (21.0, 75.04) do: with them,
/// encoding gains 6–7 % over zmij instead of 11–13 % (`cargo bench --bench encode`,
/// `default_two_decimals` against `default`).
#[cold]
fn trimmed(mut t: u64, mut places: u32) -> (u64, u32) {
    while places > 0 && t.is_multiple_of(10) {
        (t, places) = (t / 10, places - 1);
    }
    (t, places)
}

/// floor(log10 2^k) for 0 ≤ `k` ≤ 33: 78913 / 2^18 falls short of log10 2 by 8·10^−7, too
/// little to change the floor for any `k` below 1651.
#[inline(always)]
fn log10_pow2(k: u32) -> u32 {
    (k * 78_913) >> 18
}

/// The integers from the low end to the high end (in units of 2^−`shift` once times `scale`):
/// the ceiling of the one and the floor of the other where the ends are `included`; else one
/// more than the floor of the low end, and one less than the ceiling of the high end.
#[inline(always)]
fn bounds(low: u64, high: u64, scale: u64, shift: u32, included: bool) -> (u64, u64) {
    let excluded = u64::from(!included);
    let first = (low * scale + (1 << shift) - 1 + excluded) >> shift;
    let last = (high * scale - excluded) >> shift;
    (first, last)
}

/// `exact / 2^shift` rounded to the nearest integer, ties to even.
#[inline(always)]
fn nearest(exact: u64, shift: u32) -> u64 {
    let (whole, rest, half) = (exact >> shift, exact & ((1 << shift) - 1), 1 << (shift - 1));
    whole + u64::from(rest > half || (rest == half && whole % 2 == 1))
}

/// [`shortest`] for a power of two (`m` = 2^23, even, so the ends are included), whose
/// interval reaches only half as far below (`4m − 1`): from a place where it is over 7 units
/// wide, one place is dropped for as long as it still holds a multiple of ten.
#[cold]
fn power_of_two(centre: u64, shift: u32, e: i32) -> (u64, u32) {
    let mut places = log10_pow2((-e) as u32) + 2; // ≤ 11
    let scale = POW10[places as usize];
    let (mut first, mut last) = bounds(centre - 1, centre + 2, scale, shift, true);
    while places > 0 {
        let (f, l) = (first.div_ceil(10), last / 10);
        if f > l {
            break;
        }
        (first, last, places) = (f, l, places - 1);
    }
    let exact = centre * POW10[places as usize];
    (nearest(exact, shift).clamp(first, last), places)
}

/// 10^0 to 10^11.
const POW10: [u64; 12] = {
    let mut p = [1u64; 12];
    let mut i = 1;
    while i < 12 {
        p[i] = p[i - 1] * 10;
        i += 1;
    }
    p
};

/// Appends `digits` (1 ≤ `digits` < 10^9) with the point `places` from the right: `12.34`,
/// `0.0012`, `1234.0` for no places.
///
/// # Safety
///
/// `places` ≤ 11: the stores' reach depends on it.
#[inline(always)]
unsafe fn write(out: &mut String, negative: bool, digits: u64, places: u32) {
    debug_assert!((1..1_000_000_000).contains(&digits) && places <= 11);
    let n = digit_count(digits as u32);
    let text = ascii(digits as u32, n);
    let places = places as usize;
    out.reserve(29);
    // SAFETY: `reserve` made room for 29 bytes past the length, and every store below ends
    // within it: the sign (1), then for a number below 1 "0." and at most 10 zeros before
    // the digits' 16-byte store (`places` ≤ 11, `n` ≥ 1), 28; for one of at least 1 with
    // places, the second 16-byte store after at most 8 digits and the point, 25; without
    // places, 16 (and ".0" after at most 10 digits). Only ASCII is stored, and the length
    // grows over bytes all stored here.
    unsafe {
        let v = out.as_mut_vec();
        let start = v.len();
        let mut dst = v.as_mut_ptr().add(start);
        *dst = b'-';
        dst = dst.add(usize::from(negative));
        let len = if n > places {
            let whole = n - places;
            dst.cast::<u128>().write_unaligned(text);
            if places == 0 {
                dst.add(n).cast::<[u8; 2]>().write_unaligned(*b".0");
                n + 2
            } else {
                dst.add(whole + 1)
                    .cast::<u128>()
                    .write_unaligned(text >> (8 * whole));
                *dst.add(whole) = b'.';
                n + 1
            }
        } else {
            dst.cast::<u128>()
                .write_unaligned(u128::from_ne_bytes([b'0'; 16]));
            *dst.add(1) = b'.';
            dst.add(2 + places - n).cast::<u128>().write_unaligned(text);
            places + 2
        };
        v.set_len(start + usize::from(negative) + len);
    }
}

/// How many decimal digits `x` ≥ 1 has: from its bit length (·1233/4096 ≈ log10 2), and one
/// comparison. Computed apart from the digits, so that the body's length, on which the next
/// piece's place waits, does not wait for them.
#[inline(always)]
fn digit_count(x: u32) -> usize {
    let guess = ((32 - x.leading_zeros()) * 1233) >> 12;
    (guess + u32::from(u64::from(x) >= POW10[guess as usize])) as usize
}

/// The `n` decimal digits of `x` (`x` < 10^9) as ASCII, the first in the lowest byte (the
/// order of memory on a little-endian machine; the bytes past them are 0).
#[inline(always)]
fn ascii(x: u32, n: usize) -> u128 {
    let (top, rest) = (x / 100_000_000, x % 100_000_000);
    let nine = u128::from(top) | u128::from(eight_digits(rest)) << 8;
    (nine | 0x30_3030_3030_3030_3030) >> (8 * (9 - n))
}

/// The eight decimal digits of `x` < 10^8, with leading zeros, as the byte values 0–9, the
/// first in the lowest byte. Every step divides the lanes of one word at once: by 10⁴ into
/// two 32-bit lanes, by 100 (`·5243 >> 19`, exact below 43 699) into four 16-bit lanes, by 10
/// (`·103 >> 10`, exact below 179) into eight bytes. A lane's product stays below its width,
/// and what the shift brings down from the lane above lands in bits the mask clears.
#[inline(always)]
fn eight_digits(x: u32) -> u64 {
    let fours = u64::from(x / 10_000) | u64::from(x % 10_000) << 32;
    let hundreds = ((fours * 5243) >> 19) & 0x0000_007f_0000_007f;
    let pairs = hundreds | (fours - hundreds * 100) << 16;
    let tens = ((pairs * 103) >> 10) & 0x000f_000f_000f_000f;
    tens | (pairs - tens * 10) << 8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: f32) -> Option<String> {
        let mut s = String::from("x=");
        push(&mut s, v).then(|| s[2..].to_string())
    }

    #[test]
    fn eight_digits_are_the_digits() {
        for x in (0..100_000_000)
            .step_by(9_973)
            .chain([0, 1, 99_999_999, 10_000_000])
        {
            let bytes = eight_digits(x).to_le_bytes().map(|d| (b'0' + d) as char);
            assert_eq!(String::from_iter(bytes), format!("{x:08}"), "{x}");
        }
    }

    #[test]
    fn plain_numbers_read_as_ryu_writes_them() {
        let low = 2f32.powi(-10);
        let below_low = f32::from_bits(low.to_bits() - 1);
        let top = f32::from_bits(2f32.powi(23).to_bits() - 1); // 8388607.5
        for (v, written) in [
            (low, true),
            (below_low, false),
            (top, true),
            (2f32.powi(23), false),
            (-low, true),
            (0.0, true),
            (-0.0, true),
            (f32::MAX, false),
            (f32::NAN, false),
        ] {
            assert_eq!(text(v).is_some(), written, "{v}");
        }
        // Powers of two (their own way) and their neighbours, short decimals (trimmed), and
        // every 997th bit pattern.
        let powers = (-10..=22).flat_map(|k| {
            let p = 2f32.powi(k).to_bits();
            [p - 1, p, p + 1].map(f32::from_bits)
        });
        let short = [
            1.0,
            10.0,
            21.0,
            0.5,
            0.1,
            0.001,
            75.04,
            75.0423,
            123_456.79,
            9.999_999e-4,
        ];
        let strided = (0..=u32::MAX).step_by(997).map(f32::from_bits);
        let mut written = 0;
        for v in powers.chain(short).chain(strided).flat_map(|v| [v, -v]) {
            if let Some(ours) = text(v) {
                assert_eq!(
                    ours,
                    ryu::Buffer::new().format_finite(v),
                    "{:08x}",
                    v.to_bits()
                );
                written += 1;
            }
        }
        assert!(written > 1_000_000, "{written}");
    }

    #[test]
    fn digit_counts_are_the_lengths_of_the_numbers() {
        let edges = (0..10).flat_map(|p| [POW10[p] - 1, POW10[p], POW10[p] + 1]);
        for x in edges.filter(|&x| (1..1_000_000_000).contains(&x)) {
            assert_eq!(digit_count(x as u32), x.to_string().len(), "{x}");
        }
    }

    #[test]
    fn what_is_written_follows_the_body() {
        let mut s = String::from("a=");
        assert!(push(&mut s, -12.5));
        assert!(push(&mut s, 0.0625));
        assert_eq!(s, "a=-12.50.0625");
    }
}
