//! Where a model's files come from: a local folder, or the Hugging Face Hub
//! (through the same on-disk cache that Python's `huggingface_hub` uses).
//!
//! [`resolve`] turns what the user passed as `--model` into a [`ModelFiles`]:
//! the paths of `config.json`, `tokenizer.json` and the weights: safetensors
//! (`model.safetensors` or its shards), else transformers' PyTorch checkpoints
//! (`pytorch_model.bin` or its shards), which [`super::torch_bin`] reads without
//! running them. Other pickle files (`*.pt`, `*.ckpt`) are refused with a hint on
//! how to convert them.
//!
//! Hub layout (shared with Python):
//! `<cache>/models--owner--name/{blobs,refs,snapshots}`, where `refs/<branch>`
//! holds a commit hash and `snapshots/<hash>/<file>` is a symlink to a blob
//! (or a plain copy). In offline mode the cache is read directly and the
//! network is never touched.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use hf_hub::{HFClient, HFError};

use super::{slow_bpe, spm, tokenizer_files};

/// The model configuration file every Hugging Face model folder has.
pub const CONFIG_FILE: &str = "config.json";
/// The fast-tokenizer file (optional).
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Single-file safetensors weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Index of sharded safetensors weights.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Single-file PyTorch weights, as transformers saved them before safetensors.
pub const TORCH_WEIGHTS_FILE: &str = "pytorch_model.bin";
/// Index of sharded PyTorch weights.
pub const TORCH_INDEX_FILE: &str = "pytorch_model.bin.index.json";

/// The weight layouts softtune reads, in the order it looks for them: (single file, index).
const LAYOUTS: [(&str, &str); 2] = [
    (WEIGHTS_FILE, INDEX_FILE),
    (TORCH_WEIGHTS_FILE, TORCH_INDEX_FILE),
];

const DEFAULT_REVISION: &str = "main";

/// How to reach the Hugging Face Hub.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HubOptions {
    /// Branch, tag or commit hash; `None` means `main`.
    pub revision: Option<String>,
    /// Never touch the network; read only the local cache.
    pub offline: bool,
    /// Access token for gated or private models.
    pub token: Option<String>,
}

impl fmt::Debug for HubOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the token itself.
        f.debug_struct("HubOptions")
            .field("revision", &self.revision)
            .field("offline", &self.offline)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl HubOptions {
    /// Options from the environment: `HF_HUB_OFFLINE` (`1`/`true`/`yes`/`on`)
    /// turns offline mode on, `HF_TOKEN` gives the token (unset or empty: none).
    /// The revision is left unset (`main`).
    pub fn from_env() -> Self {
        Self {
            revision: None,
            offline: env_flag("HF_HUB_OFFLINE"),
            token: std::env::var("HF_TOKEN")
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
        }
    }

    fn revision(&self) -> &str {
        self.revision
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .unwrap_or(DEFAULT_REVISION)
    }
}

/// The files of one model, found locally or in the Hub cache.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// What the user named: the Hub id (`owner/name`) or the folder path as given.
    pub id: String,
    /// The local folder, or the Hub snapshot folder.
    pub root: PathBuf,
    /// `config.json`.
    pub config: PathBuf,
    /// `tokenizer.json`, or else GPT-2's slow `vocab.json` when `merges.txt` is beside it, or
    /// else a sentencepiece `tokenizer.model` (what
    /// [`super::tokenizer::Tokenizer::from_file`] loads), if present.
    pub tokenizer: Option<PathBuf>,
    /// `model.safetensors` (or `pytorch_model.bin`), or every shard named by the index
    /// (unique, sorted).
    pub weights: Vec<PathBuf>,
    /// `model.safetensors.index.json` (or `pytorch_model.bin.index.json`), if the weights
    /// are sharded.
    pub index: Option<PathBuf>,
    /// Whether the files came from the Hugging Face Hub (or its cache).
    pub from_hub: bool,
}

