//! Reading safetensors checkpoints (one file or shards) into Burn tensors.
//!
//! Every file is memory-mapped and its header validated up front (a truncated or corrupt file
//! is an error naming it before any tensor is built); tensors are then converted one at a
//! time to the dtype the model runs in, so host memory never holds more than one tensor copy.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors, tensor::TensorInfo};

struct Shard {
    path: PathBuf,
    map: Mmap,
    data_start: usize,
}

/// All tensors of a checkpoint, by name.
pub struct Weights {
    shards: Vec<Shard>,
    index: HashMap<String, (usize, TensorInfo)>,
}

impl Weights {
    /// Opens and validates every file. Errors name the file and say what to do.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        if paths.is_empty() {
            bail!("no safetensors weight files were found");
        }
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file =
                File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
            // SAFETY: the file is opened read-only; softtune never writes to model files and
            // the header check below validates every offset against the mapped length.
            let map = unsafe { Mmap::map(&file) }
                .with_context(|| format!("{}: cannot map into memory", path.display()))?;
            let (n, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
                anyhow!(
                    "{}: truncated or corrupt safetensors file ({e:?}); download it again",
                    path.display()
                )
            })?;
            for (name, info) in meta.tensors() {
                if let Some((other, _)) = index.get(&name) {
                    let other: &usize = other;
                    bail!(
                        "tensor `{name}` appears in both {} and {}",
                        paths[*other].display(),
                        path.display()
                    );
                }
                index.insert(name, (i, info.clone()));
            }
            shards.push(Shard {
                path: path.clone(),
                map,
                data_start: 8 + n,
            });
        }
        Ok(Self { shards, index })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.index.get(name).map(|(_, i)| i.shape.as_slice())
    }

    /// The first of `names` present in the checkpoint.
    pub fn find<'a>(&self, names: &[&'a str]) -> Option<&'a str> {
        names.iter().copied().find(|n| self.contains(n))
    }

    /// Number of stored elements (all tensors).
    pub fn total_elements(&self) -> usize {
        self.index
            .values()
            .map(|(_, i)| i.shape.iter().product::<usize>())
            .sum()
    }

    /// The floating-point dtype most parameters are stored in.
    pub fn stored_dtype(&self) -> Option<DType> {
        let mut count: std::collections::BTreeMap<Dtype, usize> = Default::default();
        for (_, info) in self.index.values() {
            *count.entry(info.dtype).or_default() += info.shape.iter().product::<usize>();
        }
        count
            .into_iter()
            .filter(|(d, _)| matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64))
            .max_by_key(|(_, n)| *n)
            .and_then(|(d, _)| float_dtype(d))
    }

    fn raw(&self, name: &str) -> Result<(&[u8], &TensorInfo, &Path)> {
        let (shard, info) = self
            .index
            .get(name)
            .ok_or_else(|| anyhow!("the checkpoint has no tensor `{name}`"))?;
        let s = &self.shards[*shard];
        let (a, b) = info.data_offsets;
        Ok((
            &s.map[s.data_start + a..s.data_start + b],
            info,
            s.path.as_path(),
        ))
    }

    /// The tensor's data converted to `dtype` (a float dtype), checked against `shape`.
    pub fn data(&self, name: &str, shape: &[usize], dtype: DType) -> Result<TensorData> {
        let (bytes, info, path) = self.raw(name)?;
        if info.shape != shape {
            bail!(
                "{}: tensor `{name}` has shape {:?}, expected {:?} from config.json",
                path.display(),
                info.shape,
                shape
            );
        }
        let src = float_dtype(info.dtype).ok_or_else(|| {
            anyhow!(
                "{}: tensor `{name}` is stored as {:?}; softtune reads float32, float16 and bfloat16 weights (quantized checkpoints are not supported)",
                path.display(),
                info.dtype
            )
        })?;
        let data = TensorData::from_bytes_vec(bytes.to_vec(), shape.to_vec(), src);
        Ok(if src == dtype {
            data
        } else {
            data.convert_dtype(dtype)
        })
    }

    /// Loads a tensor onto `device` in `dtype`.
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        device: &B::Device,
        dtype: DType,
    ) -> Result<Tensor<B, D>> {
        let data = self.data(name, &shape, dtype)?;
        Ok(Tensor::from_data(data, (device, dtype)))
    }
}

fn float_dtype(d: Dtype) -> Option<DType> {
    match d {
        Dtype::F32 => Some(DType::F32),
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        Dtype::F64 => Some(DType::F64),
        _ => None,
    }
}

/// Human name of a float dtype as transformers writes it.
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::F64 => "float64",
        _ => "other",
    }
}

/// Bytes per element of a float dtype.
pub fn dtype_bytes(d: DType) -> usize {
    match d {
        DType::F64 => 8,
        DType::F32 => 4,
        _ => 2,
    }
}
