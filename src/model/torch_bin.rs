//! PyTorch checkpoints (`pytorch_model.bin`: the zip archive `torch.save` writes since
//! PyTorch 1.6, or the legacy format before it) read **without running them**.
//!
//! Loading such a file in Python runs its pickle program, which may import and call anything.
//! softtune instead interprets the pickle opcodes as data: the program builds tuples, lists,
//! dicts, strings and numbers, and may *name* Python objects (`GLOBAL`), but nothing named is
//! ever imported or called. Exactly four names mean something here: PyTorch's tensor
//! rebuilders (`torch._utils._rebuild_tensor_v2`, `_rebuild_tensor`, `_rebuild_parameter`,
//! `torch._tensor._rebuild_from_type_v2`), `collections.OrderedDict`, and the typed storage
//! classes (`torch.FloatStorage`, …) that say a storage's element type; and, only in a tensor
//! pickled on its own ([`read_pickled_tensor`], mkultra's soft prompts),
//! `torch.storage._load_from_bytes`, whose bytes are a legacy `torch.save` of the storage, read
//! the same way. Anything else becomes an opaque value, harmless unless a tensor needs it, in
//! which case the file is refused.
//!
//! A tensor's bytes stay in the file: in the zip archive its storage `archive/data/<key>` is a
//! stored (uncompressed) entry, in the legacy format the storages follow the pickles one after
//! another, so [`TorchTensor::byte_range`] gives the range of the memory-mapped file it
//! occupies.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use safetensors::Dtype;

/// A tensor of the state dict: a view (offset, shape, strides in elements) of a storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
    /// Offset of the first element in the storage, in elements.
    pub offset: usize,
    /// Where the storage's bytes lie in the file: start and length.
    pub storage: (usize, usize),
}

impl TorchTensor {
    /// Whether the elements lie one after another in row-major order.
    pub fn is_contiguous(&self) -> bool {
        let mut expect = 1;
        for (&n, &s) in self.shape.iter().zip(&self.strides).rev() {
            if n != 1 && s != expect {
                return false;
            }
            expect *= n;
        }
        true
    }

    /// The byte range of the file that a contiguous tensor occupies.
    pub fn byte_range(&self) -> (usize, usize) {
        let size = dtype_size(self.dtype);
        let start = self.storage.0 + self.offset * size;
        (start, start + self.shape.iter().product::<usize>() * size)
    }

    /// The elements in row-major order, gathered from a strided view of `file`.
    pub fn gather(&self, file: &[u8]) -> Vec<u8> {
        let size = dtype_size(self.dtype);
        let n: usize = self.shape.iter().product();
        let mut out = Vec::with_capacity(n * size);
        let mut index = vec![0usize; self.shape.len()];
        for _ in 0..n {
            let element = self.offset
                + index
                    .iter()
                    .zip(&self.strides)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            let at = self.storage.0 + element * size;
            out.extend_from_slice(&file[at..at + size]);
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < self.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        out
    }
}

/// Bytes per element.
pub fn dtype_size(d: Dtype) -> usize {
    match d {
        Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        Dtype::F32 | Dtype::I32 | Dtype::U32 => 4,
        Dtype::F16 | Dtype::BF16 | Dtype::I16 | Dtype::U16 => 2,
        _ => 1,
    }
}

/// Whether `bytes` start like a zip archive (how every `torch.save` file since 1.6 starts).
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// The pickled magic number that starts PyTorch's legacy (pre-1.6) format.
const LEGACY_MAGIC: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.',
];

/// Whether `bytes` start like PyTorch's legacy (pre-1.6) format.
pub fn is_legacy(bytes: &[u8]) -> bool {
    bytes.starts_with(&LEGACY_MAGIC)
}

/// Reads the state dict of the PyTorch checkpoint `file` (its whole mapped content): the zip
/// archive `torch.save` writes since PyTorch 1.6, or the legacy format before it. Tensors are
/// in the order the file lists them. Errors name `path` and say what to do.
pub fn read(path: &Path, file: &[u8]) -> Result<Vec<(String, TorchTensor)>> {
    if is_zip(file) {
        read_zip(path, file)
    } else if is_legacy(file) {
        read_legacy(path, file)
    } else {
        bail!(
            "{}: not a PyTorch checkpoint (neither a torch.save zip archive nor PyTorch's legacy \
             format); download it again",
            path.display()
        )
    }
}

/// The error for a damaged checkpoint.
fn corrupt(path: &Path, why: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "{}: truncated or corrupt PyTorch checkpoint ({why}); download it again",
        path.display()
    )
}

