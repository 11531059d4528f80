//! Scrivener projects (a `.scriv` folder: Scrivener 3 on macOS and Windows, and Scrivener 2
//! and Windows 1.x projects) as dataset text: the manuscript, as the writer arranged it.
//!
//! A project's `.scrivx` file holds its binder: the Draft folder (called "Manuscript" in new
//! projects), Research, Trash and the writer's other folders, each item with a title, a type
//! and whether it is included in compile. Each document's text is an RTF file:
//! `Files/Data/<UUID>/content.rtf` (Scrivener 3), `Files/Docs/<ID>.rtf` (earlier).
//!
//! What is read (decided for training on a writer's own prose):
//! - the text of the Draft folder's documents and folders, in binder order (depth first, a
//!   folder before what it holds), each read as an RTF document ([`super::rtf`]), a blank
//!   line between them; the project ends with the model's EOS token like any other file;
//! - left out: items not included in compile (their own text; what they hold is judged item
//!   by item), items with no text yet, binder titles (labels such as "Scene 3", not prose),
//!   PDFs, images and web pages, Research, Trash and every other top-level folder (a
//!   project's other books or old drafts among them: compile those, or export them, to
//!   train on them), each document's notes, synopsis and comments (`notes.rtf`,
//!   `synopsis.txt`, `content.comments`), and the markup Scrivener writes into the text as
//!   plain characters (style markers such as `<$Scr_Ps::0>`, placeholders such as `<$n>`).
//!
//! A `.scrivx` that is not a Scrivener binder, a Draft without text, and a document whose
//! RTF is damaged are errors naming the file (and, for a document, its binder title).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use quick_xml::events::Event;
use quick_xml::reader::Reader;

use super::archive::{attribute, entity, xml_error};

/// Bumped when the text made from a project changes, so token caches made by an older
/// extraction are not reused (it enters the dataset's cache key).
pub const TEXT_VERSION: &str = "scrivener-text-1";

/// The extension of a project's folder.
const PACKAGE: &str = "scriv";

/// Whether `dir` is a Scrivener project's folder (its name ends in `.scriv`).
pub fn is_package(dir: &Path) -> bool {
    dir.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(PACKAGE))
}

/// Whether `path` names a project's `.scrivx` file.
pub fn is_project_file(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("scrivx"))
}

/// The `.scrivx` file of the project folder `dir`, or an error saying what is wrong.
pub fn project_file(dir: &Path) -> Result<PathBuf> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
    let mut found = Vec::new();
    for e in entries {
        let p = e
            .with_context(|| format!("{}: cannot list", dir.display()))?
            .path();
        if is_project_file(&p) && p.is_file() {
            found.push(p);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!(
            "{}: a Scrivener project folder without its .scrivx file; open the project in Scrivener and save it, or name the .scrivx file",
            dir.display()
        ),
        n => bail!(
            "{}: a Scrivener project folder with {n} .scrivx files; name the one to read",
            dir.display()
        ),
    }
}

/// How deep binder items may nest (real binders: a handful of levels).
const MAX_DEPTH: usize = 256;

/// One item of the binder.
#[derive(Debug, Default)]
struct Item {
    kind: String,
    /// Scrivener 3's identifier (its text is `Files/Data/<UUID>/content.rtf`).
    uuid: Option<String>,
    /// Earlier versions' identifier (`Files/Docs/<ID>.rtf`).
    id: Option<String>,
    title: String,
    /// `<IncludeInCompile>`'s value, when it has one.
    include: Option<bool>,
    /// How many elements the item's `<MetaData>` holds.
    metadata: usize,
    children: Vec<Item>,
}

impl Item {
    /// Whether the item is included in compile. Scrivener writes `<IncludeInCompile>Yes`
    /// for an included item and, when the box is unchecked, drops the element (or, in some
    /// versions, writes `No`); an item with no metadata at all (the Draft itself, binders
    /// written by other tools) counts as included.
    fn included(&self) -> bool {
        self.include.unwrap_or(self.metadata == 0)
    }
}

