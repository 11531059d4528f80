//! Where the model runs: the CPU (`flex`, pure Rust) or an NVIDIA GPU (`cuda:N`).
//!
//! CUDA is probed through the driver library before Burn touches the device: Burn's CUDA
//! runtime panics when there is no driver, and the user deserves a sentence instead.

use std::ffi::{c_char, c_int};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Result, anyhow, bail};

/// The CPU backend (tests, machines without a GPU).
pub type CpuBackend = burn::backend::Flex;
/// The CUDA backend (fusion-wrapped CubeCL; kernels compiled with NVRTC at run time).
pub type CudaBackend = burn::backend::Cuda<f32, i32>;
/// The same CubeCL CUDA backend without the Fusion wrapper (a plain bf16 matmul measured
/// 2.7× faster this way on an H100; whole training steps are for `softtune bench` to judge).
pub type CudaCubeBackend = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;

/// Which CUDA backend runs the model: `SOFTTUNE_CUDA_BACKEND=fusion` (default) or `cube`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CudaKind {
    #[default]
    Fusion,
    Cube,
}

impl CudaKind {
    pub const ENV: &'static str = "SOFTTUNE_CUDA_BACKEND";

    /// From [`CudaKind::ENV`]; an unknown value is an error naming the allowed ones.
    pub fn from_env() -> Result<Self> {
        match std::env::var(Self::ENV) {
            Err(_) => Ok(CudaKind::Fusion),
            Ok(v) => v.parse(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CudaKind::Fusion => "fusion",
            CudaKind::Cube => "cube",
        }
    }
}

impl FromStr for CudaKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "" | "fusion" => Ok(CudaKind::Fusion),
            "cube" => Ok(CudaKind::Cube),
            other => bail!(
                "CUDA backend \"{other}\" ({}): use fusion (CubeCL with Burn's fusion) or cube (CubeCL alone)",
                Self::ENV
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    pub fn is_gpu(self) -> bool {
        matches!(self, DeviceSpec::Cuda(_))
    }

    /// Threads that run parts of a batch side by side: one on a GPU; on the CPU
    /// `SOFTTUNE_CPU_THREADS`, else the number of cores (at most 16). Burn's CPU backend runs
    /// many element-wise operations on one core; parts side by side keep every core busy.
    pub fn threads(self) -> usize {
        match self {
            DeviceSpec::Cuda(_) => 1,
            DeviceSpec::Cpu => std::env::var("SOFTTUNE_CPU_THREADS")
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|&n| n > 0)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
                .min(16),
        }
    }
}

/// Makes glibc keep freed host memory for reuse instead of returning it to the kernel.
///
/// Burn's CPU backend allocates a fresh buffer for every operation's result. In a thread
/// other than the main one, glibc serves a buffer too big for its 64 MiB thread heaps with
/// its own `mmap` and unmaps it on free, whatever `M_MMAP_MAX` says, so every training step
/// faulted in gigabytes of fresh zeroed pages again (smollm-135m at 4 × 276 tokens: 870 000
/// page faults and a third of the CPU time in the kernel per step). One arena, no `mmap`,
/// no trimming and a 512 MiB growth pad let glibc recycle those buffers: 7.1 → 6.3 s per
/// step at the same peak memory (`softtune bench`, 2 cores). Call it first thing in `main`,
/// before any thread starts. `SOFTTUNE_MALLOC=default` keeps glibc's own settings (to
/// compare); other C libraries are left alone.
pub fn keep_freed_host_memory() {
    if std::env::var("SOFTTUNE_MALLOC").is_ok_and(|v| v == "default") {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 512 << 20);
    }
}

impl FromStr for DeviceSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s == "cpu" {
            return Ok(DeviceSpec::Cpu);
        }
        if s == "cuda" || s == "gpu" {
            return Ok(DeviceSpec::Cuda(0));
        }
        if let Some(n) = s.strip_prefix("cuda:") {
            return n.parse().map(DeviceSpec::Cuda).map_err(|_| {
                anyhow!("device \"{s}\": expected cuda:N with N a GPU index, e.g. cuda:0")
            });
        }
        bail!("device \"{s}\" is not one of cpu, cuda, cuda:N")
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// What the CUDA driver reports about one GPU.
#[derive(Debug, Clone)]
pub struct CudaGpu {
    pub index: usize,
    pub name: String,
    pub device_count: usize,
}

