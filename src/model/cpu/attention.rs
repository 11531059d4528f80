//! Causal attention on the CPU backend in float32: the flash-attention recipe on gemm tiles.
//!
//! The blocked path in [`crate::model::kernels`] builds each block of scores out of Burn
//! operations: the grouped queries copied into stacked rows, a mask tensor, separate passes
//! for the maximum, `exp`, the sum and the division, and the partial key gradients added
//! back with slice assignments. On two cores those passes cost more than the products.
//! Here one task per query head (forward) or per key head (backward) walks the sequence in
//! tiles of [`ROWS`] query positions; each tile is a few calls to gemm's kernels on the
//! tensors' own buffers (strided views need no copy, transposes are strides) and one pass
//! over the tile's scores, which only cover the keys the tile can see.
//!
//! Same contract as [`crate::model::kernels::Kernels::attention_forward`] and
//! [`crate::model::kernels::Kernels::attention_backward`]: the output, the float32 log-sum-exp
//! `[b, kvh, rep, s, 1]` of every query row, and the gradients from the probabilities
//! recomputed with it. Other dtypes and shapes return `None` (the caller falls back to the
//! blocked path).

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor};
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use crate::device::CpuBackend;

use super::from_values;
use super::vector_math::exp_in_place;
use crate::model::kernels::key_range;
use crate::model::ops::AttnOpts;

type T4 = Tensor<CpuBackend, 4>;
type T5 = Tensor<CpuBackend, 5>;

/// Query positions per tile: big enough for gemm's kernels to run near full speed, small
/// enough that little of the causal triangle's diagonal is computed and thrown away.
pub const ROWS: usize = 64;

/// A float32 `[b, h, s, hd]` tensor's buffer, read in place: rows of `hd` contiguous
/// features at any (non-negative) strides over batch, head and position.
struct Heads {
    t: FlexTensor,
    dims: [usize; 4],
    /// Strides of batch, head and position, in elements.
    strides: [usize; 3],
    offset: usize,
}

impl Heads {
    /// `None` when `t` is not float32.
    fn of(t: &T4) -> Option<Self> {
        if t.dtype() != DType::F32 {
            return None;
        }
        let mut p = t.clone().into_primitive().tensor();
        let readable = |p: &FlexTensor| {
            let st = p.layout().strides();
            st[3] == 1 && st.iter().all(|&x| x >= 0)
        };
        if !readable(&p) {
            p = p.to_contiguous();
        }
        let layout = p.layout();
        let st = layout.strides();
        let dims = t.dims();
        Some(Self {
            dims,
            strides: [st[0] as usize, st[1] as usize, st[2] as usize],
            offset: layout.start_offset(),
            t: p,
        })
    }

    fn data(&self) -> &[f32] {
        self.t.storage::<f32>()
    }

    /// Index of row `(b, h, s)` in [`Heads::data`].
    fn row(&self, b: usize, h: usize, s: usize) -> usize {
        self.offset + b * self.strides[0] + h * self.strides[1] + s * self.strides[2]
    }

    /// Pointer to row `(b, h, s)`; the rows after it follow at [`Heads::step`].
    fn ptr(&self, b: usize, h: usize, s: usize) -> *const f32 {
        self.data()[self.row(b, h, s)..].as_ptr()
    }

    /// Elements from one position's row to the next.
    fn step(&self) -> usize {
        self.strides[2]
    }

    /// The `hd` features of row `(b, h, s)`.
    fn features(&self, b: usize, h: usize, s: usize) -> &[f32] {
        &self.data()[self.row(b, h, s)..][..self.dims[3]]
    }
}

/// A matrix operand of [`product`]: its first element and its row and column strides.
#[derive(Clone, Copy)]
struct Operand {
    ptr: *const f32,
    row: usize,
    col: usize,
}

/// A row-major matrix starting at `ptr` with `row` elements from one row to the next.
fn rows(ptr: *const f32, row: usize) -> Operand {
    Operand { ptr, row, col: 1 }
}

/// The transpose of [`rows`]`(ptr, row)`.
fn transposed(ptr: *const f32, row: usize) -> Operand {
    Operand {
        ptr,
        row: 1,
        col: row,
    }
}

