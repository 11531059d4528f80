//! Text → tokens → rows: reading text files, the dataset pipeline ([`dataset`]) and blocks
//! for evaluation.

pub mod ao3;
mod archive;
pub mod dataset;
pub mod docx;
pub mod epub;
pub mod fanficfare;
pub mod gutenberg;
pub mod html;
pub mod mojibake;
pub mod odt;
mod paragraphs;
pub mod rtf;
pub mod scrivener;
pub mod stories;
pub mod unwrap;

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

/// A kind of document read from its package rather than as a text file, known by its
/// file name's extension.
pub struct Document {
    /// What one is called, as in "3 EPUB book(s)".
    pub what: &'static str,
    /// The file name's extensions (any case).
    pub extensions: &'static [&'static str],
    /// The dataset glob that takes them.
    pub glob: &'static str,
    /// The version of the text extraction (enters the token cache's key).
    pub version: &'static str,
    read: fn(&Path) -> Result<String>,
}

impl Document {
    /// Whether `path` names a document of this kind.
    pub fn is(&self, path: &Path) -> bool {
        has_extension(path, self.extensions)
    }
}

/// Whether `path`'s extension is one of `extensions` (any case).
fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .is_some_and(|e| extensions.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// The documents softtune reads besides text files.
pub const DOCUMENTS: [Document; 6] = [
    Document {
        what: "EPUB book",
        extensions: &["epub"],
        glob: "*.epub",
        version: epub::TEXT_VERSION,
        read: epub::read_text,
    },
    Document {
        what: "Word document",
        extensions: &["docx"],
        glob: "*.docx",
        version: docx::TEXT_VERSION,
        read: docx::read_text,
    },
    Document {
        what: "OpenDocument text",
        extensions: &["odt"],
        glob: "*.odt",
        version: odt::TEXT_VERSION,
        read: odt::read_text,
    },
    Document {
        what: "HTML page",
        extensions: html::EXTENSIONS,
        glob: "*.htm*",
        version: html::TEXT_VERSION,
        read: html::read_text,
    },
    Document {
        what: "RTF document",
        extensions: &["rtf"],
        glob: "*.rtf",
        version: rtf::TEXT_VERSION,
        read: rtf::read_text,
    },
    Document {
        what: "Scrivener project",
        extensions: &["scrivx"],
        glob: "*.scrivx",
        version: scrivener::TEXT_VERSION,
        read: scrivener::read_text,
    },
];

/// The kind of document `path` names, if it is not a text file.
pub fn document_of(path: &Path) -> Option<&'static Document> {
    DOCUMENTS.iter().find(|d| d.is(path))
}

/// Reads a text file ([`decode_text`]), normalising CRLF (and lone CR) to LF, or the text of
/// an EPUB book ([`epub`]), a Word document ([`docx`]), an OpenDocument text ([`odt`]), an
/// HTML page ([`html`]), an RTF document ([`rtf`]) or a Scrivener project's manuscript
/// ([`scrivener`], by its `.scrivx` file or its `.scriv` folder). A
/// file that does not decode is an error naming the file and the byte offset; one in another
/// format (a PDF, say) is an error naming it and what to do.
///
/// The text of a text file or an HTML page that was decoded the wrong way before it was
/// saved (`â€™` for `’`) has its characters put back ([`mojibake`]). A book from Project
/// Gutenberg loses the header and license around its text ([`gutenberg`]).
pub fn read_text(path: &Path) -> Result<String> {
    Ok(read_text_repaired(path)?.0)
}

/// [`read_text`], and what [`mojibake::repair`] did to the text, if anything.
fn read_text_repaired(path: &Path) -> Result<(String, Option<mojibake::Repaired>)> {
    let (text, repaired) = if scrivener::is_package(path) && path.is_dir() {
        (scrivener::read_text(path)?, None)
    } else if html::is_page(path) {
        html::read_text_repaired(path)?
    } else if let Some(document) = document_of(path) {
        ((document.read)(path)?, None)
    } else {
        let bytes =
            std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let text = decode_text(&bytes).map_err(|why| anyhow!("{}: {why}", path.display()))?;
        mojibake::repaired(text)
    };
    Ok((gutenberg::strip(normalize_newlines(text)), repaired))
}

/// A dataset file's text as training reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct FileText {
    /// The text: [`read_text`]'s, with its wrapped lines joined when the file is
    /// hard-wrapped and `unwrap` was asked for.
    pub text: String,
    /// The width the file's text is hard-wrapped at ([`unwrap::detect`]), whether or not
    /// its lines were joined.
    pub wrapped: Option<usize>,
    /// Whether the text is cut into stories at `<|endoftext|>` separators ([`stories`]): a
    /// text file that holds one.
    pub separated: bool,
    /// What putting back characters decoded the wrong way did ([`mojibake`]), if the text
    /// had any.
    pub repaired: Option<mojibake::Repaired>,
}

impl FileText {
    /// The stories training reads from the file, each to be followed by the model's EOS
    /// token: the text cut at its separators ([`stories::split`]) when it has them, else
    /// the whole text.
    pub fn stories(&self) -> Vec<&str> {
        if self.separated {
            stories::split(&self.text)
        } else {
            vec![self.text.as_str()]
        }
    }
}

