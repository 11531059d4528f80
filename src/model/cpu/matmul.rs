//! Two-dimensional float32 matmuls on the CPU backend: gemm's kernels on the operands' own
//! buffers at any strides (transposed weights and other views need no copy), into a new
//! float32 buffer.
//!
//! Burn's CPU backend makes the same gemm call, but allocates its output as zeroed bytes
//! and then moves them into a float-aligned buffer: every product's output is written
//! twice and faulted in twice. The linear layers, the LM head and the rotary pairing all
//! multiply two-dimensional operands, so this path carries nearly all of a step's matmuls.

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor};
use gemm::{Parallelism, gemm};

use crate::device::CpuBackend;

use super::from_values;

type T2 = Tensor<CpuBackend, 2>;

/// Products with fewer multiply-adds run on one thread.
const PARALLEL_WORK: usize = 1 << 21;

/// A float32 matrix read in place: the buffer, the first element and the row and column
/// strides (non-negative).
struct Matrix {
    t: FlexTensor,
    offset: usize,
    rows: isize,
    cols: isize,
}

impl Matrix {
    fn of(t: &T2) -> Option<Self> {
        if t.dtype() != DType::F32 {
            return None;
        }
        let mut p = t.clone().into_primitive().tensor();
        if p.layout().strides().iter().any(|&s| s < 0) {
            p = p.to_contiguous();
        }
        let (st, offset) = (p.layout().strides().to_vec(), p.layout().start_offset());
        Some(Self {
            t: p,
            offset,
            rows: st[0],
            cols: st[1],
        })
    }

    fn ptr(&self) -> *const f32 {
        self.t.storage::<f32>()[self.offset..].as_ptr()
    }
}

/// `lhs [m, k] · rhs [k, n]`; `None` unless both are float32.
pub fn matmul(lhs: &T2, rhs: &T2) -> Option<T2> {
    let ([m, k], [k2, n]) = (lhs.dims(), rhs.dims());
    if k != k2 {
        return None;
    }
    let (a, b) = (Matrix::of(lhs)?, Matrix::of(rhs)?);
    let mut out = vec![0f32; m * n];
    if m * n > 0 && k > 0 {
        let work = m.saturating_mul(n).saturating_mul(k);
        let threads = if work >= PARALLEL_WORK {
            Parallelism::Rayon(0)
        } else {
            Parallelism::None
        };
        // SAFETY: `out` holds m·n floats written at row stride n; the operands' views lie
        // within their buffers (Burn's layouts: every index below the dims, at the strides,
        // from the offset, is in the buffer), and `out` is a fresh allocation.
        unsafe {
            gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.ptr(),
                a.cols,
                a.rows,
                b.ptr(),
                b.cols,
                b.rows,
                0.0,
                1.0,
                false,
                false,
                false,
                threads,
            )
        }
    }
    Some(from_values(out, [m, n]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn random(shape: [usize; 2]) -> T2 {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    /// Against Burn's own matmul: contiguous, transposed and narrowed (offset) operands,
    /// a product big enough for the threads and an empty one.
    #[test]
    fn products_equal_burns() {
        let cases: Vec<(T2, T2)> = vec![
            (random([5, 7]), random([7, 3])),
            (random([7, 5]).transpose(), random([3, 7]).transpose()),
            (
                random([6, 9]).narrow(1, 2, 7),
                random([9, 4]).narrow(0, 1, 7),
            ),
            (random([160, 130]), random([140, 130]).transpose()),
            (random([0, 4]), random([4, 3])),
        ];
        for (i, (a, b)) in cases.into_iter().enumerate() {
            let got = matmul(&a, &b).expect("float32");
            let want = a.matmul(b);
            assert_eq!(got.dims(), want.dims(), "case {i}");
            if want.dims().iter().product::<usize>() > 0 {
                let diff = (got - want).abs().max().into_scalar();
                assert!(diff < 1e-4, "case {i}: {diff}");
            }
        }
        let half = random([2, 2]).cast(DType::F16);
        assert!(matmul(&half, &half).is_none());
    }
}