/// `dst = [dst +] alpha · lhs · rhs`: `dst` row-major `m × n` (row stride `dst_row`), `lhs`
/// `m × k`, `rhs` `k × n`; single-threaded (the tasks are the parallelism).
///
/// # Safety
/// `dst` must be valid for writes and both operands for reads over every element the
/// shapes and strides reach, and `dst` must not overlap them.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_row: usize,
    accumulate: bool,
    lhs: Operand,
    rhs: Operand,
    alpha: f32,
) {
    // SAFETY: the caller's contract; gemm computes dst := 1·dst + alpha·lhs·rhs, reading
    // dst only when `accumulate`.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_row as isize,
            accumulate,
            lhs.ptr,
            lhs.col as isize,
            lhs.row as isize,
            rhs.ptr,
            rhs.col as isize,
            rhs.row as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// The keys position `p` sees, as a range of a tile's keys starting at `k0`.
fn visible(p: usize, k0: usize, window: Option<usize>) -> std::ops::Range<usize> {
    let first = window.map_or(0, |w| (p + 1).saturating_sub(w));
    first - k0..p + 1 - k0
}

/// Shapes the kernels take: `q [b, h, s, hd]`, `k`/`v [b, kvh, s, hd]` with `kvh` dividing
/// `h`; `(b, h, kvh, s, hd)`.
fn shapes(q: &Heads, k: &Heads, v: &Heads) -> Option<(usize, usize, usize, usize, usize)> {
    let [b, h, s, hd] = q.dims;
    let kvh = k.dims[1];
    let ok = kvh > 0 && h % kvh == 0 && k.dims == [b, kvh, s, hd] && v.dims == k.dims;
    ok.then_some((b, h, kvh, s, hd))
}

/// An output `[b, heads, s, hd]` stored in `[b, s, heads, hd]` order: the projections' own
/// layout, so merging the heads after the attention and splitting the gradients back
/// copies nothing. Parallel tasks write it through a raw pointer, each to whole heads.
struct Out {
    values: Vec<f32>,
    dims: [usize; 4],
}

/// [`Out`]'s buffer as the tasks see it.
#[derive(Clone, Copy)]
struct OutPtr {
    ptr: *mut f32,
    dims: [usize; 4],
}

// SAFETY: the tasks that share an `OutPtr` write disjoint heads (see the callers).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl Out {
    fn zeros(dims: [usize; 4]) -> Self {
        Self {
            values: vec![0f32; dims.iter().product()],
            dims,
        }
    }

    fn ptr(&mut self) -> OutPtr {
        OutPtr {
            ptr: self.values.as_mut_ptr(),
            dims: self.dims,
        }
    }

    fn tensor(self) -> T4 {
        let [b, h, s, hd] = self.dims;
        from_values(self.values, [b, s, h, hd]).swap_dims(1, 2)
    }
}

impl OutPtr {
    /// Row `(b, h, p)`; the next position's row is [`OutPtr::step`] further.
    fn row(&self, b: usize, h: usize, p: usize) -> *mut f32 {
        let [_, heads, s, hd] = self.dims;
        debug_assert!(b < self.dims[0] && h < heads && p < s);
        // SAFETY: in bounds for indices within the dims (checked above in debug builds).
        unsafe { self.ptr.add(((b * s + p) * heads + h) * hd) }
    }

    fn step(&self) -> usize {
        self.dims[1] * self.dims[3]
    }
}

/// Scores of a tile's `n` query rows from position `p0` (head `hi`) against `keys` keys
/// from `k0` (key head `g`), scaled, into `out` (`n × keys`).
#[allow(clippy::too_many_arguments)]
fn scores(
    out: &mut [f32],
    q: &Heads,
    k: &Heads,
    (bi, hi, g): (usize, usize, usize),
    p0: usize,
    n: usize,
    k0: usize,
    keys: usize,
    scale: f32,
) {
    let hd = q.dims[3];
    assert!(out.len() >= n * keys);
    // SAFETY: `out` holds n·keys floats; q's rows p0..p0+n and k's rows k0..k0+keys exist
    // (callers keep p0 + n ≤ s and k0 + keys ≤ s) and each has hd features.
    unsafe {
        product(
            n,
            keys,
            hd,
            out.as_mut_ptr(),
            keys,
            false,
            rows(q.ptr(bi, hi, p0), q.step()),
            transposed(k.ptr(bi, g, k0), k.step()),
            scale,
        )
    }
}