/// PyTorch's legacy format, five pickles and the storages' bytes one after another: the magic
/// number, the format version (1001), the saving machine's facts (`little_endian`, …), the
/// object whose persistent ids name storages by key, and the sorted list of those keys; then
/// each storage in that order as its element count (int64) and its elements.
fn read_legacy(path: &Path, file: &[u8]) -> Result<Vec<(String, TorchTensor)>> {
    let (root, storages) = legacy_parts(path, file)?;
    tensors_of(path, root, &storages)
}

/// Where each storage lies in a file: start and length in bytes, by key.
type Storages = HashMap<String, (usize, usize)>;

/// The object a legacy-format `file` holds, and its storages.
fn legacy_parts(path: &Path, file: &[u8]) -> Result<(Value, Storages)> {
    let shown = path.display();
    if !is_legacy(file) {
        return Err(corrupt(path, "no legacy torch.save magic number"));
    }
    let mut at = LEGACY_MAGIC.len();
    let (version, next) = Machine::default()
        .run_from(file, at)
        .map_err(|e| corrupt(path, format!("format version: {e}")))?;
    if version != Value::Int(1001) {
        bail!(
            "{shown}: PyTorch legacy format version {}, which softtune does not read (it reads \
             1001); convert the file once in Python with save_pretrained(\"<out>\", \
             safe_serialization=True)",
            match &version {
                Value::Int(v) => v.to_string(),
                other => other.kind(),
            }
        );
    }
    at = next;
    let (sys_info, next) = Machine::default()
        .run_from(file, at)
        .map_err(|e| corrupt(path, format!("system info: {e}")))?;
    if let Value::Dict(items) = &sys_info
        && items
            .iter()
            .any(|(k, v)| *k == Value::Str("little_endian".into()) && *v == Value::Bool(false))
    {
        bail!("{shown}: saved on a big-endian machine; softtune reads little-endian checkpoints");
    }
    at = next;
    let mut machine = Machine::default();
    let (root, next) = machine
        .run_from(file, at)
        .map_err(|e| corrupt(path, format!("the object: {e}")))?;
    at = next;
    let (keys, next) = Machine::default()
        .run_from(file, at)
        .map_err(|e| corrupt(path, format!("the storage list: {e}")))?;
    at = next;
    let Value::List(keys) = keys else {
        return Err(corrupt(
            path,
            format!("the storage list is {}", keys.kind()),
        ));
    };
    let mut storages = HashMap::new();
    for key in keys {
        let Value::Str(key) = key else {
            return Err(corrupt(path, format!("a storage key is {}", key.kind())));
        };
        let dtype = *machine.storage_types.get(&key).ok_or_else(|| {
            corrupt(
                path,
                format!("storage {key} is listed but nothing refers to it"),
            )
        })?;
        let count = file
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            .ok_or_else(|| corrupt(path, format!("storage {key} is cut off")))?;
        let start = at + 8;
        let end = usize::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(dtype_size(dtype)))
            .and_then(|len| start.checked_add(len))
            .filter(|&end| end <= file.len())
            .ok_or_else(|| {
                corrupt(
                    path,
                    format!("storage {key} of {count} elements runs past the end of the file"),
                )
            })?;
        storages.insert(key, (start, end - start));
        at = end;
    }
    Ok((root, storages))
}

/// A tensor pickled on its own, as `pickle.dumps(tensor)` writes it (mkultra's soft prompts):
/// its storage travels inside the pickle as the legacy `torch.save` bytes of that storage
/// (`torch.storage._load_from_bytes(b"…")`). Returns the tensor and the storage's bytes, which
/// the tensor's byte range and [`TorchTensor::gather`] index. Errors name `label`.
pub fn read_pickled_tensor(label: &str, code: &[u8]) -> Result<(TorchTensor, Vec<u8>)> {
    let mut machine = Machine {
        read_inline: true,
        ..Machine::default()
    };
    let (root, _) = machine
        .run_from(code, 0)
        .map_err(|e| anyhow!("{label}: not a pickled tensor ({e})"))?;
    let Value::Tensor(view) = root else {
        bail!("{label}: the pickle holds {}, not a tensor", root.kind());
    };
    let Some(bytes) = machine.inline.remove(&view.key) else {
        bail!("{label}: the tensor's storage is not inside the pickle");
    };
    let storages = HashMap::from([(view.key.clone(), (0, bytes.len()))]);
    let tensor = checked("tensor", view, &storages).map_err(|e| anyhow!("{label}: {e}"))?;
    Ok((tensor, bytes))
}

