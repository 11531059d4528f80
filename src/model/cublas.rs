//! Matmuls on cuBLAS for the CubeCL CUDA backend (`SOFTTUNE_CUDA_BACKEND=cube`).
//!
//! CubeCL 0.10's best matmul reaches about a third of cuBLAS's speed on an H100 (no wgmma;
//! `gpu-notes.md`), and the frozen linear layers are most of a training step. This runs
//! `C = A·B` (batched, broadcast over batch dimensions, either operand a transposed view)
//! as one `cublasGemmStridedBatchedEx`: 16-bit or float32 inputs, the output in the
//! inputs' dtype or float32 (attention scores from 16-bit queries and keys), float32
//! accumulation.
//!
//! **Ordering.** CubeCL launches on a stream of its own that it does not expose, from a
//! device thread of its own (Burn's calls queue work for that thread). By default a product
//! runs *on* that thread, in its queue order (`client.exclusive`), and is ordered on the
//! GPU with the driver's context-wide events: `cuCtxRecordEvent` captures everything the
//! context has launched (CubeCL's kernels included), our stream waits for it, runs the
//! product, records an event, and `cuCtxWaitEvent` makes all later work in the context
//! wait for that. No host thread waits for the GPU, and the GPU's queue never drains.
//! Drivers without those calls (before CUDA 12.5), a failing call, or
//! `SOFTTUNE_CUBLAS_ORDER=sync` take the synchronised order instead: wait for CubeCL's
//! stream (`client.sync()`), run cuBLAS, wait for it: two host round trips a product.
//! `softtune bench` prints which, and the host time spent around the products.
//!
//! **Fallback.** An operand that no single leading dimension and batch stride describe
//! (broadcast along some batch dimensions only) is first copied into full batches. Whatever
//! this path still cannot take (cuBLAS missing or failing, mixed dtypes, empty or > 2³¹
//! sizes) goes to CubeCL's own matmul; the first failure is reported once on stderr.
//!
//! On by default (`SOFTTUNE_CUDA_MATMUL=cubecl` turns it off): on an H200 its products came
//! within 4e-4 of CubeCL's float32 matmul, which runs on TF32 tensor cores; cuBLAS's are
//! exact float32 (`CUBLAS_COMPUTE_32F`, no TF32), as in PyTorch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use burn::tensor::{DType, Shape, Tensor, backend::Backend, ops::FloatTensorOps};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::CudaRuntime;
use cudarc::cublas::{
    CudaBlas, result as blas,
    sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType},
};
use cudarc::driver::{CudaContext, CudaEvent, CudaStream};

use crate::device::CudaCubeBackend;

/// Whether matmuls go to cuBLAS (`SOFTTUNE_CUDA_MATMUL`: `cublas`, the default, or
/// `cubecl`). Read once per process.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("SOFTTUNE_CUDA_MATMUL").map_or(true, |v| v != "cubecl"))
}

/// How one operand's last two dimensions `[r, c]` lie in memory, as cuBLAS (column-major)
/// sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Row-major in our terms (`stride[c] == 1`): column-major it is the transpose.
    pub row_major: bool,
    /// Leading dimension, in elements.
    pub ld: usize,
    /// Distance between consecutive matrices of the (flattened, broadcast) batch; 0 when
    /// the operand is broadcast over the whole batch.
    pub batch_stride: usize,
}

/// The layout of an operand with `shape`/`strides` (in elements) inside a batch of
/// `out_batch` matrices, or `None` when no single leading dimension and batch stride
/// describe it.
pub fn layout(shape: &[usize], strides: &[usize], out_batch: &[usize]) -> Option<Layout> {
    let d = shape.len();
    if d < 2 || strides.len() != d || out_batch.len() != d - 2 {
        return None;
    }
    let (r, c) = (shape[d - 2], shape[d - 1]);
    let (sr, sc) = (strides[d - 2], strides[d - 1]);
    let (row_major, ld) = if (sc == 1 || c == 1) && (r == 1 || sr >= c) {
        (true, if r == 1 { c } else { sr })
    } else if (sr == 1 || r == 1) && (c == 1 || sc >= r) {
        (false, if c == 1 { r } else { sc })
    } else {
        return None;
    };
    // Batch dimensions that the output actually has (size > 1): the operand either spans
    // all of them with one flat stride, or none of them (broadcast).
    let live: Vec<usize> = (0..d - 2).filter(|&i| out_batch[i] > 1).collect();
    let spans: Vec<bool> = live.iter().map(|&i| shape[i] == out_batch[i]).collect();
    let batch_stride = if spans.iter().all(|s| !s) {
        0
    } else if spans.iter().all(|s| *s) {
        for w in live.windows(2) {
            if strides[w[0]] != strides[w[1]] * shape[w[1]] {
                return None;
            }
        }
        strides[*live.last()?]
    } else {
        return None;
    };
    Some(Layout {
        row_major,
        ld: ld.max(1),
        batch_stride,
    })
}

