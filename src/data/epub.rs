//! EPUB books as dataset text: the documents of the book's reading order (the package's
//! spine), each XHTML document's visible text ([`super::html`]: block elements become
//! paragraphs, notes and page-break markers are left out), a blank line between documents.
//! Spine documents marked `linear="no"` (notes, answer keys: content the reading system
//! shows out of the main flow) are left out, as are the table of contents (EPUB 3's
//! navigation document when the spine lists it, and any element whose `epub:type` is a
//! table of contents, landmarks or a list of pages, illustrations or tables), an Archive
//! of Our Own work's preface, notes and afterword ([`super::ao3`]), and the title page,
//! table of contents, update log and chapter notes of a story saved by FanFicFare
//! ([`super::fanficfare`]).
//!
//! A DRM-protected book (its documents listed as encrypted in `META-INF/encryption.xml`,
//! other than the font obfuscation EPUB allows) is an error, as is a damaged one; every
//! error names the book and, where there is one, the document inside it.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{Result, bail};
use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;

use super::ao3;
use super::archive::{Archive, Kind, attribute, first_attribute, resolve, xml_error};
use super::html::{Attrs, Visible};

/// Bumped when the text made from a book changes, so token caches made by an older
/// extraction are not reused (it enters the dataset's cache key).
pub const TEXT_VERSION: &str = "epub-text-4";

/// The text of the book at `path` (see the module documentation).
pub fn read_text(path: &Path) -> Result<String> {
    let mut book = Book(Archive::open(path, KIND)?);
    book.text()
}

const KIND: Kind = Kind {
    name: "EPUB",
    noun: "the book",
    redo: "download or export the book again",
    ole: "",
};

struct Book<'a>(Archive<'a>);

/// Encryption algorithms EPUB uses to obfuscate embedded fonts; anything else encrypted is
/// DRM.
const FONT_OBFUSCATION: [&str; 2] = [
    "http://www.idpf.org/2008/embedding",
    "http://ns.adobe.com/pdf/enc#RC",
];

impl Book<'_> {
    fn text(&mut self) -> Result<String> {
        let book = &mut self.0;
        let container = book.document("META-INF/container.xml")?;
        let package = first_attribute(&container, "rootfile", "full-path")
            .map_err(|e| book.damaged("META-INF/container.xml", e))?
            .ok_or_else(|| {
                book.damaged(
                    "META-INF/container.xml",
                    "it names no package document (no <rootfile full-path=\"…\">)".into(),
                )
            })?;
        let encrypted = self.encrypted()?;
        let book = &mut self.0;
        let opf = book.document(&package)?;
        let spine = spine(&opf, &package).map_err(|e| book.damaged(&package, e))?;
        let mut documents = Vec::with_capacity(spine.len());
        for href in spine {
            if encrypted.contains(&href) {
                bail!(
                    "{}: the book is protected by DRM ({href} is encrypted); softtune reads DRM-free EPUBs only",
                    book.path.display()
                );
            }
            let xhtml = book.document(&href)?;
            documents.push((href, xhtml));
        }
        // An AO3 work's preface is in its first document only; its notes are in all.
        let ao3 = ao3::is_work_package(&opf) || documents.iter().any(|(_, d)| ao3::is_work(d));
        let mut out = String::new();
        for (href, xhtml) in documents {
            let text = xhtml_text(&xhtml, ao3).map_err(|e| book.damaged(&href, e))?;
            if !text.is_empty() {
                if !out.is_empty() {
                    out.push_str("\n\n");
                }
                out.push_str(&text);
            }
        }
        if out.is_empty() {
            bail!(
                "{}: the book has no text in its reading order (only images?); softtune learns from text",
                book.path.display()
            );
        }
        Ok(out)
    }

    /// The documents `META-INF/encryption.xml` lists as encrypted, other than obfuscated
    /// fonts (none when the file is absent).
    fn encrypted(&mut self) -> Result<HashSet<String>> {
        const NAME: &str = "META-INF/encryption.xml";
        let book = &mut self.0;
        if !book.has(NAME) {
            return Ok(HashSet::new());
        }
        let xml = book.document(NAME)?;
        let mut reader = Reader::from_str(&xml);
        let mut out = HashSet::new();
        let mut algorithm = String::new();
        loop {
            match reader.read_event() {
                Ok(Event::Start(e) | Event::Empty(e)) => match e.local_name().as_ref() {
                    "EncryptedData" => algorithm.clear(),
                    "EncryptionMethod" => {
                        algorithm = attribute(&e, "Algorithm").unwrap_or_default();
                    }
                    "CipherReference" => {
                        if let Some(uri) = attribute(&e, "URI")
                            && !FONT_OBFUSCATION.contains(&algorithm.as_str())
                        {
                            out.insert(resolve("", &uri));
                        }
                    }
                    _ => {}
                },
                Ok(Event::Eof) => return Ok(out),
                Ok(_) => {}
                Err(e) => return Err(book.damaged(NAME, xml_error(&reader, e))),
            }
        }
    }
}