impl ModelFiles {
    /// The tokenizer's file, or an error saying how to make one.
    pub fn tokenizer_path(&self) -> Result<PathBuf> {
        self.tokenizer.clone().ok_or_else(|| {
            anyhow!(
                "{}: no tokenizer.json, no vocab.json with merges.txt (GPT-2's tokenizer \
                 files) and no sentencepiece tokenizer.model to build one from. Copy the \
                 tokenizer files of the model it was fine-tuned from beside its config.json, \
                 or make tokenizer.json in Python: AutoTokenizer.from_pretrained(\"<model>\")\
                 .save_pretrained(\"<folder>\"); for a Hub model, put it in a local copy of its \
                 folder and point --model there",
                self.root.display()
            )
        })
    }
}

/// The file a model folder's tokenizer loads from: `tokenizer.json`, else `vocab.json` when
/// GPT-2's slow tokenizer files (`vocab.json` and `merges.txt`) are there, else a sentencepiece
/// `tokenizer.model`.
fn find_tokenizer(root: &Path) -> Option<PathBuf> {
    let fast = root.join(TOKENIZER_FILE);
    if fast.is_file() {
        Some(fast)
    } else if slow_bpe::present(root) {
        Some(root.join(slow_bpe::VOCAB_FILE))
    } else {
        spm::present(root).then(|| root.join(spm::MODEL_FILE))
    }
}

/// Finds `config.json`, `tokenizer.json` and the safetensors weights of
/// `model`: a local folder, or a Hugging Face model id (downloaded into the
/// Hub cache unless `opts.offline`, in which case only the cache is read).
pub fn resolve(model: &str, opts: &HubOptions) -> Result<ModelFiles> {
    resolve_impl(model, opts, Want::Everything)
}

/// Only `config.json` (and the safetensors index, if the weights are sharded),
/// not the weights: for quick inspection before a download. `weights` may be
/// empty; it lists the weight files only where they are already on disk.
pub fn resolve_config_only(model: &str, opts: &HubOptions) -> Result<ModelFiles> {
    resolve_impl(model, opts, Want::ConfigOnly)
}

/// The Hub cache folder, as Python's `huggingface_hub` computes it:
/// `HF_HUB_CACHE`, else `HUGGINGFACE_HUB_CACHE`, else `HF_HOME/hub`, else
/// `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> PathBuf {
    if let Some(dir) = env_path("HF_HUB_CACHE").or_else(|| env_path("HUGGINGFACE_HUB_CACHE")) {
        return dir;
    }
    if let Some(home) = env_path("HF_HOME") {
        return home.join("hub");
    }
    let cache_root = env_path("XDG_CACHE_HOME").unwrap_or_else(|| home_dir().join(".cache"));
    cache_root.join("huggingface").join("hub")
}

/// Offline lookup of a Hub model in the cache at `cache_dir` (Python's layout):
/// `refs/<revision>` (or `revision` itself when it is a commit hash) names a
/// snapshot, whose files are returned. Never touches the network.
pub fn resolve_in_cache(id: &str, revision: &str, cache_dir: &Path) -> Result<ModelFiles> {
    cache_lookup(id, revision, cache_dir, Want::Everything)
}

/// Online resolution with an explicit cache folder and, optionally, Hub
/// endpoint and retry count (for tests and mirrors). `resolve` calls this with
/// [`hub_cache_dir`], the default endpoint (`HF_ENDPOINT` or huggingface.co)
/// and hf-hub's default retries.
#[doc(hidden)]
pub fn resolve_from_hub(
    id: &str,
    opts: &HubOptions,
    cache_dir: &Path,
    endpoint: Option<&str>,
    max_retries: Option<usize>,
) -> Result<ModelFiles> {
    validate_hub_id(id)?;
    let hub = Hub::connect(id, opts, cache_dir, endpoint, max_retries)?;
    hub.fetch(Want::Everything)
}

// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Everything,
    ConfigOnly,
}