/// The broadcast batch shape of two operands, or `None` when they do not broadcast.
pub fn broadcast_batch(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let n = a.len() - 2;
    (0..n)
        .map(|i| match (a[i], b[i]) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// How products are ordered against CubeCL's queue (`SOFTTUNE_CUBLAS_ORDER`: `events`, the
/// default, or `sync`; see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// On CubeCL's device thread, ordered on the GPU by context-wide events.
    Events,
    /// The host waits for CubeCL's stream before the product and for cuBLAS after it.
    Sync,
}

impl Order {
    /// Parses `SOFTTUNE_CUBLAS_ORDER`'s value; `None` (unset) is the default.
    pub fn parse(value: Option<&str>) -> Result<Order, String> {
        match value.map(str::trim) {
            None | Some("") | Some("events") => Ok(Order::Events),
            Some("sync") => Ok(Order::Sync),
            Some(other) => Err(format!(
                "SOFTTUNE_CUBLAS_ORDER={other:?} is not an order: use `events` (the default) or `sync`"
            )),
        }
    }
}

/// Set once the event order failed in this process: every later product is synchronised.
static EVENTS_FAILED: AtomicBool = AtomicBool::new(false);

/// The order the next product takes: `SOFTTUNE_CUBLAS_ORDER` (read once; an unknown value
/// is said once and the default kept), unless the event order has failed before.
pub fn order() -> Order {
    static ORDER: OnceLock<Order> = OnceLock::new();
    let chosen = *ORDER.get_or_init(|| {
        let value = std::env::var("SOFTTUNE_CUBLAS_ORDER").ok();
        Order::parse(value.as_deref()).unwrap_or_else(|e| {
            eprintln!("softtune: {e}; using `events`");
            Order::Events
        })
    });
    if EVENTS_FAILED.load(Ordering::Relaxed) {
        Order::Sync
    } else {
        chosen
    }
}

/// Turns the event order off for the rest of the process, saying why (once).
fn events_failed(why: &str) {
    if !EVENTS_FAILED.swap(true, Ordering::Relaxed) {
        eprintln!("softtune: cuBLAS products fall back to host synchronisation (slower): {why}");
    }
}

/// `cuCtxRecordEvent` and `cuCtxWaitEvent` (same signature), looked up in the loaded driver
/// rather than through cudarc's bindings, which panic on a missing symbol (drivers before
/// CUDA 12.5) and exist only for bindings of 12.5 or later.
type CtxEventFn = unsafe extern "C" fn(
    cudarc::driver::sys::CUcontext,
    cudarc::driver::sys::CUevent,
) -> cudarc::driver::sys::CUresult;

/// The context-wide events of one device: the two driver calls, and an event for each side
/// of a product (re-recorded every time).
struct CtxEvents {
    record: CtxEventFn,
    wait: CtxEventFn,
    before: CudaEvent,
    after: CudaEvent,
}

fn ctx_events(ctx: &Arc<CudaContext>) -> Result<CtxEvents, String> {
    // SAFETY: the driver library is already loaded (CubeCL runs on it); the symbols are
    // looked up by their exported names and given the signature of the driver API.
    let (record, wait) = unsafe {
        let lib = cudarc::driver::sys::culib();
        let record = lib
            .get::<CtxEventFn>(b"cuCtxRecordEvent\0")
            .map_err(|e| format!("the driver has no cuCtxRecordEvent (before CUDA 12.5?): {e}"))?;
        let wait = lib
            .get::<CtxEventFn>(b"cuCtxWaitEvent\0")
            .map_err(|e| format!("the driver has no cuCtxWaitEvent (before CUDA 12.5?): {e}"))?;
        (*record, *wait)
    };
    let event = || {
        ctx.new_event(None)
            .map_err(|e| format!("CUDA event: {e:?}"))
    };
    Ok(CtxEvents {
        record,
        wait,
        before: event()?,
        after: event()?,
    })
}

/// One cuBLAS handle and stream per device, on the device's primary context (the one
/// CubeCL uses, so device pointers are shared).
struct Blas {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    /// Held while the handle is in use: a cuBLAS handle is not for concurrent calls.
    busy: Mutex<()>,
    /// `None` when the driver lacks the context-wide events (said once; synchronised order).
    events: Option<CtxEvents>,
}

fn open(device: usize) -> Result<Blas, String> {
    // SAFETY: only probes whether the shared library loads.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(
            "libcublas was not found (add the CUDA toolkit's lib64 to LD_LIBRARY_PATH)".into(),
        );
    }
    let ctx = CudaContext::new(device).map_err(|e| format!("CUDA context: {e:?}"))?;
    let stream = ctx
        .new_stream()
        .map_err(|e| format!("CUDA stream: {e:?}"))?;
    let blas = CudaBlas::new(stream.clone()).map_err(|e| format!("cuBLAS handle: {e:?}"))?;
    let events = if order() == Order::Events {
        ctx_events(&ctx).map_err(|e| events_failed(&e)).ok()
    } else {
        None
    };
    Ok(Blas {
        ctx,
        stream,
        blas,
        busy: Mutex::new(()),
        events,
    })
}

