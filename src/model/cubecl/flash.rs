//! Flash-style causal attention as CubeCL kernels: forward and backward without ever
//! holding a score matrix. Runs on any CubeCL runtime: CUDA in training (behind
//! [`crate::model::kernels::Kernels::attention_forward`] and
//! [`attention_backward`](crate::model::kernels::Kernels::attention_backward)), WebGPU/Vulkan in
//! the tests.
//!
//! Each unit (thread) owns one row. The forward pass and the query gradients run one unit
//! per query position; the key and value gradients one unit per key position, summing
//! over every query head of a key head's group (grouped-query attention, no atomics). Units
//! of a cube share tiles of the other side's rows in shared memory, walking only the tiles
//! the causal (and local-window) mask leaves. Scores, probabilities and sums are float32;
//! inputs and outputs stay in the model's dtype. The forward pass saves one log-sum-exp
//! per query row; the backward pass recomputes the probabilities from it (FlashAttention-2).
//!
//! Shapes: `q`, `out`, `dq` `[b, h, s, hd]`; `k`, `v`, `dk`, `dv` `[b, kvh, s, hd]` with
//! `h = kvh · rep` (query head `i` reads key head `i / rep`); `lse` and `delta`
//! `[b, kvh, rep, s, 1]` float32, contiguous (the layout of the blocked path in
//! [`crate::model::kernels`]). Inputs may be strided views.

use burn::tensor::{DType, Shape, Tensor as BurnTensor, backend::Backend};
use burn_cubecl::{
    CubeRuntime, kernel::into_contiguous, ops::numeric::empty_device_contiguous_dtype,
    tensor::CubeTensor,
};
use cubecl::prelude::*;

use super::{burn_tensor, cube, dims};
use crate::model::ops::AttnOpts;

/// Query (or key) rows per cube: one unit each.
const ROWS: usize = 64;

/// Largest head size the kernels take (the per-unit rows live in registers).
pub const MAX_HEAD: usize = 256;

/// Largest head size whose loops [`Unroll::Small`] unrolls: every index into a unit's rows
/// is then a constant, so the rows stay in registers instead of local memory. Larger heads
/// would not fit the registers anyway.
const UNROLL_HEAD: usize = 128;

/// Whether the kernels' loops over a head's elements and a tile's rows are unrolled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unroll {
    /// For head sizes up to 128: on GPUs (NVRTC compiles the unrolled source in moments).
    Small,
    /// Never: on CPU Vulkan drivers, where compiling unrolled shaders takes minutes.
    Never,
}

impl Unroll {
    fn applies(self, hd: usize) -> bool {
        self == Unroll::Small && hd <= UNROLL_HEAD
    }
}

/// Rows of the other side per shared-memory tile: two tiles of `tile · hd` float32 plus two
/// floats per row stay within 16 KiB, the smallest workgroup memory WebGPU guarantees.
fn tile_rows(hd: usize) -> usize {
    (2040 / (hd + 1)).clamp(1, 64)
}

/// The first key a query at position `p` may see: `p + 1 − window`, or 0.
#[cube]
fn first_key(p: usize, window: u32) -> usize {
    let w = window as usize;
    let from = max(p + 1, w) - w;
    select(w > 0, from, 0usize)
}

/// Whether query position `qp` may see key position `kp`: causal, and within the window.
#[cube]
fn visible(qp: usize, kp: usize, window: u32) -> bool {
    let w = window as usize;
    kp <= qp && (w == 0 || kp + w > qp)
}

/// `Σ_d a[d] · tile[j·hd + d]`.
#[cube]
fn dot_row(
    a: &Array<f32>,
    tile: &SharedMemory<f32>,
    j: usize,
    #[comptime] hd: usize,
    #[comptime] unroll: bool,
) -> f32 {
    let mut acc = 0.0f32;
    let base = j * hd;
    #[unroll(unroll)]
    for d in 0..hd {
        acc += a[d] * tile[base + d];
    }
    acc
}