fn resolve_impl(model: &str, opts: &HubOptions, want: Want) -> Result<ModelFiles> {
    if model.trim().is_empty() {
        bail!(
            "no model given; point --model at a Hugging Face model id (owner/name) or a local model folder"
        );
    }
    let path = expand_tilde(model);
    if path.is_dir() {
        return local_folder(model, &path, want);
    }
    if path.exists() {
        bail!(
            "{model} is not a folder (it is a file); point --model at the model's folder (config.json, model.safetensors, tokenizer.json)"
        );
    }
    if looks_like_path(model) {
        bail!(
            "{model} is not a folder (no such directory); point --model at a local model folder or a Hugging Face model id (owner/name)"
        );
    }
    validate_hub_id(model)?;
    let cache_dir = hub_cache_dir();
    if opts.offline {
        cache_lookup(model, opts.revision(), &cache_dir, want)
    } else {
        Hub::connect(model, opts, &cache_dir, None, None)?.fetch(want)
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

fn env_path(name: &str) -> Option<PathBuf> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    if value.is_empty() {
        None
    } else {
        Some(expand_tilde(value))
    }
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// `~` and `~/...` expand to `$HOME`; anything else is taken as is.
fn expand_tilde(s: &str) -> PathBuf {
    if s == "~" {
        return home_dir();
    }
    if let Some(rest) = s.strip_prefix("~/") {
        return home_dir().join(rest);
    }
    PathBuf::from(s)
}

/// Whether `s` is clearly meant as a filesystem path rather than a Hub id.
fn looks_like_path(s: &str) -> bool {
    s.starts_with('/')
        || s.starts_with("./")
        || s.starts_with("../")
        || s.starts_with('~')
        || s == "."
        || s == ".."
        || s.contains('\\')
        || s.matches('/').count() > 1
}

/// Checks a Hub model id the way the Hub does: `name` or `owner/name`, each
/// part made of letters, digits, `-`, `_`, `.`, not starting or ending with
/// `-` or `.`, without `--` or `..`, at most 96 characters.
fn validate_hub_id(id: &str) -> Result<()> {
    let invalid = |why: &str| {
        anyhow!(
            "{id} is neither a local folder nor a valid Hugging Face model id ({why}); \
             expected owner/name made of letters, digits, '-', '_' and '.'"
        )
    };
    let parts: Vec<&str> = id.split('/').collect();
    if parts.len() > 2 {
        return Err(invalid("more than one '/'"));
    }
    for part in &parts {
        if part.is_empty() {
            return Err(invalid("empty owner or name"));
        }
        if part.len() > 96 {
            return Err(invalid("longer than 96 characters"));
        }
        if let Some(c) = part
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(invalid(&format!("character {c:?} is not allowed")));
        }
        if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
            return Err(invalid("a part starts or ends with '-' or '.'"));
        }
        if part.contains("--") || part.contains("..") {
            return Err(invalid("'--' and '..' are not allowed"));
        }
    }
    Ok(())
}

/// Refuses revisions that could escape the cache folder.
fn validate_revision(revision: &str) -> Result<()> {
    let bad = revision.is_empty()
        || revision.starts_with('/')
        || revision.contains('\\')
        || revision.contains('\0')
        || revision
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..");
    if bad {
        bail!("invalid revision {revision:?}: expected a branch, tag or commit hash");
    }
    Ok(())
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// `models--owner--name`, as Python names a model's cache folder.
fn repo_folder_name(id: &str) -> String {
    format!("models--{}", id.replace('/', "--"))
}

/// The unique, sorted shard file names of a weights index.
fn read_index_shards(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)
        .map_err(|e| anyhow!("cannot read {}: {e}", index.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{} is not valid JSON: {e}", index.display()))?;
    let Some(map) = json.get("weight_map").and_then(|m| m.as_object()) else {
        bail!("{} has no \"weight_map\" object", index.display());
    };
    let mut shards = BTreeSet::new();
    for (tensor, file) in map {
        let Some(file) = file.as_str() else {
            bail!(
                "{}: weight_map entry {tensor:?} is not a file name",
                index.display()
            );
        };
        let rel = Path::new(file);
        let plain = !file.is_empty()
            && !file.contains('\\')
            && rel.components().all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            bail!(
                "{}: shard name {file:?} must be a plain relative file name",
                index.display()
            );
        }
        shards.insert(file.to_string());
    }
    if shards.is_empty() {
        bail!("{}: weight_map is empty", index.display());
    }
    Ok(shards.into_iter().collect())
}

/// What a folder (local, or a cache snapshot) holds in the way of weights.
enum FolderWeights {
    Single(PathBuf),
    Sharded {
        index: PathBuf,
        shards: Vec<PathBuf>,
        missing: Vec<String>,
    },
    Nothing {
        pickles: Vec<String>,
        other_safetensors: Vec<String>,
    },
}

fn scan_weights(dir: &Path) -> Result<FolderWeights> {
    for (single, index) in LAYOUTS {
        let single = dir.join(single);
        if single.is_file() {
            return Ok(FolderWeights::Single(single));
        }
        let index = dir.join(index);
        if index.is_file() {
            let mut shards = Vec::new();
            let mut missing = Vec::new();
            for name in read_index_shards(&index)? {
                let path = dir.join(&name);
                if path.is_file() {
                    shards.push(path);
                } else {
                    missing.push(name);
                }
            }
            return Ok(FolderWeights::Sharded {
                index,
                shards,
                missing,
            });
        }
    }
    let mut pickles = Vec::new();
    let mut other_safetensors = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let lower = name.to_ascii_lowercase();
            if [".bin", ".pt", ".pth", ".ckpt"]
                .iter()
                .any(|ext| lower.ends_with(ext))
            {
                pickles.push(name);
            } else if lower.ends_with(".safetensors") {
                other_safetensors.push(name);
            }
        }
    }
    pickles.sort();
    other_safetensors.sort();
    Ok(FolderWeights::Nothing {
        pickles,
        other_safetensors,
    })
}