type Handles = Mutex<HashMap<usize, Result<Arc<Blas>, Fallback>>>;

fn handles() -> &'static Handles {
    static H: OnceLock<Handles> = OnceLock::new();
    H.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The device's cuBLAS handle, opened on first use; `Err(None)` when the lock is poisoned.
fn blas(device: usize) -> Result<Arc<Blas>, Option<Fallback>> {
    let mut guard = handles().lock().map_err(|_| None)?;
    let entry = guard.entry(device).or_insert_with(|| {
        open(device)
            .map(Arc::new)
            .map_err(|e| Fallback::new("cuBLAS unavailable", e))
    });
    entry.as_ref().map(Arc::clone).map_err(|e| Some(e.clone()))
}

/// Why a product did not run on cuBLAS: `kind` is the class of reason (each class is
/// reported once per process), `detail` the operands of the first product of that class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub kind: &'static str,
    pub detail: String,
}

impl Fallback {
    fn new(kind: &'static str, detail: impl Into<String>) -> Self {
        Fallback {
            kind,
            detail: detail.into(),
        }
    }
}

/// Counts the products that went to CubeCL's matmul, and says once per class of reason
/// why (CubeCL's matmul autotunes and compiles many large kernels on first use, so a
/// silent fallback would cost minutes and speed unnoticed).
#[derive(Debug, Default)]
pub struct Fallbacks {
    count: usize,
    said: Vec<&'static str>,
}

impl Fallbacks {
    /// Counts `why`; returns the line to print when its class is new.
    pub fn record(&mut self, why: &Fallback) -> Option<String> {
        self.count += 1;
        if self.said.contains(&why.kind) {
            return None;
        }
        self.said.push(why.kind);
        Some(format!(
            "softtune: matmul on CubeCL instead of cuBLAS ({}): {}",
            why.kind, why.detail
        ))
    }

    pub fn count(&self) -> usize {
        self.count
    }
}

fn fallbacks() -> &'static Mutex<Fallbacks> {
    static F: OnceLock<Mutex<Fallbacks>> = OnceLock::new();
    F.get_or_init(|| Mutex::new(Fallbacks::default()))
}

/// Records that a product fell back to CubeCL's matmul (said on stderr once per class).
pub fn fell_back(why: &Fallback) {
    let line = match fallbacks().lock() {
        Ok(mut f) => f.record(why),
        Err(_) => None,
    };
    if let Some(line) = line {
        eprintln!("{line}");
    }
}

/// How many products fell back to CubeCL's matmul in this process so far.
pub fn fallback_count() -> usize {
    fallbacks().lock().map_or(0, |f| f.count())
}

/// What the cuBLAS path has done in this process so far: products run (and how many of
/// them in the event order), and host time around them. In the synchronised order,
/// `waiting_ns` is the wait for CubeCL's queue before a product (the GPU time of the kernels
/// queued since the last product included) and `cublas_ns` the product and the wait for it;
/// in the event order, `waiting_ns` is the wait for CubeCL's device thread to reach the
/// product (launches queued before it) and `cublas_ns` the launch calls, no GPU wait.
/// `softtune bench` prints the difference over each step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub products: u64,
    pub by_events: u64,
    pub waiting_ns: u64,
    pub cublas_ns: u64,
}

impl Stats {
    /// The work done between `earlier` and `self`.
    pub fn since(self, earlier: Stats) -> Stats {
        Stats {
            products: self.products.saturating_sub(earlier.products),
            by_events: self.by_events.saturating_sub(earlier.by_events),
            waiting_ns: self.waiting_ns.saturating_sub(earlier.waiting_ns),
            cublas_ns: self.cublas_ns.saturating_sub(earlier.cublas_ns),
        }
    }

    /// E.g. `836 cuBLAS products: 120.3 ms waiting for CubeCL's queue, 70.1 ms in cuBLAS`
    /// (synchronised order), or `836 cuBLAS products ordered by events: 4.2 ms waiting for
    /// CubeCL's device thread, 6.1 ms launching`.
    pub fn describe(&self) -> String {
        let ms = |ns: u64| ns as f64 / 1e6;
        let (w, c) = (ms(self.waiting_ns), ms(self.cublas_ns));
        if self.by_events == 0 {
            format!(
                "{} cuBLAS products: {w:.1} ms waiting for CubeCL's queue, {c:.1} ms in cuBLAS",
                self.products
            )
        } else if self.by_events == self.products {
            format!(
                "{} cuBLAS products ordered by events: {w:.1} ms waiting for CubeCL's device \
                 thread, {c:.1} ms launching",
                self.products
            )
        } else {
            format!(
                "{} cuBLAS products, {} of them ordered by events: {w:.1} ms waiting, \
                 {c:.1} ms in cuBLAS calls",
                self.products, self.by_events
            )
        }
    }
}