/// The zip archive `torch.save` writes since PyTorch 1.6.
fn read_zip(path: &Path, file: &[u8]) -> Result<Vec<(String, TorchTensor)>> {
    let shown = path.display();
    let corrupt = |why: String| corrupt(path, why);
    let mut zip =
        zip::ZipArchive::new(Cursor::new(file)).map_err(|e| corrupt(format!("zip: {e}")))?;
    // Entries are `<folder>/data.pkl`, `<folder>/data/<key>`, `<folder>/byteorder`, …; the
    // folder's name is whatever the file was called when saved.
    let mut pkl = None;
    let mut storages = HashMap::new();
    let mut big_endian = false;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index_raw(i)
            .map_err(|e| corrupt(format!("zip entry {i}: {e}")))?;
        let name = entry.name().to_string();
        let Some((_, local)) = name.split_once('/') else {
            continue;
        };
        if local == "data.pkl" {
            pkl = Some(name.clone());
        } else if local == "byteorder" {
            let mut text = String::new();
            entry
                .read_to_string(&mut text)
                .map_err(|e| corrupt(format!("{name}: {e}")))?;
            big_endian = text.trim() == "big";
        } else if let Some(key) = local.strip_prefix("data/") {
            if entry.compression() != zip::CompressionMethod::Stored {
                bail!(
                    "{shown}: storage {name} is compressed; softtune reads the uncompressed \
                     archives torch.save writes. Convert it once in Python: \
                     save_pretrained(\"<out>\", safe_serialization=True)"
                );
            }
            let start = entry.data_start() as usize;
            let len = entry.size() as usize;
            if start.checked_add(len).is_none_or(|end| end > file.len()) {
                return Err(corrupt(format!("{name} runs past the end of the file")));
            }
            storages.insert(key.to_string(), (start, len));
        }
    }
    if big_endian {
        bail!("{shown}: saved on a big-endian machine; softtune reads little-endian checkpoints");
    }
    let pkl = pkl.ok_or_else(|| corrupt("no data.pkl in the archive".into()))?;
    let mut program = Vec::new();
    zip.by_name(&pkl)
        .and_then(|mut e| Ok(e.read_to_end(&mut program)?))
        .map_err(|e| corrupt(format!("{pkl}: {e}")))?;
    let root = Machine::default()
        .run(&program)
        .map_err(|e| corrupt(format!("{pkl}: {e}")))?;
    tensors_of(path, root, &storages)
}

/// The tensors of the state dict `root`, each checked against its storage (start and length
/// in the file, by key).
fn tensors_of(path: &Path, root: Value, storages: &Storages) -> Result<Vec<(String, TorchTensor)>> {
    let shown = path.display();
    let corrupt = |why: String| corrupt(path, why);
    let Value::Dict(items) = root else {
        bail!(
            "{shown}: holds {}, not a state dict (a dict of tensors by name); softtune reads the \
             pytorch_model.bin files that transformers' save_pretrained writes",
            root.kind()
        );
    };
    let mut tensors = Vec::with_capacity(items.len());
    for (key, value) in items {
        let Value::Str(name) = key else {
            bail!(
                "{shown}: a state-dict key is {}, not a tensor name",
                key.kind()
            );
        };
        let view = match value {
            Value::Tensor(t) => t,
            // Buffers or bookkeeping that are not tensors (`_metadata`, counters) are skipped;
            // the model asks only for tensors.
            _ => continue,
        };
        let tensor = checked(&name, view, storages).map_err(corrupt)?;
        tensors.push((name, tensor));
    }
    Ok(tensors)
}

/// `view` as a tensor of its storage (start and length in bytes, by key), after checking that
/// it lies inside the storage; the error says why not.
fn checked(
    name: &str,
    view: View,
    storages: &Storages,
) -> std::result::Result<TorchTensor, String> {
    let Some(&(start, len)) = storages.get(&view.key) else {
        return Err(format!(
            "tensor `{name}` uses storage {} which the file lacks",
            view.key
        ));
    };
    // The last element's byte end, in checked arithmetic so that a damaged file's sizes
    // cannot overflow. An empty tensor reads nothing.
    let empty = view.shape.contains(&0);
    let mut last = Some(view.offset);
    for (&n, &s) in view.shape.iter().zip(&view.strides) {
        last = last.and_then(|l| n.saturating_sub(1).checked_mul(s)?.checked_add(l));
    }
    let end = last.and_then(|l| l.checked_add(1)?.checked_mul(dtype_size(view.dtype)));
    if !empty && end.is_none_or(|e| e > len) {
        return Err(format!(
            "tensor `{name}` (offset {}, shape {:?}, strides {:?}) runs past its storage of \
             {len} bytes",
            view.offset, view.shape, view.strides
        ));
    }
    // A weight's elements are distinct storage elements; more elements than the storage
    // holds means overlapping (stride-0) views, which no model's state dict has, and whose
    // gathered copy could be any size.
    let bytes = view
        .shape
        .iter()
        .try_fold(dtype_size(view.dtype), |acc, &n| acc.checked_mul(n));
    if bytes.is_none_or(|b| b > len) {
        return Err(format!(
            "tensor `{name}` (shape {:?}, strides {:?}) has more elements than its storage \
             of {len} bytes holds",
            view.shape, view.strides
        ));
    }
    Ok(TorchTensor {
        dtype: view.dtype,
        shape: view.shape,
        strides: view.strides,
        offset: view.offset,
        storage: (start, len),
    })
}