fn pickle_error(label: &str, pickles: &[String]) -> anyhow::Error {
    anyhow!(
        "{label}: no weights under the names softtune reads ({WEIGHTS_FILE}, {INDEX_FILE}, \
         {TORCH_WEIGHTS_FILE}, {TORCH_INDEX_FILE}); found {}. If one of them is the whole \
         model's transformers checkpoint, rename it {TORCH_WEIGHTS_FILE}; otherwise convert \
         once in Python: AutoModelForCausalLM.from_pretrained(\"<model>\").save_pretrained(\
         \"<out>\", safe_serialization=True), then point --model at <out>",
        pickles.join(", ")
    )
}

fn no_weights_error(label: &str, other_safetensors: &[String]) -> anyhow::Error {
    let found = if other_safetensors.is_empty() {
        String::new()
    } else {
        format!(
            " (found {}, but softtune needs the full model's {WEIGHTS_FILE} or {INDEX_FILE})",
            other_safetensors.join(", ")
        )
    };
    anyhow!(
        "{label}: no model weights here; expected {WEIGHTS_FILE}, or {INDEX_FILE} and its \
         shards, or PyTorch's {TORCH_WEIGHTS_FILE} or {TORCH_INDEX_FILE}{found}"
    )
}

/// The weight files of a local model folder (the config and tokenizer are not looked for).
pub fn local_weights(dir: &Path) -> Result<Vec<PathBuf>> {
    let label = dir.display().to_string();
    match scan_weights(dir)? {
        FolderWeights::Single(path) => Ok(vec![path]),
        FolderWeights::Sharded {
            shards, missing, ..
        } if missing.is_empty() => Ok(shards),
        FolderWeights::Sharded { index, missing, .. } => bail!(
            "{label}: shard {} named in {} is missing",
            missing[0],
            index.display()
        ),
        FolderWeights::Nothing {
            pickles,
            other_safetensors,
        } => Err(if pickles.is_empty() {
            no_weights_error(&label, &other_safetensors)
        } else {
            pickle_error(&label, &pickles)
        }),
    }
}

fn local_folder(id: &str, root: &Path, want: Want) -> Result<ModelFiles> {
    let config = root.join(CONFIG_FILE);
    if !config.is_file() {
        bail!(
            "{id}: no config.json in this folder; point --model at a Hugging Face model folder \
             (config.json, model.safetensors, tokenizer.json)"
        );
    }
    let tokenizer = find_tokenizer(root);
    let (weights, index) = match scan_weights(root)? {
        FolderWeights::Single(path) => (vec![path], None),
        FolderWeights::Sharded {
            index,
            shards,
            missing,
        } => {
            if missing.is_empty() {
                (shards, Some(index))
            } else if want == Want::ConfigOnly {
                (Vec::new(), Some(index))
            } else {
                bail!(
                    "{id}: shard {} named in {} is missing{}",
                    missing[0],
                    index.display(),
                    if missing.len() > 1 {
                        format!(
                            " (and {} more: {})",
                            missing.len() - 1,
                            missing[1..].join(", ")
                        )
                    } else {
                        String::new()
                    }
                );
            }
        }
        FolderWeights::Nothing {
            pickles,
            other_safetensors,
        } => {
            if want == Want::ConfigOnly {
                (Vec::new(), None)
            } else if !pickles.is_empty() {
                return Err(pickle_error(id, &pickles));
            } else {
                return Err(no_weights_error(id, &other_safetensors));
            }
        }
    };
    Ok(ModelFiles {
        id: id.to_string(),
        root: root.to_path_buf(),
        config,
        tokenizer,
        weights,
        index,
        from_hub: false,
    })
}