static PRODUCTS: AtomicU64 = AtomicU64::new(0);
static BY_EVENTS: AtomicU64 = AtomicU64::new(0);
static WAITING_NS: AtomicU64 = AtomicU64::new(0);
static CUBLAS_NS: AtomicU64 = AtomicU64::new(0);

/// [`Stats`] so far in this process.
pub fn stats() -> Stats {
    Stats {
        products: PRODUCTS.load(Ordering::Relaxed),
        by_events: BY_EVENTS.load(Ordering::Relaxed),
        waiting_ns: WAITING_NS.load(Ordering::Relaxed),
        cublas_ns: CUBLAS_NS.load(Ordering::Relaxed),
    }
}

fn add_ns(counter: &AtomicU64, since: Instant) {
    let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
    counter.fetch_add(ns, Ordering::Relaxed);
}

/// The operands of a product, for a [`Fallback`]'s detail.
fn operands(lhs: &CubeTensor<CudaRuntime>, rhs: &CubeTensor<CudaRuntime>) -> String {
    let one = |t: &CubeTensor<CudaRuntime>| {
        let (shape, strides) = dims(t);
        format!("{shape:?} {:?} (strides {strides:?})", t.dtype)
    };
    format!("{} · {}", one(lhs), one(rhs))
}

fn data_type(dtype: DType) -> Option<cudaDataType> {
    match dtype {
        DType::F32 => Some(cudaDataType::CUDA_R_32F),
        DType::BF16 => Some(cudaDataType::CUDA_R_16BF),
        DType::F16 => Some(cudaDataType::CUDA_R_16F),
        _ => None,
    }
}

fn dims(t: &CubeTensor<CudaRuntime>) -> (Vec<usize>, Vec<usize>) {
    (
        t.meta.shape.iter().copied().collect(),
        t.meta.strides.iter().copied().collect(),
    )
}

/// `lhs [.., m, k] · rhs [.., k, n]` on cuBLAS, the result in `out_dtype` (the inputs'
/// dtype, or float32 from 16-bit inputs), or why this path cannot take it (the caller then
/// runs CubeCL's matmul and reports it with [`fell_back`]). The first product on a device
/// in the event order first checks that order there ([`check_event_order`]).
pub fn matmul(
    lhs: &CubeTensor<CudaRuntime>,
    rhs: &CubeTensor<CudaRuntime>,
    out_dtype: DType,
) -> Result<CubeTensor<CudaRuntime>, Fallback> {
    if order() == Order::Events {
        check_event_order_once(&lhs.device);
    }
    product(lhs, rhs, out_dtype, order())
}

/// Runs [`check_event_order`] once per device and process where cuBLAS opened with the
/// context-wide events; on a difference or an error the event order is turned off (said
/// once) and every product is synchronised.
fn check_event_order_once(device: &cubecl::cuda::CudaDevice) {
    static CHECKED: Mutex<Vec<usize>> = Mutex::new(Vec::new());
    {
        let Ok(mut checked) = CHECKED.lock() else {
            return;
        };
        if checked.contains(&device.index) {
            return;
        }
        checked.push(device.index);
    }
    // Without cuBLAS, or without the events, there is no event order to check (the
    // product path says why).
    if !blas(device.index).is_ok_and(|b| b.events.is_some()) {
        return;
    }
    if let Err(why) = check_event_order(device) {
        events_failed(&format!(
            "the event-order check failed on cuda:{}: {why}",
            device.index
        ));
    }
}

/// Side of the check's square operand: large enough that its element-wise steps keep the
/// GPU busy while the product is launched, and the product busy while its reader is.
const CHECK_SIDE: usize = 4096;

/// The event order on `device`, checked against the synchronised one ([`order_check`] with
/// a `[4096, 4096]` float32 operand): a product that started before its operand was done,
/// or was read before it was done, differs.
pub fn check_event_order(device: &cubecl::cuda::CudaDevice) -> Result<(), String> {
    use burn::tensor::{Tensor, TensorPrimitive};
    type B = CudaCubeBackend;
    let err = order_check::<B>(device, CHECK_SIDE, |lhs, rhs, queued| {
        let order = if queued { Order::Events } else { Order::Sync };
        let (lhs, rhs) = (lhs.into_primitive().tensor(), rhs.into_primitive().tensor());
        product(&lhs, &rhs, DType::F32, order)
            .map(|z| Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(z)))
            .map_err(|f| format!("{}: {}", f.kind, f.detail))
    })?;
    if err > 1e-6 {
        return Err(format!(
            "the product queued by events differs from the synchronised one by {err:.2e}"
        ));
    }
    Ok(())
}

