//! Reading soft prompts from the formats front-ends use.
//!
//! Accepted (see `shared/formats.md` for the layouts):
//! * a KoboldAI soft prompt `.zip`: member `tensor.npy`, 2-D, float32 / float16 / float64, or
//!   `V2` (raw bfloat16 as written by JAX);
//! * a PEFT prompt-tuning adapter folder: `adapter_model.safetensors` holding
//!   `prompt_embeddings` (F32 / F16 / BF16 / F64);
//! * an npz-style `.mtjsp` / `.npz` (mtj-softtuner): only its `tensor` member is read;
//! * a `torch.save` file (the zip archive of PyTorch 1.6 and later, or the legacy format before
//!   it), read as data by [`crate::model::torch_bin`] and never run: PEFT's `adapter_model.bin` (`prompt_embeddings`, alone or in its adapter
//!   folder) and KoboldAI's torch trainer `.mtjsp` (`tensor`).
//!
//! * mkultra's `.json`: its `tensor` is base64 of `pickle.dumps(tensor)`, whose storage is a
//!   legacy `torch.save` inside the pickle; read as data the same way.
//!
//! Pickles that would have to be run to be read (plain `pickle.dump` files, object arrays in
//! npy members) are refused: unpickling can run arbitrary code.
//!
//! The npy and safetensors headers are parsed here by hand so that every malformed input turns
//! into an error that names the file, never into a panic.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{Result, anyhow, bail};

/// A soft prompt: `rows` virtual tokens of width `dim` (the model's input-embedding width).
#[derive(Debug, Clone, PartialEq)]
pub struct SoftPrompt {
    pub rows: usize,
    pub dim: usize,
    /// Row-major `[rows, dim]`.
    pub data: Vec<f32>,
}

impl SoftPrompt {
    /// Checks that `data` holds `rows * dim` values, that neither is zero and that every value
    /// is finite.
    pub fn new(rows: usize, dim: usize, data: Vec<f32>) -> Result<Self> {
        let prompt = SoftPrompt { rows, dim, data };
        prompt.check()?;
        Ok(prompt)
    }

    /// The same checks as [`SoftPrompt::new`], for a value whose public fields may have been
    /// changed since.
    pub(crate) fn check(&self) -> Result<()> {
        if self.rows == 0 || self.dim == 0 {
            bail!(
                "a soft prompt needs at least one row and one column, got shape [{}, {}]",
                self.rows,
                self.dim
            );
        }
        let expected = self.rows.checked_mul(self.dim).ok_or_else(|| {
            anyhow!(
                "soft prompt shape [{}, {}] is too large",
                self.rows,
                self.dim
            )
        })?;
        if self.data.len() != expected {
            bail!(
                "soft prompt shape [{}, {}] needs {} values but {} were given",
                self.rows,
                self.dim,
                expected,
                self.data.len()
            );
        }
        if let Some(i) = self.data.iter().position(|v| !v.is_finite()) {
            let (r, c) = (i / self.dim, i % self.dim);
            let count = self.data.iter().filter(|v| !v.is_finite()).count();
            bail!(
                "the soft prompt holds {count} non-finite value(s) (first: {} at row {r}, column {c}); \
                 training probably diverged: use an earlier checkpoint or retrain with a lower learning rate",
                self.data[i]
            );
        }
        Ok(())
    }
}

/// Which kind of file a soft prompt was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptFormat {
    /// KoboldAI soft prompt `.zip` (`tensor.npy` + `meta.json`).
    KoboldZip,
    /// PEFT prompt-tuning adapter (`adapter_model.safetensors` → `prompt_embeddings`).
    PeftAdapter,
    /// npz-style archive (mtj-softtuner `.mtjsp`, `.npz`): its `tensor` member.
    MtjNpz,
    /// KoboldAI's torch trainer `.mtjsp` (a `torch.save` archive): its `tensor`, which, like a
    /// KoboldAI zip, replaces the embedding module's output.
    KoboldTorch,
    /// mkultra's `.json`: its base64-pickled `tensor`, which also replaces the embedding
    /// module's output.
    Mkultra,
}

const ACCEPTED: &str = "accepted soft-prompt formats: a KoboldAI soft prompt .zip (tensor.npy \
     float32/float16 + meta.json), a PEFT prompt-tuning adapter folder (adapter_model.safetensors \
     or adapter_model.bin with a prompt_embeddings tensor), a .mtjsp/.npz with a `tensor` \
     member (npz-style, or KoboldAI's torch trainer's torch.save file), or an mkultra .json";

/// Largest tensor payload we agree to read (a [2048, 16384] float64 prompt is 256 MiB).
const MAX_TENSOR_BYTES: u64 = 1 << 30;
/// Largest npy header we agree to parse (numpy itself stops at 10 000 bytes by default).
const MAX_NPY_HEADER: usize = 1 << 16;
/// Largest safetensors header we agree to parse.
const MAX_ST_HEADER: u64 = 100 << 20;