fn cache_lookup(id: &str, revision: &str, cache_dir: &Path, want: Want) -> Result<ModelFiles> {
    validate_hub_id(id)?;
    validate_revision(revision)?;
    let at_revision = if revision == DEFAULT_REVISION {
        String::new()
    } else {
        format!(" (revision {revision})")
    };
    let not_cached = |detail: &str| {
        anyhow!(
            "{id}{at_revision} is not in the Hugging Face cache at {}{detail} and offline mode is on \
             (HF_HUB_OFFLINE); run once online or point --model at a local folder",
            cache_dir.display()
        )
    };
    let repo_dir = cache_dir.join(repo_folder_name(id));
    let commit = if is_commit_hash(revision) {
        revision.to_string()
    } else {
        match std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
            Ok(text) if !text.trim().is_empty() => text.trim().to_string(),
            _ => return Err(not_cached("")),
        }
    };
    if commit.contains(['/', '\\']) || commit == "." || commit == ".." {
        bail!(
            "{}: refs/{revision} holds an invalid commit {commit:?}",
            repo_dir.display()
        );
    }
    let root = repo_dir.join("snapshots").join(&commit);
    if !root.is_dir() {
        return Err(not_cached(""));
    }
    let config = root.join(CONFIG_FILE);
    if !config.is_file() {
        return Err(not_cached(&format!(
            " (snapshot {commit} has no config.json)"
        )));
    }
    let tokenizer = find_tokenizer(&root);
    let (weights, index) = match scan_weights(&root)? {
        FolderWeights::Single(path) => (vec![path], None),
        FolderWeights::Sharded {
            index,
            shards,
            missing,
        } => {
            if missing.is_empty() {
                (shards, Some(index))
            } else if want == Want::ConfigOnly {
                (Vec::new(), Some(index))
            } else {
                return Err(not_cached(&format!(
                    " (snapshot {commit} lacks {} of {} shards named in {}, e.g. {})",
                    missing.len(),
                    missing.len() + shards.len(),
                    index.file_name().unwrap_or_default().to_string_lossy(),
                    missing[0]
                )));
            }
        }
        FolderWeights::Nothing { pickles, .. } => {
            if want == Want::ConfigOnly {
                (Vec::new(), None)
            } else if !pickles.is_empty() {
                return Err(pickle_error(id, &pickles));
            } else {
                return Err(not_cached(&format!(
                    " (snapshot {commit} has config.json but no {WEIGHTS_FILE}, {INDEX_FILE}, \
                     {TORCH_WEIGHTS_FILE} or {TORCH_INDEX_FILE})"
                )));
            }
        }
    };
    Ok(ModelFiles {
        id: id.to_string(),
        root,
        config,
        tokenizer,
        weights,
        index,
        from_hub: true,
    })
}

/// An online connection to one model repository.
struct Hub {
    id: String,
    revision: String,
    has_token: bool,
    /// `<cache>/models--owner--name`.
    repo_dir: PathBuf,
    repo: hf_hub::HFRepositorySync<hf_hub::RepoTypeModel>,
}

