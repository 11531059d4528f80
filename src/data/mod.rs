//! Text → tokens → rows: reading text files, the dataset pipeline ([`dataset`]) and blocks
//! for evaluation.

pub mod dataset;

use std::path::Path;

use anyhow::{Context, Result, bail};

/// Reads a UTF-8 text file, normalising CRLF (and lone CR) to LF. Invalid UTF-8 is an error
/// naming the file and the byte offset.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: not valid UTF-8 at byte offset {}; convert the file to UTF-8 (e.g. `iconv -t UTF-8`)",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    Ok(normalize_newlines(text))
}

/// Reads little-endian u32 token ids (the token cache and a run's `heldout.u32`), checking
/// every id against the vocabulary.
pub fn read_token_file(path: &Path, vocab: usize) -> Result<Vec<u32>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if bytes.len() % 4 != 0 {
        bail!(
            "{}: not a token file (its size is not a multiple of 4 bytes)",
            path.display()
        );
    }
    let ids: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        bail!(
            "{}: token id {bad} is outside the model's vocabulary of {vocab}; the file was made for another model",
            path.display()
        );
    }
    Ok(ids)
}

/// Writes little-endian u32 token ids atomically.
pub fn write_token_file(path: &Path, ids: &[u32]) -> Result<()> {
    let bytes: Vec<u8> = ids.iter().flat_map(|x| x.to_le_bytes()).collect();
    crate::export::write_atomic(path, &bytes)
}

/// CRLF and lone CR → LF.
pub fn normalize_newlines(text: String) -> String {
    if !text.contains('\r') {
        return text;
    }
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// Consecutive, non-overlapping blocks of `block` tokens (the tail that does not fill a block
/// is dropped), at most `max_blocks` of them.
pub fn blocks(tokens: &[u32], block: usize, max_blocks: Option<usize>) -> Result<Vec<&[u32]>> {
    if block < 2 {
        bail!("block size {block} is too small: it must be at least 2 tokens");
    }
    let mut out: Vec<&[u32]> = tokens.chunks_exact(block).collect();
    if let Some(m) = max_blocks {
        out.truncate(m);
    }
    Ok(out)
}