/// A GPU as NVML reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    pub index: usize,
    pub name: String,
    pub total: u64,
    pub free: u64,
}

/// GPUs from NVML; `None` when NVML (the NVIDIA driver) is not available.
pub fn probe_gpus() -> Option<Vec<GpuInfo>> {
    let nvml = nvml_wrapper::Nvml::init().ok()?;
    let n = nvml.device_count().ok()?;
    let mut out = Vec::new();
    for i in 0..n {
        let Ok(d) = nvml.device_by_index(i) else {
            continue;
        };
        let name = d.name().unwrap_or_else(|_| "unknown GPU".into());
        let (total, free) = d.memory_info().map_or((0, 0), |m| (m.total, m.free));
        out.push(GpuInfo {
            index: i as usize,
            name,
            total,
            free,
        });
    }
    Some(out)
}

type CuInit = unsafe extern "C" fn(u32) -> c_int;
type CuDeviceGetCount = unsafe extern "C" fn(*mut c_int) -> c_int;
type CuDeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
type CuDeviceGetName = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
type CuDriverGetVersion = unsafe extern "C" fn(*mut c_int) -> c_int;
type NvrtcVersion = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;

fn open_first(names: &[&str]) -> Option<libloading::Library> {
    // SAFETY: loading the vendor's driver / NVRTC libraries, whose initialisers are benign.
    names
        .iter()
        .find_map(|n| unsafe { libloading::Library::new(n) }.ok())
}

/// Checks that GPU `index` exists and that NVRTC (needed to compile kernels) can be loaded.
pub fn probe_cuda(index: usize) -> Result<CudaGpu> {
    let lib = open_first(&["libcuda.so.1", "libcuda.so", "nvcuda.dll"]).ok_or_else(|| {
        anyhow!("cuda:{index}: no NVIDIA driver found (libcuda.so.1 could not be loaded); use --device cpu, or install the NVIDIA driver")
    })?;
    // SAFETY: the symbols have the documented CUDA driver API signatures.
    let (count, name, driver) = unsafe {
        let init: libloading::Symbol<CuInit> = lib
            .get(b"cuInit\0")
            .map_err(|e| anyhow!("libcuda has no cuInit: {e}"))?;
        let rc = init(0);
        if rc != 0 {
            bail!(
                "cuda:{index}: the NVIDIA driver failed to initialise (CUresult {rc}); check `nvidia-smi`, or use --device cpu"
            );
        }
        let get_count: libloading::Symbol<CuDeviceGetCount> = lib
            .get(b"cuDeviceGetCount\0")
            .map_err(|e| anyhow!("libcuda has no cuDeviceGetCount: {e}"))?;
        let mut n: c_int = 0;
        if get_count(&mut n) != 0 {
            bail!("cuda:{index}: the NVIDIA driver could not count GPUs");
        }
        if index >= n as usize {
            bail!(
                "cuda:{index}: this machine has {n} GPU(s){}; choose cuda:0..cuda:{} or --device cpu",
                if n == 0 { "" } else { " visible" },
                (n as usize).saturating_sub(1)
            );
        }
        let get: libloading::Symbol<CuDeviceGet> = lib
            .get(b"cuDeviceGet\0")
            .map_err(|e| anyhow!("libcuda has no cuDeviceGet: {e}"))?;
        let get_name: libloading::Symbol<CuDeviceGetName> = lib
            .get(b"cuDeviceGetName\0")
            .map_err(|e| anyhow!("libcuda has no cuDeviceGetName: {e}"))?;
        let mut dev: c_int = 0;
        let mut buf = [0 as c_char; 256];
        let name = if get(&mut dev, index as c_int) == 0
            && get_name(buf.as_mut_ptr(), buf.len() as c_int, dev) == 0
        {
            std::ffi::CStr::from_ptr(buf.as_ptr())
                .to_string_lossy()
                .into_owned()
        } else {
            "unknown GPU".to_string()
        };
        let mut driver: c_int = 0;
        let version: Option<libloading::Symbol<CuDriverGetVersion>> =
            lib.get(b"cuDriverGetVersion\0").ok();
        let driver = version.filter(|v| v(&mut driver) == 0).map(|_| driver);
        (n as usize, name, driver)
    };
    let nvrtc = [
        "libnvrtc.so",
        "libnvrtc.so.13",
        "libnvrtc.so.12",
        "libnvrtc.so.11.2",
    ];
    let Some(nvrtc) = open_first(&nvrtc) else {
        bail!(
            "cuda:{index}: NVRTC (libnvrtc.so), which compiles softtune's GPU kernels, was not found; add the CUDA toolkit's lib64 folder to LD_LIBRARY_PATH"
        );
    };
    // SAFETY: nvrtcVersion has this signature in every NVRTC release.
    let nvrtc_version = unsafe {
        let (mut major, mut minor) = (0, 0);
        nvrtc
            .get::<NvrtcVersion>(b"nvrtcVersion\0")
            .ok()
            .filter(|v| v(&mut major, &mut minor) == 0)
            .map(|_| (major, minor))
    };
    if let (Some(nvrtc), Some(driver)) = (nvrtc_version, driver)
        && let Some(why) = nvrtc_newer_than_driver(nvrtc, driver)
    {
        bail!("cuda:{index}: {why}");
    }
    if cuda_headers(std::env::var_os("CUDA_PATH"), |p| p.exists()).is_none() {
        bail!(
            "cuda:{index}: no CUDA toolkit found for the headers NVRTC compiles softtune's GPU kernels with (CUDA_PATH is unset and there is no /usr/local/cuda, /opt/cuda or /usr/bin/nvcc); install the CUDA toolkit or set CUDA_PATH to one (a folder with include/); scripts/cuda-headers.sh DIR makes one from NVIDIA's pip wheels"
        );
    }
    configure_cubecl();
    Ok(CudaGpu {
        index,
        name,
        device_count: count,
    })
}