impl Hub {
    fn connect(
        id: &str,
        opts: &HubOptions,
        cache_dir: &Path,
        endpoint: Option<&str>,
        max_retries: Option<usize>,
    ) -> Result<Self> {
        let revision = opts.revision().to_string();
        validate_revision(&revision)?;
        let token = opts
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let mut builder = HFClient::builder().cache_dir(cache_dir);
        if let Some(token) = token {
            builder = builder.token(token);
        }
        if let Some(endpoint) = endpoint {
            builder = builder.endpoint(endpoint);
        }
        if let Some(n) = max_retries {
            builder = builder.retry_max_attempts(n);
        }
        let client = builder.build_sync().map_err(|e| {
            anyhow!(
                "{id}: cannot set up the Hugging Face Hub client: {}",
                one_line(&e)
            )
        })?;
        let (owner, name) = hf_hub::split_id(id);
        Ok(Self {
            id: id.to_string(),
            revision,
            has_token: token.is_some(),
            repo_dir: cache_dir.join(repo_folder_name(id)),
            repo: client.model(owner, name),
        })
    }

    /// Downloads `file` at `revision` into the cache (or finds it there);
    /// `Ok(None)` when the repository has no such file.
    fn get(&self, file: &str, revision: &str) -> Result<Option<PathBuf>> {
        match self
            .repo
            .download_file()
            .filename(file)
            .revision(revision)
            .send()
        {
            Ok(path) => Ok(Some(path)),
            Err(HFError::EntryNotFound { .. }) => Ok(None),
            // Unreachable Hub, but an earlier download recorded (as Python
            // does) that this commit has no such file.
            Err(_) if is_commit_hash(revision) && self.known_absent(file, revision) => Ok(None),
            Err(e) => Err(self.error(file, &e)),
        }
    }

    fn known_absent(&self, file: &str, commit: &str) -> bool {
        self.repo_dir
            .join(".no_exist")
            .join(commit)
            .join(file)
            .exists()
    }

    fn error(&self, file: &str, err: &HFError) -> anyhow::Error {
        let id = &self.id;
        let token_hint = if self.has_token {
            "check that HF_TOKEN has access to it"
        } else {
            "set HF_TOKEN"
        };
        match err {
            HFError::AuthRequired { .. } | HFError::RepoNotFound { .. } => anyhow!(
                "{id}: the Hugging Face Hub refused {file} (no such model, or it is private or gated); \
                 check the id, and for a gated or private model accept its terms on huggingface.co and {token_hint}"
            ),
            HFError::Forbidden { .. } => anyhow!(
                "{id}: access to {file} is forbidden (gated or private model); request access on \
                 huggingface.co and {token_hint}"
            ),
            HFError::RevisionNotFound { .. } => anyhow!(
                "{id}: revision {} does not exist on the Hugging Face Hub",
                self.revision
            ),
            HFError::RateLimited { .. } => anyhow!(
                "{id}: rate limited by the Hugging Face Hub while fetching {file}; wait and retry, \
                 {token_hint}, or set HF_HUB_OFFLINE=1 if the model is already cached"
            ),
            _ => {
                let why = match err {
                    // reqwest's message repeats the URL and hides the cause
                    // ("dns error", "connection refused"): show the cause.
                    HFError::Request { source, url } => format!(
                        "{}{}",
                        root_cause(source),
                        url.as_deref().map(|u| format!(", {u}")).unwrap_or_default()
                    ),
                    other => one_line(other),
                };
                anyhow!(
                    "{id}: could not download {file} from the Hugging Face Hub ({why}); check the \
                     network, or set HF_HUB_OFFLINE=1 if the model is already in the cache, or point \
                     --model at a local folder; gated or private models need HF_TOKEN"
                )
            }
        }
    }