fn pickle_error(label: &str, what: &str) -> anyhow::Error {
    anyhow!(
        "{label}: {what}. It is stored with Python pickle, and unpickling a file can run arbitrary \
         code, so softtune does not read it. {ACCEPTED}. If you trust the file, convert it in Python \
         (load it there and save the tensor with numpy.save / safetensors)."
    )
}

/// Reads a soft prompt: a KoboldAI .zip (tensor.npy f32/f16, V2 raw bf16 accepted), a PEFT
/// adapter folder or file (`prompt_embeddings` of adapter_model.safetensors or .bin), the
/// `tensor` of an npz-style or torch.save .mtjsp/.npz, or an mkultra .json. torch.save files
/// and mkultra's pickled tensor are read as data, never run.
///
/// Refuses pickles that would have to run to be read (plain pickle.dump files, npz members
/// that are object arrays) with an explanation that pickle can run arbitrary code and which
/// formats are accepted.
pub fn load(path: &Path) -> Result<(SoftPrompt, PromptFormat)> {
    let label = path.display().to_string();
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow!("{label}: cannot open the soft prompt: {e}"))?;
    if meta.is_dir() {
        return Ok((load_peft_dir(path)?, PromptFormat::PeftAdapter));
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();

    // A file inside a PEFT adapter folder: read the folder.
    if file_name == "adapter_model.safetensors" || file_name == "adapter_config.json" {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        return Ok((load_peft_dir(dir)?, PromptFormat::PeftAdapter));
    }
    if file_name == "adapter_model.bin" {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        return Ok((load_peft_dir(dir)?, PromptFormat::PeftAdapter));
    }

    let mut file = File::open(path).map_err(|e| anyhow!("{label}: cannot open: {e}"))?;
    let mut head = [0u8; 16];
    let n = read_up_to(&mut file, &mut head).map_err(|e| anyhow!("{label}: cannot read: {e}"))?;
    let head = &head[..n];
    if n == 0 {
        bail!("{label}: the file is empty; {ACCEPTED}");
    }

    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        drop(file);
        return load_zip(path, &label, &ext);
    }
    if head.starts_with(b"\x93NUMPY") {
        bail!(
            "{label}: this is a bare .npy array, not a soft prompt file; {ACCEPTED}. \
             To use it, put it in a zip as tensor.npy together with a meta.json holding {{\"name\": ...}}"
        );
    }
    if crate::model::torch_bin::is_legacy(head) {
        drop(file);
        return read_torch_prompt(path, &label);
    }
    if head[0] == 0x80 {
        return Err(pickle_error(
            &label,
            "this is a bare Python pickle (pickle.dump, not torch.save), which would have to be \
             run to be read",
        ));
    }
    if looks_like_safetensors(head, meta.len()) {
        let prompt = read_safetensors_prompt(path, &label)?;
        return Ok((prompt, PromptFormat::PeftAdapter));
    }
    let first = head.iter().copied().find(|b| !b.is_ascii_whitespace());
    if first == Some(b'{') {
        return load_json(&mut file, &label);
    }
    if matches!(
        ext.as_str(),
        "pt" | "pth" | "bin" | "pkl" | "pickle" | "ckpt" | "mtjsp"
    ) {
        return Err(pickle_error(
            &label,
            &format!("a .{ext} file that is not a zip/npz archive is a torch/Python pickle"),
        ));
    }
    bail!("{label}: not a recognised soft-prompt file; {ACCEPTED}")
}

/// Same as [`load`], and checks the width against the model's embedding width: the error names
/// both widths and the file.
pub fn load_for_width(path: &Path, d_embed: usize) -> Result<SoftPrompt> {
    let (prompt, _format) = load(path)?;
    if prompt.dim != d_embed {
        bail!(
            "{}: the soft prompt is {} wide ({} tokens x {}) but this model's input-embedding width is {}; \
             it was trained for a different model: use a soft prompt made for this model, or train a new one",
            path.display(),
            prompt.dim,
            prompt.rows,
            prompt.dim,
            d_embed
        );
    }
    Ok(prompt)
}

