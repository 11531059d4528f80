//! Text → tokens → rows: reading text files, the dataset pipeline ([`dataset`]) and blocks
//! for evaluation.

pub mod dataset;
pub mod epub;

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

/// Reads a text file ([`decode_text`]), normalising CRLF (and lone CR) to LF, or the text of
/// an EPUB book ([`epub`]). A file that does not decode is an error naming the file and the
/// byte offset.
pub fn read_text(path: &Path) -> Result<String> {
    if epub::is_epub(path) {
        return epub::read_text(path).map(normalize_newlines);
    }
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let text = decode_text(&bytes).map_err(|why| anyhow!("{}: {why}", path.display()))?;
    Ok(normalize_newlines(text))
}

/// A text file's bytes as text: UTF-8, without the byte-order mark some editors put first
/// (Windows Notepad's "UTF-8 with BOM"), or UTF-16 when a UTF-16 byte-order mark opens it
/// (Notepad's "Unicode"). Otherwise the error says where the file stops being UTF-8, or
/// UTF-16, and what to do.
pub fn decode_text(bytes: &[u8]) -> std::result::Result<String, String> {
    if let Some(rest) = bytes.strip_prefix(b"\xEF\xBB\xBF") {
        return utf8(rest, 3);
    }
    if let Some(rest) = bytes.strip_prefix(b"\xFF\xFE") {
        return utf16(rest, u16::from_le_bytes);
    }
    if let Some(rest) = bytes.strip_prefix(b"\xFE\xFF") {
        return utf16(rest, u16::from_be_bytes);
    }
    utf8(bytes, 0)
}

/// `bytes` as UTF-8; `skipped` bytes came before them in the file.
fn utf8(bytes: &[u8], skipped: usize) -> std::result::Result<String, String> {
    std::str::from_utf8(bytes).map(str::to_string).map_err(|e| {
        format!(
            "not valid UTF-8 at byte offset {}; save it as UTF-8 (from Latin-1: `iconv -f LATIN1 -t UTF-8`)",
            skipped + e.valid_up_to()
        )
    })
}

/// `bytes` (after a 2-byte byte-order mark) as UTF-16 code units read by `unit`.
fn utf16(bytes: &[u8], unit: fn([u8; 2]) -> u16) -> std::result::Result<String, String> {
    if !bytes.len().is_multiple_of(2) {
        return Err(format!(
            "UTF-16 text (it starts with a UTF-16 byte-order mark) of an odd length, {} bytes: the file is cut short",
            bytes.len() + 2
        ));
    }
    let units = bytes.chunks_exact(2).map(|c| unit([c[0], c[1]]));
    let mut text = String::with_capacity(bytes.len() / 2);
    for (i, c) in char::decode_utf16(units).enumerate() {
        match c {
            Ok(c) => text.push(c),
            Err(e) => {
                // The bad unit's offset in the file: after the mark and the units before it.
                let at = 2 + 2 * (i + text.chars().filter(|c| c.len_utf16() == 2).count());
                return Err(format!(
                    "not valid UTF-16 at byte offset {at} (a lone surrogate, {:#06x}); save it as UTF-8",
                    e.unpaired_surrogate()
                ));
            }
        }
    }
    Ok(text)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16(text: &str, le: bool) -> Vec<u8> {
        let mark: &[u8] = if le { b"\xFF\xFE" } else { b"\xFE\xFF" };
        let units = text
            .encode_utf16()
            .flat_map(|u| if le { u.to_le_bytes() } else { u.to_be_bytes() });
        mark.iter().copied().chain(units).collect()
    }

    #[test]
    fn byte_order_marks_are_read_and_dropped() {
        let text = "Café, naïve — 𝔉raktur\nline two";
        assert_eq!(decode_text(text.as_bytes()).unwrap(), text);
        let with_bom = [b"\xEF\xBB\xBF".as_slice(), text.as_bytes()].concat();
        assert_eq!(decode_text(&with_bom).unwrap(), text);
        assert_eq!(decode_text(&utf16(text, true)).unwrap(), text);
        assert_eq!(decode_text(&utf16(text, false)).unwrap(), text);
        // A mark alone is an empty text; a BOM in the middle of a file stays (it is text).
        assert_eq!(decode_text(b"\xFF\xFE").unwrap(), "");
        let inner = "a\u{feff}b";
        assert_eq!(decode_text(inner.as_bytes()).unwrap(), inner);
    }

    #[test]
    fn undecodable_files_say_where_and_what_to_do() {
        // Latin-1 "café": the offset counts from the start of the file, BOM included.
        let e = decode_text(b"caf\xe9\n").unwrap_err();
        assert!(
            e.contains("UTF-8 at byte offset 3") && e.contains("iconv"),
            "{e}"
        );
        let e = decode_text(b"\xEF\xBB\xBFcaf\xe9\n").unwrap_err();
        assert!(e.contains("byte offset 6"), "{e}");
        // UTF-16 cut in the middle of a unit; a lone surrogate after "a𝔉" (3 units).
        let mut cut = utf16("abc", true);
        cut.pop();
        let e = decode_text(&cut).unwrap_err();
        assert!(e.contains("odd length") && e.contains("7 bytes"), "{e}");
        let mut lone = utf16("a𝔉", true);
        lone.extend([0x00, 0xD8, b'b', 0]);
        let e = decode_text(&lone).unwrap_err();
        assert!(
            e.contains("UTF-16 at byte offset 8") && e.contains("0xd800"),
            "{e}"
        );
    }

    #[test]
    fn files_are_named_in_errors_and_newlines_normalised() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("notepad.txt");
        std::fs::write(&good, utf16("one\r\ntwo\rthree", true)).unwrap();
        assert_eq!(read_text(&good).unwrap(), "one\ntwo\nthree");
        let bad = dir.path().join("latin1.txt");
        std::fs::write(&bad, b"caf\xe9").unwrap();
        let e = read_text(&bad).unwrap_err().to_string();
        assert!(e.starts_with(&bad.display().to_string()), "{e}");
    }
}
