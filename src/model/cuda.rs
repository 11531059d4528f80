//! The CUDA backends' [`Kernels`]: with `SOFTTUNE_CUDA_MATMUL=cublas`, matmuls on cuBLAS
//! ([`super::cublas`]); with `SOFTTUNE_CUDA_ATTENTION=flash`, attention on the CubeCL
//! kernels of [`super::flash`]. Both on CubeCL alone (`SOFTTUNE_CUDA_BACKEND=cube`) and
//! on CubeCL inside Burn's fusion wrapper (the default). Everything else is the trait's
//! plain Burn default.
//!
//! Under fusion each is registered as a custom operation: Burn's fusion streams keep
//! their order around it (element-wise chains before and after still fuse), and when it
//! runs it receives the inputs as CubeCL tensors, exactly what the unfused backend gets.

use burn::tensor::{
    DType, Shape, Tensor, TensorPrimitive,
    backend::Backend,
    ops::{FloatTensor, FloatTensorOps},
};
use burn_fusion::{
    FusionBackend, FusionRuntime,
    stream::{Operation, OperationStreams},
};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};

use super::cublas;
use super::flash::{self, Unroll};
use super::kernels::{Kernels, as_dtype, blocked_attention_backward, blocked_attention_forward};
use super::ops::AttnOpts;
use crate::device::{CudaBackend, CudaCubeBackend};

type CubeFloat = FloatTensor<CudaCubeBackend>;

fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// Whether attention over `q`, `k`, `v` and tensors of `more` dtypes runs on the flash
/// kernels: `SOFTTUNE_CUDA_ATTENTION=flash` and shapes and dtypes they take. Says once why
/// not when it is on but cannot take them.
fn use_flash<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    more: &[DType],
) -> bool {
    if !flash::enabled() {
        return false;
    }
    let mut dtypes = vec![q.dtype(), k.dtype(), v.dtype()];
    dtypes.extend_from_slice(more);
    let why = flash::unsupported(&q.dims(), &k.dims(), &v.dims(), &dtypes);
    if let Some(why) = &why {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            eprintln!("flash attention does not take {why}: blocked attention instead")
        });
    }
    why.is_none()
}

/// The unfused CubeCL tensor product, its result in `out_dtype` (the inputs' dtype, or
/// float32 from 16-bit inputs): cuBLAS when it takes the operands, CubeCL's own matmul
/// otherwise.
fn cube_matmul(lhs: CubeFloat, rhs: CubeFloat, out_dtype: DType) -> CubeFloat {
    if cublas::enabled()
        && let Some(out) = cublas::matmul(&lhs, &rhs, out_dtype)
    {
        return out;
    }
    let cast = |t: CubeFloat| {
        if t.dtype == out_dtype {
            t
        } else {
            CudaCubeBackend::float_cast(t, out_dtype.into())
        }
    };
    CudaCubeBackend::float_matmul(cast(lhs), cast(rhs))
}

impl Kernels for CudaCubeBackend {
    fn matmul<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        let dtype = lhs.dtype();
        float(cube_matmul(
            lhs.into_primitive().tensor(),
            rhs.into_primitive().tensor(),
            dtype,
        ))
    }

    fn matmul_f32<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        float(cube_matmul(
            lhs.into_primitive().tensor(),
            rhs.into_primitive().tensor(),
            DType::F32,
        ))
    }

    fn attention_forward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        opts: AttnOpts,
    ) -> (Tensor<Self, 4>, Tensor<Self, 5>) {
        if !use_flash(&q, &k, &v, &[]) {
            return blocked_attention_forward(q, k, v, opts);
        }
        let (out, lse) = flash::forward(&prim(q), &prim(k), &prim(v), opts, Unroll::Small);
        (float(out), float(lse))
    }

    fn attention_backward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        out: Tensor<Self, 4>,
        lse: Tensor<Self, 5>,
        grad: Tensor<Self, 4>,
        opts: AttnOpts,
    ) -> [Tensor<Self, 4>; 3] {
        let grad = as_dtype(grad, q.dtype());
        if !use_flash(&q, &k, &v, &[out.dtype(), grad.dtype()]) {
            return blocked_attention_backward(q, k, v, out, lse, grad, opts);
        }
        let [dq, dk, dv] = flash::backward(
            &prim(q),
            &prim(k),
            &prim(v),
            &prim(out),
            &prim(lse),
            &prim(grad),
            opts,
            Unroll::Small,
        );
        [float(dq), float(dk), float(dv)]
    }
}