/// `c · tanh(x / c)` over a tile of scaled scores (Gemma 2's soft-capping), in place.
fn soft_cap(x: &mut [f32], cap: Option<f64>) {
    if let Some(c) = cap {
        let c = c as f32;
        x.iter_mut().for_each(|x| *x = c * (*x / c).tanh());
    }
}

/// Forward pass: `(out [b, h, s, hd], lse [b, kvh, rep, s, 1])`; `None` unless every input
/// is float32 with the shapes above.
pub fn forward(q: &T4, k: &T4, v: &T4, opts: AttnOpts) -> Option<(T4, T5)> {
    let (q, k, v) = (Heads::of(q)?, Heads::of(k)?, Heads::of(v)?);
    let (b, h, kvh, s, hd) = shapes(&q, &k, &v)?;
    let rep = h / kvh;
    let scale = opts.scale as f32;
    let mut out = Out::zeros([b, h, s, hd]);
    let mut lse = vec![0f32; b * h * s];
    let o = out.ptr();
    lse.par_chunks_mut(s.max(1))
        .enumerate()
        .for_each(|(task, l)| {
            let (bi, hi) = (task / h, task % h);
            let g = hi / rep;
            let mut p = vec![0f32; ROWS.min(s) * s];
            for p0 in (0..s).step_by(ROWS) {
                let n = ROWS.min(s - p0);
                let (k0, keys) = key_range(p0, n, opts.window);
                let p = &mut p[..n * keys];
                scores(p, &q, &k, (bi, hi, g), p0, n, k0, keys, scale);
                soft_cap(p, opts.softcap);
                for (i, row) in p.chunks_exact_mut(keys).enumerate() {
                    let seen = visible(p0 + i, k0, opts.window);
                    // Every row sees its own position, so the maximum is finite.
                    let max = row[seen.clone()]
                        .iter()
                        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                    row[..seen.start].fill(0.0);
                    row[seen.end..].fill(0.0);
                    let e = &mut row[seen];
                    e.iter_mut().for_each(|x| *x -= max);
                    exp_in_place(e);
                    let sum: f32 = e.iter().sum();
                    let inv = 1.0 / sum;
                    e.iter_mut().for_each(|x| *x *= inv);
                    l[p0 + i] = max + sum.ln();
                }
                // SAFETY: this task alone writes head (bi, hi) of `out`, rows p0..p0+n;
                // `p` holds n·keys probabilities; v's rows k0..k0+keys exist.
                unsafe {
                    product(
                        n,
                        hd,
                        keys,
                        o.row(bi, hi, p0),
                        o.step(),
                        false,
                        rows(p.as_ptr(), keys),
                        rows(v.ptr(bi, g, k0), v.step()),
                        1.0,
                    )
                }
            }
        });
    Some((out.tensor(), from_values(lse, [b, kvh, rep, s, 1])))
}