/// [`load_for_width`] for `model`, in the model's input space: prompts that replace the
/// embedding module's output (KoboldAI's `.zip` and `.mtjsp`/`.npz`, mkultra's `.json`) are
/// multiplied by [`crate::model::ModelConfig::kobold_scale`] where the model has one (XGLM); a
/// PEFT adapter is taken as is.
pub fn load_for_model(path: &Path, model: &crate::model::ModelConfig) -> Result<SoftPrompt> {
    let (_, format) = load(path)?;
    let mut prompt = load_for_width(path, model.d_embed)?;
    if let (
        PromptFormat::KoboldZip
        | PromptFormat::MtjNpz
        | PromptFormat::KoboldTorch
        | PromptFormat::Mkultra,
        Some(scale),
    ) = (format, model.kobold_scale())
    {
        prompt.data.iter_mut().for_each(|v| *v *= scale);
    }
    Ok(prompt)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A JSON file: mkultra's soft prompt (`{"metadata": …, "tensor": base64(pickle.dumps(t))}`),
/// whose pickled tensor is read as data (never run); anything else is an error saying what
/// the file is.
fn load_json(file: &mut File, label: &str) -> Result<(SoftPrompt, PromptFormat)> {
    let _ = file.seek(SeekFrom::Start(0));
    let mut text = String::new();
    let parsed = file
        .take(MAX_ST_HEADER)
        .read_to_string(&mut text)
        .ok()
        .and_then(|_| serde_json::from_str::<serde_json::Value>(&text).ok());
    if let Some(obj) = parsed.as_ref().and_then(|v| v.as_object()) {
        if let Some(encoded) = obj.get("tensor").and_then(|t| t.as_str()) {
            return Ok((read_mkultra(encoded, label)?, PromptFormat::Mkultra));
        }
        if obj.contains_key("peft_type") {
            bail!(
                "{label}: this is a PEFT adapter config; pass the adapter folder (with adapter_model.safetensors) instead"
            );
        }
    }
    bail!("{label}: a JSON file that is not a soft prompt; {ACCEPTED}")
}

/// mkultra's `tensor`: base64 of `pickle.dumps(tensor)`, `[tokens, width]` or `[1, tokens,
/// width]`.
fn read_mkultra(encoded: &str, label: &str) -> Result<SoftPrompt> {
    use base64::Engine;
    let code = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| {
            anyhow!("{label}: the mkultra `tensor` is not valid base64 ({e}); the file is damaged")
        })?;
    let label = format!("{label} (mkultra `tensor`)");
    let (t, bytes) = crate::model::torch_bin::read_pickled_tensor(&label, &code)?;
    let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
    let (rows, dim) = match shape.as_slice() {
        [r, d] | [1, r, d] => (*r, *d),
        _ => bail!(
            "{label}: shape {}; a soft prompt must be [tokens, embedding width]",
            shape_text(&shape)
        ),
    };
    torch_prompt(&t, &bytes, (rows, dim), &label)
}

// ---------------------------------------------------------------------------------------------
// Zip archives: KoboldAI .zip and npz-style .mtjsp/.npz

fn load_zip(path: &Path, label: &str, ext: &str) -> Result<(SoftPrompt, PromptFormat)> {
    let file = File::open(path).map_err(|e| anyhow!("{label}: cannot open: {e}"))?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
        anyhow!(
            "{label}: not a readable zip archive ({e}); the file may be truncated or corrupt: \
             download or export it again"
        )
    })?;
    let names: Vec<String> = archive.file_names().map(str::to_owned).collect();

    if names.iter().any(|n| {
        n.split_once('/')
            .is_some_and(|(_, rest)| rest == "data.pkl")
    }) {
        drop(archive);
        return read_torch_prompt(path, label);
    }
    if let Some(pkl) = names.iter().find(|n| n.ends_with(".pkl")) {
        return Err(pickle_error(
            label,
            &format!("this zip holds a pickle ({pkl}) but is not a torch.save archive"),
        ));
    }
    let Some(member) = names.iter().find(|n| n.as_str() == "tensor.npy").cloned() else {
        let mut listed: Vec<&str> = names.iter().map(String::as_str).take(10).collect();
        if names.len() > 10 {
            listed.push("…");
        }
        bail!(
            "{label}: the archive has no tensor.npy member (members: {}); {ACCEPTED}",
            if listed.is_empty() {
                "none".to_owned()
            } else {
                listed.join(", ")
            }
        );
    };
    let format = if names.iter().any(|n| n == "meta.json") || ext == "zip" {
        PromptFormat::KoboldZip
    } else {
        PromptFormat::MtjNpz
    };
    let member_label = format!("{label} (member {member})");
    let (rows, dim, data) = read_zip_npy(&mut archive, &member, &member_label)?;
    let prompt = SoftPrompt::new(rows, dim, data).map_err(|e| anyhow!("{member_label}: {e}"))?;
    Ok((prompt, format))
}

