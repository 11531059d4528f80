//! softtune's own CubeCL kernels. They run on any CubeCL runtime: CUDA in training (the
//! CUDA backends' [`Kernels`](super::kernels::Kernels) in [`super::cuda`], custom
//! operations under Burn's fusion in [`super::fusion`]), WebGPU/Vulkan in the tests
//! (`test_gpu`: Mesa's lavapipe on a machine without a GPU).
//!
//! * [`flash`]: flash-style causal attention, forward and backward
//!   (`SOFTTUNE_CUDA_ATTENTION=flash`);
//! * the fused row kernels (on unless `SOFTTUNE_CUDA_FUSED=off`, [`fused`]): [`score_rows`], the
//!   blocked attention's softmax and its backward over a block of scores; [`norm`],
//!   LayerNorm and RMSNorm forward and their input gradient; [`cross_entropy`], the
//!   training loss and its gradient over the logits. Each replaces a chain of Burn
//!   element-wise kernels and reductions over float32 copies with one pass per row.
//!
//! Shared here: the cube-wide [`reduce()`], and moving between Burn tensors and CubeCL ones.

use burn::tensor::{DType, Shape, Tensor, TensorPrimitive, backend::Backend};
use burn_cubecl::{CubeRuntime, ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor};
use cubecl::prelude::*;

pub mod cross_entropy;
pub mod flash;
pub mod norm;
pub mod score_rows;
#[cfg(test)]
pub(crate) mod test_gpu;

/// Whether the CUDA backends run the fused row kernels ([`score_rows`], [`norm`],
/// [`cross_entropy`]): on by default (the score-row and norm kernels' float32 kernel checks
/// passed on an H200; the cross-entropy kernels, of the same make, have not run on a GPU
/// yet); `SOFTTUNE_CUDA_FUSED=off` keeps plain Burn operations there. Read once per
/// process.
pub fn fused() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SOFTTUNE_CUDA_FUSED").map_or(true, |v| v != "off"))
}

/// Units per row of the row kernels (a power of two: [`reduce()`] halves it).
pub const ROW_UNITS: usize = 256;

/// One cube of [`ROW_UNITS`] units per row, the rows along x (at most `i32::MAX`).
pub fn row_grid(rows: usize) -> (CubeCount, CubeDim) {
    (
        CubeCount::Static(rows as u32, 1, 1),
        CubeDim::new_1d(ROW_UNITS as u32),
    )
}

/// The maximum (`is_max`) or the sum of every unit's `x`, returned to every unit of the
/// cube (`sm` holds one float per unit; the cube's units are a power of two).
#[cube]
pub fn reduce(sm: &mut SharedMemory<f32>, x: f32, #[comptime] is_max: bool) -> f32 {
    let u = UNIT_POS_X as usize;
    sm[u] = x;
    sync_cube();
    let mut half = CUBE_DIM_X as usize / 2;
    while half > 0 {
        if u < half {
            if is_max {
                sm[u] = max(sm[u], sm[u + half]);
            } else {
                sm[u] += sm[u + half];
            }
        }
        sync_cube();
        half /= 2;
    }
    let total = sm[0];
    sync_cube();
    total
}

/// The shape of a CubeCL tensor.
pub fn dims<R: CubeRuntime>(t: &CubeTensor<R>) -> Vec<usize> {
    t.meta.shape.iter().copied().collect()
}

/// A new contiguous tensor on `like`'s device.
pub fn empty<R: CubeRuntime>(
    like: &CubeTensor<R>,
    shape: Vec<usize>,
    dtype: DType,
) -> CubeTensor<R> {
    empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape),
        dtype,
    )
}

/// The CubeCL tensor under a Burn float tensor of a CubeCL backend `B`.
pub fn cube<R, B, const D: usize>(t: Tensor<B, D>) -> CubeTensor<R>
where
    R: CubeRuntime,
    B: Backend<FloatTensorPrimitive = CubeTensor<R>>,
{
    t.into_primitive().tensor()
}

