//! Works downloaded from the Archive of Our Own (AO3) as HTML or EPUB: a work opens with a
//! preface (the archive's message, rating, warnings, fandom, tags, word counts, the summary
//! and the author's notes), each chapter may carry a summary and notes before and after its
//! text, and the work closes with an afterword (end notes, "Please drop by the Archive and
//! comment…"). None of it is the author's prose: a dataset of short fics would spend a large
//! part of its tokens on tags, and a prompt trained on it learns to write author's notes.
//!
//! What is left out, by the page's structure (HTML downloads keep AO3's ids and classes;
//! Calibre, which makes AO3's EPUBs, keeps the ids and renames most classes) and, where the
//! structure may be lost, by AO3's fixed English labels:
//! - the elements with id `preface` or `afterword`, and the end notes (ids `endnotes`,
//!   `endnotes2`, …);
//! - a paragraph that is only a label ("Summary", "Notes", "Chapter Summary", "Chapter
//!   Notes", "Chapter End Notes", "End Notes"), with the quotation that follows it (the
//!   summary or notes themselves);
//! - AO3's own lines: "See the end of the chapter for notes", "Posted originally on the
//!   Archive of Our Own…", "Please drop by the Archive and comment…", the "Preface" and
//!   "Afterword" headings, and a chapter's by-line (class `byline`).
//!
//! Chapter headings ("Chapter 3: Moonlight") stay, as a book's chapter titles do.
//!
//! A change to what is left out bumps the HTML and EPUB text versions
//! (`html::TEXT_VERSION`, `epub::TEXT_VERSION`), so token caches are made anew.

/// Whether an HTML or XHTML document's source is (part of) an AO3 download: it has AO3's
/// preface, which links to the archive. In an EPUB only the first document has it: the
/// book is judged by all of its documents ([`is_work_package`]).
pub fn is_work(source: &str) -> bool {
    source.contains("archiveofourown.org")
        && (source.contains("id=\"preface\"") || source.contains("id='preface'"))
}

/// Whether an EPUB's package document names AO3 as the book's publisher.
pub fn is_work_package(opf: &str) -> bool {
    opf.contains(">Archive of Our Own<")
}

/// Whether an element with these attributes is left out of an AO3 work's text.
pub fn skipped(id: Option<&str>, class: Option<&str>) -> bool {
    let id = id.unwrap_or_default();
    matches!(id, "preface" | "afterword")
        || id
            .strip_prefix("endnotes")
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        || class.is_some_and(|c| {
            c.split_ascii_whitespace()
                .any(|c| matches!(c, "byline" | "endnote-link"))
        })
}

/// What a block of an AO3 work whose whole text is `text` is.
#[derive(Debug, PartialEq)]
pub enum Line {
    /// The work's or a chapter's text.
    Prose,
    /// A label ("Chapter Notes"): it and the quotation after it are left out.
    Label,
    /// One of AO3's own lines, left out.
    Boilerplate,
}

/// Longer blocks are prose (AO3's own lines are shorter), so a chapter's text is never
/// compared.
const LONGEST: usize = 160;

const LABELS: [&str; 6] = [
    "summary",
    "notes",
    "chapter summary",
    "chapter notes",
    "chapter end notes",
    "end notes",
];

/// Classifies a block of an AO3 work by its whole text (see the module documentation).
pub fn line(text: &str) -> Line {
    let text = text.trim();
    if text.len() > LONGEST {
        return Line::Prose;
    }
    let lower = text.to_lowercase();
    let label = lower.trim_end_matches(':').trim_end();
    if LABELS.contains(&label) {
        return Line::Label;
    }
    let own = matches!(label, "preface" | "afterword")
        || (lower.starts_with("see the end of the")
            && lower.trim_end_matches('.').ends_with("notes"))
        || lower.starts_with("posted originally on the archive of our own")
        || lower.starts_with("please drop by the archive and comment");
    if own { Line::Boilerplate } else { Line::Prose }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_archive_lines_are_known_and_prose_is_not() {
        for label in [
            "Chapter Notes",
            "Notes",
            "Summary:",
            " End Notes\n",
            "CHAPTER SUMMARY",
        ] {
            assert_eq!(line(label), Line::Label, "{label}");
        }
        for own in [
            "Preface",
            "Afterword",
            "See the end of the chapter for more notes",
            "See the end of the work for notes.",
            "Posted originally on the Archive of Our Own at https://archiveofourown.org/works/1.",
            "Please drop by the Archive and comment to let the creator know if you enjoyed their work!",
        ] {
            assert_eq!(line(own), Line::Boilerplate, "{own}");
        }
        for prose in [
            "Notes were left on the table.",
            "She read the summary twice.",
            "Chapter 3: Moonlight",
            "",
            &format!("See the end of the {} notes", "long ".repeat(40)),
        ] {
            assert_eq!(line(prose), Line::Prose, "{prose}");
        }
    }

    #[test]
    fn preface_afterword_and_notes_elements_are_skipped() {
        assert!(skipped(Some("preface"), None));
        assert!(skipped(Some("afterword"), Some("calibre1")));
        assert!(skipped(Some("endnotes"), None));
        assert!(skipped(Some("endnotes12"), Some("meta")));
        assert!(skipped(None, Some("endnote-link")));
        assert!(skipped(None, Some("byline heading")));
        assert!(!skipped(Some("endnotes-draft"), None));
        assert!(!skipped(Some("chapters"), Some("userstuff")));
        assert!(!skipped(None, None));
    }

    #[test]
    fn works_are_known_by_their_preface_or_publisher() {
        assert!(is_work(
            r#"<div id="preface"><p class="message">Posted originally on the <a href="http://archiveofourown.org/">Archive of Our Own</a></p></div>"#
        ));
        assert!(!is_work(
            r#"<div id="preface"><p>A novel's preface.</p></div>"#
        ));
        assert!(!is_work(
            r#"<p>I read it on <a href="https://archiveofourown.org/works/1">AO3</a></p>"#
        ));
        assert!(is_work_package(
            "<dc:publisher>Archive of Our Own</dc:publisher>"
        ));
        assert!(!is_work_package("<dc:publisher>Tor</dc:publisher>"));
    }
}