/// Eight element-wise steps over a `[side, side]` operand, its product by a
/// `[side, side / 16]` one, and an element-wise step on the result: first all queued at
/// once with `product(lhs, rhs, true)`, then with `product(lhs, rhs, false)` and every
/// result read back before the next step. Returns the relative difference of the two final
/// results. The operands come from `arange` (no random state is drawn).
pub fn order_check<B: Backend>(
    device: &B::Device,
    side: usize,
    product: impl Fn(Tensor<B, 2>, Tensor<B, 2>, bool) -> Result<Tensor<B, 2>, String>,
) -> Result<f64, String> {
    use burn::tensor::Int;
    let ramp = |rows: usize, cols: usize, step: f64| {
        (Tensor::<B, 1, Int>::arange(0..(rows * cols) as i64, device).float() * step)
            .sin()
            .reshape([rows, cols])
    };
    let (a, w) = (ramp(side, side, 0.001), ramp(side, side / 16, 0.0007));
    let read = |t: &Tensor<B, 2>| -> Result<Vec<f32>, String> {
        t.clone()
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| format!("{e:?}"))
    };
    let run = |queued: bool| -> Result<Vec<f32>, String> {
        let mut y = a.clone();
        for _ in 0..8 {
            y = y * 0.9 + 0.1;
        }
        if !queued {
            read(&y)?;
        }
        let z = product(y, w.clone(), queued)?;
        if !queued {
            read(&z)?;
        }
        read(&(z * 2.0 - 1.0))
    };
    let queued = run(true)?;
    Ok(crate::parity::rel_err(&queued, &run(false)?))
}

/// [`matmul`] in the given order (the event order only where the device has it).
fn product(
    lhs: &CubeTensor<CudaRuntime>,
    rhs: &CubeTensor<CudaRuntime>,
    out_dtype: DType,
    order: Order,
) -> Result<CubeTensor<CudaRuntime>, Fallback> {
    let why = |kind: &'static str| Fallback::new(kind, operands(lhs, rhs));
    if lhs.qparams.is_some() || rhs.qparams.is_some() {
        return Err(why("quantized operand"));
    }
    if lhs.dtype != rhs.dtype || (out_dtype != lhs.dtype && out_dtype != DType::F32) {
        return Err(Fallback::new(
            "mixed dtypes",
            format!("{} → {out_dtype:?}", operands(lhs, rhs)),
        ));
    }
    let (Some(ty), Some(out_ty)) = (data_type(lhs.dtype), data_type(out_dtype)) else {
        return Err(why("dtype cuBLAS does not take here"));
    };
    let ((ls, lst), (rs, rst)) = (dims(lhs), dims(rhs));
    let d = ls.len();
    let Some(batch) = broadcast_batch(&ls, &rs) else {
        return Err(why("batch dimensions that do not broadcast"));
    };
    let (m, k, n) = (ls[d - 2], ls[d - 1], rs[d - 1]);
    if rs[d - 2] != k {
        return Err(why("inner dimensions differ"));
    }
    let count: usize = batch.iter().product();
    let fits = |x: usize| x > 0 && x <= i32::MAX as usize;
    if ![m, k, n, count].into_iter().all(fits) {
        return Err(why("empty, or a size above 2³¹"));
    }
    let device = lhs.device.index;
    let b = blas(device).map_err(|e| match e {
        Some(e) => e,
        None => why("cuBLAS handle lock poisoned"),
    })?;

    // An operand that no single leading dimension and batch stride describe (broadcast
    // along some batch dimensions only, batches out of order) is copied into full,
    // contiguous batches first: a copy costs less than leaving the product to CubeCL's
    // matmul, which is slower and, in float32, only TF32-exact.
    let full = |t: &CubeTensor<CudaRuntime>, shape: &[usize], strides: &[usize]| {
        if layout(shape, strides, &batch).is_some() {
            return t.clone();
        }
        let mut to = batch.clone();
        to.extend_from_slice(&shape[d - 2..]);
        into_contiguous(CudaCubeBackend::float_expand(t.clone(), Shape::from(to)))
    };
    let (lhs, rhs) = (&full(lhs, &ls, &lst), &full(rhs, &rs, &rst));
    let ((ls, lst), (rs, rst)) = (dims(lhs), dims(rhs));
    let (Some(la), Some(ra)) = (layout(&ls, &lst, &batch), layout(&rs, &rst, &batch)) else {
        return Err(why("a layout no leading dimension describes"));
    };
    if ![la.ld, ra.ld].into_iter().all(fits) {
        return Err(why("a leading dimension above 2³¹"));
    }
    let gemm = Gemm {
        m,
        n,
        k,
        count,
        la,
        ra,
        ty,
        out_ty,
    };

    let client = lhs.client.clone();
    let mut out_shape = batch.clone();
    out_shape.extend([m, n]);
    let handle = client.empty(count * m * n * out_dtype.size());
    let out = CubeTensor::new_contiguous(
        client.clone(),
        lhs.device.clone(),
        Shape::from(out_shape),
        handle,
        out_dtype,
    );
    let failed =
        |kind: &'static str, e: String| Fallback::new(kind, format!("{e}: {}", operands(lhs, rhs)));
    let operands3 = || (lhs.handle.clone(), rhs.handle.clone(), out.handle.clone());

    if let (Order::Events, Some(events)) = (order, &b.events) {
        let asked = Instant::now();
        let handles3 = operands3();
        let run = client.exclusive(|| {
            add_ns(&WAITING_NS, asked);
            let launched = Instant::now();
            let result = on_device_thread(&client, &b, events, &gemm, handles3);
            add_ns(&CUBLAS_NS, launched);
            result
        });
        match run {
            Ok(Ok(None)) => {
                PRODUCTS.fetch_add(1, Ordering::Relaxed);
                BY_EVENTS.fetch_add(1, Ordering::Relaxed);
                return Ok(out);
            }
            Ok(Ok(Some(why_not))) => {
                // Done, but waited for on the host: the later products are synchronised.
                events_failed(&why_not);
                PRODUCTS.fetch_add(1, Ordering::Relaxed);
                return Ok(out);
            }
            Ok(Err(Failed::Product(kind, e))) => return Err(failed(kind, e)),
            Ok(Err(Failed::Ordering(e))) => events_failed(&e),
            Err(e) => events_failed(&format!("CubeCL's device thread: {e:?}")),
        }
    }

    // Synchronised: everything CubeCL queued (the inputs included) is done after this.
    let waiting = Instant::now();
    if let Err(e) = cubecl::future::block_on(client.sync()) {
        return Err(Fallback::new("CubeCL sync failed", format!("{e:?}")));
    }
    add_ns(&WAITING_NS, waiting);
    let in_cublas = Instant::now();
    let (lh, rh, oh) = operands3();
    let resources = (
        client.get_resource(lh),
        client.get_resource(rh),
        client.get_resource(oh),
    );
    let (l, r, o) = match resources {
        (Ok(l), Ok(r), Ok(o)) => (l, r, o),
        _ => return Err(why("a tensor's device memory could not be read")),
    };
    let result = b
        .busy
        .lock()
        .map_err(|_| "cuBLAS handle lock poisoned".to_string())
        .and_then(|_busy| {
            b.ctx.bind_to_thread().map_err(|e| format!("{e:?}"))?;
            // SAFETY: the pointers come from live CubeCL allocations held by the guards
            // above, whose shapes and strides the layouts were checked against.
            unsafe { gemm.launch(&b, l.resource().ptr, r.resource().ptr, o.resource().ptr) }?;
            b.stream.synchronize().map_err(|e| format!("{e:?}"))
        });
    drop((l, r, o));
    result.map_err(|e| failed("cuBLAS gemm failed", e))?;
    add_ns(&CUBLAS_NS, in_cublas);
    PRODUCTS.fetch_add(1, Ordering::Relaxed);
    Ok(out)
}