/// Whether `path` is read as a text file: not a book, document or Scrivener project.
pub fn is_text_file(path: &Path) -> bool {
    document_of(path).is_none() && !scrivener::is_package(path)
}

/// Reads a dataset file ([`read_text`]) and, when `unwrap_lines` is on and the file is
/// hard-wrapped, joins its wrapped lines ([`unwrap`]). A text file holding `<|endoftext|>`
/// is [`FileText::separated`].
pub fn read_dataset_text(path: &Path, unwrap_lines: bool) -> Result<FileText> {
    let (text, repaired) = read_text_repaired(path)?;
    let wrapped = unwrap::detect(&text);
    let text = match wrapped {
        Some(width) if unwrap_lines => unwrap::join(&text, width),
        _ => text,
    };
    let separated = is_text_file(path) && text.contains(stories::SEPARATOR);
    Ok(FileText {
        text,
        wrapped,
        separated,
        repaired,
    })
}

/// A text file's bytes as text: UTF-8, without the byte-order mark some editors put first
/// (Windows Notepad's "UTF-8 with BOM"), or UTF-16 when a UTF-16 byte-order mark opens it
/// (Notepad's "Unicode"). Otherwise the error says where the file stops being UTF-8, or
/// UTF-16, and what to do; a file in a format that is not text (PDF, RTF, Word 97–2003, a
/// zip archive, a Kindle book), and UTF-16 without a byte-order mark (NUL characters), is
/// an error saying what it is and how to get its text.
pub fn decode_text(bytes: &[u8]) -> std::result::Result<String, String> {
    if let Some(why) = foreign(bytes) {
        return Err(why.to_string());
    }
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

/// What a file that is not text is, by its first bytes, and what to do.
pub(super) fn foreign(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"%PDF-") {
        Some(
            "a PDF document, not text; extract its text (`pdftotext FILE.pdf FILE.txt`) and check it for page headers and broken lines, or use the book's EPUB",
        )
    } else if bytes.starts_with(b"{\\rtf") {
        Some(
            "rich text (RTF, as WordPad and TextEdit save it), not plain text; name it .rtf and softtune reads its text",
        )
    } else if bytes.starts_with(&archive::OLE_MAGIC) {
        Some(
            "a Word 97–2003 (.doc) or other older Office file, not text; open it and save it as .docx or as plain text",
        )
    } else if bytes.starts_with(b"PK\x03\x04") {
        Some(
            "a zip archive, not text; unzip it, or, if it is a Word, OpenDocument or EPUB file, name it .docx, .odt or .epub",
        )
    } else if bytes.get(60..68) == Some(b"BOOKMOBI") {
        Some(
            "a Kindle book (MOBI/AZW), not text; convert it to EPUB (Calibre: `ebook-convert BOOK.azw3 BOOK.epub`; DRM-protected books cannot be read)",
        )
    } else {
        None
    }
}

/// `bytes` as UTF-8; `skipped` bytes came before them in the file.
fn utf8(bytes: &[u8], skipped: usize) -> std::result::Result<String, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "not valid UTF-8 at byte offset {}; save it as UTF-8 (from Latin-1: `iconv -f LATIN1 -t UTF-8`)",
            skipped + e.valid_up_to()
        )
    })?;
    if let Some(at) = text.find('\0') {
        return Err(format!(
            "not text: a NUL character at byte offset {}; if it is UTF-16 without a byte-order mark, save it as UTF-8 (`iconv -f UTF-16LE -t UTF-8`)",
            skipped + at
        ));
    }
    Ok(text.to_string())
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

    /// Files that are not text (a PDF under `glob = "*"`, an RTF named .txt, UTF-16
    /// without its byte-order mark) say what they are and how to get their text, instead of
    /// being trained on as garbage or failing as "not UTF-8".
    #[test]
    fn files_in_other_formats_say_what_they_are() {
        let mut mobi = vec![0u8; 80];
        mobi[60..68].copy_from_slice(b"BOOKMOBI");
        let mut ole = archive::OLE_MAGIC.to_vec();
        ole.extend([0; 8]);
        let cases: [(&[u8], &str); 5] = [
            (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "pdftotext"),
            (b"{\\rtf1\\ansi\\deff0 {\\fonttbl}}", "RTF"),
            (&ole, "Word 97"),
            (b"PK\x03\x04\x14\x00", "zip archive"),
            (&mobi, "Kindle"),
        ];
        for (bytes, what) in cases {
            let e = decode_text(bytes).unwrap_err();
            assert!(e.contains(what), "{what}: {e}");
        }
        // "Hi" in UTF-16LE without a byte-order mark is valid UTF-8 with NULs.
        let e = decode_text(b"H\0i\0").unwrap_err();
        assert!(
            e.contains("NUL character at byte offset 1") && e.contains("UTF-16"),
            "{e}"
        );
        // A mark of a format later in a text is text.
        assert_eq!(
            decode_text(b"see %PDF- and {\\rtf").unwrap(),
            "see %PDF- and {\\rtf"
        );
        let dir = tempfile::tempdir().unwrap();
        let pdf = dir.path().join("novel.txt");
        std::fs::write(&pdf, b"%PDF-1.4\n").unwrap();
        let e = read_text(&pdf).unwrap_err().to_string();
        assert!(
            e.starts_with(&pdf.display().to_string()) && e.contains("a PDF"),
            "{e}"
        );
    }
}