/// The top-level items of a `.scrivx` binder.
fn binder(xml: &str) -> std::result::Result<Vec<Item>, String> {
    let mut reader = Reader::from_str(xml);
    let mut top = Vec::new();
    // Open items, innermost last; `None` for a reference to an item (a collection's), not
    // an item, which keeps the open items matched to their end tags.
    let mut items: Vec<Option<Item>> = Vec::new();
    // Open elements (local names).
    let mut open: Vec<String> = Vec::new();
    let mut root_seen = false;
    loop {
        let event = reader.read_event().map_err(|e| xml_error(&reader, e))?;
        let text = match &event {
            Event::Text(t) => Some(t.xml10_content()),
            Event::GeneralRef(r) => Some(std::borrow::Cow::Owned(entity(r)?)),
            _ => None,
        };
        if let Some(text) = text {
            let parent_is_item = open.len() >= 2 && open[open.len() - 2] == "BinderItem";
            if let Some(Some(item)) = items.last_mut() {
                match open.last().map(String::as_str) {
                    Some("Title") if parent_is_item => item.title.push_str(&text),
                    Some("IncludeInCompile") => {
                        item.include = Some(!text.trim().eq_ignore_ascii_case("no"))
                    }
                    _ => {}
                }
            }
            continue;
        }
        // An element of an item's metadata.
        if let Event::Start(_) | Event::Empty(_) = &event
            && let [.., parent, last] = open.as_slice()
            && parent == "BinderItem"
            && last == "MetaData"
            && let Some(Some(item)) = items.last_mut()
        {
            item.metadata += 1;
        }
        match event {
            Event::Start(e) => {
                let name = e.local_name().as_ref().to_string();
                if !root_seen {
                    root_seen = true;
                    if name != "ScrivenerProject" {
                        return Err(format!(
                            "not a Scrivener project: its root element is <{name}>, not <ScrivenerProject>"
                        ));
                    }
                }
                if name == "BinderItem" {
                    if items.len() >= MAX_DEPTH {
                        return Err(format!(
                            "its binder nests items more than {MAX_DEPTH} deep; is this a Scrivener project?"
                        ));
                    }
                    items.push(in_binder(&open).then(|| item(&e)));
                }
                open.push(name);
            }
            Event::End(e) => {
                let name = e.local_name().as_ref().to_string();
                if name == "BinderItem"
                    && let Some(Some(item)) = items.pop()
                {
                    attach(&mut items, &mut top, item);
                }
                open.pop();
            }
            Event::Empty(e) if e.local_name().as_ref() == "BinderItem" && in_binder(&open) => {
                attach(&mut items, &mut top, item(&e));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !root_seen {
        return Err("not a Scrivener project: no <ScrivenerProject> element".into());
    }
    Ok(top)
}

/// Adds a closed `item` to the open item around it, or to the top level.
fn attach(items: &mut [Option<Item>], top: &mut Vec<Item>, item: Item) {
    match items.last_mut() {
        Some(Some(parent)) => parent.children.push(item),
        // Inside a reference: not part of the binder.
        Some(None) => {}
        None => top.push(item),
    }
}

/// Whether an item opening inside the elements `open` is a binder item: one in the binder,
/// or in an item's children (not, say, the references a collection keeps).
fn in_binder(open: &[String]) -> bool {
    match open {
        [.., last] if last == "Binder" => true,
        [.., parent, last] => parent == "BinderItem" && last == "Children",
        _ => false,
    }
}

/// A binder item from its start tag.
fn item(e: &quick_xml::events::BytesStart) -> Item {
    Item {
        kind: attribute(e, "Type").unwrap_or_default(),
        uuid: attribute(e, "UUID"),
        id: attribute(e, "ID"),
        ..Item::default()
    }
}

/// A document of the Draft whose text is read: where its RTF is, and its binder title.
struct Document {
    path: PathBuf,
    title: String,
}

/// The Draft's documents with text files, in binder order.
fn draft(scrivx: &Path) -> Result<Vec<Document>> {
    let xml =
        std::fs::read(scrivx).with_context(|| format!("{}: cannot read", scrivx.display()))?;
    let xml = String::from_utf8(xml).map_err(|e| {
        anyhow!(
            "{}: not a Scrivener project: not UTF-8 at byte offset {}",
            scrivx.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let top = binder(&xml).map_err(|why| anyhow!("{}: {why}", scrivx.display()))?;
    let Some(draft) = top.iter().find(|i| i.kind == "DraftFolder") else {
        bail!(
            "{}: the binder has no Draft (Manuscript) folder; is this a Scrivener project?",
            scrivx.display()
        );
    };
    let project = scrivx.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    collect(project, draft, &mut out);
    Ok(out)
}

fn collect(project: &Path, item: &Item, out: &mut Vec<Document>) {
    let text_kind = matches!(item.kind.as_str(), "DraftFolder" | "Folder" | "Text");
    if text_kind && item.included() {
        let path = match (&item.uuid, &item.id) {
            (Some(uuid), _) => Some(project.join("Files/Data").join(uuid).join("content.rtf")),
            (None, Some(id)) => Some(project.join("Files/Docs").join(format!("{id}.rtf"))),
            (None, None) => None,
        };
        if let Some(path) = path.filter(|p| p.is_file()) {
            out.push(Document {
                path,
                title: item.title.trim().to_string(),
            });
        }
    }
    for child in &item.children {
        collect(project, child, out);
    }
}

/// The files a project's text is read from: its `.scrivx` and the Draft's RTF files (their
/// sizes and times enter the token cache's key). A project whose binder cannot be read has
/// only its `.scrivx` here; reading it is the error.
pub fn source_files(scrivx: &Path) -> Vec<PathBuf> {
    let mut files = vec![scrivx.to_path_buf()];
    if let Ok(docs) = draft(scrivx) {
        files.extend(docs.into_iter().map(|d| d.path));
    }
    files
}

/// The text of the project whose `.scrivx` file is `scrivx`, or of the `.scriv` folder
/// holding it (see the module documentation).
pub fn read_text(scrivx: &Path) -> Result<String> {
    let scrivx = if scrivx.is_dir() {
        project_file(scrivx)?
    } else {
        scrivx.to_path_buf()
    };
    let mut parts = Vec::new();
    for doc in draft(&scrivx)? {
        let bytes = std::fs::read(&doc.path)
            .with_context(|| format!("{}: cannot read", doc.path.display()))?;
        let text = super::rtf::text_of(&bytes).map_err(|why| {
            anyhow!(
                "{} (\"{}\" in the project's Draft): {why}",
                doc.path.display(),
                doc.title
            )
        })?;
        let text = without_markers(&text);
        if !text.is_empty() {
            parts.push(text);
        }
    }
    if parts.is_empty() {
        bail!(
            "{}: the project's Draft (Manuscript) has no text; softtune reads the documents of the Draft folder that are included in compile",
            scrivx.display()
        );
    }
    Ok(parts.join("\n\n"))
}

/// `text` without Scrivener's markup written into documents as plain characters: style
/// markers (`<$Scr_Ps::0>`, `<!$Scr_Cs::1>`, `<$ScrKeepWithNext>`) and compile placeholders
/// (`<$n>`, `<$author>`), which compile replaces or removes; a paragraph left empty goes too.
fn without_markers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('<') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let body = tail.strip_prefix("<$").or_else(|| tail.strip_prefix("<!$"));
        let end = body.and_then(|b| {
            b.find('>')
                .filter(|&e| e > 0 && !b[..e].contains(|c: char| c.is_whitespace() || c == '<'))
        });
        match (body, end) {
            (Some(b), Some(e)) => rest = &b[e + 1..],
            _ => {
                out.push('<');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out.split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = "tests/fixtures/scrivener";

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(FIXTURE)
            .join(name)
    }

    /// The Scrivener 3 fixture project (`tests/fixtures/scrivener/make_scrivener.py`): the
    /// Draft's text in binder order; research, trash, notes, synopses, titles, an excluded
    /// scene and an empty one left out.
    #[test]
    fn scrivener_3_project_reads_its_draft() {
        let expected = std::fs::read_to_string(fixture("Novel.txt")).unwrap();
        let scrivx = fixture("Novel.scriv/Novel.scrivx");
        assert_eq!(read_text(&scrivx).unwrap(), expected);
        // The folder reads as its project file (here and as any dataset file is read).
        assert_eq!(read_text(&fixture("Novel.scriv")).unwrap(), expected);
        assert_eq!(
            crate::data::read_text(&fixture("Novel.scriv")).unwrap(),
            expected
        );
        let files = source_files(&scrivx);
        assert_eq!(files[0], scrivx);
        assert!(files.len() > 3 && files[1..].iter().all(|f| f.ends_with("content.rtf")));
    }

    #[test]
    fn markers_are_removed() {
        assert_eq!(
            without_markers(
                "<$Scr_H::1><$Scr_Ps::0>Chapter <$n><!$Scr_Ps::0><!$Scr_H::1>\n\n<$ScrKeepWithNext>\n\nShe said a < b and <$ not a marker>, x<y>."
            ),
            "Chapter\n\nShe said a < b and <$ not a marker>, x<y>."
        );
    }

    fn project(dir: &Path, scrivx: &str, docs: &[(&str, &str)]) -> PathBuf {
        let package = dir.join("Old.scriv");
        for (path, rtf) in docs {
            let p = package.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, rtf).unwrap();
        }
        std::fs::create_dir_all(&package).unwrap();
        let file = package.join("Old.scrivx");
        std::fs::write(&file, scrivx).unwrap();
        file
    }

    /// Scrivener 2 (and Windows 1.x) projects: numeric ids, `Files/Docs/<ID>.rtf`; an item
    /// excluded from compile by `No`; references to items outside the binder are not items.
    #[test]
    fn scrivener_2_project() {
        let dir = tempfile::tempdir().unwrap();
        let scrivx = r#"<?xml version="1.0" encoding="UTF-8"?>
<ScrivenerProject Version="1.0" Creator="SCRMAC-2.9-10014">
<Collections><Collection Type="Search"><Title>Found</Title><BinderItems><BinderItem ID="6" Type="DraftFolder"><Title>A reference</Title></BinderItem></BinderItems></Collection></Collections>
<Binder>
<BinderItem ID="0" Type="DraftFolder"><Title>Draft</Title><Children>
<BinderItem ID="4" Type="Text"><Title>One</Title><MetaData><IncludeInCompile>Yes</IncludeInCompile></MetaData></BinderItem>
<BinderItem ID="5" Type="Text"><Title>Two</Title></BinderItem>
<BinderItem ID="7" Type="Text"><Title>Cut</Title><MetaData><IncludeInCompile>No</IncludeInCompile></MetaData></BinderItem>
</Children></BinderItem>
<BinderItem ID="1" Type="ResearchFolder"><Title>Research</Title><Children><BinderItem ID="6" Type="Text"><Title>Notes</Title></BinderItem></Children></BinderItem>
</Binder>
<Collections><Collection Type="Arbitrary"><Title>Mine</Title><BinderItems><BinderItem ID="6"/></BinderItems></Collection></Collections>
</ScrivenerProject>"#;
        let file = project(
            dir.path(),
            scrivx,
            &[
                ("Files/Docs/4.rtf", r"{\rtf1\ansi First\par}"),
                ("Files/Docs/5.rtf", r"{\rtf1\ansi Second\par}"),
                ("Files/Docs/6.rtf", r"{\rtf1\ansi Research\par}"),
                ("Files/Docs/7.rtf", r"{\rtf1\ansi Cut\par}"),
            ],
        );
        assert_eq!(read_text(&file).unwrap(), "First\n\nSecond");
    }

    #[test]
    fn errors_name_the_file_and_the_document() {
        let dir = tempfile::tempdir().unwrap();
        let scrivx = r#"<ScrivenerProject><Binder><BinderItem UUID="A" Type="DraftFolder"><Title>Draft</Title><Children><BinderItem UUID="B" Type="Text"><Title>The Storm</Title></BinderItem></Children></BinderItem></Binder></ScrivenerProject>"#;
        let file = project(
            dir.path(),
            scrivx,
            &[("Files/Data/B/content.rtf", r"{\rtf1\ansi cut {\b short")],
        );
        let e = format!("{:#}", read_text(&file).unwrap_err());
        assert!(
            e.contains("content.rtf") && e.contains("\"The Storm\"") && e.contains("cut short"),
            "{e}"
        );

        std::fs::write(
            dir.path().join("Old.scriv/Files/Data/B/content.rtf"),
            r"{\rtf1\ansi }",
        )
        .unwrap();
        let e = format!("{:#}", read_text(&file).unwrap_err());
        assert!(e.contains("Old.scrivx") && e.contains("has no text"), "{e}");

        std::fs::write(&file, "<Binder/>").unwrap();
        let e = format!("{:#}", read_text(&file).unwrap_err());
        assert!(
            e.contains("Old.scrivx") && e.contains("not a Scrivener project"),
            "{e}"
        );
        let deep = format!(
            "<ScrivenerProject><Binder>{}</Binder></ScrivenerProject>",
            "<BinderItem Type=\"Folder\"><Children>".repeat(300)
        );
        std::fs::write(&file, deep).unwrap();
        let e = format!("{:#}", read_text(&file).unwrap_err());
        assert!(e.contains("more than 256 deep"), "{e}");
        std::fs::write(
            &file,
            "<ScrivenerProject><Binder></Binder></ScrivenerProject>",
        )
        .unwrap();
        let e = format!("{:#}", read_text(&file).unwrap_err());
        assert!(e.contains("no Draft"), "{e}");

        std::fs::remove_file(&file).unwrap();
        let e = format!(
            "{:#}",
            project_file(&dir.path().join("Old.scriv")).unwrap_err()
        );
        assert!(
            e.contains("Old.scriv") && e.contains("without its .scrivx"),
            "{e}"
        );
    }
}