/// Loads rows `r0..r0 + tile` of head `(b, head)` of `src` (`[b, heads, s, hd]`) into `dst`
/// as float32, zeros past `end`; all units of the cube take part.
#[cube]
fn load_tile<F: Float>(
    src: &Tensor<F>,
    dst: &mut SharedMemory<f32>,
    b: usize,
    head: usize,
    r0: usize,
    end: usize,
    #[comptime] tile: usize,
    #[comptime] hd: usize,
) {
    let base = b * src.stride(0) + head * src.stride(1);
    let s2 = src.stride(2);
    let s3 = src.stride(3);
    let mut e = UNIT_POS_X as usize;
    while e < tile * hd {
        let r = r0 + e / hd;
        let mut x = 0.0f32;
        if r < end {
            x = f32::cast_from(src[base + r * s2 + (e % hd) * s3]);
        }
        dst[e] = x;
        e += CUBE_DIM_X as usize;
    }
}

/// Loads row `r` of head `(b, head)` of `src` into `dst` as float32 times `scale`.
#[cube]
fn load_row<F: Float>(
    src: &Tensor<F>,
    dst: &mut Array<f32>,
    b: usize,
    head: usize,
    r: usize,
    scale: f32,
    #[comptime] hd: usize,
    #[comptime] unroll: bool,
) {
    let base = b * src.stride(0) + head * src.stride(1) + r * src.stride(2);
    let s3 = src.stride(3);
    #[unroll(unroll)]
    for d in 0..hd {
        dst[d] = f32::cast_from(src[base + d * s3]) * scale;
    }
}

/// Stores `src · scale` as row `r` of head `(b, head)` of `dst`.
#[cube]
fn store_row<F: Float>(
    src: &Array<f32>,
    dst: &mut Tensor<F>,
    b: usize,
    head: usize,
    r: usize,
    scale: f32,
    #[comptime] hd: usize,
    #[comptime] unroll: bool,
) {
    let base = b * dst.stride(0) + head * dst.stride(1) + r * dst.stride(2);
    let s3 = dst.stride(3);
    #[unroll(unroll)]
    for d in 0..hd {
        dst[base + d * s3] = F::cast_from(src[d] * scale);
    }
}

/// `hd` zeros in a unit's registers (or local memory when not unrolled).
#[cube]
fn zeros(#[comptime] hd: usize, #[comptime] unroll: bool) -> Array<f32> {
    let mut a = Array::<f32>::new(hd);
    #[unroll(unroll)]
    for d in 0..hd {
        a[d] = 0.0;
    }
    a
}

/// Where a unit of a query cube stands: cube `(x, y)` holds query rows `x·ROWS..` of query
/// head `y` (over `b·h`).
#[derive(CubeType, Clone, Copy)]
struct QueryUnit {
    /// Positions.
    s: usize,
    b: usize,
    /// Query head, and the key head it reads.
    h: usize,
    kh: usize,
    /// `b·heads + h`: the row block of `lse` and `delta`.
    bh: usize,
    /// The cube's first query position, this unit's, and the cube's end (exclusive).
    p0: usize,
    row: usize,
    end: usize,
    valid: bool,
}

#[cube]
fn query_unit<F: Float>(q: &Tensor<F>, k: &Tensor<F>) -> QueryUnit {
    let s = q.shape(2);
    let heads = q.shape(1);
    let rep = heads / k.shape(1);
    let bh = CUBE_POS_Y as usize;
    let h = bh % heads;
    let p0 = CUBE_POS_X as usize * CUBE_DIM_X as usize;
    let row = p0 + UNIT_POS_X as usize;
    QueryUnit {
        s,
        b: bh / heads,
        h,
        kh: h / rep,
        bh,
        p0,
        row,
        end: min(p0 + CUBE_DIM_X as usize, s),
        valid: row < s,
    }
}

