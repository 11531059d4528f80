//! KoboldAI soft prompt: a `.zip` with exactly two members, `tensor.npy` (2-D, C order, `<f4`
//! or `<f2`) and `meta.json` (`name`, optional `author`, `supported`, `description`).

use std::io::{Cursor, Write};
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use serde::Serialize;
use zip::CompressionMethod;
use zip::write::SimpleFileOptions;

use crate::prompt::SoftPrompt;

/// KoboldAI only lists soft prompts with fewer rows than this.
pub const KOBOLD_MAX_ROWS: usize = 2048;
/// KoboldAI shows at most this many characters of the description.
pub const KOBOLD_MAX_DESCRIPTION: usize = 500;

/// The contents of `meta.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KoboldMeta {
    /// Shown in KoboldAI's list; when empty the zip's file stem is used (KoboldAI needs a name).
    pub name: String,
    /// Omitted from `meta.json` when empty.
    pub author: String,
    /// Model names the prompt was trained for, e.g. `KoboldAI/OPT-6B-nerys-v2`.
    pub supported: Vec<String>,
    /// Cut at 500 characters.
    pub description: String,
}

#[derive(Serialize)]
struct MetaJson<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    author: &'a str,
    supported: &'a [String],
    description: String,
}

/// Writes a KoboldAI soft prompt zip at `path` (atomically: temporary name, fsync, rename).
/// `float16` stores the tensor as `<f2` (half the size); values must then fit in float16.
pub fn write_kobold_zip(
    path: &Path,
    prompt: &SoftPrompt,
    meta: &KoboldMeta,
    float16: bool,
) -> Result<()> {
    let label = path.display().to_string();
    prompt
        .check()
        .map_err(|e| anyhow!("{label}: refusing to export: {e}"))?;
    if prompt.rows >= KOBOLD_MAX_ROWS {
        bail!(
            "{label}: the soft prompt has {} tokens but KoboldAI only loads soft prompts with fewer \
             than {KOBOLD_MAX_ROWS}; train a shorter one",
            prompt.rows
        );
    }
    let npy = npy_bytes(prompt, float16).map_err(|e| anyhow!("{label}: {e}"))?;

    let stem;
    let name = if meta.name.trim().is_empty() {
        stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "soft prompt".to_owned());
        stem.as_str()
    } else {
        meta.name.as_str()
    };
    let meta_json = serde_json::to_vec(&MetaJson {
        name,
        author: &meta.author,
        supported: &meta.supported,
        description: meta
            .description
            .chars()
            .take(KOBOLD_MAX_DESCRIPTION)
            .collect(),
    })?;

    let bytes = zip_bytes(&npy, &meta_json)
        .map_err(|e| anyhow!("{label}: cannot build the zip archive: {e}"))?;
    super::write_atomic(path, &bytes)
}

fn zip_bytes(npy: &[u8], meta_json: &[u8]) -> zip::result::ZipResult<Vec<u8>> {
    let mut zw = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let deflate = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .unix_permissions(0o644);
    let stored = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .unix_permissions(0o644);
    zw.start_file("tensor.npy", deflate)?;
    zw.write_all(npy)?;
    zw.start_file("meta.json", stored)?;
    zw.write_all(meta_json)?;
    Ok(zw.finish()?.into_inner())
}

/// A `.npy` (format 1.0) holding the prompt as a 2-D C-order `<f4` or `<f2` array.
pub(crate) fn npy_bytes(prompt: &SoftPrompt, float16: bool) -> Result<Vec<u8>> {
    let descr = if float16 { "<f2" } else { "<f4" };
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}, {}), }}",
        prompt.rows, prompt.dim
    );
    // magic (6) + version (2) + header length (2) + header, padded with spaces and ending in a
    // newline so that the data starts at a multiple of 64 bytes, as numpy writes it.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let header_len =
        u16::try_from(header.len()).map_err(|_| anyhow!("npy header too long for format 1.0"))?;

    let elem = if float16 { 2 } else { 4 };
    let mut out = Vec::with_capacity(10 + header.len() + prompt.data.len() * elem);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    if float16 {
        for (i, &v) in prompt.data.iter().enumerate() {
            let h = half::f16::from_f32(v);
            if !h.is_finite() {
                bail!(
                    "value {v} at row {}, column {} does not fit in float16 (largest is {}); \
                     export as float32 instead",
                    i / prompt.dim,
                    i % prompt.dim,
                    half::f16::MAX
                );
            }
            out.extend_from_slice(&h.to_bits().to_le_bytes());
        }
    } else {
        for &v in &prompt.data {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok(out)
}