/// A matmul recorded in a fusion stream; runs [`cube_matmul`] on the CubeCL tensors.
#[derive(Clone, Debug)]
struct FusedCublasMatmul {
    desc: CustomOpIr,
}

type Fused = <CudaCubeBackend as FusionBackend>::FusionRuntime;

impl Operation<Fused> for FusedCublasMatmul {
    fn execute(&self, handles: &mut HandleContainer<<Fused as FusionRuntime>::FusionHandle>) {
        let ([lhs, rhs], [out]) = self.desc.as_fixed();
        let l = handles.get_float_tensor::<CudaCubeBackend>(lhs);
        let r = handles.get_float_tensor::<CudaCubeBackend>(rhs);
        let product = cube_matmul(l, r, out.dtype);
        handles.register_float_tensor::<CudaCubeBackend>(&out.id, product);
    }
}

/// The flash attention forward pass recorded in a fusion stream: `q, k, v → out, lse`.
#[derive(Clone, Debug)]
struct FusedFlashForward {
    desc: CustomOpIr,
    opts: AttnOpts,
}

impl Operation<Fused> for FusedFlashForward {
    fn execute(&self, handles: &mut HandleContainer<<Fused as FusionRuntime>::FusionHandle>) {
        let ([q, k, v], [out, lse]) = self.desc.as_fixed();
        let [q, k, v] = [q, k, v].map(|t| handles.get_float_tensor::<CudaCubeBackend>(t));
        let (o, l) = flash::forward(&q, &k, &v, self.opts, Unroll::Small);
        handles.register_float_tensor::<CudaCubeBackend>(&out.id, o);
        handles.register_float_tensor::<CudaCubeBackend>(&lse.id, l);
    }
}

/// The flash attention backward pass recorded in a fusion stream:
/// `q, k, v, out, lse, grad → dq, dk, dv`.
#[derive(Clone, Debug)]
struct FusedFlashBackward {
    desc: CustomOpIr,
    opts: AttnOpts,
}

impl Operation<Fused> for FusedFlashBackward {
    fn execute(&self, handles: &mut HandleContainer<<Fused as FusionRuntime>::FusionHandle>) {
        let (inputs, [dq, dk, dv]) = self.desc.as_fixed::<6, 3>();
        let [q, k, v, out, lse, grad] = inputs
            .each_ref()
            .map(|t| handles.get_float_tensor::<CudaCubeBackend>(t));
        let grads = flash::backward(&q, &k, &v, &out, &lse, &grad, self.opts, Unroll::Small);
        for (ir, g) in [dq, dk, dv].into_iter().zip(grads) {
            handles.register_float_tensor::<CudaCubeBackend>(&ir.id, g);
        }
    }
}

