//! GPT-2's byte-level BPE built from its *slow* tokenizer files, for models that ship
//! `vocab.json` and `merges.txt` but no `tokenizer.json` (many KoboldAI-era OPT, GPT-J and
//! fairseq-dense fine-tunes).
//!
//! What is built is what transformers' `GPT2Tokenizer` builds from the same files: a BPE model
//! (no unknown token, no subword prefix or suffix), the GPT-2 byte-level pre-tokenizer and
//! decoder (`add_prefix_space` from `tokenizer_config.json`, default false), and the added
//! tokens of the settings files ([`super::tokenizer_files`]; GPT2Tokenizer's `<|endoftext|>`
//! for bos, eos and unk when none is named).

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use tokenizers::Tokenizer;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

use super::tokenizer_files::Settings;

/// GPT-2's vocabulary file (token → id).
pub const VOCAB_FILE: &str = "vocab.json";
/// GPT-2's merges file (one merge per line after a `#version` header).
pub const MERGES_FILE: &str = "merges.txt";
/// Whether `dir` holds the two files a GPT-2 BPE is built from.
pub fn present(dir: &Path) -> bool {
    dir.join(VOCAB_FILE).is_file() && dir.join(MERGES_FILE).is_file()
}

/// Builds the tokenizer of the slow files in `dir`. Errors name the file and say what to do.
pub fn build(dir: &Path) -> Result<Tokenizer> {
    let vocab = dir.join(VOCAB_FILE);
    let merges = dir.join(MERGES_FILE);
    let settings = Settings::read(dir)?;
    if let Some(class) = settings.tokenizer_class()
        && !class.starts_with("GPT2Tokenizer")
    {
        bail!(
            "{}: tokenizer_class is {class}, and the model has no tokenizer.json; softtune \
             builds a tokenizer from vocab.json and merges.txt only for GPT2Tokenizer. Make \
             tokenizer.json in Python: AutoTokenizer.from_pretrained(\"<model>\")\
             .save_pretrained(\"<folder>\"), put it beside config.json and point --model there",
            settings.config_path().display()
        );
    }
    let add_prefix_space = settings.flag("add_prefix_space")?.unwrap_or(false);

    let model = BPE::from_file(&path_str(&vocab)?, &path_str(&merges)?)
        .build()
        .map_err(|e| {
            anyhow!(
                "{} / {}: cannot build GPT-2's tokenizer: {e}; download both files again",
                vocab.display(),
                merges.display()
            )
        })?;
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(ByteLevel::new(add_prefix_space, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));

    // GPT2Tokenizer's defaults for the roles no file names.
    let eot = "<|endoftext|>";
    settings.add_tokens(
        &mut tok,
        Vec::new(),
        &[("bos_token", eot), ("eos_token", eot), ("unk_token", eot)],
        false,
    )?;
    Ok(tok)
}

fn path_str(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{}: the path is not valid UTF-8", p.display()))
}