/// Reads a 2-D npy member of a zip archive. LZMA members (method 14, what KoboldAI's reference
/// exporter writes) are decoded here: the zip crate's own LZMA reader mistakes the zip LZMA
/// header for an `.lzma` file header.
fn read_zip_npy<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    member: &str,
    label: &str,
) -> Result<(usize, usize, Vec<f32>)> {
    let cannot = |e: &dyn std::fmt::Display| {
        anyhow!(
            "{label}: cannot read ({e}); the archive may be corrupt or use an unsupported compression"
        )
    };
    let index = archive
        .index_for_name(member)
        .ok_or_else(|| cannot(&"member not found"))?;
    let entry = archive.by_index_raw(index).map_err(|e| cannot(&e))?;
    if entry.compression() != zip::CompressionMethod::LZMA {
        drop(entry);
        let mut entry = archive.by_index(index).map_err(|e| cannot(&e))?;
        let matrix = read_npy_matrix(&mut entry, label)?;
        // Read to the end so that the zip reader checks the member's CRC.
        std::io::copy(&mut (&mut entry).take(1 << 20), &mut std::io::sink()).map_err(|e| {
            anyhow!("{label}: the member fails its integrity check ({e}); the archive is corrupt")
        })?;
        return Ok(matrix);
    }
    let size = entry.size();
    if size > MAX_TENSOR_BYTES + MAX_NPY_HEADER as u64 + 12 {
        bail!("{label}: the member is {size} bytes, implausibly large for a soft prompt");
    }
    let mut raw = Vec::new();
    entry
        .take(MAX_TENSOR_BYTES * 2)
        .read_to_end(&mut raw)
        .map_err(|e| cannot(&e))?;
    let bytes = lzma_zip_decode(&raw, size).map_err(|e| {
        anyhow!("{label}: cannot decompress the LZMA data ({e}); the archive may be corrupt")
    })?;
    read_npy_matrix(&bytes[..], label)
}

/// Decodes a zip LZMA member: 2 bytes LZMA SDK version, 2 bytes properties length (5), the
/// properties (lc/lp/pb byte + dictionary size), then the raw LZMA stream, possibly ending in an
/// end marker. `size` is the uncompressed size from the zip directory.
fn lzma_zip_decode(raw: &[u8], size: u64) -> std::result::Result<Vec<u8>, String> {
    if raw.len() < 4 {
        return Err("missing the LZMA header".into());
    }
    let props_len = u16::from_le_bytes([raw[2], raw[3]]) as usize;
    if props_len != 5 || raw.len() < 4 + props_len {
        return Err(format!("unexpected LZMA properties length {props_len}"));
    }
    let options = lzma_rs::decompress::Options {
        unpacked_size: lzma_rs::decompress::UnpackedSize::UseProvided(Some(size)),
        memlimit: Some((MAX_TENSOR_BYTES as usize).saturating_mul(2)),
        allow_incomplete: false,
    };
    let mut input = &raw[4..];
    let mut out = Vec::new();
    lzma_rs::lzma_decompress_with_options(&mut input, &mut out, &options)
        .map_err(|e| e.to_string())?;
    if out.len() as u64 != size {
        return Err(format!("decompressed {} bytes, expected {size}", out.len()));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// npy

/// A small Python literal, enough for npy headers.
#[derive(Debug, Clone, PartialEq)]
enum PyValue {
    Str(String),
    Int(u64),
    Bool(bool),
    None,
    Seq(Vec<PyValue>),
    Dict(Vec<(PyValue, PyValue)>),
}

struct PyParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl PyParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, self.i))
        }
    }

    fn value(&mut self, depth: usize) -> Result<PyValue, String> {
        if depth > 16 {
            return Err("nesting too deep".into());
        }
        match self.peek() {
            Some(b'{') => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                        break;
                    }
                    let k = self.value(depth + 1)?;
                    self.expect(b':')?;
                    let v = self.value(depth + 1)?;
                    items.push((k, v));
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {}
                        _ => return Err(format!("expected ',' or '}}' at byte {}", self.i)),
                    }
                }
                Ok(PyValue::Dict(items))
            }
            Some(open @ (b'(' | b'[')) => {
                let close = if open == b'(' { b')' } else { b']' };
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(close) {
                        self.i += 1;
                        break;
                    }
                    items.push(self.value(depth + 1)?);
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(c) if c == close => {}
                        _ => {
                            return Err(format!(
                                "expected ',' or a closing bracket at byte {}",
                                self.i
                            ));
                        }
                    }
                }
                Ok(PyValue::Seq(items))
            }
            Some(q @ (b'\'' | b'"')) => {
                self.i += 1;
                let mut out = Vec::new();
                loop {
                    let Some(&c) = self.s.get(self.i) else {
                        return Err("unterminated string".into());
                    };
                    self.i += 1;
                    if c == q {
                        break;
                    }
                    if c == b'\\' {
                        let Some(&e) = self.s.get(self.i) else {
                            return Err("unterminated string".into());
                        };
                        self.i += 1;
                        out.push(match e {
                            b'n' => b'\n',
                            b't' => b'\t',
                            b'0' => 0,
                            other => other,
                        });
                    } else {
                        out.push(c);
                    }
                }
                Ok(PyValue::Str(String::from_utf8_lossy(&out).into_owned()))
            }
            Some(c) if c.is_ascii_digit() => {
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                let v: u64 = text
                    .parse()
                    .map_err(|_| format!("integer {text} is too large"))?;
                // Python 2 long suffix.
                if matches!(self.s.get(self.i), Some(b'L' | b'l')) {
                    self.i += 1;
                }
                Ok(PyValue::Int(v))
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i].is_ascii_alphanumeric() {
                    self.i += 1;
                }
                match &self.s[start..self.i] {
                    b"True" => Ok(PyValue::Bool(true)),
                    b"False" => Ok(PyValue::Bool(false)),
                    b"None" => Ok(PyValue::None),
                    other => Err(format!(
                        "unexpected word '{}'",
                        String::from_utf8_lossy(other)
                    )),
                }
            }
            Some(c) => Err(format!(
                "unexpected character '{}' at byte {}",
                c as char, self.i
            )),
            None => Err("unexpected end of header".into()),
        }
    }
}