/// Why kernels compiled by NVRTC `(major, minor)` cannot run on a driver of CUDA version
/// `driver` (`cuDriverGetVersion`: 1000·major + 10·minor), or `None` when they can. NVRTC
/// writes PTX of its own release's ISA version, and a driver only loads PTX up to its own
/// (an H200's 13.0 driver rejects 13.5's `.version 9.5`); CubeCL would fail at its first
/// kernel.
pub fn nvrtc_newer_than_driver(nvrtc: (i32, i32), driver: i32) -> Option<String> {
    let (major, minor) = nvrtc;
    if 1000 * major + 10 * minor <= driver {
        return None;
    }
    let (dmajor, dminor) = (driver / 1000, driver % 1000 / 10);
    Some(format!(
        "NVRTC {major}.{minor} (the first libnvrtc on LD_LIBRARY_PATH) is newer than the NVIDIA driver, which supports CUDA {dmajor}.{dminor}: the driver cannot load the kernels it compiles; put the lib64 folder of a CUDA {dmajor}.{dminor} (or older) toolkit first on LD_LIBRARY_PATH, or update the driver"
    ))
}

/// The CUDA installation CubeCL's CUDA runtime takes its NVRTC include path from (it panics
/// on the first kernel without one): `CUDA_PATH`, else `/usr/local/cuda`, `/opt/cuda`, or
/// `/usr` when `/usr/bin/nvcc` exists (the same order). `exists` answers for paths.
pub fn cuda_headers(
    cuda_path: Option<std::ffi::OsString>,
    exists: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if let Some(p) = cuda_path {
        return Some(PathBuf::from(p));
    }
    [
        ("/usr/local/cuda", "/usr/local/cuda"),
        ("/opt/cuda", "/opt/cuda"),
        ("/usr/bin/nvcc", "/usr"),
    ]
    .into_iter()
    .find(|(probe, _)| exists(Path::new(probe)))
    .map(|(_, root)| PathBuf::from(root))
}