/// Cube `(x, y)`: query rows `x·ROWS..` of query head `y` (over `b·h`).
#[cube(launch)]
fn forward_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    out: &mut Tensor<F>,
    lse: &mut Tensor<f32>,
    scale: f32,
    window: u32,
    #[comptime] hd: usize,
    #[comptime] tile: usize,
    #[comptime] unroll: bool,
    #[define(F)] _dtype: StorageType,
) {
    let u = query_unit::<F>(q, k);

    let mut qr = zeros(hd, unroll);
    let mut acc = zeros(hd, unroll);
    if u.valid {
        load_row::<F>(q, &mut qr, u.b, u.h, u.row, scale, hd, unroll);
    }
    let mut scores = Array::<f32>::new(tile);
    let mut ks = SharedMemory::<f32>::new(tile * hd);
    let mut vs = SharedMemory::<f32>::new(tile * hd);
    // A score no key has (exp(none − finite) = 0); finite, as WGSL has no infinity literal.
    let none = f32::new(-1.0e30);
    let mut m = none;
    let mut l = 0.0f32;

    let mut t0 = first_key(u.p0, window);
    while t0 < u.end {
        load_tile::<F>(k, &mut ks, u.b, u.kh, t0, u.end, tile, hd);
        load_tile::<F>(v, &mut vs, u.b, u.kh, t0, u.end, tile, hd);
        sync_cube();
        if u.valid {
            let mut tmax = m;
            #[unroll(unroll)]
            for j in 0..tile {
                let mut sc = none;
                if visible(u.row, t0 + j, window) {
                    sc = dot_row(&qr, &ks, j, hd, unroll);
                }
                scores[j] = sc;
                tmax = max(tmax, sc);
            }
            let corr = (m - tmax).exp();
            l *= corr;
            #[unroll(unroll)]
            for d in 0..hd {
                acc[d] *= corr;
            }
            #[unroll(unroll)]
            for j in 0..tile {
                if scores[j] > none {
                    let p = (scores[j] - tmax).exp();
                    l += p;
                    let base = j * hd;
                    #[unroll(unroll)]
                    for d in 0..hd {
                        acc[d] += p * vs[base + d];
                    }
                }
            }
            m = tmax;
        }
        sync_cube();
        t0 += tile;
    }
    if u.valid {
        // Every u.row sees its own position: l ≥ 1.
        let inv = l.recip();
        store_row::<F>(&acc, out, u.b, u.h, u.row, inv, hd, unroll);
        lse[u.bh * u.s + u.row] = m + l.ln();
    }
}

/// Cube `(x, y)`: query rows `x·ROWS..` of query head `y`. Writes `dq` and, for the key
/// pass, `delta = Σ_d dO · O` per row.
#[cube(launch)]
fn dq_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    out: &Tensor<F>,
    dout: &Tensor<F>,
    lse: &Tensor<f32>,
    delta: &mut Tensor<f32>,
    dq: &mut Tensor<F>,
    scale: f32,
    window: u32,
    #[comptime] hd: usize,
    #[comptime] tile: usize,
    #[comptime] unroll: bool,
    #[define(F)] _dtype: StorageType,
) {
    let u = query_unit::<F>(q, k);

    let mut qr = zeros(hd, unroll);
    let mut gr = zeros(hd, unroll);
    let mut acc = zeros(hd, unroll);
    let mut row_lse = 0.0f32;
    let mut row_delta = 0.0f32;
    if u.valid {
        load_row::<F>(q, &mut qr, u.b, u.h, u.row, scale, hd, unroll);
        load_row::<F>(dout, &mut gr, u.b, u.h, u.row, 1.0, hd, unroll);
        let ob = u.b * out.stride(0) + u.h * out.stride(1) + u.row * out.stride(2);
        #[unroll(unroll)]
        for d in 0..hd {
            row_delta += gr[d] * f32::cast_from(out[ob + d * out.stride(3)]);
        }
        row_lse = lse[u.bh * u.s + u.row];
        delta[u.bh * u.s + u.row] = row_delta;
    }
    let mut ks = SharedMemory::<f32>::new(tile * hd);
    let mut vs = SharedMemory::<f32>::new(tile * hd);

    let mut t0 = first_key(u.p0, window);
    while t0 < u.end {
        load_tile::<F>(k, &mut ks, u.b, u.kh, t0, u.end, tile, hd);
        load_tile::<F>(v, &mut vs, u.b, u.kh, t0, u.end, tile, hd);
        sync_cube();
        if u.valid {
            #[unroll(unroll)]
            for j in 0..tile {
                if visible(u.row, t0 + j, window) {
                    let p = (dot_row(&qr, &ks, j, hd, unroll) - row_lse).exp();
                    let ds = p * (dot_row(&gr, &vs, j, hd, unroll) - row_delta);
                    let base = j * hd;
                    #[unroll(unroll)]
                    for d in 0..hd {
                        acc[d] += ds * ks[base + d];
                    }
                }
            }
        }
        sync_cube();
        t0 += tile;
    }
    if u.valid {
        store_row::<F>(&acc, dq, u.b, u.h, u.row, scale, hd, unroll);
    }
}