/// Element type of an npy payload that we can turn into f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NpyElem {
    F16,
    F32,
    F64,
    /// `V2`: raw bfloat16 bits.
    Bf16,
}

impl NpyElem {
    fn size(self) -> usize {
        match self {
            NpyElem::F16 | NpyElem::Bf16 => 2,
            NpyElem::F32 => 4,
            NpyElem::F64 => 8,
        }
    }
}

/// Parsed npy header.
struct NpyHeader {
    elem: NpyElem,
    big_endian: bool,
    fortran: bool,
    shape: Vec<u64>,
}

fn parse_descr(descr: &str, label: &str) -> Result<(NpyElem, bool)> {
    let (endian, rest) = match descr.as_bytes().first() {
        Some(b'<') => (Some(false), &descr[1..]),
        Some(b'>') => (Some(true), &descr[1..]),
        Some(b'|') | Some(b'=') => (None, &descr[1..]),
        _ => (None, descr),
    };
    // `=` / `|` / none: native order; numpy files are nearly always little-endian.
    let big = endian.unwrap_or(false);
    let elem = match rest {
        "f2" | "e" => NpyElem::F16,
        "f4" | "f" => NpyElem::F32,
        "f8" | "d" => NpyElem::F64,
        "V2" => NpyElem::Bf16,
        _ if rest.starts_with('O') => {
            return Err(pickle_error(
                label,
                "the array has dtype object ('O'), whose elements are Python pickles",
            ));
        }
        _ => {
            let kind = match rest.as_bytes().first() {
                Some(b'i') => "a signed integer type",
                Some(b'u') => "an unsigned integer type",
                Some(b'b') | Some(b'?') => "a boolean type",
                Some(b'c') => "a complex type",
                Some(b'S') | Some(b'U') | Some(b'a') => "a string type",
                Some(b'V') => "a raw byte type that is not V2 (bfloat16)",
                Some(b'f') => "a float width other than 16/32/64 bits",
                _ => "an unknown type",
            };
            bail!(
                "{label}: unsupported dtype '{descr}' ({kind}); a soft prompt must be float32 ('<f4') \
                 or float16 ('<f2') (float64 and V2 bfloat16 are also read)"
            );
        }
    };
    Ok((elem, big))
}

fn read_npy_header(r: &mut impl Read, label: &str) -> Result<NpyHeader> {
    let bad =
        |what: String| anyhow!("{label}: not a valid .npy array ({what}); the file may be corrupt");
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre)
        .map_err(|e| bad(format!("cannot read the header: {e}")))?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err(bad("missing the \\x93NUMPY magic".into()));
    }
    let major = pre[6];
    let header_len = match major {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)
                .map_err(|e| bad(format!("truncated header: {e}")))?;
            u16::from_le_bytes(b) as usize
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b)
                .map_err(|e| bad(format!("truncated header: {e}")))?;
            u32::from_le_bytes(b) as usize
        }
        v => {
            return Err(bad(format!(
                "unsupported npy format version {v}.{}",
                pre[7]
            )));
        }
    };
    if header_len > MAX_NPY_HEADER {
        return Err(bad(format!("header of {header_len} bytes is too long")));
    }
    let mut text = vec![0u8; header_len];
    r.read_exact(&mut text)
        .map_err(|e| bad(format!("truncated header: {e}")))?;
    let mut parser = PyParser { s: &text, i: 0 };
    let value = parser
        .value(0)
        .map_err(|e| bad(format!("cannot parse the header dict: {e}")))?;
    let PyValue::Dict(items) = value else {
        return Err(bad("the header is not a dict".into()));
    };
    let get = |key: &str| {
        items
            .iter()
            .find(|(k, _)| matches!(k, PyValue::Str(s) if s == key))
            .map(|(_, v)| v)
    };
    let descr = match get("descr") {
        Some(PyValue::Str(s)) => s.clone(),
        Some(PyValue::Seq(fields)) => {
            // Structured dtype: refuse, but spot object fields first (those are pickles).
            if holds_object_dtype(&PyValue::Seq(fields.clone())) {
                return Err(pickle_error(
                    label,
                    "the array holds Python objects (pickles)",
                ));
            }
            bail!(
                "{label}: the array has a structured (record) dtype; a soft prompt must be a plain \
                 float32 or float16 matrix"
            );
        }
        _ => return Err(bad("the header has no 'descr' string".into())),
    };
    let fortran = match get("fortran_order") {
        Some(PyValue::Bool(b)) => *b,
        _ => return Err(bad("the header has no boolean 'fortran_order'".into())),
    };
    let shape = match get("shape") {
        Some(PyValue::Seq(dims)) => dims
            .iter()
            .map(|d| match d {
                PyValue::Int(n) => Ok(*n),
                _ => Err(bad("the 'shape' entries are not integers".into())),
            })
            .collect::<Result<Vec<u64>>>()?,
        Some(PyValue::Int(n)) => vec![*n],
        _ => return Err(bad("the header has no 'shape' tuple".into())),
    };
    let (elem, big_endian) = parse_descr(&descr, label)?;
    Ok(NpyHeader {
        elem,
        big_endian,
        fortran,
        shape,
    })
}