/// A tensor as the pickle describes it, before its storage is found in the archive.
#[derive(Debug, Clone, PartialEq)]
struct View {
    key: String,
    dtype: Dtype,
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

/// The values a state-dict pickle builds.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// A name the pickle refers to (`module.name`); never imported.
    Global(String),
    /// A storage reference: its key in the archive, its element type, and where it starts in
    /// that storage in elements (non-zero only for the legacy format's storage views).
    Storage {
        key: String,
        dtype: Dtype,
        offset: usize,
    },
    Tensor(View),
    /// Anything built from a name with no meaning here.
    Opaque(String),
}

impl Value {
    fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) => "an int".into(),
            Value::Float(_) => "a float".into(),
            Value::Str(_) => "a string".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Tuple(_) => "a tuple".into(),
            Value::List(_) => "a list".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Global(g) => format!("the name {g}"),
            Value::Storage { .. } => "a storage".into(),
            Value::Tensor(_) => "a tensor".into(),
            Value::Opaque(g) => format!("a {g} object"),
        }
    }

    fn usize(&self, what: &str) -> Result<usize> {
        match self {
            Value::Int(i) if *i >= 0 => Ok(*i as usize),
            other => bail!("{what} is {}, expected a non-negative int", other.kind()),
        }
    }

    fn sizes(&self, what: &str) -> Result<Vec<usize>> {
        match self {
            Value::Tuple(items) | Value::List(items) => {
                items.iter().map(|v| v.usize(what)).collect()
            }
            other => bail!("{what} is {}, expected a tuple of ints", other.kind()),
        }
    }
}

/// One item of the pickle machine's stack: a value or a MARK.
enum Item {
    Mark,
    Value(Value),
}

#[derive(Default)]
struct Machine {
    stack: Vec<Item>,
    memo: HashMap<u32, Value>,
    /// Every storage the program referred to, with its element type (the legacy format's
    /// data section is walked with these sizes).
    storage_types: HashMap<String, Dtype>,
    /// Storages that travel inside the pickle (`torch.storage._load_from_bytes`): their bytes
    /// by the key given to them here.
    inline: HashMap<String, Vec<u8>>,
    /// Whether inline storages are read: only for a pickled tensor's own program, so that
    /// pickles nested in pickles cannot recurse.
    read_inline: bool,
}

/// The storage classes' element types (`torch.HalfStorage` → f16).
fn storage_dtype(global: &str) -> Option<Dtype> {
    Some(match global.strip_prefix("torch.")? {
        "FloatStorage" => Dtype::F32,
        "HalfStorage" => Dtype::F16,
        "BFloat16Storage" => Dtype::BF16,
        "DoubleStorage" => Dtype::F64,
        "LongStorage" => Dtype::I64,
        "IntStorage" => Dtype::I32,
        "ShortStorage" => Dtype::I16,
        "CharStorage" => Dtype::I8,
        "ByteStorage" => Dtype::U8,
        "BoolStorage" => Dtype::BOOL,
        _ => return None,
    })
}