/// Cube `(x, y)`: key rows `x·ROWS..` of key head `y` (over `b·kvh`), summing over the
/// `rep` query heads that read it. Needs `delta` from [`dq_kernel`].
#[cube(launch)]
fn dkv_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    dout: &Tensor<F>,
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    dk: &mut Tensor<F>,
    dv: &mut Tensor<F>,
    scale: f32,
    window: u32,
    #[comptime] hd: usize,
    #[comptime] tile: usize,
    #[comptime] unroll: bool,
    #[define(F)] _dtype: StorageType,
) {
    let s = q.shape(2);
    let heads = q.shape(1);
    let kv_heads = k.shape(1);
    let rep = heads / kv_heads;
    let bg = CUBE_POS_Y as usize;
    let b = bg / kv_heads;
    let kh = bg % kv_heads;
    let k0 = CUBE_POS_X as usize * CUBE_DIM_X as usize;
    let key = k0 + UNIT_POS_X as usize;
    let valid = key < s;
    // The last query that sees any key of this cube, plus one.
    let last_key = min(k0 + CUBE_DIM_X as usize, s) - 1;
    let w = window as usize;
    let end = select(w > 0, min(last_key + w, s), s);

    let mut kr = zeros(hd, unroll);
    let mut vr = zeros(hd, unroll);
    let mut dkr = zeros(hd, unroll);
    let mut dvr = zeros(hd, unroll);
    if valid {
        load_row::<F>(k, &mut kr, b, kh, key, scale, hd, unroll);
        load_row::<F>(v, &mut vr, b, kh, key, 1.0, hd, unroll);
    }
    let mut qs = SharedMemory::<f32>::new(tile * hd);
    let mut gs = SharedMemory::<f32>::new(tile * hd);
    let mut lses = SharedMemory::<f32>::new(tile);
    let mut deltas = SharedMemory::<f32>::new(tile);

    for r in 0..rep {
        let h = kh * rep + r;
        let row0 = (b * heads + h) * s;
        let mut t0 = k0;
        while t0 < end {
            load_tile::<F>(q, &mut qs, b, h, t0, end, tile, hd);
            load_tile::<F>(dout, &mut gs, b, h, t0, end, tile, hd);
            let mut e = UNIT_POS_X as usize;
            while e < tile {
                let mut x = 0.0f32;
                let mut y = 0.0f32;
                if t0 + e < end {
                    x = lse[row0 + t0 + e];
                    y = delta[row0 + t0 + e];
                }
                lses[e] = x;
                deltas[e] = y;
                e += CUBE_DIM_X as usize;
            }
            sync_cube();
            if valid {
                #[unroll(unroll)]
                for j in 0..tile {
                    if t0 + j < end && visible(t0 + j, key, window) {
                        let p = (dot_row(&kr, &qs, j, hd, unroll) - lses[j]).exp();
                        let ds = p * (dot_row(&vr, &gs, j, hd, unroll) - deltas[j]);
                        let base = j * hd;
                        #[unroll(unroll)]
                        for d in 0..hd {
                            dvr[d] += p * gs[base + d];
                            dkr[d] += ds * qs[base + d];
                        }
                    }
                }
            }
            sync_cube();
            t0 += tile;
        }
    }
    if valid {
        store_row::<F>(&dkr, dk, b, kh, key, scale, hd, unroll);
        store_row::<F>(&dvr, dv, b, kh, key, 1.0, hd, unroll);
    }
}

/// Whether the CUDA backends run attention on these kernels (`SOFTTUNE_CUDA_ATTENTION=flash`;
/// the default, `blocked`, is [`crate::model::kernels`]' blocks of query positions on matmuls).
/// Read once per process.
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SOFTTUNE_CUDA_ATTENTION").is_ok_and(|v| v == "flash"))
}

