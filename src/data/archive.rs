//! Zip packages of XML documents, the shape EPUB books, Word's `.docx` and OpenDocument's
//! `.odt` share: opening one, reading an entry as text, and errors that name the file, the
//! entry inside it and what to do.

use std::borrow::Cow;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::reader::Reader;

/// What kind of package a file is, for its error messages.
#[derive(Clone, Copy)]
pub(super) struct Kind {
    /// The format, as in "not a readable EPUB".
    pub name: &'static str,
    /// The file as a whole, as in "cannot read X in the book".
    pub noun: &'static str,
    /// What to do about a damaged file.
    pub redo: &'static str,
    /// What a file of this kind that is an OLE compound file (Office's container for
    /// password-protected and pre-2007 files) is, and what to do; empty: nothing particular.
    pub ole: &'static str,
}

/// An open package.
pub(super) struct Archive<'a> {
    zip: zip::ZipArchive<std::fs::File>,
    pub path: &'a Path,
    kind: Kind,
}

impl<'a> Archive<'a> {
    pub fn open(path: &'a Path, kind: Kind) -> Result<Self> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let zip = zip::ZipArchive::new(file).map_err(|e| {
            if !kind.ole.is_empty() && starts_with(path, &OLE_MAGIC) {
                return anyhow!("{}: {}", path.display(), kind.ole);
            }
            anyhow!(
                "{}: not a readable {} (it is not a zip archive: {e}); {}",
                path.display(),
                kind.name,
                kind.redo
            )
        })?;
        Ok(Self { zip, path, kind })
    }

    /// Whether the package holds an entry `name`.
    pub fn has(&self, name: &str) -> bool {
        self.zip.index_for_name(name).is_some()
    }

    /// The entry `name` as text (UTF-8, or UTF-16 with a byte-order mark).
    pub fn document(&mut self, name: &str) -> Result<String> {
        let path = self.path.display();
        let noun = self.kind.noun;
        let mut entry = self.zip.by_name(name).map_err(|e| match e {
            zip::result::ZipError::FileNotFound => anyhow!(
                "{path}: not a readable {}: it has no {name}; {}",
                self.kind.name,
                self.kind.redo
            ),
            e => anyhow!("{path}: cannot read {name} in {noun}: {e}"),
        })?;
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| anyhow!("{path}: cannot read {name} in {noun}: {e}"))?;
        super::decode_text(&bytes).map_err(|why| anyhow!("{path}: {name} in {noun} is {why}"))
    }

    /// The error for an entry `name` that is not what the format says it must be.
    pub fn damaged(&self, name: &str, why: String) -> anyhow::Error {
        anyhow!(
            "{}: not a readable {}: {name} in {}: {why}; {}",
            self.path.display(),
            self.kind.name,
            self.kind.noun,
            self.kind.redo
        )
    }
}

/// The first bytes of an OLE compound file.
pub(super) const OLE_MAGIC: [u8; 8] = [0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];

/// Whether the file at `path` starts with `magic` (false when it cannot be read).
fn starts_with(path: &Path, magic: &[u8]) -> bool {
    let mut head = vec![0; magic.len()];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && head == magic
}

/// `value` of attribute `key` (local name) of `e`, unescaped.
pub(super) fn attribute(e: &BytesStart, key: &str) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == key)
        .and_then(|a| {
            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .ok()
                .map(Cow::into_owned)
        })
}

/// The attribute `key` of the first element named `element` in `xml`.
pub(super) fn first_attribute(
    xml: &str,
    element: &str,
    key: &str,
) -> Result<Option<String>, String> {
    let mut reader = Reader::from_str(xml);
    loop {
        match reader.read_event() {
            Ok(Event::Start(e) | Event::Empty(e)) if e.local_name().as_ref() == element => {
                return Ok(attribute(&e, key));
            }
            Ok(Event::Eof) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(xml_error(&reader, e)),
        }
    }
}

/// The text an entity or character reference of an XML document stands for (`&amp;`,
/// `&#8212;`); a named entity other than XML's five is an error.
pub(super) fn entity(r: &BytesRef) -> Result<String, String> {
    if let Ok(Some(c)) = r.resolve_char_ref() {
        return Ok(c.to_string());
    }
    let name = r.to_string();
    quick_xml::escape::resolve_xml_entity(&name)
        .map(str::to_string)
        .ok_or_else(|| format!("an unknown entity &{name};"))
}

pub(super) fn xml_error(reader: &Reader<&[u8]>, e: quick_xml::Error) -> String {
    format!(
        "not well-formed XML at byte {}: {e}",
        reader.error_position()
    )
}

/// The zip path of `href` (a URL relative to the folder `base`): percent-escapes decoded,
/// any `#fragment` dropped, `.` and `..` segments resolved.
pub(super) fn resolve(base: &str, href: &str) -> String {
    let href = href.split('#').next().unwrap_or_default();
    let href = percent_decode(href);
    let mut parts: Vec<&str> = if href.starts_with('/') {
        Vec::new()
    } else {
        base.split('/').filter(|s| !s.is_empty()).collect()
    };
    for seg in href.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    parts.join("/")
}

pub(super) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

/// Writes a zip package of `files` (name, text) at `path`, `mimetype` first and stored as
/// EPUB and OpenDocument want it.
#[cfg(test)]
pub(super) fn write_zip(path: &Path, mimetype: Option<&str>, files: &[(&str, &str)]) {
    use std::io::Write;
    let mut zw = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    if let Some(mimetype) = mimetype {
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zw.start_file("mimetype", stored).unwrap();
        zw.write_all(mimetype.as_bytes()).unwrap();
    }
    for (name, text) in files {
        zw.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zw.write_all(text.as_bytes()).unwrap();
    }
    zw.finish().unwrap();
}
