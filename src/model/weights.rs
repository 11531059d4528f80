//! Reading checkpoints (one file or shards) into Burn tensors: safetensors files, and
//! PyTorch's `pytorch_model.bin` zip archives, read without running them ([`super::torch_bin`]).
//!
//! Every file is memory-mapped and its header validated up front (a truncated or corrupt file
//! is an error naming it before any tensor is built); tensors are then converted one at a
//! time to the dtype the model runs in, so host memory never holds more than one tensor copy.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::torch_bin::{self, TorchTensor};

struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// Where a tensor's bytes are in its shard.
enum Layout {
    /// One run of bytes: start and end in the mapped file.
    Bytes(usize, usize),
    /// A strided view of a PyTorch storage, gathered when read.
    Strided(TorchTensor),
}

struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    layout: Layout,
}

/// All tensors of a checkpoint, by name.
pub struct Weights {
    shards: Vec<Shard>,
    index: HashMap<String, Entry>,
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
            let entries = if torch_bin::is_zip(&map) || is_torch_name(path) {
                torch_entries(path, &map)?
            } else {
                safetensors_entries(path, &map)?
            };
            for (name, mut entry) in entries {
                if let Some(other) = index.get(&name) {
                    let other: &Entry = other;
                    bail!(
                        "tensor `{name}` appears in both {} and {}",
                        paths[other.shard].display(),
                        path.display()
                    );
                }
                entry.shard = i;
                index.insert(name, entry);
            }
            shards.push(Shard {
                path: path.clone(),
                map,
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
        self.index.get(name).map(|e| e.shape.as_slice())
    }

    /// The first of `names` present in the checkpoint.
    pub fn find<'a>(&self, names: &[&'a str]) -> Option<&'a str> {
        names.iter().copied().find(|n| self.contains(n))
    }

    /// Number of stored elements (all tensors).
    pub fn total_elements(&self) -> usize {
        self.index
            .values()
            .map(|e| e.shape.iter().product::<usize>())
            .sum()
    }

    /// The floating-point dtype most parameters are stored in.
    pub fn stored_dtype(&self) -> Option<DType> {
        let mut count: std::collections::BTreeMap<Dtype, usize> = Default::default();
        for e in self.index.values() {
            *count.entry(e.dtype).or_default() += e.shape.iter().product::<usize>();
        }
        count
            .into_iter()
            .filter(|(d, _)| matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64))
            .max_by_key(|(_, n)| *n)
            .and_then(|(d, _)| float_dtype(d))
    }

    fn raw(&self, name: &str) -> Result<(Cow<'_, [u8]>, &Entry, &Path)> {
        let entry = self
            .index
            .get(name)
            .ok_or_else(|| anyhow!("the checkpoint has no tensor `{name}`"))?;
        let s = &self.shards[entry.shard];
        let bytes = match &entry.layout {
            Layout::Bytes(a, b) => Cow::Borrowed(&s.map[*a..*b]),
            Layout::Strided(t) => Cow::Owned(t.gather(&s.map)),
        };
        Ok((bytes, entry, s.path.as_path()))
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
        let data = TensorData::from_bytes_vec(bytes.into_owned(), shape.to_vec(), src);
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

/// `pytorch_model.bin` and its shards (`pytorch_model-00001-of-00002.bin`).
fn is_torch_name(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("bin"))
}

fn safetensors_entries(path: &Path, map: &[u8]) -> Result<Vec<(String, Entry)>> {
    let (n, meta) = SafeTensors::read_metadata(map).map_err(|e| {
        anyhow!(
            "{}: truncated or corrupt safetensors file ({e:?}); download it again",
            path.display()
        )
    })?;
    let data_start = 8 + n;
    Ok(meta
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let (a, b) = info.data_offsets;
            let entry = Entry {
                shard: 0,
                dtype: info.dtype,
                shape: info.shape.clone(),
                layout: Layout::Bytes(data_start + a, data_start + b),
            };
            (name, entry)
        })
        .collect())
}

fn torch_entries(path: &Path, map: &[u8]) -> Result<Vec<(String, Entry)>> {
    Ok(torch_bin::read(path, map)?
        .into_iter()
        .map(|(name, t)| {
            let layout = if t.is_contiguous() {
                let (a, b) = t.byte_range();
                Layout::Bytes(a, b)
            } else {
                Layout::Strided(t.clone())
            };
            let entry = Entry {
                shard: 0,
                dtype: t.dtype,
                shape: t.shape,
                layout,
            };
            (name, entry)
        })
        .collect())
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