/// Why the kernels cannot take attention of queries shaped `q`, keys and values shaped `k`
/// and `v` and tensors of `dtypes` (all must be one float dtype): `None` when they can.
pub fn unsupported(q: &[usize], k: &[usize], v: &[usize], dtypes: &[DType]) -> Option<String> {
    if q.len() != 4 || k != v {
        return Some(format!(
            "query shape {q:?}, key shape {k:?}, value shape {v:?}"
        ));
    }
    let (hd, s) = (q[3], q[2]);
    if hd == 0 || hd > MAX_HEAD {
        return Some(format!("head size {hd} (the kernels take 1..={MAX_HEAD})"));
    }
    if k[1] == 0 || !q[1].is_multiple_of(k[1]) || k[2] != s || k[3] != hd || k[0] != q[0] {
        return Some(format!("query shape {q:?} against key shape {k:?}"));
    }
    if dtypes.iter().any(|d| *d != dtypes[0]) {
        return Some(format!("mixed dtypes {dtypes:?}"));
    }
    if !matches!(dtypes[0], DType::F32 | DType::F16 | DType::BF16) {
        return Some(format!("dtype {:?}", dtypes[0]));
    }
    None
}

fn grid(rows: usize, heads: usize) -> (CubeCount, CubeDim) {
    (
        CubeCount::Static(rows.div_ceil(ROWS) as u32, heads as u32, 1),
        CubeDim::new_1d(ROWS as u32),
    )
}

fn window(opts: AttnOpts) -> u32 {
    opts.window.map_or(0, |w| w.max(1) as u32)
}

/// `(out [b, h, s, hd], lse [b, kvh, rep, s, 1] float32)`. The caller has checked
/// [`unsupported`].
pub fn forward<R: CubeRuntime>(
    q: &CubeTensor<R>,
    k: &CubeTensor<R>,
    v: &CubeTensor<R>,
    opts: AttnOpts,
    unroll: Unroll,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let (qs, ks) = (dims(q), dims(k));
    debug_assert!(unsupported(&qs, &ks, &dims(v), &[q.dtype, k.dtype, v.dtype]).is_none());
    // Soft-capped scores take the blocked path (`owns_attention`).
    debug_assert!(opts.softcap.is_none(), "the flash kernels do not soft-cap");
    let [b, h, s, hd] = [qs[0], qs[1], qs[2], qs[3]];
    let kvh = ks[1];
    let (client, device, dtype) = (q.client.clone(), q.device.clone(), q.dtype);
    let empty = |shape: Shape, dtype: DType| {
        empty_device_contiguous_dtype(client.clone(), device.clone(), shape, dtype)
    };
    let out = empty(Shape::new([b, h, s, hd]), dtype);
    let lse = empty(Shape::new([b, kvh, h / kvh, s, 1]), DType::F32);
    let (count, dim) = grid(s, b * h);
    forward_kernel::launch::<R>(
        &client,
        count,
        dim,
        q.clone().into_tensor_arg(),
        k.clone().into_tensor_arg(),
        v.clone().into_tensor_arg(),
        out.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        opts.scale as f32,
        window(opts),
        hd,
        tile_rows(hd),
        unroll.applies(hd),
        dtype.into(),
    );
    (out, lse)
}