/// Backward pass: `[dq, dk, dv]` of [`forward`]'s output given its gradient `grad`, the
/// probabilities recomputed from `lse`; `None` unless every tensor is float32 with the
/// shapes [`forward`] takes and gives.
pub fn backward(
    (q, k, v): (&T4, &T4, &T4),
    out: &T4,
    lse: &T5,
    grad: &T4,
    opts: AttnOpts,
) -> Option<[T4; 3]> {
    let (q, k, v) = (Heads::of(q)?, Heads::of(k)?, Heads::of(v)?);
    let (out, d_out) = (Heads::of(out)?, Heads::of(grad)?);
    let (b, h, kvh, s, hd) = shapes(&q, &k, &v)?;
    let rep = h / kvh;
    if out.dims != q.dims || d_out.dims != q.dims || lse.dims() != [b, kvh, rep, s, 1] {
        return None;
    }
    if lse.dtype() != DType::F32 {
        return None;
    }
    let lse = lse.clone().into_primitive().tensor().to_contiguous();
    let lse = lse.storage::<f32>();
    let scale = opts.scale as f32;
    let (mut dq, mut dk, mut dv) = (
        Out::zeros([b, h, s, hd]),
        Out::zeros([b, kvh, s, hd]),
        Out::zeros([b, kvh, s, hd]),
    );
    let (dq_at, dk_at, dv_at) = (dq.ptr(), dk.ptr(), dv.ptr());
    (0..b * kvh).into_par_iter().for_each(|task| {
        // This task alone writes key head (bi, g) of dk and dv and its query heads of dq.
        let (bi, g) = (task / kvh, task % kvh);
        let mut p = vec![0f32; ROWS.min(s) * s];
        let mut ds = p.clone();
        // The soft cap's slope `1 − (capped / c)²` at each score of the tile.
        let mut slope = if opts.softcap.is_some() {
            p.clone()
        } else {
            Vec::new()
        };
        for r in 0..rep {
            let hi = g * rep + r;
            let lse = &lse[(bi * h + hi) * s..][..s];
            for p0 in (0..s).step_by(ROWS) {
                let n = ROWS.min(s - p0);
                let (k0, keys) = key_range(p0, n, opts.window);
                let (p, ds) = (&mut p[..n * keys], &mut ds[..n * keys]);
                scores(p, &q, &k, (bi, hi, g), p0, n, k0, keys, scale);
                if let Some(c) = opts.softcap {
                    soft_cap(p, opts.softcap);
                    let c = c as f32;
                    for (d, &x) in slope[..n * keys].iter_mut().zip(p.iter()) {
                        let t = x / c;
                        *d = 1.0 - t * t;
                    }
                }
                for (i, row) in p.chunks_exact_mut(keys).enumerate() {
                    let seen = visible(p0 + i, k0, opts.window);
                    row[..seen.start].fill(0.0);
                    row[seen.end..].fill(0.0);
                    let e = &mut row[seen];
                    e.iter_mut().for_each(|x| *x -= lse[p0 + i]);
                    exp_in_place(e);
                }
                let d_rows = rows(d_out.ptr(bi, hi, p0), d_out.step());
                // SAFETY (all four products): this task's rows of dq (p0..p0+n), dk and dv
                // (k0..k0+keys) exist; p and ds hold n·keys floats; every input row read
                // exists (p0 + n ≤ s, k0 + keys ≤ s).
                unsafe {
                    // dV += Pᵀ · dO
                    product(
                        keys,
                        hd,
                        n,
                        dv_at.row(bi, g, k0),
                        dv_at.step(),
                        true,
                        transposed(p.as_ptr(), keys),
                        d_rows,
                        1.0,
                    );
                    // dP = dO · Vᵀ
                    product(
                        n,
                        keys,
                        hd,
                        ds.as_mut_ptr(),
                        keys,
                        false,
                        d_rows,
                        transposed(v.ptr(bi, g, k0), v.step()),
                        1.0,
                    );
                }
                // dS = P ⊙ (dP − Σ dO·O) · scale (zero where P is), times the soft cap's
                // slope.
                for (i, (ds, p)) in ds
                    .chunks_exact_mut(keys)
                    .zip(p.chunks_exact(keys))
                    .enumerate()
                {
                    let (o, d) = (out.features(bi, hi, p0 + i), d_out.features(bi, hi, p0 + i));
                    let delta: f32 = o.iter().zip(d).map(|(o, d)| o * d).sum();
                    for (x, &p) in ds.iter_mut().zip(p) {
                        *x = p * (*x - delta) * scale;
                    }
                    if opts.softcap.is_some() {
                        let slope = &slope[i * keys..][..keys];
                        ds.iter_mut().zip(slope).for_each(|(x, d)| *x *= d);
                    }
                }
                unsafe {
                    // dQ = dS · K
                    product(
                        n,
                        hd,
                        keys,
                        dq_at.row(bi, hi, p0),
                        dq_at.step(),
                        false,
                        rows(ds.as_ptr(), keys),
                        rows(k.ptr(bi, g, k0), k.step()),
                        1.0,
                    );
                    // dK += dSᵀ · Q
                    product(
                        keys,
                        hd,
                        n,
                        dk_at.row(bi, g, k0),
                        dk_at.step(),
                        true,
                        transposed(ds.as_ptr(), keys),
                        rows(q.ptr(bi, hi, p0), q.step()),
                        1.0,
                    );
                }
            }
        }
    });
    Some([dq.tensor(), dk.tensor(), dv.tensor()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::{blocked_attention_backward, blocked_attention_forward};
    use burn::tensor::Distribution;

    fn random<const D: usize>(shape: [usize; D]) -> Tensor<CpuBackend, D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    /// Largest difference relative to the largest magnitude of `want`.
    fn rel_diff<const D: usize>(got: Tensor<CpuBackend, D>, want: Tensor<CpuBackend, D>) -> f32 {
        assert_eq!(got.dims(), want.dims());
        let scale = want.clone().abs().max().into_scalar().max(1e-6);
        (got - want).abs().max().into_scalar() / scale
    }

    /// `[b, h, s, hd]` stored as `[b, s, h, hd]` (what `split_heads` gives): a strided view.
    fn heads_view(b: usize, h: usize, s: usize, hd: usize) -> T4 {
        random([b, s, h, hd]).swap_dims(1, 2)
    }

    #[test]
    fn kernels_match_the_blocked_path() {
        // (b, h, kvh, s, hd, window, strided inputs): grouped-query and one head per key
        // head; several tiles with a short last one (150 = 2·64 + 22) and one short tile;
        // windows narrower than a tile, across tiles and wider than the sequence; soft-capped
        // scores (Gemma 2).
        let cases = [
            (2, 4, 2, 7, 8, None, false, None),
            (1, 6, 2, 150, 16, None, true, None),
            (2, 3, 3, 150, 8, Some(1), false, None),
            (1, 4, 1, 150, 8, Some(20), true, None),
            (1, 2, 2, 130, 80, Some(70), true, None),
            (1, 2, 1, 40, 32, Some(100), false, None),
            (1, 4, 2, 150, 16, Some(20), true, Some(0.5)),
            (2, 2, 1, 70, 8, None, false, Some(2.0)),
        ];
        for (b, h, kvh, s, hd, window, strided, softcap) in cases {
            let opts = AttnOpts {
                scale: 0.3,
                window,
                softcap,
            };
            let make = |heads| {
                if strided {
                    heads_view(b, heads, s, hd)
                } else {
                    random([b, heads, s, hd])
                }
            };
            let (q, k, v, grad) = (make(h), make(kvh), make(kvh), make(h));
            let case =
                format!("b {b} h {h} kvh {kvh} s {s} hd {hd} window {window:?} cap {softcap:?}");
            let (out, lse) = forward(&q, &k, &v, opts).expect("float32 inputs");
            let (want_out, want_lse) =
                blocked_attention_forward(q.clone(), k.clone(), v.clone(), opts);
            assert!(
                rel_diff(out.clone(), want_out.clone()) < 1e-5,
                "out, {case}"
            );
            assert!(rel_diff(lse.clone(), want_lse) < 1e-5, "lse, {case}");
            let got = backward((&q, &k, &v), &out, &lse, &grad, opts).expect("float32 inputs");
            let want = blocked_attention_backward(q, k, v, want_out, lse, grad, opts);
            for ((g, w), name) in got.into_iter().zip(want).zip(["dq", "dk", "dv"]) {
                let d = rel_diff(g, w);
                assert!(d < 1e-5, "{name}: {d}, {case}");
            }
        }
    }

    #[test]
    fn other_dtypes_and_shapes_are_left_to_the_blocked_path() {
        let opts = AttnOpts {
            scale: 1.0,
            window: None,
            softcap: None,
        };
        let q = random([1, 2, 5, 4]);
        let k = random([1, 2, 5, 4]);
        let half = k.clone().cast(DType::F16);
        assert!(forward(&q, &half, &k, opts).is_none());
        // Three query heads cannot share two key heads; keys shorter than queries.
        assert!(forward(&random([1, 3, 5, 4]), &k, &k, opts).is_none());
        assert!(forward(&q, &random([1, 2, 4, 4]), &k, opts).is_none());
    }
}
