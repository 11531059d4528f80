//! Stories downloaded with FanFicFare (the Calibre plugin and command-line tool that saves
//! stories from fanfiction.net, the Archive of Our Own, Wattpad and a hundred other sites as
//! EPUB or HTML): its books open with a title page (story title, author, status, dates,
//! word count, rating, genre, summary) and a table of contents, may end with an update log,
//! and put the author's notes of each chapter in marked blocks. None of it is the story's
//! prose.
//!
//! FanFicFare marks them with its own classes, which no other tool uses, so they are left
//! out wherever they appear, with no need to know the book's origin first: the title, table
//! of contents, update log and cover pages (`<body class="fff_titlepage">`, `fff_tocpage`,
//! `fff_logpage`, `fff_coverpage`) and chapter notes (`fff_chapter_notes`, with
//! `fff_head_notes` or `fff_foot_notes`). Chapter titles (`fff_chapter_title`) stay.
//!
//! A change to what is left out bumps the HTML and EPUB text versions
//! (`html::TEXT_VERSION`, `epub::TEXT_VERSION`), so token caches are made anew.

/// FanFicFare's classes of elements that are not the story's text.
const SKIPPED: [&str; 5] = [
    "fff_titlepage",
    "fff_tocpage",
    "fff_logpage",
    "fff_coverpage",
    "fff_chapter_notes",
];

/// Whether an element of class attribute `class` is one of FanFicFare's pages or notes.
pub fn skipped(class: Option<&str>) -> bool {
    class.is_some_and(|c| c.split_ascii_whitespace().any(|c| SKIPPED.contains(&c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanficfare_pages_and_notes_are_known_by_their_class() {
        for class in [
            "fff_titlepage",
            "fff_tocpage",
            "fff_logpage",
            "fff_chapter_notes fff_head_notes",
            "fff_foot_notes fff_chapter_notes",
        ] {
            assert!(skipped(Some(class)), "{class}");
        }
        for class in [
            "fff_chapter",
            "fff_chapter_title",
            "titlepage",
            "chapter_notes",
        ] {
            assert!(!skipped(Some(class)), "{class}");
        }
        assert!(!skipped(None));
    }
}