/// `[dq, dk, dv]` from the forward pass's inputs, output and `lse`, and the output's
/// gradient `grad`. The caller has checked [`unsupported`] (with `out` and `grad` in the
/// inputs' dtype).
#[allow(clippy::too_many_arguments)]
pub fn backward<R: CubeRuntime>(
    q: &CubeTensor<R>,
    k: &CubeTensor<R>,
    v: &CubeTensor<R>,
    out: &CubeTensor<R>,
    lse: &CubeTensor<R>,
    grad: &CubeTensor<R>,
    opts: AttnOpts,
    unroll: Unroll,
) -> [CubeTensor<R>; 3] {
    debug_assert!(opts.softcap.is_none(), "the flash kernels do not soft-cap");
    let (qs, ks) = (dims(q), dims(k));
    debug_assert!(
        unsupported(
            &qs,
            &ks,
            &dims(v),
            &[q.dtype, k.dtype, v.dtype, out.dtype, grad.dtype]
        )
        .is_none()
    );
    let [b, h, s, hd] = [qs[0], qs[1], qs[2], qs[3]];
    let kvh = ks[1];
    let lse = into_contiguous(lse.clone());
    let (client, device, dtype) = (q.client.clone(), q.device.clone(), q.dtype);
    let empty = |shape: Shape, dtype: DType| {
        empty_device_contiguous_dtype(client.clone(), device.clone(), shape, dtype)
    };
    let delta = empty(Shape::new([b, kvh, h / kvh, s, 1]), DType::F32);
    let dq = empty(Shape::new([b, h, s, hd]), dtype);
    let dk = empty(Shape::new([b, kvh, s, hd]), dtype);
    let dv = empty(Shape::new([b, kvh, s, hd]), dtype);
    let (scale, window, tile) = (opts.scale as f32, window(opts), tile_rows(hd));
    let (count, dim) = grid(s, b * h);
    dq_kernel::launch::<R>(
        &client,
        count,
        dim,
        q.clone().into_tensor_arg(),
        k.clone().into_tensor_arg(),
        v.clone().into_tensor_arg(),
        out.clone().into_tensor_arg(),
        grad.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        delta.clone().into_tensor_arg(),
        dq.clone().into_tensor_arg(),
        scale,
        window,
        hd,
        tile,
        unroll.applies(hd),
        dtype.into(),
    );
    let (count, dim) = grid(s, b * kvh);
    dkv_kernel::launch::<R>(
        &client,
        count,
        dim,
        q.clone().into_tensor_arg(),
        k.clone().into_tensor_arg(),
        v.clone().into_tensor_arg(),
        grad.clone().into_tensor_arg(),
        lse.into_tensor_arg(),
        delta.into_tensor_arg(),
        dk.clone().into_tensor_arg(),
        dv.clone().into_tensor_arg(),
        scale,
        window,
        hd,
        tile,
        unroll.applies(hd),
        dtype.into(),
    );
    [dq, dk, dv]
}

/// [`forward`] on the Burn tensors of a CubeCL backend `B`.
pub fn tensor_forward<R, B>(
    q: BurnTensor<B, 4>,
    k: BurnTensor<B, 4>,
    v: BurnTensor<B, 4>,
    opts: AttnOpts,
    unroll: Unroll,
) -> (BurnTensor<B, 4>, BurnTensor<B, 5>)
where
    R: CubeRuntime,
    B: Backend<FloatTensorPrimitive = CubeTensor<R>>,
{
    let (out, lse) = forward(&cube(q), &cube(k), &cube(v), opts, unroll);
    (burn_tensor(out), burn_tensor(lse))
}

/// [`backward`] on the Burn tensors of a CubeCL backend `B`.
#[allow(clippy::too_many_arguments)]
pub fn tensor_backward<R, B>(
    q: BurnTensor<B, 4>,
    k: BurnTensor<B, 4>,
    v: BurnTensor<B, 4>,
    out: BurnTensor<B, 4>,
    lse: BurnTensor<B, 5>,
    grad: BurnTensor<B, 4>,
    opts: AttnOpts,
    unroll: Unroll,
) -> [BurnTensor<B, 4>; 3]
where
    R: CubeRuntime,
    B: Backend<FloatTensorPrimitive = CubeTensor<R>>,
{
    let (q, k, v, out, grad) = (cube(q), cube(k), cube(v), cube(out), cube(grad));
    backward(&q, &k, &v, &out, &cube(lse), &grad, opts, unroll).map(burn_tensor)
}

