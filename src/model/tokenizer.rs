//! The model's tokenizer (`tokenizer.json`, GPT-2's slow `vocab.json` + `merges.txt`, or a
//! sentencepiece `tokenizer.model`), used without special tokens: softtune never adds BOS; the
//! dataset pipeline appends the model's real EOS id after each file.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};

use super::config::ModelConfig;
use super::{slow_bpe, spm, tokenizer_files};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// What tokenizes the text after a paragraph cut, when cutting there is exact (see
    /// [`Tokenizer::paragraph_cuts_are_exact`]).
    continuation: Option<tokenizers::Tokenizer>,
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
            continuation: continuation_of(&inner),
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

    /// Whether cutting a text at paragraph boundaries (see `data::dataset::split_paragraphs`:
    /// after a newline) and tokenizing the first piece with [`Tokenizer::encode`], the others
    /// with [`Tokenizer::encode_continuation`], gives the ids of the whole text. True for
    /// GPT-2-style byte-level BPE (regex on, no prefix space, no normalizer) and for Llama-style
    /// BPE whose newline never merges (see `continuation_of`). Others tokenize one file at a
    /// time.
    pub fn paragraph_cuts_are_exact(&self) -> bool {
        self.continuation.is_some()
    }

    /// Token ids of `text` that continues a text cut at a paragraph boundary (no word-boundary
    /// prefix before it); [`Tokenizer::encode`] where cuts are not exact.
    pub fn encode_continuation(&self, text: &str) -> Result<Vec<u32>> {
        let tok = self.continuation.as_ref().unwrap_or(&self.inner);
        let enc = tok
            .encode(text, false)
            .map_err(|e| anyhow!("{}: tokenization failed: {e}", self.path.display()))?;
        Ok(enc.get_ids().to_vec())
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

/// The tokenizer for the text after a cut just after a newline, where tokenizing the two
/// sides apart gives the ids of the whole:
/// - GPT-2's byte-level BPE (regex on, no prefix space, no normalizer): the tokenizer itself;
/// - a BPE behind one Metaspace pre-tokenizer (no split, the prefix once or never, no
///   normalizer), with byte fallback and no piece holding a newline, so no merge crosses a
///   newline, and added tokens that neither strip whitespace nor hold a newline: the same
///   tokenizer without the prefix (the whole text had it only at its start).
fn continuation_of(inner: &tokenizers::Tokenizer) -> Option<tokenizers::Tokenizer> {
    use tokenizers::ModelWrapper;
    use tokenizers::pre_tokenizers::PreTokenizerWrapper;
    use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
    if inner.get_normalizer().is_some() {
        return None;
    }
    match inner.get_pre_tokenizer() {
        Some(PreTokenizerWrapper::ByteLevel(b)) if b.use_regex && !b.add_prefix_space => {
            Some(inner.clone())
        }
        Some(PreTokenizerWrapper::Metaspace(m))
            if !m.get_split()
                && matches!(
                    m.get_prepend_scheme(),
                    PrependScheme::First | PrependScheme::Never
                ) =>
        {
            let ModelWrapper::BPE(bpe) = inner.get_model() else {
                return None;
            };
            let newline_merges = inner.get_vocab(false).keys().any(|t| t.contains('\n'));
            let added_ok = inner
                .get_added_tokens_decoder()
                .values()
                .all(|t| !t.lstrip && !t.rstrip && !t.single_word && !t.content.contains('\n'));
            if !bpe.byte_fallback
                || bpe.dropout.is_some()
                || bpe.ignore_merges
                || newline_merges
                || !added_ok
            {
                return None;
            }
            let mut tok = inner.clone();
            tok.with_pre_tokenizer(Some(Metaspace::new(
                m.get_replacement(),
                PrependScheme::Never,
                false,
            )));
            Some(tok)
        }
        _ => None,
    }
}
