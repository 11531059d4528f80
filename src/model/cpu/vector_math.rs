//! `e^x` over float32 slices, vectorised, for the CPU backend's softmax and cross-entropy,
//! and the MLP activations SiLU (`x·σ(x)`) and tanh-GELU with their derivatives, built on
//! the same `e^x` (tanh-GELU as `x·σ(2u)`).
//!
//! Burn's CPU backend calls libm's scalar `expf` per element; a training step of a small
//! model spends ~8 % of its time there. This is the classic range reduction
//! `e^x = 2^n · e^r` (`|r| ≤ ln 2 / 2`) with a degree-6 polynomial for `e^r` (the Cephes
//! coefficients), written as straight-line code so the compiler vectorises the loop; on
//! x86-64 the loop is compiled a second time for AVX2 + FMA and picked at run time.
//! Accuracy: within 2 ulp of `f32::exp` (tested); results below `e^-87.3` (the normal
//! range) flush to 0, which is what softmax of a masked score (`-inf`) needs anyway.

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two so `n · ln 2` is exact in float32 for the `n` that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// ln(f32::MAX): above, e^x is infinite.
const MAX_ARG: f32 = 88.722_84;
/// ln(f32::MIN_POSITIVE): below, e^x is subnormal; flushed to 0.
const MIN_ARG: f32 = -87.336_55;

#[inline(always)]
fn exp1(x: f32) -> f32 {
    let xc = x.clamp(MIN_ARG, MAX_ARG);
    let n = (xc * LOG2E + 0.5).floor();
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 5e-1;
    let e = p * (r * r) + r + 1.0;
    // n as an integer without a saturating conversion (which does not vectorise): adding
    // 1.5·2^23 puts the integer in the low mantissa bits. |n| ≤ 128 here; for a NaN the
    // bits are garbage but `e` is NaN, so the result is too (wrapping ops: no overflow).
    let n = (n + 12_582_912.0).to_bits().wrapping_sub(0x4B40_0000) as i32;
    // 2^n as two factors so n = 128 (x near ln f32::MAX) stays finite in each.
    let (n1, n2) = (n >> 1, n.wrapping_sub(n >> 1));
    let pow2 = |k: i32| f32::from_bits((k.wrapping_add(127) as u32).wrapping_shl(23));
    let y = e * pow2(n1) * pow2(n2);
    if x > MAX_ARG {
        f32::INFINITY
    } else if x < MIN_ARG {
        0.0
    } else {
        y // NaN stays NaN: every comparison above is false
    }
}

#[inline(always)]
fn exp_loop(v: &mut [f32]) {
    for x in v {
        *x = exp1(*x);
    }
}

#[inline(always)]
fn silu_loop(v: &mut [f32]) {
    for x in v {
        // e^-x overflows to +inf for x < -88.7: x / inf = -0, SiLU's limit.
        *x /= 1.0 + exp1(-*x);
    }
}

#[inline(always)]
fn silu_grad_loop(x: &[f32], g: &mut [f32]) {
    assert_eq!(
        x.len(),
        g.len(),
        "SiLU gradient: input and gradient lengths differ"
    );
    for (g, &x) in g.iter_mut().zip(x) {
        let s = 1.0 / (1.0 + exp1(-x));
        *g *= s * (1.0 + x * (1.0 - s));
    }
}

/// √(2/π) and the cubic coefficient of GELU's tanh approximation.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044_715;

// ½x(1 + tanh u) = x·σ(2u): computed that way, with no `1 + tanh u` to cancel to 0 in
// the negative tail (where float32 tanh is exactly −1 from u ≈ −4.5 on).

#[inline(always)]
fn gelu_tanh_loop(v: &mut [f32]) {
    for x in v {
        let two_u = 2.0 * SQRT_2_OVER_PI * (*x + GELU_CUBIC * *x * *x * *x);
        *x /= 1.0 + exp1(-two_u);
    }
}

/// d/dx x·σ(2u) = σ + x·σ(1 − σ)·2u', with u' = √(2/π)(1 + 3·0.044715·x²).
#[inline(always)]
fn gelu_tanh_grad_loop(x: &[f32], g: &mut [f32]) {
    assert_eq!(
        x.len(),
        g.len(),
        "GELU gradient: input and gradient lengths differ"
    );
    for (g, &x) in g.iter_mut().zip(x) {
        let x2 = x * x;
        let two_u = 2.0 * SQRT_2_OVER_PI * x * (1.0 + GELU_CUBIC * x2);
        let s = 1.0 / (1.0 + exp1(-two_u));
        let two_du = 2.0 * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x2);
        *g *= s + x * s * (1.0 - s) * two_du;
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// `pub fn NAME(args) = LOOP;` defines `NAME` as `LOOP(args)` compiled twice, for the
/// baseline target and for AVX2 + FMA, the second picked at run time on x86-64 CPUs that
/// have both.
macro_rules! vectorised {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) = $body:ident;) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if has_avx2_fma() {
                    // SAFETY: the CPU has AVX2 and FMA, checked just above.
                    unsafe { avx2($($arg),*) };
                    return;
                }
            }
            $body($($arg),*)
        }
    };
}

vectorised! {
    /// Replaces every element by its exponential.
    pub fn exp_in_place(v: &mut [f32]) = exp_loop;
}