/// The zip paths of the spine's documents in reading order (`linear="no"` and the
/// navigation document left out), read from the package document at `package`.
fn spine(opf: &str, package: &str) -> Result<Vec<String>, String> {
    let mut reader = Reader::from_str(opf);
    let mut manifest: HashMap<String, (String, String)> = HashMap::new();
    let mut navigation: HashSet<String> = HashSet::new();
    let mut order: Vec<String> = Vec::new();
    let mut in_spine = false;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e) | Event::Empty(e)) => match e.local_name().as_ref() {
                "item" => {
                    if let (Some(id), Some(href)) = (attribute(&e, "id"), attribute(&e, "href")) {
                        let media = attribute(&e, "media-type").unwrap_or_default();
                        // EPUB 3's navigation document (the table of contents), which
                        // some books also list in the spine.
                        if attribute(&e, "properties")
                            .is_some_and(|p| p.split_ascii_whitespace().any(|p| p == "nav"))
                        {
                            navigation.insert(id.clone());
                        }
                        manifest.insert(id, (href, media));
                    }
                }
                "spine" => in_spine = true,
                "itemref" if in_spine => {
                    let linear = attribute(&e, "linear").unwrap_or_default();
                    if let Some(id) = attribute(&e, "idref")
                        && linear.trim() != "no"
                    {
                        order.push(id);
                    }
                }
                _ => {}
            },
            Ok(Event::End(e)) if e.local_name().as_ref() == "spine" => in_spine = false,
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => return Err(xml_error(&reader, e)),
        }
    }
    if order.is_empty() {
        return Err("its spine lists no documents".into());
    }
    let base = package.rsplit_once('/').map_or("", |(dir, _)| dir);
    let mut out = Vec::new();
    for id in order {
        let (href, media) = manifest
            .get(&id)
            .ok_or_else(|| format!("the spine names \"{id}\", which the manifest lacks"))?;
        // EPUB 3 allows other content (SVG) in the spine; it holds no prose to learn from.
        if matches!(media.as_str(), "application/xhtml+xml" | "text/html" | "")
            && !navigation.contains(&id)
        {
            out.push(resolve(base, href));
        }
    }
    Ok(out)
}

