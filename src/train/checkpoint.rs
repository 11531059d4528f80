//! Checkpoints: the soft prompt, optimizer state, step and the run's identity in one
//! safetensors file, written atomically (temporary name, fsync, rename).
//!
//! Data position and RNG state are derived, not stored: the data order of every epoch is a
//! seeded shuffle, so step `s` with seed `seed` fully determines where training resumes.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::optimizer::{OptState, Optimizer};
use crate::config::OptimizerKind;

/// Marker key in the safetensors metadata.
pub const MARKER: &str = "softtune_checkpoint";

#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Optimizer steps completed.
    pub step: usize,
    pub total_steps: usize,
    pub seed: u64,
    /// Identity of the run (dataset, model, shapes): a resume must match it.
    pub fingerprint: String,
    pub rows: usize,
    pub dim: usize,
    pub prompt: Vec<f32>,
    /// The prompt before training (for the `initial` evaluation after a resume).
    pub initial: Vec<f32>,
    pub optimizer: Optimizer,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Checkpoint {
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = vec![
            (
                "prompt".into(),
                vec![self.rows, self.dim],
                f32_bytes(&self.prompt),
            ),
            (
                "initial".into(),
                vec![self.rows, self.dim],
                f32_bytes(&self.initial),
            ),
        ];
        for (name, shape, data) in self.optimizer.tensors() {
            owned.push((name.to_string(), shape, f32_bytes(data)));
        }
        let views: Vec<(String, TensorView)> = owned
            .iter()
            .map(|(n, s, b)| {
                TensorView::new(Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| anyhow!("checkpoint tensor {n}: {e:?}"))
            })
            .collect::<Result<_>>()?;
        let mut meta = HashMap::new();
        meta.insert(MARKER.to_string(), "1".to_string());
        meta.insert("step".into(), self.step.to_string());
        meta.insert("total_steps".into(), self.total_steps.to_string());
        meta.insert("seed".into(), self.seed.to_string());
        meta.insert("fingerprint".into(), self.fingerprint.clone());
        meta.insert(
            "optimizer".into(),
            match self.optimizer.kind {
                OptimizerKind::AdamW => "adamw",
                OptimizerKind::Adafactor => "adafactor",
            }
            .into(),
        );
        meta.insert("optimizer_t".into(), self.optimizer.t.to_string());
        meta.insert(
            "weight_decay".into(),
            self.optimizer.weight_decay.to_string(),
        );
        let bytes = safetensors::serialize(views, Some(meta))
            .map_err(|e| anyhow!("{}: cannot serialise the checkpoint: {e:?}", path.display()))?;
        crate::export::write_atomic(path, &bytes)
    }

    /// Whether `path` is a softtune checkpoint (a safetensors file with our marker).
    pub fn is_checkpoint(path: &Path) -> bool {
        if !path.is_file() {
            return false;
        }
        std::fs::read(path)
            .ok()
            .and_then(|b| SafeTensors::read_metadata(&b).ok().map(|(_, m)| m))
            .and_then(|m| m.metadata().as_ref().map(|x| x.contains_key(MARKER)))
            .unwrap_or(false)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let label = path.display().to_string();
        let bytes = std::fs::read(path).with_context(|| format!("{label}: cannot read"))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow!("{label}: truncated or corrupt checkpoint ({e:?})"))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| anyhow!("{label}: corrupt checkpoint header ({e:?})"))?;
        let meta = meta
            .metadata()
            .clone()
            .filter(|m| m.contains_key(MARKER))
            .ok_or_else(|| anyhow!("{label}: not a softtune checkpoint"))?;
        let get = |k: &str| -> Result<&String> {
            meta.get(k)
                .ok_or_else(|| anyhow!("{label}: checkpoint metadata lacks `{k}`"))
        };
        let num = |k: &str| -> Result<u64> {
            get(k)?
                .parse::<u64>()
                .map_err(|_| anyhow!("{label}: checkpoint metadata `{k}` is not a number"))
        };
        let tensor = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
            let v = st
                .tensor(name)
                .map_err(|_| anyhow!("{label}: checkpoint lacks tensor `{name}`"))?;
            if v.dtype() != Dtype::F32 {
                bail!("{label}: checkpoint tensor `{name}` is not float32");
            }
            let data = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok((v.shape().to_vec(), data))
        };
        let (shape, prompt) = tensor("prompt")?;
        if shape.len() != 2 {
            bail!("{label}: checkpoint prompt is not 2-D");
        }
        let (rows, dim) = (shape[0], shape[1]);
        let (_, initial) = tensor("initial")?;
        let kind = match get("optimizer")?.as_str() {
            "adamw" => OptimizerKind::AdamW,
            "adafactor" => OptimizerKind::Adafactor,
            other => bail!("{label}: unknown optimizer `{other}` in checkpoint"),
        };
        let state = match kind {
            OptimizerKind::AdamW => OptState::AdamW {
                m: tensor("adamw.m")?.1,
                v: tensor("adamw.v")?.1,
            },
            OptimizerKind::Adafactor => OptState::Adafactor {
                row: tensor("adafactor.row")?.1,
                col: tensor("adafactor.col")?.1,
            },
        };
        let weight_decay: f32 = get("weight_decay")?
            .parse()
            .map_err(|_| anyhow!("{label}: checkpoint `weight_decay` is not a number"))?;
        Ok(Self {
            step: num("step")? as usize,
            total_steps: num("total_steps")? as usize,
            seed: num("seed")?,
            fingerprint: get("fingerprint")?.clone(),
            rows,
            dim,
            prompt,
            initial,
            optimizer: Optimizer {
                kind,
                weight_decay,
                t: num("optimizer_t")?,
                rows,
                cols: dim,
                state,
            },
        })
    }
}