vectorised! {
    /// Replaces every element `x` by `SiLU(x) = x·σ(x) = x / (1 + e^-x)`.
    pub fn silu_in_place(v: &mut [f32]) = silu_loop;
}

vectorised! {
    /// Multiplies every upstream gradient `g` by `SiLU'(x) = σ(x)·(1 + x·(1 − σ(x)))`;
    /// `x` and `g` have the same length.
    pub fn silu_grad_in_place(x: &[f32], g: &mut [f32]) = silu_grad_loop;
}

vectorised! {
    /// Replaces every element `x` by `½x(1 + tanh(√(2/π)(x + 0.044715x³)))` (`gelu_new`).
    pub fn gelu_tanh_in_place(v: &mut [f32]) = gelu_tanh_loop;
}

vectorised! {
    /// Multiplies every upstream gradient `g` by the derivative of tanh-GELU at `x`; `x`
    /// and `g` have the same length.
    pub fn gelu_tanh_grad_in_place(x: &[f32], g: &mut [f32]) = gelu_tanh_grad_loop;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn within_two_ulp_of_std_and_exact_at_the_edges() {
        let mut xs: Vec<f32> = (0..200_001)
            .map(|i| -87.0 + 175.0 * i as f32 / 200_000.0)
            .collect();
        xs.extend([0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30, 88.7, -87.3]);
        let mut got = xs.clone();
        exp_in_place(&mut got);
        let mut plain = xs.clone();
        exp_loop(&mut plain);
        for ((&x, &g), &p) in xs.iter().zip(&got).zip(&plain) {
            assert!(ulps(g, x.exp()) <= 2, "e^{x}: {g} vs {}", x.exp());
            assert_eq!(
                g.to_bits(),
                p.to_bits(),
                "vector and scalar loops differ at {x}"
            );
        }
        let mut edges = [
            f32::NEG_INFINITY,
            -1000.0,
            -88.0,
            89.0,
            f32::INFINITY,
            f32::NAN,
        ];
        exp_in_place(&mut edges);
        assert_eq!(edges[..5], [0.0, 0.0, 0.0, f32::INFINITY, f32::INFINITY]);
        assert!(edges[5].is_nan());
    }

    #[test]
    fn silu_and_its_gradient_match_float64_and_saturate() {
        let xs: Vec<f32> = (0..20_001)
            .map(|i| -40.0 + 80.0 * i as f32 / 20_000.0)
            .collect();
        let mut y = xs.clone();
        silu_in_place(&mut y);
        let mut g = vec![1.5f32; xs.len()];
        silu_grad_in_place(&xs, &mut g);
        for ((&x, &y), &g) in xs.iter().zip(&y).zip(&g) {
            let xd = x as f64;
            let s = 1.0 / (1.0 + (-xd).exp());
            let (want_y, want_g) = (xd * s, 1.5 * s * (1.0 + xd * (1.0 - s)));
            assert!(
                (y as f64 - want_y).abs() <= 1e-6 * (1.0 + want_y.abs()),
                "SiLU({x}) = {y}, want {want_y}"
            );
            assert!(
                (g as f64 - want_g).abs() <= 1e-6 * (1.0 + want_g.abs()),
                "SiLU'({x}) = {g}, want {want_g}"
            );
        }
        let mut edges = [-1000.0f32, 1000.0, 0.0];
        silu_in_place(&mut edges);
        assert_eq!(edges, [0.0, 1000.0, 0.0]);
        let mut g = [2.0f32; 3];
        silu_grad_in_place(&[-1000.0, 1000.0, 0.0], &mut g);
        assert_eq!(g, [0.0, 2.0, 1.0]);
    }

    #[test]
    fn gelu_tanh_and_its_gradient_match_float64_and_saturate() {
        let xs: Vec<f32> = (0..20_001)
            .map(|i| -40.0 + 80.0 * i as f32 / 20_000.0)
            .collect();
        let mut y = xs.clone();
        gelu_tanh_in_place(&mut y);
        let mut g = vec![1.5f32; xs.len()];
        gelu_tanh_grad_in_place(&xs, &mut g);
        let c = (2.0 / std::f64::consts::PI).sqrt();
        for ((&x, &y), &g) in xs.iter().zip(&y).zip(&g) {
            let xd = x as f64;
            let t = (c * (xd + 0.044715 * xd.powi(3))).tanh();
            let want_y = 0.5 * xd * (1.0 + t);
            let d =
                0.5 * (1.0 + t) + 0.5 * xd * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * xd * xd);
            let want_g = 1.5 * d;
            assert!(
                (y as f64 - want_y).abs() <= 2e-6 * (1.0 + want_y.abs()),
                "GELU({x}) = {y}, want {want_y}"
            );
            assert!(
                (g as f64 - want_g).abs() <= 2e-6 * (1.0 + want_g.abs()),
                "GELU'({x}) = {g}, want {want_g}"
            );
        }
        let mut edges = [-1000.0f32, 1000.0, 0.0];
        gelu_tanh_in_place(&mut edges);
        assert_eq!(edges, [0.0, 1000.0, 0.0]);
        let mut g = [2.0f32; 3];
        gelu_tanh_grad_in_place(&[-1000.0, 1000.0, 0.0], &mut g);
        assert_eq!(g, [0.0, 2.0, 1.0]);
    }
}