/// The visible text of an XHTML document (see [`super::html`]); `ao3`: the book is an
/// Archive of Our Own download ([`super::ao3`]).
fn xhtml_text(xhtml: &str, ao3: bool) -> Result<String, String> {
    let mut reader = Reader::from_str(xhtml);
    let config = reader.config_mut();
    // Books are often hand-made: tolerate a stray `&` and mismatched end tags.
    config.allow_dangling_amp = true;
    config.check_end_names = false;
    config.allow_unmatched_ends = true;
    let mut out = Visible::new(ao3);
    loop {
        let event = reader.read_event().map_err(|e| xml_error(&reader, e))?;
        match event {
            Event::Start(e) => start(&mut out, &e),
            Event::Empty(e) => {
                start(&mut out, &e);
                out.end(e.local_name().as_ref());
            }
            Event::End(e) => out.end(e.local_name().as_ref()),
            Event::Text(t) => out.text(&t.xml10_content()),
            Event::CData(t) => out.text(&t),
            Event::GeneralRef(r) => {
                let name = r.to_string();
                match r.resolve_char_ref() {
                    Ok(Some(c)) => out.text(c.encode_utf8(&mut [0; 4])),
                    Ok(None) => match quick_xml::escape::resolve_html5_entity(&name) {
                        Some(s) => out.text(s),
                        // An entity the document's own DTD would define: kept as written.
                        None => out.text(&format!("&{name};")),
                    },
                    Err(_) => out.text(&format!("&{name};")),
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out.finish())
}

/// An element's start, with the attributes that decide whether its content is read.
fn start(out: &mut Visible, e: &BytesStart) {
    let (mut id, mut class, mut epub_type) = (None, None, None);
    for a in e.attributes().flatten() {
        let value = a
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .ok()
            .map(|v| v.into_owned());
        let prefix = a.key.prefix();
        let prefix = prefix.as_ref().map(|p| p.as_ref());
        match (prefix, a.key.local_name().as_ref()) {
            (None, "id") => id = value,
            (None, "class") => class = value,
            (Some("epub"), "type") => epub_type = value,
            _ => {}
        }
    }
    out.start(
        e.local_name().as_ref(),
        &Attrs {
            id: id.as_deref(),
            class: class.as_deref(),
            epub_type: epub_type.as_deref(),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::archive::percent_decode;

    const CONTAINER: &str = r#"<?xml version="1.0"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">
  <rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles>
</container>"#;

    /// A package whose manifest lists the documents in another order than the spine, one in
    /// a subfolder with an escaped name, a non-linear note, a cover image and the navigation
    /// document (first in the spine).
    const OPF: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">
  <metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>T</dc:title></metadata>
  <manifest>
    <item id="notes" href="Text/notes.xhtml" media-type="application/xhtml+xml"/>
    <item id="c2" href="Text/chapter%202.xhtml" media-type="application/xhtml+xml"/>
    <item id="cover" href="Images/cover.jpg" media-type="image/jpeg"/>
    <item id="c1" href="Text/../Text/ch1.xhtml" media-type="application/xhtml+xml"/>
    <item id="css" href="style.css" media-type="text/css"/>
    <item id="toc" href="Text/toc.xhtml" media-type="application/xhtml+xml" properties="nav"/>
  </manifest>
  <spine>
    <itemref idref="toc"/>
    <itemref idref="c1"/>
    <itemref idref="notes" linear="no"/>
    <itemref idref="c2"/>
  </spine>
</package>"#;

    const CH1: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE html>
<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops">
<head><title>Chapter One</title><style>p { margin: 0 }</style></head>
<body>
  <section epub:type="landmarks toc"><h2>Contents</h2><p><a href="ch1.xhtml">Chapter One</a></p></section>
  <h1 class="chapter">Chapter
     One</h1>
  <p>It was a <em>dark</em>&#160;and stormy night&mdash;the rain fell in
     torrents<a epub:type="noteref" href="notes.xhtml#n1"><sup>1</sup></a>, except at
     occa&#xAD;sional intervals.</p>
  <p>&nbsp;</p>
  <p>“Who’s there?” said Zoë &amp; Ann.<br/>Nobody answered.</p>
  <span epub:type="pagebreak" title="12">12</span>
  <div><p>Nested</p> tail</div>
  <script>var x = "not text";</script>
  <pre>  two  spaces
kept</pre>
</body></html>"#;

    const CH2: &str = r#"<html xmlns="http://www.w3.org/1999/xhtml"><body>
<p>Second <ruby>漢<rt>kan</rt></ruby> chapter &unknownentity; end.</p></body></html>"#;

    /// The navigation document, listed in the spine: a heading outside its `<nav>`.
    const TOC: &str = r#"<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops"><body>
<h1>Contents</h1><nav epub:type="toc"><ol><li><a href="ch1.xhtml">Chapter One</a></li></ol></nav></body></html>"#;

    const NOTES: &str =
        r#"<html xmlns="http://www.w3.org/1999/xhtml"><body><p>A footnote.</p></body></html>"#;

    const EXPECTED: &str = "Chapter One\n\nIt was a dark and stormy night—the rain fell in torrents, except at occasional intervals.\n\n“Who’s there?” said Zoë & Ann.\nNobody answered.\n\nNested\n\ntail\n\n  two  spaces\nkept\n\nSecond 漢 chapter &unknownentity; end.";

    fn write_epub(path: &Path, files: &[(&str, &str)]) {
        crate::data::archive::write_zip(path, Some("application/epub+zip"), files);
    }

    fn book<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut files = vec![
            ("META-INF/container.xml", CONTAINER),
            ("OEBPS/content.opf", OPF),
            ("OEBPS/Text/ch1.xhtml", CH1),
            ("OEBPS/Text/chapter 2.xhtml", CH2),
            ("OEBPS/Text/notes.xhtml", NOTES),
            ("OEBPS/Text/toc.xhtml", TOC),
        ];
        files.extend_from_slice(extra);
        files
    }

    #[test]
    fn reads_the_spine_in_reading_order_as_paragraphs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Book.EPUB");
        write_epub(&path, &book(&[]));
        assert_eq!(
            crate::data::document_of(&path).map(|d| d.glob),
            Some("*.epub")
        );
        assert_eq!(read_text(&path).unwrap(), EXPECTED);
        // Through the dataset reader too.
        assert_eq!(crate::data::read_text(&path).unwrap(), EXPECTED);
    }

    /// A book written by another EPUB tool (ebooklib: see `tests/fixtures/epub/make_epub.py`)
    /// reads as the chapters' titles and paragraphs it was made from.
    #[test]
    fn reads_a_book_made_by_ebooklib() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/epub");
        let expected = std::fs::read_to_string(dir.join("book.txt")).unwrap();
        assert_eq!(read_text(&dir.join("book.epub")).unwrap(), expected);
    }

    #[test]
    fn fonts_may_be_obfuscated_but_encrypted_chapters_are_drm() {
        let dir = tempfile::tempdir().unwrap();
        let fonts = r#"<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" xmlns:enc="http://www.w3.org/2001/04/xmlenc#">
  <enc:EncryptedData><enc:EncryptionMethod Algorithm="http://www.idpf.org/2008/embedding"/>
    <enc:CipherData><enc:CipherReference URI="OEBPS/Text/ch1.xhtml"/></enc:CipherData></enc:EncryptedData>
</encryption>"#;
        let path = dir.path().join("fonts.epub");
        write_epub(&path, &book(&[("META-INF/encryption.xml", fonts)]));
        assert_eq!(read_text(&path).unwrap(), EXPECTED);

        let drm = fonts.replace(
            "http://www.idpf.org/2008/embedding",
            "http://www.w3.org/2001/04/xmlenc#aes128-cbc",
        );
        let path = dir.path().join("drm.epub");
        write_epub(&path, &book(&[("META-INF/encryption.xml", &drm)]));
        let e = format!("{:#}", read_text(&path).unwrap_err());
        assert!(
            e.contains("drm.epub") && e.contains("DRM") && e.contains("OEBPS/Text/ch1.xhtml"),
            "{e}"
        );
    }

    #[test]
    fn damaged_books_are_errors_naming_the_book_and_the_document() {
        let dir = tempfile::tempdir().unwrap();
        let err = |name: &str, files: &[(&str, &str)]| {
            let path = dir.path().join(name);
            write_epub(&path, files);
            format!("{:#}", read_text(&path).unwrap_err())
        };

        let e = err("nocontainer.epub", &book(&[])[1..]);
        assert!(
            e.contains("nocontainer.epub") && e.contains("META-INF/container.xml"),
            "{e}"
        );

        let mut files = book(&[]);
        files.retain(|f| f.0 != "OEBPS/Text/chapter 2.xhtml");
        let e = err("missing.epub", &files);
        assert!(
            e.contains("missing.epub") && e.contains("OEBPS/Text/chapter 2.xhtml"),
            "{e}"
        );

        let mut files = book(&[]);
        files[1].1 = "<package><spine><itemref idref=\"c1\"/></spine>";
        let e = err("nomanifest.epub", &files);
        assert!(
            e.contains("OEBPS/content.opf") && e.contains("\"c1\""),
            "{e}"
        );

        let mut files = book(&[]);
        files[2].1 = "<html><body><p attr=\"unclosed></body></html>";
        let e = err("badxml.epub", &files);
        assert!(
            e.contains("OEBPS/Text/ch1.xhtml") && e.contains("not well-formed"),
            "{e}"
        );

        let images = [
            ("META-INF/container.xml", CONTAINER),
            (
                "OEBPS/content.opf",
                r#"<package><manifest><item id="p" href="p.xhtml" media-type="application/xhtml+xml"/></manifest><spine><itemref idref="p"/></spine></package>"#,
            ),
            (
                "OEBPS/p.xhtml",
                r#"<html><body><img src="a.jpg" alt="A picture"/></body></html>"#,
            ),
        ];
        let e = err("images.epub", &images);
        assert!(e.contains("images.epub") && e.contains("no text"), "{e}");

        let path = dir.path().join("notzip.epub");
        std::fs::write(&path, "plain text").unwrap();
        let e = format!("{:#}", read_text(&path).unwrap_err());
        assert!(e.contains("notzip.epub") && e.contains("not a zip"), "{e}");
    }

    /// An AO3 work as Calibre makes its EPUB: AO3's classes renamed, the work split into
    /// documents (the preface with its id; chapters whose notes are known by their labels;
    /// an afterword that lost its id), AO3 named as publisher.
    #[test]
    fn ao3_books_keep_only_the_chapters() {
        let opf = r#"<package xmlns="http://www.idpf.org/2007/opf" version="2.0">
  <metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:publisher>Archive of Our Own</dc:publisher></metadata>
  <manifest>
    <item id="a" href="index_split_000.html" media-type="application/xhtml+xml"/>
    <item id="b" href="index_split_001.html" media-type="application/xhtml+xml"/>
    <item id="c" href="index_split_002.html" media-type="application/xhtml+xml"/>
  </manifest>
  <spine><itemref idref="a"/><itemref idref="b"/><itemref idref="c"/></spine>
</package>"#;
        let preface = r#"<html xmlns="http://www.w3.org/1999/xhtml"><body class="calibre">
<div id="preface" class="calibre1"><h2 class="toc-heading" id="calibre_toc_1">Preface</h2>
<p class="message"><b class="calibre2">Tides</b><br class="calibre1"/>Posted originally on the
<a href="https://archiveofourown.org/">Archive of Our Own</a> at <a href="https://archiveofourown.org/works/3">https://archiveofourown.org/works/3</a>.</p>
<div class="calibre1"><dl class="tags"><dt class="calibre3">Rating:</dt><dd class="calibre4">Teen And Up Audiences</dd></dl>
<h1 class="calibre5">Tides</h1><p class="calibre6">Summary</p><blockquote class="calibre7"><p>Salt.</p></blockquote></div></div>
</body></html>"#;
        let chapter = r#"<html xmlns="http://www.w3.org/1999/xhtml"><body class="calibre">
<div id="chapters" class="calibre8"><div class="calibre9"><h2 class="heading" id="calibre_toc_2">Chapter 1: Ebb</h2>
<p class="calibre6">Chapter Notes</p><blockquote class="calibre7"><p>Thanks for reading!</p></blockquote>
<div class="calibre10">See the end of the chapter for <a href="index_split_001.html#endnotes1">more notes</a></div></div>
<div class="calibre8"><p class="calibre11">The tide went out and did not come back.</p></div>
<div class="calibre9" id="endnotes1"><p class="calibre6">Chapter End Notes</p><blockquote class="calibre7"><p>More soon.</p></blockquote></div>
</div></body></html>"#;
        let afterword = r#"<html xmlns="http://www.w3.org/1999/xhtml"><body class="calibre">
<div class="calibre1"><h2 class="toc-heading" id="calibre_toc_3">Afterword</h2>
<div class="calibre9"><div class="calibre1"><p class="calibre6">End Notes</p><blockquote class="calibre7"><p>Bye!</p></blockquote></div></div>
<p class="message">Please <a href="https://archiveofourown.org/works/3/comments/new">drop by the Archive and comment</a> to let the creator know if you enjoyed their work!</p>
</div></body></html>"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Tides.epub");
        let mut files = vec![
            ("META-INF/container.xml", CONTAINER),
            ("OEBPS/content.opf", opf),
            ("OEBPS/index_split_000.html", preface),
            ("OEBPS/index_split_001.html", chapter),
            ("OEBPS/index_split_002.html", afterword),
        ];
        write_epub(&path, &files);
        let expected = "Chapter 1: Ebb\n\nThe tide went out and did not come back.";
        assert_eq!(read_text(&path).unwrap(), expected);
        // Known by its preface alone, without the publisher.
        let other = opf.replace("Archive of Our Own", "Calibre");
        files[1].1 = &other;
        write_epub(&path, &files);
        assert_eq!(read_text(&path).unwrap(), expected);
        // A book that is not AO3's keeps its notes and labels.
        files[2].1 =
            r#"<html xmlns="http://www.w3.org/1999/xhtml"><body><p>Foreword.</p></body></html>"#;
        write_epub(&path, &files);
        let text = read_text(&path).unwrap();
        assert!(
            text.contains("Chapter Notes\n\nThanks for reading!") && text.contains("Afterword"),
            "{text}"
        );
    }

    /// A story as FanFicFare saves it: title page, table of contents, chapters with their
    /// authors' notes in FanFicFare's blocks, an update log.
    #[test]
    fn fanficfare_books_keep_only_the_chapters() {
        let opf = r#"<package xmlns="http://www.idpf.org/2007/opf" version="2.0" unique-identifier="fanficfare-uid">
  <metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:contributor>FanFicFare [https://github.com/JimmXinu/FanFicFare]</dc:contributor></metadata>
  <manifest>
    <item id="title_page" href="OEBPS/title_page.xhtml" media-type="application/xhtml+xml"/>
    <item id="toc_page" href="OEBPS/toc_page.xhtml" media-type="application/xhtml+xml"/>
    <item id="file0001" href="OEBPS/file0001.xhtml" media-type="application/xhtml+xml"/>
    <item id="file0002" href="OEBPS/file0002.xhtml" media-type="application/xhtml+xml"/>
    <item id="log_page" href="OEBPS/log_page.xhtml" media-type="application/xhtml+xml"/>
  </manifest>
  <spine><itemref idref="title_page"/><itemref idref="toc_page"/><itemref idref="file0001"/><itemref idref="file0002"/><itemref idref="log_page"/></spine>
</package>"#;
        let page = |class: &str, body: &str| {
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<html xmlns=\"http://www.w3.org/1999/xhtml\"><head><title>T</title></head>\n<body class=\"{class}\">\n{body}\n</body></html>"
            )
        };
        let title = page(
            "fff_titlepage",
            "<h3><a href=\"https://www.fanfiction.net/s/1/1/\">Ashes</a> by <a href=\"#\">quill</a></h3>\n<div>\n<b>Status:</b> Completed<br />\n<b>Words:</b> 2,000<br />\n<b>Summary:</b> What the fire left.<br />\n</div>",
        );
        let toc = page(
            "fff_tocpage",
            "<div>\n<h3>Table of Contents</h3>\n<a href=\"file0001.xhtml\">1. Embers</a><br />\n<a href=\"file0002.xhtml\">2. Smoke</a><br />\n</div>",
        );
        let one = page(
            "fff_chapter",
            "<h3 class=\"fff_chapter_title\">1. Embers</h3>\n<div class=\"fff_chapter_notes fff_head_notes\"><b>Author's Note:</b><blockquote>First fic, be nice!</blockquote></div>\n<div><p>The embers glowed until morning.</p></div>\n<div class=\"fff_chapter_notes fff_foot_notes\"><b>Chapter End Notes:</b><blockquote>Review!</blockquote></div>",
        );
        let two = page(
            "fff_chapter",
            "<h3 class=\"fff_chapter_title\">2. Smoke</h3>\n<div><p>Then only smoke.</p></div>",
        );
        let log = page(
            "fff_logpage",
            "<h3>Update Log</h3>\n<p class='log_entry'>\n<b>Updated:</b> <span id=\"dateUpdated\">2026-01-01</span>\n</p>\n<hr/>",
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Ashes-ffnet_1.epub");
        write_epub(
            &path,
            &[
                (
                    "META-INF/container.xml",
                    &CONTAINER.replace("OEBPS/content.opf", "content.opf"),
                ),
                ("content.opf", opf),
                ("OEBPS/title_page.xhtml", &title),
                ("OEBPS/toc_page.xhtml", &toc),
                ("OEBPS/file0001.xhtml", &one),
                ("OEBPS/file0002.xhtml", &two),
                ("OEBPS/log_page.xhtml", &log),
            ],
        );
        assert_eq!(
            read_text(&path).unwrap(),
            "1. Embers\n\nThe embers glowed until morning.\n\n2. Smoke\n\nThen only smoke."
        );
    }

    #[test]
    fn hrefs_resolve_against_the_package_folder() {
        assert_eq!(
            resolve("OEBPS", "Text/a%20b.xhtml#c"),
            "OEBPS/Text/a b.xhtml"
        );
        assert_eq!(resolve("OEBPS/x", "../y/./z.xhtml"), "OEBPS/y/z.xhtml");
        assert_eq!(resolve("", "ch.xhtml"), "ch.xhtml");
        assert_eq!(resolve("OEBPS", "/root.xhtml"), "root.xhtml");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%E2%80%94"), "—");
    }
}