/// What calling `global` with `args` means here, without calling anything.
fn reduce(global: &str, args: Vec<Value>) -> Result<Value> {
    let arg = |i: usize| {
        args.get(i)
            .ok_or_else(|| anyhow!("{global} called with {} arguments", args.len()))
    };
    match global {
        "collections.OrderedDict" => Ok(match args.into_iter().next() {
            None => Value::Dict(Vec::new()),
            Some(Value::List(pairs)) => Value::Dict(
                pairs
                    .into_iter()
                    .map(|p| match p {
                        Value::Tuple(kv) | Value::List(kv) if kv.len() == 2 => {
                            let mut kv = kv.into_iter();
                            Ok((
                                kv.next().unwrap_or(Value::None),
                                kv.next().unwrap_or(Value::None),
                            ))
                        }
                        other => bail!("OrderedDict item is {}", other.kind()),
                    })
                    .collect::<Result<_>>()?,
            ),
            Some(other) => bail!("OrderedDict built from {}", other.kind()),
        }),
        // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
            let Value::Storage {
                key,
                dtype,
                offset: base,
            } = arg(0)?
            else {
                bail!("a tensor's storage is {}", arg(0)?.kind());
            };
            let shape = arg(2)?.sizes("a tensor's size")?;
            let strides = arg(3)?.sizes("a tensor's stride")?;
            if shape.len() != strides.len() {
                bail!(
                    "a tensor has {} sizes but {} strides",
                    shape.len(),
                    strides.len()
                );
            }
            Ok(Value::Tensor(View {
                key: key.clone(),
                dtype: *dtype,
                offset: arg(1)?
                    .usize("a tensor's storage offset")?
                    .checked_add(*base)
                    .ok_or_else(|| anyhow!("a tensor's storage offset overflows"))?,
                shape,
                strides,
            }))
        }
        // (data, requires_grad, backward_hooks[, state]): an nn.Parameter is its data here.
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
            match arg(0)? {
                t @ Value::Tensor(_) => Ok(t.clone()),
                other => bail!("a parameter's data is {}", other.kind()),
            }
        }
        // (func, type, args, state): a tensor subclass; its data is `func(*args)`.
        "torch._tensor._rebuild_from_type_v2" => match (arg(0)?, arg(2)?) {
            (Value::Global(func), Value::Tuple(inner)) => reduce(func, inner.clone()),
            (f, a) => bail!("tensor rebuilt by {} from {}", f.kind(), a.kind()),
        },
        other => Ok(Value::Opaque(other.to_string())),
    }
}

impl Machine {
    fn push(&mut self, v: Value) {
        self.stack.push(Item::Value(v));
    }

    fn pop(&mut self) -> Result<Value> {
        match self.stack.pop() {
            Some(Item::Value(v)) => Ok(v),
            Some(Item::Mark) => bail!("unexpected MARK on the stack"),
            None => bail!("stack underflow"),
        }
    }

    fn top(&mut self) -> Result<&mut Value> {
        match self.stack.last_mut() {
            Some(Item::Value(v)) => Ok(v),
            Some(Item::Mark) => bail!("unexpected MARK on the stack"),
            None => bail!("stack underflow"),
        }
    }