/// Whether a structured-dtype description mentions an object (pickled) field.
fn holds_object_dtype(v: &PyValue) -> bool {
    match v {
        PyValue::Str(s) => s.trim_start_matches(['<', '>', '|', '=']).starts_with('O'),
        // A list of fields, each `(name, dtype[, shape])`.
        PyValue::Seq(fields) => fields.iter().any(|f| match f {
            PyValue::Seq(parts) => parts.get(1).is_some_and(holds_object_dtype),
            _ => false,
        }),
        _ => false,
    }
}

fn shape_text(shape: &[u64]) -> String {
    let parts: Vec<String> = shape.iter().map(u64::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// Reads a 2-D npy array into row-major f32. Does not check finiteness.
fn read_npy_matrix(mut r: impl Read, label: &str) -> Result<(usize, usize, Vec<f32>)> {
    let h = read_npy_header(&mut r, label)?;
    if h.shape.len() != 2 {
        bail!(
            "{label}: the array has shape {} ({}-D); a soft prompt must be 2-D [tokens, embedding width]",
            shape_text(&h.shape),
            h.shape.len()
        );
    }
    let (rows, dim) = (h.shape[0], h.shape[1]);
    if rows == 0 || dim == 0 {
        bail!(
            "{label}: the array has shape {}, which holds no soft-prompt values",
            shape_text(&h.shape)
        );
    }
    let too_large = || {
        anyhow!(
            "{label}: the array shape {} is implausibly large for a soft prompt; the file may be corrupt",
            shape_text(&h.shape)
        )
    };
    let count = rows.checked_mul(dim).ok_or_else(too_large)?;
    let nbytes = count
        .checked_mul(h.elem.size() as u64)
        .filter(|&n| n <= MAX_TENSOR_BYTES)
        .ok_or_else(too_large)?;
    let (rows, dim, count) = (rows as usize, dim as usize, count as usize);
    let mut raw = Vec::new();
    (&mut r)
        .take(nbytes)
        .read_to_end(&mut raw)
        .map_err(|e| anyhow!("{label}: cannot read the array data: {e}"))?;
    if (raw.len() as u64) < nbytes {
        bail!(
            "{label}: the array data is truncated: shape {} needs {nbytes} bytes but only {} are present; \
             export or download the file again",
            shape_text(&h.shape),
            raw.len()
        );
    }
    let mut data = decode_floats(&raw, h.elem, h.big_endian);
    debug_assert_eq!(data.len(), count);
    if h.fortran {
        // Column-major on disk: element (r, c) is at c * rows + r.
        let mut t = vec![0f32; count];
        for c in 0..dim {
            for rr in 0..rows {
                t[rr * dim + c] = data[c * rows + rr];
            }
        }
        data = t;
    }
    Ok((rows, dim, data))
}

fn decode_floats(raw: &[u8], elem: NpyElem, big: bool) -> Vec<f32> {
    let sz = elem.size();
    raw.chunks_exact(sz)
        .map(|b| match elem {
            NpyElem::F16 | NpyElem::Bf16 => {
                let bits = if big {
                    u16::from_be_bytes([b[0], b[1]])
                } else {
                    u16::from_le_bytes([b[0], b[1]])
                };
                if elem == NpyElem::F16 {
                    half::f16::from_bits(bits).to_f32()
                } else {
                    half::bf16::from_bits(bits).to_f32()
                }
            }
            NpyElem::F32 => {
                let a = [b[0], b[1], b[2], b[3]];
                if big {
                    f32::from_be_bytes(a)
                } else {
                    f32::from_le_bytes(a)
                }
            }
            NpyElem::F64 => {
                let a = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
                let v = if big {
                    f64::from_be_bytes(a)
                } else {
                    f64::from_le_bytes(a)
                };
                v as f32
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// PEFT adapters (safetensors)

fn load_peft_dir(dir: &Path) -> Result<SoftPrompt> {
    let label = dir.display().to_string();
    let weights = dir.join("adapter_model.safetensors");
    // Older PEFT releases saved the adapter with torch.save.
    let torch_weights = dir.join("adapter_model.bin");
    let config_path = dir.join("adapter_config.json");
    if !weights.is_file() && !torch_weights.is_file() {
        bail!(
            "{label}: a folder, but it has no adapter_model.safetensors or adapter_model.bin, so \
             it is not a PEFT adapter; {ACCEPTED}"
        );
    }
    if config_path.is_file() {
        let cl = config_path.display().to_string();
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| anyhow!("{cl}: cannot read: {e}"))?;
        let cfg: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow!("{cl}: not valid JSON ({e}); fix or remove the file"))?;
        if let Some(t) = cfg.get("peft_type").and_then(|v| v.as_str())
            && t != "PROMPT_TUNING"
            && t != "P_TUNING"
        {
            bail!(
                "{cl}: this PEFT adapter is of type {t}, not a soft prompt; only PROMPT_TUNING (and \
                 P_TUNING) adapters hold a soft prompt that softtune can use"
            );
        }
        if let Some(n) = cfg
            .get("num_transformer_submodules")
            .and_then(|v| v.as_u64())
            && n > 1
        {
            bail!(
                "{cl}: num_transformer_submodules is {n}: this adapter is for an encoder-decoder model; \
                 softtune handles causal LMs (num_transformer_submodules 1)"
            );
        }
    }
    if weights.is_file() {
        read_safetensors_prompt(&weights, &weights.display().to_string())
    } else {
        let label = torch_weights.display().to_string();
        match read_torch_prompt(&torch_weights, &label)? {
            (prompt, PromptFormat::PeftAdapter) => Ok(prompt),
            _ => bail!(
                "{label}: holds no prompt_embeddings tensor, which a PEFT prompt-tuning adapter \
                 stores its soft prompt as"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// torch.save archives, read as data (never run)

/// The soft prompt of a `torch.save` archive: PEFT's `prompt_embeddings`, else KoboldAI's
/// torch trainer's `tensor`; other entries (optimizer state, step counters) are not read.
fn read_torch_prompt(path: &Path, label: &str) -> Result<(SoftPrompt, PromptFormat)> {
    use crate::model::torch_bin;
    let file = File::open(path).map_err(|e| anyhow!("{label}: cannot open: {e}"))?;
    // SAFETY: opened read-only; every range below is checked against the mapped length by
    // torch_bin::read.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| anyhow!("{label}: cannot map into memory: {e}"))?;
    if !torch_bin::is_zip(&map) && !torch_bin::is_legacy(&map) && map.first() == Some(&0x80) {
        return Err(pickle_error(
            label,
            "this is a bare Python pickle (pickle.dump, not torch.save), which would have to be \
             run to be read",
        ));
    }
    let tensors = torch_bin::read(path, &map)?;
    let found = [
        ("prompt_embeddings", PromptFormat::PeftAdapter),
        ("tensor", PromptFormat::KoboldTorch),
    ]
    .into_iter()
    .find_map(|(key, format)| {
        tensors
            .iter()
            .find(|(n, _)| n == key)
            .map(|(n, t)| (n.as_str(), t, format))
    });
    let Some((name, t, format)) = found else {
        let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).take(8).collect();
        bail!(
            "{label}: a torch.save file without a prompt_embeddings (PEFT) or tensor (KoboldAI) \
             tensor (it holds {} tensor(s){}{}); {ACCEPTED}",
            tensors.len(),
            if names.is_empty() { "" } else { ": " },
            names.join(", ")
        );
    };
    let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
    if shape.len() != 2 {
        bail!(
            "{label}: `{name}` has shape {} ({}-D); a soft prompt must be 2-D [tokens, embedding \
             width]",
            shape_text(&shape),
            shape.len()
        );
    }
    let prompt = torch_prompt(t, &map, (shape[0], shape[1]), &format!("{label}: `{name}`"))?;
    Ok((prompt, format))
}

/// The soft prompt `[rows, dim]` that the torch tensor `t` holds in `bytes` (its file or its
/// storage); `what` names it in errors.
fn torch_prompt(
    t: &crate::model::torch_bin::TorchTensor,
    bytes: &[u8],
    (rows, dim): (u64, u64),
    what: &str,
) -> Result<SoftPrompt> {
    use safetensors::Dtype;
    let elem = match t.dtype {
        Dtype::F32 => NpyElem::F32,
        Dtype::F16 => NpyElem::F16,
        Dtype::BF16 => NpyElem::Bf16,
        Dtype::F64 => NpyElem::F64,
        other => {
            bail!("{what} has dtype {other:?}; a soft prompt must be float32, float16 or bfloat16")
        }
    };
    if rows * dim * elem.size() as u64 > MAX_TENSOR_BYTES {
        bail!(
            "{what} has an implausible shape {} for a soft prompt",
            shape_text(&[rows, dim])
        );
    }
    let data = if t.is_contiguous() {
        let (start, end) = t.byte_range();
        decode_floats(&bytes[start..end], elem, false)
    } else {
        decode_floats(&t.gather(bytes), elem, false)
    };
    SoftPrompt::new(rows as usize, dim as usize, data).map_err(|e| anyhow!("{what}: {e}"))
}

fn looks_like_safetensors(head: &[u8], file_len: u64) -> bool {
    if head.len() < 9 {
        return false;
    }
    let n = u64::from_le_bytes(head[..8].try_into().unwrap_or([0; 8]));
    n >= 2 && n <= file_len.saturating_sub(8) && head[8] == b'{'
}

fn read_safetensors_prompt(path: &Path, label: &str) -> Result<SoftPrompt> {
    let bad = |what: String| {
        anyhow!(
            "{label}: not a valid safetensors file ({what}); the file may be truncated or corrupt"
        )
    };
    let mut f = File::open(path).map_err(|e| anyhow!("{label}: cannot open: {e}"))?;
    let file_len = f
        .metadata()
        .map_err(|e| anyhow!("{label}: cannot read: {e}"))?
        .len();
    let mut len8 = [0u8; 8];
    f.read_exact(&mut len8)
        .map_err(|e| bad(format!("cannot read the header length: {e}")))?;
    let n = u64::from_le_bytes(len8);
    if n > MAX_ST_HEADER || n > file_len.saturating_sub(8) {
        return Err(bad(format!(
            "header length {n} does not fit a {file_len}-byte file"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|e| bad(format!("truncated header: {e}")))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("the header is not JSON: {e}")))?;
    let Some(obj) = header.as_object() else {
        return Err(bad("the header is not a JSON object".into()));
    };
    let Some(info) = obj.get("prompt_embeddings") else {
        let names: Vec<&str> = obj
            .keys()
            .filter(|k| k.as_str() != "__metadata__")
            .map(String::as_str)
            .collect();
        let shown: Vec<&str> = names.iter().copied().take(8).collect();
        bail!(
            "{label}: no tensor named prompt_embeddings (the file holds {} tensor(s){}{}); a PEFT \
             prompt-tuning adapter stores its soft prompt as prompt_embeddings",
            names.len(),
            if shown.is_empty() { "" } else { ": " },
            shown.join(", ")
        );
    };
    let dtype = info.get("dtype").and_then(|v| v.as_str()).unwrap_or("");
    let elem = match dtype {
        "F32" => NpyElem::F32,
        "F16" => NpyElem::F16,
        "BF16" => NpyElem::Bf16,
        "F64" => NpyElem::F64,
        "" => return Err(bad("prompt_embeddings has no dtype".into())),
        other => bail!(
            "{label}: prompt_embeddings has dtype {other}; a soft prompt must be F32, F16 or BF16"
        ),
    };
    let shape: Vec<u64> = info
        .get("shape")
        .and_then(|v| v.as_array())
        .and_then(|a| a.iter().map(|d| d.as_u64()).collect::<Option<Vec<u64>>>())
        .ok_or_else(|| bad("prompt_embeddings has no valid shape".into()))?;
    if shape.len() != 2 {
        bail!(
            "{label}: prompt_embeddings has shape {} ({}-D); a soft prompt must be 2-D [tokens, embedding width]",
            shape_text(&shape),
            shape.len()
        );
    }
    let offsets: Vec<u64> = info
        .get("data_offsets")
        .and_then(|v| v.as_array())
        .and_then(|a| a.iter().map(|d| d.as_u64()).collect::<Option<Vec<u64>>>())
        .filter(|o| o.len() == 2 && o[0] <= o[1])
        .ok_or_else(|| bad("prompt_embeddings has no valid data_offsets".into()))?;
    let (rows, dim) = (shape[0], shape[1]);
    if rows == 0 || dim == 0 {
        bail!(
            "{label}: prompt_embeddings has shape {}, which holds no values",
            shape_text(&shape)
        );
    }
    let nbytes = rows
        .checked_mul(dim)
        .and_then(|c| c.checked_mul(elem.size() as u64))
        .filter(|&b| b <= MAX_TENSOR_BYTES)
        .ok_or_else(|| bad(format!("implausible shape {}", shape_text(&shape))))?;
    if offsets[1] - offsets[0] != nbytes {
        return Err(bad(format!(
            "prompt_embeddings spans {} bytes but shape {} of {dtype} needs {nbytes}",
            offsets[1] - offsets[0],
            shape_text(&shape)
        )));
    }
    let start = 8 + n + offsets[0];
    if start.checked_add(nbytes).is_none_or(|end| end > file_len) {
        return Err(bad(format!(
            "prompt_embeddings data runs past the end of the {file_len}-byte file"
        )));
    }
    f.seek(SeekFrom::Start(start))
        .map_err(|e| anyhow!("{label}: cannot read: {e}"))?;
    let mut raw = vec![0u8; nbytes as usize];
    f.read_exact(&mut raw)
        .map_err(|e| bad(format!("cannot read prompt_embeddings: {e}")))?;
    let data = decode_floats(&raw, elem, false);
    SoftPrompt::new(rows as usize, dim as usize, data).map_err(|e| anyhow!("{label}: {e}"))
}