/// The kernels on WebGPU/Vulkan ([`super::test_gpu`]) against the blocked path on the CPU,
/// and through autodiff against plain Burn on the same device.
#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tensor};

    use super::super::nvrtc;
    use super::super::test_gpu::{
        Gpu, Own, assert_kernel_checks_pass, device, float, to_gpu, values,
    };
    use crate::device::CpuBackend;
    use crate::model::kernels::{blocked_attention_backward, blocked_attention_forward};
    use crate::parity::rel_err;
    use cubecl::wgpu::WgpuRuntime;

    /// The three kernels through CubeCL's CUDA compiler and NVRTC, as GPUs run them
    /// (unrolled up to head size 128): bf16 at the head sizes of the benchmark shapes (64:
    /// TinyLlama, Pythia; 256: GPT-J; with SOFTTUNE_TEST_CUDA_ALL=1 also 128: OPT-6.7B, and
    /// f16 at 80, f32 at 100).
    #[test]
    // Scalars register as `()` compilation arguments, as in the code CubeCL generates.
    #[allow(clippy::let_unit_value, clippy::unit_arg)]
    fn flash_kernels_compile_for_cuda() {
        use cubecl::prelude::Tensor as Cube;
        let Some(toolkit) = nvrtc::toolkit() else {
            return;
        };
        let Some(dev) = device() else { return };
        let t = |shape: [usize; 4]| cube(Tensor::<Gpu, 4>::zeros(shape, &dev)).into_tensor_arg();
        let client = cube::<WgpuRuntime, Gpu, 1>(Tensor::<Gpu, 1>::zeros([1], &dev)).client;
        let dim = CubeDim::new_1d(ROWS as u32);
        // NVRTC takes about 45 s for an unrolled set on two cores: the others with
        // SOFTTUNE_TEST_CUDA_ALL=1.
        let mut cases = vec![(DType::BF16, 64), (DType::BF16, 256)];
        if std::env::var("SOFTTUNE_TEST_CUDA_ALL").is_ok_and(|v| v == "1") {
            cases.extend([(DType::BF16, 128), (DType::F16, 80), (DType::F32, 100)]);
        }
        for (dtype, hd) in cases {
            let (st, tile, unroll): (StorageType, usize, bool) =
                (dtype.into(), tile_rows(hd), Unroll::Small.applies(hd));
            let case = format!("{dtype:?}, head size {hd}, unrolled {unroll}");
            let (mut l, settings) = nvrtc::launcher(&client, dim, |scope| {
                scope.register_type::<DynamicScalar<forward_kernel::_F>>(st)
            });
            let mut tensor = |shape| <Cube<f32> as LaunchArg>::register(t(shape), &mut l);
            let [q, k, v, out] = [[1, 2, 8, 4]; 4].map(&mut tensor);
            let lse = tensor([1, 2, 8, 1]);
            let (scale, window) = (
                <f32 as LaunchArg>::register(0.5, &mut l),
                <u32 as LaunchArg>::register(0, &mut l),
            );
            let kernel = forward_kernel::ForwardKernel::<WgpuRuntime>::new(
                settings,
                client.clone(),
                q,
                k,
                v,
                out,
                lse,
                scale,
                window,
                hd,
                tile,
                unroll,
                st,
            );
            let forward = nvrtc::check(kernel, &toolkit);
            assert!(forward.is_ok(), "forward, {case}: {}", forward.unwrap_err());

            let (mut l, settings) = nvrtc::launcher(&client, dim, |scope| {
                scope.register_type::<DynamicScalar<dq_kernel::_F>>(st)
            });
            let mut tensor = |shape| <Cube<f32> as LaunchArg>::register(t(shape), &mut l);
            let [q, k, v, out, dout] = [[1, 2, 8, 4]; 5].map(&mut tensor);
            let [lse, delta] = [[1, 2, 8, 1]; 2].map(&mut tensor);
            let dq = tensor([1, 2, 8, 4]);
            let (scale, window) = (
                <f32 as LaunchArg>::register(0.5, &mut l),
                <u32 as LaunchArg>::register(0, &mut l),
            );
            let kernel = dq_kernel::DqKernel::<WgpuRuntime>::new(
                settings,
                client.clone(),
                q,
                k,
                v,
                out,
                dout,
                lse,
                delta,
                dq,
                scale,
                window,
                hd,
                tile,
                unroll,
                st,
            );
            let dq = nvrtc::check(kernel, &toolkit);
            assert!(dq.is_ok(), "dq, {case}: {}", dq.unwrap_err());

            let (mut l, settings) = nvrtc::launcher(&client, dim, |scope| {
                scope.register_type::<DynamicScalar<dkv_kernel::_F>>(st)
            });
            let mut tensor = |shape| <Cube<f32> as LaunchArg>::register(t(shape), &mut l);
            let [q, k, v, dout] = [[1, 2, 8, 4]; 4].map(&mut tensor);
            let [lse, delta] = [[1, 2, 8, 1]; 2].map(&mut tensor);
            let [dk, dv] = [[1, 2, 8, 4]; 2].map(&mut tensor);
            let (scale, window) = (
                <f32 as LaunchArg>::register(0.5, &mut l),
                <u32 as LaunchArg>::register(0, &mut l),
            );
            let kernel = dkv_kernel::DkvKernel::<WgpuRuntime>::new(
                settings,
                client.clone(),
                q,
                k,
                v,
                dout,
                lse,
                delta,
                dk,
                dv,
                scale,
                window,
                hd,
                tile,
                unroll,
                st,
            );
            let dkv = nvrtc::check(kernel, &toolkit);
            assert!(dkv.is_ok(), "dk/dv, {case}: {}", dkv.unwrap_err());
        }
    }

    #[test]
    fn flash_kernels_match_the_blocked_path() {
        let Some(dev) = device() else { return };
        let cpu = Default::default();
        let random = |shape: [usize; 4]| {
            Tensor::<CpuBackend, 4>::random(shape, Distribution::Normal(0.0, 1.0), &cpu)
        };
        // (batch, heads, kv heads, positions, head size, window, queries as a strided view):
        // several query cubes and key tiles with short last ones, grouped-query, local
        // windows shorter than a tile, head sizes whose tiles do not divide 64.
        // The unrolled variant (what GPUs run) once, on a small head: lavapipe takes minutes
        // to compile unrolled shaders of real head sizes.
        for (b, h, kvh, s, hd, window, strided, unroll) in [
            (2, 4, 2, 70, 16, None, false, Unroll::Never),
            (1, 2, 1, 150, 80, Some(37), true, Unroll::Never),
            (1, 3, 3, 9, 8, Some(2), false, Unroll::Never),
            (2, 2, 1, 130, 32, Some(100), true, Unroll::Never),
            (1, 4, 2, 80, 4, Some(30), true, Unroll::Small),
        ] {
            let opts = AttnOpts {
                scale: 0.3,
                window,
                softcap: None,
            };
            let case = format!("b{b} h{h}/{kvh} s{s} hd{hd} window {window:?} {unroll:?}");
            let q = if strided {
                random([b, s, h, hd]).swap_dims(1, 2)
            } else {
                random([b, h, s, hd])
            };
            let (k, v, g) = (
                random([b, kvh, s, hd]),
                random([b, kvh, s, hd]),
                random([b, h, s, hd]),
            );
            let (out, lse) = blocked_attention_forward(q.clone(), k.clone(), v.clone(), opts);
            let want = blocked_attention_backward(
                q.clone(),
                k.clone(),
                v.clone(),
                out.clone(),
                lse.clone(),
                g.clone(),
                opts,
            );
            let [qg, kg, vg, gg] = [&q, &k, &v, &g].map(|t| cube(to_gpu(t, &dev)));
            let (fo, fl) = forward(&qg, &kg, &vg, opts, unroll);
            assert!(
                rel_err(&values(float::<4>(fo.clone())), &values(out)) < 1e-5,
                "out, {case}"
            );
            assert!(
                rel_err(&values(float::<5>(fl.clone())), &values(lse)) < 1e-5,
                "lse, {case}"
            );
            let got = backward(&qg, &kg, &vg, &fo, &fl, &gg, opts, unroll);
            for ((name, g), w) in ["dq", "dk", "dv"].iter().zip(got).zip(want) {
                let err = rel_err(&values(float::<4>(g)), &values(w));
                assert!(err < 1e-5, "{name}: {err:e}, {case}");
            }
        }
    }

    /// Through autodiff, on the backend alone and under Burn's fusion wrapper (where the
    /// attention passes and the matmuls are custom operations, as on the default CUDA
    /// backend).
    #[test]
    fn kernel_checks_pass_on_webgpu_with_flash_attention_alone_and_fused() {
        assert_kernel_checks_pass(Own::Flash);
    }
}
