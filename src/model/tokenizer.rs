//! The model's tokenizer (`tokenizer.json`, GPT-2's slow `vocab.json` + `merges.txt`, or a
//! sentencepiece `tokenizer.model`), used without special tokens: softtune never adds BOS; the
//! dataset pipeline appends the model's real EOS id after each file.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};

use super::config::ModelConfig;
use super::{slow_bpe, spm, tokenizer_files};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub path: PathBuf,
}

impl Tokenizer {
    /// Loads `tokenizer.json`; given a `vocab.json`, builds GPT-2's byte-level BPE from it and
    /// the `merges.txt` (and settings files) beside it (see [`super::slow_bpe`]); given a
    /// `tokenizer.model`, builds from the sentencepiece model (see [`super::spm`]).
    pub fn from_file(path: &Path) -> Result<Self> {
        let name = path.file_name().and_then(|n| n.to_str());
        let inner = if name == Some(slow_bpe::VOCAB_FILE) {
            slow_bpe::build(path.parent().unwrap_or(Path::new(".")))?
        } else if name == Some(spm::MODEL_FILE) {
            spm::build(path)?
        } else {
            tokenizers::Tokenizer::from_file(path)
                .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))?
        };
        Ok(Self {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// The files beside `path` that shape the tokenizer built from it: none for
    /// `tokenizer.json`; `merges.txt` and the settings files for GPT-2's `vocab.json`; the
    /// settings files for a sentencepiece `tokenizer.model` (whether they exist or not).
    pub fn companion_files(path: &Path) -> Vec<PathBuf> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let names: &[&str] = match path.file_name().and_then(|n| n.to_str()) {
            Some(slow_bpe::VOCAB_FILE) => &[
                slow_bpe::MERGES_FILE,
                tokenizer_files::CONFIG_FILE,
                tokenizer_files::SPECIAL_MAP_FILE,
                tokenizer_files::ADDED_FILE,
            ],
            Some(spm::MODEL_FILE) => &tokenizer_files::SETTINGS_FILES,
            _ => &[],
        };
        names.iter().map(|n| dir.join(n)).collect()
    }

    /// Token ids of `text`, no BOS/EOS added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("{}: tokenization failed: {e}", self.path.display()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| anyhow!("{}: decoding failed: {e}", self.path.display()))
    }

    /// Whether cutting a text at paragraph boundaries (see `data::dataset::split_paragraphs`)
    /// tokenizes exactly like the whole text: true for GPT-2-style byte-level BPE (regex on,
    /// no prefix space, no normalizer). Others are tokenized one file at a time.
    pub fn paragraph_cuts_are_exact(&self) -> bool {
        use tokenizers::pre_tokenizers::PreTokenizerWrapper;
        let byte_level = matches!(
            self.inner.get_pre_tokenizer(),
            Some(PreTokenizerWrapper::ByteLevel(b)) if b.use_regex && !b.add_prefix_space
        );
        byte_level && self.inner.get_normalizer().is_none()
    }

    /// One past the largest id the tokenizer can produce (added tokens included).
    pub fn id_bound(&self) -> usize {
        self.inner
            .get_vocab(true)
            .values()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0)
    }

    /// Ids of special added tokens (`<|endoftext|>`, `<s>`, …).
    pub fn special_ids(&self) -> std::collections::HashSet<u32> {
        self.inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect()
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The end-of-text id: `eos_token_id` from config.json, else a well-known EOS token.
    pub fn eos_id(&self, cfg: &ModelConfig) -> Option<u32> {
        cfg.eos_token_id.or_else(|| {
            ["<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"]
                .iter()
                .find_map(|t| self.token_id(t))
        })
    }

    /// Every id the tokenizer can emit must index a row of the embedding matrix.
    pub fn check_fits(&self, embed_rows: usize) -> Result<()> {
        let bound = self.id_bound();
        if bound > embed_rows {
            bail!(
                "{}: the tokenizer has ids up to {} but the model's embedding has only {embed_rows} rows; the tokenizer belongs to another model",
                self.path.display(),
                bound - 1
            );
        }
        Ok(())
    }
}