    fn fetch(&self, want: Want) -> Result<ModelFiles> {
        let id = &self.id;
        let Some(config) = self.get(CONFIG_FILE, &self.revision)? else {
            bail!(
                "{id}: no config.json on the Hugging Face Hub at revision {}; check the model id and \
                 revision (softtune needs a transformers model repository)",
                self.revision
            );
        };
        let root = config
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| anyhow!("{id}: unexpected cache path {}", config.display()))?;
        // Pin the remaining files to the snapshot that config.json came from,
        // so that a branch moving mid-download cannot mix two commits; files
        // already in that snapshot are then found without a network request.
        let pinned = root
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| is_commit_hash(n))
            .map(str::to_string)
            .unwrap_or_else(|| self.revision.clone());

        if want == Want::ConfigOnly {
            // No downloads beyond the index; a tokenizer already cached is reported.
            let tokenizer = find_tokenizer(&root);
            // A cached single file already says the weights are not sharded.
            let mut index = None;
            for (single, sharded) in LAYOUTS {
                if root.join(single).is_file() {
                    break;
                }
                index = self.get(sharded, &pinned)?;
                if index.is_some() {
                    break;
                }
            }
            let weights = match (&index, scan_weights(&root)?) {
                (None, FolderWeights::Single(path)) => vec![path],
                (
                    Some(_),
                    FolderWeights::Sharded {
                        shards, missing, ..
                    },
                ) if missing.is_empty() => shards,
                _ => Vec::new(),
            };
            return Ok(ModelFiles {
                id: id.clone(),
                root,
                config,
                tokenizer,
                weights,
                index,
                from_hub: true,
            });
        }

        let mut tokenizer = self.get(TOKENIZER_FILE, &pinned)?;
        if tokenizer.is_none() {
            // Older models ship only slow tokenizer files: GPT-2's, or a sentencepiece model.
            // Optional: an unreachable Hub here leaves the tokenizer missing, which is reported
            // when it is needed.
            let get = |file: &str| self.get(file, &pinned).ok().flatten();
            let slow = (get(slow_bpe::VOCAB_FILE).is_some()
                && get(slow_bpe::MERGES_FILE).is_some())
                || get(spm::MODEL_FILE).is_some();
            if slow {
                for file in tokenizer_files::SETTINGS_FILES {
                    get(file);
                }
                tokenizer = find_tokenizer(&root);
            }
        }
        let mut found = None;
        for (single, sharded) in LAYOUTS {
            if let Some(path) = self.get(single, &pinned)? {
                found = Some((vec![path], None));
                break;
            }
            if let Some(index) = self.get(sharded, &pinned)? {
                let mut shards = Vec::new();
                for name in read_index_shards(&index)? {
                    match self.get(&name, &pinned)? {
                        Some(path) => shards.push(path),
                        None => bail!(
                            "{id}: shard {name} named in {sharded} is missing on the Hugging Face Hub"
                        ),
                    }
                }
                found = Some((shards, Some(index)));
                break;
            }
        }
        let Some((weights, index)) = found else {
            bail!(
                "{id}: no {WEIGHTS_FILE}, {INDEX_FILE}, {TORCH_WEIGHTS_FILE} or {TORCH_INDEX_FILE} \
                 on the Hugging Face Hub at revision {}; softtune needs the whole model's weights \
                 in one of those layouts (other pickle files, such as *.pt, can run arbitrary \
                 code). Convert in Python with save_pretrained(\"<out>\", \
                 safe_serialization=True) and point --model at <out>",
                self.revision
            );
        };
        Ok(ModelFiles {
            id: id.clone(),
            root,
            config,
            tokenizer,
            weights,
            index,
            from_hub: true,
        })
    }
}

/// The innermost cause of an error, on one line.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    squash(&cause.to_string())
}

/// An error and its innermost cause on one line.
fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let text = squash(&err.to_string());
    let cause = root_cause(err);
    if text.contains(&cause) {
        text
    } else {
        format!("{text}: {cause}")
    }
}

fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids() {
        for ok in [
            "gpt2",
            "openai-community/gpt2",
            "Qwen/Qwen2.5-0.5B",
            "a_b/c.d",
        ] {
            assert!(validate_hub_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "a/b/c", "a b", "/x", "x/", "-x", "x.", "a--b", "a..b", "é",
        ] {
            assert!(validate_hub_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn path_like() {
        for p in ["/abs", "./x", "../x", "~/x", "a/b/c", ".", "a\\b"] {
            assert!(looks_like_path(p), "{p}");
        }
        for p in ["gpt2", "owner/name"] {
            assert!(!looks_like_path(p), "{p}");
        }
    }

    #[test]
    fn revisions() {
        assert!(validate_revision("main").is_ok());
        assert!(validate_revision("refs/pr/1").is_ok());
        for bad in ["", "../x", "/x", "a//b", "a/../b"] {
            assert!(validate_revision(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn folder_name() {
        assert_eq!(repo_folder_name("gpt2"), "models--gpt2");
        assert_eq!(repo_folder_name("a/b"), "models--a--b");
    }
}