impl Kernels for CudaBackend {
    fn matmul<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        let dtype = lhs.dtype();
        fused_matmul(lhs, rhs, dtype)
    }

    fn matmul_f32<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        fused_matmul(lhs, rhs, DType::F32)
    }

    fn attention_forward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        opts: AttnOpts,
    ) -> (Tensor<Self, 4>, Tensor<Self, 5>) {
        if !use_flash(&q, &k, &v, &[]) {
            return blocked_attention_forward(q, k, v, opts);
        }
        let [b, h, s, hd] = q.dims();
        let kvh = k.dims()[1];
        let dtype = q.dtype();
        let [q, k, v] = [q, k, v].map(prim);
        let client = q.client.clone();
        let streams = OperationStreams::with_inputs([&q, &k, &v]);
        let out = TensorIr::uninit(
            client.create_empty_handle(),
            Shape::from(vec![b, h, s, hd]),
            dtype,
        );
        let lse = TensorIr::uninit(
            client.create_empty_handle(),
            Shape::from(vec![b, kvh, h / kvh, s, 1]),
            DType::F32,
        );
        let desc = CustomOpIr::new(
            "softtune_flash_forward",
            &[q.into_ir(), k.into_ir(), v.into_ir()],
            &[out, lse],
        );
        let [out, lse] = client
            .register(
                streams,
                OperationIr::Custom(desc.clone()),
                FusedFlashForward { desc, opts },
            )
            .outputs();
        (float(out), float(lse))
    }

    fn attention_backward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        out: Tensor<Self, 4>,
        lse: Tensor<Self, 5>,
        grad: Tensor<Self, 4>,
        opts: AttnOpts,
    ) -> [Tensor<Self, 4>; 3] {
        let grad = as_dtype(grad, q.dtype());
        if !use_flash(&q, &k, &v, &[out.dtype(), grad.dtype()]) {
            return blocked_attention_backward(q, k, v, out, lse, grad, opts);
        }
        let (qd, kd) = (q.dims(), k.dims());
        let dtype = q.dtype();
        let [q, k, v, out, grad] = [q, k, v, out, grad].map(prim);
        let lse = prim(lse);
        let client = q.client.clone();
        let streams = OperationStreams::with_inputs([&q, &k, &v, &out, &lse, &grad]);
        let empty = |dims: [usize; 4]| {
            TensorIr::uninit(
                client.create_empty_handle(),
                Shape::from(dims.to_vec()),
                dtype,
            )
        };
        let outputs = [empty(qd), empty(kd), empty(kd)];
        let desc = CustomOpIr::new(
            "softtune_flash_backward",
            &[q, k, v, out, lse, grad].map(|t| t.into_ir()),
            &outputs,
        );
        let grads: [_; 3] = client
            .register(
                streams,
                OperationIr::Custom(desc.clone()),
                FusedFlashBackward { desc, opts },
            )
            .outputs();
        grads.map(float)
    }
}

/// Records a cuBLAS matmul with its result in `dtype` in the fusion stream (plain Burn when
/// cuBLAS is off or the operands do not fit a matmul).
fn fused_matmul<const D: usize>(
    lhs: Tensor<CudaBackend, D>,
    rhs: Tensor<CudaBackend, D>,
    dtype: DType,
) -> Tensor<CudaBackend, D> {
    let plain = |l: Tensor<CudaBackend, D>, r: Tensor<CudaBackend, D>| {
        as_dtype(l, dtype).matmul(as_dtype(r, dtype))
    };
    let (ld, rd) = (lhs.dims(), rhs.dims());
    if !cublas::enabled() || lhs.dtype() != rhs.dtype() || ld[D - 1] != rd[D - 2] {
        return plain(lhs, rhs);
    }
    let Some(mut shape) = cublas::broadcast_batch(&ld, &rd) else {
        return plain(lhs, rhs);
    };
    shape.extend([ld[D - 2], rd[D - 1]]);
    let (l, r) = (lhs.into_primitive().tensor(), rhs.into_primitive().tensor());
    let client = l.client.clone();
    let streams = OperationStreams::with_inputs([&l, &r]);
    let out = TensorIr::uninit(client.create_empty_handle(), Shape::from(shape), dtype);
    let desc = CustomOpIr::new(
        "softtune_cublas_matmul",
        &[l.into_ir(), r.into_ir()],
        &[out],
    );
    let out = client
        .register(
            streams,
            OperationIr::Custom(desc.clone()),
            FusedCublasMatmul { desc },
        )
        .output();
    float(out)
}
