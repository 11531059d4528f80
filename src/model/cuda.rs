//! The CUDA backends' [`Kernels`]: with `SOFTTUNE_CUDA_MATMUL=cublas`, matmuls on cuBLAS
//! ([`super::cublas`]) on both, CubeCL alone (`SOFTTUNE_CUDA_BACKEND=cube`) and CubeCL
//! inside Burn's fusion wrapper (the default). Everything else is the trait's plain Burn
//! default.
//!
//! Under fusion the matmul is registered as a custom operation: Burn's fusion streams keep
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
use super::kernels::{Kernels, as_dtype};
use crate::device::{CudaBackend, CudaCubeBackend};

type CubeFloat = FloatTensor<CudaCubeBackend>;

fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
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

impl Kernels for CudaBackend {
    fn matmul<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        let dtype = lhs.dtype();
        fused_matmul(lhs, rhs, dtype)
    }

    fn matmul_f32<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        fused_matmul(lhs, rhs, DType::F32)
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
