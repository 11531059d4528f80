//! The model's tokenizer (`tokenizer.json`, GPT-2's slow `vocab.json` + `merges.txt`, or a
//! sentencepiece `tokenizer.model`), used without special tokens: softtune never adds BOS; the
//! dataset pipeline appends the model's real EOS id after each file.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};

use super::config::ModelConfig;
use super::{slow_bpe, spm, tokenizer_files};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// How the text after a paragraph cut is tokenized, when cutting there is exact (see
    /// [`Tokenizer::paragraph_cuts_are_exact`]).
    continuation: Option<Continuation>,
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
    /// just after a newline) and tokenizing the first piece with [`Tokenizer::encode`], the
    /// others with [`Tokenizer::encode_continuation`], gives the ids of the whole text. True
    /// for GPT-2-style byte-level BPE (regex on, no prefix space, no normalizer) and for
    /// Llama-style BPE whose newline never merges, in both the sentencepiece-converted
    /// (Metaspace) and the Llama-2 (`Prepend` normalizer) form (see `continuation_of`). Others
    /// tokenize one file at a time.
    pub fn paragraph_cuts_are_exact(&self) -> bool {
        self.continuation.is_some()
    }

    /// Token ids of `text` that continues a text cut just after a newline;
    /// [`Tokenizer::encode`] where cuts are not exact.
    pub fn encode_continuation(&self, text: &str) -> Result<Vec<u32>> {
        match &self.continuation {
            None | Some(Continuation::AsIs) => self.encode(text),
            Some(Continuation::AfterNewline { newline }) => {
                let ids = self.encode(&format!("\n{text}"))?;
                match ids.strip_prefix(newline.as_slice()) {
                    Some(rest) => Ok(rest.to_vec()),
                    None => bail!(
                        "{}: the text after a paragraph break did not tokenize as a continuation; this is a softtune bug, please report it with the tokenizer file",
                        self.path.display()
                    ),
                }
            }
        }
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

/// How the text after a cut just after a newline is tokenized so that the two sides give
/// the ids of the whole.
enum Continuation {
    /// As a text of its own: GPT-2's byte-level BPE, whose regex pre-tokenizer splits there in
    /// both cases.
    AsIs,
    /// Behind a newline, whose ids (`newline`, those of `"\n"` alone) are then dropped. The
    /// newline puts the text where it stood in the whole: not at the start of its chunk, so
    /// no word-boundary prefix (`▁`) goes before it. That needs a newline no merge crosses.
    AfterNewline { newline: Vec<u32> },
}

/// How to tokenize the text after a cut just after a newline (see [`Continuation`]), where
/// tokenizing the two sides apart gives the ids of the whole:
/// - GPT-2's byte-level BPE (regex on, no prefix space, no normalizer): as it is;
/// - a BPE with no pre-tokenizer or one Metaspace (no split, the prefix at any scheme), no
///   normalizer or only `Prepend` and plain-string `Replace` ones without a newline (Llama-2's
///   `tokenizer.json`), with byte fallback and no piece holding a newline (other than a
///   newline alone), so no merge crosses a newline, and added tokens that neither strip
///   whitespace nor hold a newline: behind a newline.
fn continuation_of(inner: &tokenizers::Tokenizer) -> Option<Continuation> {
    use tokenizers::ModelWrapper;
    use tokenizers::normalizers::NormalizerWrapper;
    use tokenizers::pre_tokenizers::PreTokenizerWrapper;

    fn newline_free(n: &NormalizerWrapper) -> bool {
        match n {
            NormalizerWrapper::Prepend(p) => !p.prepend.contains('\n'),
            NormalizerWrapper::Replace(r) => {
                // `Replace`'s pattern is private; its serialized form,
                // `{"pattern": {"String": " "}, "content": "▁"}`, names it.
                let json = serde_json::to_value(r).unwrap_or_default();
                let pattern = json["pattern"]["String"].as_str();
                matches!(pattern, Some(p) if !p.is_empty() && !p.contains('\n'))
                    && !r.content.contains('\n')
            }
            NormalizerWrapper::Sequence(seq) => seq.as_ref().iter().all(newline_free),
            _ => false,
        }
    }

    match inner.get_pre_tokenizer() {
        Some(PreTokenizerWrapper::ByteLevel(b))
            if b.use_regex && !b.add_prefix_space && inner.get_normalizer().is_none() =>
        {
            return Some(Continuation::AsIs);
        }
        None => {}
        Some(PreTokenizerWrapper::Metaspace(m)) if !m.get_split() => {}
        _ => return None,
    }
    if !inner.get_normalizer().is_none_or(newline_free) {
        return None;
    }
    let ModelWrapper::BPE(bpe) = inner.get_model() else {
        return None;
    };
    let newline_merges = inner
        .get_vocab(false)
        .keys()
        .any(|t| t.contains('\n') && t != "\n");
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
    let newline = inner.encode("\n", false).ok()?.get_ids().to_vec();
    (!newline.is_empty()).then_some(Continuation::AfterNewline { newline })
}
