//! Step 6: where it runs, and in which precision.

use super::{FieldDef, Report};
use crate::device::DeviceSpec;
use crate::inspect::human_bytes;
use crate::tui::app::App;

pub const FIELDS: &[FieldDef] = &[
    FieldDef {
        key: "device.device",
        label: "Device",
        help: "auto (first GPU, else CPU), cpu or cuda:N; ↑/↓ cycles",
        choices: &["auto", "cpu", "cuda:0", "cuda:1", "cuda:2", "cuda:3"],
        lines: 1,
    },
    FieldDef {
        key: "device.precision",
        label: "Precision",
        help: "Frozen weights: auto (f32 on CPU, the checkpoint's bf16/f16 on GPU), f32, bf16, f16",
        choices: &["auto", "f32", "bf16", "f16"],
        lines: 1,
    },
];

pub use crate::device::{GpuInfo, probe_gpus};

pub fn check(app: &App) -> Report {
    let mut r = Report::default();
    let dev = app.value("device.device").trim();
    let spec = match dev {
        "" | "auto" => None,
        d => match d.parse::<DeviceSpec>() {
            Ok(s) => Some(s),
            Err(e) => {
                r.error("device.device", format!("{e:#}"));
                None
            }
        },
    };
    match crate::model::lm::Precision::parse(match app.value("device.precision").trim() {
        "" => "auto",
        p => p,
    }) {
        Ok(_) => {}
        Err(_) => r.error("device.precision", "use auto, f32, bf16 or f16"),
    }
    match app.gpus() {
        None => r.info("GPUs: unknown (NVML, part of the NVIDIA driver, is not available)"),
        Some([]) => r.info("GPUs: none found"),
        Some(gpus) => {
            for g in gpus {
                r.info(format!(
                    "cuda:{}  {}  {} total, {} free",
                    g.index,
                    g.name,
                    human_bytes(g.total as usize),
                    human_bytes(g.free as usize)
                ));
            }
        }
    }
    r.info(format!("cpu     {} cores", app.cpu_cores()));
    if let (Some(DeviceSpec::Cuda(i)), Some(gpus)) = (spec, app.gpus())
        && !gpus.iter().any(|g| g.index == i)
    {
        r.error(
            "device.device",
            format!("cuda:{i}: no such GPU ({} found)", gpus.len()),
        );
    }
    // Does the run fit the chosen GPU (auto: the first one)?
    let gpu = match (spec, app.gpus()) {
        (Some(DeviceSpec::Cuda(i)), Some(gpus)) => gpus.iter().find(|g| g.index == i),
        (None, Some(gpus)) => gpus.first(),
        _ => None,
    };
    let batch: usize = app.value("training.batch_size").trim().parse().unwrap_or(1);
    if let (Some(g), Some(est)) = (gpu, super::parameters::memory_estimate(app, batch))
        && g.free > 0
        && est.memory.total() > g.free
    {
        let msg = format!(
            "needs about {} but cuda:{} has {} free",
            human_bytes(est.memory.total() as usize),
            g.index,
            human_bytes(g.free as usize)
        );
        let in_f32 = est.dtype == burn::tensor::DType::F32;
        let fits = crate::model::memory::largest_batch_below(
            |b| super::parameters::memory_estimate(app, b).map_or(u64::MAX, |e| e.memory.total()),
            batch,
            g.free,
        );
        match fits {
            None => r.error(
                "device.device",
                format!(
                    "{msg}: even one sequence does not fit; lower tokens per sequence (step 4){} or use a smaller model",
                    if in_f32 { ", pick bf16 precision (halves the weights)" } else { "" }
                ),
            ),
            Some(fits) => r.error(
                "device.device",
                format!("{msg}: the largest batch that fits is {fits} (step 4: batch size; raise gradient accumulation to keep the step size)"),
            ),
        }
    }
    if spec == Some(DeviceSpec::Cpu) {
        r.info("the CPU trains small models only; expect hours for anything over ~100M parameters");
    }
    r
}
