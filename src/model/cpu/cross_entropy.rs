//! The training cross-entropy on the CPU backend in float32: one parallel pass per
//! direction over the logits.
//!
//! The logits of a step are large (positions × vocabulary: 1024 × 49 152 floats, 200 MB, for
//! a 135M model at 4 × 256 tokens). Written as Burn operations, the loss walks them about
//! four times in each direction and allocates several tensors of their size. Here every
//! row (one position's logits, a few hundred KiB, in cache) is handled by one task:
//! the forward pass reads it twice (maximum, then the sum of exponentials through a
//! scratch row) and the backward pass turns it into its gradient in place when the buffer
//! is not shared.
//!
//! Same results as [`crate::model::kernels`]' default `cross_entropy_forward` and
//! `cross_entropy_backward`; `None` / `Err` for other dtypes or out-of-range targets (the
//! caller then runs the default).

use burn::tensor::{Int, Tensor};
use rayon::prelude::*;

use crate::device::CpuBackend;

use super::{Values, cpu_in_place, from_values};

use super::vector_math::exp_in_place;

type T3 = Tensor<CpuBackend, 3>;

/// The targets as row indices, when every one is within `0..vocab`.
fn target_rows(targets: &Tensor<CpuBackend, 2, Int>, vocab: usize) -> Option<Vec<usize>> {
    let data = targets.clone().into_data();
    let ids: Vec<i64> = data.iter::<i64>().collect();
    ids.iter()
        .map(|&t| usize::try_from(t).ok().filter(|&t| t < vocab))
        .collect()
}

/// `(mean loss [1], lse [b, t, 1])` of `logits [b, t, V]` against `targets [b, t]`.
pub fn forward(
    logits: &T3,
    targets: &Tensor<CpuBackend, 2, Int>,
) -> Option<(Tensor<CpuBackend, 1>, T3)> {
    let [b, t, vocab] = logits.dims();
    if targets.dims() != [b, t] || vocab == 0 || b * t == 0 {
        return None;
    }
    let ids = target_rows(targets, vocab)?;
    let values = Values::of(logits)?;
    let rows = values.slice();
    // Per row: log-sum-exp and the loss `lse − logit of the target`.
    let per_row: Vec<(f32, f32)> = rows
        .par_chunks(vocab)
        .zip(ids.par_iter())
        .map_init(
            || vec![0f32; vocab],
            |scratch, (row, &id)| {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                for (s, &x) in scratch.iter_mut().zip(row) {
                    *s = x - max;
                }
                exp_in_place(scratch);
                let lse = max + scratch.iter().sum::<f32>().ln();
                (lse, lse - row[id])
            },
        )
        .collect();
    let mean = per_row.iter().map(|&(_, l)| l as f64).sum::<f64>() / per_row.len() as f64;
    let lse: Vec<f32> = per_row.iter().map(|&(l, _)| l).collect();
    Some((
        from_values(vec![mean as f32], [1]),
        from_values(lse, [b, t, 1]),
    ))
}

/// `d loss / d logits = (softmax(logits) − onehot(targets)) · grad / (b·t)`, written over
/// the logits' own buffer when nothing else holds it (`cpu_in_place`). `Err` gives the
/// logits back.
#[allow(clippy::result_large_err)]
pub fn backward(
    logits: T3,
    lse: &T3,
    targets: &Tensor<CpuBackend, 2, Int>,
    grad: f32,
) -> Result<T3, T3> {
    let [b, t, vocab] = logits.dims();
    if targets.dims() != [b, t] || lse.dims() != [b, t, 1] || vocab == 0 || b * t == 0 {
        return Err(logits);
    }
    let (Some(ids), Some(lse)) = (target_rows(targets, vocab), Values::of(lse)) else {
        return Err(logits);
    };
    let lse = lse.slice();
    let scale = grad / (b * t) as f32;
    cpu_in_place(logits, |rows| {
        rows.par_chunks_mut(vocab)
            .zip(ids.par_iter().zip(lse.par_iter()))
            .for_each(|(row, (&id, &lse))| {
                row.iter_mut().for_each(|x| *x -= lse);
                exp_in_place(row);
                row.iter_mut().for_each(|x| *x *= scale);
                row[id] -= scale;
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::{xent_backward, xent_forward};
    use burn::tensor::{DType, Distribution, TensorData};

    fn close(got: T3, want: T3, tol: f32, what: &str) {
        let diff = (got - want).abs().max().into_scalar();
        assert!(diff < tol, "{what}: {diff}");
    }

    #[test]
    fn kernels_match_burns_composition() {
        let device = Default::default();
        let (b, t, vocab) = (2, 5, 301);
        let logits =
            Tensor::<CpuBackend, 3>::random([b, t, vocab], Distribution::Normal(0.0, 3.0), &device);
        let ids: Vec<i64> = (0..(b * t) as i64)
            .map(|i| (i * 37) % vocab as i64)
            .collect();
        let targets =
            Tensor::<CpuBackend, 2, Int>::from_data(TensorData::new(ids, [b, t]), &device);
        let (loss, lse) = forward(&logits, &targets).expect("float32, targets in range");
        let (want_loss, want_lse) = xent_forward(logits.clone(), targets.clone());
        let (l, w) = (loss.into_scalar(), want_loss.clone().into_scalar());
        assert!((l - w).abs() < 1e-5 * w.abs().max(1.0), "loss {l} vs {w}");
        close(lse.clone(), want_lse.clone(), 1e-5, "lse");
        let grad = Tensor::<CpuBackend, 1>::from_floats([0.7], &device);
        let want = xent_backward(logits.clone(), want_lse, targets.clone(), grad);
        // A shared buffer (the test still holds `logits`) is copied, not overwritten.
        let got = backward(logits.clone(), &lse, &targets, 0.7).expect("float32");
        close(got, want.clone(), 1e-6, "gradient from a shared buffer");
        // A buffer of its own is turned into the gradient in place.
        let own = Tensor::<CpuBackend, 3>::from_data(logits.clone().into_data(), &device);
        let got = backward(own, &lse, &targets, 0.7).expect("float32");
        close(got, want, 1e-6, "gradient in place");
        // A strided view of the logits is read through a copy.
        let strided = logits.clone().swap_dims(0, 1);
        let strided_targets = targets.clone().swap_dims(0, 1);
        let (_, lse_t) = forward(&strided, &strided_targets).expect("float32");
        close(lse_t.swap_dims(0, 1), lse, 1e-6, "lse of a view");
    }

    #[test]
    fn out_of_range_targets_and_other_dtypes_are_left_to_burn() {
        let device = Default::default();
        let logits = Tensor::<CpuBackend, 3>::zeros([1, 2, 4], &device);
        let bad = Tensor::<CpuBackend, 2, Int>::from_data(
            TensorData::new(vec![1i64, 4], [1, 2]),
            &device,
        );
        assert!(forward(&logits, &bad).is_none());
        let good = Tensor::<CpuBackend, 2, Int>::from_data(
            TensorData::new(vec![1i64, 3], [1, 2]),
            &device,
        );
        assert!(forward(&logits.clone().cast(DType::F16), &good).is_none());
        let lse = Tensor::<CpuBackend, 3>::zeros([1, 2, 1], &device);
        assert!(backward(logits, &lse, &bad, 1.0).is_err());
    }
}