/// The arguments of one `cublasGemmStridedBatchedEx`, checked against the operands.
#[derive(Clone, Copy)]
struct Gemm {
    m: usize,
    n: usize,
    k: usize,
    count: usize,
    la: Layout,
    ra: Layout,
    ty: cudaDataType,
    out_ty: cudaDataType,
}

impl Gemm {
    /// Launches the product on `b`'s stream (nothing waits for it here).
    ///
    /// # Safety
    /// `l`, `r` and `o` must point to live device allocations of the left operand, the right
    /// operand and the output that the layouts and sizes describe.
    unsafe fn launch(&self, b: &Blas, l: u64, r: u64, o: u64) -> Result<(), String> {
        // Row-major C[m, n] is column-major Cᵀ[n, m] = Bᵀ·Aᵀ: cuBLAS gets (B, A). A
        // row-major operand is already its transpose in column-major terms (no op); a
        // transposed view needs op T.
        let op = |l: Layout| {
            if l.row_major {
                cublasOperation_t::CUBLAS_OP_N
            } else {
                cublasOperation_t::CUBLAS_OP_T
            }
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (m, n, k) = (self.m, self.n, self.k);
        // SAFETY: the caller's pointers; shapes, leading dimensions and batch strides were
        // checked against the tensors' metadata; alpha/beta are host float32s, matching the
        // float32 compute type.
        unsafe {
            blas::gemm_strided_batched_ex(
                *b.blas.handle(),
                op(self.ra),
                op(self.la),
                n as i32,
                m as i32,
                k as i32,
                (&alpha as *const f32).cast(),
                r as *const _,
                self.ty,
                self.ra.ld as i32,
                self.ra.batch_stride as i64,
                l as *const _,
                self.ty,
                self.la.ld as i32,
                self.la.batch_stride as i64,
                (&beta as *const f32).cast(),
                o as *mut _,
                self.out_ty,
                n as i32,
                (m * n) as i64,
                self.count as i32,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| format!("{e:?}"))
    }
}

/// Why a product in the event order did not finish that way.
enum Failed {
    /// The ordering calls failed before the product was launched: nothing ran (the product
    /// is then run synchronised).
    Ordering(String),
    /// The product itself could not run (class of reason, detail): CubeCL's matmul takes it.
    Product(&'static str, String),
}

/// Runs on CubeCL's device thread, after every launch queued before it: our stream waits for
/// all the context's work so far, runs the product, and all the context's later work waits
/// for it. `Ok(None)` when ordered on the GPU; `Ok(Some(why))` when the ordering after the
/// product failed and the host waited for it instead.
fn on_device_thread(
    client: &cubecl::client::ComputeClient<CudaRuntime>,
    b: &Blas,
    events: &CtxEvents,
    gemm: &Gemm,
    (lh, rh, oh): (
        cubecl::server::Handle,
        cubecl::server::Handle,
        cubecl::server::Handle,
    ),
) -> Result<Option<String>, Failed> {
    use cudarc::driver::{result as cu, sys::CUevent_wait_flags};
    // On the device thread these calls run at once, in this thread (no queue round trip).
    let (l, r, o) = match (
        client.get_resource(lh),
        client.get_resource(rh),
        client.get_resource(oh),
    ) {
        (Ok(l), Ok(r), Ok(o)) => (l, r, o),
        _ => {
            return Err(Failed::Product(
                "a tensor's device memory could not be read",
                "get_resource".into(),
            ));
        }
    };
    let _busy = b
        .busy
        .lock()
        .map_err(|_| Failed::Ordering("cuBLAS handle lock poisoned".into()))?;
    b.ctx
        .bind_to_thread()
        .map_err(|e| Failed::Ordering(format!("binding the CUDA context: {e:?}")))?;
    let (ctx, stream) = (b.ctx.cu_ctx(), b.stream.cu_stream());
    let (before, after) = (events.before.cu_event(), events.after.cu_event());
    // SAFETY: the context is the primary context CubeCL uses, the events were created in it
    // and live as long as `b`; the stream is ours.
    unsafe {
        (events.record)(ctx, before)
            .result()
            .map_err(|e| Failed::Ordering(format!("cuCtxRecordEvent: {e:?}")))?;
        cu::stream::wait_event(stream, before, CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT)
            .map_err(|e| Failed::Ordering(format!("cuStreamWaitEvent: {e:?}")))?;
    }
    // SAFETY: the pointers come from live CubeCL allocations held by the guards above, whose
    // shapes and strides the layouts were checked against.
    unsafe { gemm.launch(b, l.resource().ptr, r.resource().ptr, o.resource().ptr) }
        .map_err(|e| Failed::Product("cuBLAS gemm failed", e))?;
    // SAFETY: as above.
    let ordered = unsafe {
        cu::event::record(after, stream).and_then(|()| (events.wait)(ctx, after).result())
    };
    drop((l, r, o));
    match ordered {
        Ok(()) => Ok(None),
        Err(e) => {
            // Not ordered on the GPU: the host waits, so CubeCL reads a finished product.
            b.stream
                .synchronize()
                .map_err(|s| Failed::Product("cuBLAS gemm failed", format!("{s:?}")))?;
            Ok(Some(format!("cuCtxWaitEvent: {e:?}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_over_a_step_are_the_difference_of_two_snapshots() {
        let before = Stats {
            products: 10,
            by_events: 0,
            waiting_ns: 5_000_000,
            cublas_ns: 1_000_000,
        };
        let after = Stats {
            products: 846,
            by_events: 0,
            waiting_ns: 125_300_000,
            cublas_ns: 71_100_000,
        };
        let step = after.since(before);
        assert_eq!(
            step,
            Stats {
                products: 836,
                by_events: 0,
                waiting_ns: 120_300_000,
                cublas_ns: 70_100_000
            }
        );
        assert_eq!(
            step.describe(),
            "836 cuBLAS products: 120.3 ms waiting for CubeCL's queue, 70.1 ms in cuBLAS"
        );
        // A snapshot taken before another is never negative work.
        assert_eq!(before.since(after), Stats::default());

        // Ordered by events: the host waits for CubeCL's device thread, not for the GPU.
        let events = Stats {
            products: 836,
            by_events: 836,
            waiting_ns: 4_200_000,
            cublas_ns: 6_100_000,
        };
        assert_eq!(
            events.describe(),
            "836 cuBLAS products ordered by events: 4.2 ms waiting for CubeCL's device thread, \
             6.1 ms launching"
        );
        // The event order failed part way: both counts said.
        let mixed = Stats {
            by_events: 400,
            ..events
        };
        assert_eq!(
            mixed.describe(),
            "836 cuBLAS products, 400 of them ordered by events: 4.2 ms waiting, 6.1 ms in \
             cuBLAS calls"
        );
    }

    /// The event-order check's steps, on the CPU with a plain product: equal in both
    /// orders, and different when the queued product starts before its operand's steps
    /// are done or is read before it is done.
    #[test]
    fn the_order_check_finds_a_product_started_or_read_too_early() {
        type B = crate::device::CpuBackend;
        let dev = Default::default();
        let plain = |l: Tensor<B, 2>, r: Tensor<B, 2>, _: bool| Ok(l.matmul(r));
        assert_eq!(order_check::<B>(&dev, 64, plain).unwrap(), 0.0);
        // Started early: the product saw the operand one element-wise step short.
        let stale = |l: Tensor<B, 2>, r: Tensor<B, 2>, queued: bool| {
            let seen = if queued { (l.clone() - 0.1) / 0.9 } else { l };
            Ok(seen.matmul(r))
        };
        assert!(order_check::<B>(&dev, 64, stale).unwrap() > 1e-3);
        // Read early: what the output's memory held before the product wrote it.
        let unwritten = |l: Tensor<B, 2>, r: Tensor<B, 2>, queued: bool| {
            let z = l.matmul(r);
            Ok(if queued { z.zeros_like() } else { z })
        };
        assert!(order_check::<B>(&dev, 64, unwritten).unwrap() > 1e-3);
        // An error in the product is passed on.
        let failing = |_: Tensor<B, 2>, _: Tensor<B, 2>, _: bool| Err("no cuBLAS".to_string());
        assert_eq!(
            order_check::<B>(&dev, 64, failing).unwrap_err(),
            "no cuBLAS"
        );
    }

    #[test]
    fn order_is_events_unless_sync_is_asked_for() {
        assert_eq!(Order::parse(None), Ok(Order::Events));
        assert_eq!(Order::parse(Some("events")), Ok(Order::Events));
        assert_eq!(Order::parse(Some(" sync ")), Ok(Order::Sync));
        let err = Order::parse(Some("fast")).unwrap_err();
        assert!(
            err.contains("SOFTTUNE_CUBLAS_ORDER=\"fast\"") && err.contains("`sync`"),
            "{err}"
        );
    }

    #[test]
    fn layouts_of_contiguous_transposed_broadcast_and_strided_operands() {
        // A contiguous [2, 3, 4, 5]: row-major, ld 5, batch stride 20.
        let l = layout(&[2, 3, 4, 5], &[60, 20, 5, 1], &[2, 3]).unwrap();
        assert_eq!((l.row_major, l.ld, l.batch_stride), (true, 5, 20));
        // Its last two dimensions swapped ([2, 3, 5, 4] view): column-major, ld 5.
        let t = layout(&[2, 3, 5, 4], &[60, 20, 1, 5], &[2, 3]).unwrap();
        assert_eq!((t.row_major, t.ld, t.batch_stride), (false, 5, 20));
        // nn.Linear's [out, in] storage seen as [in, out]: op T on the weight, no copy.
        let w = layout(&[96, 130], &[1, 96], &[]).unwrap();
        assert_eq!((w.row_major, w.ld, w.batch_stride), (false, 96, 0));
        // Broadcast over the whole batch: stride 0.
        let bc = layout(&[1, 1, 4, 5], &[20, 20, 5, 1], &[2, 3]).unwrap();
        assert_eq!(bc.batch_stride, 0);
        // Broadcast over one batch dimension but not the other: no single stride.
        assert_eq!(layout(&[1, 3, 4, 5], &[60, 20, 5, 1], &[2, 3]), None);
        // Batch dimensions that do not flatten (heads swapped with the sequence).
        assert_eq!(layout(&[2, 3, 4, 5], &[60, 5, 15, 1], &[2, 3]), None);
        // Neither dimension unit-strided.
        assert_eq!(layout(&[4, 5], &[10, 2], &[]), None);
        // A narrowed row block keeps the parent's leading dimension.
        let nb = layout(&[2, 8, 16], &[640, 16, 1], &[2]).unwrap();
        assert_eq!((nb.ld, nb.batch_stride), (16, 640));
        // A single row or column takes any stride on its unit dimension.
        assert_eq!(layout(&[1, 7], &[3, 1], &[]).unwrap().ld, 7);
        let col = layout(&[7, 1], &[1, 3], &[]).unwrap();
        assert_eq!((col.row_major, col.ld), (true, 1));
        // Rows two apart: leading dimension 2 in the row reading.
        let col = layout(&[7, 1], &[2, 1], &[]).unwrap();
        assert_eq!((col.row_major, col.ld), (true, 2));
    }

    #[test]
    fn fallbacks_are_counted_and_each_reason_said_once() {
        let mut f = Fallbacks::default();
        let mixed = Fallback::new("mixed dtypes", "[2, 3] BF16 · [3, 4] F32 → F32");
        let first = f.record(&mixed).expect("the first of its kind is said");
        assert!(
            first.contains("mixed dtypes") && first.contains("[2, 3] BF16"),
            "{first}"
        );
        assert_eq!(
            f.record(&Fallback::new("mixed dtypes", "other shapes")),
            None
        );
        let other = Fallback::new("cuBLAS unavailable", "libcublas was not found");
        assert!(f.record(&other).unwrap().contains("libcublas"));
        assert_eq!(f.count(), 3);
    }

    #[test]
    fn batch_shapes_broadcast_like_burn() {
        assert_eq!(
            broadcast_batch(&[2, 1, 4, 5], &[1, 3, 5, 6]),
            Some(vec![2, 3])
        );
        assert_eq!(broadcast_batch(&[2, 4, 5], &[3, 5, 6]), None);
        assert_eq!(broadcast_batch(&[4, 5], &[5, 6]), Some(vec![]));
    }
}
