//! LayerNorm and RMSNorm over the last axis on the CPU backend in float32, forward and the
//! input gradient, one pass over each row (Burn's compositions take five to ten passes
//! over the whole tensor, each with its own buffer).
//!
//! Same formulas as [`crate::model::ops::plain_layer_norm`],
//! [`crate::model::ops::plain_rms_norm`] and [`crate::model::kernels::norm_backward`];
//! `None` for other dtypes or shapes (the caller falls back to them).

use burn::tensor::Tensor;
use rayon::prelude::*;

use crate::device::CpuBackend;

use super::{Values, from_values};

type T3 = Tensor<CpuBackend, 3>;
type T1 = Tensor<CpuBackend, 1>;

/// Rows per task.
const ROWS: usize = 32;

/// `(x − μ, 1/√(mean((x − μ)²) + eps))` of one row, `μ = 0` for RMSNorm, the centred row
/// written to `c`.
fn centre(x: &[f32], c: &mut [f32], eps: f32, rms: bool) -> f32 {
    let d = x.len() as f32;
    let mean = if rms { 0.0 } else { x.iter().sum::<f32>() / d };
    for (c, &x) in c.iter_mut().zip(x) {
        *c = x - mean;
    }
    let var = c.iter().map(|c| c * c).sum::<f32>() / d;
    1.0 / (var + eps).sqrt()
}

/// `w·(x − μ)·rstd [+ b]` over the last axis of `x [b, s, d]`; RMSNorm when `b` is `None`.
pub fn forward(x: &T3, w: &T1, b: Option<&T1>, eps: f64) -> Option<T3> {
    let dims = x.dims();
    let d = dims[2];
    if w.dims() != [d] || b.is_some_and(|b| b.dims() != [d]) || d == 0 {
        return None;
    }
    let (xv, wv) = (Values::of(x)?, Values::of(w)?);
    let bv = match b {
        Some(b) => Some(Values::of(b)?),
        None => None,
    };
    let (xs, ws, bs) = (xv.slice(), wv.slice(), bv.as_ref().map(Values::slice));
    let (eps, rms) = (eps as f32, b.is_none());
    let mut out = vec![0f32; xs.len()];
    out.par_chunks_mut(ROWS * d)
        .zip(xs.par_chunks(ROWS * d))
        .for_each(|(out, xs)| {
            for (y, x) in out.chunks_exact_mut(d).zip(xs.chunks_exact(d)) {
                let rstd = centre(x, y, eps, rms);
                match bs {
                    Some(bs) => {
                        for ((y, &w), &b) in y.iter_mut().zip(ws).zip(bs) {
                            *y = *y * rstd * w + b;
                        }
                    }
                    None => {
                        for (y, &w) in y.iter_mut().zip(ws) {
                            *y = *y * rstd * w;
                        }
                    }
                }
            }
        });
    Some(from_values(out, dims))
}

/// `dx = rstd·(g' − mean(g') − x̂·mean(g'·x̂))` with `g' = grad·w`, RMSNorm without the
/// `mean(g')` term.
pub fn backward(x: &T3, w: &T1, grad: &T3, eps: f64, rms: bool) -> Option<T3> {
    let dims = x.dims();
    let d = dims[2];
    if w.dims() != [d] || grad.dims() != dims || d == 0 {
        return None;
    }
    let (xv, wv, gv) = (Values::of(x)?, Values::of(w)?, Values::of(grad)?);
    let (xs, ws, gs) = (xv.slice(), wv.slice(), gv.slice());
    let eps = eps as f32;
    let mut out = vec![0f32; xs.len()];
    out.par_chunks_mut(ROWS * d)
        .zip(xs.par_chunks(ROWS * d).zip(gs.par_chunks(ROWS * d)))
        .for_each(|(out, (xs, gs))| {
            let mut gw = vec![0f32; d];
            let rows = out.chunks_exact_mut(d).zip(xs.chunks_exact(d));
            for ((dx, x), g) in rows.zip(gs.chunks_exact(d)) {
                // dx holds x̂ until the end.
                let rstd = centre(x, dx, eps, rms);
                dx.iter_mut().for_each(|c| *c *= rstd);
                for ((gw, &g), &w) in gw.iter_mut().zip(g).zip(ws) {
                    *gw = g * w;
                }
                let n = d as f32;
                let proj = gw.iter().zip(dx.iter()).map(|(g, x)| g * x).sum::<f32>() / n;
                let mean = if rms { 0.0 } else { gw.iter().sum::<f32>() / n };
                for (dx, &gw) in dx.iter_mut().zip(&gw) {
                    *dx = (gw - mean - *dx * proj) * rstd;
                }
            }
        });
    Some(from_values(out, dims))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::norm_backward;
    use crate::model::ops::{plain_layer_norm, plain_rms_norm};
    use burn::tensor::{DType, Distribution};

    fn random<const D: usize>(shape: [usize; D], mean: f64) -> Tensor<CpuBackend, D> {
        Tensor::random(shape, Distribution::Normal(mean, 1.0), &Default::default())
    }

    fn close(got: T3, want: T3, what: &str) {
        let scale = want.clone().abs().max().into_scalar().max(1.0);
        let diff = (got - want).abs().max().into_scalar();
        assert!(diff < 2e-6 * scale, "{what}: {diff}");
    }

    /// Against Burn's compositions, on rows that are not centred (LayerNorm must subtract
    /// the mean), a row count that leaves a short last task, and a strided view.
    #[test]
    fn norms_and_their_gradients_match_burns_compositions() {
        let (w, b) = (random([48], 1.0), random([48], 0.0));
        let x = random([3, 37, 48], 0.5);
        let g = random([3, 37, 48], 0.0);
        let strided = random([37, 3, 48], 0.5).swap_dims(0, 1);
        for x in [x, strided] {
            let got = forward(&x, &w, Some(&b), 1e-5).expect("float32");
            close(
                got,
                plain_layer_norm(x.clone(), w.clone(), b.clone(), 1e-5),
                "layer",
            );
            let got = forward(&x, &w, None, 1e-6).expect("float32");
            close(got, plain_rms_norm(x.clone(), w.clone(), 1e-6), "rms");
            for rms in [false, true] {
                let got = backward(&x, &w, &g, 1e-5, rms).expect("float32");
                let want = norm_backward(x.clone(), w.clone(), g.clone(), 1e-5, rms);
                close(
                    got,
                    want,
                    if rms {
                        "rms gradient"
                    } else {
                        "layer gradient"
                    },
                );
            }
        }
        assert!(forward(&random([1, 2, 5], 0.0), &w, None, 1e-5).is_none());
        let half = random([1, 2, 48], 0.0).cast(DType::F16);
        assert!(forward(&half, &w, None, 1e-5).is_none());
    }
}