/// A CubeCL tensor as a Burn float tensor of a CubeCL backend `B`.
pub fn burn_tensor<R, B, const D: usize>(t: CubeTensor<R>) -> Tensor<B, D>
where
    R: CubeRuntime,
    B: Backend<FloatTensorPrimitive = CubeTensor<R>>,
{
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// Compiling the kernels as the CUDA runtime does, without a GPU: the CUDA C++ that
/// CubeCL's CUDA compiler writes for a kernel, compiled by NVRTC for an H100 (`sm_90a`).
/// The kernels are built against the WebGPU test device's client ([`test_gpu`]); only
/// the compiler and NVRTC are CUDA's. Needs a CUDA toolkit tree (`include/`, `lib/` or
/// `lib64/` with `libnvrtc.so.13`, on `LD_LIBRARY_PATH`) named by `SOFTTUNE_TEST_CUDA`;
/// without it the checks say so and pass. `.ci/run` fetches NVIDIA's pip wheels of NVRTC,
/// the runtime headers and CCCL for it (`scripts/cuda-headers.sh`).
#[cfg(test)]
pub(crate) mod nvrtc {
    use std::ffi::CString;
    use std::path::PathBuf;

    use cubecl::cuda::CudaCompiler;
    use cubecl::ir::{ElemType, StorageType, UIntKind};
    use cubecl::prelude::*;
    use cubecl::wgpu::WgpuRuntime;
    use cubecl::{Compiler, CubeTask};

    /// The toolkit tree, or `None` (said on stderr) when `SOFTTUNE_TEST_CUDA` is unset.
    pub fn toolkit() -> Option<PathBuf> {
        match std::env::var_os("SOFTTUNE_TEST_CUDA") {
            Some(dir) => Some(PathBuf::from(dir)),
            None => {
                eprintln!(
                    "SOFTTUNE_TEST_CUDA is not set (a CUDA toolkit tree with NVRTC): \
                     CUDA compilation checks skipped"
                );
                None
            }
        }
    }

    /// A launcher and settings for a kernel of `dim` units per cube, the kernel's dtype
    /// markers registered by `register` (as the `launch` function CubeCL generates does).
    pub fn launcher(
        client: &ComputeClient<WgpuRuntime>,
        dim: CubeDim,
        mut register: impl FnMut(&mut Scope),
    ) -> (KernelLauncher<WgpuRuntime>, KernelSettings) {
        let settings = KernelSettings::default()
            .cube_dim(dim)
            .address_type(AddressType::U32);
        let mut launcher = KernelLauncher::<WgpuRuntime>::new(settings.clone());
        launcher.with_scope(|scope| {
            scope.device_properties(client.properties());
            register(scope);
        });
        (launcher, settings)
    }

    /// Compiles `kernel` to CUDA C++ and the C++ with NVRTC for `sm_90a`, with the options
    /// the CUDA runtime gives both on an H100; `Err` with NVRTC's log (and the source).
    #[allow(clippy::field_reassign_with_default)]
    pub fn check<K: CubeKernel>(kernel: K, toolkit: &std::path::Path) -> Result<(), String> {
        let mut options: <CudaCompiler as Compiler>::CompilationOptions = Default::default();
        options.warp_size = 32;
        let features = &mut options.supports_features;
        features.fast_math = true;
        features.grid_constants = true;
        features.clusters = true;
        features.elect_sync = true;
        let task = KernelTask::<CudaCompiler, K>::new(kernel);
        let u32_type = StorageType::Scalar(ElemType::UInt(UIntKind::U32));
        let compiled = task
            .compile(
                &mut Default::default(),
                &options,
                ExecutionMode::Checked,
                u32_type,
            )
            .map_err(|e| format!("CubeCL's CUDA compiler: {e:?}"))?;
        let include = toolkit.join("include");
        let flags = [
            "--gpu-architecture=sm_90a".to_string(),
            format!("--include-path={}", include.display()),
            format!("--include-path={}", include.join("cccl").display()),
            "-lineinfo".to_string(),
        ];
        let source = CString::new(compiled.source.clone()).map_err(|e| e.to_string())?;
        // SAFETY: NVRTC's C API on a null-terminated source that outlives the program; the
        // program is destroyed before returning.
        unsafe {
            use cudarc::nvrtc::result;
            let program = result::create_program(source.as_c_str(), None)
                .map_err(|e| format!("NVRTC (is libnvrtc.so.13 on LD_LIBRARY_PATH?): {e:?}"))?;
            let outcome = match result::compile_program(program, &flags) {
                Ok(()) => {
                    // SOFTTUNE_TEST_PTX_DIR=DIR keeps each kernel's PTX (to time `ptxas` on,
                    // which is what the driver runs when it loads a kernel).
                    if let Some(dir) = std::env::var_os("SOFTTUNE_TEST_PTX_DIR") {
                        let ptx = result::get_ptx(program).map_err(|e| format!("{e:?}"))?;
                        let bytes: Vec<u8> = ptx.iter().map(|&c| c as u8).collect();
                        let name = format!("{}.ptx", compiled.entrypoint_name);
                        let path = std::path::Path::new(&dir).join(name);
                        std::fs::write(&path, bytes.split(|&b| b == 0).next().unwrap_or(&[]))
                            .map_err(|e| format!("{}: {e}", path.display()))?;
                    }
                    Ok(())
                }
                Err(_) => {
                    let log = result::get_program_log(program)
                        .map(|raw| {
                            let bytes: Vec<u8> = raw.iter().map(|&c| c as u8).collect();
                            String::from_utf8_lossy(&bytes).into_owned()
                        })
                        .unwrap_or_default();
                    Err(format!("NVRTC: {log}\n--- source ---\n{}", compiled.source))
                }
            };
            let _ = result::destroy_program(program);
            outcome
        }
    }
}