    /// The values above the topmost MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let at = self
            .stack
            .iter()
            .rposition(|i| matches!(i, Item::Mark))
            .ok_or_else(|| anyhow!("no MARK on the stack"))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items
            .into_iter()
            .map(|i| match i {
                Item::Value(v) => v,
                Item::Mark => unreachable!("the topmost MARK is at `at`"),
            })
            .collect())
    }

    fn memo_get(&self, i: u32) -> Result<Value> {
        self.memo
            .get(&i)
            .cloned()
            .ok_or_else(|| anyhow!("memo entry {i} read before it was written"))
    }

    fn memo_put(&mut self, i: u32) -> Result<()> {
        let v = match self.stack.last() {
            Some(Item::Value(v)) => v.clone(),
            _ => bail!("memo write with no value on the stack"),
        };
        self.memo.insert(i, v);
        Ok(())
    }

    fn set_items(&mut self, pairs: Vec<Value>) -> Result<()> {
        if !pairs.len().is_multiple_of(2) {
            bail!("SETITEMS with an odd number of values");
        }
        let Value::Dict(items) = self.top()? else {
            // Items set on an opaque object are dropped with it.
            return Ok(());
        };
        let mut it = pairs.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            match items.iter_mut().find(|(key, _)| *key == k) {
                Some(slot) => slot.1 = v,
                None => items.push((k, v)),
            }
        }
        Ok(())
    }

    /// `torch.storage._load_from_bytes(b)`: `b` is the legacy `torch.save` of one storage, read
    /// (as data) into a storage kept in [`Machine::inline`].
    fn load_from_bytes(&mut self, args: Vec<Value>) -> Result<Value> {
        let Some(Value::Bytes(b)) = args.into_iter().next() else {
            bail!("_load_from_bytes without bytes");
        };
        let (root, storages) = legacy_parts(Path::new("the pickled storage"), &b)?;
        let Value::Storage { key, dtype, offset } = root else {
            bail!("the pickled storage holds {}", root.kind());
        };
        let &(start, len) = storages
            .get(&key)
            .ok_or_else(|| anyhow!("the pickled storage lacks its bytes"))?;
        let inline = format!("inline:{}", self.inline.len());
        self.inline
            .insert(inline.clone(), b[start..start + len].to_vec());
        self.storage_types.insert(inline.clone(), dtype);
        Ok(Value::Storage {
            key: inline,
            dtype,
            offset,
        })
    }

    /// Runs the pickle program and returns the value STOP leaves.
    fn run(mut self, code: &[u8]) -> Result<Value> {
        self.run_from(code, 0).map(|(v, _)| v)
    }

    /// Runs the pickle program that starts at byte `start` of `code`: the value STOP leaves
    /// and the byte after the STOP.
    fn run_from(&mut self, code: &[u8], start: usize) -> Result<(Value, usize)> {
        let mut r = Reader { code, at: start };
        loop {
            let at = r.at;
            let op = r.u8()?;
            match op {
                0x80 => {
                    r.u8()?; // PROTO n
                }
                0x95 => {
                    r.take(8)?; // FRAME length: framing only
                }
                b'.' => return Ok((self.pop()?, r.at)),
                b'(' => self.stack.push(Item::Mark),
                b'0' => {
                    self.stack.pop();
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v);
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(r.array()?);
                    self.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = r.u8()?;
                    self.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = u16::from_le_bytes(r.array()?);
                    self.push(Value::Int(v as i64));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        r.u8()? as usize
                    } else {
                        u32::from_le_bytes(r.array()?) as usize
                    };
                    let bytes = r.take(n)?;
                    if n > 8 {
                        bail!("integer of {n} bytes at byte {at}");
                    }
                    let mut buf = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
                        [0xff; 8]
                    } else {
                        [0; 8]
                    };
                    buf[..n].copy_from_slice(bytes);
                    self.push(Value::Int(i64::from_le_bytes(buf)));
                }
                b'I' => {
                    let line = r.line()?;
                    let v = match line.as_str() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => Value::Int(
                            s.parse()
                                .map_err(|_| anyhow!("bad INT {s:?} at byte {at}"))?,
                        ),
                    };
                    self.push(v);
                }
                b'G' => {
                    let v = f64::from_be_bytes(r.array()?);
                    self.push(Value::Float(v));
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => u32::from_le_bytes(r.array()?) as usize,
                        0x8c => r.u8()? as usize,
                        _ => u64::from_le_bytes(r.array()?) as usize,
                    };
                    let s = std::str::from_utf8(r.take(n)?)
                        .map_err(|_| anyhow!("string at byte {at} is not UTF-8"))?;
                    self.push(Value::Str(s.to_string()));
                }
                b'T' | b'U' | b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'U' | b'C' => r.u8()? as usize,
                        0x8e => u64::from_le_bytes(r.array()?) as usize,
                        _ => u32::from_le_bytes(r.array()?) as usize,
                    };
                    let bytes = r.take(n)?.to_vec();
                    self.push(Value::Bytes(bytes));
                }
                b')' => self.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(items));
                }
                b']' => self.push(Value::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items));
                }
                b'a' => {
                    let v = self.pop()?;
                    if let Value::List(items) = self.top()? {
                        items.push(v);
                    }
                }
                b'e' => {
                    let vs = self.pop_mark()?;
                    if let Value::List(items) = self.top()? {
                        items.extend(vs);
                    }
                }
                b'}' => self.push(Value::Dict(Vec::new())),
                b'd' => {
                    let pairs = self.pop_mark()?;
                    self.push(Value::Dict(Vec::new()));
                    self.set_items(pairs)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let pairs = self.pop_mark()?;
                    self.set_items(pairs)?;
                }
                0x8f => self.push(Value::List(Vec::new())), // EMPTY_SET, kept as a list
                0x90 => {
                    let vs = self.pop_mark()?;
                    if let Value::List(items) = self.top()? {
                        items.extend(vs);
                    }
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items));
                }
                b'c' => {
                    let module = r.line()?;
                    let name = r.line()?;
                    self.push(Value::Global(format!("{module}.{name}")));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            self.push(Value::Global(format!("{m}.{n}")))
                        }
                        _ => bail!("STACK_GLOBAL without two strings at byte {at}"),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let args = match args {
                        Value::Tuple(a) => a,
                        other => bail!("REDUCE arguments are {} at byte {at}", other.kind()),
                    };
                    let v = match func {
                        Value::Global(g)
                            if g == "torch.storage._load_from_bytes" && self.read_inline =>
                        {
                            self.load_from_bytes(args)
                                .map_err(|e| anyhow!("{e} at byte {at}"))?
                        }
                        Value::Global(g) => reduce(&g, args)?,
                        other => Value::Opaque(other.kind()),
                    };
                    self.push(v);
                }
                0x81 | 0x92 => {
                    // NEWOBJ(cls, args) / NEWOBJ_EX(cls, args, kwargs): cls.__new__ is not run.
                    if op == 0x92 {
                        self.pop()?;
                    }
                    self.pop()?;
                    let cls = self.pop()?;
                    self.push(Value::Opaque(cls.kind()));
                }
                b'b' => {
                    // BUILD: an object's state (a state dict's `_metadata`); not needed.
                    self.pop()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = persistent(pid).map_err(|e| anyhow!("{e} at byte {at}"))?;
                    if let Value::Storage { key, dtype, .. } = &v {
                        self.storage_types.insert(key.clone(), *dtype);
                    }
                    self.push(v);
                }
                b'q' => {
                    let i = r.u8()? as u32;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = u32::from_le_bytes(r.array()?);
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?;
                }
                b'p' => {
                    let i = r.line()?;
                    let i = i
                        .parse()
                        .map_err(|_| anyhow!("bad PUT {i:?} at byte {at}"))?;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = r.u8()? as u32;
                    let v = self.memo_get(i)?;
                    self.push(v);
                }
                b'j' => {
                    let i = u32::from_le_bytes(r.array()?);
                    let v = self.memo_get(i)?;
                    self.push(v);
                }
                b'g' => {
                    let i = r.line()?;
                    let i = i
                        .parse()
                        .map_err(|_| anyhow!("bad GET {i:?} at byte {at}"))?;
                    let v = self.memo_get(i)?;
                    self.push(v);
                }
                other => {
                    bail!("pickle opcode 0x{other:02x} at byte {at} is not one softtune reads")
                }
            }
        }
    }
}