/// CubeCL's configuration for a softtune run, set once before CubeCL reads its own (after
/// that it cannot change):
/// - its compiled kernels (NVRTC's PTX) and autotune results are kept in softtune's cache
///   folder (`SOFTTUNE_CACHE_DIR`, else the OS cache folder, `cubecl/` inside), so that a
///   run after the first skips compiling and tuning them: minutes on a first run. A
///   `cubecl.toml` that names a compilation cache, or an autotune cache other than
///   `target`, wins; `SOFTTUNE_KERNEL_CACHE=off` keeps none, and so does a folder softtune
///   cannot write to;
/// - `SOFTTUNE_COMPILE_LOG=FILE` logs each kernel CubeCL compiles and each autotune result
///   to FILE (`with_compile_log`).
pub fn configure_cubecl() {
    use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut state = CubeClRuntimeConfig::storage().lock();
        if state.is_some() {
            return;
        }
        let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
        let mut changed = false;
        if let Some(dir) = kernel_cache_dir() {
            config = with_kernel_cache(config, &dir);
            changed = true;
        }
        if let Some(file) = std::env::var_os("SOFTTUNE_COMPILE_LOG").filter(|f| !f.is_empty()) {
            config = with_compile_log(config, Path::new(&file));
            changed = true;
        }
        if changed {
            *state = Some(std::sync::Arc::new(config));
        }
    });
}

/// softtune's folder for CubeCL's caches, or `None` when caching is off
/// (`SOFTTUNE_KERNEL_CACHE=off`) or the folder cannot be written to (CubeCL panics when it
/// cannot write its cache).
fn kernel_cache_dir() -> Option<PathBuf> {
    if std::env::var("SOFTTUNE_KERNEL_CACHE").is_ok_and(|v| v == "off") {
        return None;
    }
    let dir = crate::config::profile::os_dir(
        "SOFTTUNE_CACHE_DIR",
        directories::ProjectDirs::cache_dir,
        "compiled kernels",
    )
    .ok()?
    .join("cubecl");
    let probe = dir.join(".softtune-write-test");
    let writable = std::fs::create_dir_all(&dir).is_ok()
        && std::fs::write(&probe, b"").is_ok()
        && std::fs::remove_file(&probe).is_ok();
    writable.then_some(dir)
}

/// `config` logging each kernel it compiles (with its source) and each autotune result to
/// `file`, and nothing else. CubeCL's own `CUBECL_DEBUG_LOG` logs the same but also turns
/// on its profiler, which waits for the GPU before every kernel launch to time it: a run
/// under it is many times slower, so its step times say nothing.
fn with_compile_log(
    mut config: cubecl::config::CubeClRuntimeConfig,
    file: &Path,
) -> cubecl::config::CubeClRuntimeConfig {
    use cubecl::config::{autotune::AutotuneLogLevel, compilation::CompilationLogLevel};
    config.compilation.logger.level = CompilationLogLevel::Full;
    config.compilation.logger.file = Some(file.to_path_buf());
    config.autotune.logger.level = AutotuneLogLevel::Full;
    config.autotune.logger.file = Some(file.to_path_buf());
    config
}

/// `config` with its compiled kernels and its autotune results kept under `dir`, unless it
/// names places of its own: CubeCL keeps no compiled kernels by default, and its autotune
/// results in the `target/` folder of whatever Cargo project the working directory is in
/// (else the OS cache folder), so a run from another folder would tune again.
fn with_kernel_cache(
    mut config: cubecl::config::CubeClRuntimeConfig,
    dir: &Path,
) -> cubecl::config::CubeClRuntimeConfig {
    use cubecl::config::cache::CacheConfig;
    if config.compilation.cache.is_none() {
        config.compilation.cache = Some(CacheConfig::File(dir.to_path_buf()));
    }
    if matches!(config.autotune.cache, CacheConfig::Target) {
        config.autotune.cache = CacheConfig::File(dir.to_path_buf());
    }
    config
}