/// A persistent id: `('storage', storage_type, key, location, numel)`.
/// In the legacy format a sixth item may name a view of the storage: `(view_key, offset,
/// size)`, which tensors then index from `offset` on.
fn persistent(pid: Value) -> Result<Value> {
    let Value::Tuple(items) = pid else {
        bail!("persistent id is {}", pid.kind());
    };
    match items.as_slice() {
        [
            Value::Str(tag),
            Value::Global(class),
            Value::Str(key),
            rest @ ..,
        ] if tag == "storage" => {
            let dtype = storage_dtype(class)
                .ok_or_else(|| anyhow!("storage type {class} is not one softtune reads"))?;
            let offset = match rest.get(2) {
                None | Some(Value::None) => 0,
                Some(Value::Tuple(view)) if view.len() == 3 => {
                    view[1].usize("a storage view's offset")?
                }
                Some(other) => bail!("a storage view is {}", other.kind()),
            };
            Ok(Value::Storage {
                key: key.clone(),
                dtype,
                offset,
            })
        }
        _ => bail!("persistent id is not a storage reference"),
    }
}

/// The pickle program's bytes, read front to back.
struct Reader<'a> {
    code: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.code.len())
            .ok_or_else(|| anyhow!("pickle ends inside an instruction at byte {}", self.at))?;
        let s = &self.code[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// A newline-terminated ASCII argument (text-mode opcodes).
    fn line(&mut self) -> Result<String> {
        let rest = &self.code[self.at..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| anyhow!("pickle ends inside a line at byte {}", self.at))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.at += n + 1;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pickle, as protocol 2 writes `OrderedDict([("w", <tensor>)])` with `_metadata`,
    /// assembled by hand from the opcodes.
    fn state_dict_pickle(global_for_storage: &str) -> Vec<u8> {
        let mut p = vec![0x80, 2];
        p.extend(b"ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00w");
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\nq\x02((X\x07\x00\x00\x00storage");
        p.extend(format!("ctorch\n{global_for_storage}\n").as_bytes());
        p.extend(b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQ");
        p.extend(b"K\x01K\x02K\x02\x86K\x01K\x02\x86\x89ccollections\nOrderedDict\n)Rtq\x03R");
        p.extend(b"q\x04u}q\x05X\x09\x00\x00\x00_metadatah\x01sb.");
        p
    }

    #[test]
    fn state_dict_tensor_is_a_strided_view() {
        let v = Machine::default()
            .run(&state_dict_pickle("HalfStorage"))
            .unwrap();
        let Value::Dict(items) = v else {
            panic!("not a dict: {v:?}")
        };
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].0, Value::Str("w".into()));
        assert_eq!(
            items[0].1,
            Value::Tensor(View {
                key: "0".into(),
                dtype: Dtype::F16,
                offset: 1,
                shape: vec![2, 2],
                strides: vec![1, 2],
            })
        );
    }

    #[test]
    fn unknown_storage_types_and_opcodes_are_errors() {
        let e = Machine::default()
            .run(&state_dict_pickle("ComplexFloatStorage"))
            .unwrap_err();
        assert!(e.to_string().contains("torch.ComplexFloatStorage"), "{e}");
        let e = Machine::default().run(&[0x80, 2, b'i']).unwrap_err();
        assert!(e.to_string().contains("0x69 at byte 2"), "{e}");
        let e = Machine::default().run(&[0x80, 2, b'X', 9, 0]).unwrap_err();
        assert!(e.to_string().contains("ends inside"), "{e}");
    }

    #[test]
    fn storages_inside_pickles_are_read_only_for_a_pickled_tensor() {
        // `torch.storage._load_from_bytes(b"abc")`.
        let code = b"\x80\x02ctorch.storage\n_load_from_bytes\nC\x03abc\x85R.";
        let v = Machine::default().run(code).unwrap();
        assert_eq!(v, Value::Opaque("torch.storage._load_from_bytes".into()));
        let e = read_pickled_tensor("t", code).unwrap_err().to_string();
        assert!(e.contains("no legacy torch.save magic number"), "{e}");
    }

    #[test]
    fn named_callables_are_never_called() {
        // `os.system("…")` as a pickle: REDUCE of a global with no meaning here.
        let code = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.";
        let v = Machine::default().run(code).unwrap();
        assert_eq!(v, Value::Opaque("os.system".into()));
    }

    /// A one-tensor archive: `pickle` as `a/data.pkl` and a 12-byte storage `a/data/0`.
    fn archive(pickle: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut zip = Vec::new();
        let mut w = zip::ZipWriter::new(Cursor::new(&mut zip));
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        w.start_file("a/data.pkl", stored).unwrap();
        w.write_all(pickle).unwrap();
        w.start_file("a/data/0", stored).unwrap();
        w.write_all(&[0; 12]).unwrap();
        w.finish().unwrap();
        zip
    }

    /// `state_dict_pickle` with its size tuple `(2, 2)` and stride tuple `(1, 2)` replaced.
    fn with_size_and_stride(size: &[u8], stride: &[u8]) -> Vec<u8> {
        let mut p = state_dict_pickle("HalfStorage");
        let at = p
            .windows(10)
            .position(|w| w == b"K\x02K\x02\x86K\x01K\x02\x86")
            .unwrap();
        let mut tail = p.split_off(at);
        tail.drain(..10);
        p.extend(size);
        p.push(0x86);
        p.extend(stride);
        p.push(0x86);
        p.extend(tail);
        p
    }

    #[test]
    fn the_archive_helper_reads_back_the_plain_view() {
        let same = with_size_and_stride(b"K\x02K\x02", b"K\x01K\x02");
        assert_eq!(same, state_dict_pickle("HalfStorage"));
        let t = read(Path::new("w.bin"), &archive(&same)).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].1.shape.clone(), t[0].1.offset), (vec![2, 2], 1));
    }

    #[test]
    fn views_past_their_storage_are_refused_without_overflow() {
        // Size (2, 2**62): the last element lies far past the 12-byte storage, and computing
        // where overflows 64 bits.
        let p = with_size_and_stride(
            b"K\x02\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x40",
            b"K\x01K\x02",
        );
        let e = read(Path::new("w.bin"), &archive(&p))
            .unwrap_err()
            .to_string();
        assert!(e.contains("runs past its storage of 12 bytes"), "{e}");
        assert!(e.contains("w.bin"), "{e}");
    }

    #[test]
    fn overlapping_views_are_refused() {
        // Size (2, 100) with strides (0, 0): every element is storage element 1, so the view
        // stays inside the storage but would gather 400 bytes from 12.
        let p = with_size_and_stride(b"K\x02Kd", b"K\x00K\x00");
        let e = read(Path::new("w.bin"), &archive(&p))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("more elements than its storage of 12 bytes"),
            "{e}"
        );
    }

    #[test]
    fn strided_views_gather_in_row_major_order() {
        // Storage of six f16-sized elements 0..6; a [2, 2] view at offset 1, strides [1, 2]
        // is the transpose of [[1, 2], [3, 4]] laid out by columns: [[1, 3], [2, 4]].
        let file: Vec<u8> = (0..6u16).flat_map(|v| v.to_le_bytes()).collect();
        let t = TorchTensor {
            dtype: Dtype::F16,
            shape: vec![2, 2],
            strides: vec![1, 2],
            offset: 1,
            storage: (0, 12),
        };
        assert!(!t.is_contiguous());
        let got: Vec<u16> = t
            .gather(&file)
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(got, [1, 3, 2, 4]);
        let c = TorchTensor {
            strides: vec![2, 1],
            ..t
        };
        assert!(c.is_contiguous());
        assert_eq!(c.byte_range(), (2, 10));
    }
}