/// Runs `$body` with `$B` bound to the backend type and `$dev` to its device for `$spec`,
/// probing CUDA first; on CUDA, [`CudaKind::from_env`] picks the backend.
#[macro_export]
macro_rules! with_backend {
    ($spec:expr, |$B:ident, $dev:ident| $body:expr) => {{
        match $spec {
            $crate::device::DeviceSpec::Cpu => {
                type $B = $crate::device::CpuBackend;
                let $dev =
                    <<$B as burn::tensor::backend::BackendTypes>::Device as Default>::default();
                $body
            }
            $crate::device::DeviceSpec::Cuda(i) => {
                $crate::device::probe_cuda(i)?;
                let $dev = burn::backend::cuda::CudaDevice { index: i };
                match $crate::device::CudaKind::from_env()? {
                    $crate::device::CudaKind::Fusion => {
                        type $B = $crate::device::CudaBackend;
                        $body
                    }
                    $crate::device::CudaKind::Cube => {
                        type $B = $crate::device::CudaCubeBackend;
                        $body
                    }
                }
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvrtc_newer_than_the_driver_is_refused() {
        // The H200's 580 driver is CUDA 13.0; NVIDIA's pip wheels carry NVRTC 13.5.
        let why = nvrtc_newer_than_driver((13, 5), 13000).unwrap();
        assert!(
            why.contains("NVRTC 13.5") && why.contains("CUDA 13.0"),
            "{why}"
        );
        assert!(why.contains("LD_LIBRARY_PATH"), "{why}");
        assert!(nvrtc_newer_than_driver((13, 0), 13000).is_none());
        assert!(nvrtc_newer_than_driver((12, 8), 13000).is_none());
        assert!(nvrtc_newer_than_driver((12, 9), 12080).is_some());
        assert!(nvrtc_newer_than_driver((12, 4), 12080).is_none());
    }

    #[test]
    fn cuda_headers_follow_cubecls_search_order() {
        let none = |_: &Path| false;
        assert_eq!(cuda_headers(None, none), None);
        assert_eq!(
            cuda_headers(Some("/opt/cu13".into()), none),
            Some(PathBuf::from("/opt/cu13"))
        );
        let nvcc_only = |p: &Path| p == Path::new("/usr/bin/nvcc");
        assert_eq!(cuda_headers(None, nvcc_only), Some(PathBuf::from("/usr")));
        let both = |p: &Path| p == Path::new("/usr/bin/nvcc") || p == Path::new("/opt/cuda");
        assert_eq!(cuda_headers(None, both), Some(PathBuf::from("/opt/cuda")));
    }

    #[test]
    fn device_and_cuda_backend_names() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert_eq!("cube".parse::<CudaKind>().unwrap(), CudaKind::Cube);
        assert_eq!("fusion".parse::<CudaKind>().unwrap(), CudaKind::Fusion);
        let e = "tensorrt".parse::<CudaKind>().unwrap_err().to_string();
        assert!(
            e.contains("SOFTTUNE_CUDA_BACKEND") && e.contains("cube"),
            "{e}"
        );
    }

    #[test]
    fn compiled_kernels_and_autotune_results_go_to_our_cache_unless_configured() {
        use cubecl::config::{CubeClRuntimeConfig, cache::CacheConfig};
        let dir = Path::new("/cache/softtune/cubecl");
        let is_ours = |c: &CacheConfig| matches!(c, CacheConfig::File(p) if p == dir);
        let c = with_kernel_cache(CubeClRuntimeConfig::default(), dir);
        assert!(c.compilation.cache.as_ref().is_some_and(is_ours));
        assert!(is_ours(&c.autotune.cache));
        // Places a cubecl.toml names stay.
        let mut own = CubeClRuntimeConfig::default();
        own.compilation.cache = Some(CacheConfig::Global);
        own.autotune.cache = CacheConfig::Local;
        let c = with_kernel_cache(own, dir);
        assert!(matches!(c.compilation.cache, Some(CacheConfig::Global)));
        assert!(matches!(c.autotune.cache, CacheConfig::Local));
    }

    #[test]
    fn the_compile_log_logs_compiling_and_autotuning_but_never_profiles() {
        use cubecl::config::{
            CubeClRuntimeConfig, autotune::AutotuneLogLevel, compilation::CompilationLogLevel,
            profiling::ProfilingLogLevel,
        };
        let file = Path::new("/logs/compile.log");
        let c = with_compile_log(CubeClRuntimeConfig::default(), file);
        assert!(matches!(
            c.compilation.logger.level,
            CompilationLogLevel::Full
        ));
        assert_eq!(c.compilation.logger.file.as_deref(), Some(file));
        assert!(matches!(c.autotune.logger.level, AutotuneLogLevel::Full));
        assert_eq!(c.autotune.logger.file.as_deref(), Some(file));
        // The profiler would wait for the GPU before every launch.
        assert!(matches!(
            c.profiling.logger.level,
            ProfilingLogLevel::Disabled
        ));
    }
}
